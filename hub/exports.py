"""FHIR Bulk Data export (``$export``, Bulk Data Access IG v2): a snapshot of what a backend
service may read, written as NDJSON files in the background and kept for a while.

An export reads the event store at the log position taken when it was asked for
(``ResourceStore.snapshot``): each resource's version current at that position, none deleted,
so what is written while it runs is not in it. It reads through the repository
(``Repository.export_page``), which shows each resource only if the access policy lets the caller
see it, as a search does. Exports are recorded in ``exports.sqlite`` of the data directory (any
API process answers their status, files and cancellation; the one that was asked runs it, in a
thread of its own, off the event loop) and in the jobs ledger the console shows. An export whose
process is gone (a restart) or that stopped moving is reported failed, never left running.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from hub.core.access import Actor, own_base
from hub.core.errors import FhirError, forbidden, not_found
from hub.core.ingest import SETTLE_US, Context, instant_of
from hub.core.jobs import Jobs, alive, process_mark
from hub.core.sqlitefile import add_columns, connection, create
from hub.repository import Repository
from projections.search.compartment import patient_compartment
from projections.search.plan import local_target

log = logging.getLogger("hub.exports")

FILE = "exports.sqlite"
FOLDER = "exports"
PAGE = 1000  # resources read from the store at a time
STALE_S = 300.0  # a running export that has not moved for this long is reported failed
RETRY_AFTER_S = 2  # what a client polling a running export is told to wait
OPERATORS = frozenset({"admin"})  # who may read or cancel another caller's export
_NAME = re.compile(r"^[A-Za-z]{1,64}\.[0-9]{1,9}\.ndjson$")
_ID = re.compile(r"^[0-9a-f]{32}$")
# a reference's string in a stored resource, JSON escapes and all
_REFERENCE = re.compile(rb'"reference"\s*:\s*"((?:[^"\\]|\\.){1,4096})"')

WHAT = "the bulk exports' ledger"  # what the file holds (its refusal says)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS export (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL, request TEXT NOT NULL,
    base TEXT NOT NULL, transaction_time TEXT, started REAL NOT NULL, updated REAL NOT NULL,
    expires REAL, pid INTEGER, host TEXT, progress TEXT, output TEXT, error TEXT, mark TEXT,
    issuer TEXT);"""
# owner: the subject of the caller who asked; issuer: its token's, when an external provider's
# (NULL: the hub's own, whose subjects are its clients)
_COLUMNS = ("id", "owner", "status", "request", "base", "transaction_time", "started", "updated",
            "expires", "pid", "host", "progress", "output", "error", "mark", "issuer")


class ExportsBusy(FhirError):
    """As many exports as the hub runs at once are running: 429 with ``Retry-After``."""

    error_code = "unavailable"

    def __init__(self, running: int, retry_after: int = 30):
        super().__init__(429, "throttled", f"{running} bulk exports are running, as many as this "
                         f"hub runs at once (HUB_EXPORT_MAX_RUNNING); retry later")
        self.retry_after = retry_after


@dataclass(frozen=True)
class ExportRequest:
    """What was asked: ``level`` system, patient or group; ``types`` (None: every type the
    caller may export, of the Patient compartment at patient and group level); ``since_us``
    (only resources updated after it); ``members`` (group level: the Group's Patient ids)."""

    level: str
    types: tuple[str, ...] | None
    since_us: int | None
    request: str
    base: str
    members: frozenset[str] | None = None

    def keeps(self, rtype: str, rid: str, body: bytes, patients: frozenset[str] = frozenset()
              ) -> bool:
        """Whether a resource belongs to the export: at patient and group level, a Patient
        (of the Group) or a resource that refers to one; ``patients``: the Patients (of the
        Group) current in the snapshot, so that a deleted one's data is left out with it."""
        if self.level == "system":
            return True
        if rtype == "Patient":
            return rid in patients
        return not patients.isdisjoint(self.local_patients(body))

    def local_patients(self, body: bytes) -> set[str]:
        """The ids of the Patients of this server a resource refers to: ``Patient/id`` or
        absolute on this server's base (the request's, or ``HUB_BASE_URL``); another server's
        Patient of the same id is someone else."""
        bases = (self.base.rstrip("/") + "/", own_base())
        out = set()
        for m in _REFERENCE.finditer(body):
            raw = m.group(1)
            ref = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
            target = local_target(ref, bases)
            if target is not None and target[0] == "Patient":
                out.add(target[1])
        return out


@dataclass(frozen=True)
class Limits:
    max_running: int = 2
    keep_s: float = 86400.0
    file_resources: int = 100_000
    file_bytes: int = 256 << 20


def compartment_types() -> list[str]:
    """What a patient- or group-level export is made of: Patient and its compartment's types."""
    return sorted(set(patient_compartment()) | {"Patient"})


class _Cancelled(Exception):
    pass


class _Files:
    """A type's NDJSON files: a new one past ``Limits.file_resources`` or ``file_bytes``."""

    def __init__(self, folder: Path, rtype: str, limits: Limits):
        self.folder, self.rtype, self.limits = folder, rtype, limits
        self.done: list[tuple[str, int]] = []  # (file name, resources)
        self._out: BinaryIO | None = None
        self._count = self._bytes = 0

    def write(self, line: bytes) -> None:
        if self._out is not None and (self._count >= self.limits.file_resources
                                      or self._bytes + len(line) + 1 > self.limits.file_bytes):
            self._close()
        if self._out is None:
            name = f"{self.rtype}.{len(self.done) + 1}.ndjson"
            self._out = open(self.folder / name, "wb")  # noqa: SIM115 - closed by _close
            self.done.append((name, 0))
        self._out.write(line + b"\n")
        self._count += 1
        self._bytes += len(line) + 1

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self.done[-1] = (self.done[-1][0], self._count)
            self._out, self._count, self._bytes = None, 0, 0

    def close(self) -> list[tuple[str, int]]:
        self._close()
        return self.done


def one_line(body: bytes) -> bytes:
    """A stored resource as one NDJSON line: bytes kept as sent may be indented (a JSON string
    holds no raw line break, so only whitespace goes)."""
    if b"\n" in body or b"\r" in body:
        return orjson.dumps(orjson.loads(body))
    return body


class Exports:
    """The exports of a data directory: kicked off, run in threads, polled, served, cancelled,
    expired."""

    def __init__(self, data_dir: Path | str, repo: Repository, limits: Limits | None = None,
                 revoked: Callable[[str], bool] | None = None):
        self.path = Path(data_dir) / FILE
        self.root = Path(data_dir) / FOLDER
        self.repo = repo
        self.limits = limits or Limits()
        # is an export's owner a client revoked since? Its exports are cancelled, files removed
        self.revoked = revoked or (lambda owner: False)
        self.jobs = Jobs(data_dir)
        create(self.path, _SCHEMA, WHAT)
        # a ledger from before them: its exports were asked with the hub's own tokens
        add_columns(self.path, "export", {"mark": "TEXT", "issuer": "TEXT"})
        self._stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self.sweep()
        # expired files go even when nobody asks for an export (each request sweeps too)
        self._sweeper = threading.Thread(target=self._sweep_every, name="export-sweep",
                                         daemon=True)
        self._sweeper.start()

    def _sweep_every(self, every_s: float = 60.0) -> None:
        while not self._stopping.wait(every_s):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - tried again in a minute
                log.exception("sweeping the exports failed")

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connection(self.path)

    # -- kick-off ---------------------------------------------------------------------------------

    def start(self, ctx: Context, req: ExportRequest) -> str:
        """Check, audit and start an export; its id. 403 for what the caller may not export,
        429 when ``Limits.max_running`` are running."""
        self.sweep()
        eid = uuid.uuid4().hex
        self._reserve(eid, ctx.actor, req)
        try:
            types, upto, at_us = self.repo.begin_export(
                ctx, req.types, None if req.level == "system" else compartment_types())
        except BaseException:
            self._forget(eid)
            raise
        # transactionTime: no write left out of the snapshot has a lastUpdated at or before it,
        # so the next export ``_since`` it has every one (a write's lastUpdated is at most
        # SETTLE_US older than its taking the writers' lock, after ``at_us``). Resources
        # updated in the last SETTLE_US before the snapshot are in the next one too.
        transaction_time = instant_of(at_us - SETTLE_US)
        self._update(eid, transaction_time=transaction_time, progress="starting")
        thread = threading.Thread(target=self._run, args=(eid, ctx, req, types, upto),
                                  name=f"export-{eid[:8]}", daemon=True)
        self._threads[eid] = thread
        thread.start()
        return eid

    def _reserve(self, eid: str, owner: Actor, req: ExportRequest) -> None:
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # the count and the insert as one, across processes
            running = db.execute("SELECT count(*) FROM export WHERE status='running'").fetchone()[0]
            if running >= self.limits.max_running:
                raise ExportsBusy(running)
            db.execute("INSERT INTO export (id, owner, issuer, status, request, base, started, "
                       "updated, pid, host, mark) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (eid, owner.subject, owner.issuer, "running", req.request, req.base, now,
                        now, os.getpid(), os.uname().nodename, process_mark()))

    def _forget(self, eid: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM export WHERE id=?", (eid,))

    def _update(self, eid: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE export SET {sets}, updated = ? WHERE id = ?",
                       (*values.values(), time.time(), eid))

    def _status(self, eid: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT status FROM export WHERE id=?", (eid,)).fetchone()
        return row[0] if row else None

    # -- the work -----------------------------------------------------------------------------------

    def _run(self, eid: str, ctx: Context, req: ExportRequest, types: Sequence[str],
             upto: int) -> None:
        folder = self.root / eid
        job = self.jobs.start("export", f"$export ({req.level}) for {ctx.actor.named}")
        written = 0
        output: list[dict[str, Any]] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            patients: frozenset[str] = frozenset()
            if req.level != "system":  # the Patients current in the snapshot (of the Group)
                patients = self._patients(eid, ctx, upto, req.members)
            for place, rtype in enumerate(types):
                files = _Files(folder, rtype, self.limits)
                after: int | None = 0
                while after is not None:
                    self._go_on(eid, ctx)
                    found, after = self.repo.export_page(ctx, rtype, upto, after, req.since_us,
                                                         PAGE)
                    for rid, body in found:
                        if req.keeps(rtype, rid, body, patients):
                            files.write(one_line(body))
                            written += 1
                    job.advance(len(found))
                    self._update(eid, progress=f"{rtype}: type {place + 1} of {len(types)}, "
                                               f"{written} resources written")
                output += [{"type": rtype, "name": name, "count": count}
                           for name, count in files.close()]
            with self._db() as db:
                done = db.execute(
                    "UPDATE export SET status='done', output=?, progress=?, expires=?, updated=? "
                    "WHERE id=? AND status='running'",
                    (orjson.dumps(output).decode(), f"{written} resources written",
                     time.time() + self.limits.keep_s, time.time(), eid)).rowcount
            if not done:
                raise _Cancelled
            job.finish(f"{written} resources in {len(output)} files")
        except _Cancelled:
            shutil.rmtree(folder, ignore_errors=True)
            job.finish("cancelled")
        except Exception as e:  # noqa: BLE001 - reported to the client as the export's failure
            log.exception("export %s failed", eid)
            shutil.rmtree(folder, ignore_errors=True)
            detail = str(e) if isinstance(e, RuntimeError | FhirError) else \
                f"{type(e).__name__}: the export could not be written"
            self._fail(eid, detail)
            job.fail(detail)
        finally:
            self._threads.pop(eid, None)

    def _go_on(self, eid: str, ctx: Context) -> None:
        """Between pages: stop (``_Cancelled``) an export cancelled, or whose client was
        revoked meanwhile (cancelled here: a revoked client's grant ends its exports too)."""
        if self._stopping.is_set():
            raise RuntimeError("the server stopped while the export ran")
        if ctx.actor.issuer is None and self.revoked(ctx.actor.subject):
            self._drop(eid)
        if self._status(eid) != "running":
            raise _Cancelled

    def _patients(self, eid: str, ctx: Context, upto: int,
                  members: frozenset[str] | None) -> frozenset[str]:
        """The ids of the Patients current (not deleted) at log position ``upto``, of
        ``members`` when given; whatever the caller may see (what it exports is judged per
        resource)."""
        out: set[str] = set()
        after: int | None = 0
        while after is not None:
            self._go_on(eid, ctx)
            rids, after = self.repo.export_patient_ids(upto, after, PAGE)
            out.update(r for r in rids if members is None or r in members)
        return frozenset(out)

    def _fail(self, eid: str, detail: str) -> None:
        with self._db() as db:
            db.execute("UPDATE export SET status='failed', error=?, expires=?, updated=? "
                       "WHERE id=? AND status='running'",
                       (detail[:2000], time.time() + self.limits.keep_s, time.time(), eid))

    # -- status, files, cancellation -------------------------------------------------------------

    def get(self, eid: str, actor: Actor) -> dict[str, Any]:
        """The export's record, for its owner or an operator: 404 when unknown, cancelled or
        expired, 403 for another caller."""
        self.sweep()
        row = None
        if _ID.match(eid):
            with self._db() as db:
                row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM export WHERE id=?",
                                 (eid,)).fetchone()
        if row is None or row[2] == "cancelled":
            raise not_found(f"No export {eid[:40]!r}: unknown, cancelled or expired")
        out = dict(zip(_COLUMNS, row))
        if (out["issuer"], out["owner"]) != (actor.issuer, actor.subject) \
                and not actor.roles & OPERATORS:
            raise forbidden("This export was started by another client")
        return out

    def manifest(self, out: dict[str, Any]) -> dict[str, Any]:
        """The completion manifest of a finished export (Bulk Data IG: transactionTime,
        request, requiresAccessToken, output, error)."""
        files = orjson.loads(out["output"] or "[]")
        return {
            "transactionTime": out["transaction_time"],
            "request": out["request"],
            "requiresAccessToken": True,
            "output": [{"type": f["type"], "url": self.url(out, f["name"]), "count": f["count"]}
                       for f in files],
            "error": [],
        }

    @staticmethod
    def url(out: dict[str, Any], name: str) -> str:
        return f"{out['base']}/$export-file/{out['id']}/{name}"

    def file(self, eid: str, name: str, actor: Actor
             ) -> tuple[Path, Callable[[bytes], bool] | None]:
        """The path of one of a finished export's files, for its owner or an operator whose
        token, now, may export the file's type (a narrower token of the same client reads no
        file of a type it no longer has), and which of its lines that caller is handed (None:
        all; ``Repository.export_file_judge``): the file was filtered for its owner's token at
        the kick-off, never for whoever asks for it later."""
        out = self.get(eid, actor)
        types = {f["name"]: f["type"] for f in orjson.loads(out["output"] or "[]")} \
            if out["status"] == "done" else {}
        path = self.root / eid / name
        if not _NAME.match(name) or name not in types or not path.is_file():
            raise not_found(f"Export {eid} has no file {name[:80]!r}")
        return path, self.repo.export_file_judge(actor, types[name])

    def cancel(self, eid: str, actor: Actor) -> None:
        """Cancel a running export, or drop a finished one, and remove its files."""
        self.get(eid, actor)
        self._drop(eid)

    def _drop(self, eid: str) -> None:
        with self._db() as db:
            db.execute("UPDATE export SET status='cancelled', expires=?, updated=? WHERE id=?",
                       (time.time() + self.limits.keep_s, time.time(), eid))
        # a running export's thread removes what it wrote when it sees the cancellation
        shutil.rmtree(self.root / eid, ignore_errors=True)

    # -- housekeeping ----------------------------------------------------------------------------

    def sweep(self) -> None:
        """Report failed the exports left running by a process that is gone or that stopped
        moving; remove the expired ones and their files."""
        now = time.time()
        with self._db() as db:
            owners = db.execute("SELECT id, owner FROM export WHERE status!='cancelled' "
                                "AND issuer IS NULL").fetchall()
        for eid, owner in owners:  # a revoked client's exports, running or done
            if self.revoked(owner):
                self._drop(eid)
        with self._db() as db:
            running = db.execute("SELECT id, updated, pid, host, mark FROM export "
                                 "WHERE status='running'").fetchall()
            expired = [r[0] for r in db.execute(
                "SELECT id FROM export WHERE status!='running' AND expires<?", (now,))]
            for eid in expired:
                db.execute("DELETE FROM export WHERE id=?", (eid,))
        for eid, updated, pid, host, mark in running:
            if now - updated > STALE_S or not alive(pid, host, mark):
                self._fail(eid, "interrupted: the server stopped while the export ran; "
                                "start it again")
                shutil.rmtree(self.root / eid, ignore_errors=True)
        for eid in expired:
            shutil.rmtree(self.root / eid, ignore_errors=True)

    def close(self, wait_s: float = 5.0) -> None:
        """Stop: the running exports of this process end, reported failed."""
        self._stopping.set()
        deadline = time.monotonic() + wait_s
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
