"""The CapabilityStatement (GET [base]/metadata) says what the server really does."""

from __future__ import annotations

import warnings

import httpx
import orjson
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.terminologycapabilities import TerminologyCapabilities

from hub.api.app import create_app
from hub.api.fhirxml import xml_to_json
from hub.core import httpclient
from hub.core import resource as res
from hub.core.config import Settings
from tests.api_helpers import FHIR_JSON, assert_outcome, if_none_exist, patient, token, unique

with warnings.catch_warnings():  # starlette 1.x would rather see httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def statement(client) -> dict:
    r = client.get("/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    return r.json()


def by_type(statement: dict) -> dict[str, dict]:
    (rest,) = statement["rest"]
    return {r["type"]: r for r in rest["resource"]}


def test_is_a_valid_r4_capability_statement(statement, live):
    CapabilityStatement.model_validate(statement)
    # and valid as the hub reads what it is sent (no empty arrays or objects, JSON types)
    raw = orjson.dumps(statement)
    res.validate("CapabilityStatement", raw, orjson.loads(raw))
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance" and statement["status"] == "active"
    assert "application/fhir+json" in statement["format"] or "json" in statement["format"]
    assert "application/fhir+xml" in statement["format"]
    assert statement["implementation"]["url"] == live.base
    assert statement["rest"][0]["mode"] == "server"


def test_system_interactions_are_the_routed_ones(statement):
    codes = {i["code"] for i in statement["rest"][0]["interaction"]}
    assert codes == {"transaction", "batch", "history-system", "search-system"}


def test_patient_capabilities(statement):
    p = by_type(statement)["Patient"]
    codes = {i["code"] for i in p["interaction"]}
    assert codes == {"read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                     "create", "search-type"}
    assert p["versioning"] in ("versioned", "versioned-update")
    assert p["readHistory"] is True and p["updateCreate"] is True
    assert p["conditionalCreate"] is True and p["conditionalUpdate"] is True
    assert p["conditionalDelete"] == "single"
    assert p["conditionalRead"] == "full-support"  # If-None-Match and If-Modified-Since
    params = {s["name"]: s["type"] for s in p["searchParam"]}
    assert {"_id": "token", "identifier": "token", "name": "string", "birthdate": "date",
            "organization": "reference", "_lastUpdated": "date", "_profile": "uri"}.items() \
        <= params.items()
    assert "Patient:organization" in p["searchInclude"]
    o = {s["name"]: s["type"] for s in by_type(statement)["Observation"]["searchParam"]}
    assert o["code-value-quantity"] == "composite" and o["value-quantity"] == "quantity"
    # near is of type special, which the index does not answer, but the planner does
    assert params_of(statement, "Location")["near"] == "special"


def params_of(statement: dict, rtype: str) -> dict[str, str]:
    return {s["name"]: s["type"] for s in by_type(statement)[rtype]["searchParam"]}


def test_each_type_claims_the_search_it_answers(client, statement):
    """Every search was claimed to take _include, _revinclude, _summary, _elements and _has (at
    rest level), Person (the MPI's own search) took none, AuditEvent no _has; near, _text,
    _content and _sort, which work, were claimed nowhere."""
    rest = statement["rest"][0]
    assert {p["name"] for p in rest["searchParam"]} == {"_count", "_total"}
    person = by_type(statement)["Person"]
    assert set(params_of(statement, "Person")) == {"_id", "_lastUpdated", "identifier", "link",
                                                   "patient"}
    assert "searchInclude" not in person and "searchRevInclude" not in person
    for name in (*params_of(statement, "Person"), "_count", "_total"):
        value = {"_lastUpdated": "ge2020-01-01", "_count": "1", "_total": "accurate",
                 "link": "Patient/x", "patient": "Patient/x"}.get(name, "x")
        assert client.get("/Person", params={name: value}).status_code == 200, name
    for name, value in (("_include", "Person:patient"), ("_summary", "count"),
                        ("_sort", "_id"), ("_elements", "id")):
        assert client.get("/Person", params={name: value}).status_code == 400, name
    # no type lists a stored Person as a way to include it
    for r in rest["resource"]:
        assert not [v for v in r.get("searchRevInclude", []) if v.startswith("Person:")], r["type"]
    audit = params_of(statement, "AuditEvent")
    assert {"_sort", "_summary", "_elements"} <= set(audit) and "_has" not in audit
    for q in ({"_sort": "-date"}, {"_summary": "count"}, {"_elements": "type"}):
        assert client.get("/AuditEvent", params=q).status_code == 200, q
    assert client.get("/AuditEvent", params={"_has:Provenance:target:agent": "x"}
                      ).status_code == 400
    # what works and was left out
    patient = params_of(statement, "Patient")
    assert {"_sort", "_include", "_revinclude", "_has", "_summary", "_elements"} <= set(patient)
    assert "_text" not in patient  # not a HUB_FULLTEXT type by default
    assert {"_text", "_content"} <= set(params_of(statement, "DiagnosticReport"))
    strict = {"prefer": "handling=strict"}
    for path, q in (("/Location", {"near": "36.06|103.83|10|km"}),
                    ("/DiagnosticReport", {"_text": "结节"}),
                    ("/DiagnosticReport", {"_content": "结节"}),
                    ("/Patient", {"_sort": "-birthdate,family"})):
        assert client.get(path, params=q, headers=strict).status_code == 200, (path, q)


def test_every_known_type_is_listed(statement):
    types = by_type(statement)
    assert {"Patient", "Observation", "Encounter", "Organization", "Bundle"} <= set(types)
    assert len(types) > 100


def test_what_it_claims_works(client, statement):
    """Spot-check the claims: conditional create, versioned update, conditional delete (single)."""
    p = by_type(statement)["Patient"]
    assert p["conditionalCreate"]
    d = patient()
    tok = token(d)
    r1 = client.post("/Patient", json=d, headers=if_none_exist(d))
    r2 = client.post("/Patient", json=d, headers=if_none_exist(d))
    assert (r1.status_code, r2.status_code) == (201, 200)
    rid = r1.json()["id"]
    assert p["versioning"] == "versioned-update"
    stale = client.put(f"/Patient/{rid}", json=r1.json() | {"gender": "male"},
                       headers={**FHIR_JSON, "if-match": 'W/"0"'})
    assert_outcome(stale, 412)
    assert client.delete("/Patient", params={"identifier": tok}).status_code in (200, 204)
    assert_outcome(client.get(f"/Patient/{rid}"), 410)
    # patch is claimed, and a deleted resource cannot be patched
    assert "patch" in {i["code"] for i in p["interaction"]}
    assert_outcome(client.patch(f"/Patient/{rid}", content=b"[]",
                                headers={"content-type": "application/json-patch+json"}), 410)
    # something that is not in the statement is refused
    assert_outcome(client.post(f"/Patient/{rid}/_history", json={}), 405)
    assert_outcome(client.get(f"/Patient/{unique()}/_history"), 404)
    # the patch formats it takes are named, and each is taken
    assert statement["patchFormat"] == ["application/json-patch+json", "application/fhir+json",
                                        "application/fhir+xml"]
    # the audit is written by the hub alone: no write is claimed for it, and each is refused
    audit = by_type(statement)["AuditEvent"]
    claimed = {i["code"] for i in audit["interaction"]}
    assert claimed & {"create", "update", "patch", "delete"} == set() and "read" in claimed
    assert not audit["updateCreate"] and not audit["conditionalCreate"]
    event = {"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded":
             "2024-01-01T00:00:00Z", "agent": [{"requestor": True}], "source": {"observer": {
                 "display": "x"}}}
    assert client.post("/AuditEvent", json=event, headers=FHIR_JSON).status_code in (403, 405)


def test_every_audit_search_parameter_claimed_is_answered(client, statement):
    """The AuditEvent entry listed every indexed parameter, and eleven of them (_tag, site,
    policy, ...) answered 400: the audit log answers its own few."""
    audit = by_type(statement)["AuditEvent"]
    names = [p["name"] for p in audit["searchParam"]]
    assert "patient" in names and "_tag" not in names and "site" not in names
    values = {"date": "ge2020-01-01", "_lastUpdated": "ge2020-01-01",
              "patient": "Patient/x", "entity": "Patient/x", "agent": "Device/x",
              "_id": "x", "agent-name": "x", "address": "x", "_sort": "-date",
              "_summary": "count", "_elements": "type"}
    for name in names:
        r = client.get("/AuditEvent", params={name: values.get(name, "x"), "_count": "1"})
        assert r.status_code == 200, (name, r.text)
    assert "searchInclude" not in audit and "searchRevInclude" not in audit
    assert "_sort" not in {p["name"] for p in statement["rest"][0]["searchParam"]}


def test_composites_the_index_cannot_answer_are_neither_claimed_nor_guessed(client, statement):
    """Three-component composites were answered from two (a false match on the third), and a
    composite with a reference component was listed but ignored."""
    seq = [p["name"] for p in by_type(statement)["MolecularSequence"]["searchParam"]]
    doc = [p["name"] for p in by_type(statement)["DocumentReference"]["searchParam"]]
    assert "referenceseqid-window-coordinate" not in seq and "relationship" not in doc
    assert "code-value-quantity" in [p["name"] for p in by_type(statement)["Observation"]
                                     ["searchParam"]]
    r = client.get("/MolecularSequence", params={
        "referenceseqid-window-coordinate": "NG_007726.3$55227970$55227970"},
        headers={"prefer": "handling=strict"})
    assert r.status_code == 400, r.text
    # Bundle composition/message name the first entry's resource, inside the Bundle: a chain
    # through them found the local resource of the same id
    bundle = [p["name"] for p in by_type(statement)["Bundle"]["searchParam"]]
    assert "composition" not in bundle and "message" not in bundle
    for q in ({"composition.title": "x"}, {"composition": "Composition/x"},
              {"_include": "Bundle:composition"}):
        r = client.get("/Bundle", params=q, headers={"prefer": "handling=strict"})
        assert r.status_code == 400, (q, r.text)


def test_metadata_formats(client):
    xml = client.get("/metadata", params={"_format": "xml"})
    assert xml.status_code == 200 and b"<CapabilityStatement" in xml.content
    r = client.get("/metadata", params={"_pretty": "true"})
    assert r.status_code == 200 and b"\n  " in r.content


def test_the_quality_report_operation_is_listed(statement):
    ops = statement["rest"][0].get("operation", [])
    # (other system operations, e.g. the MPI's $mpi-review and $resolve-identifier, follow it)
    assert [o["name"] for o in ops][:1] == ["quality-report"]


def test_the_operations_of_the_mpi_and_terminology_are_listed(statement):
    """What a client can discover from /metadata."""
    rest = statement["rest"][0]
    system = {o["name"] for o in rest.get("operation", [])}
    assert {"quality-report", "mpi-review", "resolve-identifier", "unmapped-codes"} <= system
    by_type = {r["type"]: {o["name"] for o in r.get("operation", [])} for r in rest["resource"]}
    assert {"match", "everything", "timeline", "validate"} <= by_type["Patient"]
    assert {"everything", "link", "merge", "unmerge"} <= by_type["Person"]
    assert {"lookup", "validate-code", "subsumes"} <= by_type["CodeSystem"]
    assert {"expand", "validate-code"} <= by_type["ValueSet"]
    assert "translate" in by_type["ConceptMap"]
    person = next(r for r in rest["resource"] if r["type"] == "Person")
    assert {i["code"] for i in person["interaction"]} == {"read", "search-type"}


def test_every_include_and_revinclude_claimed_is_taken(client, statement):
    """Each searchInclude and searchRevInclude of a few types is a search the server answers
    (200, not a 400 for an unknown parameter) under Prefer: handling=strict."""
    types = by_type(statement)
    assert "Observation:subject" in types["Patient"]["searchRevInclude"]
    assert "Observation:subject" in types["Observation"]["searchInclude"]
    for rtype in ("Patient", "Observation", "Encounter", "Organization"):
        for key, param in (("searchInclude", "_include"), ("searchRevInclude", "_revinclude")):
            for value in types[rtype].get(key, []):
                r = client.get(f"/{rtype}", params={param: value, "_count": "1"},
                               headers={"prefer": "handling=strict"})
                assert r.status_code == 200, (rtype, param, value, r.text[:300])


def test_metadata_modes(client, live):
    """mode=terminology answered the CapabilityStatement, and mode=bogus a 200: R4 takes
    full, normative and terminology, the last a TerminologyCapabilities."""
    for version in ("1.0", "2.0"):
        cs = {"resourceType": "CodeSystem", "id": f"tcaps-{version[0]}", "status": "active",
              "url": "https://x.example/CodeSystem/tcaps", "version": version,
              "content": "complete", "concept": [{"code": "a", "display": "A"}]}
        assert client.put(f"/CodeSystem/{cs['id']}", json=cs, headers=FHIR_JSON).is_success
    r = httpx.get(live.base + "/metadata", params={"mode": "terminology"}, verify=httpclient.verify())  # public, as /metadata
    assert r.status_code == 200, r.text
    tc = r.json()
    TerminologyCapabilities.model_validate(tc)
    assert tc["resourceType"] == "TerminologyCapabilities" and tc["kind"] == "instance"
    assert tc["implementation"]["url"] == live.base
    (held,) = [c for c in tc["codeSystem"] if c["uri"] == "https://x.example/CodeSystem/tcaps"]
    assert held["version"] == [{"code": "1.0"}, {"code": "2.0", "isDefault": True}]
    expand = {p["name"] for p in tc["expansion"]["parameter"]}
    assert {"url", "filter", "count", "offset", "activeOnly", "displayLanguage"} <= expand
    assert "date" not in expand and "excludeNotForUI" not in expand  # taken, not acted on
    assert tc["expansion"]["paging"] is True and "closure" not in tc
    # XML: the same resource
    xml = client.get("/metadata", params={"mode": "terminology", "_format": "xml"})
    assert xml.status_code == 200 and b"<TerminologyCapabilities" in xml.content
    assert orjson.loads(xml_to_json(xml.content)) == tc
    for mode in ("full", "normative"):  # the hub has no normative subset: the whole statement
        d = client.get("/metadata", params={"mode": mode}).json()
        assert d["resourceType"] == "CapabilityStatement" and len(by_type(d)) > 100
    assert_outcome(client.get("/metadata", params={"mode": "bogus"}), 400)


def test_security_is_declared_as_the_server_behaves(statement, live):
    """No rest.security: a client could not tell that every call needs a token, nor where to
    get one."""
    sec = statement["rest"][0]["security"]
    assert [c["code"] for s in sec["service"] for c in s["coding"]] == ["SMART-on-FHIR"]
    assert sec["cors"] is False  # no Access-Control-Allow-Origin is ever sent
    smart = httpx.get(live.base + "/.well-known/smart-configuration", verify=httpclient.verify()).json()
    (uris,) = [e for e in sec["extension"] if e["url"].endswith("/oauth-uris")]
    assert {e["url"]: e["valueUri"] for e in uris["extension"]} == {
        "token": smart["token_endpoint"]}  # backend services: no authorize endpoint
    # what it says holds: no token, no answer; CORS preflight gets no allowance
    assert httpx.get(live.base + "/Patient", verify=httpclient.verify()).status_code == 401
    pre = httpx.options(live.base + "/Patient", headers={
        "origin": "https://app.example", "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in pre.headers


def test_security_without_access_control_says_so(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", auth=False)
    settings.database_url = None
    with TestClient(create_app(settings), base_url="http://hub.test") as c:
        sec = c.get("/fhir/metadata").json()["rest"][0]["security"]
        assert "service" not in sec and "extension" not in sec
        assert "off" in sec["description"]
        assert c.get("/fhir/Patient").status_code == 200  # as it says: no token needed


def test_versioning_of_the_restricted_types(client, statement):
    """Person (read and search only, no vread nor history) was declared versioned-update, as
    was AuditEvent, which is never updated."""
    types = by_type(statement)
    assert types["Person"]["versioning"] == "no-version"
    assert types["AuditEvent"]["versioning"] == "versioned"
    assert types["Patient"]["versioning"] == "versioned-update"


R4B_ONLY = {"AdministrableProductDefinition", "Citation", "ClinicalUseDefinition",
            "EvidenceReport", "Ingredient", "ManufacturedItemDefinition", "NutritionProduct",
            "PackagedProductDefinition", "RegulatedAuthorization", "SubscriptionStatus",
            "SubscriptionTopic"}


def test_r4b_only_types_are_served_but_not_declared_under_r4(client, statement):
    """fhirVersion 4.0.1 listed eleven types R4 does not have; the hub serves them (its models
    are R4B, and it takes every official R4B example) but an R4 statement names none."""
    types = by_type(statement)
    assert not R4B_ONLY & set(types)
    for r in types.values():
        assert not [v for v in r.get("searchRevInclude", []) if v.split(":")[0] in R4B_ONLY]
    assert client.get("/Citation", params={"_count": "1"}).status_code == 200
