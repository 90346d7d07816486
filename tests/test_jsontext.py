"""What the JSON text may not carry (hub/core/jsontext.py): duplicate keys, control characters and lone
surrogates; the fast byte tests must never clear a body the exact checks refuse.

The JSON texts here are written by a serializer of their own that escapes characters at random
(``\\u0022`` for a quote, ``\\u003a`` for a colon, ...), puts whitespace anywhere JSON allows it
and can repeat keys: the spellings a sender may use, not only orjson's.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub.core import jsontext
from hub.core import resource as res
from hub.api import bundles
from hub.core.errors import FhirError
from hub.core.ingest import Context, Op
from hub.worker import write_units
from tests.api_helpers import patient, unique

# U+FFFE and U+FFFF: no XML may hold them (the hub's XML answers failed on a resource with one)
FORBIDDEN = [chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + ["\ufffe", "\uffff"] + [
    "\ud800", "\udbff", "\udc00", "\udfff"]
allowed_text = st.text(st.characters(blacklist_categories=("Cs",),
                                     blacklist_characters=FORBIDDEN[:-4]), max_size=12)


class Obj:
    """A JSON object as written: key/value pairs in order, keys possibly repeated."""

    def __init__(self, pairs):
        self.pairs = pairs

    def repeats(self) -> bool:
        keys = [k for k, _ in self.pairs]
        return len(set(keys)) != len(keys) or any(_repeats(v) for _, v in self.pairs)

    def parsed(self):
        return {k: _parsed(v) for k, v in self.pairs}


def _repeats(v) -> bool:
    if isinstance(v, Obj):
        return v.repeats()
    return isinstance(v, list) and any(_repeats(x) for x in v)


def _parsed(v):
    if isinstance(v, Obj):
        return v.parsed()
    if isinstance(v, list):
        return [_parsed(x) for x in v]
    return v


keys = st.sampled_from(["a", "b", "id", "gender", 'x":', "y\\", " :", "名"]) | st.text(max_size=4)
scalars = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
           | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
           | st.sampled_from(['":', '" :', '\\":', ":", '"']))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.lists(st.tuples(keys, children), max_size=4).map(Obj),
    max_leaves=10,
)
objects = st.lists(st.tuples(keys, values), min_size=1, max_size=5).map(Obj)


def write(v, draw) -> str:
    """JSON text of ``v`` in a spelling drawn at random (escapes and whitespace)."""
    ws = lambda: draw(st.sampled_from(["", "", " ", "\n  ", "\t"]))  # noqa: E731
    if isinstance(v, Obj):
        return "{" + ws() + ",".join(
            f"{ws()}{write_string(k, draw)}{ws()}:{ws()}{write(x, draw)}{ws()}"
            for k, x in v.pairs) + ws() + "}"
    if isinstance(v, list):
        return "[" + ",".join(ws() + write(x, draw) + ws() for x in v) + "]"
    if isinstance(v, str):
        return write_string(v, draw)
    return json.dumps(v)


def write_string(s: str, draw) -> str:
    out = []
    for ch in s:
        if draw(st.integers(0, 3)) == 0:  # one character in four spelled \uXXXX
            out.append(json.dumps(ch, ensure_ascii=True)[1:-1] if ord(ch) > 0xFFFF
                       else f"\\u{ord(ch):04{draw(st.sampled_from(['x', 'X']))}}")
        else:
            out.append(json.dumps(ch, ensure_ascii=False)[1:-1])
    return '"' + "".join(out) + '"'


# -- duplicate keys ------------------------------------------------------------------------------


@hsettings(max_examples=400, deadline=None)
@given(v=objects, data=st.data())
def test_duplicate_keys_refused_exactly_when_present(v, data):
    raw = write(v, data.draw).encode()
    d = orjson.loads(raw)
    assert d == v.parsed()  # the last value of a key wins, as orjson says
    if v.repeats():
        assert jsontext.keys_may_repeat(raw, d)  # the fast test never clears a repeat
        with pytest.raises(FhirError) as e:
            res.parse_json(raw)
        assert e.value.status == 400
        assert e.value.issues[0].code == "structure"
    else:
        assert res.parse_json(raw) == d


@hsettings(max_examples=200, deadline=None)
@given(v=objects.filter(lambda o: not o.repeats()))
def test_objects_without_duplicates_as_common_writers_write_them_are_cleared_fast(v):
    """orjson, and Python's json with and without ASCII escapes and indentation: the fast test
    alone clears them, unless a string holds a colon (text like '":' in a string could be a
    key's end to a byte count; then the slow check decides)."""
    d = v.parsed()
    colons = ":" in orjson.dumps(_strings(d)).decode()
    for raw in (orjson.dumps(d), json.dumps(d).encode(), json.dumps(d, indent=2).encode(),
                json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode()):
        assert res.parse_json(raw) == d
        if not colons:
            assert not jsontext.keys_may_repeat(raw, d), raw


def _strings(v) -> list[str]:
    """Every key and string value inside ``v``."""
    if isinstance(v, dict):
        return [s for k, x in v.items() for s in [k, *_strings(x)]]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return [v] if isinstance(v, str) else []


def test_duplicate_key_outcome_names_the_element():
    with pytest.raises(FhirError) as e:
        res.parse_json(b'{"resourceType":"Patient","gender":"male","gender":"female"}')
    assert e.value.status == 400
    assert e.value.issues[0].expression == "Patient.gender"
    raw = orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient"}}]}).replace(
        b'"resourceType":"Patient"', b'"resourceType":"Patient","active":true,"active":false')
    with pytest.raises(FhirError) as e:
        res.parse_json(raw)
    assert e.value.issues[0].expression == "Bundle.entry[0].resource.active"


def test_a_quote_spelled_as_an_escape_cannot_hide_a_duplicate():
    """The one spelling the fast count could miss: \\u0022 and \\u003a write '":' that the
    re-written parse counts; such a body is always checked the slow way."""
    raw = b'{"a":1,"a":"\\u0022\\u003a"}'
    assert orjson.dumps(orjson.loads(raw)).count(b'":') == raw.count(b'":')
    with pytest.raises(FhirError):
        res.parse_json(raw)


# -- control characters and lone surrogates ------------------------------------------------------


@hsettings(max_examples=300, deadline=None)
@given(before=allowed_text, bad=st.sampled_from(FORBIDDEN), after=allowed_text,
       where=st.sampled_from(["family", "given", "text"]), data=st.data())
def test_strings_with_control_characters_are_refused_naming_the_element(before, bad, after,
                                                                        where, data):
    s = before + bad + after
    name = {"family": "Wang", "given": ["Xiaoming"]}
    expression = {"family": "Patient.name[0].family", "given": "Patient.name[0].given[0]",
                  "text": "Patient.name[0].text"}[where]
    name[where] = [s] if where == "given" else s
    d = {"resourceType": "Patient", "name": [name]}
    with pytest.raises(FhirError) as e:
        if "\ud800" <= bad <= "\udfff":  # not JSON a parser takes: a dict a mapper built
            res.validate("Patient", jsontext.dumps(d, "Patient"), d)
        else:
            raw = json.dumps(d, ensure_ascii=data.draw(st.booleans())).encode()
            res.validate("Patient", raw, res.parse_json(raw))
    assert e.value.status == 400
    assert [i.expression for i in e.value.issues] == [expression]


@hsettings(max_examples=300, deadline=None)
@given(s=allowed_text, ascii_=st.booleans())
def test_strings_without_them_pass(s, ascii_):
    d = {"resourceType": "Patient", "name": [{"family": s or "x", "text": "\t\r\n" + s}]}
    raw = json.dumps(d, ensure_ascii=ascii_).encode()
    jsontext.refuse_bad_text(res.parse_json(raw), "Patient", raw)
    issues: list = []
    jsontext.bad_text(d, "Patient", issues)
    assert issues == []


@hsettings(max_examples=300, deadline=None)
@given(s=st.text(max_size=20), ascii_=st.booleans())
def test_the_byte_test_never_clears_a_string_the_walk_refuses(s, ascii_):
    try:
        raw = json.dumps({"s": s}, ensure_ascii=ascii_).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate is no UTF-8: not a body anyone can send
        return
    issues: list = []
    jsontext.bad_text({"s": s}, "$", issues)
    if issues:
        assert jsontext.text_may_be_bad(raw)


def test_keys_with_control_characters_are_refused():
    with pytest.raises(FhirError) as e:
        jsontext.refuse_bad_text({"resourceType": "Patient", "gen\x00der": "male"}, "Patient",
                                 b'{"resourceType":"Patient","gen\\u0000der":"male"}')
    assert e.value.issues[0].expression == "Patient"


def test_mapper_output_with_a_lone_surrogate_is_a_400_not_a_crash():
    """A Bundle entry built in memory (HL7 v3 and v2 intake go through parse_entry)."""
    entry = {"resource": patient(family="W\udc80ng"), "request": {"method": "POST",
                                                                 "url": "Patient"}}
    with pytest.raises(FhirError) as e:
        bundles.parse_entry(3, entry, "")
    assert e.value.status == 400
    assert e.value.issues[0].expression == "Bundle.entry[3].resource.name[0].family"


def test_mapper_output_with_nul_is_refused_by_the_entry_validation():
    entry = {"resource": patient(family="W\x00ng"), "request": {"method": "POST",
                                                               "url": "Patient"}}
    with pytest.raises(FhirError) as e:
        bundles.parse_entry(0, entry, "")
    assert (e.value.status, e.value.issues[0].expression) == (
        400, "Bundle.entry[0].resource.name[0].family")


def test_the_hub_refuses_what_reached_it_unvalidated(hub):
    """The last line: an Op built without hub.resource.validate never puts NUL or a lone
    surrogate into the log."""
    for family in ("W\x00ng", "W\ud800ng"):
        d = patient(family=family)
        op = Op("POST", "Patient", d=d, url="Patient", where="Bundle.entry[1]")
        before = hub.store.max_notification_id()
        with pytest.raises(FhirError) as e:
            hub.execute([op], Context(), atomic=True)
        assert e.value.status == 400
        assert e.value.issues[0].expression == "Bundle.entry[1].resource.name[0].family"
        assert hub.store.max_notification_id() == before


def test_v2_intake_refuses_a_unit_whose_mapped_resource_holds_nul(hub):
    """The Kafka ingest worker's path (HL7 v2 units as mapped): the unit is refused, naming the
    element; the unit beside it in the same batch is stored."""
    good, bad = patient(rid=unique()), patient(rid=unique(), family="W\x00ng")
    out = write_units(hub, [{"resources": [good]}, {"resources": [bad]}], {"feed": "test"})
    assert out[0] is None
    assert out[1]["code"] == "AE" and "name[0].family" in out[1]["reason"], out[1]
    assert hub.store.latest("Patient", good["id"]) is not None
    assert hub.store.latest("Patient", bad["id"]) is None
