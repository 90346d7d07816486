"""Conditional interactions never key on an identifier that identifies nobody.

Hospital systems fill identifier fields they do not have (``-``, ``无``, zeros) and mistype
resident ID numbers. Keyed on such a value, a conditional create takes a new patient for an old
one (the new one's record is never made) and a conditional update overwrites another person's
record. The mappers never key on them (``fhir_mapping.identifiers``); neither does the API.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.api_helpers import (
    FHIR_JSON,
    SYSTEM,
    assert_outcome,
    bundle,
    create,
    expressions,
    patient,
    system_total,
)

NOT_KEYS = ["000000000000000000", "-", "无", "不详", "110105198003151235"]  # the last: check digit
VALID = "110105198003151234"


@pytest.mark.parametrize("value", NOT_KEYS)
def test_conditional_writes_refuse_an_identifier_that_identifies_nobody(client, value):
    someone = create(client, patient(value=value, family="Zhang")).json()
    other = patient(value=value, family="Li")
    criteria = f"identifier={SYSTEM}|{quote(value)}"  # headers are ASCII
    before = system_total(client)
    for r in (
        client.post("/Patient", json=other, headers={**FHIR_JSON, "if-none-exist": criteria}),
        client.put(f"/Patient?{criteria}", json=other, headers=FHIR_JSON),
        client.delete(f"/Patient?{criteria}"),
        client.patch(f"/Patient?{criteria}", json=[{"op": "add", "path": "/gender",
                                                      "value": "male"}],
                     headers={"content-type": "application/json-patch+json"}),
    ):
        body = assert_outcome(r, 400)
        assert "cannot pick out one resource" in body["issue"][0]["diagnostics"], body
    # a transaction referring to a patient by it: refused whole
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": f"Patient?{criteria}"}}
    r = client.post("", json=bundle("transaction", {"resource": obs, "request": {
        "method": "POST", "url": "Observation"}}), headers=FHIR_JSON)
    assert_outcome(r, 400)
    assert system_total(client) == before
    assert client.get(f"/Patient/{someone['id']}").json()["name"][0]["family"] == "Zhang"


def test_a_valid_identifier_still_keys(client):
    d = patient(value=VALID)
    rid = create(client, d).json()["id"]
    r = client.post("/Patient", json=patient(value=VALID),
                    headers={**FHIR_JSON, "if-none-exist": f"identifier={SYSTEM}|{VALID}"})
    assert r.status_code == 200 and r.json()["id"] == rid, r.text
    r = client.put(f"/Patient?identifier={SYSTEM}|{VALID}",
                   json={**patient(value=VALID), "gender": "female"}, headers=FHIR_JSON)
    assert r.status_code == 200 and r.json()["id"] == rid, r.text


def test_the_error_names_the_criteria_in_a_bundle_entry(client):
    entry = {"resource": patient(value="-"), "request": {
        "method": "PUT", "url": f"Patient?identifier={SYSTEM}|-"}}
    body = assert_outcome(client.post("", json=bundle("transaction", entry), headers=FHIR_JSON),
                          400)
    assert any(e.startswith("Bundle.entry[0]") or e == "identifier"
               for e in expressions(body)), body


@pytest.mark.parametrize("criteria", [
    "family=Wang&birthdate=1980-01-01", "name=Wang", "telecom=13800138000",
    "general-practitioner.identifier=urn:x|1",  # names the doctor, not the patient
])
def test_a_person_is_named_by_an_identifier_not_by_demographics(client, criteria):
    """Two people share a name and a birth date: a conditional create on them would take one for
    the other. Telling them apart is the master patient index's work."""
    create(client, patient(family="Wang", birthDate="1980-01-01"))
    before = system_total(client)
    other = patient(family="Wang", birthDate="1980-01-01")
    for r in (client.post("/Patient", json=other, headers={**FHIR_JSON, "if-none-exist": criteria}),
              client.put(f"/Patient?{criteria}", json=other, headers=FHIR_JSON),
              client.delete(f"/Patient?{criteria}")):
        body = assert_outcome(r, 400)
        assert "identifier or its id" in body["issue"][0]["diagnostics"], body
    assert system_total(client) == before
    # with an identifier among the criteria it is decided
    r = client.post("/Patient", json=other, headers={
        **FHIR_JSON, "if-none-exist": f"{criteria}&identifier={SYSTEM}|{other['identifier'][0]['value']}"})
    assert r.status_code in (200, 201), r.text
