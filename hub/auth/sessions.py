"""Console sessions: a token the hub signs for the operator console's own audience, carried in a
cookie. The API's caller check (``hub.api.caller``) and the console (``hub.console``) share these
names and the verifier; such a token opens no API call (its audience is the console's)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from hub.auth.clients import REGISTRY_FILE
from hub.auth.verifier import Verifier
from hub.core.sqlitefile import connection, create

COOKIE = "hub_console"
AUDIENCE = ISSUER = "hub-console"
SESSION_S = 8 * 3600


def session_log(state: Any) -> SessionLog:
    """The session log of an application's ``state`` (its data directory's), opened once."""
    if getattr(state, "console_sessions", None) is None:
        state.console_sessions = SessionLog(state.settings.data_dir / REGISTRY_FILE)
    return state.console_sessions


def session_verifier(state: Any) -> Verifier:
    """The verifier of console sessions for an application's ``state`` (its signer), made once."""
    if getattr(state, "console_verifier", None) is None:
        state.console_verifier = Verifier(AUDIENCE, own=state.auth_signer, issuer=ISSUER)
    return state.console_verifier


WHAT = "the console's sessions"  # what the file holds (its refusal says)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_session (
    sid      TEXT PRIMARY KEY,
    subject  TEXT NOT NULL,
    user     TEXT,
    expires  INTEGER NOT NULL,
    ended    INTEGER
);
CREATE TABLE IF NOT EXISTS console_login_failure (
    name  TEXT NOT NULL,
    at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS console_login_failure_name ON console_login_failure (name, at);
"""
# a name's failed logins counted over this window; this many in it hold the name's logins
# until the oldest leaves the window (guessing a password online: ten tries a quarter hour)
FAILURE_WINDOW_S = 15 * 60
MAX_FAILURES = 10


class SessionLog:
    """The console sessions begun, kept beside the users (``auth.sqlite``), so that a session
    ends on the server: a signed cookie alone stays valid until it expires, after its user
    logged out or an administrator disabled them. Each console request asks ``live``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        create(self.path, _SCHEMA, WHAT)

    def begin(self, subject: str, user: str | None) -> str:
        """A new session of ``subject`` (``user``: the local user's name, whose status is asked
        on every request; None for a person an identity provider signed in)."""
        sid = secrets.token_urlsafe(18)
        now = int(time.time())
        with connection(self.path) as db:
            db.execute("DELETE FROM console_session WHERE expires < ?", (now,))
            db.execute("INSERT INTO console_session VALUES (?, ?, ?, ?, NULL)",
                       (sid, subject, user, now + SESSION_S))
        return sid

    def held(self, name: str) -> int:
        """Seconds until ``name`` may try again (0: now), after too many failed logins."""
        now = int(time.time())
        with connection(self.path) as db:
            rows = db.execute("SELECT at FROM console_login_failure WHERE name = ? AND at > ? "
                              "ORDER BY at", (name[:200], now - FAILURE_WINDOW_S)).fetchall()
        if len(rows) < MAX_FAILURES:
            return 0
        return max(1, rows[-MAX_FAILURES][0] + FAILURE_WINDOW_S - now)

    def failed(self, name: str) -> None:
        now = int(time.time())
        with connection(self.path) as db:
            db.execute("DELETE FROM console_login_failure WHERE at < ?", (now - FAILURE_WINDOW_S,))
            db.execute("INSERT INTO console_login_failure VALUES (?, ?)", (name[:200], now))

    def succeeded(self, name: str) -> None:
        with connection(self.path) as db:
            db.execute("DELETE FROM console_login_failure WHERE name = ?", (name[:200],))

    def end(self, sid: str) -> None:
        with connection(self.path) as db:
            db.execute("UPDATE console_session SET ended = ? WHERE sid = ?", (int(time.time()), sid))

    def live(self, sid: str) -> bool:
        """Begun here, not ended nor expired, and its local user (if any) still active."""
        with connection(self.path) as db:
            row = db.execute("SELECT ended, expires, user FROM console_session WHERE sid = ?",
                             (sid,)).fetchone()
            if row is None or row[0] is not None or row[1] < time.time():
                return False
            if row[2] is None:
                return True
            status = db.execute("SELECT status FROM user WHERE name = ?", (row[2],)).fetchone()
        return status is not None and status[0] == "active"
