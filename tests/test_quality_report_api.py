"""GET /fhir/$quality-report: counts as a JSON table or CSV; every mistake a 400 OperationOutcome.

Two ways in: the router in an app built here (the projection attached in its lifespan as
``hub serve`` does), for the many small cases; and a real ``hub serve`` process (``client``
fixture) fed through ``POST /cda``, once the router is wired into ``hub.api.app``.
"""

from __future__ import annotations

import csv
import io
import warnings
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

with warnings.catch_warnings():  # starlette 1.x would rather see httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fhir_mapping.base import SourceInfo
from fhir_mapping.documents import quality_report
from hub.api import quality as quality_api
from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op
from hub.repository import Repository
from projections.quality import COUNT_COLUMNS, RULE_SYSTEM

CST = timezone(timedelta(hours=8))
FIXTURES = Path(__file__).parent / "fixtures"
CLEAN = (FIXTURES / "quality" / "wst500-C0002-clean.xml").read_bytes()


def finding(rule: str, severity: str = "error") -> dict:
    return {"severity": severity, "code": "invalid",
            "details": {"coding": [{"system": RULE_SYSTEM, "code": rule}], "text": rule}}


def put_report(hub: Hub, institution: str, doc: str, decision: str, rules: list[str],
               when: datetime) -> None:
    d = quality_report({"issue": [finding(r) for r in rules] or [
        {"severity": "information", "code": "informational", "details": {"text": "clean"}}]},
        decision, SourceInfo(institution=institution), doc, "C0005", when)
    hub.execute([Op("PUT", "OperationOutcome", d["id"], d, url="x")], Context(), atomic=True)


def build_app(settings: Settings) -> FastAPI:
    """What ``hub.api.app.create_app`` does for this router: error handlers, attach/detach."""
    from hub.api.app import _install_error_handlers

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = settings.open_store()
        app.state.hub = Hub(store)
        app.state.repo = Repository(app.state.hub)  # where the router's caller is authorized
        quality_api.attach(app, settings, store)
        try:
            yield
        finally:
            quality_api.detach(app)
            store.close()

    app = FastAPI(lifespan=lifespan)
    _install_error_handlers(app)
    app.include_router(quality_api.router)
    return app


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The router in an app of its own over a SQLite store holding a few reports."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("quality-api") / "data")
    settings.database_url = None
    app = build_app(settings)
    with TestClient(app, base_url="http://hub.test") as tc:
        hub = tc.app.state.hub
        late = datetime(2026, 11, 20, 23, 30, tzinfo=CST)
        put_report(hub, "H1", "a", "reject", ["cda.header.patient-id", "cda.unit.missing"], late)
        put_report(hub, "H1", "b", "accept-with-warnings", ["cda.unit.missing"],
                   late + timedelta(hours=1))
        put_report(hub, "=H2", "c", "accept", [], late)
        yield tc


URL = "/fhir/$quality-report"


def test_json_table_with_totals_read_your_writes(local):
    r = local.get(URL)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["report"] == "document-quality" and body["upToDate"] is True
    assert body["timezone"] == "+08:00"
    assert body["group"] == ["institution", "document_type", "rule", "day"]
    assert body["columns"] == body["group"] + list(COUNT_COLUMNS)
    assert body["totals"]["documents"] == 3 and body["totals"]["findings"] == 3
    assert body["position"] == int(r.headers["x-hub-position"]) >= 3
    keyed = {(row["institution"], row["rule"], row["day"]): row for row in body["rows"]}
    assert keyed[("H1", "cda.unit.missing", "2026-11-20")]["documents"] == 1
    assert keyed[("H1", "cda.unit.missing", "2026-11-21")]["documents"] == 1
    assert keyed[("=H2", None, "2026-11-20")]["accepted"] == 1
    # a report written now is in the very next answer
    put_report(local.app.state.hub, "H9", "new", "reject", ["r.new"], datetime.now(CST))
    again = local.get(URL, params={"group": "institution"}).json()
    assert {row["institution"]: row["documents"] for row in again["rows"]}["H9"] == 1


def test_filters_groups_and_csv(local):
    r = local.get(URL, params={"institution": "H1", "group": "rule,decision", "_format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {(x["rule"], x["decision"], x["documents"]) for x in rows} == {
        ("cda.header.patient-id", "reject", "1"), ("cda.unit.missing", "reject", "1"),
        ("cda.unit.missing", "accept-with-warnings", "1")}
    by_day = local.get(URL, params=[("group", "day"), ("since", "2026-11-21"),
                                    ("institution", "H1"), ("institution", "=H2")]).json()
    assert [(x["day"], x["documents"]) for x in by_day["rows"]] == [("2026-11-21", 1)]
    assert by_day["filters"] == {"institution": ["H1", "=H2"], "since": "2026-11-21"}
    totals = local.get(URL, params={"group": "", "until": "2026-11-20"}).json()
    assert totals["rows"] == [totals["totals"]] and totals["totals"]["documents"] == 2
    csv_text = local.get(URL, params={"group": "institution"},
                         headers={"accept": "text/csv"}).text
    assert "'=H2" in csv_text  # a spreadsheet would run =H2 as a formula
    cut = local.get(URL, params={"_count": "1", "group": "institution"})
    assert cut.json()["truncated"] is True and len(cut.json()["rows"]) == 1
    assert cut.headers["x-hub-truncated"] == "true"
    assert local.get(URL, params={"rule": "cda.unit.missing", "group": ""}).json()[
        "totals"]["documents"] == 2


@pytest.mark.parametrize("query", [
    "bogus=1", "group=institution,secret", "group=day%3B%20DROP%20TABLE%20q_report",
    "since=yesterday", "since=2026-13-01", "until=2026-02-30", "since=2026-11-20T10:00",
    "since=2026-11-21&until=2026-11-20", "since=2026&since=2027", "_count=0", "_count=1000001",
    "_count=%C2%B2", "_count=-1", "institution=", "institution=H1%00", "institution=" + "x" * 2000,
    "rule=%0A", "since=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96",
    "&".join(["institution=H1"] * 101),
])
def test_hostile_parameters_get_a_400_operation_outcome(local, query):
    r = local.get(f"{URL}?{query}")
    assert r.status_code == 400, (query, r.text)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"


@pytest.mark.parametrize("fmt,accept", [("xml", None), ("html", None), (None, "application/xml")])
def test_formats_other_than_json_and_csv_get_406(local, fmt, accept):
    r = local.get(URL, params={"_format": fmt} if fmt else {},
                  headers={"accept": accept} if accept else {})
    # (the OperationOutcome comes in XML when XML was asked for)
    assert r.status_code == 406 and b"OperationOutcome" in r.content


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(params=st.lists(st.tuples(st.sampled_from(
    ["institution", "since", "until", "group", "rule", "document_type", "_count", "_format",
     "_pretty", "x"]), _text), max_size=5))
def test_any_query_gets_an_answer_never_a_crash(local, params):
    r = local.get(URL, params=params)
    assert r.status_code in (200, 400, 406), r.text
    if r.status_code != 200:
        assert r.json()["resourceType"] == "OperationOutcome"


# -- through a real server -------------------------------------------------------------------------


def test_the_router_is_served_ahead_of_the_type_search(tmp_path):
    """``hub serve`` routes ``$quality-report`` (ahead of the ``/fhir/{type}`` search route, which
    would take it for a search of a type of that name)."""
    from hub.api.app import create_app

    def ours(route) -> bool:  # the route itself, or (FastAPI >= 0.16x) the router included
        return (getattr(route, "path", None) == URL
                or getattr(route, "original_router", None) is quality_api.router)

    # a data directory of the test's own: built at import, it left ./var/auth.sqlite in the
    # checkout (the Makefile's HUB_DATA_DIR), readable by all, before any test ran
    routes = list(create_app(Settings(data_dir=tmp_path / "data")).routes)
    mine = [i for i, r in enumerate(routes) if ours(r)]
    search = [i for i, r in enumerate(routes) if getattr(r, "path", None) == "/fhir/{rtype}"]
    assert mine and (not search or mine[0] < search[0])


def test_documents_posted_to_the_server_are_counted(client):
    xml = {"content-type": "application/xml", "x-hub-source-institution": "H0042"}
    assert client.post("/../cda", content=CLEAN, headers=xml).status_code in (200, 201)
    bad = client.post("/../cda", content=b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>",
                      headers=xml)
    assert bad.status_code == 422
    r = client.get("/$quality-report", params={"institution": "H0042",
                                               "group": "institution,decision"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["upToDate"] and body["totals"]["documents"] == 2
    assert body["totals"]["rejected"] == 1
    assert {row["decision"] for row in body["rows"]} >= {"reject"}
    csv_r = client.get("/$quality-report", params={"institution": "H0042", "_format": "csv"})
    assert csv_r.headers["content-type"].startswith("text/csv")
    assert csv_r.text.startswith("institution,document_type,rule,day,documents")


def test_the_server_refuses_hostile_parameters_with_400(client):
    for query in ("group=nope", "since=2026-99", "institution=%00", "unknown=1"):
        r = client.get(f"/$quality-report?{query}")
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
