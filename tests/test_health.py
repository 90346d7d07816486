"""Liveness and readiness, and failing fast when the database goes away.

Against ``hub serve`` over real HTTP; the PostgreSQL outage is real: the test database stops
accepting connections and its sessions are terminated, then it comes back.
"""

from __future__ import annotations

import resource
import time

import httpx
import psycopg
import pytest

from hub.core import httpclient
from tests.conftest import PG_ADMIN, LiveServer, make_settings


def _origin(live: LiveServer) -> str:
    return live.base.rsplit("/fhir", 1)[0]


@pytest.fixture(scope="module", params=["sqlite"])
def live(request, tmp_path_factory):
    settings = make_settings(request.param, tmp_path_factory.mktemp("health"), request)
    with LiveServer(settings) as server:
        yield server


def test_health_and_ready(live):
    r = httpx.get(_origin(live) + "/health", timeout=10, verify=httpclient.verify())
    assert r.status_code == 200 and r.json()["status"] == "pass"
    assert r.headers["content-type"].startswith("application/health+json")
    r = httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify())
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["event-store"]["status"] == "pass"
    assert {"read-model:search", "read-model:person", "read-model:timeline"} <= set(checks)
    assert all(c["lag"] >= 0 for k, c in checks.items() if k.startswith("read-model:"))


def _set_connections(db: str, allowed: bool) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))


@pytest.mark.postgres
def test_a_database_outage_is_answered_quickly_and_recovered_from(request, tmp_path):
    settings = make_settings("postgres", tmp_path, request)
    db = settings.database_url.rsplit("/", 1)[1]
    with LiveServer(settings) as live:
        origin = _origin(live)
        assert httpx.get(origin + "/ready", timeout=10, verify=httpclient.verify()).status_code == 200
        auth = live.headers  # a token got before the outage (the client registry is a file)
        _set_connections(db, False)
        try:
            started = time.monotonic()
            r = httpx.get(origin + "/ready", timeout=30, verify=httpclient.verify())
            assert r.status_code == 503, r.text
            assert r.json()["checks"]["event-store"]["status"] == "fail"
            assert time.monotonic() - started < 10
            started = time.monotonic()
            r = httpx.get(live.base + "/Patient/p1", timeout=30,
                          headers={"accept": "application/fhir+json", **auth}, verify=httpclient.verify())
            assert r.status_code == 503, r.text
            assert r.json()["resourceType"] == "OperationOutcome"
            assert time.monotonic() - started < 10
        finally:
            _set_connections(db, True)
        deadline = time.monotonic() + 90  # the pool reconnects with backoff
        while httpx.get(origin + "/ready", timeout=10, verify=httpclient.verify()).status_code != 200:
            assert time.monotonic() < deadline, "the server did not recover from the outage"
            time.sleep(0.5)
        r = httpx.get(live.base + "/Patient/p1", timeout=10,
                      headers={"accept": "application/fhir+json", **live.headers}, verify=httpclient.verify())
        assert r.status_code == 404, r.text  # answered from the store again


def _found(live: LiveServer, birthdate: str) -> list[str]:
    r = httpx.get(live.base + "/Patient", params={"birthdate": birthdate}, headers=live.headers,
                  timeout=10, verify=httpclient.verify())
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json().get("entry", [])]


def test_a_read_model_built_under_another_zone_is_a_warning_until_rebuilt(tmp_path, request,
                                                                          monkeypatch):
    """HUB_TIMEZONE changed under an index: /ready and `hub projections status` say which read
    models answer by the old zone and how to rebuild them; the rebuild makes a zone-less day
    the new zone's day."""
    from tests.cli_helpers import run_hub

    settings = make_settings("sqlite", tmp_path / "zone", request)
    born = {"resourceType": "Patient", "id": "z1", "birthDate": "2024-01-15"}
    with LiveServer(settings) as live:
        r = httpx.put(live.base + "/Patient/z1", json=born, headers=live.headers, timeout=10, verify=httpclient.verify())
        assert r.status_code == 201, r.text
        # the day of 2024-01-15 begins at 16:00 UTC on the 14th, 00:00 in Beijing
        assert _found(live, "2024-01-15T12:00:00+08:00") == []  # a point is not the whole day
        assert _found(live, "lt2024-01-15T06:00:00+08:00") == ["z1"]
        assert _found(live, "gt2024-01-16T06:00:00+08:00") == []
        r = httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify())
        assert r.json()["checks"]["read-model:search"]["status"] == "pass"

    monkeypatch.setenv("HUB_TIMEZONE", "-05:00")
    with LiveServer(settings) as live:
        r = httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify())
        assert r.status_code == 200  # it answers; an operator is told
        checks = r.json()["checks"]
        for name in ("search", "timeline"):
            assert checks[f"read-model:{name}"]["status"] == "warn"
            assert f"hub projections rebuild {name}" in checks[f"read-model:{name}"]["output"]
        assert checks["read-model:person"]["status"] == "pass"
    status = run_hub(settings, "projections", "status", "search")
    assert "stale: times without a zone were read in +08:00, HUB_TIMEZONE is -05:00" in status.stdout
    assert run_hub(settings, "projections", "rebuild", "search").returncode == 0
    assert "stale" not in run_hub(settings, "projections", "status", "search").stdout
    with LiveServer(settings) as live:
        checks = httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify()).json()["checks"]
        assert checks["read-model:search"]["status"] == "pass"
        assert checks["read-model:timeline"]["status"] == "warn"
        # the day of 2024-01-15 now begins at 05:00 UTC, 13:00 in Beijing
        assert _found(live, "lt2024-01-15T06:00:00+08:00") == []
        assert _found(live, "gt2024-01-16T06:00:00+08:00") == ["z1"]
        assert _found(live, "2024-01-15") == ["z1"]


def test_a_candidate_index_counted_before_phones_is_a_warning_until_rebuilt(tmp_path, request):
    """An upgraded candidate index (counts without phones and addresses, no mark of complete
    counts): /ready warns and `hub projections status` says it is stale, naming the rebuild; the
    rebuild counts from the log's start and marks it complete."""
    from tests.cli_helpers import run_hub
    from tests.test_mpi_matching import as_counted_before_phones, pat

    settings = make_settings("sqlite", tmp_path / "ic", request)
    check = "read-model:identity-candidates"
    with LiveServer(settings) as live:
        r = httpx.put(live.base + "/Patient/p1", json=pat("p1"), headers=live.headers, timeout=10, verify=httpclient.verify())
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30
        while (c := httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify()).json()["checks"][check])["lag"]:
            assert time.monotonic() < deadline, "the candidate index did not catch up"
            time.sleep(0.1)
        assert c["status"] == "pass"
    as_counted_before_phones(settings.data_dir / "identity-candidates.sqlite")
    with LiveServer(settings) as live:
        r = httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify())
        assert r.status_code == 200 and r.json()["status"] == "warn"  # it answers; an operator is told
        c = r.json()["checks"][check]
        assert c["status"] == "warn" and "hub projections rebuild identity-candidates" in c["output"]
    status = run_hub(settings, "projections", "status").stdout
    assert "stale: built before phones and address lines were counted" in status, status
    assert run_hub(settings, "projections", "rebuild", "identity-candidates").returncode == 0
    assert "stale:" not in run_hub(settings, "projections", "status", "identity-candidates").stdout
    with LiveServer(settings) as live:
        assert httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify()).json()["checks"][check]["status"] == "pass"


def _ready_checks(live: LiveServer) -> dict:
    r = httpx.get(_origin(live) + "/ready", timeout=10, verify=httpclient.verify())
    assert r.status_code == 200, r.text  # it answers; an operator is told
    return r.json()["checks"]


def test_read_models_written_under_older_rules_are_a_warning_until_rebuilt(tmp_path, request):
    """A timeline and a search index written by an older release (no rules version recorded, as
    before versions were; or an older one): /ready warns and `hub projections status` says they
    are stale, naming the rebuild; a rebuild (the CLI beside the running server) clears it. A new
    data directory's are not stale."""
    import sqlite3

    from tests.cli_helpers import run_hub

    settings = make_settings("sqlite", tmp_path / "rules", request)
    visit = {"resourceType": "Encounter", "id": "e1", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "subject": {"reference": "Patient/r1"}, "period": {"end": "2024-01-15T10:00:00+08:00"}}
    with LiveServer(settings) as live:
        for rtype, body in (("Patient", {"resourceType": "Patient", "id": "r1"}), ("Encounter", visit)):
            r = httpx.put(f"{live.base}/{rtype}/{body['id']}", json=body, headers=live.headers,
                          timeout=10, verify=httpclient.verify())
            assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30
        while (checks := _ready_checks(live))["read-model:timeline"]["lag"]:
            assert time.monotonic() < deadline, "the timeline did not catch up"
            time.sleep(0.1)
        assert checks["read-model:timeline"]["status"] == "pass"
        assert checks["read-model:search"]["status"] == "pass"
    assert "stale" not in run_hub(settings, "projections", "status").stdout

    # as an older release left them: the timeline with no version, the index with the one
    # before UCUM units were kept in canonical form
    for file, meta, now, sql in (
            ("timeline", "t_meta", 1, "DELETE FROM t_meta WHERE key='rules'"),
            ("search", "sp_meta", 2, "UPDATE sp_meta SET value=1 WHERE key='rules'")):
        db = sqlite3.connect(settings.data_dir / f"{file}.sqlite")
        with db:
            assert db.execute(f"SELECT value FROM {meta} WHERE key='rules'").fetchone() == (now,)
            db.execute(sql)
        db.close()
    with LiveServer(settings) as live:
        checks = _ready_checks(live)
        for name in ("timeline", "search"):
            check = checks[f"read-model:{name}"]
            assert check["status"] == "warn", check
            assert "older release's rules" in check["output"]
            assert f"hub projections rebuild {name}" in check["output"]
        assert "Period with only an end" in checks["read-model:timeline"]["output"]
        assert "5.4 mmol/L by umol/L" in checks["read-model:search"]["output"]
        assert checks["read-model:person"]["status"] == "pass"
        status = run_hub(settings, "projections", "status").stdout
        assert ("stale: written under an older release's rules (a resource timed by a Period "
                "with only an end") in status, status
        assert "rebuild search`" in status, status
        assert run_hub(settings, "projections", "rebuild", "timeline").returncode == 0
        assert "stale" not in run_hub(settings, "projections", "status", "timeline").stdout
        checks = _ready_checks(live)  # the server reads the rebuilt version without a restart
        assert checks["read-model:timeline"]["status"] == "pass", checks
        assert checks["read-model:search"]["status"] == "warn"
        assert run_hub(settings, "projections", "rebuild", "search").returncode == 0
        assert _ready_checks(live)["read-model:search"]["status"] == "pass"
        r = httpx.get(f"{live.base}/Patient/r1/$timeline", headers=live.headers, timeout=10, verify=httpclient.verify())
        assert r.status_code == 200, r.text
        assert [e["resource"]["id"] for e in r.json().get("entry", [])] == ["e1"]


def _sizes(data_dir) -> int:
    return max(p.stat().st_size for p in data_dir.glob("events.sqlite*"))


def test_a_full_disk_is_told_apart_from_a_busy_store_and_readiness_says_so(tmp_path, request,
                                                                            capfd):
    """The server's files may grow no further (RLIMIT_FSIZE, as a full disk or a quota): writes
    are answered 507 saying the store is out of space, not 503 "busy; retry shortly"; the log
    gives SQLite's own words; /ready warns until a write succeeds again."""
    settings = make_settings("sqlite", tmp_path, request)
    with LiveServer(settings) as live:
        origin = _origin(live)
        headers = {**live.headers, "content-type": "application/fhir+json"}

        def write(i: int) -> httpx.Response:
            d = {"resourceType": "Patient", "id": f"full-{i}",
                 "name": [{"family": f"Wang{i}", "given": ["x" * 1000] * 20}]}
            return httpx.put(f"{live.base}/Patient/full-{i}", json=d, headers=headers, timeout=30, verify=httpclient.verify())

        assert write(0).status_code == 201
        assert httpx.get(origin + "/ready", timeout=10, verify=httpclient.verify()).json()["status"] == "pass"
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(live.proc.pid, resource.RLIMIT_FSIZE,
                         (_sizes(settings.data_dir) + 64 * 1024, hard))
        for i in range(1, 200):
            r = write(i)
            if r.status_code != 201:
                break
        assert r.status_code == 507, r.text
        assert r.json()["issue"][0]["diagnostics"].startswith("The event store is out of space")
        assert "Retry-After" not in r.headers
        r = httpx.get(origin + "/ready", timeout=10, verify=httpclient.verify())
        assert r.status_code == 200 and r.json()["status"] == "warn", r.text
        store = r.json()["checks"]["event-store"]
        assert store["status"] == "warn" and "disk I/O error" in store["output"], store
        assert httpx.get(f"{live.base}/Patient/full-0", headers=live.headers,
                         timeout=10, verify=httpclient.verify()).status_code == 200  # it still reads

        resource.prlimit(live.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))  # space freed
        assert write(1000).status_code == 201
        r = httpx.get(origin + "/ready", timeout=10, verify=httpclient.verify())
        assert r.json()["checks"]["event-store"]["status"] == "pass", r.text
    err = capfd.readouterr().err
    assert "event store out of space on PUT /fhir/Patient/full-" in err, err[-2000:]
    assert "disk I/O error (SQLITE_IOERR_WRITE)" in err
