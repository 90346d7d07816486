"""The stored form of a resource: parsing, canonical bytes, content hash, and FHIR time ranges."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core.errors import FhirError
from hub.core.fhirtime import parse_range
from hub.core.resource import canonical, content_hash, identifiers, parse_json


def test_decimals_keep_their_written_precision():
    d = parse_json(b'{"resourceType":"Observation","valueQuantity":{"value":1.50},"x":[1e3,0.10]}')
    out = canonical(d, "o1", 1, "2026-01-01T00:00:00Z")
    assert b'"value":1.50' in out and b"1e3" in out and b"0.10" in out


_NUMBER = st.builds(
    lambda sign, whole, frac, exp: f"{sign}{whole}{frac}{exp}",
    st.sampled_from(["", "-"]), st.from_regex(r"0|[1-9][0-9]{0,17}", fullmatch=True),
    st.one_of(st.just(""), st.from_regex(r"\.0{0,7}[0-9]{1,6}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"[eE][+-]?[0-9]{1,2}", fullmatch=True)))
_SPACE = st.sampled_from(["", " ", "\n  ", "\t"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NUMBER, _SPACE, _SPACE), min_size=1, max_size=4),
       st.sampled_from(["urn:uuid:8e-5a0", "2.16.156.10011.99", "1.50", ":1.50,"]))
def test_every_number_is_written_back_as_sent(numbers, text):
    """Numbers are kept as written wherever they stand (after a key, in an array, beside
    strings that look numeric), and a text that merely looks like one changes nothing."""
    items = [f"{a}{n}{b}" for n, a, b in numbers]
    body = ('{"s":"%s","v":%s,"a":[%s],"t":"%s"}' % (text, items[0], ",".join(items), text)).encode()
    out = orjson.dumps(parse_json(body))
    written = [n for n, _, _ in numbers]
    assert out == ('{"s":"%s","v":%s,"a":[%s],"t":"%s"}'
                   % (text, written[0], ",".join(written), text)).encode() \
        or _same_values(out, body)


def _same_values(out: bytes, body: bytes) -> bool:
    # numbers orjson writes back exactly anyway (1.5, 100) may take the fast path
    return json.loads(out, parse_float=str) == json.loads(body, parse_float=str)


def test_canonical_puts_type_id_meta_first_and_keeps_sender_meta():
    d = {"name": [{"family": "王"}], "resourceType": "Patient",
         "meta": {"profile": ["http://x/p"], "versionId": "9"}}
    out = orjson.loads(canonical(d, "p1", 3, "2026-01-01T00:00:00Z"))
    assert list(out)[:3] == ["resourceType", "id", "meta"]
    assert out["meta"] == {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z",
                           "profile": ["http://x/p"]}
    assert out["name"] == [{"family": "王"}]


def test_content_hash_ignores_version_time_id_and_key_order():
    a = {"resourceType": "Patient", "id": "x", "meta": {"versionId": "1", "lastUpdated": "t1"},
         "gender": "male", "active": True}
    b = {"resourceType": "Patient", "active": True, "gender": "male"}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({**b, "gender": "female"})
    assert content_hash(b) != content_hash({**b, "meta": {"tag": [{"code": "x"}]}})


def test_identifiers_of_list_and_single_valued_elements():
    assert identifiers({"identifier": [{"system": "s", "value": "1"}, {"value": "2"}, {"system": "s"}]}) \
        == [("s", "1"), ("", "2")]
    assert identifiers({"identifier": {"system": "s", "value": "9"}}) == [("s", "9")]
    assert identifiers({"identifier": "nonsense"}) == []


@pytest.mark.parametrize("body", [b"", b"{", b"[1,", b"\xff\xfe", b"{\"a\":NaN}", b"1" * 100 + b"x"])
def test_malformed_json_is_a_400_structure_error(body):
    with pytest.raises(FhirError) as e:
        parse_json(body)
    assert e.value.status == 400 and e.value.issues[0].code == "structure"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_json_never_crashes_on_bytes(data):
    try:
        parse_json(data)
    except FhirError as e:
        assert e.status == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=6))
def test_canonical_round_trips_any_json_object(extra):
    d = {"resourceType": "Basic", **{k: v for k, v in extra.items() if k not in ("resourceType", "id", "meta")}}
    raw = json.dumps(d).encode()
    parsed = parse_json(raw)
    back = orjson.loads(canonical(parsed, "b1", 2, "2026-01-01T00:00:00Z"))
    assert {k: v for k, v in back.items() if k not in ("id", "meta")} == json.loads(raw)
    assert content_hash(parsed) == content_hash(parse_json(raw))


@pytest.mark.parametrize("value, start, end", [
    ("2024", "2024-01-01T00:00:00+08:00", "2025-01-01T00:00:00+08:00"),
    ("2024-12", "2024-12-01T00:00:00+08:00", "2025-01-01T00:00:00+08:00"),
    ("2024-02-29", "2024-02-29T00:00:00+08:00", "2024-03-01T00:00:00+08:00"),
    ("2024-03-05T10:00", "2024-03-05T02:00:00Z", "2024-03-05T02:01:00Z"),
    ("2024-03-05T10:00+08:00", "2024-03-05T02:00:00Z", "2024-03-05T02:01:00Z"),
    ("2024-03-05T10:00:00Z", "2024-03-05T10:00:00Z", "2024-03-05T10:00:01Z"),
    ("2024-03-05T10:00:00-05:00", "2024-03-05T15:00:00Z", "2024-03-05T15:00:01Z"),
    ("9999-12-31", "9999-12-31T00:00:00+08:00", "9999-12-31T23:59:59.999999Z"),  # HIS "no end"
])
def test_partial_dates_are_periods_in_the_platforms_zone(value, start, end):
    """A value without a zone is read in HUB_TIMEZONE (+08:00 by default); one with a zone keeps it."""
    s, e = parse_range(value)
    assert (s, e) == (parse_range(start)[0], parse_range(end)[0] + end.endswith(".999999Z"))


@pytest.mark.parametrize("setting, offset_hours", [("-05:00", -5), ("Z", 0), ("+8", 0), ("CST", 0)])
def test_the_platforms_zone_is_configured(monkeypatch, setting, offset_hours):
    """HUB_TIMEZONE decides where a zone-less day begins; a setting that is no offset reads as UTC."""
    from hub.core import fhirtime

    monkeypatch.setenv("HUB_TIMEZONE", setting)
    fhirtime.local_zone.cache_clear()
    try:
        start, end = parse_range("2024-01-15")
        utc_day = parse_range("2024-01-15T00:00:00Z")[0]
        assert start == utc_day - offset_hours * 3_600_000_000
        assert end - start == 86_400_000_000
        assert parse_range("2024-01-15T00:00:00+08:00")[0] == utc_day - 8 * 3_600_000_000
    finally:
        monkeypatch.undo()
        fhirtime.local_zone.cache_clear()


@pytest.mark.parametrize("value", ["24", "2024-13", "2024-02-30", "2024-01-01T25:00", "yesterday", ""])
def test_malformed_dates_are_refused(value):
    with pytest.raises(ValueError):
        parse_range(value)
