"""People who log in to the operator console with a password (the embedded default; a region
with an identity provider signs them in there instead).

Kept in the client registry's file (``auth.sqlite``), table ``user``: the name, the roles
(``hub.auth.roles``), a display name, the institution the person works for (empty: none; the
consents naming institutions are judged by it) and the password as an scrypt hash (``hashlib.scrypt``,
n=2^14, r=8, p=1, a random 16-byte salt): never the password itself. Checking a password takes the
same time whether the user exists or not, so a login does not tell which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from hub.auth.roles import ROLES
from hub.core.errors import bad_request, not_found
from hub.core.sqlitefile import add_columns, connection, create

WHAT = "the console's user registry"  # what the file holds (its refusal says)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS user (
    name     TEXT PRIMARY KEY,
    display  TEXT NOT NULL,
    roles    TEXT NOT NULL,
    hash     BLOB NOT NULL,
    salt     BLOB NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created  TEXT NOT NULL,
    institution TEXT NOT NULL DEFAULT ''
);
"""
_COLUMNS = "name, display, roles, status, created, institution"
_N, _R, _P = 2 ** 14, 8, 1
_DUMMY_SALT = b"\0" * 16
MIN_PASSWORD = 10


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    display: str
    roles: tuple[str, ...]
    status: str
    created: str
    institution: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "display": self.display, "roles": list(self.roles),
                "status": self.status, "created": self.created, "institution": self.institution}


class UserRegistry:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        create(self.path, _SCHEMA, WHAT)
        # a file from before institutions: its users have none
        add_columns(self.path, "user", {"institution": "TEXT NOT NULL DEFAULT ''"})

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connection(self.path)

    def add(self, name: str, password: str, roles: Iterable[str], display: str = "",
            institution: str = "") -> User:
        name, institution = name.strip(), institution.strip()
        if not name or not name.isprintable() or len(name) > 64:
            raise bad_request("A user needs a printable name of at most 64 characters")
        if not institution.isprintable() or len(institution) > 128:
            raise bad_request("An institution is a printable name of at most 128 characters")
        if len(password) < MIN_PASSWORD:
            raise bad_request(f"A password has at least {MIN_PASSWORD} characters")
        roles = tuple(dict.fromkeys(roles))
        unknown = [r for r in roles if r not in ROLES]
        if unknown or not roles:
            raise bad_request(f"Give at least one role of {', '.join(ROLES)}")
        salt = secrets.token_bytes(16)
        user = User(name, display.strip() or name, roles, "active",
                    datetime.now(UTC).isoformat(timespec="seconds"), institution)
        with self._db() as db:
            try:
                db.execute("INSERT INTO user (name, display, roles, hash, salt, status, created, "
                           "institution) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (user.name, user.display, orjson.dumps(list(roles)).decode(),
                            _hash(password, salt), salt, user.status, user.created,
                            user.institution))
            except sqlite3.IntegrityError:
                raise bad_request(f"There is a user {name} already") from None
        return user

    def check(self, name: str, password: str) -> User | None:
        """The active user with this name and password, else None (in the same time)."""
        with self._db() as db:
            row = db.execute(f"SELECT hash, salt, {_COLUMNS} FROM user WHERE name = ?",
                             (name,)).fetchone()
        given = _hash(password, row[1] if row else _DUMMY_SALT)
        if row is None or not hmac.compare_digest(given, row[0]) or row[5] != "active":
            return None
        return _user(row[2:])

    def list(self) -> list[User]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM user ORDER BY name").fetchall()
        return [_user(r) for r in rows]

    def disable(self, name: str) -> None:
        with self._db() as db:
            if db.execute("UPDATE user SET status = 'disabled' WHERE name = ?",
                          (name,)).rowcount != 1:
                raise not_found(f"No user {name}")


def _user(row: tuple) -> User:
    name, display, roles, status, created, institution = row
    return User(name, display, tuple(orjson.loads(roles)), status, created, institution or "")
