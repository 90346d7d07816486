"""A decimal keeps its precision as written (R4: 1.50 mg is not 1.5 mg) through every path that
reads a stored resource and writes it again: a subset of it (_elements, _summary), a pretty answer,
a JSON Patch or FHIRPath Patch that does not touch it, and lenient intake's repair of a connector's
resource. Each path parsed the stored JSON into floats: 1.50 came back as 1.5 and 0.0000010 as
1e-06, a patch stored them so, and a repair failed with a 500."""

from __future__ import annotations

import base64
import re

import httpx
import orjson
import pytest

from hub.core import httpclient
from tests.api_helpers import FHIR_JSON

WRITTEN = [b"1.50", b"0.0000010", b"100.000", b"1e2"]


def _observation(effective: bytes = b"2020-03-01T10:00:00.5-03:00") -> bytes:
    return (b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
            b'"valueQuantity":{"value":1.50,"unit":"mg"},"effectiveDateTime":"' + effective +
            b'","referenceRange":[{"low":{"value":0.0000010},"high":{"value":100.000}}],'
            b'"component":[{"code":{"text":"e"},"valueQuantity":{"value":1e2}}]}')


def _kept(body: bytes, values=WRITTEN) -> list[bytes]:
    """Those of ``values`` not in ``body`` as JSON numbers written so."""
    return [v for v in values if not re.search(rb"[:\[]\s*" + re.escape(v) + rb"\s*[,}\]]", body)]


@pytest.fixture
def c(client):
    """The suite's client (``live``: one server per backend) sending FHIR JSON."""
    client.headers["content-type"] = "application/fhir+json"
    return client


def _create(c) -> str:
    r = c.post("/Observation", content=_observation())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_subsets_and_pretty_answers_keep_them(c):
    oid = _create(c)
    for params in ({"_id": oid, "_elements": "valueQuantity,referenceRange,component"},
                   {"_id": oid, "_summary": "data"}, {"_id": oid, "_pretty": "true"}):
        assert _kept(c.get("/Observation", params=params).content) == [], params
    assert _kept(c.get(f"/Observation/{oid}", params={"_pretty": "true"}).content) == []


@pytest.mark.parametrize("patch,media,written", [
    # a patch that does not touch them
    (b'[{"op":"replace","path":"/status","value":"amended"}]', "application/json-patch+json",
     WRITTEN),
    # JSON Patch compares numbers by value (1.5 is 1.50), copies them, and writes its own as sent
    (b'[{"op":"test","path":"/valueQuantity/value","value":1.5},'
     b'{"op":"copy","from":"/referenceRange/0/high","path":"/referenceRange/0/low"},'
     b'{"op":"replace","path":"/valueQuantity/value","value":2.500}]',
     "application/json-patch+json", [b"2.500", b"100.000", b"1e2"]),
    (orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.status"},
        {"name": "value", "valueCode": "amended"}]}]}), "application/fhir+json", WRITTEN),
    # FHIRPath compares them as numbers; a value sent as 3.50 is stored as 3.50
    (b'{"resourceType":"Parameters","parameter":[{"name":"operation","part":['
     b'{"name":"type","valueCode":"replace"},{"name":"path","valueString":'
     b'"Observation.referenceRange.where(low.value > 0).high.value"},'
     b'{"name":"value","valueDecimal":3.50}]}]}', "application/fhir+json",
     [b"1.50", b"0.0000010", b"3.50", b"1e2"]),
])
def test_a_patch_keeps_what_it_does_not_change_and_writes_what_it_does_as_sent(
        c, patch, media, written):
    oid = _create(c)
    r = c.patch(f"/Observation/{oid}", content=patch, headers={"content-type": media})
    assert r.status_code == 200, r.text
    assert _kept(c.get(f"/Observation/{oid}").content, written) == []
    # the same patch as a transaction entry
    oid = _create(c)
    data = patch if media == "application/json-patch+json" else None
    entry = ({"resource": {"resourceType": "Binary", "contentType": media,
                           "data": base64.b64encode(data).decode()}} if data else
             {"resource": orjson.Fragment(patch)})
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {**entry, "request": {"method": "PATCH", "url": f"Observation/{oid}"}}]}
    r = c.post("", content=orjson.dumps(tx))
    assert r.status_code == 200, r.text
    assert _kept(c.get(f"/Observation/{oid}").content, written) == []


def test_a_connector_s_resource_repaired_keeps_them(live):
    with httpx.Client(base_url=live.base, timeout=30,
                      auth=live.client_auth(roles=("connector",), institution="H7"), verify=httpclient.verify()) as c:
        r = c.post("/Observation", content=_observation(b"2020-03-01T10:00:00"),
                   headers={**FHIR_JSON, "prefer": "return=representation"})
        assert r.status_code == 201, r.text
        assert r.json()["effectiveDateTime"] == "2020-03-01T10:00:00+08:00"
        assert _kept(r.content) == []


def test_a_profile_compares_them_as_numbers(c):
    """An invariant over a decimal kept as written failed to evaluate (so "did not hold"), and a
    pattern value 1.5 did not equal 1.50: a conforming resource was refused."""
    url = "https://fhir-region-hub.example/StructureDefinition/lab-mg"
    sd = {"resourceType": "StructureDefinition", "id": "lab-mg", "url": url, "name": "LabMg",
          "status": "active", "kind": "resource", "abstract": False, "type": "Observation",
          "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
          "derivation": "constraint", "differential": {"element": [
              {"id": "Observation", "path": "Observation", "constraint": [
                  {"key": "mg-1", "severity": "error", "human": "a value over 1 mg",
                   "expression": "valueQuantity.value > 1"}]},
              {"id": "Observation.referenceRange.high", "path": "Observation.referenceRange.high",
               "patternQuantity": {"value": 100}}]}}
    assert c.put("/StructureDefinition/lab-mg", json=sd).status_code in (200, 201)
    body = _observation().replace(b'"status"', b'"meta":{"profile":["' + url.encode() + b'"]},'
                                                b'"status"', 1)
    r = c.post("/Observation", content=body, headers={"prefer": "return=representation"})
    assert r.status_code == 201, r.text
    assert _kept(r.content) == []
    low = body.replace(b'"value":1.50', b'"value":0.50')  # the invariant still bites
    assert c.post("/Observation", content=low).status_code == 422


def test_the_operator_sees_them_as_written(live, c):
    """`hub show` printed a stored 1.50 as 1.5, and the console's record page showed 1.5 mg."""
    import os
    import subprocess
    import sys

    from hub.console.record import _show
    from hub.core import jsontext

    oid = _create(c)
    env = {**os.environ, **live.env}  # the server's store, SQLite or PostgreSQL
    shown = subprocess.run([sys.executable, "-m", "hub.cli", "show", f"Observation/{oid}"],
                           env=env, capture_output=True, timeout=60, check=True).stdout
    assert _kept(shown) == [], shown
    stored = c.get(f"/Observation/{oid}").content
    d = jsontext.as_numbers(jsontext.loads_exact(stored))
    assert _show(d["valueQuantity"]) == "1.50 mg"
    assert "0.0000010" in _show(d["referenceRange"])
