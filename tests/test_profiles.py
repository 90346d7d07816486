"""Profiles a region enforces (StructureDefinitions stored through the API) and $validate:
cardinality, pattern and fixed values, required bindings, invariants, meta.profile and
HUB_REQUIRED_PROFILES; hostile profiles answered clearly."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import httpx
import pytest

from hub.core import httpclient
from hub.core.config import Settings
from tests.api_helpers import FHIR_JSON, expressions
from tests.conftest import LiveServer

IG = Path(__file__).parent / "fixtures" / "ig"
URL = "https://fhir-region-hub.example/StructureDefinition/cn-patient"
STRICT = {**FHIR_JSON, "prefer": "handling=strict"}


def _load(name: str) -> dict:
    return json.loads((IG / name).read_text())


def good() -> dict:
    return {"resourceType": "Patient", "meta": {"profile": [URL]}, "active": True,
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}],
            "name": [{"family": "王"}], "gender": "female"}


@pytest.fixture(scope="module")
def ig(live):
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        for name in ("cn-gender.json", "cn-patient.json"):
            d = _load(name)
            r = c.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON)
            assert r.status_code in (200, 201), r.text
    return live


def _broken(change) -> dict:
    d = copy.deepcopy(good())
    change(d)
    return d


BROKEN = [
    ("no identifier", lambda d: d.pop("identifier"), "Patient.identifier"),
    ("another identifier system", lambda d: d["identifier"][0].update(system="urn:x"),
     "Patient.identifier"),
    ("an identifier value too short (invariant)", lambda d: d["identifier"][0].update(value="1"),
     "Patient.identifier.value"),
    ("no name", lambda d: d.pop("name"), "Patient.name"),
    ("three names", lambda d: d.update(name=[{"family": "a"}, {"family": "b"}, {"family": "c"}]),
     "Patient.name"),
    ("gender outside the required value set", lambda d: d.update(gender="other"), "Patient.gender"),
    ("no gender", lambda d: d.pop("gender"), "Patient.gender"),
    ("active not the fixed value", lambda d: d.update(active=False), "Patient.active"),
]


def test_a_conforming_resource_is_stored(client, ig):
    r = client.post("/Patient", json=good(), headers=FHIR_JSON)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("label,change,where", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_declared_profile_is_enforced(client, ig, label, change, where):
    r = client.post("/Patient", json=_broken(change), headers=FHIR_JSON)
    assert r.status_code == 422, (label, r.text)
    exprs = [e for i in r.json()["issue"] for e in i.get("expression", [])]
    assert any(e.startswith(where) for e in exprs), (label, exprs)


def test_without_the_profile_declared_nothing_is_required(client, ig):
    d = _broken(lambda d: d.pop("identifier"))
    d.pop("meta")
    assert client.post("/Patient", json=d, headers=FHIR_JSON).status_code == 201


def test_in_a_transaction_the_entry_is_named(client, ig):
    bad = _broken(lambda d: d.pop("name"))
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": good(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad, "request": {"method": "POST", "url": "Patient"}}]}
    r = client.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 422
    assert any(e.startswith("Bundle.entry[1].resource.name")
               for i in r.json()["issue"] for e in i.get("expression", []))


def _reports(client) -> int:
    """Quality reports stored (lenient intake writes one per repaired write)."""
    return client.get("/OperationOutcome", params={"_summary": "count"}).json()["total"]


def test_an_unknown_declared_profile(client, ig):
    d = good()
    d["meta"]["profile"] = ["https://elsewhere.example/StructureDefinition/x"]
    before = _reports(client)
    r = client.post("/Patient", json=d, headers={**FHIR_JSON, "prefer": "return=OperationOutcome"})
    assert r.status_code == 201 and any(i["severity"] == "warning" for i in r.json()["issue"])
    assert _reports(client) == before  # a profile's warning is no intake repair to report
    assert client.post("/Patient", json=d, headers=STRICT).status_code == 422


def test_a_profile_of_another_type_is_refused_where_it_is_declared(client, ig):
    """An Observation declaring the Patient profile: the error pointed at `Patient`, an element
    the Observation has not; it names the declaration."""
    d = {"resourceType": "Observation", "meta": {"profile": [URL]}, "status": "final",
         "code": {"text": "pulse"}}
    r = client.post("/Observation", json=d, headers=FHIR_JSON)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert "is for Patient, not Observation" in issue["diagnostics"]
    assert issue["expression"] == ["Observation.meta.profile"]


def test_a_patch_must_leave_the_resource_conforming(client, ig):
    rid = client.post("/Patient", json=good(), headers=FHIR_JSON).json()["id"]
    r = client.patch(f"/Patient/{rid}", headers={"content-type": "application/json-patch+json"},
                     json=[{"op": "remove", "path": "/name"}])
    assert r.status_code == 422 and any(e.startswith("Patient.name") for i in r.json()["issue"]
                                        for e in i.get("expression", []))
    assert client.get(f"/Patient/{rid}").json()["name"]  # nothing stored
    ok = client.patch(f"/Patient/{rid}", headers={"content-type": "application/json-patch+json"},
                      json=[{"op": "replace", "path": "/gender", "value": "male"}])
    assert ok.status_code == 200


def test_validate_operation(client, ig):
    ok = client.post("/Patient/$validate", json=good(), headers=FHIR_JSON)
    assert ok.status_code == 200
    assert {i["severity"] for i in ok.json()["issue"]} == {"information"}
    bad = _broken(lambda d: d.pop("gender"))
    bad.pop("meta")
    plain = client.post("/Patient/$validate", json=bad, headers=FHIR_JSON).json()
    assert {i["severity"] for i in plain["issue"]} == {"information"}  # no profile asked for
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": bad}, {"name": "profile", "valueUri": URL},
        {"name": "mode", "valueCode": "create"}]}
    out = client.post("/Patient/$validate", json=params, headers=FHIR_JSON)
    assert out.status_code == 200 and any(i["severity"] == "error" for i in out.json()["issue"])
    # instance level: the stored resource, and update and delete modes; nothing is stored
    rid = client.post("/Patient", json=good(), headers=FHIR_JSON).json()["id"]
    assert client.get(f"/Patient/{rid}/$validate").json()["issue"][0]["severity"] == "information"
    wrong_id = {**good(), "id": "other"}
    r = client.post(f"/Patient/{rid}/$validate", params={"mode": "update"}, json=wrong_id,
                    headers=FHIR_JSON)
    assert any(i.get("expression") == ["Patient.id"] for i in r.json()["issue"])
    assert client.post(f"/Patient/{rid}/$validate", params={"mode": "delete"},
                       headers=FHIR_JSON).status_code == 200
    assert client.post("/Patient/nope/$validate", params={"mode": "delete"},
                       headers=FHIR_JSON).status_code == 404
    assert client.post("/Patient/$validate", params={"mode": "frob"}, json=good(),
                       headers=FHIR_JSON).status_code == 400
    invalid = client.post("/Patient/$validate", json={"resourceType": "Patient", "gender": 5},
                          headers=FHIR_JSON).json()
    assert any(i["severity"] == "error" for i in invalid["issue"])


@pytest.mark.parametrize("body", [b"null", b"[]", b"5", b'"Patient"', b"true",
                                  b'{"resourceType":"Parameters","parameter":[{"name":"resource"}]}'])
def test_a_validate_body_that_is_no_resource_is_a_400(client, body):
    """`null` sent to Patient/{id}/$validate was taken for no body: the stored record was
    validated and the answer said the resource is valid."""
    rid = client.post("/Patient", json=good(), headers=FHIR_JSON).json()["id"]
    for path in (f"/Patient/{rid}/$validate", "/Patient/$validate"):
        r = client.post(path, content=body, headers=FHIR_JSON)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", (path, r.text)
    # no body at all still validates the stored record
    assert client.post(f"/Patient/{rid}/$validate", headers=FHIR_JSON).status_code == 200


def test_hostile_profiles_answer_clearly(client, ig):
    sd = _load("cn-patient.json")
    sd["id"], sd["url"] = "broken-fhirpath", "https://fhir-region-hub.example/StructureDefinition/bf"
    sd["differential"]["element"] = [{"id": "Patient", "path": "Patient", "constraint": [
        {"key": "x-1", "severity": "error", "human": "broken", "expression": "name.(("}]}]
    assert client.put(f"/StructureDefinition/{sd['id']}", json=sd, headers=FHIR_JSON).status_code == 201
    d = {**good(), "meta": {"profile": [sd["url"]]}}
    r = client.post("/Patient", json=d, headers=FHIR_JSON)
    assert r.status_code == 422 and "x-1" in r.text  # an expression that cannot be evaluated
    big = _load("cn-patient.json")
    big["id"], big["url"] = "huge", "https://fhir-region-hub.example/StructureDefinition/huge"
    big["differential"]["element"] = [{"id": f"Patient.x{i}", "path": "Patient.name"}
                                      for i in range(6000)]
    assert client.put(f"/StructureDefinition/{big['id']}", json=big,
                      headers=FHIR_JSON).status_code == 201
    r = client.post("/Patient", json={**good(), "meta": {"profile": [big["url"]]}}, headers=FHIR_JSON)
    assert r.status_code == 422 and "at most" in r.text
    assert client.get("/metadata").status_code == 200


def test_required_profiles_apply_whether_declared_or_not(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_REQUIRED_PROFILES", f"Patient={URL}")
    settings = Settings(data_dir=tmp_path / "d")
    settings.auth = True
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
        undeclared = {k: v for k, v in good().items() if k != "meta"}
        # not held yet: required and unknown is an error
        assert c.post("/Patient", json=undeclared, headers=FHIR_JSON).status_code == 422
        for name in ("cn-gender.json", "cn-patient.json"):
            d = _load(name)
            assert c.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON).status_code == 201
        assert c.post("/Patient", json=undeclared, headers=FHIR_JSON).status_code == 201
        bad = {**undeclared, "name": []}
        bad.pop("name")
        assert c.post("/Patient", json=bad, headers=FHIR_JSON).status_code == 422
        # other types are not held to it
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
        assert c.post("/Observation", json=obs, headers=FHIR_JSON).status_code == 201


def test_a_profile_is_checked_in_the_version_named(client, live):
    """``meta.profile`` ``url|version`` is checked against that version; a bare URL against the
    latest held (1.10 after 1.9); a version not held is an unknown profile. Before, the stored
    definition whose id sorted first answered for every version."""
    url = "https://fhir-region-hub.example/StructureDefinition/versioned"

    def sd(rid: str, version: str, required: str) -> dict:
        return {"resourceType": "StructureDefinition", "id": rid, "url": url, "version": version,
                "name": "Versioned", "status": "active", "kind": "resource", "abstract": False,
                "type": "Patient", "derivation": "constraint",
                "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
                "differential": {"element": [{"id": "Patient", "path": "Patient"}, {
                    "id": f"Patient.{required}", "path": f"Patient.{required}", "min": 1}]}}

    for d in (sd("ver-z", "1.9", "gender"), sd("ver-a", "1.10", "birthDate")):
        assert client.put(f"/StructureDefinition/{d['id']}", json=d,
                          headers=FHIR_JSON).status_code in (200, 201)

    def write(profile: str, **content) -> int:
        d = {"resourceType": "Patient", "meta": {"profile": [profile]}, **content}
        return client.post("/Patient", json=d, headers=STRICT).status_code

    assert write(f"{url}|1.9", gender="male") == 201
    assert write(f"{url}|1.9", birthDate="1990-01-01") == 422
    assert write(f"{url}|1.10", birthDate="1990-01-01") == 201
    assert write(url, birthDate="1990-01-01") == 201  # the latest: 1.10
    assert write(url, gender="male") == 422
    assert write(f"{url}|3", gender="male", birthDate="1990-01-01") == 422  # not held (strict)
    # a pre-release comes before its release (SemVer): 1.10-ballot is no later than 1.10
    d = sd("ver-b", "1.10-ballot", "gender")
    assert client.put("/StructureDefinition/ver-b", json=d,
                      headers=FHIR_JSON).status_code in (200, 201)
    assert write(url, birthDate="1990-01-01") == 201  # still 1.10
    # $validate's profile parameter must be a canonical URL, not a number
    bad = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient"}},
        {"name": "profile", "valueUri": 5}]}
    r = client.post("/Patient/$validate", json=bad, headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_a_required_binding_on_a_concept_needs_a_code_of_the_value_set(client, live):
    """Text alone, or a display-only coding beside a wrong code, met a required binding with a
    warning ("the value set is not known here") and was stored; each is now the error a wrong
    code is. A right code among others still meets it."""
    system = "https://fhir-region-hub.example/CodeSystem/marital-test"
    cs = {"resourceType": "CodeSystem", "id": "marital-test", "url": system, "status": "active",
          "content": "complete", "concept": [{"code": "A1"}, {"code": "A2"}]}
    vs = {"resourceType": "ValueSet", "id": "marital-a1", "status": "active",
          "url": "https://fhir-region-hub.example/ValueSet/marital-a1",
          "compose": {"include": [{"system": system, "concept": [{"code": "A1"}]}]}}
    url = "https://fhir-region-hub.example/StructureDefinition/marital"
    sd = {"resourceType": "StructureDefinition", "id": "marital", "url": url, "name": "Marital",
          "status": "active", "kind": "resource", "abstract": False, "type": "Patient",
          "derivation": "constraint",
          "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
          "differential": {"element": [{"id": "Patient", "path": "Patient"}, {
              "id": "Patient.maritalStatus", "path": "Patient.maritalStatus",
              "binding": {"strength": "required", "valueSet": vs["url"]}}]}}
    for d in (cs, vs, sd):
        assert client.put(f"/{d['resourceType']}/{d['id']}", json=d,
                          headers=FHIR_JSON).status_code in (200, 201)

    def write(status: dict) -> int:
        d = {"resourceType": "Patient", "meta": {"profile": [url]}, "maritalStatus": status}
        return client.post("/Patient", json=d, headers=FHIR_JSON).status_code

    a1, a2 = {"system": system, "code": "A1"}, {"system": system, "code": "A2"}
    import time
    deadline = time.monotonic() + 15
    while write({"coding": [a1]}) != 201 and time.monotonic() < deadline:
        time.sleep(0.3)  # the terminology read model takes the value set in
    assert write({"coding": [a1]}) == 201
    assert write({"coding": [a2, {"display": "x"}, a1]}) == 201
    assert write({"coding": [a2]}) == 422
    assert write({"text": "whatever"}) == 422
    assert write({"coding": [a2, {"display": "x"}]}) == 422


def test_a_primitive_present_through_its_extension_alone_meets_its_minimum(client, live):
    """A birth date not known, said by a data-absent-reason extension on ``_birthDate``, is
    present in R4: a profile requiring birthDate took it as missing and refused the write."""
    url = "https://fhir-region-hub.example/StructureDefinition/needs-birth-date"
    sd = {"resourceType": "StructureDefinition", "id": "needs-birth-date", "url": url,
          "name": "NeedsBirthDate", "status": "active", "kind": "resource", "abstract": False,
          "type": "Patient", "derivation": "constraint",
          "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
          "differential": {"element": [{"id": "Patient", "path": "Patient"},
                                       {"id": "Patient.birthDate", "path": "Patient.birthDate",
                                        "min": 1}]}}
    assert client.put("/StructureDefinition/needs-birth-date", json=sd,
                      headers=FHIR_JSON).status_code in (200, 201)
    absent = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
              "valueCode": "unknown"}
    d = {"resourceType": "Patient", "meta": {"profile": [url]},
         "_birthDate": {"extension": [absent]}}
    assert client.post("/Patient", json=d, headers=FHIR_JSON).status_code == 201
    bare = {"resourceType": "Patient", "meta": {"profile": [url]}}
    assert client.post("/Patient", json=bare, headers=FHIR_JSON).status_code == 422


def test_invariants_on_choice_elements_see_the_choice_as_written(client, live):
    """The official vital-signs profile's vs-2 (``value.exists() or dataAbsentReason.exists()``)
    refused every vital-sign Observation: ``value`` never resolved to ``valueQuantity`` (the
    expressions ran without the FHIR model). At the root and on an element."""
    url = "https://fhir-region-hub.example/StructureDefinition/needs-a-value"
    rule = {"severity": "error", "source": url}
    sd = {"resourceType": "StructureDefinition", "id": "needs-a-value", "url": url,
          "name": "NeedsAValue", "status": "active", "kind": "resource", "abstract": False,
          "type": "Observation", "derivation": "constraint",
          "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
          "differential": {"element": [
              {"id": "Observation", "path": "Observation", "constraint": [{
                  **rule, "key": "nv-1", "human": "a value or why not",
                  "expression": "value.exists() or dataAbsentReason.exists()"}, {
                  **rule, "key": "nv-2", "human": "a day at least",
                  "expression": "effective.exists() implies (effective as dateTime)"
                                ".toString().length() >= 8"}]},
              {"id": "Observation.component", "path": "Observation.component", "constraint": [{
                  **rule, "key": "nv-3", "human": "a component value",
                  "expression": "value.exists()"}]}]}}
    assert client.put("/StructureDefinition/needs-a-value", json=sd,
                      headers=FHIR_JSON).status_code in (200, 201)
    d = {"resourceType": "Observation", "meta": {"profile": [url]}, "status": "final",
         "code": {"text": "body temperature"}, "effectiveDateTime": "1999-07-02",
         "valueQuantity": {"value": 36.5, "unit": "Cel"},
         "component": [{"code": {"text": "site"}, "valueString": "oral"}]}
    r = client.post("/Observation", json=d, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    for key, change in (("nv-1", lambda x: x.pop("valueQuantity")),
                        ("nv-2", lambda x: x.update(effectiveDateTime="1999")),
                        ("nv-3", lambda x: x["component"][0].pop("valueString"))):
        bad = copy.deepcopy(d)
        change(bad)
        r = client.post("/Observation", json=bad, headers=FHIR_JSON)
        assert r.status_code == 422 and key in r.text, (key, r.text)


def test_a_profile_on_a_profile_keeps_its_invariants_written_on_this(client, live):
    """Vital signs' vs-1 (``($this as dateTime)…`` on ``effective[x]``) failed on every value
    (fhirpathpy knew no ``$this`` at the top, nor a bare value's type), so all 12 official vital
    signs examples were refused; and a profile built on it (bodyheight), whose snapshot carries
    vs-1 and vs-2 with vital signs as their source, skipped them as the base specification's."""
    parent = "https://fhir-region-hub.example/StructureDefinition/vitals-like"
    child = "https://fhir-region-hub.example/StructureDefinition/height-like"
    rules = [{"id": "Observation", "path": "Observation", "constraint": [{
                 "key": "vl-2", "severity": "error", "source": parent, "human": "a value",
                 "expression": "value.exists() or dataAbsentReason.exists()"}]},
             {"id": "Observation.effective[x]", "path": "Observation.effective[x]",
              "constraint": [{"key": "vl-1", "severity": "error", "source": parent,
                              "human": "to the day",
                              "expression": "($this as dateTime).toString().length() >= 8"}]},
             {"id": "Observation.code", "path": "Observation.code", "constraint": [{
                 "key": "vl-3", "severity": "error", "source": parent, "human": "named",
                 "expression": "$this.text.exists()"}]}]
    sd = {"resourceType": "StructureDefinition", "id": "height-like", "url": child,
          "name": "HeightLike", "status": "active", "kind": "resource", "abstract": False,
          "type": "Observation", "derivation": "constraint", "baseDefinition": parent,
          "snapshot": {"element": rules}}
    assert client.put("/StructureDefinition/height-like", json=sd,
                      headers=FHIR_JSON).status_code in (200, 201)
    d = {"resourceType": "Observation", "meta": {"profile": [child]}, "status": "final",
         "code": {"text": "body height"}, "effectiveDateTime": "1999-07-02",
         "valueQuantity": {"value": 66.9, "unit": "in"}}
    r = client.post("/Observation", json=d, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    for key, change in (("vl-1", lambda x: x.update(effectiveDateTime="1999")),
                        ("vl-2", lambda x: x.pop("valueQuantity")),
                        ("vl-3", lambda x: x.update(code={"coding": [{"code": "8302-2"}]}))):
        bad = copy.deepcopy(d)
        change(bad)
        r = client.post("/Observation", json=bad, headers=FHIR_JSON)
        assert r.status_code == 422 and key in r.text, (key, r.text)
    assert "Observation.effectiveDateTime" in client.post(
        "/Observation", json={**d, "effectiveDateTime": "1999"}, headers=FHIR_JSON).text


def test_a_runaway_regular_expression_in_a_profile_is_cut_off(client, live):
    """A backtracking pattern in an invariant held the whole API (Python's re keeps the GIL)
    for as long as it ran: one write stalled every other request."""
    url = "https://fhir-region-hub.example/StructureDefinition/runaway"
    sd = {"resourceType": "StructureDefinition", "id": "runaway", "url": url, "name": "Runaway",
          "status": "active", "kind": "resource", "abstract": False, "type": "Patient",
          "derivation": "constraint", "differential": {"element": [
              {"id": "Patient", "path": "Patient"},
              {"id": "Patient.name", "path": "Patient.name", "constraint": [{
                  "key": "ra-1", "severity": "error", "human": "a name", "source": url,
                  "expression": "text.empty() or text.matches('^(([a-z])+.)+[A-Z]([a-z])+$')"}]}]}}
    assert client.put("/StructureDefinition/runaway", json=sd,
                      headers=FHIR_JSON).status_code in (200, 201)
    d = {"resourceType": "Patient", "meta": {"profile": [url]},
         "name": [{"text": "a" * 5000 + "!"}]}
    t = time.monotonic()
    r = client.post("/Patient", json=d, headers=FHIR_JSON)
    assert r.status_code == 422 and "ra-1" in r.text and "too-costly" in r.text, r.text
    assert time.monotonic() - t < 10


def test_a_profile_narrows_a_choice_to_its_types_and_bounds_a_string(client, live):
    """A profile's ``type`` on ``value[x]`` (Quantity only) and ``maxLength`` were not checked:
    a valueString and an overlong text were stored under a profile they break."""
    url = "https://fhir-region-hub.example/StructureDefinition/weight-like"
    sd = {"resourceType": "StructureDefinition", "id": "weight-like", "url": url,
          "name": "WeightLike", "status": "active", "kind": "resource", "abstract": False,
          "type": "Observation", "derivation": "constraint", "differential": {"element": [
              {"id": "Observation", "path": "Observation"},
              {"id": "Observation.value[x]", "path": "Observation.value[x]", "min": 1,
               "type": [{"code": "Quantity"}]},
              {"id": "Observation.code.text", "path": "Observation.code.text",
               "maxLength": 5}]}}
    assert client.put("/StructureDefinition/weight-like", json=sd,
                      headers=FHIR_JSON).status_code in (200, 201)
    d = {"resourceType": "Observation", "meta": {"profile": [url]}, "status": "final",
         "code": {"text": "kilos"}, "valueQuantity": {"value": 70, "unit": "kg"}}
    assert client.post("/Observation", json=d, headers=FHIR_JSON).status_code == 201
    r = client.post("/Observation", json={**{k: v for k, v in d.items() if k != "valueQuantity"},
                                          "valueString": "seventy kilos"}, headers=FHIR_JSON)
    assert r.status_code == 422 and "Observation.valueString" in expressions(r.json()), r.text
    r = client.post("/Observation", json={**d, "code": {"text": "body weight"}},
                    headers=FHIR_JSON)
    assert r.status_code == 422 and "maxLength" in r.text, r.text


def test_a_primitives_extensions_count_for_its_extension_element():
    """R4 JSON puts a primitive's extensions in its ``_`` sibling: a profile requiring
    ``birthDate.extension`` refused a Patient that had one there."""
    from hub.core.profiles import Profile

    p = Profile({"resourceType": "StructureDefinition", "url": "https://x.example/p",
                 "type": "Patient", "differential": {"element": [
                     {"path": "Patient"}, {"path": "Patient.birthDate.extension", "min": 1}]}})
    time_of_birth = {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                     "valueDateTime": "1970-01-01T10:00:00+08:00"}
    assert p.check({"resourceType": "Patient", "birthDate": "1970-01-01",
                    "_birthDate": {"extension": [time_of_birth]}}) == []
    [issue] = p.check({"resourceType": "Patient", "birthDate": "1970-01-01"})
    assert issue.code == "required" and issue.expression == "Patient.birthDate.extension"


def test_validate_reports_a_write_the_caller_would_be_refused(client, live):
    """$validate mode=create said a Person (POST /Person: 405) and an AuditEvent (403) were
    valid: it answers as the write would, so the refusal is an error issue."""
    person = {"resourceType": "Person", "name": [{"family": "王"}]}
    assert client.post("/Person", json=person, headers=FHIR_JSON).status_code == 405
    r = client.post("/Person/$validate", params={"mode": "create"}, json=person,
                    headers=FHIR_JSON)
    assert r.status_code == 200
    assert [(i["severity"], i["code"]) for i in r.json()["issue"]] == [("error", "not-supported")]
    # without a mode it is the resource alone that is judged: valid
    r = client.post("/Person/$validate", json=person, headers=FHIR_JSON)
    assert {i["severity"] for i in r.json()["issue"]} == {"information"}
    event = {"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded":
             "2024-01-01T00:00:00Z", "agent": [{"requestor": True}],
             "source": {"observer": {"display": "x"}}}
    assert client.post("/AuditEvent", json=event, headers=FHIR_JSON).status_code == 403
    r = client.post("/AuditEvent/$validate", params={"mode": "create"}, json=event,
                    headers=FHIR_JSON)
    assert [(i["severity"], i["code"]) for i in r.json()["issue"]] == [("error", "forbidden")]
    # a caller whose scopes only read: its create would be a 403, and so says $validate
    reader = live.client_auth(scope="system/*.rs")
    with httpx.Client(base_url=live.base, timeout=30, auth=reader, verify=httpclient.verify()) as c:
        patient = {"resourceType": "Patient", "gender": "female"}
        assert c.post("/Patient", json=patient, headers=FHIR_JSON).status_code == 403
        r = c.post("/Patient/$validate", params={"mode": "create"}, json=patient,
                   headers=FHIR_JSON)
        assert [(i["severity"], i["code"]) for i in r.json()["issue"]] == [("error", "forbidden")]
        r = c.post("/Patient/$validate", json=patient, headers=FHIR_JSON)
        assert {i["severity"] for i in r.json()["issue"]} == {"information"}
