"""PATCH (R4 http.html#patch): JSON Patch and FHIRPath Patch, If-Match, conditional, in
transaction and batch Bundles, under concurrent writers, and what a patch may not do."""

from __future__ import annotations

import base64
import threading

import orjson
import pytest

from hub.core import httpclient
from tests.api_helpers import (
    FHIR_JSON,
    assert_outcome,
    bundle,
    create,
    expressions,
    instance_versions,
    patient,
    post_entry,
    system_total,
    token,
    unique,
)

JSON_PATCH = {"content-type": "application/json-patch+json"}


def _op(kind: str, path: str, **parts) -> dict:
    p = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        if name == "value":
            p.append({"name": "value", **value})
        elif isinstance(value, int):
            p.append({"name": name, "valueInteger": value})
        else:
            p.append({"name": name, "valueString": value})
    return {"name": "operation", "part": p}


def _params(*ops) -> dict:
    return {"resourceType": "Parameters", "parameter": list(ops)}


@pytest.fixture
def stored(client):
    d = patient(birthDate="1980-01-02", gender="male")
    d["name"] = [{"family": "Wang", "given": ["Xiaoming"]}, {"family": "王", "given": ["小明"]}]
    r = create(client, d)
    return r.headers["location"].split("/_history")[0].split("/fhir/")[-1]


def test_json_patch_makes_a_new_version(client, stored):
    r = client.patch(f"/{stored}", headers=JSON_PATCH, json=[
        {"op": "test", "path": "/birthDate", "value": "1980-01-02"},
        {"op": "replace", "path": "/birthDate", "value": "1980-02-01"},
        {"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "13800138000"}]},
        {"op": "remove", "path": "/name/1"}])
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    body = client.get(f"/{stored}").json()
    assert body["birthDate"] == "1980-02-01" and len(body["name"]) == 1
    assert body["telecom"][0]["value"] == "13800138000" and body["meta"]["versionId"] == "2"
    assert len(client.get(f"/{stored}/_history").json()["entry"]) == 2


def test_fhirpath_patch_operations(client, stored):
    r = client.patch(f"/{stored}", headers=FHIR_JSON, json=_params(
        _op("replace", "Patient.birthDate", value={"valueDate": "1979-12-31"}),
        _op("insert", "Patient.name[0].given", index=0, value={"valueString": "Da"}),
        _op("add", "Patient", name="telecom", value={"valueContactPoint": {"system": "phone", "value": "1"}}),
        _op("delete", "Patient.name.where(family='王')"),
        _op("delete", "Patient.gender")))
    assert r.status_code == 200, r.text
    body = client.get(f"/{stored}").json()
    assert body["birthDate"] == "1979-12-31"
    assert body["name"] == [{"family": "Wang", "given": ["Da", "Xiaoming"]}]
    assert body["telecom"] == [{"system": "phone", "value": "1"}] and "gender" not in body


def test_fhirpath_patch_keeps_each_extension_with_its_value(client):
    """Deleting, inserting or moving a repeating primitive moved its neighbours' extensions
    onto the wrong values (the _given array was left as it was); a primitive with an extension
    could not be replaced or deleted ("matches 2 elements"), nor a family name when another
    name had none."""
    def ext(text: str) -> dict:
        return {"extension": [{"url": "http://example.org/note", "valueString": text}]}

    d = patient(birthDate="1980-01-02")
    d["_birthDate"] = ext("estimated")
    d["name"] = [{"family": "Wang", "given": ["A", "B", "C"], "_given": [ext("for-A"), None,
                                                                         ext("for-C")]},
                 {"text": "no family"}]
    rid = create(client, d).headers["location"].split("/_history")[0].split("/fhir/")[-1]
    r = client.patch(f"/{rid}", headers=FHIR_JSON, json=_params(
        _op("delete", "Patient.name[0].given[0]"),  # A and its extension
        _op("insert", "Patient.name[0].given", index=0, value={"valueString": "Z"}),
        _op("move", "Patient.name[0].given", source=2, destination=0),  # C first
        _op("replace", "Patient.birthDate", value={"valueDate": "1981-01-01"}),
        _op("replace", "Patient.name.family", value={"valueString": "Li"})))
    assert r.status_code == 200, r.text
    body = client.get(f"/{rid}").json()
    name = body["name"][0]
    assert name["given"] == ["C", "Z", "B"] and name["family"] == "Li"
    assert name["_given"] == [ext("for-C"), None, None]
    assert body["birthDate"] == "1981-01-01" and body["_birthDate"] == ext("estimated")
    r = client.patch(f"/{rid}", headers=FHIR_JSON, json=_params(
        _op("delete", "Patient.birthDate")))
    assert r.status_code == 200, r.text
    body = client.get(f"/{rid}").json()
    assert "birthDate" not in body and "_birthDate" not in body


def test_if_match(client, stored):
    ok = client.patch(f"/{stored}", headers={**JSON_PATCH, "if-match": 'W/"1"'},
                      json=[{"op": "replace", "path": "/gender", "value": "female"}])
    assert ok.status_code == 200
    stale = client.patch(f"/{stored}", headers={**JSON_PATCH, "if-match": 'W/"1"'},
                         json=[{"op": "replace", "path": "/gender", "value": "male"}])
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/{stored}").json()["gender"] == "female"


@pytest.mark.parametrize("if_match, status", [
    ('W/"1", W/"2"', 200), ('W/"2", W/"1"', 200), ('"1", W/"3"', 200), ('W/"1",', 200),
    ('W/"2", W/"3"', 412), ('W/"2",W/"9"', 412),
    ('W/"1", *', 400), ('W/"1", bogus', 400),
])
def test_if_match_takes_a_list_of_etags(client, stored, if_match, status):
    """RFC 9110 13.1.1: If-Match is * or a list of entity tags, true when any names the current
    version (a list was a 400). On PATCH, PUT and DELETE alike, and in a Bundle's ifMatch."""
    before = system_total(client)
    r = client.patch(f"/{stored}", headers={**JSON_PATCH, "if-match": if_match},
                     json=[{"op": "replace", "path": "/gender", "value": "female"}])
    assert r.status_code == status, r.text
    if status != 200:
        assert system_total(client) == before
        assert client.get(f"/{stored}").json()["gender"] == "male"
        return
    assert r.headers["etag"] == 'W/"2"'
    d = client.get(f"/{stored}").json()
    moved = if_match.replace('"1"', '"2"')  # the same list, one version on
    r = client.put(f"/{stored}", json=d | {"gender": "other"},
                   headers={**FHIR_JSON, "if-match": moved})
    assert r.status_code == 200 and r.headers["etag"] == 'W/"3"', r.text
    r = client.post("", json=bundle("transaction", {"resource": d | {"gender": "male"}, "request": {
        "method": "PUT", "url": stored, "ifMatch": moved.replace('"2"', '"3"')}}),
        headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert client.delete(f"/{stored}", headers={"if-match": 'W/"1", W/"2"'}).status_code == 412
    assert client.delete(f"/{stored}", headers={"if-match": 'W/"9", W/"4"'}).status_code == 200


@pytest.mark.parametrize("headers,body,status", [
    (JSON_PATCH, [{"op": "replace", "path": "/id", "value": "other"}], 422),  # id may not change
    (JSON_PATCH, [{"op": "replace", "path": "/resourceType", "value": "Group"}], 422),
    (JSON_PATCH, [{"op": "test", "path": "/gender", "value": "other"}], 422),  # a failed test
    (JSON_PATCH, [{"op": "remove", "path": "/nope"}], 422),  # nothing there
    (JSON_PATCH, [{"op": "replace", "path": "/nope/x", "value": 1}], 422),
    (JSON_PATCH, [{"op": "test", "path": "/birthDate", "value": "1999-01-01"}], 422),
    (JSON_PATCH, [{"op": "frobnicate", "path": "/gender"}], 400),  # malformed
    (JSON_PATCH, {"op": "replace"}, 400),  # not an array
    (JSON_PATCH, [{"op": "replace", "path": "/gender", "value": 7}], 422),  # the result is invalid
    (JSON_PATCH, [{"op": "add", "path": "/wrongElement", "value": "x"}], 422),
    (FHIR_JSON, {"resourceType": "Patient"}, 400),  # a FHIRPath Patch is a Parameters
    (FHIR_JSON, _params(_op("replace", "Patient.name", value={"valueString": "x"})), 422),  # 2 names
    (FHIR_JSON, _params(_op("replace", "Patient.id", value={"valueId": "zz"})), 422),
    # the version and its time are the server's: setting them was silently undone, a 200
    (JSON_PATCH, [{"op": "replace", "path": "/meta/versionId", "value": "99"}], 422),
    (JSON_PATCH, [{"op": "replace", "path": "/meta/lastUpdated",
                   "value": "2000-01-01T00:00:00Z"}], 422),
    (JSON_PATCH, [{"op": "add", "path": "/meta", "value": {"versionId": "7"}}], 422),
    (FHIR_JSON, _params(_op("replace", "Patient.meta.versionId", value={"valueId": "77"})), 422),
    (FHIR_JSON, _params(_op("replace", "Patient.meta.lastUpdated",
                            value={"valueInstant": "2000-01-01T00:00:00Z"})), 422),
    (FHIR_JSON, _params(_op("explode", "Patient")), 400),
    (FHIR_JSON, _params(_op("delete", "Patient.name[")), 400),  # not FHIRPath
    (FHIR_JSON, {"resourceType": "Parameters", "parameter": [{"name": "operation"}]}, 400),
    (FHIR_JSON, {"resourceType": "Parameters", "parameter": 1}, 400),  # not an array
    (FHIR_JSON, {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": {}}]},
     400),
    ({"content-type": "text/plain"}, "x", 415),
])
def test_bad_patches_are_refused_and_change_nothing(client, stored, headers, body, status):
    before = client.get(f"/{stored}").json()
    r = client.patch(f"/{stored}", headers=headers,
                     **({"content": body} if isinstance(body, str) else {"json": body}))
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/{stored}").json() == before
    # a refusal quotes no stored value (the library's text quoted the whole resource)
    assert "Xiaoming" not in r.text and "1980-01-02" not in r.text, r.text


def test_patch_of_what_is_not_there(client):
    r = client.patch("/Patient/does-not-exist", headers=JSON_PATCH,
                     json=[{"op": "replace", "path": "/gender", "value": "male"}])
    assert r.status_code == 404
    assert client.patch("/NoSuchType/x", headers=JSON_PATCH, json=[]).status_code in (400, 404)


def _binary(ops: list) -> dict:
    """A JSON Patch as a Bundle entry carries it: a Binary."""
    return {"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64.b64encode(orjson.dumps(ops)).decode()}


def _patch_entry(url: str, resource: dict, if_match: str | None = None) -> dict:
    e: dict = {"resource": resource, "request": {"method": "PATCH", "url": url}}
    if if_match:
        e["request"]["ifMatch"] = if_match
    return e


def test_conditional_patch_changes_the_one_resource_found(client):
    d = patient(gender="male")
    rid = create(client, d).json()["id"]
    r = client.patch("/Patient", params={"identifier": token(d)}, headers=JSON_PATCH,
                     json=[{"op": "replace", "path": "/gender", "value": "female"}])
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid and r.json()["gender"] == "female"
    assert client.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "2"
    # nothing found: 404; two found: 412; nothing changes either way
    before = system_total(client)
    assert_outcome(client.patch("/Patient", params={"identifier": f"urn:x|{unique()}"},
                                headers=JSON_PATCH, json=[]), 404)
    twin = patient(value=d["identifier"][0]["value"])
    create(client, twin)
    assert_outcome(client.patch("/Patient", params={"identifier": token(d)}, headers=JSON_PATCH,
                                json=[{"op": "remove", "path": "/gender"}]), 412)
    assert system_total(client) == before + 1  # the twin only
    assert client.get(f"/Patient/{rid}").json()["gender"] == "female"


def test_patch_entries_in_a_transaction(client):
    a, b = patient(), patient(gender="male")
    aid, bid = create(client, a).json()["id"], create(client, b).json()["id"]
    doctor = {"resourceType": "Practitioner", "name": [{"family": "Li"}]}
    r = client.post("", headers=FHIR_JSON, json=bundle(
        "transaction",
        # FHIRPath Patch naming a resource created by the same transaction
        _patch_entry(f"Patient/{aid}", _params(_op(
            "add", "Patient", name="generalPractitioner",
            value={"valueReference": {"reference": "urn:uuid:0c2d9b2e-8a4f-4c39-9d55-2b7e1c1f0a11"}}))),
        post_entry(doctor, full_url="urn:uuid:0c2d9b2e-8a4f-4c39-9d55-2b7e1c1f0a11"),
        # a JSON Patch in a Binary, its target found by criteria, only at the version named
        _patch_entry(f"Patient?identifier={token(b)}",
                     _binary([{"op": "replace", "path": "/gender", "value": "female"}]),
                     if_match='W/"1"')))
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert [e["response"]["status"][:3] for e in out] == ["200", "201", "200"]
    doctor_id = out[1]["response"]["location"].split("/")[1]
    assert client.get(f"/Patient/{aid}").json()["generalPractitioner"] == [
        {"reference": f"Practitioner/{doctor_id}"}]
    assert client.get(f"/Patient/{bid}").json()["gender"] == "female"
    # the history says how the version came to be
    assert instance_versions(client, f"Patient/{aid}")[0]["request"]["method"] == "PATCH"


def test_a_patch_entry_that_cannot_apply_fails_its_transaction_and_only_itself_in_a_batch(client):
    d = patient(gender="male")
    rid = create(client, d).json()["id"]
    failing = _patch_entry(f"Patient/{rid}", _binary([{"op": "test", "path": "/gender",
                                                        "value": "female"}]))
    other = post_entry(patient())
    before = system_total(client)
    r = client.post("", headers=FHIR_JSON, json=bundle("transaction", other, failing))
    outcome = assert_outcome(r, 422)
    assert any(e.startswith("Bundle.entry[1]") for e in expressions(outcome)), outcome
    assert system_total(client) == before  # all or nothing
    r = client.post("", headers=FHIR_JSON, json=bundle("batch", other, failing))
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "422"]
    assert system_total(client) == before + 1
    assert client.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize("resource,where", [
    (None, "Bundle.entry[0].resource"),
    ({"resourceType": "Patient"}, "Bundle.entry[0].resource"),
    ({**_binary([]), "contentType": "application/json"}, "Bundle.entry[0].resource.contentType"),
    ({**_binary([]), "data": "not base64!"}, "Bundle.entry[0].resource.data"),
    ({"resourceType": "Binary", "contentType": "application/json-patch+json"},
     "Bundle.entry[0].resource.data"),
])
def test_malformed_patch_entries_are_400_at_the_entry(client, resource, where):
    rid = create(client, patient()).json()["id"]
    entry: dict = {"request": {"method": "PATCH", "url": f"Patient/{rid}"}}
    if resource is not None:
        entry["resource"] = resource
    before = system_total(client)
    outcome = assert_outcome(client.post("", headers=FHIR_JSON, json=bundle("transaction", entry)),
                             400)
    assert where in expressions(outcome), outcome
    assert system_total(client) == before


def test_concurrent_patches_all_apply(client, live):
    """Writers racing on one resource without If-Match: each patch is applied to the version it
    replaces (again, if another got in first), so no one's addition is lost."""
    rid = create(client, patient()).json()["id"]
    n, errors = 6, []

    def add(k: int) -> None:
        import httpx

        with httpx.Client(base_url=live.base, timeout=60, auth=live.auth, verify=httpclient.verify()) as c:
            r = c.patch(f"/Patient/{rid}", headers=JSON_PATCH, json=[
                {"op": "add", "path": "/telecom/-" if k else "/telecom", "value": [
                    {"system": "phone", "value": f"1380000000{k}"}] if not k else
                    {"system": "phone", "value": f"1380000000{k}"}}])
            if r.status_code != 200:
                errors.append(r.text)

    add(0)
    threads = [threading.Thread(target=add, args=(k,)) for k in range(1, n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    body = client.get(f"/Patient/{rid}").json()
    assert sorted(t["value"] for t in body["telecom"]) == [f"1380000000{k}" for k in range(n)]
    assert body["meta"]["versionId"] == str(n + 1)


@pytest.mark.parametrize("query,status", [
    ("identifier=", 400),  # no value
    ("identifier=%7C", 400),  # a bare bar
    ("nosuchparam=1", 400),  # criteria the hub cannot judge decide nothing
    ("_id=" + "x" * 5000, (400, 404)),  # hostile length
    ("birthdate=notadate", 400),
    ("_count=1", (400, 412)),  # a control parameter is no criterion
])
def test_conditional_patch_with_criteria_that_cannot_decide_is_refused(client, query, status):
    create(client, patient())
    before = system_total(client)
    r = client.patch(f"/Patient?{query}", headers=JSON_PATCH,
                     json=[{"op": "add", "path": "/gender", "value": "other"}])
    assert_outcome(r, status)
    assert system_total(client) == before


def test_a_fhirpath_patch_in_xml(client, stored):
    xml = b"""<Parameters xmlns="http://hl7.org/fhir">
  <parameter><name value="operation"/>
    <part><name value="type"/><valueCode value="replace"/></part>
    <part><name value="path"/><valueString value="Patient.birthDate"/></part>
    <part><name value="value"/><valueDate value="1979-12-30"/></part>
  </parameter>
</Parameters>"""
    r = client.patch(f"/{stored}", content=xml, headers={"content-type": "application/fhir+xml"})
    assert r.status_code == 200, r.text
    assert client.get(f"/{stored}").json()["birthDate"] == "1979-12-30"
    bad = client.patch(f"/{stored}", content=b"<Parameters xmlns='http://hl7.org/fhir'><oops",
                       headers={"content-type": "application/fhir+xml"})
    assert_outcome(bad, 400)
    assert client.get(f"/{stored}").json()["meta"]["versionId"] == "2"


def test_fhirpath_patch_names_a_choice_as_fhirpath_does(client):
    """``Observation.effective`` and ``Observation.value`` (the FHIRPath names of choice
    elements) matched nothing: a delete answered 200 and deleted nothing, a replace or an add
    of ``value`` was refused. And an add to a repeating primitive with extensions was refused
    (its ``_`` array was left one short)."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
           "effectiveDateTime": "2024-01-01", "valueQuantity": {"value": 5, "unit": "kg"}}
    rid = create(client, obs).headers["location"].split("/_history")[0].split("/fhir/")[-1]
    r = client.patch(f"/{rid}", headers=FHIR_JSON, json=_params(
        _op("delete", "Observation.effective"),
        _op("replace", "Observation.value.ofType(Quantity).value", value={"valueDecimal": 6})))
    assert r.status_code == 200, r.text
    body = client.get(f"/{rid}").json()
    assert "effectiveDateTime" not in body and body["valueQuantity"]["value"] == 6
    r = client.patch(f"/{rid}", headers=FHIR_JSON, json=_params(
        _op("replace", "Observation.value", value={"valueString": "heavy"}),
        _op("add", "Observation", name="effective", value={"valueDateTime": "2024-02-01"})))
    assert r.status_code == 200, r.text
    body = client.get(f"/{rid}").json()
    assert body["valueString"] == "heavy" and "valueQuantity" not in body
    assert body["effectiveDateTime"] == "2024-02-01"
    d = patient()
    d["name"] = [{"family": "A", "given": ["x", "y"],
                  "_given": [None, {"extension": [{"url": "http://e/1", "valueString": "e"}]}]}]
    pid = create(client, d).headers["location"].split("/_history")[0].split("/fhir/")[-1]
    r = client.patch(f"/{pid}", headers=FHIR_JSON, json=_params(
        _op("add", "Patient.name[0]", name="given", value={"valueString": "z"})))
    assert r.status_code == 200, r.text
    name = client.get(f"/{pid}").json()["name"][0]
    assert name["given"] == ["x", "y", "z"] and len(name["_given"]) == 3
