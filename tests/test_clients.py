"""The hub driven by two independent, well-known FHIR client libraries, as their users would:
fhirpy (Beda Software) and fhirclient (SMART on FHIR). Create, search with paging and includes,
conditional update, transaction and history, against the real server with a real token."""

from __future__ import annotations

import pytest

fhirpy = pytest.importorskip("fhirpy")
fhirclient_client = pytest.importorskip("fhirclient.client")

from tests.api_helpers import resident  # noqa: E402 - after the skips

SYSTEM = "urn:oid:2.16.156.10011.1.3"


def _ident() -> str:
    return resident()  # a resident ID number the hub takes as a key


@pytest.fixture
def token(live) -> str:
    return live.auth.token() if live.auth is not None else ""


def test_fhirpy(live, token):
    client = fhirpy.SyncFHIRClient(live.base, authorization=f"Bearer {token}")
    family = "Fhirpy" + _ident()
    patients = []
    for i in range(5):
        p = client.resource("Patient", identifier=[{"system": SYSTEM, "value": _ident()}],
                            name=[{"family": family, "given": [f"G{i}"]}], gender="female")
        p.save()
        assert p.id and p["meta"]["versionId"] == "1"
        patients.append(p)
    obs = client.resource("Observation", status="final", code={"text": "pulse"},
                          subject=patients[0].to_reference())
    obs.save()
    # search with paging: fhirpy follows the server's next links
    found = client.resources("Patient").search(family=family).limit(2).fetch_all()
    assert sorted(p.id for p in found) == sorted(p.id for p in patients)
    assert client.resources("Patient").search(family=family).count() == 5
    # an include
    bundle = client.resources("Observation").search(_id=obs.id).include("Observation", "subject")
    got = bundle.fetch_raw()
    assert {e["resource"]["resourceType"] for e in got["entry"]} == {"Observation", "Patient"}
    # conditional update (PUT Type?identifier=…) and history
    p0 = patients[0]
    ident = p0["identifier"][0]["value"]
    client.resources("Patient").search(identifier=f"{SYSTEM}|{ident}").first()
    p0["gender"] = "male"
    p0.save()
    assert client.resource("Patient", id=p0.id).execute("_history", method="get")["total"] == 2
    # conditional update: PUT Patient?identifier=… (fhirpy's SearchSet.update)
    again = client.resource("Patient", identifier=[{"system": SYSTEM, "value": ident}],
                            name=[{"family": family}], gender="other")
    updated, created = client.resources("Patient").search(
        identifier=f"{SYSTEM}|{ident}").update(again)
    assert created is False and updated.id == p0.id  # (fhirpy says whether it was a 201)
    assert client.reference("Patient", p0.id).to_resource()["gender"] == "other"
    # a transaction
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "name": [{"family": family}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:1"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    out = client.execute("", method="post", data=tx)
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in out["entry"]] == ["201", "201"]
    # fhirpy's patch() sends a partial resource (a JSON merge patch, which Aidbox takes and R4
    # does not define): refused with a 400 that names the formats R4 has
    with pytest.raises(fhirpy.base.exceptions.OperationOutcome) as refused:
        client.resource("Patient", id=patients[1].id).patch(gender="unknown")
    assert "application/json-patch+json" in str(refused.value)
    assert client.reference("Patient", patients[1].id).to_resource()["gender"] == "female"


def test_fhirclient(live, token):
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.humanname import HumanName
    from fhirclient.models.identifier import Identifier
    from fhirclient.models.patient import Patient

    smart = fhirclient_client.FHIRClient(settings={"app_id": "hub-tests", "api_base": live.base})
    smart.server.session.headers["Authorization"] = f"Bearer {token}"
    server = smart.server
    family = "Smart" + _ident()
    ids = []
    for i in range(4):
        p = Patient()
        ident = Identifier()
        ident.system, ident.value = SYSTEM, _ident()
        name = HumanName()
        name.family, name.given = family, [f"G{i}"]
        p.identifier, p.name, p.gender = [ident], [name], "male"
        created = p.create(server)
        assert created is not None and "resourceType" in created
        ids.append(created["id"])
    # search: the library's own paging over the bundle's next links
    search = Patient.where(struct={"family": family, "_count": "3"})
    found = search.perform_resources(server)
    assert sorted(p.id for p in found) == sorted(ids)
    # read, update, history
    p = Patient.read(ids[0], server)
    assert p.name[0].family == family
    p.gender = "female"
    p.update(server)
    hist = Bundle(server.request_json(f"Patient/{ids[0]}/_history"))
    assert hist.total == 2 and hist.entry[0].resource.gender == "female"
    # conditional update through the raw server API the library exposes
    body = Patient.read(ids[1], server).as_json()
    body["gender"] = "other"
    value = body["identifier"][0]["value"]
    r = server.put_json(f"Patient?identifier={SYSTEM}|{value}", body)
    assert r.status_code == 200
    assert Patient.read(ids[1], server).gender == "other"
    # a transaction
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": family}]},
         "request": {"method": "POST", "url": "Patient"}}]}
    out = Bundle(server.post_json("", tx).json())
    assert out.type == "transaction-response" and out.entry[0].response.status.startswith("201")
