"""Liveness and readiness, and failing fast when the database goes away.

Against ``hub serve`` over real HTTP; the PostgreSQL outage is real: the test database stops
accepting connections and its sessions are terminated, then it comes back.
"""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest

from tests.conftest import PG_ADMIN, LiveServer, make_settings


def _origin(live: LiveServer) -> str:
    return live.base.rsplit("/fhir", 1)[0]


@pytest.fixture(scope="module", params=["sqlite"])
def live(request, tmp_path_factory):
    settings = make_settings(request.param, tmp_path_factory.mktemp("health"), request)
    with LiveServer(settings) as server:
        yield server


def test_health_and_ready(live):
    r = httpx.get(_origin(live) + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "pass"
    assert r.headers["content-type"].startswith("application/health+json")
    r = httpx.get(_origin(live) + "/ready", timeout=10)
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
        assert httpx.get(origin + "/ready", timeout=10).status_code == 200
        auth = live.headers  # a token got before the outage (the client registry is a file)
        _set_connections(db, False)
        try:
            started = time.monotonic()
            r = httpx.get(origin + "/ready", timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["checks"]["event-store"]["status"] == "fail"
            assert time.monotonic() - started < 10
            started = time.monotonic()
            r = httpx.get(live.base + "/Patient/p1", timeout=30,
                          headers={"accept": "application/fhir+json", **auth})
            assert r.status_code == 503, r.text
            assert r.json()["resourceType"] == "OperationOutcome"
            assert time.monotonic() - started < 10
        finally:
            _set_connections(db, True)
        deadline = time.monotonic() + 90  # the pool reconnects with backoff
        while httpx.get(origin + "/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the server did not recover from the outage"
            time.sleep(0.5)
        r = httpx.get(live.base + "/Patient/p1", timeout=10,
                      headers={"accept": "application/fhir+json", **live.headers})
        assert r.status_code == 404, r.text  # answered from the store again
