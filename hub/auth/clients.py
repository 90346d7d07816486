"""The registry of clients allowed to ask the token endpoint for access tokens.

A client (a hospital's connector, a data-quality service) is registered by an administrator with
its public keys (it signs its token requests with the private half, which the hub never sees), the
institution it speaks for and that institution's root OID (its local code systems are
``urn:oid:<OID>.…``: the terminology it may write, ``hub.access.terminology``), its hub roles and
the scopes it may be granted. Revoking it refuses its
next token request and, through ``active_now`` (which the verifier asks on every request a token
of the hub's makes), the tokens already issued to it at once, in every process.

The registry is one SQLite file (``auth.sqlite`` in the data directory), apart from the event store
(on SQLite or PostgreSQL alike): the clients are configuration, not records. It also remembers the
``jti`` of every client assertion until the assertion expires, so that none is accepted twice.
Each call opens its own connection, so the registry is safe to share between threads and processes.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from hub.auth.keys import check_jwks
from hub.auth.roles import ROLES
from hub.auth.scopes import check_client_scopes
from hub.core.errors import bad_request, not_found
from hub.core.sqlitefile import add_columns, connection, create

__all__ = ["REGISTRY_FILE", "ROLES", "Client", "ClientRegistry", "open_registry"]

REGISTRY_FILE = "auth.sqlite"
STATUSES = ("active", "revoked")

# the arcs of the national and HL7 code systems (terminology.systems.STANDARD_ARCS, which this
# package may not import): no institution's OID lies in them
STANDARD_ARCS = ("2.16.156.10011.1.", "2.16.156.10011.2.", "2.16.840.1.113883.")
OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")

WHAT = "the client registry"  # what the file holds (its refusal says)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS client (
    client_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    jwks        TEXT NOT NULL,
    institution TEXT NOT NULL DEFAULT '',
    oid         TEXT NOT NULL DEFAULT '',
    roles       TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created     TEXT NOT NULL,
    revoked     TEXT
);
CREATE TABLE IF NOT EXISTS used_jti (
    client_id TEXT NOT NULL,
    jti       TEXT NOT NULL,
    expires   REAL NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX IF NOT EXISTS used_jti_expires ON used_jti (expires);
"""


def new_client_id() -> str:
    """A random client id that never starts with "-" (a command line would read it as an
    option: `hub auth client revoke -x…` failed for one id in 64)."""
    while True:
        cid = secrets.token_urlsafe(16)
        if not cid.startswith("-"):
            return cid


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client. ``roles`` are hub roles (``ROLES``), ``scopes`` the SMART scope string
    it may be granted, ``created`` and ``revoked`` UTC times (ISO 8601)."""

    client_id: str
    name: str
    jwks: dict
    institution: str
    roles: tuple[str, ...]
    scopes: str
    status: str
    created: str
    revoked: str | None = None
    oid: str = ""  # the institution's root OID ("": not registered)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_json(self) -> dict:
        return {"client_id": self.client_id, "name": self.name, "institution": self.institution,
                "oid": self.oid,
                "roles": list(self.roles), "scopes": self.scopes, "status": self.status,
                "created": self.created, "revoked": self.revoked, "jwks": self.jwks}


def open_registry(data_dir: Path) -> ClientRegistry:
    """The registry of the data directory ``data_dir`` (``auth.sqlite``), created when missing."""
    return ClientRegistry(Path(data_dir) / REGISTRY_FILE)


class ClientRegistry:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        create(self.path, _SCHEMA, WHAT)
        # a file from before institution OIDs: its clients have none
        add_columns(self.path, "client", {"oid": "TEXT NOT NULL DEFAULT ''"})
        # active_now's own connection and what it read, valid while the file's data_version holds
        self._standing_lock = threading.Lock()
        self._standing_db: sqlite3.Connection | None = None
        self._standing_version: int | None = None
        self._standing: dict[str, bool] = {}

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connection(self.path)

    def add(self, name: str, jwks: dict, *, institution: str = "", roles: Iterable[str] = (),
            scopes: str = "", oid: str = "") -> Client:
        """Register a client with its public keys (a JWK Set, checked) and a new client_id;
        ``oid``: its institution's root OID (one per institution; two institutions' may not
        nest, nor lie in a standard arc)."""
        name = name.strip()
        if not name:
            raise bad_request("A client needs a name")
        oid = oid.strip().removeprefix("urn:oid:")
        if oid:
            self._check_oid(institution.strip(), oid)
        roles = tuple(dict.fromkeys(roles))
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise bad_request(f"Unknown role(s) {', '.join(unknown)}; the roles are {', '.join(ROLES)}")
        client = Client(client_id=new_client_id(), name=name, jwks=check_jwks(jwks),
                        institution=institution.strip(), roles=roles, scopes=check_client_scopes(scopes),
                        status="active", created=_now(), oid=oid)
        with self._db() as db:
            db.execute("INSERT INTO client (client_id, name, jwks, institution, roles, scopes, status,"
                       " created, oid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (client.client_id, client.name, orjson.dumps(client.jwks).decode(),
                        client.institution, orjson.dumps(list(roles)).decode(), client.scopes,
                        client.status, client.created, client.oid))
        return client

    def _check_oid(self, institution: str, oid: str) -> None:
        """An institution's OID names its code systems: one institution's may not be another's,
        nor above or below it (its arc would hold the other's systems), nor a standard arc's."""
        if not institution:
            raise bad_request("An OID is an institution's: give --institution with it")
        if not OID_RE.match(oid):
            raise bad_request(f"{oid[:64]!r} is not an OID (digits separated by dots)")
        if any(f"{oid}.".startswith(arc) or arc.startswith(f"{oid}.") for arc in STANDARD_ARCS):
            raise bad_request(f"{oid} lies in (or holds) a standard arc ({', '.join(STANDARD_ARCS)}"
                              "): no institution's local code systems are there")
        for other in self.list():
            if not other.oid or not other.active:
                continue
            if other.institution == institution and other.oid != oid:
                raise bad_request(f"Institution {institution} is registered with OID "
                                  f"{other.oid}; one institution has one root OID")
            if other.institution != institution and (
                    other.oid == oid or other.oid.startswith(f"{oid}.")
                    or oid.startswith(f"{other.oid}.")):
                raise bad_request(f"OID {oid} is, or nests with, institution "
                                  f"{other.institution}'s OID {other.oid}")

    def get(self, client_id: str) -> Client | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM client WHERE client_id = ?", (client_id,)).fetchone()
        return _client(row) if row else None

    def list(self) -> list[Client]:
        """Every client, in the order they were registered."""
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM client ORDER BY created, rowid").fetchall()
        return [_client(r) for r in rows]

    def revoke(self, client_id: str) -> Client:
        """Revoke a client (once: revoking it again keeps the first time); unknown: not found."""
        with self._db() as db:
            db.execute("UPDATE client SET status = 'revoked', revoked = ? "
                       "WHERE client_id = ? AND status = 'active'", (_now(), client_id))
        client = self.get(client_id)
        if client is None:
            raise not_found(f"No client {client_id!r}")
        return client

    def active_now(self, client_id: str) -> bool:
        """Whether ``client_id`` is registered and active at this moment: asked on every request
        with a token of the hub's, so that a revocation holds from the next request on. What was
        read is kept until another connection (of any process: an API worker, ``hub auth client
        revoke``) commits to the file, which SQLite's ``data_version`` tells for a step of a few
        microseconds; only then is the client's row read again."""
        with self._standing_lock:
            if self._standing_db is None:
                self._standing_db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            db = self._standing_db
            # each statement read to its end: none holds a read transaction (a stale snapshot)
            (version,), = db.execute("PRAGMA data_version").fetchall()
            if version != self._standing_version:
                self._standing, self._standing_version = {}, version
            known = self._standing.get(client_id)
            if known is None:  # only verified tokens ask: at most one entry a registered client
                rows = db.execute("SELECT status FROM client WHERE client_id = ?", (client_id,)).fetchall()
                known = self._standing[client_id] = rows == [("active",)]
            return known

    def use_jti(self, client_id: str, jti: str, expires: float) -> bool:
        """Record that ``client_id`` used the assertion id ``jti``, remembered until ``expires``
        (epoch seconds); False when it was used before. Forgotten ids are purged on the way."""
        now = time.time()
        with self._db() as db:
            db.execute("DELETE FROM used_jti WHERE expires < ?", (now,))
            done = db.execute("INSERT OR IGNORE INTO used_jti (client_id, jti, expires) VALUES (?, ?, ?)",
                              (client_id, jti, max(expires, now)))
            return done.rowcount == 1

    def purge_jtis(self, now: float | None = None) -> int:
        """Forget the assertion ids whose assertions have expired; how many were."""
        with self._db() as db:
            return db.execute("DELETE FROM used_jti WHERE expires < ?",
                              (time.time() if now is None else now,)).rowcount


_COLUMNS = "client_id, name, jwks, institution, roles, scopes, status, created, revoked, oid"


def _client(row: tuple) -> Client:
    cid, name, jwks, institution, roles, scopes, status, created, revoked, oid = row
    return Client(cid, name, orjson.loads(jwks), institution, tuple(orjson.loads(roles)), scopes,
                  status, created, revoked, oid or "")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
