"""HUB_SQLITE_SYNC, SQLite's ``synchronous`` pragma for the event store: read by the store when it
connects and checked by the settings at start (a leaf: the settings open the store)."""

from __future__ import annotations

import os

SQLITE_SYNC = ("OFF", "NORMAL", "FULL", "EXTRA")


def sqlite_sync() -> str:
    """HUB_SQLITE_SYNC, SQLite's ``synchronous`` pragma: one of ``SQLITE_SYNC`` (any case); else a
    ValueError naming the variable (BOGUS was silently NORMAL, 7 was OFF, "1 2" a syntax error)."""
    raw = os.environ.get("HUB_SQLITE_SYNC", "NORMAL")
    if raw.strip().upper() not in SQLITE_SYNC:
        raise ValueError(f"HUB_SQLITE_SYNC={raw!r} is not one of {', '.join(SQLITE_SYNC)}")
    return raw.strip().upper()
