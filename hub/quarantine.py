"""Documents refused by quality control (or that failed to map), kept with their report for replay.

One SQLite file in the data directory (``quarantine.sqlite``), whatever engine holds the event
store: the quarantine is an operator's work list, not part of the record. Each entry keeps the
original bytes exactly, who sent them, why they were refused (the quality report as an
OperationOutcome) and, after a replay, what the replay did.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from fhir_mapping.documents import QUALITY_INSTITUTION
from hub.core.errors import FhirError
from hub.core.fhirtime import local_offset
from hub.core.sqlitefile import naming, refuse_empty

SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload BLOB NOT NULL,
    source BLOB NOT NULL, report BLOB NOT NULL, reason TEXT NOT NULL, time TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open', replayed TEXT, result BLOB);
CREATE INDEX IF NOT EXISTS quarantine_status ON quarantine (status, id);
CREATE INDEX IF NOT EXISTS quarantine_time ON quarantine (time);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class QuarantineFull(FhirError):
    """An institution has as many open entries as its quota allows: nothing more is kept (or
    accepted) from it until an operator works the list down."""

    error_code = "unavailable"

    def __init__(self, institution: str, quota: int):
        super().__init__(429, "throttled", f"The quarantine holds {quota} open entries from "
                         f"{institution or 'an unnamed sender'}, its quota: this one is neither "
                         "kept nor accepted; send it again once they are worked off")


class Quarantine:
    """``quota``: open entries kept per institution at most (None: no limit), so one sender's
    flood of refusals cannot fill the disk the others share."""

    def __init__(self, path: Path | str, quota: int | None = None):
        self.path = str(path)
        self.quota = quota
        self._lock = threading.Lock()
        refuse_empty(self.path, "the quarantine")  # documents kept nowhere else
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # API workers starting together on a new file: switching it to WAL and creating the
        # tables can meet "database is locked" without waiting (SQLite does not wait there), so
        # the opening is tried again for a while; the column check runs under the write lock,
        # where only the first adds it
        deadline = time.monotonic() + 30
        while True:
            try:
                with naming(self.path):
                    self._create()
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _create(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")  # waits (the connect timeout) for another writer
        try:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(quarantine)")}
            if "institution" not in columns:  # a file from before quotas: counted from now on
                self._db.execute("ALTER TABLE quarantine ADD COLUMN institution TEXT")
            self._db.execute("CREATE INDEX IF NOT EXISTS quarantine_institution "
                             "ON quarantine (institution, status)")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def put(self, kind: str, payload: bytes, source: dict, report: dict, reason: str) -> int:
        institution = str(source.get("institution") or "")
        with self._lock:
            if self.quota is not None:
                (held,) = self._db.execute(
                    "SELECT count(*) FROM quarantine WHERE institution = ? AND status = 'open'",
                    (institution,)).fetchone()
                if held >= self.quota:
                    raise QuarantineFull(institution, self.quota)
            cur = self._db.execute(
                "INSERT INTO quarantine (kind, payload, source, report, reason, time, "
                "institution) VALUES (?,?,?,?,?,?,?)",
                (kind, payload, orjson.dumps(source), orjson.dumps(report), reason[:2000], _now(),
                 institution))
            assert cur.lastrowid is not None  # set by the INSERT
            return cur.lastrowid

    def list(self, status: str | None = "open", limit: int = 100, newest_first: bool = False,
             before: int | None = None, institution: str | None = None) -> list[dict[str, Any]]:
        """At most ``limit`` entries of ``status`` (None: any), oldest first, or with ``newest_first``
        the newest first; ``before``: only those of an id below it (the next page of the
        newest first); ``institution``: only those from it (None: from anyone)."""
        # the institution its report is filed under: the document's custodian when the sender
        # named none (a list showed "-" for a document whose custodian it knew), read in SQL: a
        # page of entries does not parse each whole report for it
        sql = ("SELECT id, kind, source, reason, time, status, replayed, (SELECT "
               "json_extract(e.value, '$.valueString') FROM json_each(CAST(report AS TEXT), "
               "'$.extension') AS e WHERE json_extract(e.value, '$.url') = ? LIMIT 1) "
               "FROM quarantine")
        where: builtins.list[str] = []
        args: builtins.list[Any] = [QUALITY_INSTITUTION]
        if status:
            where.append("status = ?")
            args.append(status)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if institution is not None:
            where.append(_FROM)
            args += [QUALITY_INSTITUTION, institution]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        with self._lock:
            rows = self._db.execute(sql + " LIMIT ?", (*args, limit)).fetchall()
        keys = ("id", "kind", "source", "reason", "time", "status", "replayed")
        return [dict(zip(keys, r), source=orjson.loads(r[2]), institution=_institution(r[2], r[7]))
                for r in rows]

    def count(self, status: str | None = "open", institution: str | None = None) -> int:
        where, args = (["status = ?"], [status]) if status else ([], [])
        if institution is not None:
            where.append(_FROM)
            args += [QUALITY_INSTITUTION, institution]
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM quarantine" +
                                   (" WHERE " + " AND ".join(where) if where else ""),
                                   args).fetchone()
        return int(row[0])

    def daily(self, since: str, institution: str | None = None
              ) -> builtins.list[tuple[str, str, int]]:
        """(day in the platform's zone, HUB_TIMEZONE, as YYYY-MM-DD; kind; entries) of the
        entries kept since the instant ``since`` (ISO, UTC), for the console's overview. Each
        refused input counts once, on the day of its latest refusal (as the quality report
        counts its check): an entry a refused replay superseded is counted as its new entry."""
        offset = f"{local_offset()} seconds"
        mine = f" AND {_FROM}" if institution is not None else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT date(time, ?) AS d, kind, count(*) FROM quarantine "
                f"WHERE time >= ? AND status != 'superseded'{mine} GROUP BY d, kind ORDER BY d",
                (offset, since, *((QUALITY_INSTITUTION, institution) if mine else ()))
            ).fetchall()
        return [(str(d), str(k), int(n)) for d, k, n in rows]

    def counts_by(self, kind: str, key: str, status: str | None = None
                  ) -> builtins.list[tuple[str, int, str]]:
        """(value of ``key`` in the reports of ``kind``, entries, the latest time) for each value,
        most entries first (``hub.api.v3``: the interactions received and refused as unknown)."""
        sql = ("SELECT json_extract(CAST(report AS TEXT), ?) AS v, count(*), max(time) "
               "FROM quarantine WHERE kind = ?")
        args: builtins.list = [f"$.{key}", kind]
        if status:
            sql += " AND status = ?"
            args.append(status)
        with self._lock:
            rows = self._db.execute(sql + " GROUP BY v HAVING v IS NOT NULL "
                                    "ORDER BY count(*) DESC, v", args).fetchall()
        return [(str(v), int(n), str(t)) for v, n, t in rows]

    def get(self, qid: int) -> dict[str, Any] | None:
        if not 0 < qid < 2 ** 63:  # beyond SQLite's integers: no entry (not an OverflowError)
            return None
        with self._lock:
            r = self._db.execute(
                "SELECT id, kind, payload, source, report, reason, time, status, replayed, result "
                "FROM quarantine WHERE id = ?", (qid,)).fetchone()
        if r is None:
            return None
        report = orjson.loads(r[4])
        return {"id": r[0], "kind": r[1], "payload": r[2], "source": orjson.loads(r[3]),
                "report": report, "reason": r[5], "time": r[6], "status": r[7],
                "replayed": r[8], "result": orjson.loads(r[9]) if r[9] else None,
                "institution": _institution(r[3], _filed_under(report))}

    def mark(self, qid: int, status: str, result: dict) -> None:
        """``replayed`` (it went through) or ``open`` (refused again: the new report is kept)."""
        with self._lock:
            self._db.execute("UPDATE quarantine SET status=?, replayed=?, result=? WHERE id=?",
                             (status, _now(), orjson.dumps(result), qid))


# an entry is from the institution ``_institution`` says, in SQL (two arguments: the report's
# institution extension, the institution asked for); the column, kept for the quota, holds
# what the sender named, and is empty or (a file from before quotas) NULL when it named none
_FROM = ("(CASE WHEN coalesce(institution, '') != '' THEN institution ELSE coalesce(nullif("
         "json_extract(CAST(source AS TEXT), '$.institution'), ''), nullif((SELECT "
         "json_extract(e.value, '$.valueString') FROM json_each(CAST(report AS TEXT), "
         "'$.extension') AS e WHERE json_extract(e.value, '$.url') = ? LIMIT 1), 'unknown'), '') "
         "END) = ?")


def _institution(source: bytes | str, filed_under: Any) -> str:
    """Who an entry is from: the institution the sender named, else the one its report is
    filed under ("" for neither)."""
    named = (orjson.loads(source) or {}).get("institution")
    filed = filed_under if isinstance(filed_under, str) and filed_under != "unknown" else ""
    return str(named or filed or "")


def _filed_under(report: Any) -> Any:
    """The institution a report (a document's quality report) names, or None."""
    ext = report.get("extension") if isinstance(report, dict) else None
    return next((e.get("valueString") for e in ext if isinstance(e, dict)
                 and e.get("url") == QUALITY_INSTITUTION), None) \
        if isinstance(ext, list) else None
