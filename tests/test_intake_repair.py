"""Lenient intake: a zone-less time or a single value where R4 has an array is repaired for
callers whose policy says so (connectors by default), said in the answer and counted per
institution; refused (422) for everyone else, and nothing else is ever repaired."""

from __future__ import annotations

import copy

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub.core import httpclient
from hub.core.config import Settings
from hub.core.repair import repair
from hub.synth import Region
from tests.api_helpers import FHIR_JSON
from tests.conftest import LiveServer

OUTCOME = {**FHIR_JSON, "prefer": "return=OperationOutcome"}


def _obs(effective="2024-03-01T10:20:00") -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
            "effectiveDateTime": effective}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("intake") / "d")
    settings.audit, settings.auth = False, True  # (a module of the worker may have set HUB_AUTH=0)
    with LiveServer(settings) as srv:
        yield srv


def _client(srv: LiveServer, **kw) -> httpx.Client:
    return httpx.Client(base_url=srv.base, timeout=30, auth=srv.client_auth(**kw), verify=httpclient.verify())


def test_a_connector_s_defects_are_repaired_said_and_counted(server):
    with _client(server, roles=("connector",), institution="H0901") as c:
        r = c.post("/Observation", json=_obs(), headers=OUTCOME)
        assert r.status_code == 201, r.text
        issues = r.json()["issue"]
        (fix,) = [i for i in issues if i["severity"] == "warning"]
        assert fix["expression"] == ["Observation.effectiveDateTime"]
        assert fix["details"]["coding"][0]["code"] == "intake-datetime-zone"
        rid = r.headers["location"].split("/")[-3]
        assert c.get(f"/Observation/{rid}").json()["effectiveDateTime"] == "2024-03-01T10:20:00+08:00"
        p = {"resourceType": "Patient", "name": {"family": "王", "given": "小明"}}
        r = c.post("/Patient", json=p, headers=FHIR_JSON)
        assert r.status_code == 201
        assert r.json()["name"] == [{"family": "王", "given": ["小明"]}]
        # in a transaction: the entry's outcome says it, with the entry's path
        b = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": _obs(), "request": {"method": "POST", "url": "Observation"}}]}
        r = c.post("", json=b, headers=FHIR_JSON)
        assert r.status_code == 200, r.text
        outcome = r.json()["entry"][0]["response"]["outcome"]
        assert outcome["issue"][0]["expression"] == ["Bundle.entry[0].resource.effectiveDateTime"]
    with _client(server) as admin:
        q = admin.get("/$quality-report", params={"institution": "H0901", "group": "rule"})
        assert q.status_code == 200, q.text
        rules = {row["rule"]: row for row in q.json()["rows"]}
        assert set(rules) == {"intake-datetime-zone", "intake-singleton-array"}
        assert q.json()["totals"]["documents"] == 3  # one report per repaired write
    # and per write, not per resource: each later repaired update of one resource replaced
    # the report of the one before, and the repairs it had made went uncounted
    with _client(server, roles=("connector",), institution="H0902") as c:
        p = {"resourceType": "Patient", "id": "repaired-twice", "name": {"family": "王"}}
        for given in ("一", "二", "三"):
            r = c.put("/Patient/repaired-twice", json={**p, "name": {"family": "王",
                                                                     "given": given}},
                      headers=FHIR_JSON)
            assert r.status_code in (200, 201), r.text
    with _client(server) as admin:
        q = admin.get("/$quality-report", params={"institution": "H0902", "group": "rule"})
        assert q.json()["totals"]["documents"] == 3, q.text


def test_others_are_held_to_strict(server):
    with _client(server) as admin:  # no connector role: refused as before
        r = admin.post("/Observation", json=_obs(), headers=FHIR_JSON)
        assert r.status_code == 422
        assert r.json()["issue"][0]["expression"] == ["Observation.effectiveDateTime"]


def test_nothing_else_is_repaired(server):
    with _client(server, roles=("connector",), institution="H0902") as c:
        # a repairable defect beside one that is not: refused whole, nothing stored
        bad = {**_obs(), "valueQuantity": {"value": "abc"}}
        assert c.post("/Observation", json=bad, headers=FHIR_JSON).status_code == 422
        for effective in ("2024-03-01T10:20", "01/03/2024 10:20", "2024-03-01T25:00:00"):
            assert c.post("/Observation", json=_obs(effective), headers=FHIR_JSON).status_code == 422


def test_an_institution_configured_strict_stays_strict(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_INTAKE_STRICT", "H0903")  # the server started below inherits it
    settings = Settings(data_dir=tmp_path / "e")
    settings.auth = True
    with LiveServer(settings) as srv, \
            _client(srv, roles=("connector",), institution="H0903") as c, \
            _client(srv, roles=("connector",), institution="H0904") as other:
        assert c.post("/Observation", json=_obs(), headers=FHIR_JSON).status_code == 422
        assert other.post("/Observation", json=_obs(), headers=FHIR_JSON).status_code == 201


# -- the repair itself -----------------------------------------------------------------------------

REGION = [d for d in Region(seed=3, people=8).iter_resources()]


def _break(d: dict, rng) -> dict:
    """Hospital-style defects: zones dropped from times, singleton arrays unwrapped."""
    out = copy.deepcopy(d)

    def walk(o):
        if isinstance(o, dict):
            for k, v in list(o.items()):
                if isinstance(v, str) and v.endswith("+08:00") and "T" in v and rng.random() < .7:
                    o[k] = v[:-6]
                elif isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict) and rng.random() < .5:
                    o[k] = v[0]
                    walk(v[0])
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(out)
    return out


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(REGION))), st.randoms(use_true_random=False))
def test_repair_restores_what_the_defects_took_and_leaves_valid_resources_alone(i, rng):
    original = REGION[i]
    assert repair(original["resourceType"], original, "+08:00") is None  # valid: untouched
    broken = _break(original, rng)
    fixed = repair(broken["resourceType"], broken, "+08:00")
    if broken == original:
        assert fixed is None
        return
    assert fixed is not None
    assert fixed[0] == original and fixed[1]  # deterministic: exactly the original back, said
    assert repair(original["resourceType"], fixed[0], "+08:00") is None  # idempotent


def test_validate_answers_what_a_write_by_the_same_caller_would_do(server):
    """$validate refused a zone-less time the same connector's create repaired (201), ignored
    Prefer: handling=strict for a profile the hub does not hold, and passed an update naming
    no resource."""
    unknown = {**_obs(), "meta": {"profile": ["https://x.example/StructureDefinition/none"]}}
    with _client(server, roles=("connector",), institution="H0903") as c:
        r = c.post("/Observation/$validate", params={"mode": "create"}, json=_obs(),
                   headers=FHIR_JSON)
        assert r.status_code == 200, r.text
        sev = {i["severity"] for i in r.json()["issue"]}
        assert "error" not in sev and "warning" in sev, r.text
        strict = c.post("/Observation/$validate", json=unknown,
                        headers={**FHIR_JSON, "prefer": "handling=strict"})
        assert any(i["severity"] == "error" for i in strict.json()["issue"]), strict.text
        r = c.post("/Observation/$validate", params={"mode": "update"}, json=_obs(),
                   headers=FHIR_JSON)
        assert any(i["severity"] == "error" for i in r.json()["issue"]), r.text
    with _client(server) as admin:  # held to strict: the same body is an error
        r = admin.post("/Observation/$validate", params={"mode": "create"}, json=_obs(),
                       headers=FHIR_JSON)
        assert any(i["severity"] == "error" for i in r.json()["issue"]), r.text
