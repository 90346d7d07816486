"""Create a PostgreSQL schema once, not on every open.

Every process that opens the store (each API process, each projection follower, each command)
used to run the schema's ``CREATE ... IF NOT EXISTS`` statements. ``CREATE INDEX IF NOT EXISTS``
takes its table's lock before it looks whether the index exists, so an opening process deadlocked
with another process's write holding locks on the same tables in the other order. Now the schema
a release needs is recorded by its digest in ``hub_schema``; an opener that finds it recorded
touches no table, and the creation itself runs under an advisory lock, one process at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

# one lock for every schema of the hub: creation is rare, and the marker table is shared
_LOCK = 4242000
_MARKER = "CREATE TABLE IF NOT EXISTS hub_schema (name TEXT PRIMARY KEY, digest TEXT NOT NULL)"


def connect_args(dsn: str) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect`` from a URL or key=value string, with the
    hub's defaults for what it leaves out (the password is passed, never printed)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    # the rest as given (sslmode, sslrootcert, application_name, options…): dropped, a
    # sslmode=require connected in plain text; the connect timeout is the hub's own
    extra = {k: v for k, v in info.items()
             if k not in ("host", "port", "user", "dbname", "password", "connect_timeout")}
    return {"host": info.get("host", "127.0.0.1"), "port": info.get("port", 5432),
            "user": info.get("user", "postgres"), "dbname": info.get("dbname", "postgres"),
            "password": info.get("password", ""), **extra}


BASE_PARAMS = ("host", "port", "user", "dbname", "password")


def ensure(dsn: str, name: str, statements: Sequence[str], create: Callable[[], None]) -> bool:
    """Run ``create`` unless the schema ``name`` made of ``statements`` is recorded as made.

    Returns whether it ran. ``statements`` only identify the schema (their digest); ``create``
    does the work, so that a library's own table creation can be part of it.
    """
    digest = hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()
    with psycopg.connect(**connect_args(dsn), autocommit=True, connect_timeout=5) as conn:
        if _recorded(conn, name) == digest:
            return False
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            if _recorded(conn, name) == digest:  # another process made it while we waited
                return False
            create()
            conn.execute(_MARKER)
            conn.execute("INSERT INTO hub_schema (name, digest) VALUES (%s, %s) ON CONFLICT (name) "
                         "DO UPDATE SET digest = excluded.digest", (name, digest))
            return True
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))


def _recorded(conn: psycopg.Connection, name: str) -> str | None:
    try:
        row = conn.execute("SELECT digest FROM hub_schema WHERE name = %s", (name,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return row[0] if row else None
