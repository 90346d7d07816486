"""Intake counts: the resource versions taken in, per day, institution, feed and resource type.

What the operators' overview plots (intake per institution and feed over time) without scanning
the log: a row per (day, institution, feed, type) in ``$HUB_DATA_DIR/intake.sqlite``, its count
raised as events are applied, in the transaction that records the position (so the counts are
exactly the log up to it; a rebuild gives them again). The institution and feed are those the
event's source names (the connector's, or the token's institution), ``-`` when it names none. The
day is the civil day in the platform's zone (``HUB_TIMEZONE``, as the quality counts) of the
version's ``lastUpdated``; the model records that zone and is stale under another until rebuilt.
A day's rows are few (institutions × feeds × types), so the overview's two weeks are read in well
under a millisecond whatever the log's size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC
from hub.core.fhirtime import local_offset
from projections.sqlite_model import SQLiteReadModel

NAME = "intake"
UNNAMED = "-"
BY = {"institution": "institution", "feed": "feed", "type": "rtype"}

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS i_meta (key TEXT PRIMARY KEY, value)",
    "INSERT OR IGNORE INTO i_meta (key, value) VALUES ('writer', 0)",
    # day: days since 1970-01-01 in the platform's zone
    "CREATE TABLE IF NOT EXISTS i_count (day INTEGER NOT NULL, institution TEXT NOT NULL, "
    "feed TEXT NOT NULL, rtype TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (day, institution, feed, rtype)) WITHOUT ROWID",
]


def day_of(last_updated: str) -> int:
    """The day number, in the platform's zone, of an instant written as the store writes it."""
    stamp = datetime.fromisoformat(last_updated.replace("Z", "+00:00")).timestamp()
    return int((stamp + local_offset()) // 86400)


class IntakeCounts(SQLiteReadModel):
    name = NAME
    meta_table = "i_meta"  # its 'writer' row: the write lock
    schema = SCHEMA
    tables = ("i_count",)
    zoned = True  # its rows hold days of the zone it was built in
    unrecorded_zone = "+08:00"  # the one zone it had before it recorded its own

    def apply_new(self, c: Any, notifications: list[Notification]) -> None:
        counts: Counter[tuple[int, str, str, str]] = Counter()
        for n in notifications:
            if n.topic not in KIND_OF_TOPIC:
                continue  # not a resource's version (identity decisions)
            try:
                h = orjson.loads(n.state.partition(b"\n")[0])
                day = day_of(h["lastUpdated"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            source = h.get("source") or {}
            counts[(day, str(source.get("institution") or UNNAMED)[:200],
                    str(source.get("feed") or UNNAMED)[:200], str(h.get("type") or UNNAMED))] += 1
        if counts:
            c.executemany(
                "INSERT INTO i_count (day, institution, feed, rtype, n) VALUES (?,?,?,?,?) "
                "ON CONFLICT (day, institution, feed, rtype) DO UPDATE SET n = n + excluded.n",
                [(*key, n) for key, n in counts.items()])

    def per_day(self, since_day: int, by: str = "type",
                institution: str | None = None) -> list[tuple[int, str, int]]:
        """(day, value of ``by``, versions) from ``since_day`` on, ``by`` one of ``BY``; only
        ``institution``'s when it is given."""
        column = BY[by]
        sql = f"SELECT day, {column}, SUM(n) FROM i_count WHERE day >= ?"
        args: list[Any] = [since_day]
        if institution:
            sql += " AND institution = ?"
            args.append(institution)
        sql += f" GROUP BY day, {column} ORDER BY day"
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, args)
            return [(int(r[0]), str(r[1]), int(r[2])) for r in c.fetchall()]

    def institutions(self) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT DISTINCT institution FROM i_count ORDER BY institution")
            return [r[0] for r in c.fetchall()]

    def dump(self) -> dict[str, Sequence[tuple]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT day, institution, feed, rtype, n FROM i_count "
                      "ORDER BY day, institution, feed, rtype")
            return {"i_count": [tuple(r) for r in c.fetchall()]}
