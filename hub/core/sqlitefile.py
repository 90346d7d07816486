"""Small SQLite files of the data directory that are not read models: the client and user
registry, the connector daemons the console watches, the jobs ledger. One transaction per call,
safe across threads and processes."""

from __future__ import annotations

import sqlite3
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
    """The file and ``schema``'s tables, when missing (WAL: readers never wait for a writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with connection(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
