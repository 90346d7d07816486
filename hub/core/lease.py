"""Leases: one follower of a read model applies at a time, across processes and machines.

``PgLease`` is a PostgreSQL session advisory lock on a key derived from a name (a read model and
where it lives). The holder is whoever's session took it; PostgreSQL releases it when that
session ends, so a holder that dies (killed, its machine gone) loses it as soon as the server
notices the connection is gone, and a standby that polls takes it over within its poll interval.
Before each batch the holder checks that it still holds it (its connection may have been cut).

The leases of one process on one database share one session (``_Session``): a follower process
has a lease per read model, and a connection each held eight of the server's connections idle.
Cut, that session loses every lease it held at once; each lease notices on its next check and
takes its lock again as it would after any loss. Two leases of one name in one process still
exclude each other (advisory locks are re-entrant within a session: the process keeps count).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time

import psycopg

from hub.core.pgschema import connect_args
from hub.core.repeatlog import RepeatingFailure

log = logging.getLogger("hub.lease")

# after its session could not connect, a process's leases wait this long before connecting again:
# each would otherwise wait out the connect timeout in turn behind the others during an outage
RECONNECT_S = 1.0


def lease_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                          signed=True)


class _Session:
    """The one connection holding the advisory locks of a process's leases on one database."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.lock = threading.Lock()
        self.conn: psycopg.Connection | None = None
        self.epoch = 0  # counts the connections opened: a lease taken in an older one is lost
        self.owners: dict[int, PgLease] = {}  # key -> the lease of this process holding it
        self.failed_at, self.failure = -RECONNECT_S, ""

    def connection(self) -> psycopg.Connection:
        """The open connection (the caller holds ``lock``), connecting if there is none."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        self.drop()
        if time.monotonic() - self.failed_at < RECONNECT_S:
            raise psycopg.OperationalError(self.failure)  # as the last try said
        try:
            # named for the process holding the leases (over a name the URL gives)
            self.conn = psycopg.connect(**{
                **connect_args(self.dsn), "autocommit": True, "connect_timeout": 5,
                "application_name": f"hub-lease-{os.getpid()}"[:63]})
        except psycopg.Error as e:
            self.failed_at, self.failure = time.monotonic(), str(e)
            raise
        self.epoch += 1
        return self.conn

    def drop(self) -> None:
        """Close the connection: every lock it held is gone (the caller holds ``lock``)."""
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
        self.conn = None
        self.owners.clear()


_sessions: dict[tuple[int, str], _Session] = {}
_sessions_lock = threading.Lock()


def _session(dsn: str) -> _Session:
    # keyed by the process too: a forked child shares no connection with its parent
    with _sessions_lock:
        return _sessions.setdefault((os.getpid(), dsn), _Session(dsn))


class PgLease:
    def __init__(self, dsn: str, name: str):
        self.dsn, self.name, self.key = dsn, name, lease_key(name)
        self._session = _session(dsn)
        self._epoch = 0  # the session's connection this lease was taken in; 0: not held
        self._failing = RepeatingFailure(log, f"lease of {name}")

    def held(self) -> bool:
        """Whether this process holds the lease now, taking it if it is free."""
        s = self._session
        with s.lock:
            try:
                conn = s.connection()
                if self._epoch:
                    # still ours? (a cut connection, a reconnection, loses it)
                    if self._epoch == s.epoch and s.owners.get(self.key) is self and \
                            conn.execute(
                                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                "AND pid = pg_backend_pid() AND objsubid = 1 "
                                "AND classid::bigint = %s AND objid::bigint = %s",
                                ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
                            ).fetchone() is not None:
                        self._failing.ok()
                        return True
                    log.warning("lost the lease of %s", self.name)
                    self._epoch = 0
                    if s.owners.get(self.key) is self:
                        del s.owners[self.key]
                if self.key in s.owners:  # another lease of this process holds it
                    self._failing.ok()
                    return False
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                if row and row[0]:
                    s.owners[self.key] = self
                    self._epoch = s.epoch
                    log.info("took the lease of %s", self.name)
                self._failing.ok()
                return bool(self._epoch)
            except psycopg.Error as e:
                self._failing.failed(e, traceback=False)
                self._epoch = 0
                s.drop()  # a broken connection: every lease on it is lost; the next check connects
                return False

    def release(self) -> None:
        """Give the lease up; the session closes with the process's last lease."""
        s = self._session
        with s.lock:
            if self._epoch and self._epoch == s.epoch and s.owners.get(self.key) is self:
                del s.owners[self.key]
                try:
                    if s.conn is not None:
                        s.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                except psycopg.Error:
                    s.drop()
            self._epoch = 0
            if not s.owners:
                s.drop()
