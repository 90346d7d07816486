"""The connector's durable spool: one SQLite file in its state directory.

It holds, written in one transaction per ``accept`` call:

* ``units``        converted units (the entries of one Conversion) waiting for delivery, in order;
* ``payloads``     the original payload of each envelope with undelivered units (for dead letters);
* ``checkpoints``  the position each source reached (a Kafka offset, a watermark, a file name);
* ``deadletters``  payloads that failed (stage ``convert`` or ``deliver``) with error and time;
* ``counters``     received / converted / delivered / failed per source.

Sources call ``accept`` (the ``connectors.base.Intake`` protocol) and acknowledge their sender only
after it returned. The delivery loop reads ``pending`` units, hands them to a sink and then calls
``delivered`` or ``fail_units``. Delivered units and their payloads are deleted, so the file stays
small however long the connector runs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from connectors.base import Accepted, Envelope
from fhir_mapping.base import Conversion, MappingError, SourceInfo
from hub.core.jsontext import loads_exact
from hub.core.sqlitefile import naming, refuse_empty

SCHEMA = """
CREATE TABLE IF NOT EXISTS payloads (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, payload BLOB NOT NULL,
    meta BLOB NOT NULL, received REAL NOT NULL, open_units INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, payload_id INTEGER NOT NULL, source TEXT NOT NULL,
    unit_id TEXT NOT NULL, kind TEXT NOT NULL, patient_key TEXT, body BLOB NOT NULL,
    received REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deadletters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, kind TEXT NOT NULL,
    payload BLOB NOT NULL, meta BLOB NOT NULL, unit_id TEXT, stage TEXT NOT NULL,
    error BLOB NOT NULL, time TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open',
    replayed TEXT, replay_result BLOB);
CREATE INDEX IF NOT EXISTS deadletters_status ON deadletters(status, id);
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, unit_id TEXT, severity TEXT NOT NULL,
    rule TEXT NOT NULL, message TEXT NOT NULL, location TEXT, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    source TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (source, name));
"""

COUNTERS = ("received", "converted", "delivered", "failed", "findings")
KEEP_FINDINGS = 10_000  # the latest findings kept for inspection; the counter keeps the total

Converter = Callable[[bytes, SourceInfo], list[Conversion]]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Unit:
    """One spooled conversion waiting for delivery."""

    seq: int
    source: str
    unit_id: str
    kind: str
    patient_key: str | None
    resources: list[dict]
    deletes: list[str]
    received: float
    attempts: int = 0
    order: dict | None = None  # the source order its deletes carry (``Conversion.unit``)

    def conversion(self) -> Conversion:
        return Conversion.from_unit({"resources": self.resources, "deletes": self.deletes,
                                     "order": self.order}, unit_id=self.unit_id,
                                    patient_key=self.patient_key, kind=self.kind)

    def entries(self) -> list[dict]:
        return self.conversion().entries()

    def write_keys(self) -> dict[str, bytes]:
        return self.conversion().write_keys()


def default_converter_factory(kind: str) -> Converter:
    from connectors.kinds import converter

    return converter(kind)


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is still open: SQLite ends a transaction itself on some errors (a full
    disk), and a ROLLBACK then raised "no transaction is active", hiding the error."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def is_cut(dl: dict) -> bool:
    """Is a dead letter part of a message only: a block the source refused as it came in, cut off
    by the closed connection or at the size limit (a block that merely lacked its end block is
    whole, and replays)?"""
    error = dl.get("error") or {}
    return dl.get("stage") == "receive" and bool(
        error.get("cut") or any(w in str(error.get("reason", ""))
                                for w in ("(truncated)", "message larger than")))


class Spool:
    """Implements ``connectors.base.Intake`` over a SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path, source_info: SourceInfo | None = None, *,
                 converter_factory: Callable[[str], Converter] = default_converter_factory,
                 durable: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source_info = source_info or SourceInfo()
        self._factory = converter_factory
        self._converters: dict[str, Converter] = {}
        self._lock = threading.RLock()
        self.store_error: tuple[float, str] | None = None  # the last accept's failure, if any
        refuse_empty(self.path, "the connector's spool")  # accepted units not yet delivered
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=30)
        with naming(self.path):
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect in a new file only
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before a sender is acknowledged (survives power loss
            # too); NORMAL survives a killed process, which is all a benchmark needs.
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(SCHEMA)
        self.changed = threading.Condition(self._lock)  # notified when units arrive
        self._finished = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- intake ----------------------------------------------------------------------------------

    def converter(self, kind: str) -> Converter:
        conv = self._converters.get(kind)
        if conv is None:
            conv = self._converters[kind] = self._factory(kind)
        return conv

    def convert(self, env: Envelope) -> list[Conversion]:
        """The mapper's answer, or MappingError (an unexpected exception becomes one: a mapper bug
        must dead-letter the payload and answer the sender, never stop the connector)."""
        try:
            conversions = self.converter(env.kind)(env.payload, self.source_info)
        except MappingError:
            raise
        except Exception as e:  # noqa: BLE001
            raise MappingError(f"mapper failed: {type(e).__name__}: {e}", code="AE",
                               rule="mapper.exception") from e
        if not conversions:
            raise MappingError("the payload holds nothing to convert", code="AE", rule="empty")
        return conversions

    def checkpoint(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM checkpoints WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_checkpoint(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?)",
                             (key, value, time.time()))

    def accept(self, envelopes: Sequence[Envelope],
               checkpoint: tuple[str, str] | None = None) -> list[Accepted]:
        converted: list[list[Conversion] | MappingError] = []
        bodies: dict[int, bytes] = {}  # id(conversion) -> its unit's JSON
        for env in envelopes:  # pure work, outside the lock
            try:
                conversions = self.convert(env)
                for c in conversions:
                    try:
                        bodies[id(c)] = orjson.dumps(c.unit())
                    except orjson.JSONEncodeError as e:
                        # (a 25-digit dose): a dead letter, never a source that stops on it
                        raise MappingError(f"the converted resources cannot be written as JSON: "
                                           f"{e}", code="AE", rule="mapper.unwritable") from None
                converted.append(conversions)
            except MappingError as e:
                converted.append(e)
        now, stamp = time.time(), utc_now()
        answers: list[Accepted] = []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for env, result in zip(envelopes, converted, strict=True):
                    meta = _meta_json(env.meta)
                    self._count(env.source, "received", 1)
                    good: list[Conversion] | None = getattr(result, "conversions", None)
                    if isinstance(result, MappingError) and good:
                        # part of the payload converted (rows of a CSV export): the good parts
                        # flow, each refused part is a dead letter of its own, replayable alone
                        self._dead_parts(env, result, stamp)
                        result = good
                    if isinstance(result, MappingError):
                        cur = db.execute(
                            "INSERT INTO deadletters (source, kind, payload, meta, unit_id, stage,"
                            " error, time) VALUES (?,?,?,?,?,?,?,?)",
                            (env.source, env.kind, env.payload, meta, env.meta.get("unit_id"),
                             "convert", orjson.dumps(result.to_dict()), stamp))
                        self._count(env.source, "failed", 1)
                        answers.append(Accepted(False, error=result.to_dict(),
                                                deadletter_id=cur.lastrowid))
                        continue
                    pid = db.execute(
                        "INSERT INTO payloads (source, kind, payload, meta, received, open_units)"
                        " VALUES (?,?,?,?,?,?)",
                        (env.source, env.kind, env.payload, meta, now, len(result))).lastrowid
                    db.executemany(
                        "INSERT INTO units (payload_id, source, unit_id, kind, patient_key, body,"
                        " received) VALUES (?,?,?,?,?,?,?)",
                        [(pid, env.source, c.unit_id, c.kind or env.kind, c.patient_key,
                          bodies.get(id(c)) or orjson.dumps(c.unit()), now)
                         for c in result])
                    self._count(env.source, "converted", 1)
                    self._keep_findings(env.source, result, stamp)
                    answers.append(Accepted(True, unit_ids=[c.unit_id for c in result]))
                if checkpoint is not None:
                    db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?)",
                               (checkpoint[0], checkpoint[1], now))
                db.execute("COMMIT")
            except BaseException as e:
                _rollback(db)
                # what the status shows (a disk full): the sources answered each message
                # "cannot store", and /health still said ok
                self.store_error = (time.time(), f"{type(e).__name__}: {e}"[:300])
                raise
            self.store_error = None
            self.changed.notify_all()
        return answers

    def _dead_parts(self, env: Envelope, err: MappingError, stamp: str) -> None:
        kind = "row:" + env.kind.split(":", 1)[1] if env.kind.startswith("csv:") else env.kind
        for line, part, e in getattr(err, "rejected", ()):
            self._db.execute(
                "INSERT INTO deadletters (source, kind, payload, meta, unit_id, stage, error, time)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (env.source, kind, part, _meta_json({**env.meta, "line": line}),
                 env.meta.get("unit_id"), "convert", orjson.dumps(e.to_dict()), stamp))
            self._count(env.source, "failed", 1)

    def _keep_findings(self, source: str, conversions: list[Conversion], stamp: str) -> None:
        """Data-quality findings of the mapper (an invalid resident ID number kept, a value left
        out): kept with their unit, counted, listed by ``hub connector status``."""
        rows = [(source, c.unit_id, f.severity, f.rule, f.message, f.location, stamp)
                for c in conversions for f in c.findings]
        if rows:
            self._db.executemany(
                "INSERT INTO findings (source, unit_id, severity, rule, message, location, time)"
                " VALUES (?,?,?,?,?,?,?)", rows)
            self._count(source, "findings", len(rows))
            self._db.execute("DELETE FROM findings WHERE id <= (SELECT MAX(id) FROM findings) - ?",
                             (KEEP_FINDINGS,))

    def findings(self, limit: int = 100) -> list[dict]:
        """The latest findings, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, source, unit_id, severity, rule, message, location, time FROM findings"
                " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "source", "unit_id", "severity", "rule", "message", "location", "time")
        return [dict(zip(keys, r)) for r in rows]

    def _count(self, source: str, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?,?,?) ON CONFLICT(source, name) DO UPDATE SET n = n + ?",
            (source, name, n, n))

    # -- delivery --------------------------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[Unit]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, source, unit_id, kind, patient_key, body, received, attempts"
                " FROM units ORDER BY seq LIMIT ?", (limit,)).fetchall()
        out = []
        for seq, source, unit_id, kind, pkey, body, received, attempts in rows:
            # as written: 1.50 stays 1.50 on its way to the hub (orjson made it 1.5)
            d = loads_exact(body)
            out.append(Unit(seq, source, unit_id, kind, pkey, d["resources"], d["deletes"],
                            received, attempts, d.get("order")))
        return out

    def wait(self, timeout: float) -> None:
        """Sleep until units arrive or ``timeout`` passes."""
        with self._lock:
            self.changed.wait(timeout)

    def delivered(self, units: Iterable[Unit]) -> None:
        self._finish(list(units), None)

    def fail_units(self, failures: Sequence[tuple[Unit, dict[str, Any]]]) -> list[int]:
        """Dead-letter units the hub refused (with the original payload); returns their ids."""
        return self._finish([u for u, _ in failures], [e for _, e in failures])

    def _finish(self, units: list[Unit], errors: list[dict] | None) -> list[int]:
        if not units:
            return []
        ids: list[int] = []
        stamp = utc_now()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for i, u in enumerate(units):
                    row = db.execute("SELECT payload_id FROM units WHERE seq=?", (u.seq,)).fetchone()
                    if row is None:
                        continue  # already finished
                    pid = row[0]
                    if errors is not None:
                        p = db.execute("SELECT kind, payload, meta FROM payloads WHERE id=?",
                                       (pid,)).fetchone()
                        kind, payload, meta = p if p else (u.kind, b"", b"{}")
                        dl = db.execute(
                            "INSERT INTO deadletters (source, kind, payload, meta, unit_id, stage,"
                            " error, time) VALUES (?,?,?,?,?,?,?,?)",
                            (u.source, kind, payload, meta, u.unit_id, "deliver",
                             orjson.dumps(errors[i]), stamp)).lastrowid
                        assert dl is not None  # set by the INSERT
                        ids.append(dl)
                    self._count(u.source, "failed" if errors is not None else "delivered", 1)
                    db.execute("DELETE FROM units WHERE seq=?", (u.seq,))
                    db.execute("UPDATE payloads SET open_units = open_units - 1 WHERE id=?", (pid,))
                    db.execute("DELETE FROM payloads WHERE id=? AND open_units <= 0", (pid,))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self._finished += len(units)
            if self._finished >= 5000:  # give pages of a drained backlog back to the disk
                self._finished = 0
                empty = db.execute("SELECT NOT EXISTS (SELECT 1 FROM units)").fetchone()[0]
                db.execute("PRAGMA incremental_vacuum" if empty else "PRAGMA incremental_vacuum(4000)")
        return ids

    def attempted(self, units: Iterable[Unit]) -> None:
        with self._lock:
            self._db.executemany("UPDATE units SET attempts = attempts + 1 WHERE seq=?",
                                 [(u.seq,) for u in units])

    # -- dead letters ----------------------------------------------------------------------------

    def deadletters(self, status: str | None = "open", limit: int = 1000) -> list[dict]:
        q = ("SELECT id, source, kind, unit_id, stage, error, time, status, length(payload)"
             " FROM deadletters")
        args: tuple = ()
        if status:
            q += " WHERE status=?"
            args = (status,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [{"id": r[0], "source": r[1], "kind": r[2], "unit_id": r[3], "stage": r[4],
                 "error": orjson.loads(r[5]), "time": r[6], "status": r[7], "size": r[8]}
                for r in rows]

    def deadletter(self, dl_id: int) -> dict | None:
        with self._lock:
            r = self._db.execute(
                "SELECT id, source, kind, unit_id, stage, error, time, status, payload, meta,"
                " replayed, replay_result FROM deadletters WHERE id=?", (dl_id,)).fetchone()
        if r is None:
            return None
        return {"id": r[0], "source": r[1], "kind": r[2], "unit_id": r[3], "stage": r[4],
                "error": orjson.loads(r[5]), "time": r[6], "status": r[7], "payload": r[8],
                "meta": orjson.loads(r[9]), "replayed": r[10],
                "replay_result": orjson.loads(r[11]) if r[11] else None}

    def add_deadletter(self, source: str, kind: str, payload: bytes, meta: dict,
                       unit_id: str | None, stage: str, error: dict) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO deadletters (source, kind, payload, meta, unit_id, stage, error, time)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (source, kind, payload, orjson.dumps(meta, default=str), unit_id, stage,
                 orjson.dumps(error), utc_now()))
            self._count(source, "failed", 1)
            assert cur.lastrowid is not None  # set by the INSERT
            return cur.lastrowid

    def keep(self, envelope: Envelope, error: dict[str, Any]) -> int:
        """A payload refused as received (stage ``receive``): counted received and failed, so
        that a replay settles it as it settles a conversion's failure."""
        with self._lock:
            self._count(envelope.source, "received", 1)
        return self.add_deadletter(envelope.source, envelope.kind, envelope.payload,
                                   envelope.meta, envelope.meta.get("unit_id"), "receive", error)

    def count(self, source: str, name: str, n: int = 1) -> None:
        with self._lock:
            self._count(source, name, n)

    def mark_replayed(self, dl_id: int, result: dict, ok: bool) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deadletters SET status=?, replayed=?, replay_result=? WHERE id=?",
                ("replayed" if ok else "open", utc_now(), orjson.dumps(result), dl_id))
            if ok:
                src = self._db.execute("SELECT source FROM deadletters WHERE id=?",
                                       (dl_id,)).fetchone()
                if src:
                    self._count(src[0], "failed", -1)

    def replay(self, dl_id: int) -> Accepted:
        """Convert the dead letter's payload again (after a fix of the mapper, its tables or the
        hub) and spool it for delivery; the dead letter is marked replayed when that succeeded, and
        a new dead letter records a new failure."""
        dl = self.deadletter(dl_id)
        if dl is None:
            raise KeyError(f"no dead letter {dl_id}")
        if dl["status"] != "open":
            raise ValueError(f"dead letter {dl_id} was already replayed")
        if is_cut(dl):
            # a block cut off or over the size limit is a fragment: written, "6.8 mmol/L" cut
            # after its "6" became a result of 6, over the whole message the sender resent
            raise ValueError(f"dead letter {dl_id} is what the source received of a message it "
                             "refused (cut off or over the size limit), not a whole message: it "
                             "is kept to read, never written; the sender resends the message")
        env = Envelope(dl["payload"], dl["kind"], dl["source"], {**dl["meta"], "replay_of": dl_id})
        [answer] = self.accept([env])
        with self._lock:
            self._db.execute(
                "UPDATE deadletters SET status=?, replayed=?, replay_result=? WHERE id=?",
                ("replayed" if answer.ok else "open", utc_now(),
                 orjson.dumps({"ok": answer.ok, "unit_ids": answer.unit_ids,
                               "error": answer.error, "deadletter_id": answer.deadletter_id}),
                 dl_id))
            # counted again as received by accept; the old failure is settled either way (a new
            # failure has its own dead letter): one open dead letter per payload
            self._count(dl["source"], "received", -1)
            self._count(dl["source"], "failed", -1)
            if answer.ok and dl["stage"] not in ("convert", "receive"):  # it had been converted before
                self._count(dl["source"], "converted", -1)
            if not answer.ok:
                self._db.execute("UPDATE deadletters SET status='superseded' WHERE id=?", (dl_id,))
        return answer

    # -- status ----------------------------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT source, name, n FROM counters").fetchall()
            lag = self._db.execute(
                "SELECT source, count(*), min(received) FROM units GROUP BY source").fetchall()
            dls = self._db.execute("SELECT source, count(*) FROM deadletters WHERE status='open'"
                                   " GROUP BY source").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for source, name, n in rows:
            out.setdefault(source, {c: 0 for c in COUNTERS})[name] = n
        now = time.time()
        for source, n, oldest in lag:
            d = out.setdefault(source, {c: 0 for c in COUNTERS})
            d["lag"] = n
            d["oldest_pending_s"] = round(now - oldest, 3)
        for source, n in dls:
            out.setdefault(source, {c: 0 for c in COUNTERS})["deadletters"] = n
        for d in out.values():
            d.setdefault("lag", 0)
            d.setdefault("deadletters", 0)
        return out

    def checkpoints(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM checkpoints").fetchall())


def _meta_json(meta: dict) -> bytes:
    """A payload's metadata as JSON; a value JSON cannot hold (a file name that is no UTF-8, read
    with surrogate escapes) is written with its undecodable bytes replaced."""
    try:
        return orjson.dumps(meta, default=str)
    except orjson.JSONEncodeError:
        def clean(v: Any) -> Any:
            if isinstance(v, str):
                return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return v
        return orjson.dumps({k: clean(v) for k, v in meta.items()}, default=str)
