"""Every parameter of the hub's GET operations and history with hostile values, over HTTP: each
answer is a 2xx or a 4xx OperationOutcome (or the operation's own 4xx body), never a 5xx, and
the server keeps answering.

The search parameters have their own sweep (tests/test_search_fuzz.py); here are the others:
history, ``$everything``, ``$timeline``, the MPI's lists and resolution, the quality and
unmapped-code reports, and the terminology operations.
"""

from __future__ import annotations

import pytest

from tests.api_helpers import FHIR_JSON, observation, patient

HOSTILE = ["", "-1", "0", "99999999999999999999", "\u00b2", "1e309", "NaN", "2024-13-45",
           "2024-01-15T10:00", "9999-12-31", "0001", "a" * 2000, "\\", "\x00", "王", "null",
           "Patient/x", "*", "WyJuIiw0MTJd", "a,b,,", "|", "http://loinc.org|8867-4",
           "Observation,Bogus", "result,bogus"]

OPERATIONS = {
    "/_history": ("_since", "_at", "_count", "_cursor", "_total", "_type"),
    "/Observation/_history": ("_since", "_at", "_count", "_cursor", "_total"),
    "/Patient/fz-p1/_history": ("_since", "_at", "_count", "_cursor", "_total"),
    "/Patient/fz-p1/$everything": ("_since", "_type", "_count", "_cursor", "institution"),
    "/Patient/fz-p1/$timeline": ("start", "end", "kind", "_count", "_cursor", "institution"),
    "/Person": ("_count", "_cursor", "name", "identifier", "link", "_id"),
    "/$mpi-review": ("status", "_count", "_cursor"),
    "/$resolve-identifier": ("identifier", "qr", "by"),
    "/$quality-report": ("institution", "document_type", "rule", "since", "until", "group",
                         "columns", "_count", "_format"),
    "/$unmapped-codes": ("institution", "system", "_count"),
    "/CodeSystem/$lookup": ("system", "code", "version", "display", "property", "coding"),
    "/CodeSystem/$validate-code": ("url", "code", "system", "display", "version", "coding"),
    "/CodeSystem/$subsumes": ("system", "codeA", "codeB", "version"),
    "/ValueSet/$expand": ("url", "filter", "count", "offset", "valueSetVersion",
                          "includeDesignations", "displayLanguage"),
    "/ValueSet/$validate-code": ("url", "code", "system", "display", "coding", "codeableConcept"),
    "/ConceptMap/$translate": ("url", "system", "code", "source", "target", "targetsystem",
                               "reverse", "coding"),
}


@pytest.fixture
def records(client):
    for d in (patient(rid="fz-p1"), {**observation("Patient/fz-p1"), "id": "fz-o1"}):
        r = client.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON)
        assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize("path", sorted(OPERATIONS))
def test_every_parameter_of_an_operation_takes_hostile_values(client, records, path):
    failures = []
    for name in OPERATIONS[path]:
        for value in HOSTILE:
            for query in ([(name, value)], [(name, value), (name, value)])[:1 if value else 2]:
                r = client.get(path, params=query)
                if r.status_code >= 500:
                    failures.append((name, value[:40], r.status_code, r.text[:200]))
                elif r.status_code >= 400 and r.headers.get("content-type", "").startswith(
                        "application/fhir+json"):
                    assert r.json()["resourceType"] == "OperationOutcome", r.text[:300]
    assert client.get("/metadata").status_code == 200
    assert not failures, failures[:10]


@pytest.mark.parametrize("version", ["99999999999999999999", "\u00b2", "\u0663", "0", "-1", "1.0",
                                     "1e3", "0x1", " 1", "%00"])
def test_a_version_that_is_no_version_is_a_4xx(client, records, version):
    """Unicode digits pass str.isdigit() and then fail int(); twenty digits overflow the store."""
    for path in (f"/Patient/fz-p1/_history/{version}",):
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
    r = client.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/fz-p1/_history/{version}"}}]},
        headers=FHIR_JSON)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["entry"][0]["response"]["status"][:1] == "4", r.text[:300]


# Parameters bodies whose ``parameter`` is no array of named objects
MALFORMED_PARAMETERS = [{"resourceType": "Parameters", "parameter": p}
                        for p in ("x", 5, [1, 2], {"name": "_type"}, [{"valueString": "x"}],
                                  [{"name": 5, "valueString": "x"}], [None])]
POSTED = ["/$export", "/Patient/$export", "/Patient/$validate", "/Patient/fz-p1/$everything",
          "/Patient/$match", "/Person/$link", "/Person/$unlink", "/Person/$merge",
          "/Person/$not-duplicate", "/ValueSet/$expand", "/CodeSystem/$lookup",
          "/ConceptMap/$translate"]


@pytest.mark.parametrize("path", POSTED)
def test_a_posted_parameters_body_that_is_malformed_is_a_4xx(client, records, path):
    """An operation reading a posted Parameters body by hand took ``parameter`` to be an array
    of objects: a string, a number or an object there was a 500."""
    failures = []
    for body in MALFORMED_PARAMETERS:
        r = client.post(path, json=body, headers={**FHIR_JSON, "prefer": "respond-async"})
        if not 400 <= r.status_code < 500 or r.json()["resourceType"] != "OperationOutcome":
            failures.append((body["parameter"], r.status_code, r.text[:200]))
    assert client.get("/metadata").status_code == 200
    assert not failures, failures
