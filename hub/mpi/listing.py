"""The whole index for stewards: persons page by page, and every Patient's link as rows.

Both read the person projection (``projections.person``) in keyset order, one bounded query per
page or batch, so listing or exporting a region never holds it in memory:

- ``person_ids(person, after, limit, updated)``: person ids after ``after`` in id order, optionally
  only those whose last change falls in ``_lastUpdated`` bounds (``updated_bounds``);
- ``link_rows(person, batch)``: every Patient the index knows, with the person it belongs to now
  (through merges), its own person, the link's assurance and the decision that made it (who, a
  user or the matcher, the score, when), in Patient order.

Each page or batch is one read transaction of its own: a re-match committing meanwhile is never
blocked, and a reader sees each page as of one moment (a long export is not one snapshot).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from hub.core.fhirtime import parse_range

PREFIXES = ("eq", "ge", "gt", "le", "lt")
EXPORT_COLUMNS = ("patient", "person", "own_person", "assurance", "decided_by_type", "decided_by",
                  "manual", "score", "updated")


def _instant(us: int) -> str:
    """Microseconds since the epoch as the projection writes its times (UTC, six decimals)."""
    us = max(0, min(us, 253402300799_999999))
    dt = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{us % 1_000_000:06d}Z"


def updated_bounds(values: list[str]) -> list[tuple[str, str]]:
    """SQL comparisons (operator, instant) of ``_lastUpdated`` values such as ``ge2026-01-01``;
    ValueError when one is malformed."""
    out: list[tuple[str, str]] = []
    for v in values:
        prefix = v[:2] if v[:2] in PREFIXES else "eq"
        start, end = parse_range(v[2:] if v[:2] in PREFIXES else v)
        lo, hi = _instant(start), _instant(end)
        if prefix == "eq":
            out += [(">=", lo), ("<", hi)]
        elif prefix == "ge":
            out.append((">=", lo))
        elif prefix == "gt":
            out.append((">=", hi))
        elif prefix == "lt":
            out.append(("<", lo))
        else:  # le
            out.append(("<", hi))
    return out


def person_ids(person: Any, after: str = "", limit: int = 50,
               updated: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Up to ``limit`` person ids after ``after`` in id order (merged ones too: they answer as
    inactive Persons pointing at the survivor)."""
    where = ["id > ?"] + [f"updated {op} ?" for op, _ in updated]
    args = [after] + [v for _, v in updated] + [limit]
    with person.read() as c:
        c.execute(f"SELECT id FROM p_person WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", args)
        return [r[0] for r in c.fetchall()]


def count_persons(person: Any, updated: Sequence[tuple[str, str]] = ()) -> int:
    """How many persons a listing with these bounds holds (one counting read)."""
    where = ["1"] + [f"updated {op} ?" for op, _ in updated]
    with person.read() as c:
        c.execute(f"SELECT COUNT(*) FROM p_person WHERE {' AND '.join(where)}",
                  [v for _, v in updated])
        return c.fetchone()[0]


def person_updated(person: Any, c: Any, pid: str) -> str | None:
    row = person.person_row(c, pid)
    return None if row is None else row["updated"]


def within(value: str | None, updated: list[tuple[str, str]]) -> bool:
    """Whether an instant satisfies the bounds of ``updated_bounds``."""
    if value is None:
        return False
    return all(value >= v if op == ">=" else value < v for op, v in updated)


def link_rows(person: Any, batch: int = 5000) -> Iterator[dict]:
    """Every Patient's link (``EXPORT_COLUMNS``), in Patient order, read ``batch`` at a time."""
    last = ""
    while True:
        with person.read() as c:
            c.execute("SELECT patient, person, assurance, manual, score, decided_by, updated "
                      "FROM p_patient WHERE patient > ? ORDER BY patient LIMIT ?", (last, batch))
            rows = c.fetchall()
            survivors: dict[str, str] = {}
            out = []
            for patient, own, assurance, manual, score, decided_by, updated in rows:
                if own not in survivors:
                    survivors[own] = person.survivor(c, own)
                kind, _, name = (decided_by or "").partition(":")
                out.append({"patient": patient, "person": survivors[own], "own_person": own,
                            "assurance": assurance, "decided_by_type": kind or None,
                            "decided_by": name or None, "manual": bool(manual), "score": score,
                            "updated": updated})
        if not rows:
            return
        yield from out
        last = rows[-1][0]
