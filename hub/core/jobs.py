"""Long work's progress, where the console can read it: index rebuilds, re-matching,
renormalisation, bulk replays, run by a CLI command or by the console itself.

``Jobs(data_dir).start(kind, title, total)`` records a job in ``jobs.sqlite`` of the data
directory; ``job.advance(n)`` counts work done (written at most twice a second, so a tight loop
pays nothing for it), ``job.finish(detail)`` or ``job.fail(detail)`` closes it. Used as a context
manager, a job that raises is recorded failed. A job still ``running`` whose process is gone, or
that has not moved for ``STALE_S``, is shown as interrupted.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from hub.core.sqlitefile import connection, create

FILE = "jobs.sqlite"
WRITE_EVERY_S = 0.5
STALE_S = 300.0
KEEP = 500  # finished jobs kept (the oldest go)

WHAT = "the jobs ledger"  # what the file holds (its refusal says)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, title TEXT NOT NULL,
    started REAL NOT NULL, updated REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    total INTEGER, status TEXT NOT NULL DEFAULT 'running', detail TEXT, pid INTEGER,
    host TEXT);"""
_COLUMNS = ("id", "kind", "title", "started", "updated", "done", "total", "status", "detail",
            "pid", "host")


class Jobs:
    def __init__(self, data_dir: Path | str):
        self.path = Path(data_dir) / FILE
        create(self.path, _SCHEMA, WHAT)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connection(self.path)

    def start(self, kind: str, title: str, total: int | None = None) -> Job:
        now = time.time()
        with self._db() as db:
            cur = db.execute("INSERT INTO job (kind, title, started, updated, total, pid, host) "
                             "VALUES (?,?,?,?,?,?,?)",
                             (kind, title[:300], now, now, total, os.getpid(), os.uname().nodename))
            db.execute("DELETE FROM job WHERE status != 'running' AND id <= "
                       "(SELECT max(id) FROM job) - ?", (KEEP,))
            assert cur.lastrowid is not None  # set by the INSERT
            return Job(self, cur.lastrowid, total)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs first, each with its state as shown (``interrupted`` for one whose
        process is gone or that stopped moving)."""
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM job ORDER BY id DESC LIMIT ?",
                              (limit,)).fetchall()
        return [_shown(dict(zip(_COLUMNS, r))) for r in rows]

    def _write(self, job_id: int, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE job SET {sets}, updated = ? WHERE id = ?",
                       (*values.values(), time.time(), job_id))


def _shown(j: dict[str, Any]) -> dict[str, Any]:
    if j["status"] == "running" and (
            time.time() - j["updated"] > STALE_S
            or (j["host"] == os.uname().nodename and not _alive(j["pid"]))):
        j["status"] = "interrupted"
    j["percent"] = round(100.0 * j["done"] / j["total"], 1) if j["total"] else None
    return j


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Job:
    def __init__(self, jobs: Jobs, job_id: int, total: int | None):
        self.jobs, self.id, self.total = jobs, job_id, total
        self.done = 0
        self._written = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if time.monotonic() - self._written < WRITE_EVERY_S:
                return
            self._written = time.monotonic()
            done = self.done
        self.jobs._write(self.id, done=done)

    def set_total(self, total: int) -> None:
        self.total = total
        self.jobs._write(self.id, total=total)

    def finish(self, detail: str = "") -> None:
        self.jobs._write(self.id, done=self.done, status="finished", detail=detail[:2000])

    def fail(self, detail: str) -> None:
        self.jobs._write(self.id, done=self.done, status="failed", detail=detail[:2000])

    def __enter__(self) -> Job:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if error is not None:
            self.fail(f"{type(error).__name__}: {error}")


def both(*callbacks: Any) -> Any:
    """One progress callback calling each of ``callbacks`` (a progress bar's, a job's)."""
    def progress(n: int = 1) -> None:
        for cb in callbacks:
            cb(n)
    return progress
