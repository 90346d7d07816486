"""A throw-away PostgreSQL database for a benchmark run."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import psycopg


@contextmanager
def temporary_database(admin_dsn: str):
    name = f"hub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
