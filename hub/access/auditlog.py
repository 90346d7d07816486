"""The audit log: the hub's AuditEvents in append-only tables of their own, served as FHIR.

Every access to patient data writes an AuditEvent before it is answered. Written into the event
store, each would be a resource event like any other: every read model follows it, every search
waits for the search index to take it in (read-your-writes), and the log a projection replays
grows by one event per read. Here they go to tables beside the store instead (``audit.sqlite``
in the data directory; with PostgreSQL, tables in the store's database), and the API serves them
as ``AuditEvent`` all the same: read, vread, history and search through ``hub.repository``.

**Spool.** What an access waits for is one ``write(2)`` of the sealed event as a JSON line to a
file of this process in ``audit-spool/`` (``Spool``): on return the event survives a crash of the
process, as a commit with SQLite's ``synchronous=NORMAL`` does (neither survives the machine
losing power before the OS wrote its cache out). A background thread (``start``) moves the
spooled lines into the tables every 0.2 s in one transaction; moving is idempotent (an id already
stored is skipped), and files left by a process that died are moved by the next one that opens
the log, or by ``hub audit verify``. A commit per access instead costs a lock handoff and a
commit on every read: a quarter of the read throughput, measured (``bench/access.py``).

**Tables.** ``audit_event`` holds one row per AuditEvent: ``pos`` (commit order, never reused), the
id (time first, so ids arrive in order), the recorded time as a range in µs, its hash-chain
position and the JSON. ``audit_index`` holds the search values (``param``, ``value``, ``pos``),
extracted in bulk after the events are stored (``index_pending``, sorted by value, with the
position reached kept in ``audit_indexed``) when the server is quiet or a backlog grew; each
search first moves this process's spool and indexes what waits, so it sees every event this
process wrote before it (another API process's within 0.2 s). Both tables of events refuse
UPDATE and DELETE with a trigger, and the hash chain
(``hub.access.chain``) shows what was changed around the triggers.

**Search** answers the planner's plans (``projections.search.query.Query``) for these parameters:
``_id``, ``date`` and ``_lastUpdated`` (the recorded time), ``patient``, ``entity``, ``agent``
(references; ``agent`` also by its identifier, bare or ``:identifier``), ``agent-name`` and
``address`` (strings: prefix, ``:exact``), ``outcome``,
``action``, ``type``, ``subtype``, ``altid`` (tokens), with ``_count``, ``_sort`` on
``date``/``_lastUpdated`` (commit order, which is the recorded order to within one move) and
``_total``. Anything else (chains, ``_has``, other modifiers) is refused with 400 rather than
ignored: an audit search that silently matched more than asked would mislead its reader.
``_include`` is not answered here.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from hub.core import pgschema
from hub.core.errors import FhirError, bad_request
from hub.core.fhirtime import parse_range
from hub.core.repeatlog import RepeatingFailure
from projections.search.backend import Page, Row
from projections.search.query import Criterion, Query, RefValue, TokenValue
from projections.search.sqlite_query import date_test

log = logging.getLogger("hub.audit")

TOKEN_PARAMS = ("outcome", "action", "type", "subtype", "altid")
REFERENCE_PARAMS = ("patient", "entity", "agent")
STRING_PARAMS = ("agent-name", "address")
DATE_PARAMS = ("date", "_lastUpdated")
# what an AuditEvent search answers (the capability statement lists these alone)
SEARCHABLE = frozenset(("_id", *TOKEN_PARAMS, *REFERENCE_PARAMS, *STRING_PARAMS, *DATE_PARAMS))

_SQLITE = [
    "CREATE TABLE IF NOT EXISTS audit_event (pos INTEGER PRIMARY KEY AUTOINCREMENT, "
    "id TEXT NOT NULL UNIQUE, lo_us INTEGER NOT NULL, hi_us INTEGER NOT NULL, "
    "chain TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_index (param TEXT NOT NULL, value TEXT NOT NULL, "
    "pos INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_index_value ON audit_index (param, value, pos)",
    "CREATE INDEX IF NOT EXISTS audit_event_recorded ON audit_event (lo_us)",
    "CREATE INDEX IF NOT EXISTS audit_event_chain ON audit_event (chain, seq)",
    "CREATE TABLE IF NOT EXISTS audit_indexed (one INTEGER PRIMARY KEY CHECK (one = 1), "
    "pos INTEGER NOT NULL)",
    "INSERT INTO audit_indexed (one, pos) VALUES (1, 0) ON CONFLICT DO NOTHING",
    *(f"CREATE TRIGGER IF NOT EXISTS {t}_no_{verb} BEFORE {verb.upper()} ON {t} "
      "BEGIN SELECT RAISE(ABORT, 'the audit is append-only'); END"
      for t in ("audit_event", "audit_index") for verb in ("update", "delete")),
]
_POSTGRES = [
    "CREATE TABLE IF NOT EXISTS audit_event (pos BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
    "lo_us BIGINT NOT NULL, hi_us BIGINT NOT NULL, chain TEXT NOT NULL, seq BIGINT NOT NULL, "
    "body BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_index (param TEXT NOT NULL, value TEXT NOT NULL, "
    "pos BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_index_value ON audit_index (param, value, pos)",
    "CREATE INDEX IF NOT EXISTS audit_event_recorded ON audit_event (lo_us)",
    "CREATE INDEX IF NOT EXISTS audit_event_chain ON audit_event (chain, seq)",
    "CREATE TABLE IF NOT EXISTS audit_indexed (one INTEGER PRIMARY KEY CHECK (one = 1), "
    "pos BIGINT NOT NULL)",
    "INSERT INTO audit_indexed (one, pos) VALUES (1, 0) ON CONFLICT DO NOTHING",
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$ BEGIN "
    "RAISE EXCEPTION 'the audit is append-only'; END $$ LANGUAGE plpgsql",
    *(f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
      "FOR EACH ROW EXECUTE FUNCTION audit_append_only()" for t in ("audit_event", "audit_index")),
    *(f"CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
      "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
      for t in ("audit_event", "audit_index")),
]


@dataclass(frozen=True, slots=True)
class Entry:
    """One AuditEvent to append: its id, the sealed body (``id`` and ``meta`` set), its chain
    position."""

    id: str
    body: dict
    chain: str
    seq: int


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored AuditEvent: commit position, id and JSON."""

    pos: int
    id: str
    body: bytes

    @property
    def state(self) -> bytes:
        """The store's state form (header line, resource JSON) that the API's responses read;
        built when asked for, so that verifying or exporting the log parses each body once."""
        try:
            recorded = (orjson.loads(self.body).get("meta") or {}).get("lastUpdated")
        except (orjson.JSONDecodeError, AttributeError):
            recorded = None
        header = orjson.dumps({"type": "AuditEvent", "id": self.id, "lastUpdated": recorded})
        return header + b"\n" + self.body


def open_audit_log(data_dir: Path, database_url: str | None) -> AuditLog:
    """The audit log beside the event store: ``audit.sqlite`` in ``data_dir``, or the store's
    PostgreSQL database; its spool in ``data_dir/audit-spool`` either way."""
    spool = data_dir / "audit-spool"
    if database_url:
        url = database_url.replace("postgresql://", "postgresql+psycopg://", 1) \
            .replace("postgres://", "postgresql+psycopg://", 1)
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=8,
                                  connect_args={"connect_timeout": 2})
        return AuditLog(engine, _POSTGRES, spool)
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{data_dir / 'audit.sqlite'}",
                              connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        # WAL: readers never wait for the writer; NORMAL: durable across a process crash
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

    return AuditLog(engine, _SQLITE, spool)


class AuditLog:
    """Spool, append, read and search the AuditEvents (see the module docstring)."""

    def __init__(self, engine: sa.Engine, schema: Sequence[str], spool_dir: Path):
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self.spool = Spool(spool_dir)
        self._moving = threading.Lock()
        self._indexing = threading.Lock()
        self._stop = threading.Event()
        self._mover: threading.Thread | None = None
        if self.postgres:  # once, not on every open: see hub.core.pgschema
            pgschema.ensure(engine.url.render_as_string(hide_password=False)
                            .replace("postgresql+psycopg://", "postgresql://", 1),
                            "audit_log", schema, lambda: self._create(schema))
        else:
            self._create(schema)

    def _create(self, schema: Sequence[str]) -> None:
        with self.engine.begin() as c:
            for ddl in schema:
                c.exec_driver_sql(ddl)

    def close(self) -> None:
        """Stop the background mover, move what is spooled, close."""
        self._stop.set()
        if self._mover is not None:
            self._mover.join(timeout=30)
        self.spool.close()  # the current file is then moved and deleted like any other
        try:
            self.move_spooled()
        except Exception as e:  # noqa: BLE001 - the database gone or busy at shutdown: the
            # next start moves it (one line: a traceback at a server's stop alarms for nothing)
            log.warning("the audit spool stays in %s until the next start: %s: %s",
                        self.spool.dir, type(e).__name__, str(e).splitlines()[0][:200] if str(e)
                        else "")
        finally:
            self.engine.dispose()

    # -- writing --------------------------------------------------------------------------------

    def start(self, every: float = 0.2, quiet_below: int = 50, backlog: int = 200_000) -> None:
        """Move spooled AuditEvents into the tables every ``every`` seconds in a background
        thread, and index them when the server is quiet (fewer than ``quiet_below`` events in
        the round) or more than ``backlog`` wait: indexing yields to a busy server (it costs
        about as much as the rest of the audit), and a search indexes what waits first."""
        failing = RepeatingFailure(log, "moving the audit spool into the audit log")

        def loop() -> None:
            while not self._stop.wait(failing.backoff(every)):
                try:
                    moved = self.move_spooled()
                    if moved < quiet_below or self.unindexed() > backlog:
                        while self.index_pending() and not self._stop.is_set():
                            pass
                    failing.ok()
                except Exception as e:  # noqa: BLE001 - tried again on the next round
                    failing.failed(e)

        self._mover = threading.Thread(target=loop, name="audit-mover", daemon=True)
        self._mover.start()

    def move_spooled(self) -> int:
        """Append every complete spooled event to the tables (an id already there is skipped:
        moving twice is harmless); how many were read."""
        with self._moving:
            moved = 0
            for batch, done in self.spool.take():
                self._insert(batch, skip_known=True)
                done()
                moved += len(batch)
            return moved

    def append(self, entries: Sequence[Entry]) -> None:
        """Commit ``entries`` in their order, as one transaction."""
        self._insert([row_of(e) for e in entries], skip_known=False)

    def _insert(self, rows: Sequence[tuple], *, skip_known: bool) -> None:
        """Rows (id, lo_us, hi_us, chain, seq, body) in one transaction; the search values are
        extracted later, in bulk (``index_pending``)."""
        if not rows:
            return
        mark = "%s" if self.postgres else "?"
        conn = self.engine.raw_connection()
        try:
            cur = conn.cursor()
            if self.postgres:
                # processes commit one at a time, so that positions are committed in order and
                # the indexer never passes one still to come
                cur.execute("SELECT pg_advisory_xact_lock(4242002)")
            cur.executemany("INSERT INTO audit_event (id, lo_us, hi_us, chain, seq, body) "
                            f"VALUES ({', '.join([mark] * 6)})"
                            + (" ON CONFLICT (id) DO NOTHING" if skip_known else ""), rows)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    # -- the search values ----------------------------------------------------------------------

    def unindexed(self) -> int:
        """How many AuditEvents wait for their search values (about: positions, not rows)."""
        with self.engine.connect() as c:
            return int(c.execute(sa.text(
                "SELECT COALESCE((SELECT MAX(pos) FROM audit_event), 0) - pos "
                "FROM audit_indexed WHERE one = 1")).scalar_one())

    def index_pending(self, limit: int = 2000) -> int:
        """Extract the search values of up to ``limit`` AuditEvents not indexed yet, in one
        transaction sorted by value (a few pages touched, where one row at a time would touch a
        page per row); how many. The position reached is kept in ``audit_indexed``, updated in
        the same transaction, so two processes never index one event twice."""
        with self._indexing:
            conn = self.engine.raw_connection()
            try:
                cur = conn.cursor()
                mark = "%s" if self.postgres else "?"
                if self.postgres:
                    cur.execute("SELECT pos FROM audit_indexed WHERE one = 1 FOR UPDATE")
                else:
                    cur.execute("BEGIN IMMEDIATE")
                    cur.execute("SELECT pos FROM audit_indexed WHERE one = 1")
                mark_row = cur.fetchone()
                assert mark_row is not None  # seeded when the tables are made
                done = int(mark_row[0])
                cur.execute(f"SELECT pos, body FROM audit_event WHERE pos > {mark} ORDER BY pos "
                            f"LIMIT {mark}", (done, limit))
                rows = cur.fetchall()
                if not rows:
                    conn.rollback()
                    return 0
                values: list[tuple[str, str, int]] = []
                for pos, body in rows:
                    try:
                        d = orjson.loads(bytes(body))
                    except orjson.JSONDecodeError:
                        continue  # a tampered row: found by verification, not searchable
                    if isinstance(d, dict):
                        values.extend((p, v, pos) for p, v in search_values(d))
                values.sort()
                cur.executemany("INSERT INTO audit_index (param, value, pos) "
                                f"VALUES ({mark}, {mark}, {mark})", values)
                cur.execute(f"UPDATE audit_indexed SET pos = {mark} WHERE one = 1", (rows[-1][0],))
                conn.commit()
                return len(rows)
            except BaseException:
                conn.rollback()
                raise
            finally:
                conn.close()


    # -- reading --------------------------------------------------------------------------------

    def get_many(self, rids: Iterable[str]) -> dict[str, Stored]:
        wanted = list(dict.fromkeys(rids))
        if not wanted:
            return {}
        with self.engine.connect() as c:
            rows = c.execute(sa.text("SELECT pos, id, body FROM audit_event WHERE id IN :ids")
                             .bindparams(sa.bindparam("ids", expanding=True)),
                             {"ids": wanted}).all()
        return {r.id: Stored(r.pos, r.id, bytes(r.body)) for r in rows}

    def rows(self, after: int = 0, page: int = 1000, since_us: int | None = None,
             newest_first: bool = False, limit: int | None = None) -> Iterator[Stored]:
        """Every stored AuditEvent in commit order (or the newest first) from after ``after``,
        read page by page; ``since_us``: recorded at or after it."""
        since = "" if since_us is None else " AND lo_us >= :since"
        left = limit
        while left is None or left > 0:
            n = page if left is None else min(page, left)
            with self.engine.connect() as c:
                if newest_first:
                    sql = (f"SELECT pos, id, body FROM audit_event WHERE "
                           f"(:after = 0 OR pos < :after){since} ORDER BY pos DESC LIMIT :n")
                else:
                    sql = (f"SELECT pos, id, body FROM audit_event WHERE pos > :after{since} "
                           "ORDER BY pos LIMIT :n")
                rows = c.execute(sa.text(sql), {"after": after, "since": since_us, "n": n}).all()
            for r in rows:
                # a body edited in place may come back as TEXT (SQLite's replace()): its bytes
                # as stored, for the verification to call it modified (it crashed on it)
                body = r.body.encode("utf-8", "surrogateescape") if isinstance(r.body, str) \
                    else bytes(r.body)
                yield Stored(r.pos, r.id, body)
            if len(rows) < n:
                return
            after = rows[-1].pos
            if left is not None:
                left -= len(rows)

    def with_values(self, param: str, values: Iterable[str], since_us: int | None = None,
                    limit: int = 500, before_pos: int | None = None) -> list[Stored]:
        """The AuditEvents indexed with one of ``values`` for ``param``, the newest first (every
        event committed before included: the spool is moved and indexed first); with
        ``before_pos`` only those committed before that position (the next page)."""
        self.move_spooled()
        while self.index_pending():
            pass
        where = _value_filter(since_us, before_pos)
        with self.engine.connect() as c:
            rows = c.execute(sa.text(
                "SELECT e.pos, e.id, e.body FROM audit_event e WHERE e.pos IN (SELECT pos FROM "
                f"audit_index WHERE param = :p AND value IN :vals){where} ORDER BY e.pos DESC "
                "LIMIT :n").bindparams(sa.bindparam("vals", expanding=True)),
                {"p": param, "vals": list(values), "since": since_us, "before": before_pos,
                 "n": limit}).all()
        return [Stored(r.pos, r.id, bytes(r.body)) for r in rows]

    def count_values(self, param: str, values: Iterable[str], since_us: int | None = None,
                     before_pos: int | None = None) -> int:
        """How many AuditEvents ``with_values`` would give without a limit."""
        where = _value_filter(since_us, before_pos)
        with self.engine.connect() as c:
            return int(c.execute(sa.text(
                "SELECT count(*) FROM audit_event e WHERE e.pos IN (SELECT pos FROM audit_index "
                f"WHERE param = :p AND value IN :vals){where}").bindparams(
                    sa.bindparam("vals", expanding=True)),
                {"p": param, "vals": list(values), "since": since_us,
                 "before": before_pos}).scalar_one())

    def count(self, since_us: int | None = None) -> int:
        with self.engine.connect() as c:
            if since_us is None:
                return int(c.execute(sa.text("SELECT count(*) FROM audit_event")).scalar_one())
            return int(c.execute(sa.text("SELECT count(*) FROM audit_event WHERE lo_us >= :s"),
                                 {"s": since_us}).scalar_one())

    def last_of_chain(self, chain: str) -> bytes | None:
        """The JSON of ``chain``'s last stored event (by sequence); None if it has none."""
        with self.engine.connect() as c:
            r = c.execute(sa.text("SELECT body FROM audit_event WHERE chain = :c "
                                  "ORDER BY seq DESC LIMIT 1"), {"c": chain}).first()
        return None if r is None else bytes(r.body)

    # -- search ---------------------------------------------------------------------------------

    def page(self, q: Query, count: int, with_total: bool | str) -> Page:
        """One page of the AuditEvents matching ``q`` (see the module docstring), every event
        committed before the search included."""
        self.move_spooled()
        while self.index_pending():
            pass
        sql = _Sql()
        where = [sql.group(group) for group in q.where]
        q_desc = False
        for key in q.sort:
            if key.param not in DATE_PARAMS:
                raise bad_request(f"AuditEvents sort by date only, not {key.param}")
            q_desc = key.desc
        after = None
        cond = " AND ".join(where) or "1=1"
        paged = cond
        if q.cursor:
            direction, _, value = q.cursor.partition(":")
            if direction not in ("a", "d") or not (value.isascii() and value.isdigit()) or (direction == "d") != q_desc:
                raise bad_request("_cursor is not a page cursor of this audit search")
            after = int(value)
            paged = f"{cond} AND e.pos {'<' if q_desc else '>'} {sql.arg(after)}"
        rows: Sequence[Any] = []
        with self.engine.connect() as c:
            if count > 0:
                rows = c.execute(sa.text(
                    f"SELECT e.pos, e.id FROM audit_event e WHERE {paged} ORDER BY e.pos "
                    f"{'DESC' if q_desc else 'ASC'} LIMIT {int(count) + 1}"), sql.args).all()
            more = len(rows) > count
            rows = rows[:count]
            total: int | None = None
            if with_total == "if-cheap":  # known without counting: a first page that is all
                if after is None and not more and count > 0:
                    total = len(rows)
            elif with_total:
                total = int(c.execute(sa.text(
                    f"SELECT count(*) FROM audit_event e WHERE {cond}"), sql.args).scalar_one())
        nxt = f"{'d' if q_desc else 'a'}:{rows[-1].pos}" if more and rows else None
        return Page([Row("AuditEvent", r.id, r.pos) for r in rows], nxt, None, total)


class Spool:
    """AuditEvents as lines in files of a local directory, until moved into the tables.

    ``write`` copies the line into this process's current file, mapped into memory
    (``MAP_SHARED``): no system call, so the writing request keeps the interpreter's lock, where a
    ``write(2)`` per access would hand it to another thread and back. A page of a shared
    mapping is the kernel's page cache, as a ``write(2)``'s bytes are: either survives the process
    dying and neither the machine losing power before the cache is written out. Each file's room
    (``rotate_bytes``) is reserved on disk when it is begun (``posix_fallocate``), so a full disk
    is an error then rather than a signal at a later copy; the unused rest reads as NUL bytes,
    which no line holds. The process holds an exclusive ``flock`` on its current file; a full
    one is closed and another begun. ``take`` reads the complete lines not yet taken from this
    process's files and from any file no live process holds (one left by a process that died),
    and deletes a file once wholly taken and no longer written."""

    def __init__(self, directory: Path, rotate_bytes: int = 4 << 20):
        self.dir = directory
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._path: Path | None = None
        self._size = 0
        self._taken: dict[Path, int] = {}  # bytes of each file already taken (this process)

    def write(self, entry: Entry) -> None:
        """Append ``entry``; on return it survives this process's crash. An ``OSError`` (a full
        disk when a file is begun) leaves no line behind."""
        rid, lo, hi, chain, seq, body = row_of(entry)
        # the row as the table takes it, tab-separated (JSON escapes tabs and newlines), so
        # that moving it needs no parsing
        line = b"\t".join((rid.encode(), str(lo).encode(), str(hi).encode(), chain.encode(),
                           str(seq).encode(), body)) + b"\n"
        with self._lock:
            if self._map is None or self._size + len(line) > len(self._map):
                self._begin(max(self.rotate_bytes, len(line)))
            assert self._map is not None
            self._map[self._size:self._size + len(line)] = line
            self._size += len(line)

    def _begin(self, room: int) -> None:
        self._end()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.spool"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, room)
            mapped = mmap.mmap(fd, room, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._map, self._path, self._size = fd, mapped, path, 0

    def _end(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with it: the file is now taken like any other
            self._fd = self._path = None

    def close(self) -> None:
        with self._lock:
            self._end()

    def take(self, batch: int = 2000) -> Iterator[tuple[list[tuple], Callable[[], None]]]:
        """(rows, done) in file and line order; call ``done`` once they are stored."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.spool")):
            with self._lock:
                current = path == self._path
                written = self._size if current else None
            fd = None
            if not current:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # another process took it meanwhile
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a live process writes it: that one takes it
            try:
                yield from self._take_file(path, batch, written)
                if not current:
                    path.unlink(missing_ok=True)
                    self._taken.pop(path, None)
            finally:
                if fd is not None:
                    os.close(fd)

    def _take_file(self, path: Path, batch: int,
                   written: int | None) -> Iterator[tuple[list[tuple], Callable[[], None]]]:
        """The lines of ``path`` from where this process stopped taking; ``written``: how far
        this process has written it (its current file), else up to the first unused byte."""
        start = self._taken.get(path, 0)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read() if written is None else f.read(max(0, written - start))
        except FileNotFoundError:
            return
        end = _lines_end(data)
        entries: list[tuple] = []
        offset = start
        for line in data[:end].splitlines():
            offset += len(line) + 1
            row = _spooled_row(line)
            if row is None:
                log.error("an unreadable line in the audit spool %s was skipped", path.name)
            else:
                entries.append(row)
            if len(entries) >= batch:
                yield entries, _mark(self._taken, path, offset)
                entries = []
        if entries or offset > start:
            yield entries, _mark(self._taken, path, offset)

    def pending(self) -> Iterator[Entry]:
        """Every complete spooled line, taken or not (for a reader beside a running server)."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.spool")):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            for line in data[:_lines_end(data)].splitlines():
                row = _spooled_row(line)
                if row is not None:
                    yield Entry(row[0], orjson.loads(row[5]), row[3], row[4])


def _lines_end(data: bytes) -> int:
    """Where the complete lines of spooled ``data`` end: after the last newline before the
    unused (NUL) rest of the file; a line still being copied waits for the next round."""
    unused = data.find(b"\x00")
    return data.rfind(b"\n", 0, len(data) if unused < 0 else unused) + 1


def row_of(e: Entry) -> tuple[str, int, int, str, int, bytes]:
    """The ``audit_event`` row of an entry: id, recorded range, chain position, JSON."""
    lo, hi = _recorded_range(e.body)
    return e.id, lo, hi, e.chain, e.seq, orjson.dumps(e.body)


def _spooled_row(line: bytes) -> tuple[str, int, int, str, int, bytes] | None:
    parts = line.split(b"\t", 5)
    if len(parts) != 6:
        return None
    try:
        return (parts[0].decode(), int(parts[1]), int(parts[2]), parts[3].decode(),
                int(parts[4]), parts[5])
    except (UnicodeDecodeError, ValueError):
        return None


def _mark(taken: dict[Path, int], path: Path, offset: int) -> Callable[[], None]:
    def done() -> None:
        taken[path] = offset
    return done


class _Sql:
    """SQL text with named arguments (the ``arg`` interface of the search backend's helpers)."""

    def __init__(self) -> None:
        self.args: dict[str, Any] = {}

    def arg(self, v: Any) -> str:
        name = f"a{len(self.args)}"
        self.args[name] = v
        return ":" + name

    def group(self, group: list[Criterion]) -> str:
        return "(" + " OR ".join(self.test(c) for c in group) + ")"

    def test(self, c: Criterion) -> str:
        if c.chain is not None:
            raise bad_request(f"AuditEvent search does not chain ({c.param})")
        if c.param == "_id" and c.modifier is None:
            v: TokenValue = c.value
            return f"e.id = {self.arg(v.code)}"
        if c.param in DATE_PARAMS and c.modifier is None:
            return date_test(self, c.prefix, c.value, "e.lo_us", "e.hi_us")
        if c.param in TOKEN_PARAMS and c.modifier in (None, "not"):
            t: TokenValue = c.value
            if t.type_system is not None or t.type_code is not None:
                raise bad_request(f"AuditEvent {c.param} takes no :of-type")
            if t.code is None:
                test = self._index(c.param, "LIKE", f"{_escape(t.system or '')}|%")
            elif t.system is None:
                test = self._index(c.param, "=", t.code)
            else:
                test = self._index(c.param, "=", f"{t.system}|{t.code}")
            return f"NOT {test}" if c.modifier == "not" else test
        if c.param in REFERENCE_PARAMS and c.modifier in (None, "identifier"):
            r: RefValue = c.value
            if r.identifier is not None:
                if c.param != "agent":
                    raise bad_request(f"AuditEvent {c.param} is searched by reference, not "
                                      "identifier")
                t = r.identifier
                value = t.code if t.system is None else f"{t.system}|{t.code}"
                return self._index("agent:identifier", "=", value or "")
            parts = [self._index(c.param, "=", t) for t in r.targets]
            if r.id_suffix is not None:
                parts.append(self._index(c.param, "LIKE", f"%/{_escape(r.id_suffix)}"))
            if c.param == "agent":  # the agent's identifier value, as a bare id names it
                ids = {t.rpartition("/")[2] for t in r.targets if "/" in t}
                ids |= {r.id_suffix} if r.id_suffix is not None else set()
                parts += [self._index("agent:identifier", "=", i) for i in sorted(ids)]
            return "(" + " OR ".join(parts or ["1=0"]) + ")"
        if c.param in STRING_PARAMS and c.modifier in (None, "exact"):
            text = str(c.value)
            if c.modifier == "exact":
                return self._index(f"{c.param}:exact", "=", text)
            return self._index(c.param, "LIKE", f"{_escape(text.lower())}%")
        raise bad_request(f"AuditEvent search does not support {c.param}"
                          + (f":{c.modifier}" if c.modifier else ""))

    def _index(self, param: str, op: str, value: str) -> str:
        escape = " ESCAPE '\\'" if op == "LIKE" else ""
        return (f"e.pos IN (SELECT pos FROM audit_index WHERE param = {self.arg(param)} "
                f"AND value {op} {self.arg(value)}{escape})")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _recorded_range(d: dict) -> tuple[int, int]:
    try:
        return parse_range(str(d.get("recorded")))
    except (ValueError, OverflowError):
        raise FhirError(400, "value", "The AuditEvent's recorded time is not an instant",
                        "AuditEvent.recorded") from None


def _codings(param: str, c: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(c, dict):
        code = c.get("code")
        if isinstance(code, str):
            out.append((param, code))
            out.append((param, f"{c.get('system') or ''}|{code}"))


def search_values(d: dict) -> list[tuple[str, str]]:
    """(param, value) pairs of an AuditEvent for ``audit_index``, each once: tokens as ``code``
    and ``system|code``, references as written, strings lowercased and (``:exact``) as they
    are. Runs once per event stored, so plain loops rather than a walk of the resource."""
    out: list[tuple[str, Any]] = [("outcome", d.get("outcome")), ("action", d.get("action"))]
    _codings("type", d.get("type"), out)
    for st in d.get("subtype") or ():
        _codings("subtype", st, out)
    for agent in d.get("agent") or ():
        if not isinstance(agent, dict):
            continue
        who = agent.get("who")
        if isinstance(who, dict):
            out.append(("agent", who.get("reference")))
            # the hub's agents are named by identifier (a client, a user): found so, by
            # ``agent:identifier`` and by ``agent`` with the bare value (no type to refer to)
            ident = who.get("identifier")
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                out.append(("agent:identifier", ident["value"]))
                out.append(("agent:identifier", f"{ident.get('system') or ''}|{ident['value']}"))
            name = who.get("display")
            if isinstance(name, str):
                out.append(("agent-name", name.lower()))
                out.append(("agent-name:exact", name))
        out.append(("altid", agent.get("altId")))
        network = agent.get("network")
        address = network.get("address") if isinstance(network, dict) else None
        if isinstance(address, str):
            out.append(("address", address.lower()))
            out.append(("address:exact", address))
    # why (a hub-internal index, not a FHIR R4 search parameter): break-the-glass accesses are
    # found by it without reading the log
    for purpose in d.get("purposeOfEvent") or ():
        for c in (purpose.get("coding") or ()) if isinstance(purpose, dict) else ():
            if isinstance(c, dict):
                out.append(("purpose", c.get("code")))
    for entity in d.get("entity") or ():
        what = entity.get("what") if isinstance(entity, dict) else None
        ref = what.get("reference") if isinstance(what, dict) else None
        if isinstance(ref, str):
            out.append(("entity", ref))
            if ref.startswith("Patient/"):
                out.append(("patient", ref))
    return list(dict.fromkeys(pv for pv in out if isinstance(pv[1], str) and pv[1]))


def _value_filter(since_us: int | None, before_pos: int | None) -> str:
    return ("" if since_us is None else " AND e.lo_us >= :since") + \
        ("" if before_pos is None else " AND e.pos < :before")
