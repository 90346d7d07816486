"""The patient timeline: each Patient's clinical events in time order, across institutions.

One row per current clinical resource of the kinds below: ``(patient, t, kind, rtype, rid,
version)`` in ``$HUB_DATA_DIR/timeline.sqlite``, indexed by ``(patient, t)``. A new version
replaces its row, a delete removes it; rows and the tracking position are written in one
transaction, so ``hub projections rebuild timeline`` replays to the same rows.

Rows are keyed by Patient, not by person: which Patients make a person is resolved when asked (the
person projection), so links, unlinks, merges and unmerges change a person's timeline at once and
no row is ever rewritten for an identity event. "Person P between t1 and t2, of kinds K" is one
indexed read: ``patient IN (P's Patients) AND t >= t1 AND t < t2 AND kind IN K ORDER BY t``.

The time of a resource is the first of its clinically meaningful times that is present (below,
``TIME_PATHS``), as µs since the epoch in UTC (a value without a zone is read in the platform's
zone, ``HUB_TIMEZONE``, like everywhere in the hub); a resource without any is placed at its
``meta.lastUpdated`` and flagged ``dated = 0``. The Patient is the ``subject`` or ``patient``
reference (``Patient/id``, or absolute on ``HUB_BASE_URL``; not a Patient on another server).

Where rows are placed is versioned (``RULES``, recorded in ``t_meta``): a timeline written under an
older version is ``stale`` until ``hub projections rebuild timeline``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from hub.core.access import own_base
from hub.core.events import KIND_OF_TOPIC
from hub.core.fhirtime import parse_range
from projections.sqlite_model import SQLiteReadModel, newest

NAME = "timeline"

KIND_OF_TYPE = {
    "Encounter": "encounter",
    "Condition": "diagnosis",
    "Observation": "result",
    "DiagnosticReport": "result",
    "MedicationRequest": "medication",
    "MedicationStatement": "medication",
    "MedicationAdministration": "medication",
    "Procedure": "procedure",
    "DocumentReference": "document",
    "Composition": "document",
    "AllergyIntolerance": "allergy",
    "Immunization": "immunization",
}
KINDS = tuple(sorted(set(KIND_OF_TYPE.values())))

# element paths tried in order; "x.start" reads a Period's start, and a Period with only an end
# ("x.end") is placed at its end, as an Encounter's is
TIME_PATHS = {
    "Encounter": ("period.start", "period.end"),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "onsetPeriod.end", "recordedDate",
                  "abatementDateTime"),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectivePeriod.end",
                    "effectiveInstant", "issued"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "effectivePeriod.end",
                         "issued"),
    "MedicationRequest": ("authoredOn",),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod.start", "effectivePeriod.end",
                            "dateAsserted"),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod.start",
                                 "effectivePeriod.end"),
    "Procedure": ("performedDateTime", "performedPeriod.start", "performedPeriod.end"),
    "DocumentReference": ("context.period.start", "context.period.end", "date"),
    "Composition": ("date",),
    "AllergyIntolerance": ("onsetDateTime", "onsetPeriod.start", "onsetPeriod.end",
                           "recordedDate"),
    "Immunization": ("occurrenceDateTime", "recorded"),
}

# the version of the placing rules above (TIME_PATHS, spans), recorded in t_meta's row 'rules'.
# Raise it when they change, so that a timeline placed under the last one is stale until rebuilt.
# 1: a Period with only an end placed at its end, a visit lasting past its start spanned (rows
# written before carry no version)
RULES = 1
OLDER_RULES = ("a resource timed by a Period with only an end may sit at its lastUpdated, a "
               "visit lasting past its start be missing from later windows")

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS t_meta (key TEXT PRIMARY KEY, value)",
    "INSERT OR IGNORE INTO t_meta (key, value) VALUES ('writer', 0)",
    "CREATE TABLE IF NOT EXISTS t_row (rtype TEXT NOT NULL, rid TEXT NOT NULL, "
    "version INTEGER NOT NULL, patient TEXT NOT NULL, t INTEGER NOT NULL, kind TEXT NOT NULL, "
    "dated INTEGER NOT NULL, PRIMARY KEY (rtype, rid)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS t_row_patient ON t_row (patient, t, kind, rtype, rid)",
    # a visit that goes on past its start (until: its end; NULL: still going on), so that a
    # window after its start finds it too (beside its row, which places it at its start)
    "CREATE TABLE IF NOT EXISTS t_span (rtype TEXT NOT NULL, rid TEXT NOT NULL, "
    "patient TEXT NOT NULL, t INTEGER NOT NULL, until INTEGER, PRIMARY KEY (rtype, rid)) "
    "WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS t_span_patient ON t_span (patient, t)",
]

# an Encounter of these states without a period.end is still going on (one finished without an
# end recorded is not: it is placed at its start alone)
ONGOING = {"planned", "arrived", "triaged", "in-progress", "onleave"}


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


_PATIENT = re.compile(r"^Patient/([A-Za-z0-9.-]{1,128})(?:/_history/[A-Za-z0-9.-]{1,64})?$")


def patient_of(d: dict) -> str | None:
    """The id of the Patient a resource is about: its ``subject`` or ``patient`` reference, as
    ``Patient/id`` or absolute on ``HUB_BASE_URL``. A Patient on another server is not this
    server's Patient of the same id: such a resource is no local Patient's."""
    own = own_base()
    for key in ("subject", "patient"):
        ref = d.get(key)
        if isinstance(ref, dict):
            r = ref.get("reference")
            if isinstance(r, str):
                if own and r.startswith(own):
                    r = r[len(own):]
                m = _PATIENT.match(r)
                if m:
                    return m.group(1)
    return None


def time_of(rtype: str, d: dict) -> int | None:
    for path in TIME_PATHS.get(rtype, ()):
        v = _get(d, path)
        if isinstance(v, str):
            try:
                return parse_range(v)[0]
            except ValueError:
                continue
    return None


def row_of(rtype: str, rid: str, version: int, header: bytes, d: dict) -> tuple | None:
    patient = patient_of(d)
    if patient is None:
        return None
    t, dated = time_of(rtype, d), 1
    if t is None:
        dated = 0
        try:
            t = parse_range(orjson.loads(header)["lastUpdated"])[0]
        except (ValueError, KeyError, orjson.JSONDecodeError):
            t = 0
    return (rtype, rid, version, patient, t, KIND_OF_TYPE[rtype], dated)


def span_of(rtype: str, rid: str, row: tuple, d: dict) -> tuple | None:
    """``(rtype, rid, patient, t, until)`` of an Encounter that lasts past its start: until its
    ``period.end``, or with none while its status says it goes on (``until`` None)."""
    if rtype != "Encounter" or not row[6]:
        return None
    end = _get(d, "period.end")
    if isinstance(end, str):
        try:
            until = parse_range(end)[1]
        except ValueError:
            return None
        return (rtype, rid, row[3], row[4], until) if until > row[4] else None
    if d.get("status") in ONGOING and isinstance(_get(d, "period.start"), str):
        return (rtype, rid, row[3], row[4], None)
    return None


class TimelineProjection(SQLiteReadModel):
    name = NAME
    meta_table = "t_meta"  # its 'writer' row: the write lock
    zoned = True  # a date-only time is placed at the start of its day in HUB_TIMEZONE
    rules, older_rules = RULES, OLDER_RULES
    schema = SCHEMA
    types = tuple(KIND_OF_TYPE)  # the runner hands over only these events
    tables = ("t_row", "t_span")

    def apply_new(self, c, notifications: list[Notification]) -> None:
        latest = newest(notifications, lambda n: n.topic in KIND_OF_TOPIC)
        drop, rows, spans = [], [], []
        for stream, n in latest.items():
            rtype, rid = stream.split("/", 1)
            if rtype not in KIND_OF_TYPE:
                continue
            drop.append((rtype, rid))
            if KIND_OF_TOPIC[n.topic] == "deleted":
                continue
            header, _, body = n.state.partition(b"\n")
            try:
                d = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            row = row_of(rtype, rid, n.originator_version, header, d) \
                if isinstance(d, dict) else None
            if row is not None:
                rows.append(row)
                span = span_of(rtype, rid, row, d)
                if span is not None:
                    spans.append(span)
        if drop:
            c.executemany("DELETE FROM t_row WHERE rtype=? AND rid=?", drop)
            c.executemany("DELETE FROM t_span WHERE rtype=? AND rid=?",
                          [x for x in drop if x[0] == "Encounter"])
        if rows:
            c.executemany("INSERT INTO t_row (rtype, rid, version, patient, t, kind, dated) "
                          "VALUES (?,?,?,?,?,?,?)", rows)
        if spans:
            c.executemany("INSERT INTO t_span (rtype, rid, patient, t, until) VALUES (?,?,?,?,?)",
                          spans)

    # -- answers -------------------------------------------------------------------------------

    def query(self, patients: Sequence[str], start: int | None = None, end: int | None = None,
              kinds: Sequence[str] | None = None, limit: int = 1000,
              after: tuple[int, str, str] | None = None, newest_first: bool = False) -> list[tuple]:
        """Rows ``(t, rtype, rid, patient, kind, version, dated)`` of these Patients (ids), in
        time order (ties by type and id; with ``newest_first``, the reverse), ``start <= t < end``, of
        ``kinds``; keyset paging after ``(t, rtype, rid)`` in that order. One read over the
        ``(patient, t)`` index; with a ``start``, the visits begun before it and still going on
        at it are placed at their start."""
        if not patients:
            return []
        who = f"patient IN ({','.join('?' * len(patients))})"
        where, args = [who], list[Any](patients)
        if start is not None:
            where.append("t >= ?")
            args.append(start)
        if end is not None:
            where.append("t < ?")
            args.append(end)
        rest: list[str] = []
        more: list[Any] = []
        if kinds:
            rest.append(f"kind IN ({','.join('?' * len(kinds))})")
            more += list(kinds)
        if after is not None:
            rest.append("(t, rtype, rid) < (?, ?, ?)" if newest_first else "(t, rtype, rid) > (?, ?, ?)")
            more += list(after)
        sql = ("SELECT t, rtype, rid, patient, kind, version, dated FROM t_row WHERE "
               + " AND ".join(where + rest))
        args += more
        if start is not None:
            sql += (" UNION ALL SELECT t, rtype, rid, patient, kind, version, dated FROM t_row "
                    "WHERE (rtype, rid) IN (SELECT rtype, rid FROM t_span WHERE "
                    f"{who} AND t < ? AND (until IS NULL OR until > ?))"
                    + "".join(f" AND {r}" for r in rest))
            args += [*patients, start, start, *more]
        sql += (" ORDER BY t DESC, rtype DESC, rid DESC" if newest_first else " ORDER BY t, rtype, rid") \
            + " LIMIT ?"
        args.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, args)
            return [tuple(r) for r in c.fetchall()]

    def dump(self) -> list[tuple]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT * FROM t_row ORDER BY rtype, rid")
            rows = [tuple(r) for r in c.fetchall()]
            c.execute("SELECT * FROM t_span ORDER BY rtype, rid")
            return rows + [("span", *r) for r in c.fetchall()]
