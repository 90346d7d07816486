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
from tests.api_helpers import FHIR_JSON, observation, patient

TYPES = ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest")
_NAMES = sorted({code for t in TYPES for code in params_for(t)})
MODIFIERS = ("", ":missing", ":exact", ":contains", ":not", ":text", ":in", ":not-in", ":above",
             ":below", ":identifier", ":of-type", ":Patient", ":iterate", ":bogus", ":")
RESULT = ("_sort", "_count", "_include", "_revinclude", "_elements", "_summary", "_total",
          "_cursor", "_has", "_type", "_id", "_lastUpdated", "_tag", "_profile", "_text",
          "_content", "_format", "_pretty", "_since")
garbage = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)

name = st.one_of(
    st.builds(lambda n, m: n + m, st.sampled_from(_NAMES), st.sampled_from(MODIFIERS)),
    st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(_NAMES), st.sampled_from(_NAMES)),
    st.builds(lambda t, a, b: f"_has:{t}:{a}:{b}", st.sampled_from(TYPES),
              st.sampled_from(_NAMES), st.sampled_from(_NAMES)),
    st.sampled_from(RESULT),
    garbage,
)
atom = st.one_of(
    st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz"]).flatmap(
        lambda p: st.sampled_from(["2024", "2024-01", "2024-01-15", "2024-01-15T10:00",
                                   "2024-01-15T10:00:00+08:00", "2024-13-45", "9999-12-31",
                                   "0000", "5.4", "-1e309", "1e-400", "NaN", "5||mg",
                                   "5|http://unitsofmeasure.org|mg"]).map(lambda v: p + v)),
    st.sampled_from(["http://loinc.org|8867-4", "|male", "urn:oid:1|", "a\\,b", "a\\|b\\$c",
                     "8480-6$gt100", "Patient/x", "http://h/fhir/Patient/x", "x/_history/1",
                     "Observation:subject", "*", "*:*", "Patient:*", "-date", "date,-_id",
                     "true", "false", "count", "0", "-1", "99999999999999999999", "accurate",
                     "王", "\\", ",", "|", "$", "%", "'", "\"", "null", "[]", "a" * 300]),
    garbage,
)
value = st.lists(atom, min_size=1, max_size=3).map(",".join)
queries = st.lists(st.tuples(name, value), min_size=1, max_size=4)


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
@given(rtype=st.sampled_from(TYPES), q=queries, post=st.booleans())
def test_any_search_is_a_bundle_or_a_4xx_outcome(client, some_records, rtype, q, post):
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
