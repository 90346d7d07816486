"""Small SQLite files of the data directory that are not read models: the client and user
registry, the connector daemons the console watches, the jobs ledger. One transaction per call,
safe across threads and processes.

Also what every SQLite file of the data directory shares: an error that names the file when it
is no database (or a corrupt one), and the refusal of an emptied file whose contents nothing
can make again (``refuse_empty``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hub.core.errors import HubError

# SQLite's primary result codes of a file that is no database, or a damaged one
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class DatabaseFileError(HubError):
    """A SQLite file of the data directory that cannot be used; the message names it."""

    error_code = "config"

    def __init__(self, path: Path | str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = Path(path)
        self.reason = message


class UnreadableDatabase(DatabaseFileError):
    """Not a database, or a corrupt one (a failed copy, a disk error); ``cause``: SQLite's
    words, ``hint``: what to do about it."""

    def __init__(self, path: Path | str, cause: str, hint: str = ""):
        super().__init__(path, f"unreadable ({cause})" + (f"; {hint}" if hint else ""))
        self.cause = cause


def unreadable(e: BaseException) -> bool:
    """Whether ``e`` (or the error it wraps: eventsourcing's) says the file is no database or a
    corrupt one; "locked" and the like are not."""
    for err in (e, e.__cause__):
        code = getattr(err, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return True
    return False


@contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """SQLite's "file is not a database" and "database disk image is malformed", which say no
    file, as an ``UnreadableDatabase`` naming ``path``."""
    try:
        yield
    except Exception as e:
        if unreadable(e):
            raise UnreadableDatabase(path, str(e)) from None
        raise


def refuse_empty(path: Path | str, what: str) -> None:
    """A file of ``what`` that is there but empty (0 bytes: a full disk, a failed copy, a
    truncation) is refused: SQLite would take it for a new database and the hub would carry on
    with none of its contents. A file being made this moment by another process is empty for a
    few milliseconds only, so an empty file is looked at again for a second before it is
    refused."""
    p = Path(path)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            if p.stat().st_size:
                return
        except FileNotFoundError:
            return  # nothing there: made new, as always
        if time.monotonic() > deadline:
            raise DatabaseFileError(p, f"the file of {what} is empty (0 bytes) and is not made "
                                       "again empty; restore it from a backup, or remove it to "
                                       "start with none")
        time.sleep(0.05)


@contextmanager
def connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to ``path`` for one transaction: committed, or rolled back on an error."""
    with naming(path):
        db = sqlite3.connect(path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()


def create(path: Path, schema: str, what: str | None = None) -> None:
    """The file and ``schema``'s tables, when missing (WAL: readers never wait for a writer);
    an emptied file (``refuse_empty``) is refused, not made again empty (``what``: what it
    holds, for the message).

    Processes starting together (``hub serve``'s workers) may create one file at once: SQLite
    answers the switch to WAL "database is locked" at once, without its busy wait, while another
    connection has the new file open; the switch is tried again (once made, it stays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_empty(path, what or path.stem)
    for attempt in range(_CREATE_TRIES):
        try:
            with connection(path) as db:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(schema)
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == _CREATE_TRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


_CREATE_TRIES = 20


def add_columns(path: Path, table: str, columns: dict[str, str]) -> None:
    """``columns`` (name -> declaration) added to ``table`` of a file made before them, where
    missing (another process adding one at the same time is no error)."""
    with connection(path) as db:
        held = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    for name, declaration in columns.items():
        if name in held:
            continue
        try:
            with connection(path) as db:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):
                raise
