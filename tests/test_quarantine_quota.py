"""One institution's flood of refused documents cannot fill the quarantine the others share.

On a real SQLite quarantine file, and over HTTP against ``hub serve`` with a quota of two.
"""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from hub.core import httpclient
from hub.quarantine import Quarantine, QuarantineFull
from tests.conftest import LiveServer, make_settings


def test_the_quota_counts_open_entries_per_institution(tmp_path):
    q = Quarantine(tmp_path / "q.sqlite", quota=2)
    first = q.put("cda", b"<a/>", {"institution": "H1"}, {}, "refused")
    q.put("cda", b"<b/>", {"institution": "H1"}, {}, "refused")
    with pytest.raises(QuarantineFull) as e:
        q.put("cda", b"<c/>", {"institution": "H1"}, {}, "refused")
    assert e.value.status == 429 and "H1" in e.value.issues[0].diagnostics
    q.put("cda", b"<d/>", {"institution": "H2"}, {}, "refused")  # another institution
    q.mark(first, "replayed", {"ack": "AA"})  # worked off: room again
    q.put("cda", b"<e/>", {"institution": "H1"}, {}, "refused")
    q.close()


def test_a_quarantine_file_from_before_quotas_is_opened(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload BLOB NOT NULL,
            source BLOB NOT NULL, report BLOB NOT NULL, reason TEXT NOT NULL, time TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open', replayed TEXT, result BLOB);
        INSERT INTO quarantine (kind, payload, source, report, reason, time)
            VALUES ('cda', x'3c612f3e', '{}', '{}', 'old', '2026-01-01T00:00:00Z');""")
    db.commit()
    db.close()
    q = Quarantine(path, quota=1)
    assert [e["reason"] for e in q.list()] == ["old"]
    q.put("cda", b"<b/>", {"institution": "H1"}, {}, "new")  # the old row counted nowhere
    q.close()


@pytest.fixture(scope="module")
def live(request, tmp_path_factory):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("quota"), request)
    settings.quarantine_quota = 2
    with LiveServer(settings) as server:
        yield server


def test_posted_documents_over_the_quota_are_refused_not_kept(live):
    bad = b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>"
    with httpx.Client(base_url=live.origin, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        def post(institution: str) -> httpx.Response:
            return c.post("/cda", content=bad, headers={"content-type": "application/xml",
                                                         "x-hub-source-institution": institution})
        assert [post("H7").status_code for _ in range(2)] == [422, 422]  # kept for replay
        r = post("H7")
        assert r.status_code == 429 and r.json()["issue"][0]["code"] == "throttled"
        assert post("H8").status_code == 422  # another institution still has room
