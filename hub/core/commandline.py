"""What the hub's commands share, whichever package they live in: the usage error, opening the
event store with a clear message, and reading input files and folders.

Below ``hub.cli`` (which registers the commands) and the command modules of ``connectors``,
``terminology`` and ``hub.mpi``: it imports none of them.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from hub.core.bundlestream import BOM, BundlePart, stream_parts, streamed_type
from hub.core.config import Settings
from hub.core.errors import HubError
from hub.core.redact import redact_url, unquoted

__all__ = ["BOM", "UsageError", "at_least", "input_kind", "iter_inputs", "one_line", "open_store",
           "port", "positive"]


def at_least(least: int):
    """An argparse type: an integer of at least ``least`` (a count, a size), else a usage error
    naming the bound (``--max-records 0`` ended in a traceback)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")
        return value
    parse.__name__ = f"integer of at least {least}"
    return parse


def positive(most: float):
    """An argparse type: a finite number more than 0 and at most ``most`` (seconds, days): -1 or
    nan made a loop spin without pausing, inf ended in an OverflowError."""
    import argparse
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value <= most):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number more than 0 and at most "
                                             f"{most:g}")
        return value
    parse.__name__ = f"number more than 0 and at most {most:g}"
    return parse


def port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535 (99999 ended in a traceback, 0 served on 8080)."""
    import argparse

    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is no TCP port (1 to 65535)")
    return value


class UsageError(HubError):
    """A user mistake: ``hub`` prints it as one line on stderr and exits with status 2."""

    error_code = "usage"


def open_store(settings: Settings, existing: bool = False):
    """The configured event store; an unusable PostgreSQL URL is a UsageError saying why.

    Checked with one plain connection first: the store's pool would only say, after a wait, that
    it got no connection. With ``existing`` the store must already be there, in a SQLite data
    directory or a PostgreSQL database (reading commands should not create an empty one where a
    mistyped directory or URL points).
    """
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        # with PostgreSQL too: keys, the audit log and the read models live there (`hub serve`
        # started, then every worker died on it, restarted for ever)
        raise UsageError(f"the data directory {settings.data_dir} is a file, not a directory")
    if settings.database_url:
        import psycopg

        params = database_params(settings.database_url)  # ResourceStore.postgres's defaults
        # the password is never printed
        where = f"{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
        try:
            with psycopg.connect(**params, connect_timeout=5) as conn:
                # a reading command is no way to create the hub's tables in whatever database
                # a mistyped URL names (`hub show … --database-url …/postgres` left nine there)
                found = conn.execute("SELECT to_regclass('stored_events')").fetchone()
        except psycopg.Error as e:
            raise UsageError(f"cannot connect to PostgreSQL at {where}: {one_line(e)}") from None
        if existing and (found is None or found[0] is None):
            raise UsageError(f"no event store in the PostgreSQL database {where} "
                             "(set --database-url or HUB_DATABASE_URL)")
    elif existing and not settings.event_store_path.exists():
        raise UsageError(f"no event store in {settings.data_dir} (set --data-dir or HUB_DATA_DIR)")
    return settings.open_store()


def database_params(url: str) -> dict:
    """The connection parameters of a PostgreSQL URL (or key=value string), else a UsageError
    saying what is wrong with it, shown with its password masked: libpq's own message quotes the
    part it could not read, the whole URL or a piece of the password."""
    import psycopg

    from hub.core.pgschema import connect_args

    if re.match(r"[A-Za-z][\w+.-]*:", url) and not url.startswith(("postgresql://",
                                                                     "postgres://")):
        why = "it must start with postgresql:// (or postgres://)"
    else:
        try:
            return connect_args(url)
        except psycopg.Error as e:
            message = one_line(e)
            why = next((hint for words, hint in _LIBPQ_HINTS if words in message), None) \
                or unquoted(message)
    raise UsageError(f"--database-url / HUB_DATABASE_URL {redact_url(url)!r} is not a PostgreSQL "
                     f"URL (postgresql://user:password@host:port/dbname): {why}")


# what libpq's complaints about a connection string mean, without the piece of it they quote
_LIBPQ_HINTS = (
    ('missing "="', "it must start with postgresql:// (or postgres://), or be key=value pairs"),
    ("unexpected spaces", "a space in it must be written %20"),
    ("percent-encoded", "a % in it must begin a two-digit hex escape (%25 for % itself)"),
    ("invalid URI query parameter", "it has a query parameter libpq does not know"))


def one_line(e: Exception) -> str:
    """libpq's messages span lines."""
    return "; ".join(" ".join(line.split()) for line in str(e).splitlines() if line.strip())


# -- input files -----------------------------------------------------------------------------------

def input_kind(f: Path) -> str | None:
    """"ndjson" or "json" for the files ``hub ingest`` reads (optionally gzipped), else None."""
    name = f.name.lower().removesuffix(".gz")
    return "ndjson" if name.endswith(".ndjson") else "json" if name.endswith(".json") else None


def iter_inputs(paths: list[Path], skipped: Callable[[str, str], None] | None = None,
                stream: bool = False) -> Iterator[tuple[str, bytes | BundlePart | None, str | None]]:
    """(where, raw JSON, None) for every resource or Bundle in files and folders, NDJSON line by
    line; (where, None, reason) for a file that cannot be read (the other files are still read).
    With ``stream``, a large batch or collection Bundle comes as (name, BundlePart, None) a few
    hundred entries at a time (``hub.core.bundlestream``), then (where, None, reason) if it
    could not be read to its end.

    Each file is read once, however often the paths reach it (a folder and a file in it, a link
    to it): a second reading stored its resources without an id again, under new ids.
    ``skipped(name, first)`` is told of each file left out as the one already read as ``first``."""
    read: dict[object, str] = {}  # each file read (device and inode, else its real path) -> name
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            kind = input_kind(f)
            if kind is None:
                continue  # other files in a folder (truth.csv, README, ...)
            n = 0
            name = shown_path(f)
            key = _file_key(f)
            if key in read:
                if skipped is not None:
                    skipped(name, read[key])
                continue
            read[key] = name
            if stream and kind == "json" and (btype := streamed_type(f)) is not None:
                yield from stream_parts(f, name, btype)
                continue
            try:
                with _open(f) as fh:
                    if kind == "json":
                        yield name, fh.read().removeprefix(BOM), None
                        continue
                    for n, line in enumerate(fh, 1):
                        if n == 1:
                            line = line.removeprefix(BOM)
                        if line.strip():
                            yield f"{name}:{n}", line, None
            except (OSError, EOFError, zlib.error) as e:  # unreadable, corrupt or truncated gzip
                yield (f"{name}:{n + 1}" if n else name), None, f"Cannot read the file: {e}"


def _file_key(f: Path) -> object:
    """What is the same for every path to one file: its device and inode (a link, hard or
    symbolic, is the file it names), else its real path."""
    try:
        st = f.stat()
    except OSError:
        return os.path.realpath(f)
    return (st.st_dev, st.st_ino)


def existing_data_dir(settings: Settings) -> None:
    """A command that only reads (a listing) needs the data directory to be there: at a
    mistyped ``--data-dir`` it created empty databases and listed "nothing", exit 0."""
    d = Path(settings.data_dir)
    if not d.exists():
        raise UsageError(f"no data directory at {d} (a mistyped --data-dir or HUB_DATA_DIR?)")
    if not d.is_dir():
        raise UsageError(f"the data directory {d} is a file, not a directory")


# what the hub writes holds patients' records, password hashes, keys and rejected input:
# readable by the hub's own user alone, as PostgreSQL keeps its data directory
PRIVATE_UMASK = 0o077


def private_files() -> None:
    """Make every file and directory this process creates from now on its user's alone (a
    stricter umask the operator set is kept)."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


def others_can_read(data_dir: Path) -> str | None:
    """What to tell an operator whose data directory other users can read: it is open to them
    and holds files they can read (made before the hub made its files private, or copied in).
    None when it is closed or all its files are private."""
    d = Path(data_dir)
    try:
        mode = d.stat().st_mode & 0o777
        if not mode & 0o055:
            return None
        readable = sorted(f.name for f in d.iterdir() if f.is_file() and f.stat().st_mode & 0o044)
    except OSError:
        return None
    if not readable:
        return None
    shown = ", ".join(readable[:4]) + (f" and {len(readable) - 4} more" if len(readable) > 4 else "")
    return (f"the data directory {d} (mode {mode:o}) holds files other users can read ({shown}): "
            f"chmod 700 {d}")


def shown_path(f: Path) -> str:
    """A file's name as text that can be printed and written as JSON: a name that is no UTF-8
    (copied from Windows in GBK) with its odd bytes replaced (its rejection crashed the run)."""
    return os.fsencode(f).decode("utf-8", "replace")


def _open(f: Path):
    if f.name.lower().endswith(".gz"):
        import gzip

        return gzip.open(f, "rb")
    return f.open("rb")


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def kafka_topic(name: str) -> str:
    """A Kafka topic name as Kafka takes it (ASCII letters, digits, ``.``, ``_``, ``-``; at most
    249), or a usage error saying so before any broker is asked."""
    if not _TOPIC.fullmatch(name or "") or name in (".", ".."):
        raise UsageError(f"{name!r} is no Kafka topic name: ASCII letters, digits, '.', '_' and "
                         "'-', at most 249")
    return name
