"""Read-only SQLite connections to a read model's file, one per thread.

Readers that answer many small queries (the terminology service, the MPI's candidate lookups) read
on connections of their own rather than through the datastore's pool, whose transaction bookkeeping
costs as much as the reads. ``close`` closes every thread's connection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadConnections:
    def __init__(self, path: str, timeout: float = 5.0):
        self.path, self.timeout = path, timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        """This thread's connection (autocommit, ``query_only``)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=self.timeout)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Cursor]:
        """A cursor whose reads all see one state of the file."""
        c = self.get().cursor()
        c.execute("BEGIN")
        try:
            yield c
        finally:
            c.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()
