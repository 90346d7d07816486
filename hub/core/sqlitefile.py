"""Small SQLite files of the data directory that are not read models: the client and user
registry, the connector daemons the console watches, the jobs ledger. One transaction per call,
safe across threads and processes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to ``path`` for one transaction: committed, or rolled back on an error."""
    db = sqlite3.connect(path, timeout=30)
    try:
        with db:
            yield db
    finally:
        db.close()


def create(path: Path, schema: str) -> None:
    """The file and ``schema``'s tables, when missing (WAL: readers never wait for a writer).

    Processes starting together (``hub serve``'s workers) may create one file at once: SQLite
    answers the switch to WAL "database is locked" at once, without its busy wait, while another
    connection has the new file open; the switch is tried again (once made, it stays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(_CREATE_TRIES):
        try:
            with connection(path) as db:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(schema)
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == _CREATE_TRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


_CREATE_TRIES = 20
