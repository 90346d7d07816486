"""PATCH (R4 http.html#patch): JSON Patch and FHIRPath Patch, If-Match, and what a patch may not do."""

from __future__ import annotations

import pytest

from tests.api_helpers import FHIR_JSON, create, patient

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


def test_if_match(client, stored):
    ok = client.patch(f"/{stored}", headers={**JSON_PATCH, "if-match": 'W/"1"'},
                      json=[{"op": "replace", "path": "/gender", "value": "female"}])
    assert ok.status_code == 200
    stale = client.patch(f"/{stored}", headers={**JSON_PATCH, "if-match": 'W/"1"'},
                         json=[{"op": "replace", "path": "/gender", "value": "male"}])
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/{stored}").json()["gender"] == "female"


@pytest.mark.parametrize("headers,body,status", [
    (JSON_PATCH, [{"op": "replace", "path": "/id", "value": "other"}], 422),  # id may not change
    (JSON_PATCH, [{"op": "replace", "path": "/resourceType", "value": "Group"}], 422),
    (JSON_PATCH, [{"op": "test", "path": "/gender", "value": "other"}], 422),  # a failed test
    (JSON_PATCH, [{"op": "remove", "path": "/nope"}], 422),  # nothing there
    (JSON_PATCH, [{"op": "frobnicate", "path": "/gender"}], 400),  # malformed
    (JSON_PATCH, {"op": "replace"}, 400),  # not an array
    (JSON_PATCH, [{"op": "replace", "path": "/gender", "value": 7}], 422),  # the result is invalid
    (JSON_PATCH, [{"op": "add", "path": "/wrongElement", "value": "x"}], 422),
    (FHIR_JSON, {"resourceType": "Patient"}, 400),  # a FHIRPath Patch is a Parameters
    (FHIR_JSON, _params(_op("replace", "Patient.name", value={"valueString": "x"})), 422),  # 2 names
    (FHIR_JSON, _params(_op("replace", "Patient.id", value={"valueId": "zz"})), 422),
    (FHIR_JSON, _params(_op("explode", "Patient")), 400),
    (FHIR_JSON, _params(_op("delete", "Patient.name[")), 400),  # not FHIRPath
    (FHIR_JSON, {"resourceType": "Parameters", "parameter": [{"name": "operation"}]}, 400),
    ({"content-type": "text/plain"}, "x", 415),
])
def test_bad_patches_are_refused_and_change_nothing(client, stored, headers, body, status):
    before = client.get(f"/{stored}").json()
    r = client.patch(f"/{stored}", headers=headers,
                     **({"content": body} if isinstance(body, str) else {"json": body}))
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/{stored}").json() == before


def test_patch_of_what_is_not_there(client):
    r = client.patch("/Patient/does-not-exist", headers=JSON_PATCH,
                     json=[{"op": "replace", "path": "/gender", "value": "male"}])
    assert r.status_code == 404
    assert client.patch("/NoSuchType/x", headers=JSON_PATCH, json=[]).status_code in (400, 404)
