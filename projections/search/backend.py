"""What the API asks of a search backend: a search plan (``projections.search.query.Query``) in,
a page of matches out.

The planner (query.py) is independent of storage; a backend answers its plans. The SQLite one
(``sqlite_query.SQLiteSearch`` over ``sqlite_index.SQLiteSearchIndex``) is the one there is;
``projections.search.backends.open_backend`` is the one place the API's backend is built, so another (PostgreSQL, an
external engine) replaces it there.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import orjson

from hub.core.errors import bad_request
from projections.search.query import Include, Query

# how many times ``:iterate`` follows what it found: a hospital's Location tree (campus,
# building, floor, ward, room, bed) or a chain of referrals is far shallower; 4 cut them
INCLUDE_DEPTH = 32


@dataclass
class Row:
    """A match: its type, id, and the backend's key for it (includes start from it); ``key``:
    a page's row, its cursor values (``cursor_after``), where the backend's cursors are keyset
    cursors."""

    rtype: str
    rid: str
    pk: int
    key: list | None = field(default=None, compare=False, repr=False)


@dataclass
class Page:
    """One page of matches with the keyset cursors of the pages beside it."""

    rows: list[Row]
    next_cursor: str | None
    prev_cursor: str | None
    total: int | None
    stale: bool = False  # read from an index that had not caught up with the store


@runtime_checkable
class SearchBackend(Protocol):
    def page(self, q: Query, count: int, with_total: bool | str) -> Page:
        """One page of ``q``'s matches (``count`` of them at most, from ``q.cursor``);
        ``with_total``: False, True or "accurate" (exact), "estimate", or "if-cheap" (exact
        where cheap, else no total)."""
        ...

    def included(self, matches: list[Row], include: list[Include], revinclude: list[Include],
                 rounds: int = INCLUDE_DEPTH, base: str | None = None) -> list[Row]:
        """What ``_include``/``_revinclude`` add to a page (not those already in it); ``base``:
        this server's base URL (absolute references on it are local)."""
        ...

    def match_ids(self, q: Query, limit: int = 1000) -> list[str]:
        """Ids of ``q``'s matches, for conditional interactions."""
        ...

    def count(self, q: Query) -> int:
        """How many resources match ``q``."""
        ...


def encode_cursor(direction: str, values: list) -> str:
    """A keyset cursor: the direction (``n`` next, ``p`` previous) and the edge row's sort values."""
    return base64.urlsafe_b64encode(orjson.dumps([direction, *values])).decode().rstrip("=")


def cursor_after(row: Row) -> str | None:
    """The cursor of the page after ``row`` (a page's row of a keyset backend), so a page read
    past its end can end at a row of its own choosing: None where the row carries no key."""
    return None if row.key is None else encode_cursor("n", row.key)


def decode_cursor(cursor: str, n_sort: int) -> tuple[str, list]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        assert isinstance(data, list) and data[0] in ("n", "p") and len(data) == n_sort + 2
        assert type(data[-1]) is int
        return data[0], data[1:]
    except Exception:  # noqa: BLE001 - anything malformed is the client's
        raise bad_request("_cursor is not a page cursor of this server (or of another _sort)") \
            from None
