"""Small builders and checks shared by the API conformance tests (no fixtures here)."""

from __future__ import annotations

import random
import uuid
from email.utils import parsedate_to_datetime

import httpx

from tests.conftest import FHIR_JSON  # noqa: F401  (re-exported for the test modules)

SYSTEM = "urn:oid:2.16.156.10011.1.3"  # resident ID number


def unique() -> str:
    return uuid.uuid4().hex


def resident() -> str:
    """A random resident ID number that passes its check (the hub keys conditional interactions
    only on such numbers): 4.4e11 of them, so tests do not meet each other's."""
    from datetime import date, timedelta

    from terminology.resident_id import check_digit

    born = date(1900, 1, 1) + timedelta(days=random.randrange(44_000))
    first17 = f"11{random.randrange(10_000):04d}{born:%Y%m%d}{random.randrange(1000):03d}"
    return first17 + check_digit(first17)


def patient(value: str | None = None, family: str = "Wang", rid: str | None = None,
            system: str = SYSTEM, **extra) -> dict:
    d: dict = {"resourceType": "Patient"}
    if rid:
        d["id"] = rid
    d["identifier"] = [{"system": system, "value": value or (
        resident() if system == SYSTEM else unique())}]
    d["name"] = [{"family": family, "given": ["Xiaoming"]}]
    d.update(extra)
    return d


def observation(subject: str, value: str | None = None) -> dict:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:oid:1.2.156.1", "value": value or unique()}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


def consent(pid: str, provision: dict, org: str = "H1", **extra) -> dict:
    """An active patient-privacy Consent of Patient ``pid`` recorded by Organization ``org``."""
    return {"resourceType": "Consent", "id": unique()[:16], "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{pid}"},
            "organization": [{"reference": f"Organization/{org}"}],
            "provision": provision, **extra}


def token(d: dict) -> str:
    """The identifier search token (system|value) of a resource built above."""
    i = d["identifier"][0]
    return f"{i['system']}|{i['value']}"


def if_none_exist(d: dict) -> dict:
    """Headers of a conditional create on the identifier of ``d``."""
    return {**FHIR_JSON, "if-none-exist": f"identifier={token(d)}"}


def etag_version(r: httpx.Response) -> int:
    tag = r.headers["etag"]
    assert tag.startswith('W/"') and tag.endswith('"'), tag
    return int(tag[3:-1])


def assert_outcome(r: httpx.Response, status: int | tuple[int, ...]) -> dict:
    """The response has the status and an OperationOutcome body with at least one issue."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/fhir+json"), r.headers
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    for issue in body["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information")
        assert issue["code"]
    return body


def expressions(outcome: dict) -> list[str]:
    return [e for i in outcome["issue"] for e in i.get("expression", [])]


def system_total(client: httpx.Client) -> int:
    """How many versions the whole server holds (system history total)."""
    r = client.get("/_history", params={"_total": "accurate", "_count": "1"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def instance_versions(client: httpx.Client, ref: str) -> list[dict]:
    r = client.get(f"/{ref}/_history")
    assert r.status_code == 200, r.text
    return r.json().get("entry", [])


def http_date_ok(value: str) -> None:
    dt = parsedate_to_datetime(value)
    assert dt.tzinfo is not None and value.endswith("GMT"), value


def create(client: httpx.Client, d: dict, **headers) -> httpx.Response:
    r = client.post(f"/{d['resourceType']}", json=d, headers={**FHIR_JSON, **headers})
    assert r.status_code == 201, r.text
    return r


def put(client: httpx.Client, d: dict, **headers) -> httpx.Response:
    return client.put(f"/{d['resourceType']}/{d['id']}", json=d, headers={**FHIR_JSON, **headers})


def bundle(btype: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": btype, "entry": list(entries)}


def post_entry(d: dict, full_url: str | None = None, if_none_exist: str | None = None) -> dict:
    e: dict = {"resource": d, "request": {"method": "POST", "url": d["resourceType"]}}
    if full_url:
        e["fullUrl"] = full_url
    if if_none_exist:
        e["request"]["ifNoneExist"] = if_none_exist
    return e


def put_entry(d: dict, url: str | None = None, if_match: str | None = None) -> dict:
    e = {"resource": d, "request": {"method": "PUT",
                                    "url": url or f"{d['resourceType']}/{d['id']}"}}
    if if_match:
        e["request"]["ifMatch"] = if_match
    return e


def delete_entry(url: str) -> dict:
    return {"request": {"method": "DELETE", "url": url}}


def get_entry(url: str) -> dict:
    return {"request": {"method": "GET", "url": url}}
