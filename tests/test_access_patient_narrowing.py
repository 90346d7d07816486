"""A patient-context token's searches are narrowed in their plan to its patient's compartment:
another patient's record, however large, answers as an empty one does (no total withheld, no
page link), with either search backend, over real HTTP with real tokens.

Judged only after the search, the matches of another patient's record were counted one by one
up to a cap, and past it the answer said "no total": a caller could tell how many records
someone else has. The records are written through the store before the server starts (as many
as the cap needs, in one transaction), then indexed by the server itself.
"""

from __future__ import annotations

import time

import httpx
import pytest

from hub.auth.signer import Signer
from hub.core import httpclient
from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub, Op
from hub.repository import VISIBLE_TOTAL_UP_TO
from projections.search.backends import open_es_index
from tests.api_helpers import unique
from tests.conftest import LiveServer, make_settings
from tests.es_server import es_server, prefix  # noqa: F401 - fixture

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MANY = VISIBLE_TOTAL_UP_TO + 50  # more than a caller's hidden matches are counted one by one


def _obs(rid: str, pid: str, category: str = "vital-signs") -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-03-01"}


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(request, tmp_path_factory):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("pnar"), request)
    if request.param == "elasticsearch":
        es = request.getfixturevalue("es_server")
        settings.search, settings.es_url, settings.es_prefix = "elasticsearch", es.url, prefix()
    me, big, empty, other = (f"p{unique()[:12]}" for _ in range(4))
    ops = [Op("PUT", "Patient", p, {"resourceType": "Patient", "id": p}, url="x")
           for p in (me, big, empty, other)]
    ops += [Op("PUT", "Observation", f"m{i}{me}", _obs(f"m{i}{me}", me), url="x") for i in range(3)]
    ops += [Op("PUT", "Observation", f"b{i}", _obs(f"b{i}", big), url="x") for i in range(MANY)]
    ops += [Op("PUT", "Observation", "olab", _obs("olab", other, "laboratory"), url="x"),
            Op("PUT", "Observation", "ovit", _obs("ovit", other), url="x")]
    hub = Hub(settings.open_store())
    try:
        for r in hub.execute(ops, Context(), atomic=True):
            assert not isinstance(r, FhirError), r
    finally:
        hub.store.close()
    with LiveServer(settings) as live:
        with httpx.Client(base_url=live.base, headers=live.headers, timeout=120,
                          verify=httpclient.verify()) as admin:
            deadline = time.monotonic() + 300
            while admin.get("/Observation", params={"subject": f"Patient/{big}",
                                                    "_summary": "count"}).json().get("total") \
                    != MANY:  # the server indexes what it found in the store
                assert time.monotonic() < deadline, "the records were not indexed"
                time.sleep(0.5)
        live.ids = {"me": me, "big": big, "empty": empty, "other": other}
        yield live
    if request.param == "elasticsearch":
        index = open_es_index(settings.es_url, settings.es_prefix)
        index.drop()
        index.close()


def _as(live: LiveServer, scope: str = "patient/*.rs") -> httpx.Client:
    pid = live.ids["me"]
    token = Signer(live.settings.data_dir).issue(
        {"iss": live.origin + "/auth", "aud": live.base, "sub": f"user-{pid}", "scope": scope,
         "patient": pid, "hub_roles": ["clinician"]}, 300)
    return httpx.Client(base_url=live.base, timeout=120, verify=httpclient.verify(),
                        headers={"accept": "application/fhir+json",
                                 "authorization": f"Bearer {token}"})


def _answer(c: httpx.Client, path: str, **params: str) -> tuple:
    """What a caller learns from a search: its total, its matches, its outcome, a next link."""
    r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    b = r.json()
    matches = sorted(e["resource"]["id"] for e in b.get("entry", ())
                     if e["search"]["mode"] != "outcome")
    notes = [i.get("diagnostics") for e in b.get("entry", ()) if e["search"]["mode"] == "outcome"
             for i in e["resource"]["issue"]]
    return b.get("total"), matches, notes, any(x["relation"] == "next" for x in b.get("link", ()))


def test_another_patients_record_answers_as_an_empty_one(world):
    big, empty = (f"Patient/{world.ids[k]}" for k in ("big", "empty"))
    with _as(world) as c:
        for params in ({"_summary": "count"}, {"_count": "5"},
                       {"_count": "5", "_total": "accurate"}, {"_count": "0", "_total": "accurate"}):
            t0 = time.monotonic()
            one = _answer(c, "/Observation", subject=big, **params)
            assert time.monotonic() - t0 < 10, params  # narrowed, not judged one by one
            assert one == _answer(c, "/Observation", subject=empty, **params), params
            assert one[0] in (0, None) and not one[1] and not one[3], (params, one)
        # its own compartment, counted whole; another patient's records in no count
        assert _answer(c, "/Observation", _summary="count")[0] == 3
        assert _answer(c, "/Patient", _summary="count")[0] == 1
        assert _answer(c, f"/{big}/Observation", _summary="count") \
            == _answer(c, f"/{empty}/Observation", _summary="count")


def test_a_query_scope_beside_it_still_admits_anyones_matches(world):
    other = f"Patient/{world.ids['other']}"
    with _as(world, "patient/*.rs user/Observation.rs?category=laboratory") as c:
        assert _answer(c, "/Observation", subject=other)[1] == ["olab"]
        assert _answer(c, "/Observation", subject=other, _summary="count")[0] == 1
        total, mine, _, _ = _answer(c, "/Observation", _count="50", _total="accurate")
        assert total == 4 and "olab" in mine and "ovit" not in mine
