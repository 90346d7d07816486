"""The whole index for stewards: persons page by page, and every Patient's link as rows.

Both read the person projection (``projections.person``) in keyset order, one bounded query per
page or batch, so listing or exporting a region never holds it in memory:

- ``person_ids(person, after, limit, updated)``: person ids after ``after`` in id order, optionally
  only those whose last change falls in ``_lastUpdated`` bounds (``updated_bounds``);
  ``live_person_ids`` leaves out those ``gone`` with their Patients (every one deleted);
- ``link_rows(person, batch)``: every Patient the index knows, with the person it belongs to now
  (through merges), its own person, the link's assurance and the decision that made it (who, a
  user or the matcher, the score, when), in Patient order.

Each page or batch is one read transaction of its own: a re-match committing meanwhile is never
blocked, and a reader sees each page as of one moment (a long export is not one snapshot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

from hub.core.events import KIND_OF_TOPIC
from hub.core.fhirtime import parse_range

PREFIXES = ("eq", "ge", "gt", "le", "lt")
OTHER_PREFIXES = ("ne", "sa", "eb", "ap")  # R4's other date prefixes, which a listing does not take
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
        if v[:2] in OTHER_PREFIXES:
            raise ValueError(f"the prefix {v[:2]!r} is not supported here (only "
                             f"{', '.join(PREFIXES)})")
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


def live_person_ids(person: Any, store: Any, after: str = "", limit: int = 50,
                    updated: Sequence[tuple[str, str]] = ()) -> list[str]:
    """As ``person_ids``, as a read of each person answers it: those ``gone`` with their
    Patients (every one deleted) left out, ``updated`` judged on when the view was last updated
    (``updated_of``: a Patient's change changes its person). A page holds ``limit`` persons
    while there are that many more."""
    changed = _changed_persons(person, store, updated) or []
    out: list[str] = []
    while len(out) < limit:
        want = limit - len(out)
        batch = person_ids(person, after, want, updated)  # their events within the bounds
        horizon = batch[-1] if len(batch) == want else None  # None: no more of those
        # and those whose Patients changed since the lower bound, up to the same id
        more = [p for p in changed if p > after and (horizon is None or p <= horizon)]
        out += _answering(person, store, sorted(set(batch) | set(more)), updated)
        if horizon is None:
            break
        after = horizon
    return out[:limit]


def _changed_persons(person: Any, store: Any, updated: Sequence[tuple[str, str]]
                     ) -> list[str] | None:
    """With a lower ``_lastUpdated`` bound: the persons (in id order) of the Patients whose
    current version (or deletion) is that recent; None without one."""
    lower = [v for op, v in updated if op == ">="]
    if not lower:
        return None
    rids = store.current_since("Patient", max(parse_range(v)[0] for v in lower))
    with person.read() as c:
        return sorted({p for p in (person.person_of(c, f"Patient/{r}") for r in rids) if p})


def _answering(person: Any, store: Any, pids: list[str],
               updated: Sequence[tuple[str, str]]) -> list[str]:
    """Of ``pids``, those a listing shows: not gone, and last updated within ``updated``."""
    pids = [p for p in pids if p not in gone(person, store, pids)]
    if not updated:
        return pids
    when = updated_of(person, store, pids)
    return [p for p in pids if within(when.get(p), list(updated))]


def count_persons(person: Any, updated: Sequence[tuple[str, str]] = (),
                  store: Any = None) -> int:
    """How many persons a listing with these bounds holds: one counting read without
    ``store``; with it, as the listing answers (``live_person_ids``), those gone with their
    Patients left out (found through the deleted Patients) and, with bounds, each person's
    time read (a scan)."""
    if store is not None and updated:
        total, after = 0, ""
        while True:
            page = live_person_ids(person, store, after, 1000, updated)
            total += len(page)
            if len(page) < 1000:
                return total
            after = page[-1]
    where = ["1"] + [f"updated {op} ?" for op, _ in updated]
    with person.read() as c:
        c.execute(f"SELECT COUNT(*) FROM p_person WHERE {' AND '.join(where)}",
                  [v for _, v in updated])
        total = c.fetchone()[0]
        if store is None:
            return total
        deleted = store.deleted_ids("Patient")
        candidates = {p for p in (person.person_of(c, f"Patient/{rid}") for rid in deleted) if p}
    return total - len(gone(person, store, sorted(candidates)))


def gone(person: Any, store: Any, pids: Sequence[str]) -> set[str]:
    """Of ``pids``, the persons every Patient of which was deleted: a read of one answers 410
    Gone, and a search or listing leaves them out (a merged person, or one left with no
    Patient by an unlink, still answers, and stays in)."""
    links: dict[str, list[str]] = {}
    with person.read() as c:
        for pid in pids:
            row = person.person_row(c, pid)
            if row is not None and row["merged_into"] is None:
                rids = [x.split("/", 1)[1] for x in person.patients(c, pid)]
                if rids:
                    links[pid] = rids
    if not links:
        return set()
    rids = sorted({r for rs in links.values() for r in rs})
    current = {r for i in range(0, len(rids), 500)
               for r in store.current_ids("Patient", rids[i:i + 500])}
    return {pid for pid, rids in links.items() if not current.intersection(rids)}


def newest(instants: Sequence[str | None]) -> str:
    """The latest of FHIR instants (compared as times, whatever their zones)."""
    return max((x for x in instants if x), key=lambda x: parse_range(x)[0])


def deleted_at(store: Any, rids: Sequence[str],
               shown: Callable[[str, str, bytes], bool] | None = None) -> dict[str, str]:
    """When each deleted Patient of ``rids`` was deleted (its deletion's ``lastUpdated``): a
    delete changes its person's view as an update does (its link and identifiers go). With
    ``shown`` (type, id, resource JSON), only those whose last version the caller was shown.
    One read per id: for the few Patients not current."""
    out: dict[str, str] = {}
    for rid in rids:
        last = store.latest("Patient", rid)
        if last is None or KIND_OF_TOPIC.get(last.topic) != "deleted":
            continue
        if shown is not None:
            before = store.version("Patient", rid, last.originator_version - 1)
            if before is None or not shown("Patient", rid, before.state.partition(b"\n")[2]):
                continue
        when = orjson.loads(last.state.partition(b"\n")[0]).get("lastUpdated")
        if isinstance(when, str):
            out[rid] = when
    return out


def updated_of(person: Any, store: Any, pids: Sequence[str]) -> dict[str, str]:
    """When each person's view was last updated: its last identity event, the newest current
    version of its Patients or the deletion of one, whichever is later (as a read of it
    says)."""
    out: dict[str, str] = {}
    with person.read() as c:
        rows = {pid: (person.person_row(c, pid), person.patients(c, pid)) for pid in pids}
    for pid, (row, refs) in rows.items():
        if row is None:
            continue
        if row["merged_into"] is not None:
            out[pid] = row["updated"]
            continue
        rids = [r.split("/", 1)[1] for r in refs]
        found = store.latest_many("Patient", rids)
        out[pid] = newest([row["updated"], *(
            orjson.loads(state.partition(b"\n")[0]).get("lastUpdated")
            for _, state in found.values()),
            *deleted_at(store, [r for r in rids if r not in found]).values()])
    return out


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
