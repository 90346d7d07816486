"""The connector daemons the operators watch from the console: each registered by name with the
URL of its status endpoint and, to reach its dead letters, its admin token
(``hub connector register CONFIG``); kept in ``connectors.sqlite`` in the data directory.

The hub does not open a daemon's spool: a daemon may run on the hospital's side of a firewall. It
asks the daemon's status endpoint (``connectors.daemon``) over HTTP, with short timeouts, so one
daemon down shows as unreachable and does not hold the page.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from hub.core import httpclient
from hub.core.errors import FhirError
from hub.core.sqlitefile import add_columns, connection, create

REGISTRY_FILE = "connectors.sqlite"
TIMEOUT_S = 3.0
REPLAY_TIMEOUT_S = 60.0  # a replay of every open dead letter converts each again

WHAT = "the connector daemons' registry"  # what the file holds (its refusal says)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS daemon (
    name  TEXT PRIMARY KEY,
    url   TEXT NOT NULL,
    token TEXT,
    added TEXT NOT NULL,
    institution TEXT
);"""


@dataclass(frozen=True)
class Daemon:
    name: str
    url: str  # the status endpoint's base: http://host:port
    token: str | None  # the daemon's admin token, to reach its dead letters
    # the institution its configuration names: its dead letters are that institution's ("":
    # registered before the hub kept it, shown to the region's people alone)
    institution: str = ""


class DaemonRegistry:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / REGISTRY_FILE
        create(self.path, _SCHEMA, WHAT)
        add_columns(self.path, "daemon", {"institution": "TEXT"})  # a file from before it

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connection(self.path)

    def add(self, name: str, url: str, token: str | None, institution: str = "") -> Daemon:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r}: the status endpoint is an http(s) URL")
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO daemon (name, url, token, added, institution) "
                       "VALUES (?,?,?,?,?)", (name, url.rstrip("/"), token,
                                              datetime.now(UTC).isoformat(), institution))
        return Daemon(name, url.rstrip("/"), token, institution)

    def remove(self, name: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM daemon WHERE name=?", (name,)).rowcount > 0

    def list(self) -> list[Daemon]:
        with self._db() as db:
            rows = db.execute("SELECT name, url, token, coalesce(institution, '') FROM daemon "
                              "ORDER BY name").fetchall()
        return [Daemon(*r) for r in rows]

    def get(self, name: str) -> Daemon:
        found = next((d for d in self.list() if d.name == name), None)
        if found is None:
            raise FhirError(404, "not-found", f"No connector {name!r} is registered")
        return found


def status(daemon: Daemon) -> dict[str, Any]:
    """Its ``/status``, or ``{"reachable": False, "error": …}`` when it does not answer."""
    try:
        r = httpclient.get(daemon.url + "/status", timeout=TIMEOUT_S)
        r.raise_for_status()
        d = r.json()
    except (httpx.HTTPError, ValueError) as e:
        return {"reachable": False, "error": f"{type(e).__name__}: {e}"[:300]}
    if not isinstance(d, dict):
        return {"reachable": False, "error": "it answered something that is no status"}
    # what the pages read, in the shapes they read it (a daemon of another version, or a
    # broken one, must not take the page of every connector down with it)
    sources = d.get("sources")
    d["sources"] = {str(k): v for k, v in sources.items() if isinstance(v, dict)} \
        if isinstance(sources, dict) else {}
    for v in d["sources"].values():
        for k, x in list(v.items()):
            if k in COUNTS and not isinstance(x, (int, float)):
                v[k] = 0
    if not isinstance(d.get("sink"), dict):
        d["sink"] = {}
    return {**d, "reachable": True}


# a source's counters, in the order the console shows them (summed over a daemon's sources)
COUNTS = ("received", "converted", "delivered", "failed", "lag", "deadletters")


def _letter(d: Any) -> dict[str, Any]:
    """A dead letter (or a replay's result) as the pages read it: its error an object."""
    if not isinstance(d, dict):
        return {"error": {"reason": "the connector answered something that is no dead letter"}}
    err = d.get("error")
    if err is not None and not isinstance(err, dict):
        d = {**d, "error": {"reason": str(err)[:500]}}
    return d


def _admin(daemon: Daemon, method: str, path: str, timeout: float = TIMEOUT_S) -> Any:
    if not daemon.token:
        raise FhirError(409, "not-supported",
                        f"Connector {daemon.name!r} was registered without its admin token")
    try:
        r = httpx.request(method, daemon.url + path, timeout=timeout,
                          headers={"authorization": f"Bearer {daemon.token}"})
    except httpx.HTTPError as e:
        raise FhirError(502, "transient", f"Connector {daemon.name!r} did not answer: {e}") from None
    if r.status_code == 404:
        raise FhirError(404, "not-found", f"Connector {daemon.name!r}: {path} not found")
    if r.status_code != 200:
        raise FhirError(502, "transient",
                        f"Connector {daemon.name!r} answered {r.status_code}: {r.text[:200]}")
    return r.json()


def deadletters(daemon: Daemon, every: bool = False) -> list[dict[str, Any]]:
    found = _admin(daemon, "GET", "/deadletters" + ("?status=all" if every else ""))
    if not isinstance(found, list):
        raise FhirError(502, "transient", f"Connector {daemon.name!r} answered its dead "
                        "letters with something that is no list")
    return [_letter(d) for d in found]


def deadletter(daemon: Daemon, dl_id: int) -> dict[str, Any]:
    return _letter(_admin(daemon, "GET", f"/deadletters/{int(dl_id)}"))


def replay(daemon: Daemon, dl_id: int | None) -> list[dict[str, Any]]:
    """Replay one dead letter, or (``None``) every open one: each result's ``ok`` and error."""
    path = f"/deadletters/{int(dl_id)}/replay" if dl_id is not None else "/deadletters/replay"
    answer = _admin(daemon, "POST", path, REPLAY_TIMEOUT_S)
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        raise FhirError(502, "transient", f"Connector {daemon.name!r} answered the replay "
                        "with no results")
    return [_letter(r) for r in results]
