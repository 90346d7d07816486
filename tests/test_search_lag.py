"""An answer read from a search index behind the store says so (it is being rebuilt, or far
behind a bulk load): a search warns, ``$everything`` and conditional writes answer 503. They
answered 200 as if complete: a shared record read during ``hub projections rebuild search``
came back empty."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():  # starlette 1.x would rather see httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from hub.api import search as search_api
from hub.api.app import create_app
from hub.auth.signer import Signer
from hub.core.config import Settings
from tests.api_helpers import FHIR_JSON, observation, patient, token


def test_answers_from_a_lagging_index_say_so(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    settings.base_url = "http://hub.test/fhir"
    with TestClient(create_app(settings), base_url="http://hub.test") as c:
        c.headers["authorization"] = "Bearer " + Signer(settings.data_dir).issue(
            {"iss": "http://hub.test/auth", "aud": "http://hub.test/fhir", "sub": "admin",
             "scope": "system/*.cruds", "hub_roles": ["admin"]}, 300)
        p = c.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
        assert p.status_code == 201, p.text
        pid = p.json()["id"]
        assert c.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).status_code == 200
        runner = c.app.state.search.runner
        # the follower applies nothing, and a request waits for it no time: the index lags
        monkeypatch.setattr(search_api, "RYW_TIMEOUT", 0.0)
        with runner._stepping:
            assert c.post("/fhir/Observation", json=observation(f"Patient/{pid}"),
                          headers=FHIR_JSON).status_code == 201
            r = c.get("/fhir/Observation", params={"subject": f"Patient/{pid}"})
            assert r.status_code == 200
            outcome = [e["resource"] for e in r.json().get("entry", [])
                       if e["search"]["mode"] == "outcome"]
            assert outcome and outcome[0]["issue"][0]["code"] == "incomplete", r.text
            r = c.get(f"/fhir/Patient/{pid}/$everything")
            assert r.status_code == 503 and r.json()["issue"][0]["code"] == "transient", r.text
            again = patient()
            r = c.post("/fhir/Patient", json=again, headers={
                **FHIR_JSON, "If-None-Exist": f"name={again['name'][0]['family']}"
                                              f"&identifier={token(again)}&gender=unknown"})
            assert r.status_code == 503, r.text
        monkeypatch.undo()
        r = c.get("/fhir/Observation", params={"subject": f"Patient/{pid}"})
        assert r.json()["total"] == 1 and all(e["search"]["mode"] == "match"
                                              for e in r.json()["entry"])
