"""A read model in its own SQLite file: its tables plus eventsourcing's tracking table.

Opening creates the tables (``schema``) and calls ``opened`` inside the same transaction, for
what a model reads or migrates at start. ``position`` is the tracking row of ``name``: a model
writes it in the transaction of each batch it applies (``projections.runner``).

A model whose rows follow rules that a release may change (where the timeline places a resource,
what the search index extracts) names their version in ``rules``; its meta table records the
version its rows were written under (``'rules'``), by a rebuild or when the file starts empty, and
``stale`` says a rebuild is due while that is older (a file written before the row was recorded:
0).

``apply`` is the same for every model with a ``meta_table``: the file's write lock, what other
followers already applied skipped, the model's ``apply_new`` with the rest, the position recorded,
all in one transaction. ``tables`` are what ``reset`` empties and ``stats`` counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventsourcing.persistence import IntegrityError, Notification, Tracking
from eventsourcing.sqlite import SQLiteTrackingRecorder

from hub.core.fhirtime import zone_changed, zone_name
from hub.core.store import FastSQLiteDatastore
from projections.contract import ReadModel, nothing_to_apply


def record_position(tracking: SQLiteTrackingRecorder, c: Any, name: str,
                    position: int) -> None:
    """Record ``name``'s tracking position inside the caller's transaction (cursor ``c``).

    eventsourcing's public ``insert_tracking`` commits a transaction of its own, and its
    process recorder records tracking only beside stored events; a read model needs the row in
    the transaction of its own rows. The one call to eventsourcing's private
    ``_insert_tracking`` is here (it checks the table's layout and, with single-row tracking,
    refuses a position that does not advance with ``IntegrityError``)."""
    tracking._insert_tracking(c, Tracking(name, position))


# the identity of the event log each tracking name of the file was built from
FOLLOWED_LOG = ("CREATE TABLE IF NOT EXISTS followed_log (name TEXT PRIMARY KEY, "
                "log_id TEXT NOT NULL)")


def followed_log(datastore: FastSQLiteDatastore, name: str) -> str | None:
    """The log ``name`` recorded as the one it follows, if any."""
    with datastore.transaction(commit=False) as c:
        c.execute("SELECT log_id FROM followed_log WHERE name=?", (name,))
        found = c.fetchone()
    return str(found[0]) if found else None


def follow_log(datastore: FastSQLiteDatastore, name: str, log_id: str) -> None:
    with datastore.transaction(commit=True) as c:
        c.execute("INSERT OR REPLACE INTO followed_log (name, log_id) VALUES (?, ?)",
                  (name, log_id))


class SQLiteReadModel(ReadModel):
    """The ``ReadModel`` contract (``projections.contract``) over one SQLite file."""

    name: str
    types: tuple[str, ...] = ()  # every event unless a model names its resource types
    schema: Sequence[str] = ()
    # a model whose rows hold times of values written without a zone (read in HUB_TIMEZONE,
    # hub.core.fhirtime) records that zone in its meta table: after HUB_TIMEZONE changes, its
    # rows are stale until a rebuild
    zoned: bool = False
    built_zone: str = ""
    unrecorded_zone = "+00:00"  # the zone of rows written before the model recorded one
    # the version of the rules its rows are written by (0: none that change); raise it when they
    # change, and say in ``older_rules`` what rows written under an older one hold
    rules: int = 0
    older_rules: str = ""
    built_rules: int = 0

    def __init__(self, path: Path | str):
        self.path = str(path)
        self.datastore = FastSQLiteDatastore(self.path, pool_size=4)
        self.tracking = SQLiteTrackingRecorder(self.datastore)
        try:
            self.tracking.create_table()
        except IntegrityError:
            # another process (a worker of `hub serve` starting beside this one) created the new
            # file's tracking table at the same moment, and its first row with it: the table is
            # there now, and creating it again finds that row
            self.tracking.create_table()
        with self._immediate() as c:
            c.execute(FOLLOWED_LOG)
            for statement in self.schema:
                c.execute(statement)
            self.opened(c)
            if self.zoned:
                self._read_zone(c)
            if self.rules:
                self._read_rules(c)

    def _read_zone(self, c: Any) -> None:
        c.execute(f"SELECT value FROM {self.meta_table} WHERE key='zone'")
        found = c.fetchone()
        if found is None:
            c.execute("SELECT notification_id FROM tracking WHERE application_name=?", (self.name,))
            applied = c.fetchone()
            zone = self.unrecorded_zone if applied and applied[0] else zone_name()
            c.execute(f"INSERT INTO {self.meta_table} (key, value) VALUES ('zone', ?)", (zone,))
            found = (zone,)
        self.built_zone = str(found[0])

    def _read_rules(self, c: Any) -> None:
        c.execute(f"SELECT value FROM {self.meta_table} WHERE key='rules'")
        found = c.fetchone()
        if found is None:  # rows written before the rules were recorded are an older build's
            c.execute("SELECT notification_id FROM tracking WHERE application_name=?", (self.name,))
            applied = c.fetchone()
            found = (0 if applied and applied[0] else self.rules,)
            c.execute(f"INSERT INTO {self.meta_table} (key, value) VALUES ('rules', ?)", found)
        self.built_rules = int(found[0])

    def record_build(self, c: Any) -> None:
        """In a reset's transaction: the rows to come read zone-less values in today's zone, by
        this release's rules."""
        if self.zoned:
            self.built_zone = zone_name()
            c.execute(f"INSERT OR REPLACE INTO {self.meta_table} (key, value) VALUES ('zone', ?)",
                      (self.built_zone,))
        if self.rules:
            self.built_rules = self.rules
            c.execute(f"INSERT OR REPLACE INTO {self.meta_table} (key, value) VALUES ('rules', ?)",
                      (self.rules,))

    def rules_changed(self) -> str | None:
        """Why rows written under older rules answer by them, and the rebuild that mends it;
        None when they are this release's. Read again while older: a rebuild in another process
        (the CLI beside ``hub serve``) brings them up to date."""
        if self.built_rules < self.rules:
            with self.datastore.transaction(commit=False) as c:
                c.execute(f"SELECT value FROM {self.meta_table} WHERE key='rules'")
                found = c.fetchone()
            self.built_rules = int(found[0]) if found else 0
        if self.built_rules >= self.rules:
            return None
        return (f"written under an older release's rules ({self.older_rules}) until "
                f"`hub projections rebuild {self.name}`")

    def followed_log(self) -> str | None:
        return followed_log(self.datastore, self.name)

    def follow_log(self, log_id: str) -> None:
        follow_log(self.datastore, self.name, log_id)

    def stale(self) -> str | None:
        said = [s for s in (zone_changed(self.built_zone, self.name) if self.zoned else None,
                            self.rules_changed()) if s]
        return "; ".join(said) or None

    @contextmanager
    def _immediate(self) -> Iterator[Any]:
        """A write transaction that holds the file's write lock from its first statement.

        The schema's statements read before they write (``CREATE … IF NOT EXISTS``, then
        ``INSERT OR IGNORE``); in a plain (deferred) transaction that upgrade fails at once with
        "database is locked" when another process committed meanwhile (a re-match writing this
        file), without waiting. ``BEGIN IMMEDIATE`` waits for the writer instead (the
        connection's busy timeout), so opening a model to read never fails beside a writer."""
        with self.datastore.get_connection(commit=True) as conn:
            c = conn.cursor()
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def opened(self, c: Any) -> None:
        """Called once the tables exist, inside the opening transaction."""

    @property
    def bulk(self) -> bool:
        """No bulk mode here; a model with one (a rebuild without its indexes) overrides."""
        return False

    def caught_up(self) -> None:
        """The end of a bulk load; nothing to do without a bulk mode."""

    def close(self) -> None:
        self.datastore.close()

    meta_table: str = ""  # its key/value table, with the 'writer' row that is the write lock
    tables: Sequence[str] = ()  # its own rows' tables

    def apply(self, notifications: Sequence[Notification], up_to: int | None = None,
              since: int | None = None) -> None:
        """Apply a batch and record the last id (or ``up_to``, the log's end, when the events
        between were of types the model does not follow) in one transaction; nothing when the
        model was reset below ``since`` (the contract's)."""
        last = max(notifications[-1].id if notifications else 0, up_to or 0)
        if not last:
            return
        with self.datastore.transaction(commit=True) as c:
            done = self.locked_position(c)
            if nothing_to_apply(last, done, since):
                return  # all applied by another follower of this file, or read before a reset
            self.apply_new(c, [n for n in notifications if n.id > done])
            record_position(self.tracking, c, self.name, last)

    def apply_new(self, c: Any, notifications: list[Notification]) -> None:
        """Apply notifications no follower of this file has applied, inside ``apply``'s
        transaction."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything (a rebuild starts from here)."""
        with self.datastore.transaction(commit=True) as c:
            self.clear(c)
            self.record_build(c)

    def clear(self, c: Any) -> None:
        for table in self.tables:
            c.execute(f"DELETE FROM {table}")
        c.execute("DELETE FROM tracking WHERE application_name=?", (self.name,))

    def stats(self) -> dict[str, int]:
        """Rows per table (``hub projections status``)."""
        with self.datastore.transaction(commit=False) as c:
            out = {}
            for table in self.tables:
                c.execute(f"SELECT COUNT(*) FROM {table}")
                out[table] = c.fetchone()[0]
            return out

    def locked_position(self, c: Any) -> int:
        """In a batch's transaction: take the file's write lock first (a plain BEGIN reads a
        snapshot another process's commit could make stale), then the position already
        applied, so two followers of one file (API workers, a CLI run) never apply a
        notification twice."""
        c.execute(f"UPDATE {self.meta_table} SET value = value + 1 WHERE key = 'writer'")
        c.execute("SELECT notification_id FROM tracking WHERE application_name=?", (self.name,))
        found = c.fetchone()
        return found[0] if found else 0

    def position(self) -> int:
        return self.tracking.max_tracking_id(self.name) or 0


def newest(notifications: Sequence[Notification], keep=None) -> dict[str, Notification]:
    """The last notification of each stream (of those ``keep`` accepts), in first-seen order:
    for a model where only a resource's current version counts."""
    out: dict[str, Notification] = {}
    for n in notifications:
        if keep is None or keep(n):
            out[str(n.originator_id)] = n  # text ids (hub.core.store)
    return out

