"""Hostile and malformed search requests, written by hypothesis: every one is answered with a
searchset Bundle or a 4xx OperationOutcome, never a 5xx, and the server keeps serving.

Parameter names are drawn from the real ones of the types (with modifiers, chains, ``_has``,
the result parameters) and from garbage; values from the shapes each type parses (prefixes,
dates, ``system|code``, ``$`` composites, escapes, commas) and from garbage too.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from projections.search.params import params_for
from projections.search.query import MODIFIERS as MODIFIER_SETS
from tests.api_helpers import FHIR_JSON, observation, patient

TYPES = ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest")
_NAMES = sorted({code for t in TYPES for code in params_for(t)})
MODIFIERS = ("", ":missing", ":exact", ":contains", ":not", ":text", ":in", ":not-in", ":above",
             ":below", ":identifier", ":of-type", ":Patient", ":iterate", ":bogus", ":")
RESULT = ("_sort", "_count", "_include", "_revinclude", "_elements", "_summary", "_total",
          "_cursor", "_has", "_type", "_id", "_lastUpdated", "_tag", "_profile", "_text",
          "_content", "_format", "_pretty", "_since")
garbage = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
PREFIXES = ("", "", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz")
BY_TYPE = {
    "date": ["2024", "2024-01", "2024-01-15", "2024-01-15T10:00", "2024-01-15T10:00:00+08:00",
             "2024-01-15T10:00:00.123456789Z", "2024-13-45", "2024-02-30", "9999-12-31", "0000",
             "0001-01-01", "2024-01-15T24:00", "2024-01-15T10:00:60Z", "20240115", "now"],
    "number": ["5.4", "0", "-0.0", "1e309", "-1e309", "1e-400", "NaN", "Infinity", "5e", ".5",
               "1" * 40],
    "quantity": ["5||mg", "5|http://unitsofmeasure.org|mg", "5|http://unitsofmeasure.org|",
                 "5|http://unitsofmeasure.org|[bogus]", "5.4|http://unitsofmeasure.org|mm[Hg]",
                 "1e309||g", "1e300|http://unitsofmeasure.org|Yg", "||", "5|a|b|c"],
    "token": ["http://loinc.org|8867-4", "|male", "urn:oid:1|", "a\\,b", "a\\|b\\$c", "|", "||",
              "http://loinc.org|", "male", "urn:oid:2.16.156.10011.1.3|110101199001011234"],
    "reference": ["Patient/fuzz-p1", "fuzz-p1", "http://h/fhir/Patient/fuzz-p1",
                  "Patient/fuzz-p1/_history/1", "urn:uuid:1", "Patient/", "/", "Patient/a/b/c",
                  "http://loinc.org|1"],
    "string": ["王", "wang", "Zhāng", "a" * 300, "%", "_", "\\", "'"],
    "uri": ["http://acme.org/fhir/ValueSet/a", "urn:oid:1.2", "not a uri", ""],
    "composite": ["8480-6$gt100", "http://loinc.org|8480-6$5||mm[Hg]", "$", "a$b$c", "8480-6$"],
    "special": ["39.9|116.4|10|km", "39.9|116.4", "91|181|1", "a|b|c|d", "39.9|116.4|-5|km"],
}
ANY = [v for vs in BY_TYPE.values() for v in vs] + [
    "Observation:subject", "*", "*:*", "Patient:*", "-date", "date,-_id", "true", "false", "count",
    "0", "-1", "99999999999999999999", "\u00b2", "accurate", "\\", ",", "|", "$", "null", "[]"]


@st.composite
def criterion(draw, rtype: str) -> tuple[str, str]:
    """One name=value: mostly a real parameter of ``rtype`` with a value of its type's shapes."""
    params = params_for(rtype)
    form = draw(st.integers(0, 9))
    if form < 6:
        code = draw(st.sampled_from(sorted(params)))
        modifier = draw(st.sampled_from(("",) * 6 + MODIFIERS))
        pool = BY_TYPE.get(params[code].type, ANY)
        atom = st.one_of(st.builds(lambda p, v: p + v, st.sampled_from(PREFIXES),
                                   st.sampled_from(pool)),
                         st.sampled_from(ANY), garbage)
        return code + modifier, ",".join(draw(st.lists(atom, min_size=1, max_size=3)))
    name = draw(st.one_of(
        st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(sorted(params)), st.sampled_from(_NAMES)),
        st.builds(lambda t, a, b: f"_has:{t}:{a}:{b}", st.sampled_from(TYPES),
                  st.sampled_from(_NAMES), st.sampled_from(_NAMES)),
        st.sampled_from(RESULT), garbage))
    return name, draw(st.one_of(st.sampled_from(ANY), garbage))


@st.composite
def searches(draw) -> tuple[str, list[tuple[str, str]]]:
    rtype = draw(st.sampled_from(TYPES))
    return rtype, draw(st.lists(criterion(rtype), min_size=1, max_size=4))


@pytest.fixture
def some_records(client):
    """A Patient and two Observations, so that searches have rows to find and join."""
    p = patient(rid="fuzz-p1", birthDate="2024-01-15")
    for d in (p, {**observation("Patient/fuzz-p1"), "id": "fuzz-o1"},
              {**observation("http://h/fhir/Patient/fuzz-p1"), "id": "fuzz-o2",
               "effectiveDateTime": "2024-01-15T10:00:00+08:00"}):
        r = client.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON)
        assert r.status_code in (200, 201), r.text


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(search=searches(), post=st.booleans())
def test_any_search_is_a_bundle_or_a_4xx_outcome(client, some_records, search, post):
    rtype, q = search
    if post:
        r = client.post(f"/{rtype}/_search", content=urlencode(q),
                        headers={"content-type": "application/x-www-form-urlencoded"})
    else:
        r = client.get(f"/{rtype}", params=q)
    assert r.status_code < 500, (rtype, q, r.status_code, r.text[:500])
    body = r.json()
    if r.status_code == 200:
        assert body["resourceType"] == "Bundle" and body["type"] == "searchset", body
    else:
        assert 400 <= r.status_code < 500 and body["resourceType"] == "OperationOutcome", body


# -- every parameter of the types, with every hostile value of its type ---------------------------

from urllib.parse import quote  # noqa: E402

from hub.core.errors import FhirError  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.es_server import es_server  # noqa: E402,F401 - fixture
from tests.test_search_conformance import DATA, run, search_world  # noqa: E402


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(request, tmp_path_factory):
    """The conformance records on the SQLite event store, searched through either backend (the
    PostgreSQL store has the same SQLite search index)."""
    settings = make_settings("sqlite", tmp_path_factory.mktemp("sweep"), request)
    with search_world(request, settings, [d for items in DATA.values() for d in items]) as (
            hub, service):
        yield hub, service, settings


@pytest.mark.parametrize("rtype", ("Patient", "Observation", "Condition"))
def test_every_parameter_takes_every_hostile_value_of_its_type(world, rtype):
    """In process, on each search backend: each value a 400 or a Bundle (hypothesis above meets
    a given parameter and value too rarely to stand for this sweep). Every value of the
    parameter's type without a modifier (with prefixes for the ordered types), a few with each
    modifier the type takes and with a foreign one."""
    failures = []
    for code, p in sorted(params_for(rtype).items()):
        pool = BY_TYPE.get(p.type, ANY) + ["", "\\", "a" * 300, "a" * 1500]
        tries = [("", v) for v in pool]
        if p.type in ("date", "number", "quantity"):
            tries += [("", prefix + v) for v in pool for prefix in ("gt", "ap")]
        for modifier in sorted(MODIFIER_SETS.get(p.type, ())) + ["exact", "Patient", "iterate"]:
            tries += [(f":{modifier}", v) for v in pool[:3] + ["", "true"]]
        tries = [(f"{code}{modifier}", v) for modifier, v in tries]
        if code == "_id" and rtype == "Observation":  # once: the result parameters
            tries += [(name, v) for name in RESULT for v in ANY]
        for name, v in tries:
            query = f"{name}={quote(v, safe='')}"
            try:
                assert run(world, rtype, query)["resourceType"] == "Bundle"
            except FhirError as e:
                if not 400 <= e.status < 500:
                    failures.append((query, e.status))
            except Exception as e:  # noqa: BLE001 - what a request would get as a 500
                failures.append((query, repr(e)[:200]))
    kinds: dict[str, str] = {}
    for query, err in failures:  # one example of each parameter and error
        kinds.setdefault(f"{query.split('=')[0]} {str(err)[:60]}", query)
    assert not failures, sorted(kinds.items())
