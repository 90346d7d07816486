"""Every time a console page prints is in the platform's zone (HUB_TIMEZONE, +08:00 on the test
servers) with its offset: the audit showed UTC without a marker, the quarantine raw ``…Z``
instants, the quality page UTC document times under a trend of local days."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from hub.console.common import shown_time
from hub.core import httpclient
from tests.console_helpers import base, console_user, live, logged_in, wait_for  # noqa: F401

SHOWN = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+08:00")
RAW = re.compile(r"\d\dT\d\d:\d\d")  # an ISO time as stored, in whatever zone


def _table(html: str, table_id: str) -> str:
    return html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]


def _times(table: str) -> list[str]:
    """The first cell's text of each row (the time column of these tables), tags stripped."""
    return [re.sub(r"<[^>]+>", "", cell) for cell in
            re.findall(r"<tr[^>]*><td>(.*?)</td>", table.split("<tbody>", 1)[1])]


@pytest.mark.parametrize("value, shown", [
    ("2026-12-07T00:32:27.123Z", "2026-12-07 08:32:27 +08:00"),
    ("2026-12-07T00:32:27+00:00", "2026-12-07 08:32:27 +08:00"),
    ("2024-01-15T07:00:00+08:00", "2024-01-15 07:00:00 +08:00"),
    ("2024-01-15T07:00:00", "2024-01-15 07:00:00 +08:00"),  # no zone: the platform's already
    ("2024-01-15", "2024-01-15"), ("2024-01", "2024-01"), ("", ""), (None, ""),
    ("2016-12-31T23:59:60Z", "2016-12-31T23:59:60Z"),  # a leap second: as sent
    (1796690347, "2026-12-08 08:39:07 +08:00")])  # epoch seconds (the jobs' start)
def test_the_console_shows_a_time_in_the_platforms_zone(value, shown):
    assert shown_time(value) == shown


def test_the_shown_zone_follows_hub_timezone(zone):
    zone("-05:30")
    assert shown_time("2026-12-07T00:32:27Z") == "2026-12-06 19:02:27 -05:30"


def test_quarantine_audit_and_quality_pages_show_their_times_in_the_platforms_zone(live):
    from fhir_mapping.base import SourceInfo
    from hub import v3intake
    from hub.quarantine import Quarantine

    fix = Path(__file__).parent / "fixtures"
    tag = uuid.uuid4().hex[:8].upper()
    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    message = (fix / "hl7v3" / "visit-register.xml").read_bytes() \
        .replace(b"VS0001", f"VS{tag}".encode()).replace(b"V-MSG-0001", f"V-{tag}".encode())
    qid = v3intake.keep(q, message, SourceInfo(institution="H0001"), "AE", "the hub was busy",
                        "v3.hub-busy", "PRPA_IN400001UV")
    stored = q.get(qid)["time"]  # UTC, "…Z"
    q.close()
    local = datetime.fromisoformat(stored).astimezone(timezone(timedelta(hours=8)))
    c = logged_in(live, console_user(live, ("admin",)))

    # the quarantine's list and entry: the stored instant, in +08:00
    page = c.get("/console/quarantine")
    row = page.text.split(f'id="entry-{qid}"', 1)[1].split("</tr>", 1)[0]
    assert f"{local:%Y-%m-%d %H:%M:%S} +08:00" in row, row
    assert stored not in row
    assert f"{local:%Y-%m-%d %H:%M:%S} +08:00" in c.get(f"/console/quarantine/{qid}").text

    # the audit: who read the record, when (the access audit is on: reading writes one)
    auth = live.client_auth()
    made = httpx.post(base(live) + "/fhir/Patient", auth=auth, timeout=30,
                      json={"resourceType": "Patient", "name": [{"family": f"T{tag}"}]},
                      headers={"content-type": "application/fhir+json"}, verify=httpclient.verify())
    assert made.status_code == 201, made.text
    pid = made.json()["id"]
    httpx.get(base(live) + f"/fhir/Patient/{pid}", auth=auth, timeout=30, verify=httpclient.verify()).raise_for_status()

    def audited() -> list[str]:
        answer = c.get("/console/audit", params={"patient": pid})
        return _times(_table(answer.text, "accesses")) if 'id="accesses"' in answer.text else []

    times = wait_for(lambda: [t for t in audited() if t], timeout=20)
    assert times and all(SHOWN.fullmatch(t) for t in times), times

    # the quality page: the documents' check times, as its trend's days
    inst = f"HQ{tag[:6]}"
    doc = (fix / "quality" / "wst500-C0002-clean.xml").read_bytes() \
        .replace(b"TEST-OP-0001", f"TEST-T-{tag}".encode()).replace(b"MZ20240305001",
                                                                    f"MZ{tag}".encode())
    sent = httpx.post(base(live) + "/cda", content=doc, timeout=60,
                      auth=live.client_auth(roles=("connector",), institution=inst),
                      headers={"content-type": "application/xml",
                               "x-hub-source-institution": inst}, verify=httpclient.verify())
    assert sent.status_code == 201, sent.text

    def documents() -> str:
        table = _table(c.get("/console/quality", params={"institution": inst}).text, "documents")
        return table if inst in table else ""

    table = wait_for(documents, timeout=20)
    assert table, "the quality page never listed the document"
    times = _times(table)
    assert times and all(SHOWN.fullmatch(t) for t in times), times
    assert not RAW.search(table), table


@pytest.mark.parametrize("fetched", [True, False])
def test_the_chart_pages_say_when_the_chart_library_is_missing(tmp_path, monkeypatch, fetched):
    """The chart library is not in the repository (`make console-assets` fetches it): without
    it the overview and quality pages drew blank boxes without a word; now they say what is
    missing and how to get it (and load no script that is not there)."""
    from hub.api.app import create_app
    from hub.auth.clients import REGISTRY_FILE
    from hub.auth.users import UserRegistry
    from hub.console import common
    from hub.core.config import Settings
    from tests.conftest import app_server

    library = tmp_path / "echarts.min.js"
    if fetched:
        library.write_text("/* the library */")
    monkeypatch.setattr(common, "ECHARTS", library)
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    settings.auth, settings.audit = True, False
    (tmp_path / "data").mkdir()
    UserRegistry(settings.data_dir / REGISTRY_FILE).add("steward", "correct horse battery",
                                                        ["steward"])
    with app_server(create_app(settings)) as port:
        settings.base_url = f"http://127.0.0.1:{port}/fhir"
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, verify=httpclient.verify())
        assert c.post("/console/login", data={"name": "steward",
                                              "password": "correct horse battery"}).status_code == 303
        for path in ("/console/overview?lang=en", "/console/quality?lang=en"):
            page = c.get(path)
            assert page.status_code == 200, page.text[:300]
            if fetched:
                assert 'id="no-charts"' not in page.text and "vendor/echarts.min.js" in page.text
            else:
                notice = page.text.split('id="no-charts"', 1)[1].split("</p>", 1)[0]
                assert "chart library is missing" in notice and "make console-assets" in notice
                assert "<script src=\"/console/static/vendor/echarts.min.js\"" not in page.text
