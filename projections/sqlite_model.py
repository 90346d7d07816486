"""A read model in its own SQLite file: its tables plus eventsourcing's tracking table.

Opening creates the tables (``schema``) and calls ``opened`` inside the same transaction, for
what a model reads or migrates at start. ``position`` is the tracking row of ``name``: a model
writes it in the transaction of each batch it applies (``projections.runner``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventsourcing.sqlite import SQLiteTrackingRecorder

from hub.store import FastSQLiteDatastore


class SQLiteReadModel:
    name: str
    schema: Sequence[str] = ()

    def __init__(self, path: Path | str):
        self.path = str(path)
        self.datastore = FastSQLiteDatastore(self.path, pool_size=4)
        self.tracking = SQLiteTrackingRecorder(self.datastore)
        self.tracking.create_table()
        with self.datastore.transaction(commit=True) as c:
            for statement in self.schema:
                c.execute(statement)
            self.opened(c)

    def opened(self, c: Any) -> None:
        """Called once the tables exist, inside the opening transaction."""

    def close(self) -> None:
        self.datastore.close()

    meta_table: str = ""  # a model that applies through locked_position: its key/value table

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
