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

    def position(self) -> int:
        return self.tracking.max_tracking_id(self.name) or 0
