"""The resource event store: eventsourcing recorders plus the write-side indexes the FHIR API needs.

Events go into eventsourcing's application recorder (SQLite file or PostgreSQL): one stream per
resource, optimistic concurrency from its unique (stream, version) key, a global notification id
that orders everything. In the same transaction this module maintains three small write-side
indexes, because the FHIR interactions that write must decide on current state atomically:

- ``resource_head``: current version, deleted flag and content hash of every resource (dedupe and
  version checks without reading bodies);
- ``resource_identifier``: identifiers of current versions (conditional create/update/delete and
  conditional references, checked inside the write lock so two conditional creates cannot both win);
- ``resource_version``: (notification id, type, id, version, time) of every event, so type and
  system history with ``_since``/``_at`` are index look-ups. Bodies always come from the events.

Read models (search, timelines, ...) are projections in ``projections/``; these tables are not.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import psycopg_pool
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
)

from hub.core import identity_events as identity_events
from hub.core import pgschema
from hub.core.errors import FhirError, HubError
from hub.core.events import DELETED, KIND_OF_TOPIC, TOPICS, ResourceEvent, from_stored, to_stored
from hub.core.fhirtime import parse_range
from hub.core.resource import content_hash, identifiers
from hub.core.sqlitesync import sqlite_sync

# -- events that are no resource (MPI identity decisions, hub/core/identity_events.py) -----------------------
# They live in the same log (one notification order) under streams of their own kind, with no row
# in resource_head / resource_identifier / resource_version: every resource-level read (heads,
# history, conditional interactions, notifications_of resource types) passes them by. A projection
# follows them by asking ``notifications_of`` for the kind's name, answered by topic.
STREAM_KINDS: dict[str, tuple[str, ...]] = {identity_events.STREAM_KIND: identity_events.TOPICS}
# ---------------------------------------------------------------------------------------------------


class ConflictError(HubError):
    """A concurrent write changed what this commit was prepared against; safe to retry."""

    error_code = "conflict"


class StoreInputError(FhirError):
    """The database refused a value of the request (PostgreSQL's text holds no NUL, a number
    beyond its column): the request's fault, answered 400; the same request fails again."""

    def __init__(self, detail: str):
        super().__init__(400, "invalid", f"The event store cannot take a value of this request: "
                         f"{detail.splitlines()[0] if detail else 'a data error'}")


# What says the storage could not take a write: SQLite's result codes (a full disk is SQLITE_FULL;
# a file size limit, RLIMIT_FSIZE or a quota, fails the write itself, SQLITE_IOERR_WRITE) and
# PostgreSQL's errors (SQLSTATE 53100 disk_full, 58030 io_error)
_SQLITE_STORAGE_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_WRITE,
                                   sqlite3.SQLITE_IOERR_FSYNC, sqlite3.SQLITE_IOERR_TRUNCATE})
_PG_STORAGE_ERRORS = (psycopg.errors.DiskFull, psycopg.errors.IoError)


# what a client is told (HTTP 507 Insufficient Storage): not the lock contention or outage a
# "retry shortly" stands for
STORE_FULL = ("The event store is out of space (its disk is full or a file size limit was "
              "reached): nothing was stored; it takes writes again once space is freed")


def storage_failure(e: BaseException) -> str | None:
    """The engine's own words when ``e`` is a write the storage could not take (a full disk, a
    file size limit, a failed write), else None: no retry helps until someone frees space."""
    cause = e.__cause__ or e
    if isinstance(cause, sqlite3.Error):
        if getattr(cause, "sqlite_errorcode", None) not in _SQLITE_STORAGE_CODES:
            return None
        return f"{cause} ({getattr(cause, 'sqlite_errorname', '')})".replace(" ()", "")
    if isinstance(cause, _PG_STORAGE_ERRORS):
        return str(cause).splitlines()[0]
    return None


@dataclass(frozen=True, slots=True)
class Head:
    version: int
    deleted: bool
    content_hash: bytes


@dataclass(frozen=True, slots=True)
class IdentifierGuard:
    """Commit only if no current ``rtype`` resource (outside this commit) has this identifier,
    and (criteria being ANDed) each of ``also`` too, and is one of ``ids`` when given."""

    rtype: str
    system: str | None
    value: str
    also: tuple[tuple[str | None, str], ...] = ()
    ids: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class QuietGuard:
    """Commit only if no ``rtype`` resource (that one, given ``rid``) was written after
    notification ``after``: a conditional write decided by a search that read the log up to
    ``after``, or (``rid``) the resource its criteria matched, unchanged since they did."""

    rtype: str
    after: int
    rid: str | None = None


@dataclass(slots=True)
class Commit:
    """Everything one transaction writes: events plus the index rows derived from them."""

    events: list[ResourceEvent] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # one per event (b"" for deletes)
    identifiers: list[list[tuple[str, str]]] = field(default_factory=list)  # per event
    timestamps: list[int] = field(default_factory=list)  # per event, µs since epoch (UTC)
    guards: list[IdentifierGuard | QuietGuard] = field(default_factory=list)
    stream_kind: str | None = None  # events of another stream kind (STREAM_KINDS), no resources
    # the latest moment (µs since epoch) this commit may take the writers' lock: its events'
    # lastUpdated was read from the clock before it, and a bulk export's transactionTime
    # (``ResourceStore.settled_position``) counts on no write committing longer after it
    settle_by_us: int | None = None

    def add(
        self, event: ResourceEvent, content_hash: bytes, identifiers: list[tuple[str, str]], ts: int
    ) -> None:
        self.events.append(event)
        self.hashes.append(content_hash)
        self.identifiers.append(identifiers)
        self.timestamps.append(ts)


@dataclass(frozen=True, slots=True)
class VersionRow:
    nid: int
    kind: str
    rtype: str
    rid: str
    version: int
    state: bytes


# as eventsourcing tries its own selects again (ten times, 0.2 s apart): a read of the index
# tables while the pool replaces connections the database cut (pg_terminate_backend, a
# failover, a firewall's idle timeout) answered 503 long after the database was back
READ_ATTEMPTS, READ_WAIT_S = 10, 0.2


def _lost_connection(e: BaseException) -> bool:
    """A store error that is the connection, not the query: nothing was read, try again (a
    statement cancelled for its cost is no such error: it would be cancelled again)."""
    cause = e.__cause__
    return isinstance(cause, (psycopg.OperationalError, psycopg.InterfaceError)) and \
        not isinstance(cause, psycopg.errors.QueryCanceled)


# SQLite's and PostgreSQL's refusals of a statement too big to plan: the client's query, not an
# outage
_TOO_COMPLEX = ("too many sql variables", "expression tree is too large", "parser stack overflow",
                "too many terms in compound select", "at most 64 tables in a join",
                "too many columns", "stack depth limit exceeded", "too many range table entries",
                "number of parameters must be between")


def too_large(e: BaseException) -> bool:
    """PostgreSQL's program limits (SQLSTATE class 54) met by a value: an index row too big."""
    state = (getattr(e, "sqlstate", None) or getattr(getattr(e, "__cause__", None), "sqlstate", None)
             or "")
    return state.startswith("54") or "index row size" in str(e).lower()


def too_complex(e: BaseException) -> bool:
    text = str(e).lower()
    return any(m in text for m in _TOO_COMPLEX)


def _reconnecting(read: Callable) -> Callable:
    @functools.wraps(read)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return read(self, *args, **kwargs)
            except (OperationalError, InterfaceError) as e:
                if attempt == READ_ATTEMPTS or not _lost_connection(e):
                    raise
                _drop_dead_connections(self)
                time.sleep(READ_WAIT_S)
        raise AssertionError("unreachable")
    return run


# a store's pool: at most this many connections (HUB_PG_POOL's default); one beyond the least
# is closed each time this many seconds pass with it unused (psycopg_pool's max_idle)
PG_POOL, POOL_IDLE_S = 10, 60.0


# the store's opening waits this long for the pool's first connection, where a request waits half
# a second: a database slow to fork its first backends (a busy host, a cold start) is no outage
OPEN_WAIT_S = 15.0


def _first_connection(datastore: PostgresDatastore) -> None:
    """Take the pool's first connection, trying again while the pool only timed out: it opens
    its connections in the background, and a request's half-second wait is no measure of a
    host that is merely busy. A database that stays away fails the opening after
    ``OPEN_WAIT_S`` (the commands check the URL with a direct connection before this)."""
    deadline = time.monotonic() + OPEN_WAIT_S
    try:
        # its first connection made before anyone asks: a request for one while the pool is
        # still connecting makes it open a second one, kept until it is idle long enough
        datastore.pool.open(wait=True, timeout=OPEN_WAIT_S)
    except psycopg_pool.PoolTimeout as e:  # closed by it: the database stayed away
        raise OperationalError(str(e)) from e
    while True:
        try:
            with datastore.get_connection():
                return
        except OperationalError as e:
            if not isinstance(e.__cause__, psycopg_pool.PoolTimeout) or \
                    time.monotonic() > deadline:
                raise


def _drop_dead_connections(recorder: Any) -> None:
    """Replace every dead connection of the pool at once: psycopg_pool tests one connection per
    request, waiting 1, 2, 4 s between dead ones, so after the database cut them all a request
    waited seconds behind the others (and /ready timed out) while new ones sat unused."""
    check = getattr(getattr(recorder.datastore, "pool", None), "check", None)  # PostgreSQL's
    if callable(check):
        try:
            check()
        except Exception:  # noqa: BLE001 - the database still away: the next try says so
            pass


class _IndexMixin:
    """SQL shared by both engines; ``?`` placeholders are rewritten for psycopg."""

    placeholder = "?"
    nid_column = "rowid"

    # from the eventsourcing recorder it is mixed into (SQLite or PostgreSQL: their cursors differ)
    datastore: Any
    select_notifications: Callable[..., Sequence[Notification]]

    def q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", "%s")

    def _write_index(self, c: Any, nids: Sequence[int], commit: Commit) -> None:
        # under the writers' lock: a write that took too long since its lastUpdated is planned
        # again with a new one (the ingest retries a ConflictError), never committed late
        if commit.settle_by_us is not None and time.time_ns() // 1000 > commit.settle_by_us:
            raise ConflictError("the write took too long since its lastUpdated was taken")
        self._check_guards(c, commit)
        if commit.stream_kind is not None:  # read back by kind, not by scanning topics
            self._insert_many(c, "stream_event", ("kind", "nid"),
                              [(commit.stream_kind, nid) for nid in nids])
            return
        heads, versions, supersede, drop_ids = [], [], [], []
        add_ids: list[tuple[str, str, str, str]] = []
        for nid, ev, h, idents, ts in zip(
            nids, commit.events, commit.hashes, commit.identifiers, commit.timestamps
        ):
            deleted = ev.kind == "deleted"
            heads.append((ev.rtype, ev.rid, ev.version, int(deleted), h))
            versions.append((nid, ev.rtype, ev.rid, ev.version, ts))
            if ev.version > 1:
                supersede.append((ts, ev.rtype, ev.rid, ev.version - 1))
                drop_ids.append((ev.rtype, ev.rid))
            if not deleted:
                add_ids.extend((ev.rtype, s, v, ev.rid) for s, v in idents)
        self._insert_many(
            c, "resource_head", ("rtype", "rid", "version", "deleted", "hash"), heads,
            "ON CONFLICT (rtype, rid) DO UPDATE SET version=excluded.version, "
            "deleted=excluded.deleted, hash=excluded.hash",
        )
        self._insert_many(c, "resource_version", ("nid", "rtype", "rid", "version", "ts"), versions)
        if supersede:
            c.executemany(
                self.q(
                    "UPDATE resource_version SET until_ts=? "
                    "WHERE rtype=? AND rid=? AND version=? AND until_ts IS NULL"
                ),
                supersede,
            )
            c.executemany(
                self.q("DELETE FROM resource_identifier WHERE rtype=? AND rid=?"), drop_ids
            )
        if add_ids:
            self._insert_many(c, "resource_identifier", ("rtype", "system", "value", "rid"), add_ids)

    def _insert_many(self, c: Any, table: str, columns: tuple[str, ...], rows: list[tuple],
                     suffix: str = "") -> None:
        c.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join([self.placeholder] * len(columns))}) {suffix}",
            rows,
        )

    def _check_guards(self, c: Any, commit: Commit) -> None:
        mine = {(ev.rtype, ev.rid) for ev in commit.events}
        for g in commit.guards:
            if isinstance(g, QuietGuard):
                # this commit's own versions are not in the table yet: any row is another's,
                # the matched target's too (written meanwhile, it may match no longer)
                sql = "SELECT 1 FROM resource_version WHERE rtype=? AND nid>?"
                args: list[Any] = [g.rtype, g.after]
                if g.rid is not None:
                    sql, args = sql + " AND rid=?", [*args, g.rid]
                c.execute(self.q(sql + " LIMIT 1"), tuple(args))
                if c.fetchone() is not None:
                    raise ConflictError(f"{g.rtype}/{g.rid or '*'} was written meanwhile")
                continue
            others = [rid for rid in self._with_identifier(c, g.rtype, g.system, g.value)
                      if (g.rtype, rid) not in mine and (g.ids is None or rid in g.ids)]
            for system, value in g.also:
                others = [rid for i in range(0, len(others), 500) for rid in
                          self._with_identifier(c, g.rtype, system, value, others[i:i + 500])]
            if others:
                raise ConflictError(f"a {g.rtype} with identifier {g.value!r} appeared meanwhile")

    def _with_identifier(self, c: Any, rtype: str, system: str | None, value: str,
                         among: list[str] | None = None) -> list[str]:
        """The current ``rtype`` resources (of ``among``, when given) holding this identifier."""
        sql = "SELECT rid FROM resource_identifier WHERE rtype=? AND value=?"
        args: list[Any] = [rtype, value]
        if system is not None:
            sql += " AND system=?"
            args.append(system)
        if among is not None:
            sql += f" AND rid IN ({','.join('?' * len(among))})"
            args += among
        c.execute(self.q(sql), tuple(args))
        return [row["rid"] for row in c.fetchall()]

    # -- reads ---------------------------------------------------------------------------------

    @_reconnecting
    def heads(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Head]:
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        out: dict[tuple[str, str], Head] = {}
        with self.datastore.transaction(commit=False) as c:
            for rtype, rids in by_type.items():
                for i in range(0, len(rids), 500):
                    chunk = rids[i : i + 500]
                    c.execute(
                        self.q(
                            "SELECT rid, version, deleted, hash FROM resource_head "
                            f"WHERE rtype=? AND rid IN ({','.join('?' * len(chunk))})"
                        ),
                        (rtype, *chunk),
                    )
                    for row in c.fetchall():
                        out[(rtype, row["rid"])] = Head(
                            row["version"], bool(row["deleted"]), bytes(row["hash"])
                        )
        return out

    @_reconnecting
    def find_by_identifier(self, rtype: str, system: str | None, value: str | None) -> list[str]:
        """Ids with an identifier ``system|value``: ``system`` None is any system, "" none;
        ``value`` None is any value in ``system`` (a token ``system|``)."""
        with self.datastore.transaction(commit=False) as c:
            if value is None:
                c.execute(
                    self.q("SELECT DISTINCT rid FROM resource_identifier WHERE rtype=? AND system=?"),
                    (rtype, system or ""),
                )
            elif system is None:
                c.execute(
                    self.q("SELECT DISTINCT rid FROM resource_identifier WHERE rtype=? AND value=?"),
                    (rtype, value),
                )
            else:
                c.execute(
                    self.q(
                        "SELECT DISTINCT rid FROM resource_identifier "
                        "WHERE rtype=? AND system=? AND value=?"
                    ),
                    (rtype, system, value),
                )
            return sorted(row["rid"] for row in c.fetchall())

    @_reconnecting
    def current_ids(self, rtype: str, rids: Sequence[str]) -> list[str]:
        """Which of ``rids`` exist and are not deleted."""
        if not rids:
            return []
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                self.q(
                    "SELECT rid FROM resource_head WHERE deleted=0 AND rtype=? "
                    f"AND rid IN ({','.join('?' * len(rids))})"
                ),
                (rtype, *rids),
            )
            return sorted(row["rid"] for row in c.fetchall())

    @_reconnecting
    def current_since(self, rtype: str, since_us: int) -> list[str]:
        """The ids of ``rtype`` whose current version was written at or after ``since_us``."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                self.q("SELECT rid FROM resource_version WHERE rtype=? AND ts>=? "
                       "AND until_ts IS NULL"), (rtype, since_us)
            )
            return sorted(row["rid"] for row in c.fetchall())

    @_reconnecting
    def deleted_ids(self, rtype: str) -> list[str]:
        """The ids of ``rtype`` whose current version is a delete."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                self.q("SELECT rid FROM resource_head WHERE rtype=? AND deleted=1"), (rtype,)
            )
            return sorted(row["rid"] for row in c.fetchall())

    @_reconnecting
    def notifications_of(self, rtypes: Sequence[str], start: int, limit: int) -> list[Notification]:
        """Events of the given resource types only, in log order from ``start`` on (through the
        ``(rtype, nid)`` index: a projection of one type need not read every event)."""
        marks = ", ".join("?" * len(rtypes))
        # One index range per type, each cut at ``limit``, merged: with ``rtype IN (…)`` the
        # planners read every row of every type after ``start`` and sorted them, per batch (a
        # projection of the clinical types took 300 s over a million events instead of 10).
        arms = " UNION ALL ".join(
            f"SELECT * FROM (SELECT nid FROM resource_version WHERE rtype=? AND nid>=? "
            f"ORDER BY nid LIMIT ?) t{i}" for i in range(len(rtypes)))
        sql = self.q(
            f"SELECT v.nid, e.originator_id, e.originator_version, e.topic, e.state "
            f"FROM ({arms}) v JOIN stored_events e ON e.{self.nid_column}=v.nid "
            f"ORDER BY v.nid LIMIT ?")
        args: tuple = (*(x for t in rtypes for x in (t, start, limit)), limit)
        if rtypes and all(t in STREAM_KINDS for t in rtypes):
            sql = self.q(
                f"SELECT v.nid, e.originator_id, e.originator_version, e.topic, e.state "
                f"FROM stream_event v JOIN stored_events e ON e.{self.nid_column}=v.nid "
                f"WHERE v.kind IN ({marks}) AND v.nid>=? ORDER BY v.nid LIMIT ?")
            args = (*rtypes, start, limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, args)
            return [Notification(id=r["nid"], originator_id=r["originator_id"],
                                 originator_version=r["originator_version"], topic=r["topic"],
                                 state=bytes(r["state"])) for r in c.fetchall()]

    @_reconnecting
    def history(
        self,
        *,
        rtype: str | None = None,
        rid: str | None = None,
        since_us: int | None = None,
        at_us: tuple[int, int] | None = None,
        before_nid: int | None = None,
        limit: int = 50,
        not_types: Sequence[str] = (),
    ) -> list[VersionRow]:
        """Versions newest first (FHIR history order), paged by notification id; none of
        ``not_types``."""
        where: list[str] = []
        params: list[Any] = []
        for cond, value in (
            ("v.rtype=?", rtype),
            ("v.rid=?", rid),
            ("v.ts>=?", since_us),
            ("v.nid<?", before_nid),
        ):
            if value is not None:
                where.append(cond)
                params.append(value)
        if not_types:
            where.append(f"v.rtype NOT IN ({', '.join('?' * len(not_types))})")
            params += list(not_types)
        if at_us is not None:
            # current during [start, end): began before the end, ended after the start
            where.append("v.ts<? AND (v.until_ts IS NULL OR v.until_ts>?)")
            params += [at_us[1], at_us[0]]
        sql = (
            f"SELECT v.nid, v.rtype, v.rid, v.version, e.topic, e.state "
            f"FROM resource_version v JOIN stored_events e ON e.{self.nid_column}=v.nid "
            + ("WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY v.nid DESC LIMIT ?"
        )
        params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(self.q(sql), params)
            return [
                VersionRow(
                    r["nid"], KIND_OF_TOPIC[r["topic"]], r["rtype"], r["rid"], r["version"],
                    bytes(r["state"]),
                )
                for r in c.fetchall()
            ]

    @_reconnecting
    def deletions(self, versions: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        """Which of these versions (type, id, version) are deletions: by the events' keys, a
        few hundred a query, no state read."""
        out: set[tuple[str, str, int]] = set()
        for i in range(0, len(versions), 300):
            chunk = versions[i:i + 300]
            sql = ("SELECT originator_id, originator_version FROM stored_events WHERE topic=? AND ("
                   + " OR ".join(["(originator_id=? AND originator_version=?)"] * len(chunk)) + ")")
            params: list[Any] = [TOPICS[DELETED]]
            for rtype, rid, version in chunk:
                params += [f"{rtype}/{rid}", version]
            with self.datastore.transaction(commit=False) as c:
                c.execute(self.q(sql), params)
                for r in c.fetchall():
                    rtype, _, rid = r["originator_id"].partition("/")
                    out.add((rtype, rid, r["originator_version"]))
        return out

    @_reconnecting
    def latest_many(self, rtype: str, rids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """Current versions of many resources of one type in a few queries: rid -> (version,
        stored state); deleted or unknown ones are left out (MPI views read thousands at once)."""
        out: dict[str, tuple[int, bytes]] = {}
        rids = list(dict.fromkeys(rids))
        with self.datastore.transaction(commit=False) as c:
            for i in range(0, len(rids), 500):
                chunk = rids[i : i + 500]
                c.execute(self.q(
                    "SELECT h.rid AS rid, h.version AS version, e.state AS state "
                    "FROM resource_head h JOIN stored_events e "
                    "ON e.originator_id = (h.rtype || '/' || h.rid) "
                    "AND e.originator_version = h.version "
                    f"WHERE h.deleted = 0 AND h.rtype = ? AND h.rid IN ({','.join('?' * len(chunk))})"),
                    (rtype, *chunk))
                for r in c.fetchall():
                    out[r["rid"]] = (r["version"], bytes(r["state"]))
        return out

    @_reconnecting
    def snapshot(self, rtype: str, upto_nid: int, after_nid: int = 0,
                 since_us: int | None = None, limit: int = 1000) -> list[VersionRow]:
        """The versions of ``rtype`` that were current at log position ``upto_nid`` (deletions
        among them: the caller leaves them out), in log order after ``after_nid``; with
        ``since_us``, only those written after it. What a bulk export reads: a consistent
        snapshot whatever is written while it runs."""
        sql = (
            f"SELECT v.nid, v.rtype, v.rid, v.version, e.topic, e.state "
            f"FROM resource_version v JOIN stored_events e ON e.{self.nid_column}=v.nid "
            "WHERE v.rtype=? AND v.nid>? AND v.nid<=? "
            + ("AND v.ts>? " if since_us is not None else "")
            + "AND NOT EXISTS (SELECT 1 FROM resource_version w WHERE w.rtype=v.rtype "
            "AND w.rid=v.rid AND w.version>v.version AND w.nid<=?) ORDER BY v.nid LIMIT ?"
        )
        params: list[Any] = [rtype, after_nid, upto_nid]
        if since_us is not None:
            params.append(since_us)
        params += [upto_nid, limit]
        with self.datastore.transaction(commit=False) as c:
            c.execute(self.q(sql), params)
            return [VersionRow(r["nid"], KIND_OF_TOPIC[r["topic"]], r["rtype"], r["rid"],
                               r["version"], bytes(r["state"])) for r in c.fetchall()]

    def log_id(self) -> str:
        """The log's identity: a random id made with the store and kept in it. A store made
        before there was one gets its id the first time it is asked (its read models adopt it,
        ``projections.runner``)."""
        select = "SELECT value FROM hub_log WHERE key = 'id'"
        with self.datastore.transaction(commit=False) as c:
            c.execute(select)
            row = c.fetchone()
        if row is None:  # a write only then; another process making it at once wins
            with self.datastore.transaction(commit=True) as c:
                c.execute(self.q("INSERT INTO hub_log (key, value) VALUES ('id', ?) "
                                 "ON CONFLICT (key) DO NOTHING"), (uuid.uuid4().hex,))
                c.execute(select)
                row = c.fetchone()
        return str(row["value"])

    def rebuild_indexes(self, batch: int = 2000, progress: Any = None) -> int:
        """Drop the write-side indexes and derive them again from the event log; events read.

        For recovery and after a change to what the indexes hold. One transaction that holds
        the writers' lock: writers wait for it (or time out: 503, nothing stored), readers go on
        with the indexes as they were, and a rebuild that fails or is stopped leaves them so.
        """
        done, start = 0, 1
        with self.datastore.transaction(commit=True) as c:
            self._exclude_writers(c)
            for table in ("resource_head", "resource_identifier", "resource_version",
                          "stream_event"):
                c.execute(f"DELETE FROM {table}")
            while True:
                notes = self.select_notifications(start, batch)
                if not notes:
                    return done
                self._reindex_batch(c, notes)
                done += len(notes)
                start = notes[-1].id + 1
                if progress is not None:
                    progress(len(notes))

    def settled_position(self) -> tuple[int, int]:
        """The log position and the clock (µs since epoch) read together under the writers'
        lock: every write committed after the position takes the lock later, so its
        ``Commit.settle_by_us`` is after this clock reading."""
        with self.datastore.transaction(commit=True) as c:
            self._exclude_writers(c)
            if self.placeholder == "?":  # SQLite: a write statement takes the write lock
                c.execute("DELETE FROM resource_head WHERE 0")
            now_us = time.time_ns() // 1000
            c.execute(f"SELECT max({self.nid_column}) AS m FROM stored_events")
            row = c.fetchone()
            return int(row["m"] or 0), now_us

    def _exclude_writers(self, c: Any) -> None:
        """Take the lock every write takes (SQLite: the first DELETE takes it)."""
        for statement in getattr(self, "lock_table_statements", ()):
            c.execute(statement)

    def _reindex_batch(self, c: Any, notes: Sequence[Notification]) -> None:
        versions, supersede, last = [], [], {}
        kinds = []
        for n in notes:
            if n.topic not in KIND_OF_TOPIC:  # an event of another stream kind: no resource
                kind = str(n.originator_id).partition("/")[0]
                if kind in STREAM_KINDS:
                    kinds.append((kind, n.id))
                continue
            ev = from_stored(n)
            ts = parse_range(ev.last_updated)[0]
            versions.append((n.id, ev.rtype, ev.rid, ev.version, ts))
            if ev.version > 1:
                supersede.append((ts, ev.rtype, ev.rid, ev.version - 1))
            last[(ev.rtype, ev.rid)] = ev  # only the newest version of a batch makes the head
        heads, idents = [], []
        for (rtype, rid), ev in last.items():
            if ev.kind == "deleted":
                heads.append((rtype, rid, ev.version, 1, b""))
                continue
            d = orjson.loads(ev.resource)
            heads.append((rtype, rid, ev.version, 0, content_hash(d)))
            idents += [(rtype, s, v, rid) for s, v in identifiers(d)]
        self._insert_many(c, "stream_event", ("kind", "nid"), kinds)
        self._insert_many(c, "resource_version", ("nid", "rtype", "rid", "version", "ts"),
                          versions)
        c.executemany(self.q("UPDATE resource_version SET until_ts=? "
                             "WHERE rtype=? AND rid=? AND version=?"), supersede)
        c.executemany(self.q("DELETE FROM resource_identifier WHERE rtype=? AND rid=?"),
                      list(last))
        self._insert_many(
            c, "resource_head", ("rtype", "rid", "version", "deleted", "hash"), heads,
            "ON CONFLICT (rtype, rid) DO UPDATE SET version=excluded.version, "
            "deleted=excluded.deleted, hash=excluded.hash",
        )
        self._insert_many(c, "resource_identifier", ("rtype", "system", "value", "rid"), idents)

    @_reconnecting
    def count_history(
        self, *, rtype: str | None = None, rid: str | None = None, since_us: int | None = None,
        not_types: Sequence[str] = (),
    ) -> int:
        where: list[str] = []
        params: list[Any] = []
        for cond, value in (("rtype=?", rtype), ("rid=?", rid), ("ts>=?", since_us)):
            if value is not None:
                where.append(cond)
                params.append(value)
        if not_types:
            where.append(f"rtype NOT IN ({', '.join('?' * len(not_types))})")
            params += list(not_types)
        sql = "SELECT COUNT(*) AS n FROM resource_version" + (
            " WHERE " + " AND ".join(where) if where else ""
        )
        with self.datastore.transaction(commit=False) as c:
            c.execute(self.q(sql), params)
            return c.fetchone()["n"]


_SQLITE_TABLES = [
    "CREATE TABLE IF NOT EXISTS resource_head (rtype TEXT NOT NULL, rid TEXT NOT NULL, "
    "version INTEGER NOT NULL, deleted INTEGER NOT NULL, hash BLOB, "
    "PRIMARY KEY (rtype, rid)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS resource_identifier (rtype TEXT NOT NULL, system TEXT, "
    "value TEXT NOT NULL, rid TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS resource_identifier_value ON resource_identifier (rtype, value)",
    "CREATE INDEX IF NOT EXISTS resource_identifier_rid ON resource_identifier (rtype, rid)",
    "CREATE TABLE IF NOT EXISTS resource_version (nid INTEGER PRIMARY KEY, rtype TEXT NOT NULL, "
    "rid TEXT NOT NULL, version INTEGER NOT NULL, ts INTEGER NOT NULL, until_ts INTEGER)",
    "CREATE INDEX IF NOT EXISTS resource_version_type ON resource_version (rtype, nid)",
    "CREATE INDEX IF NOT EXISTS resource_version_rid ON resource_version (rtype, rid)",
    "CREATE INDEX IF NOT EXISTS resource_version_ts ON resource_version (ts)",
    # events of other stream kinds (STREAM_KINDS: identity decisions), by kind in log order
    "CREATE TABLE IF NOT EXISTS stream_event (kind TEXT NOT NULL, nid INTEGER NOT NULL, "
    "PRIMARY KEY (kind, nid)) WITHOUT ROWID",
    # the log's identity ('id': random), which each read model records as the log it follows
    "CREATE TABLE IF NOT EXISTS hub_log (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]

_POSTGRES_TABLES = [
    t.replace("BLOB", "BYTEA")
    .replace(" WITHOUT ROWID", "")
    .replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
    .replace("ts INTEGER", "ts BIGINT")
    .replace("until_ts INTEGER", "until_ts BIGINT")
    .replace("nid INTEGER NOT NULL", "nid BIGINT NOT NULL")
    for t in _SQLITE_TABLES
]


class _FastSQLitePool(SQLiteConnectionPool):
    def _create_connection(self) -> SQLiteConnection:
        conn = self._connect_waiting()
        # WAL is set by eventsourcing; NORMAL sync is durable across process crashes in WAL mode
        # (an OS crash can lose the last transactions, never corrupt). Opt out with HUB_SQLITE_SYNC.
        conn._sqlite_conn.execute(f"PRAGMA synchronous={sqlite_sync()}")
        return conn

    def _connect_waiting(self) -> SQLiteConnection:
        """eventsourcing's connection, retried while the file is locked.

        Switching a new file to WAL takes an exclusive lock, and when several processes open a new
        data directory at once (the workers of `hub serve` on a fresh machine) SQLite can refuse
        the switch with "database is locked" at once, without calling the busy handler that the
        connection's timeout sets up. So wait here, up to the same timeout."""
        deadline = time.monotonic() + (self.lock_timeout or 5)
        delay = 0.005
        while True:
            try:
                return super()._create_connection()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class FastSQLiteDatastore(SQLiteDatastore):
    """eventsourcing's SQLite datastore with the pool above (text stream names)."""

    def __init__(self, db_name: str, pool_size: int = 8):
        self.pool = _FastSQLitePool(db_name=db_name, pool_size=pool_size, lock_timeout=30,
                                    pool_timeout=30)
        self.single_row_tracking = True
        self.originator_id_type = "text"


class SQLiteResourceRecorder(_IndexMixin, SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return super().construct_create_table_statements() + _SQLITE_TABLES

    def _insert_events(self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any):
        nids = super()._insert_events(c, stored_events, **kwargs)
        assert nids is not None  # the application recorder returns the notification ids
        # The inserts above took the write lock, so the guard checks below see the latest state.
        self._write_index(c, nids, kwargs["commit"])
        return nids


class PostgresResourceRecorder(_IndexMixin, PostgresApplicationRecorder):
    placeholder = "%s"
    nid_column = "notification_id"

    def construct_create_table_statements(self) -> list[str]:
        return list(_POSTGRES_TABLES)

    _PG_TYPES = {"kind": "text", "rtype": "text", "rid": "text", "version": "int", "deleted": "int",
                 "hash": "bytea", "nid": "bigint", "ts": "bigint", "system": "text",
                 "value": "text"}

    def _insert_many(self, c: Any, table: str, columns: tuple[str, ...], rows: list[tuple],
                     suffix: str = "") -> None:
        # One statement over arrays instead of one round trip per row.
        if not rows:
            return
        arrays = [list(col) for col in zip(*rows)]
        unnest = ", ".join(f"%b::{self._PG_TYPES[col]}[]" for col in columns)
        c.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({unnest}) {suffix}",
            arrays,
        )

    def create_table(self) -> None:
        super().create_table()
        with self.datastore.transaction(commit=True) as c:
            for statement in _POSTGRES_TABLES:
                c.execute(statement)

    def open_table(self, dsn: str) -> None:
        """Create the tables the first time only (see ``hub.core.pgschema``), then register the
        composite types eventsourcing's statements use."""
        from importlib.metadata import version

        pgschema.ensure(dsn, "event_store", [f"eventsourcing {version('eventsourcing')}",
                                             *_POSTGRES_TABLES],
                        self.create_table)
        self.datastore.register_type_adapters()

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any):
        # Plain (not pipelined) transaction: the guard checks must read inside the table lock.
        with self.datastore.transaction(commit=True) as c:
            self._lock_table(c)
            self._notify_channel(c)
            self._check_guards(c, kwargs["commit"])
            c.execute(
                "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bytea[]) "
                "RETURNING notification_id",
                [[s.originator_id for s in stored_events],
                 [s.originator_version for s in stored_events],
                 [s.topic for s in stored_events], [s.state for s in stored_events]],
            )
            nids = [row["notification_id"] for row in c.fetchall()]
            commit: Commit = kwargs["commit"]
            guards, commit.guards = commit.guards, []  # already checked under the lock
            try:
                self._write_index(c, nids, commit)
            finally:
                commit.guards = guards
        return nids


class _PostgresDatastore(PostgresDatastore):
    """eventsourcing's PostgreSQL datastore, with the data errors of a statement (a value the
    database refuses) told as the request's fault rather than an engine failure (a 500)."""

    @contextmanager
    def get_connection(self) -> Iterator[Any]:
        try:
            with super().get_connection() as conn:
                yield conn
        except DataError as e:
            raise StoreInputError(str(e)) from e


class ResourceStore:
    """Facade over one recorder: commit prepared writes, read versions and history."""

    def __init__(self, recorder: SQLiteResourceRecorder | PostgresResourceRecorder, close):
        self.recorder = recorder
        self._close = close
        self._log_id: str | None = None
        # (time.time(), the engine's words) of the last write the storage could not take
        # (``storage_failure``), until a write succeeds: readiness says so without writing
        self.write_failure: tuple[float, str] | None = None

    @classmethod
    def sqlite(cls, path: str) -> ResourceStore:
        datastore = FastSQLiteDatastore(path)
        recorder = SQLiteResourceRecorder(datastore, events_table_name="stored_events")
        recorder.create_table()
        return cls(recorder, datastore.close)

    @classmethod
    def postgres(cls, dsn: str, pool_size: int = PG_POOL) -> ResourceStore:
        """The store in PostgreSQL at ``dsn``, its pool of at most ``pool_size`` connections
        (HUB_PG_POOL): one opened at start, more as requests wait, each closed again after
        ``POOL_IDLE_S`` unused (the pool opened five per store at start, and a grown pool shed
        one every ten minutes: an idle server held 20 connections of the database's 100)."""
        args = pgschema.connect_args(dsn)
        datastore = _PostgresDatastore(
            dbname=args["dbname"],
            host=args["host"],
            port=args["port"],
            user=args["user"],
            password=args["password"],
            originator_id_type="text",
            pool_size=1,  # psycopg_pool's min_size: what it keeps open while idle
            max_overflow=pool_size - 1,
            lock_timeout=10,
            # Fail fast in an outage: a connection is checked before use (a dead one is
            # discarded) and waited for at most half a second; eventsourcing retries a failed
            # read ten times, so a request gets its 503 within about seven seconds instead of
            # waiting out the outage.
            pre_ping=True,
            connect_timeout=0.5,
        )
        # the URL's other parameters (sslmode…) for every connection of the pool: the
        # datastore takes only the five above (the pool is not open yet)
        pool_kwargs = datastore.pool.kwargs
        assert isinstance(pool_kwargs, dict)  # eventsourcing gives the pool a dict
        pool_kwargs.update({k: v for k, v in args.items() if k not in pgschema.BASE_PARAMS})
        # whose connections these are, in pg_stat_activity (unless the URL names them)
        pool_kwargs.setdefault("application_name", f"hub-store-{os.getpid()}")
        datastore.pool.max_idle = POOL_IDLE_S  # not open yet: its shrinking runs at this pace
        _first_connection(datastore)  # before the recorder, whose construction takes one
        recorder = PostgresResourceRecorder(datastore, events_table_name="stored_events")
        recorder.open_table(dsn)
        return cls(recorder, datastore.close)

    def close(self) -> None:
        self._close()

    # -- writes --------------------------------------------------------------------------------

    def commit(self, commit: Commit) -> list[int]:
        """Append all events of ``commit`` and their index rows in one transaction."""
        if not commit.events:
            return []
        stored = [to_stored(e) for e in commit.events]
        try:
            with self._writing():
                return list(self.recorder.insert_events(stored, commit=commit) or [])
        except (IntegrityError, sqlite3.IntegrityError, psycopg.errors.UniqueViolation) as e:
            raise ConflictError("a concurrent write created the same version") from e

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Keep ``write_failure`` up to date around one write."""
        try:
            yield
        except (OperationalError, InterfaceError) as e:
            failure = storage_failure(e)
            if failure is not None:
                self.write_failure = (time.time(), failure)
            raise
        self.write_failure = None

    # -- reads ---------------------------------------------------------------------------------

    def latest(self, rtype: str, rid: str) -> StoredEvent | None:
        found = self.recorder.select_events(f"{rtype}/{rid}", desc=True, limit=1)
        return found[0] if found else None

    def version(self, rtype: str, rid: str, version: int) -> StoredEvent | None:
        found = self.recorder.select_events(
            f"{rtype}/{rid}", gt=version - 1, lte=version, limit=1
        )
        return found[0] if found else None

    def versions(self, rtype: str, rid: str) -> Sequence[StoredEvent]:
        return self.recorder.select_events(f"{rtype}/{rid}", desc=True)

    def heads(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Head]:
        return self.recorder.heads(keys)

    def find_by_identifier(self, rtype: str, system: str | None, value: str | None) -> list[str]:
        return self.recorder.find_by_identifier(rtype, system, value)

    def current_ids(self, rtype: str, rids: Sequence[str]) -> list[str]:
        return self.recorder.current_ids(rtype, rids)

    def deleted_ids(self, rtype: str) -> list[str]:
        return self.recorder.deleted_ids(rtype)

    def current_since(self, rtype: str, since_us: int) -> list[str]:
        return self.recorder.current_since(rtype, since_us)

    def history(self, **kw: Any) -> list[VersionRow]:
        return self.recorder.history(**kw)

    def deletions(self, versions: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        return self.recorder.deletions(versions)

    def count_history(self, **kw: Any) -> int:
        return self.recorder.count_history(**kw)

    def snapshot(self, rtype: str, upto_nid: int, after_nid: int = 0,
                 since_us: int | None = None, limit: int = 1000) -> list[VersionRow]:
        return self.recorder.snapshot(rtype, upto_nid, after_nid, since_us, limit)

    def settled_position(self) -> tuple[int, int]:
        return self.recorder.settled_position()

    def log_id(self) -> str:
        """The identity of this event log (``_IndexMixin.log_id``), read once per store."""
        if self._log_id is None:
            self._log_id = self.recorder.log_id()
        return self._log_id

    def max_notification_id(self) -> int:  # eventsourcing tries its select again itself
        return self.recorder.max_notification_id() or 0

    def rebuild_indexes(self, progress: Any = None, batch: int = 2000) -> int:
        return self.recorder.rebuild_indexes(batch=batch, progress=progress)

    def notifications(self, start: int, limit: int) -> Sequence[Notification]:
        """Events in log order from notification id ``start`` on: what projections follow."""
        return self.recorder.select_notifications(start, limit)

    def notifications_of(self, rtypes: Sequence[str], start: int, limit: int) -> list[Notification]:
        kinds = [t for t in rtypes if t in STREAM_KINDS]
        if not kinds:
            return self.recorder.notifications_of(rtypes, start, limit)
        # events of other stream kinds (identity decisions) through their own index, merged in
        # log order
        out = self.recorder.notifications_of(kinds, start, limit)
        resource_types = [t for t in rtypes if t not in STREAM_KINDS]
        if resource_types:
            out += self.recorder.notifications_of(resource_types, start, limit)
            out.sort(key=lambda n: n.id)
        return out[:limit]

    def append(self, stored: Sequence[StoredEvent]) -> list[int]:
        """Append events of another stream kind (STREAM_KINDS) in one transaction; no index rows.
        A version already taken raises ConflictError, like a resource commit."""
        if not stored:
            return []
        try:
            kind = str(stored[0].originator_id).partition("/")[0]
            with self._writing():
                return list(self.recorder.insert_events(list(stored),
                                                        commit=Commit(stream_kind=kind)) or [])
        except (IntegrityError, sqlite3.IntegrityError, psycopg.errors.UniqueViolation) as e:
            raise ConflictError("a concurrent identity decision took this version") from e

    def latest_many(self, rtype: str, rids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        return self.recorder.latest_many(rtype, rids)
