"""With PostgreSQL, two followers of one read model never both apply: one holds the lease (a
session advisory lock), the other waits; when the holder is killed, the other takes over within
seconds and the model keeps following the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op
from hub.core.lease import PgLease, lease_key
from projections.search.sqlite_index import SQLiteSearchIndex

pytestmark = pytest.mark.postgres


def _patients(hub: Hub, start: int, n: int) -> None:
    hub.execute([Op("PUT", "Patient", f"p{i}", {"resourceType": "Patient", "id": f"p{i}",
                                                "gender": "female"}, url="x")
                  for i in range(start, start + n)], Context(), atomic=True)


def _holders(dsn: str) -> list[str]:
    """The application names of the sessions holding an advisory lock of a hub follower."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()")]


def _position(data_dir) -> int:
    index = SQLiteSearchIndex(data_dir / "search.sqlite")
    try:
        return index.position()
    finally:
        index.close()


def _until(check, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def test_one_follower_applies_and_another_takes_over_when_it_dies(pg_databases, tmp_path):
    dsn = pg_databases.new()
    settings = Settings(data_dir=tmp_path / "data", database_url=dsn)
    hub = Hub(settings.open_store())
    procs: list[subprocess.Popen] = []
    try:
        _patients(hub, 0, 20)
        env = {**os.environ, "HUB_DATABASE_URL": dsn, "HUB_DATA_DIR": str(settings.data_dir)}
        for _ in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "projections", "follow", "search"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        end = hub.store.max_notification_id()
        _until(lambda: (settings.data_dir / "search.sqlite").exists() and
               _position(settings.data_dir) >= end, 30)
        # one holder, the other waiting beside it
        _until(lambda: len(_holders(dsn)) == 1, 10)
        holder = _holders(dsn)[0]
        by_name = {f"hub-lease-{p.pid}": p for p in procs}
        assert holder in by_name
        assert all(p.poll() is None for p in procs)
        time.sleep(1.0)
        assert _holders(dsn) == [holder]  # the standby never took it while the holder lives

        by_name[holder].send_signal(signal.SIGKILL)
        by_name[holder].wait(10)
        _patients(hub, 20, 5)
        end = hub.store.max_notification_id()
        took = _until(lambda: _holders(dsn) not in ([], [holder]), 10)
        assert took < 5, took
        (other,) = _holders(dsn)
        assert other != holder and by_name[other].poll() is None
        _until(lambda: _position(settings.data_dir) >= end, 10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        hub.store.close()


def test_a_lease_is_held_by_one_at_a_time_and_freed_on_release(pg_databases):
    dsn = pg_databases.new()
    a, b = PgLease(dsn, "m"), PgLease(dsn, "m")
    try:
        assert a.held() and a.held()  # taken, and still held
        assert not b.held()
        other = PgLease(dsn, "another")
        assert other.held()  # another name: another lease
        other.release()
        a.release()
        _until(b.held, 2)  # as soon as the server has ended a's session
        assert lease_key("m") == lease_key("m") != lease_key("n")
    finally:
        a.release()
        b.release()


def _lock_sessions(dsn: str) -> list[int]:
    """The backends of this database holding an advisory lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sorted({r[0] for r in conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()")})


def test_the_leases_of_a_process_share_one_connection_and_are_lost_together(pg_databases):
    """A follower process holds a lease per read model: one connection each kept eight of the
    server's connections busy per process. They share one session; cut, every lease on it is
    lost at once (a standby elsewhere takes over) and each takes its lock again on its next
    check."""
    dsn = pg_databases.new()
    leases = [PgLease(dsn, f"model-{i}") for i in range(8)]
    # another process's standby for model-0 (another URL of the database: its own session)
    standby = PgLease(dsn + "?sslmode=disable", "model-0")
    try:
        assert all(lease.held() for lease in leases)
        assert not standby.held()
        (session,) = _lock_sessions(dsn)  # eight locks, one connection
        assert len(_holders(dsn)) == 8
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (session,))
        _until(standby.held, 5)  # the holder's connection is gone: the standby took model-0
        _until(lambda: all(lease.held() for lease in leases[1:]), 5)  # the rest taken again
        assert not leases[0].held()
        assert len(_lock_sessions(dsn)) == 2 and len(_holders(dsn)) == 8
        standby.release()
        _until(leases[0].held, 2)
        for lease in leases:
            lease.release()
        _until(lambda: _lock_sessions(dsn) == [], 2)
        with psycopg.connect(dsn, autocommit=True) as conn:  # the last release closed it
            _until(lambda: conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND datname = current_database()",
                (f"hub-lease-{os.getpid()}",)).fetchone()[0] == 0, 5)
    finally:
        for lease in [*leases, standby]:
            lease.release()
