"""Every OperationDefinition the CapabilityStatement names can be read from the server (real HTTP,
``hub serve``), and says what its handler takes: each declared input accepted, any other refused."""

from __future__ import annotations

import orjson
import pytest
from fhir.resources.R4B.operationdefinition import OperationDefinition

from hub.core import resource as res
from tests.conftest import FHIR_JSON
from tests.test_terminology_api import loaded  # noqa: F401  (fixture)
from tests.test_terminology_operations import DEPT, VS

HL7_EXPAND = "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"
# the inputs of R4's ValueSet/$expand (its OperationDefinition)
R4_EXPAND_INPUTS = ("url", "valueSet", "valueSetVersion", "context", "contextDirection", "filter",
                    "date", "offset", "count", "includeDesignations", "designation",
                    "includeDefinition", "activeOnly", "excludeNested", "excludeNotForUI",
                    "excludePostCoordinated", "displayLanguage", "exclude-system",
                    "system-version", "check-system-version", "force-system-version")


def named(client) -> dict[str, set[str]]:
    """canonical -> the operation names /metadata gives it."""
    rest = client.get("/metadata").json()["rest"][0]
    out: dict[str, set[str]] = {}
    for op in [*rest.get("operation", []), *(o for r in rest["resource"]
                                               for o in r.get("operation", []))]:
        out.setdefault(op["definition"], set()).add(op["name"])
    return out


def definition(client, url: str) -> dict:
    found = client.get("/OperationDefinition", params={"url": url})
    assert found.status_code == 200, found.text
    bundle = found.json()
    assert bundle["total"] == 1, (url, bundle)
    return bundle["entry"][0]["resource"]


def inputs(d: dict) -> dict[str, dict]:
    return {p["name"]: p for p in d["parameter"] if p["use"] == "in"}


def test_every_operation_the_statement_names_can_be_read(client):
    ops = named(client)
    assert len(ops) >= 20
    for url, names in ops.items():
        d = definition(client, url)  # found by its canonical
        r = client.get(f"/OperationDefinition/{d['id']}")  # and read by its id
        assert r.status_code == 200, (url, r.text)
        body = r.json()
        OperationDefinition.model_validate(body)
        res.validate("OperationDefinition", orjson.dumps(body), body)
        assert body["url"] == url and body["code"] in names
    # the store still answers what is not shipped
    assert client.get("/OperationDefinition/no-such-operation").status_code == 404
    # in XML too, as any read
    xml = client.get("/OperationDefinition/ValueSet-expand", params={"_format": "xml"})
    assert xml.status_code == 200 and b"<OperationDefinition" in xml.content


def test_the_expand_it_declares_is_the_expand_it_answers(loaded):  # noqa: F811
    """$expand refuses some of R4's inputs: /metadata names the hub's own definition, based on
    R4's, whose inputs are exactly those the handler takes."""
    (url,) = [u for u, names in named(loaded).items() if "expand" in names]
    assert url != HL7_EXPAND
    d = definition(loaded, url)
    assert d["base"] == HL7_EXPAND
    declared = inputs(d)
    samples = {"boolean": {"valueBoolean": True}, "integer": {"valueInteger": 2},
               "dateTime": {"valueDateTime": "2024-01-01"}, "code": {"valueCode": "zh"},
               "uri": {"valueUri": DEPT + "|2"}, "canonical": {"valueCanonical": DEPT + "|2"},
               "string": {"valueString": "内科"}}
    for name, p in declared.items():
        if name == "url":
            continue
        given = {"name": name, "resource": {"resourceType": "ValueSet", "status": "active",
                                            "compose": {"include": [{"system": DEPT}]}}} \
            if p["type"] == "ValueSet" else {"name": name, **samples[p["type"]]}
        body = {"resourceType": "Parameters", "parameter": [
            *([] if name == "valueSet" else [{"name": "url", "valueUri": VS + "internal"}]),
            given]}
        r = loaded.post("/ValueSet/$expand", json=body, headers=FHIR_JSON)
        assert r.status_code in (200, 404), (name, r.text)  # 404: no such version held
    for name in [n for n in R4_EXPAND_INPUTS if n not in declared] + ["no-such-input"]:
        r = loaded.get("/ValueSet/$expand", params={"url": VS + "internal", name: "x"})
        assert r.status_code == 400, (name, r.text)
    assert {"context", "contextDirection", "designation", "exclude-system"}.isdisjoint(declared)


@pytest.mark.parametrize("op,samples", [
    ("mpi-review", {"status": "all", "_count": "5", "_cursor": "0"}),
    ("unmapped-codes", {"institution": "hospital-1", "system": "urn:oid:1.2.3", "_count": "5"}),
])
def test_a_hub_operation_declares_exactly_what_it_takes(client, op, samples):
    (url,) = [u for u, names in named(client).items() if op in names]
    assert url == f"https://fhir-region-hub.example/OperationDefinition/{op}"
    declared = inputs(definition(client, url))
    assert set(declared) == set(samples)
    for name, value in samples.items():
        r = client.get(f"/${op}", params={name: value})
        assert r.status_code == 200, (name, r.text)
    for name in ("rule", "patient", "no-such-input"):
        assert client.get(f"/${op}", params={name: "x"}).status_code == 400


SHIPPED = "ValueSet-expand"
MPI_REVIEW = "https://fhir-region-hub.example/OperationDefinition/mpi-review"


def test_a_bundle_reads_them_as_a_plain_get_does(client):
    plain = client.get(f"/OperationDefinition/{SHIPPED}").json()
    gets = [f"OperationDefinition/{SHIPPED}", f"OperationDefinition/{SHIPPED}/_history/1",
            f"OperationDefinition?url={MPI_REVIEW}", f"OperationDefinition/{SHIPPED}/_history"]
    for btype in ("batch", "transaction"):
        r = client.post("/", json={"resourceType": "Bundle", "type": btype, "entry": [
            {"request": {"method": "GET", "url": u}} for u in gets]}, headers=FHIR_JSON)
        assert r.status_code == 200, r.text
        read, vread, found, history = r.json()["entry"]
        assert all(e["response"]["status"].startswith("200") for e in (read, vread, found,
                                                                          history)), r.text
        assert read["resource"] == plain and vread["resource"] == plain
        assert read["response"]["etag"] == 'W/"1"'
        assert [e["resource"]["url"] for e in found["resource"]["entry"]] == [MPI_REVIEW]
        assert history["resource"]["total"] == 1


def test_a_shipped_definition_has_one_version(client):
    read = client.get(f"/OperationDefinition/{SHIPPED}")
    assert read.json()["meta"]["versionId"] == "1" and read.headers["etag"] == 'W/"1"'
    vread = client.get(f"/OperationDefinition/{SHIPPED}/_history/1")
    assert vread.status_code == 200 and vread.json() == read.json()
    gone = client.get(f"/OperationDefinition/{SHIPPED}/_history/2")
    assert gone.status_code == 404 and gone.json()["resourceType"] == "OperationOutcome"
    history = client.get(f"/OperationDefinition/{SHIPPED}/_history").json()
    assert history["type"] == "history" and history["total"] == 1
    assert [e["resource"] for e in history["entry"]] == [read.json()]


def _refused(r) -> None:
    assert r.status_code == 409, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "conflict" and "read-only" in issue["diagnostics"]


def test_what_the_server_defines_cannot_be_written(client):
    """A stored copy of a shipped id or canonical would be shadowed by the shipped one: refused
    (409) in any write, plain or conditional, alone or in a Bundle."""
    shipped = client.get(f"/OperationDefinition/{SHIPPED}").json()
    body = {k: v for k, v in shipped.items() if k != "meta"} | {"name": "Mine"}
    at_url = {**body, "url": MPI_REVIEW}
    del at_url["id"]
    _refused(client.put(f"/OperationDefinition/{SHIPPED}", json=body, headers=FHIR_JSON))
    _refused(client.post("/OperationDefinition", json=at_url, headers=FHIR_JSON))
    _refused(client.put("/OperationDefinition", params={"url": shipped["url"]},
                        json={**body, "id": "elsewhere"}, headers=FHIR_JSON))
    _refused(client.delete(f"/OperationDefinition/{SHIPPED}"))
    _refused(client.delete("/OperationDefinition", params={"url": MPI_REVIEW}))
    _refused(client.patch(f"/OperationDefinition/{SHIPPED}", content=orjson.dumps(
        [{"op": "replace", "path": "/name", "value": "Mine"}]),
        headers={"content-type": "application/json-patch+json"}))
    # a definition of its own is stored, but cannot be patched onto a shipped canonical
    mine = {**at_url, "url": "https://example.org/OperationDefinition/mine"}
    created = client.post("/OperationDefinition", json=mine, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    _refused(client.patch(f"/OperationDefinition/{rid}", content=orjson.dumps(
        [{"op": "replace", "path": "/url", "value": MPI_REVIEW}]),
        headers={"content-type": "application/json-patch+json"}))
    # in a batch each such entry is refused, the rest written; a transaction is refused whole
    batch = client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "PUT", "url": f"OperationDefinition/{SHIPPED}"}, "resource": body},
        {"request": {"method": "DELETE", "url": f"OperationDefinition?url={MPI_REVIEW}"}},
        {"request": {"method": "POST", "url": "OperationDefinition"}, "resource": at_url},
        {"request": {"method": "PUT", "url": f"OperationDefinition/{rid}"},
         "resource": {**mine, "id": rid, "name": "Mine2"}},
    ]}, headers=FHIR_JSON)
    assert [e["response"]["status"][:3] for e in batch.json()["entry"]] == \
        ["409", "409", "409", "200"], batch.text
    _refused(client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "OperationDefinition",
                     "ifNoneExist": f"url={MPI_REVIEW}"}, "resource": at_url}]},
        headers=FHIR_JSON))
    # what the server answers is still its own, and nothing of those url was stored
    assert client.get(f"/OperationDefinition/{SHIPPED}").json() == shipped
    assert client.get(f"/OperationDefinition/{rid}").json()["url"] == mine["url"]
    stored = client.get("/OperationDefinition", params={"name": "Mine"}).json()
    assert {e["resource"]["url"] for e in stored.get("entry", [])} <= {mine["url"]}
