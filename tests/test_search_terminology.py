"""Token modifiers that need the terminology service: :in, :not-in, :below, :above."""

from __future__ import annotations

import uuid

import orjson
import pytest

from hub.core import httpclient
from tests.conftest import BACKENDS, FHIR_JSON, live_server
from tests.es_server import es_server  # noqa: F401 - fixture

CS = "http://example.org/fhir/CodeSystem/lab-panels"
OID = "urn:oid:1.2.156.999.7"



@pytest.fixture(scope="module", params=[*BACKENDS, "elasticsearch"])
def live(request, tmp_path_factory):
    """Each event store with the SQLite index, and searches answered by Elasticsearch."""
    with live_server(request, tmp_path_factory, request.param) as server:
        yield server


@pytest.fixture(scope="module")
def world(live):
    """A hierarchical code system (A > A1 > A1a, B), a value set of everything below A, and
    Observations coded with it, one of them under the system's OID instead of its URL."""
    import httpx

    tag = uuid.uuid4().hex[:8]
    vs = f"http://example.org/fhir/ValueSet/panel-a-{tag}"
    gender_vs = f"http://example.org/fhir/ValueSet/women-{tag}"
    entries = [
        {"resourceType": "CodeSystem", "id": f"panels-{tag}", "url": CS, "status": "active",
         "content": "complete", "hierarchyMeaning": "is-a",
         "identifier": [{"system": "urn:ietf:rfc:3986", "value": OID}],
         "concept": [{"code": "A", "display": "Panel A", "concept": [
             {"code": "A1", "display": "A one", "concept": [{"code": "A1a", "display": "A one a"}]}]},
             {"code": "B", "display": "Panel B"}]},
        {"resourceType": "ValueSet", "id": f"panel-a-{tag}", "url": vs, "status": "active",
         "compose": {"include": [{"system": CS, "filter": [
             {"property": "concept", "op": "is-a", "value": "A"}]}]}},
        {"resourceType": "ValueSet", "id": f"women-{tag}", "url": gender_vs, "status": "active",
         "compose": {"include": [{"system": "http://hl7.org/fhir/administrative-gender",
                                  "concept": [{"code": "female"}]}]}},
        {"resourceType": "Patient", "id": f"w-{tag}", "gender": "female",
         "name": [{"family": f"Term{tag}"}]},
        {"resourceType": "Patient", "id": f"m-{tag}", "gender": "male",
         "name": [{"family": f"Term{tag}"}]},
    ]
    for code, system in (("A", CS), ("A1", OID), ("A1a", CS), ("B", CS)):
        entries.append({"resourceType": "Observation", "id": f"{code}-{tag}", "status": "final",
                        "code": {"coding": [{"system": system, "code": code}]},
                        "subject": {"reference": f"Patient/w-{tag}"}})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": e, "request": {"method": "PUT", "url": f"{e['resourceType']}/{e['id']}"}}
        for e in entries]}
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        r = c.post("", content=orjson.dumps(bundle), headers=FHIR_JSON)
        assert r.status_code == 200, r.text[:500]
    return {"tag": tag, "vs": vs, "gender_vs": gender_vs}


def ids(client, rtype, params, tag):
    r = client.get(f"/{rtype}", params={**params, "_count": "100"})
    assert r.status_code == 200, r.text[:500]
    return sorted(e["resource"]["id"].removesuffix(f"-{tag}") for e in r.json().get("entry", [])
                  if e["resource"]["id"].endswith(tag))


@pytest.mark.parametrize("params, expected", [
    ({"code:below": f"{CS}|A"}, ["A", "A1", "A1a"]),  # A1 is coded under the OID
    ({"code:below": f"{OID}|A1"}, ["A1", "A1a"]),  # the OID names the same system
    ({"code:above": f"{CS}|A1a"}, ["A", "A1", "A1a"]),
    ({"code:above": f"{CS}|B"}, ["B"]),
    ({"code:below": f"{CS}|A1a,{CS}|B"}, ["A1a", "B"]),  # comma: OR
    ({"code:below": f"{CS}|ZZZ"}, []),  # a code the system lacks has nothing below it but itself
])
def test_below_and_above_follow_the_hierarchy(client, world, params, expected):
    assert ids(client, "Observation", params, world["tag"]) == expected


def test_in_and_not_in_a_value_set(client, world):
    tag = world["tag"]
    assert ids(client, "Observation", {"code:in": world["vs"]}, tag) == ["A", "A1", "A1a"]
    assert ids(client, "Observation", {"code:not-in": world["vs"],
                                       "subject": f"Patient/w-{tag}"}, tag) == ["B"]


def test_in_matches_codes_indexed_without_their_fixed_system(client, world):
    # Patient.gender is a code whose binding fixes the system; it is indexed without one
    tag = world["tag"]
    assert ids(client, "Patient", {"gender:in": world["gender_vs"],
                                   "family": f"Term{tag}"}, tag) == ["w"]
    assert ids(client, "Patient", {"gender:not-in": world["gender_vs"],
                                   "family": f"Term{tag}"}, tag) == ["m"]


@pytest.mark.parametrize("params, says", [
    ({"code:in": "http://example.org/fhir/ValueSet/nope"}, "nope"),
    ({"code:below": "A"}, "system|code"),
    ({"code:below": f"{CS}|"}, "system|code"),
    ({"code:below": "http://example.org/unknown-system|A"}, "unknown-system"),
    ({"_id:in": "http://example.org/fhir/ValueSet/x"}, "_id"),
])
def test_bad_terminology_modifiers_are_400_outcomes(client, world, params, says):
    r = client.get("/Observation", params=params)
    assert r.status_code == 400, r.text[:300]
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and says in body["issue"][0]["diagnostics"]
