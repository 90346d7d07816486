"""Leases: one follower of a read model applies at a time, across processes and machines.

``PgLease`` is a PostgreSQL session advisory lock on a key derived from a name (a read model and
where it lives). The holder is whoever's connection took it; PostgreSQL releases it when that
connection ends, so a holder that dies (killed, its machine gone) loses it as soon as the server
notices the connection is gone, and a standby that polls takes it over within its poll interval.
Before each batch the holder checks that it still holds it (its connection may have been cut).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

import psycopg

from hub.core.pgschema import connect_args
from hub.core.repeatlog import RepeatingFailure

log = logging.getLogger("hub.lease")


def lease_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                          signed=True)


class PgLease:
    def __init__(self, dsn: str, name: str):
        self.dsn, self.name, self.key = dsn, name, lease_key(name)
        self._conn: psycopg.Connection | None = None
        self._held = False
        self._lock = threading.Lock()
        self._failing = RepeatingFailure(log, f"lease of {name}")

    def held(self) -> bool:
        """Whether this process holds the lease now, taking it if it is free."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        **connect_args(self.dsn), autocommit=True, connect_timeout=5,
                        application_name=f"hub-lease-{os.getpid()}"[:63])
                    self._held = False
                conn = self._conn
                if self._held:  # still ours? (a cut connection loses it)
                    # the connection holds no other advisory lock
                    found = conn.execute(
                        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND pid = pg_backend_pid()").fetchone()
                    if found is not None:
                        return True
                    log.warning("lost the lease of %s", self.name)
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    log.info("took the lease of %s", self.name)
                self._failing.ok()
                return self._held
            except psycopg.Error as e:
                self._failing.failed(e, traceback=False)
                self._close()
                return False

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn, self._held = None, False

    def release(self) -> None:
        with self._lock:
            self._close()
