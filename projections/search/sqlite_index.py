"""The search index on the embedded default: a SQLite file of index rows, fed by the event log.

One row per index value, one table per parameter type; ``sp_res`` holds the current version of
every indexed resource under a small integer key (``pk``) that the value rows point to. A new
version replaces its resource's rows; a delete removes them. Rows and the tracking position are
written in one transaction (eventsourcing's SQLite tracking recorder), so the index is exactly the
log up to its position. Query planning lives elsewhere and reads these tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import orjson
from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC
from hub.core.fhirtime import parse_range
from projections.contract import nothing_to_apply
from projections.search import fulltext
from projections.search.extract import (
    OLDER_RULES,
    RULES,
    DateRange,
    Quantity,
    Str,
    Token,
    ValueRange,
    extract,
    range_params,
)
from projections.search.params import params_for
from projections.sqlite_model import SQLiteReadModel, record_position

NAME = "search"

# table -> columns after (p, and before pk); one table per search parameter type
TABLES = {
    "ix_string": ("norm", "exact"),
    "ix_token": ("code", "system", "text", "type_system", "type_code"),
    "ix_date": ("lo", "hi"),
    "ix_number": ("value",),
    "ix_quantity": ("value", "system", "code", "cvalue", "ccode"),
    "ix_reference": ("target", "type", "id_system", "id_value"),
    "ix_uri": ("uri",),
    "ix_composite": ("c1", "c2", "num", "lo", "hi"),
    # a Range of a number or quantity parameter (projections.search.plan.range_params): [lo, hi]
    "ix_range": ("lo", "hi", "system", "code", "clo", "chi", "ccode"),
}
_QUERY_INDEXES = {
    "ix_string": "p, norm", "ix_token": "p, code, system", "ix_date": "p, lo, hi",
    "ix_number": "p, value", "ix_quantity": "p, code, value", "ix_reference": "p, target",
    "ix_uri": "p, uri", "ix_composite": "p, c1, c2", "ix_range": "p, lo, hi",
}
_SORT_COLUMN = {"ix_string": "norm", "ix_token": "code", "ix_date": "lo, hi", "ix_number": "value",
                "ix_quantity": "cvalue", "ix_reference": "target", "ix_uri": "uri",
                "ix_composite": "c1", "ix_range": "lo"}
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS sp_meta (key TEXT PRIMARY KEY, value)",
    "INSERT OR IGNORE INTO sp_meta (key, value) VALUES ('writer', 0)",
    # Location near: each Location's position
    "CREATE TABLE IF NOT EXISTS sp_geo (pk INTEGER PRIMARY KEY, lat REAL NOT NULL, lon REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sp_geo_lat ON sp_geo (lat, lon)",
    # _text and _content (projections.search.fulltext): rowid = the resource's pk
    "CREATE VIRTUAL TABLE IF NOT EXISTS sp_fts USING fts5(narrative, content, "
    "tokenize='unicode61 remove_diacritics 2')",
    # pks whose rows a bulk load left behind (a newer version got a new pk); deleted at the end
    "CREATE TABLE IF NOT EXISTS sp_stale (pk INTEGER PRIMARY KEY)",
    # a bulk load's updates and deletes (versions after the first): at its end the older versions'
    # rows go. A bulk load never looks a resource up: a random-order (rtype, rid) B-tree over a
    # million rows rewrote most of its pages at every commit (a tenth of a rebuild, mostly I/O).
    "CREATE TABLE IF NOT EXISTS sp_redo (rtype TEXT NOT NULL, rid TEXT NOT NULL, "
    "version INTEGER NOT NULL)",
    # one row per resource: the writer looks it up (sp_res_key) before it inserts
    "CREATE TABLE IF NOT EXISTS sp_res (pk INTEGER PRIMARY KEY, rtype TEXT NOT NULL, "
    "rid TEXT NOT NULL, version INTEGER NOT NULL, updated INTEGER NOT NULL)",
    # multi: some resource has had several values (AND criteria cannot share one row test);
    # span: the widest date range indexed (hi - lo), so "hi >= A" also bounds lo >= A - span
    "CREATE TABLE IF NOT EXISTS sp_param (id INTEGER PRIMARY KEY, rtype TEXT NOT NULL, "
    "code TEXT NOT NULL, multi INTEGER NOT NULL DEFAULT 0, span REAL NOT NULL DEFAULT 0, "
    "UNIQUE (rtype, code))",
]
for _t, _cols in TABLES.items():
    SCHEMA.append(f"CREATE TABLE IF NOT EXISTS {_t} (p INTEGER NOT NULL, {', '.join(_cols)}, "
                  "pk INTEGER NOT NULL)")
# The value indexes: dropped for a bulk load (a rebuild) and created once at its end, which is
# several times faster than keeping B-trees ordered row by row.
VALUE_INDEXES = {}
for _t in TABLES:
    VALUE_INDEXES[f"{_t}_q"] = f"{_t} ({_QUERY_INDEXES[_t]}, pk)"
    # by resource: deletes of a resource's rows, and _sort keys read from the index alone
    VALUE_INDEXES[f"{_t}_pk"] = f"{_t} (pk, p, {_SORT_COLUMN[_t]})"
VALUE_INDEXES["ix_date_hi"] = "ix_date (p, hi, pk)"  # gt, ge, eb
VALUE_INDEXES["sp_res_updated"] = "sp_res (rtype, updated)"
VALUE_INDEXES["sp_res_key"] = "sp_res (rtype, rid)"


def _bound(x: float) -> float:
    return x if math.isfinite(x) else (1e300 if x > 0 else -1e300)


def _composite_row(value: tuple) -> tuple:
    """(c1, c2, num, lo, hi) of a composite value: first component a token, second anything."""
    first, second = value[0], value[1] if len(value) > 1 else None
    c1 = f"{first.system or ''}|{first.code or ''}" if isinstance(first, Token) else str(first)
    c2 = num = lo = hi = None
    if isinstance(second, Token):
        c2 = f"{second.system or ''}|{second.code or ''}"
    elif isinstance(second, Quantity):
        c2, num = f"{second.system or ''}|{second.code or ''}", second.value
    elif isinstance(second, ValueRange):  # a Range: its ends where a date's go, num empty
        c2, lo, hi = f"{second.system or ''}|{second.code or ''}", _bound(second.lo), \
            _bound(second.hi)
    elif isinstance(second, DateRange):
        lo, hi = _bound(second.start), _bound(second.end)
    elif isinstance(second, Str):
        c2 = second.norm
    elif isinstance(second, (int, float)):
        num = float(second)
    elif second is not None:
        c2 = str(second)
    return c1, c2, num, lo, hi


_SKIP = object()

# Per parameter type: the rows of a parameter's values, (parameter id, value columns…, pk) each, in
# one comprehension (a call per value cost a sixth of a rebuild). Tables and columns: TABLES.
_ROWS = {
    "string": ("ix_string", lambda pid, vs, pk: [(pid, v.norm, v.value, pk) for v in vs]),
    "token": ("ix_token", lambda pid, vs, pk: [(pid, v.code, v.system, v.text, v.type_system,
                                                 v.type_code, pk) for v in vs]),
    "date": ("ix_date", lambda pid, vs, pk: [(pid, _bound(v.start), _bound(v.end), pk) for v in vs]),
    "number": ("ix_number", lambda pid, vs, pk: [(pid, float(v), pk) for v in vs
                                                 if type(v) is not ValueRange]),
    "quantity": ("ix_quantity", lambda pid, vs, pk: [
        (pid, v.value, v.system, v.code, v.canonical_value, v.canonical_code, pk) for v in vs
        if type(v) is Quantity]),
    "reference": ("ix_reference", lambda pid, vs, pk: [
        (pid, v.reference, v.type, v.identifier_system, v.identifier_value, pk) for v in vs]),
    "uri": ("ix_uri", lambda pid, vs, pk: [(pid, v, pk) for v in vs]),
    "composite": ("ix_composite", lambda pid, vs, pk: [(pid, *_composite_row(v), pk) for v in vs]),
}  # special (near): not indexed yet


def _range_rows(pid: int, vs: list, pk: int) -> list[tuple]:
    """ix_range rows of the Range values among a number or quantity parameter's values."""
    return [(pid, _bound(v.lo), _bound(v.hi), v.system, v.code, _bound(v.canonical_lo),
             _bound(v.canonical_hi), v.canonical_code, pk) for v in vs if type(v) is ValueRange]


class SQLiteSearchIndex(SQLiteReadModel):
    name = NAME
    schema = SCHEMA
    meta_table = "sp_meta"
    zoned = True  # date rows: a birthDate or a date-only time is a day in HUB_TIMEZONE
    rules, older_rules = RULES, OLDER_RULES  # what is extracted

    def __init__(self, path: Path | str):
        self._params: dict[tuple[str, str], int] = {}
        # per type, per parameter: (parameter id, type, rows of its table); reset on failure
        self._writers: dict[str, dict] = {}
        self._rows: dict[str, list[tuple]] = {t: [] for t in TABLES}
        super().__init__(path)  # -> opened()

    def opened(self, c) -> None:
        c.execute("PRAGMA table_info(sp_param)")
        if "span" not in {r[1] for r in c.fetchall()}:  # an index file from before these
            c.execute("ALTER TABLE sp_param ADD COLUMN multi INTEGER NOT NULL DEFAULT 1")
            c.execute("ALTER TABLE sp_param ADD COLUMN span REAL NOT NULL DEFAULT 1e300")
        c.execute("SELECT sql FROM sqlite_master WHERE name='sp_res'")
        self._old_sp_res = "UNIQUE" in c.fetchone()[0]  # an index file from before sp_redo
        c.execute("SELECT value FROM sp_meta WHERE key='next_pk'")
        found = c.fetchone()
        # bulk load under way (a rebuild, maybe interrupted): the next pk to hand out
        self._next_pk: int | None = int(found[0]) if found else None
        if self._next_pk is None:
            for name, target in VALUE_INDEXES.items():
                c.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")
        c.execute("SELECT id, multi, span FROM sp_param")
        found = c.fetchall()
        self._multi = {pid for pid, multi, _ in found if multi}
        self._span = {pid: span for pid, _, span in found}
        c.execute("SELECT COUNT(*) FROM sp_res")
        self._resources = c.fetchone()[0]
        self._analyzed_at = -1  # resources indexed when the planner statistics were last taken

    def analyze(self) -> None:
        """Refresh SQLite's planner statistics (sampled, so quick even at millions of rows).

        Without them SQLite scans every resource of a type rather than starting from a selective
        index row (a reference search took 8 ms instead of 0.3 at 100k resources).
        """
        with self.datastore.transaction(commit=True) as c:
            c.execute("UPDATE sp_meta SET value = value + 1 WHERE key = 'writer'")  # lock first
            c.execute("PRAGMA analysis_limit=1000")
            c.execute("ANALYZE")
        self._analyzed_at = self._resources

    def _maybe_analyze(self) -> None:
        # after the first few thousand resources, and whenever the index grew by a quarter since
        if self._resources >= 1000 and (self._analyzed_at < 0
                                        or self._resources > self._analyzed_at * 1.25):
            self.analyze()

    @property
    def bulk(self) -> bool:
        """True while a bulk load (rebuild) runs: value indexes absent, stale rows pending."""
        return self._next_pk is not None

    def reset(self) -> None:
        """Forget everything and start a bulk load (ended by ``caught_up``)."""
        with self.datastore.transaction(commit=True) as c:
            for name in VALUE_INDEXES:
                c.execute(f"DROP INDEX IF EXISTS {name}")
            if self._old_sp_res:  # its UNIQUE (rtype, rid) cannot be dropped: a new table
                c.execute("DROP TABLE sp_res")
                c.execute(next(x for x in SCHEMA if "TABLE IF NOT EXISTS sp_res " in x))
                self._old_sp_res = False
            for table in (*TABLES, "sp_res", "sp_stale", "sp_redo", "sp_fts", "sp_geo"):
                c.execute(f"DELETE FROM {table}")
            c.execute("UPDATE sp_param SET multi=0, span=0")
            c.execute("DELETE FROM tracking WHERE application_name=?", (NAME,))
            c.execute("INSERT OR REPLACE INTO sp_meta (key, value) VALUES ('next_pk', 1)")
            self.record_build(c)
        self._next_pk = 1
        self._multi, self._span = set(), {}
        self._resources, self._analyzed_at = 0, -1

    def caught_up(self) -> None:
        """End a bulk load: drop the rows of superseded versions, build the value indexes."""
        if self._next_pk is None:
            return
        with self.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA cache_size=-65536")  # 64 MB for the sorts of CREATE INDEX
            for name, target in VALUE_INDEXES.items():
                c.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")
            # versions that a later update or delete of the bulk load superseded
            c.execute("INSERT OR IGNORE INTO sp_stale (pk) SELECT r.pk FROM sp_redo d "
                      "JOIN sp_res r ON r.rtype = d.rtype AND r.rid = d.rid AND r.version < d.version")
            c.execute("DELETE FROM sp_res WHERE pk IN (SELECT pk FROM sp_stale)")
            c.execute("DELETE FROM sp_redo")
            c.execute("SELECT pk FROM sp_stale")
            stale = c.fetchall()
            for table in TABLES:  # through the new pk indexes
                c.executemany(f"DELETE FROM {table} WHERE pk=?", stale)
            c.executemany("DELETE FROM sp_fts WHERE rowid=?", stale)
            c.executemany("DELETE FROM sp_geo WHERE pk=?", stale)
            c.execute("DELETE FROM sp_stale")
            c.execute("DELETE FROM sp_meta WHERE key='next_pk'")
            c.execute("PRAGMA cache_size=-16384")
            c.execute("SELECT COUNT(*) FROM sp_res")
            self._resources = c.fetchone()[0]
        self._next_pk = None
        self.analyze()

    def _param_id(self, c, rtype: str, code: str) -> int:
        key = (rtype, code)
        pid = self._params.get(key)
        if pid is None:
            c.execute("INSERT OR IGNORE INTO sp_param (rtype, code) VALUES (?, ?)", key)
            c.execute("SELECT id FROM sp_param WHERE rtype=? AND code=?", key)
            pid = self._params[key] = c.fetchone()[0]
        return pid

    def _writer(self, c, rtype: str, code: str):
        """(parameter id, is a date, the row list of its table, its row maker, the row list of
        ix_range when the parameter can hold a Range), or _SKIP."""
        p = params_for(rtype).get(code)
        if p is None or code in ("_id", "_lastUpdated") or p.type not in _ROWS:
            return _SKIP  # _id and _lastUpdated are answered from sp_res
        table, rows_of = _ROWS[p.type]
        ranges = self._rows["ix_range"] if code in range_params(rtype) else None
        return (self._param_id(c, rtype, code), p.type == "date", self._rows[table], rows_of,
                ranges)

    def apply(self, notifications: Sequence[Notification], up_to: int | None = None,
              since: int | None = None) -> None:
        """Apply a batch and record the last id (or ``up_to`` when beyond it) in one
        transaction; what another follower applied is skipped, and nothing is applied when the
        index was reset below ``since`` (the contract's)."""
        last = max(notifications[-1].id if notifications else 0, up_to or 0)
        if not last:
            return
        try:
            self._apply(notifications, last, since)
        except BaseException:
            # the transaction rolled back: parameter ids it created are gone again
            self._params.clear()
            self._writers.clear()
            raise
        finally:
            for batch in self._rows.values():
                batch.clear()

    def _apply(self, notifications: Sequence[Notification], last: int,
               since: int | None = None) -> None:
        with self.datastore.transaction(commit=True) as c:
            # the file's write lock first: a transaction that reads before it writes fails at
            # once ("database is locked") when another follower committed in between
            c.execute("UPDATE sp_meta SET value = value + 1 WHERE key = 'writer'")
            c.execute("SELECT notification_id FROM tracking WHERE application_name=?", (NAME,))
            found = c.fetchone()
            done = found[0] if found else 0
            if nothing_to_apply(last, done, since):
                return  # applied by another follower, or read before a rebuild's reset
            # Only the newest event of each resource in the batch matters for the index; what
            # another follower applied already is not indexed twice.
            newest: dict[str, Notification] = {}
            for n in notifications:
                if n.id > done and n.topic in KIND_OF_TOPIC:  # not an MPI identity event
                    newest[cast(str, n.originator_id)] = n  # streams are named "Type/id"
            # read inside the transaction: another process may have ended the bulk load
            c.execute("SELECT value FROM sp_meta WHERE key='next_pk'")
            found = c.fetchone()
            self._next_pk = int(found[0]) if found else None
            bulk = self._next_pk is not None
            rows = self._rows
            stale: list[tuple[int]] = []
            texts: list[tuple[int, str, str]] = []  # (pk, narrative, content): sp_fts
            geo: list[tuple[int, float, float]] = []  # (pk, latitude, longitude): sp_geo
            new_res: list[tuple] = []  # bulk load: sp_res rows with their pks, inserted at once
            redo: list[tuple] = []  # bulk load: updates and deletes, settled at its end
            multi: set[int] = set()  # parameters seen with several values for the first time
            spans: dict[int, float] = {}  # parameters whose widest date range grew
            added = 0  # resources the index gains (less those it loses) with this batch
            # A bulk load started from nothing and applies the log in order: a first version is
            # new, and a later one is indexed under a new pk, the older settled at the end.
            current = {} if bulk else self._current(c, list(newest))
            for stream, n in newest.items():
                rtype, rid = stream.split("/", 1)
                deleted = KIND_OF_TOPIC[n.topic] == "deleted"
                found = current.get(stream)
                if bulk and (deleted or n.originator_version > 1):
                    redo.append((rtype, rid, n.originator_version))
                if found is not None:
                    if found[1] >= n.originator_version:
                        continue  # already indexed (replay)
                    stale.append((found[0],))
                if deleted:
                    if found is not None:
                        c.execute("DELETE FROM sp_res WHERE pk=?", (found[0],))
                        added -= 1
                    continue
                header, _, body = n.state.partition(b"\n")
                updated = parse_range(orjson.loads(header)["lastUpdated"])[0]
                if found is None and bulk:
                    pk = self._next_pk
                    assert pk is not None  # bulk is set from it above
                    self._next_pk = pk + 1
                    new_res.append((pk, rtype, rid, n.originator_version, updated))
                    added += 1
                elif found is None:
                    c.execute("INSERT INTO sp_res (rtype, rid, version, updated) VALUES (?,?,?,?)",
                              (rtype, rid, n.originator_version, updated))
                    pk = c.lastrowid
                    added += 1
                else:
                    pk = found[0]
                    c.execute("UPDATE sp_res SET version=?, updated=? WHERE pk=?",
                              (n.originator_version, updated, pk))
                writers = self._writers.get(rtype)
                if writers is None:
                    writers = self._writers[rtype] = {}
                resource = orjson.loads(body)
                if fulltext.enabled(rtype):
                    texts.append((pk, fulltext.narrative(resource), fulltext.content(resource)))
                if rtype == "Location":
                    position = resource.get("position") or {}
                    lat, lon = position.get("latitude"), position.get("longitude")
                    if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
                        geo.append((pk, float(lat), float(lon)))
                for code, values in extract(resource).items():
                    w = writers.get(code)
                    if w is None:
                        w = writers[code] = self._writer(c, rtype, code)
                    if w is _SKIP:
                        continue
                    pid, is_date, out, rows_of, ranges = w
                    if len(values) > 1 and pid not in self._multi:
                        multi.add(pid)
                    new = rows_of(pid, values, pk)
                    out += new
                    if ranges is not None:
                        ranges += _range_rows(pid, values, pk)
                    if is_date:
                        for _, lo, hi, _ in new:
                            if hi - lo > max(self._span.get(pid, 0.0), spans.get(pid, 0.0)):
                                spans[pid] = hi - lo
            c.executemany("INSERT INTO sp_res (pk, rtype, rid, version, updated) "
                          "VALUES (?,?,?,?,?)", new_res)
            c.executemany("INSERT INTO sp_redo (rtype, rid, version) VALUES (?,?,?)", redo)
            if bulk:
                c.execute("UPDATE sp_meta SET value=? WHERE key='next_pk'", (self._next_pk,))
            elif stale:
                for table in TABLES:
                    c.executemany(f"DELETE FROM {table} WHERE pk=?", stale)
                c.executemany("DELETE FROM sp_fts WHERE rowid=?", stale)
                c.executemany("DELETE FROM sp_geo WHERE pk=?", stale)
            c.executemany("INSERT INTO sp_fts (rowid, narrative, content) VALUES (?,?,?)", texts)
            c.executemany("INSERT OR REPLACE INTO sp_geo (pk, lat, lon) VALUES (?,?,?)", geo)
            for table, batch in rows.items():
                if batch:
                    marks = ", ".join("?" * (len(TABLES[table]) + 2))
                    c.executemany(f"INSERT INTO {table} VALUES ({marks})", batch)
            c.executemany("UPDATE sp_param SET multi=1 WHERE id=?", [(pid,) for pid in multi])
            c.executemany("UPDATE sp_param SET span=MAX(span, ?) WHERE id=?",
                          [(span, pid) for pid, span in spans.items()])
            record_position(self.tracking, c, NAME, last)
        self._multi |= multi  # after the commit: a rolled-back batch must not count
        for pid, span in spans.items():
            self._span[pid] = max(span, self._span.get(pid, 0.0))
        self._resources += added
        if not bulk:
            self._maybe_analyze()

    @staticmethod
    def _current(c, streams: list[str]) -> dict[str, tuple[int, int]]:
        """stream -> (pk, version) of the indexed resources among ``streams``."""
        by_type: dict[str, list[str]] = {}
        for stream in streams:
            rtype, rid = stream.split("/", 1)
            by_type.setdefault(rtype, []).append(rid)
        out: dict[str, tuple[int, int]] = {}
        for rtype, rids in by_type.items():
            for i in range(0, len(rids), 400):
                chunk = rids[i:i + 400]
                c.execute("SELECT rid, pk, version FROM sp_res WHERE rtype=? "
                          f"AND rid IN ({','.join('?' * len(chunk))})", (rtype, *chunk))
                out.update((f"{rtype}/{rid}", (pk, v)) for rid, pk, v in c.fetchall())
        return out

    def stats(self) -> dict:
        with self.datastore.transaction(commit=False) as c:
            out = {}
            for table in ("sp_res", *TABLES):
                c.execute(f"SELECT COUNT(*) FROM {table}")
                out[table] = c.fetchone()[0]
            return out
