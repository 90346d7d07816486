"""The source's own order of what a mapper writes, so older data never overwrites newer.

Feeds do not arrive in order: a connector retries, a hospital re-sends a day's messages, a document
version 1 comes in after version 2. Each resource of a conversion is stamped (``meta.extension``
``source-order``) with what the source says about its own order:

* ``series`` + ``version``: a versioned unit, e.g. a CDA document's setId and versionNumber. Within
  one series the version decides, whatever the times say;
* ``time``: when the source recorded the change (HL7 v2 EVN-2, else MSH-7), a FHIR dateTime with
  its offset.

The hub compares the stamp of a write with the stamp of the stored version (``older_than``) and
leaves the stored version in place when the write is older, saying so in the write's outcome. A
delete from a feed (a tabular row's withdrawn diagnosis, a tombstone) has no resource: its stamp
rides on its Bundle entry's ``request.extension``, the hub refuses it as it refuses an older write,
and keeps it with the deletion, so a write older than the deletion does not bring the resource back. A
resource without a stamp on either side is written as before. The stamp is not part of a
version's content (``hub.resource.content_hash`` ignores it): the same content from a later message
makes no new version.

Pure, standard library only (the hub imports it; it imports nothing of the hub).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

URL = "https://fhir-region-hub.example/StructureDefinition/source-order"
DEFAULT_OFFSET = timezone(timedelta(hours=8))  # a time the source gave without one: China
# how far a stamp's time may be ahead of the hub's clock (a source's clock running fast): one
# further ahead is refused, since every write of the record after it would read as older
AHEAD = timedelta(hours=1)
# the highest version of a series a stamp may carry (a CDA versionNumber, the extension's
# ``version``). Within a series the version decides whatever the times say, so one stamped far
# beyond the set's real numbering (999999999) left every later version of the set older, its facts
# lost. Real sets count revisions of one document (1, 2, 3: tens at most); a bound needs no stored
# state, so a document or a write is judged alone, at intake, before anything is kept
MAX_VERSION = 100_000

__all__ = ["AHEAD", "MAX_VERSION", "URL", "Order", "ahead", "from_extensions", "invalid",
           "older_than", "order_of", "stamp", "strip", "strip_all", "version_number",
           "version_problem"]


@dataclass(frozen=True, slots=True)
class Order:
    time: str | None = None  # FHIR dateTime
    series: str | None = None
    version: int | None = None
    # why the extension's version part is no version (not a valueInteger), for ``invalid``
    malformed: str | None = field(default=None, compare=False)

    def __bool__(self) -> bool:
        return self.time is not None or (self.series is not None and self.version is not None)

    def extension(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.time is not None:
            parts.append({"url": "time", "valueDateTime": self.time})
        if self.series is not None and self.version is not None:
            parts.append({"url": "series", "valueString": self.series})
            parts.append({"url": "version", "valueInteger": self.version})
        return {"url": URL, "extension": parts}


def stamp(resources: list[dict[str, Any]], order: Order) -> None:
    """Put ``order`` on each resource's ``meta`` (replacing an earlier stamp)."""
    if not order:
        return
    ext = order.extension()
    for r in resources:
        meta = r.setdefault("meta", {})
        others = [e for e in meta.get("extension") or () if not (isinstance(e, dict) and e.get("url") == URL)]
        meta["extension"] = [*others, ext]


def strip(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without the stamp (a shallow copy when there was one)."""
    meta = d.get("meta")
    exts = meta.get("extension") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(exts, list) \
            or not any(isinstance(e, dict) and e.get("url") == URL for e in exts):
        return d
    rest = [e for e in exts if not (isinstance(e, dict) and e.get("url") == URL)]
    meta = {k: v for k, v in meta.items() if k != "extension"}
    if rest:
        meta["extension"] = rest
    out = dict(d)
    if meta:
        out["meta"] = meta
    else:
        del out["meta"]
    return out


def order_of(d: Any) -> Order | None:
    """The stamp of a resource (a dict), or None."""
    meta = d.get("meta") if isinstance(d, dict) else None
    return from_extensions(meta.get("extension") if isinstance(meta, dict) else None)


def from_extensions(extensions: Any) -> Order | None:
    """The stamp among ``extensions`` (a resource's ``meta.extension``, or a DELETE entry's
    ``request.extension``: a delete carries its source's order there, having no resource), or
    None."""
    for e in extensions if isinstance(extensions, list) else ():
        if isinstance(e, dict) and e.get("url") == URL:
            # parts of another shape than the extension's are no parts (a record from a queue
            # or a request is anyone's JSON): skipped, not a crash
            nested = e.get("extension")
            parts = {p["url"]: p for p in nested if isinstance(p, dict) and isinstance(p.get("url"), str)} \
                if isinstance(nested, list) else {}
            time = parts.get("time", {}).get("valueDateTime")
            series = parts.get("series", {}).get("valueString")
            version = parts.get("version", {}).get("valueInteger")
            ok = isinstance(version, int) and not isinstance(version, bool)
            # a version part that is no integer would leave the versions undecided and let
            # the times (equal in one set, often) decide: refused on a write (``invalid``)
            malformed = None if ok or "version" not in parts else \
                "is no valueInteger: " + _shown(parts["version"])
            return Order(time if isinstance(time, str) else None,
                         series if isinstance(series, str) else None,
                         version if ok else None, malformed)
    return None


_DT = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
                 r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def instant(value: str | None) -> datetime | None:
    """A FHIR date/dateTime as an aware datetime (the start of its period; no offset: +08:00)."""
    m = _DT.match(value or "")
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    tz = DEFAULT_OFFSET
    if off == "Z":
        tz = timezone.utc
    elif off:
        sign = -1 if off[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[4:6])))
    try:
        return datetime(int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0),
                        int((frac or "0")[:6].ljust(6, "0")), tzinfo=tz)
    except ValueError:
        return None


def older_than(new: Order | None, stored: Order | None) -> str | None:
    """Why a write stamped ``new`` must not replace a version stamped ``stored`` (it is older), or
    None when it may. Same series: the versions decide. Otherwise the times, when both have one."""
    if not new or not stored:
        return None
    if new.series is not None and new.series == stored.series \
            and new.version is not None and stored.version is not None:
        if new.version < stored.version:
            return (f"version {new.version} is older than the stored version {stored.version} "
                    "of the same document set")
        return None
    t_new, t_stored = instant(new.time), instant(stored.time)
    if t_new is not None and t_stored is not None and t_new < t_stored:
        return f"the source time {new.time} is older than the stored state's {stored.time}"
    return None


def ahead(order: Order | None, now: datetime) -> str | None:
    """Why a stamp must be refused: its time is later than ``now`` by more than ``AHEAD`` (a
    write stamped 2099 would leave every later correction of the record older than it,
    unwritten). None when it is not."""
    t = instant(order.time) if order else None
    if t is None or t <= now + AHEAD:
        return None
    hours = int(AHEAD.total_seconds() // 3600)
    return (f"the source-order stamp ({URL}) time {order.time if order else ''} is later than "
            f"the hub's clock by more than {hours} hour{'s' if hours != 1 else ''}")


_VERSION = re.compile(r"\+?[0-9]+")


def version_number(text: str | None) -> int | None:
    """A CDA ``versionNumber/@value`` (an INT) as a version: a positive integer up to
    ``MAX_VERSION``, spaces around it allowed (xs:int collapses them); None for anything else,
    which ``version_problem`` words."""
    t = (text or "").strip()
    if not _VERSION.fullmatch(t) or len(t) > 12:
        return None
    n = int(t)
    return n if 1 <= n <= MAX_VERSION else None


def version_problem(text: str) -> str | None:
    """Why ``text`` (a versionNumber's value that is given) is no version, or None."""
    if version_number(text) is not None:
        return None
    t = text.strip()
    if _VERSION.fullmatch(t):
        return (f"version {_cut(t)} is not between 1 and {MAX_VERSION} (a set's versions count "
                "its revisions: one this high would leave every later version of the set older)")
    return f"version {_cut(t)!r} is not a positive integer"


def invalid(order: Order | None) -> str | None:
    """Why a write's stamp must be refused for its version: a version part that is no integer,
    or one outside 1 to ``MAX_VERSION`` (stored, it left every later version of its series older,
    unwritten). None when it is not."""
    if order is None:
        return None
    if order.malformed:
        return f"the source-order stamp ({URL}) version {order.malformed}"
    if order.version is not None and not 1 <= order.version <= MAX_VERSION:
        return (f"the source-order stamp ({URL}) version {_cut(str(order.version))} is not "
                f"between 1 and {MAX_VERSION}")
    return None


def _cut(t: str) -> str:
    return t if len(t) <= 40 else t[:40] + "…"


def _shown(part: dict) -> str:
    value = next(((k, v) for k, v in part.items() if k.startswith("value")), None)
    return "none" if value is None else f"{value[0]} {_cut(repr(value[1]))}"


def strip_all(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without the stamp, on itself and on the resources of its Bundle entries (copies only what
    changes). The hub validates a document without the stamps it made itself: they add four elements
    to every resource, a third more model objects for the validator, and say nothing about the data."""
    d = strip(d)
    entries = d.get("entry") if d.get("resourceType") == "Bundle" else None
    if not isinstance(entries, list):
        return d
    out = []
    changed = False
    for e in entries:
        r = e.get("resource") if isinstance(e, dict) else None
        if isinstance(r, dict):
            r2 = strip(r)
            if r2 is not r:
                e = {**e, "resource": r2}
                changed = True
        out.append(e)
    return {**d, "entry": out} if changed else d
