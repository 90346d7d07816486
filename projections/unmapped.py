"""The unmapped-codes worklist: local codes that current resources carry without a standard one.

A code with no mapping is kept, flagged, and listed per institution with its frequency, so
a terminologist maps the most frequent first. This read model follows the events of the clinical
types that carry local codes (``TYPES``: those the normaliser maps) and keeps, in
``$HUB_DATA_DIR/unmapped.sqlite``:

- ``u_occ``: per resource (stream ``Type/id``), the local codes its *current* version carries with
  no sibling coding of a standard (not local) system (one row per distinct institution, system
  and code);
- ``u_code``: per institution, local system and code, how many current resources carry it
  (``resources``), a display, and when it was first and last seen (event times, UTC).

A new version replaces its resource's rows and a delete removes them, so once a mapping exists and
the resources are re-normalised (``hub terminology renormalise``) the code leaves the worklist
(its row stays with ``resources = 0``, keeping ``first_seen``). Rows and the tracking position are
written in one transaction, like every read model (``projections.runner``).

What is a *local* coding: the normalisers' rule (``terminology.systems.is_local_system``): its
system is ``urn:oid:<OID>`` outside the arcs of national and international standards (the Chinese
national code systems and identifiers ``2.16.156.10011.1``/``.2``, HL7 ``2.16.840.1.113883``), as
each institution's own code systems are ``urn:oid:<institution OID>.<n>``. A coding of another form
(an ``http`` URL) is not listed.
The *institution* is the one that sent the event (``source.institution``: the connector's code,
``X-Hub-Source-Institution``); ``oid`` is the local system's parent OID (the institution's OID),
and a filter on ``institution`` matches either.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC
from projections.errors import QueryError
from projections.sqlite_model import SQLiteReadModel
from terminology.normalise import CLINICAL_TYPES
from terminology.systems import is_local_system

NAME = "unmapped"
# the types the normaliser maps: a local code it can leave unmapped is listed here
TYPES = tuple(sorted(CLINICAL_TYPES))
SKIP_KEYS = frozenset({"meta", "text", "identifier", "contained", "extension", "modifierExtension",
                       "subject", "patient", "encounter", "performer", "requester", "recorder"})
MAX_TEXT = 1024  # longest code, system or display kept (longer ones are cut)
MAX_DEPTH = 12
COLUMNS = ("institution", "oid", "system", "code", "display", "resources", "first_seen",
           "last_seen")

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS u_meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS u_occ (stream TEXT NOT NULL, institution TEXT NOT NULL, "
    "system TEXT NOT NULL, code TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS u_occ_stream ON u_occ (stream)",
    "CREATE INDEX IF NOT EXISTS u_occ_code ON u_occ (institution, system, code)",
    "CREATE TABLE IF NOT EXISTS u_code (institution TEXT NOT NULL, system TEXT NOT NULL, "
    "code TEXT NOT NULL, oid TEXT NOT NULL, display TEXT, resources INTEGER NOT NULL, "
    "first_seen TEXT, last_seen TEXT, PRIMARY KEY (institution, system, code))",
    "CREATE INDEX IF NOT EXISTS u_code_rank ON u_code (resources DESC)",
    "INSERT OR IGNORE INTO u_meta (key, value) VALUES ('writer', 0)",
]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT]


def oid_of(system: str) -> str:
    return system[8:].rpartition(".")[0]


def local_codes(d: Any, depth: int = 0) -> Iterator[tuple[str, str, str | None]]:
    """(system, code, display) of the local codings in ``d`` without a sibling of a standard
    system (another local system's coding, another institution code for the same thing, maps
    nothing)."""
    if depth > MAX_DEPTH:
        return
    if isinstance(d, dict):
        codings = d.get("coding")
        if isinstance(codings, list):
            locals_ = [c for c in codings if isinstance(c, dict) and is_local_system(c.get("system"))
                       and isinstance(c.get("code"), str) and c["code"]]
            for c in locals_:
                if not any(isinstance(o, dict) and isinstance(o.get("system"), str)
                           and not is_local_system(o["system"]) for o in codings):
                    display = c.get("display")
                    yield c["system"], c["code"], display if isinstance(display, str) else None
        for k, v in d.items():
            if k != "coding" and k not in SKIP_KEYS and isinstance(v, (dict, list)):
                yield from local_codes(v, depth + 1)
    elif isinstance(d, list):
        for v in d:
            if isinstance(v, (dict, list)):
                yield from local_codes(v, depth + 1)


class UnmappedProjection(SQLiteReadModel):
    name = NAME
    meta_table = "u_meta"  # its 'writer' row: the write lock
    schema = SCHEMA
    types = TYPES  # the runner hands over only these events

    tables = ("u_occ", "u_code")

    def apply_new(self, c, notifications: list[Notification]) -> None:
        # every event in order (not only the newest per resource): first/last seen and the
        # display then depend on the log alone, not on how it was cut into batches; the batch's
        # resources that have rows are read in a few queries (one per resource cost most of a
        # rebuild: 300 s at a million events)
        held = self._held(c, list({str(n.originator_id) for n in notifications}))
        for n in notifications:
            self._replace(c, str(n.originator_id), n, held)

    @staticmethod
    def _held(c: Any, streams: list[str]) -> dict[str, list[tuple]]:
        held: dict[str, list[tuple]] = {}
        for i in range(0, len(streams), 500):
            chunk = streams[i:i + 500]
            c.execute("SELECT stream, institution, system, code FROM u_occ WHERE stream IN "
                      f"({','.join('?' * len(chunk))})", chunk)
            for stream, *row in c.fetchall():
                held.setdefault(stream, []).append(tuple(row))
        return held

    def _replace(self, c: Any, stream: str, n: Notification, held: dict[str, list[tuple]]) -> None:
        old = held.pop(stream, None)
        if old:
            c.executemany("UPDATE u_code SET resources = resources - 1 WHERE institution=? AND "
                          "system=? AND code=?", old)
            c.execute("DELETE FROM u_occ WHERE stream=?", (stream,))
        if KIND_OF_TOPIC.get(n.topic) == "deleted":
            return
        header, _, body = n.state.partition(b"\n")
        try:
            d = orjson.loads(body)
            h = orjson.loads(header)
        except orjson.JSONDecodeError:
            return
        source = h.get("source") if isinstance(h, dict) else None
        institution = source.get("institution") if isinstance(source, dict) else None
        institution = _cut(institution) if isinstance(institution, str) else ""
        when = h.get("lastUpdated") if isinstance(h.get("lastUpdated"), str) else None
        codes: dict[tuple[str, str], str | None] = {}
        for system, code, display in local_codes(d):
            key = (_cut(system), _cut(code))
            if codes.get(key) is None:
                codes[key] = _cut(display) if display else None
        if not codes:
            return
        c.executemany("INSERT INTO u_occ (stream, institution, system, code) VALUES (?,?,?,?)",
                      [(stream, institution, s, k) for s, k in codes])
        held[stream] = [(institution, s, k) for s, k in codes]  # a later event of the batch
        c.executemany(
            "INSERT INTO u_code (institution, system, code, oid, display, resources, first_seen,"
            " last_seen) VALUES (?,?,?,?,?,1,?,?) ON CONFLICT (institution, system, code) DO UPDATE"
            " SET resources = resources + 1, display = coalesce(excluded.display, display),"
            " first_seen = coalesce(min(first_seen, excluded.first_seen), excluded.first_seen),"
            " last_seen = coalesce(max(last_seen, excluded.last_seen), excluded.last_seen)",
            [(institution, s, k, oid_of(s), disp, when, when) for (s, k), disp in codes.items()])

    # -- answers -------------------------------------------------------------------------------

    def worklist(self, institution: str | None = None, system: str | None = None,
                 limit: int | None = None) -> list[dict[str, Any]]:
        """Local codes carried by current resources without a standard code, most frequent first."""
        where, args = ["resources > 0"], []
        for name, value in (("institution", institution), ("system", system)):
            if value is not None and (not isinstance(value, str) or not value
                                      or len(value) > MAX_TEXT or not value.isprintable()):
                raise QueryError(f"{name} must be 1 to {MAX_TEXT} printable characters")
        if institution:
            where.append("(institution = ? OR oid = ?)")
            args += [institution, institution.removeprefix("urn:oid:")]
        if system:
            where.append("system = ?")
            args.append(system)
        if limit is not None and limit < 1:
            raise QueryError("limit must be at least 1")
        sql = (f"SELECT {', '.join(COLUMNS)} FROM u_code WHERE {' AND '.join(where)} "
               "ORDER BY resources DESC, institution, system, code")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, args)
            return [dict(zip(COLUMNS, tuple(r))) for r in c.fetchall()]

    def streams(self, institution: str | None = None,
                codes: Sequence[tuple[str, str]] | None = None) -> list[str]:
        """The resources (``Type/id``) carrying listed codes (of these ``(system, code)`` only)."""
        inst_sql, inst_args = "", []
        if institution:
            inst_sql = " AND (o.institution = ? OR c.oid = ?)"
            inst_args = [institution, institution.removeprefix("urn:oid:")]
        base = ("SELECT DISTINCT o.stream FROM u_occ o JOIN u_code c ON c.institution = "
                "o.institution AND c.system = o.system AND c.code = o.code WHERE 1=1" + inst_sql)
        out: set[str] = set()
        with self.datastore.transaction(commit=False) as c:
            if codes is None:
                c.execute(base, inst_args)
                out.update(r[0] for r in c.fetchall())
            else:
                for system, code in codes:
                    c.execute(base + " AND o.system = ? AND o.code = ?",
                              [*inst_args, system, code])
                    out.update(r[0] for r in c.fetchall())
        return sorted(out)

    def dump(self) -> dict[str, list[tuple]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT * FROM u_occ")
            occ = sorted(tuple(r) for r in c.fetchall())
            c.execute("SELECT * FROM u_code")
            codes = sorted(tuple(r) for r in c.fetchall())
        return {"u_occ": occ, "u_code": codes}


# -- output ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a sender's text a spreadsheet would run as a formula
    return str(value)


def to_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def to_table(rows: Sequence[dict]) -> str:
    cols = ("resources", "institution", "system", "code", "display", "last_seen")
    cells = [[" ".join(str(row.get(c) if row.get(c) is not None else "-").split())[:60]
              for c in cols] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if i == 0 else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(list(cols)), line(["-" * w for w in widths]),
                      *(line(r) for r in cells)]) + "\n"
