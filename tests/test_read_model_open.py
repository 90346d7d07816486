"""Several processes opening the read models of a new data directory at once (the API workers and
the follower of `hub serve` starting together on a fresh machine): each opens every model; none
fails creating its tracking table."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("round_", range(3))
def test_processes_opening_new_read_models_together_all_succeed(tmp_path, round_):
    start = time.time() + 2.0  # they all open at this moment, after their imports
    code = ("import sys, time; from pathlib import Path; from hub.readmodels import open_models; "
            f"time.sleep(max(0, {start} - time.time())); "
            "[m.close() for m in open_models(Path(sys.argv[1])).values()]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE)
             for _ in range(6)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for e in errors if e][:1]


def test_opening_waits_for_a_writer_holding_a_new_file_before_its_switch_to_wal(tmp_path):
    """Another process is writing the new file in its first (rollback-journal) mode: SQLite refuses
    the switch to WAL at once, without its busy timeout; opening waits for the writer instead."""
    import sqlite3
    import threading

    from hub.core.store import FastSQLiteDatastore

    path = tmp_path / "new.sqlite"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE first (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO first VALUES (1)")
    threading.Timer(0.5, lambda: writer.execute("COMMIT")).start()
    began = time.monotonic()
    datastore = FastSQLiteDatastore(str(path), pool_size=1)
    with datastore.transaction(commit=False) as c:
        c.execute("PRAGMA journal_mode")
        assert c.fetchone()[0] == "wal"
        c.execute("SELECT x FROM first")
        assert [r[0] for r in c.fetchall()] == [1]
    assert time.monotonic() - began >= 0.4
    datastore.close()
    writer.close()
