"""Long work's progress, where the console can read it: index rebuilds, re-matching,
renormalisation, bulk replays, run by a CLI command or by the console itself.

``Jobs(data_dir).start(kind, title, total)`` records a job in ``jobs.sqlite`` of the data
directory; ``job.advance(n)`` counts work done (written at most twice a second, so a tight loop
pays nothing for it), ``job.finish(detail)`` or ``job.fail(detail)`` closes it. Used as a context
manager, a job that raises is recorded failed. A job still ``running`` whose process is gone, or
that has not moved for ``STALE_S``, is shown as interrupted.

A process is recorded by its id, host and ``process_mark()``, which tells it from a later
process given the same id (a restarted container's process is PID 1 again).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from hub.core.sqlitefile import add_columns, connection, create

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
    host TEXT, mark TEXT);"""
_COLUMNS = ("id", "kind", "title", "started", "updated", "done", "total", "status", "detail",
            "pid", "host", "mark")


class Jobs:
    def __init__(self, data_dir: Path | str):
        self.path = Path(data_dir) / FILE
        create(self.path, _SCHEMA, WHAT)
        add_columns(self.path, "job", {"mark": "TEXT"})  # a ledger from before marks

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connection(self.path)

    def start(self, kind: str, title: str, total: int | None = None) -> Job:
        now = time.time()
        with self._db() as db:
            cur = db.execute("INSERT INTO job (kind, title, started, updated, total, pid, host, "
                             "mark) VALUES (?,?,?,?,?,?,?,?)",
                             (kind, title[:300], now, now, total, os.getpid(), os.uname().nodename,
                              process_mark()))
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
            time.time() - j["updated"] > STALE_S or not alive(j["pid"], j["host"], j["mark"])):
        j["status"] = "interrupted"
    j["percent"] = round(100.0 * j["done"] / j["total"], 1) if j["total"] else None
    return j


_mark: tuple[int, str] | None = None  # (pid, mark) of this process


def process_mark() -> str:
    """What tells this process from a later one given the same pid: its start time (clock ticks
    after boot) with the boot's id, where ``/proc`` shows this process's own pid namespace; else
    a random token of this process."""
    global _mark
    pid = os.getpid()
    if _mark is None or _mark[0] != pid:  # a forked child is another process
        _mark = (pid, _start_mark(pid) or f"token:{uuid.uuid4().hex}")
    return _mark[1]


def _start_mark(pid: int) -> str | None:
    """``boot id:start time`` of process ``pid`` from ``/proc``, or None: no such process, or
    no ``/proc`` of this pid namespace (one shared with the host names other processes)."""
    try:
        if int(os.readlink("/proc/self")) != os.getpid():
            return None
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            # after the command's name, in parentheses and holding any character, the 20th
            # field is the start time
            start = f.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None
    return f"{boot}:{start}"


def alive(pid: int | None, host: str | None, mark: str | None) -> bool:
    """Is the process recorded as ``pid`` on ``host`` with ``mark`` (``process_mark``) still
    running? One of another host is taken to be (its own processes tell); a record without a
    mark (made before marks) is judged by its pid alone."""
    if host != os.uname().nodename:
        return True
    if not pid:
        return False
    if mark is not None and mark == process_mark():
        return True
    if pid == os.getpid():  # the pid is this process's now: the one recorded is gone
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if mark is None or mark.startswith("token:"):
        return True  # its start time is not known: STALE_S tells
    return _start_mark(pid) in (mark, None)


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


class Unrecorded(Job):
    """A job with nowhere to be shown: a connector's command on a host without the hub's data
    directory (recording it there made a stray ./var beside the connector's configuration)."""

    def __init__(self, total: int | None = None):
        self.total, self.done = total, 0

    def advance(self, n: int = 1) -> None:
        self.done += n

    def set_total(self, total: int) -> None:
        self.total = total

    def finish(self, detail: str = "") -> None:
        pass

    def fail(self, detail: str) -> None:
        pass


def both(*callbacks: Any) -> Any:
    """One progress callback calling each of ``callbacks`` (a progress bar's, a job's)."""
    def progress(n: int = 1) -> None:
        for cb in callbacks:
            cb(n)
    return progress
