"""FHIR date, dateTime and instant values as UTC ranges (microseconds since the epoch).

A partial value stands for the whole period it names: ``2024`` is [2024-01-01, 2025-01-01).
Values with a time zone keep their meaning. Values without one (a ``birthDate``, a date-only
``effectiveDateTime``, a search for ``date=2024-01-15``) are read in the platform's zone,
``HUB_TIMEZONE`` (default ``+08:00``), as R4 search asks ("the server's local time zone"): a
clinician's "the 15th" is the local day, so a result taken at 07:00+08:00 on the 15th is found by
it, and one taken at 07:00+08:00 on the 16th is not (read as UTC days, both were the other way).
Everything is compared in UTC.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

log = logging.getLogger("hub.fhirtime")
ZONE = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$|^Z$")

_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_END_OF_TIME = 253402300800 * 1_000_000  # 10000-01-01T00:00:00Z in µs


@lru_cache(maxsize=1)
def local_zone() -> timezone:
    """The platform's zone (``HUB_TIMEZONE``), for values written without one; UTC, with a
    warning, when the setting is not an offset such as ``+08:00``."""
    name = os.environ.get("HUB_TIMEZONE", "+08:00").strip()
    if not ZONE.match(name):
        log.warning("HUB_TIMEZONE %r is not an offset like +08:00: times without a zone read as UTC",
                    name)
        return timezone.utc
    return _zone(name)


def local_offset() -> int:
    """The platform's zone as seconds east of UTC: a civil day of it in SQL or day numbers."""
    return int(local_zone().utcoffset(None).total_seconds())


def zone_name(tz: timezone | None = None) -> str:
    """``+08:00`` of a fixed-offset zone (``+00:00`` for UTC): what a read model records of the
    zone it read zone-less values in."""
    minutes = int((tz or local_zone()).utcoffset(None).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def zone_changed(built: str, model: str) -> str | None:
    """Why a read model whose rows read zone-less values in ``built`` answers by the old zone,
    and the rebuild that mends it; None when ``built`` is today's zone."""
    if built == zone_name():
        return None
    return (f"times without a zone were read in {built}, HUB_TIMEZONE is {zone_name()}: date "
            f"searches answer by the old zone until `hub projections rebuild {model}`")


def _zone(name: str) -> timezone:
    if name == "Z":
        return timezone.utc
    sign = 1 if name[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(name[1:3]), minutes=int(name[4:6])))


def _us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _next_year(d: datetime) -> datetime:
    return d.replace(year=d.year + 1)


def _next_month(d: datetime) -> datetime:
    return d.replace(year=d.year + (d.month == 12), month=d.month % 12 + 1)


def _start_and_step(g: dict, tz: timezone):
    """The first instant a partial value names, and how far its period reaches."""
    y = int(g["y"])
    if g["m"] is None:
        return datetime(y, 1, 1, tzinfo=tz), _next_year
    if g["d"] is None:
        return datetime(y, int(g["m"]), 1, tzinfo=tz), _next_month
    day = datetime(y, int(g["m"]), int(g["d"]), tzinfo=tz)
    if g["H"] is None:
        return day, timedelta(days=1)
    start = day.replace(hour=int(g["H"]), minute=int(g["M"]))
    if g["S"] is None:
        return start, timedelta(minutes=1)
    second = int(g["S"])
    if second > 60:
        raise ValueError(f"second {second} is out of range")
    # a leap second (23:59:60, which FHIR's regex allows and Python's datetime does not) is
    # read as the second after 23:59:59: the instant POSIX time gives it
    start = start.replace(second=min(second, 59)) + timedelta(seconds=max(0, second - 59))
    if not g["f"]:
        return start, timedelta(seconds=1)
    # any number of fractional digits (R4's dateTime allows them): the digits past the
    # microsecond, which a datetime cannot hold, are cut, and such a value's period is the
    # microsecond it falls in
    frac = g["f"][1:]
    start = start.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return start, timedelta(microseconds=10 ** max(0, 6 - len(frac)))


# Full date-times with seconds and a zone (every instant, most dateTimes): parsed in C.
_FULL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.(\d{1,6}))?(?:Z|[+-]\d{2}:\d{2})")


def parse_range(value: str, zone: timezone | None = None) -> tuple[int, int]:
    """[start, end) of a FHIR date/dateTime/instant in µs since the epoch; ValueError if malformed.

    A value without a zone is read in ``zone``, by default the platform's (``local_zone``)."""
    m = _FULL.fullmatch(value)
    if m is not None:
        try:
            start = _us(datetime.fromisoformat(value))
        except ValueError:
            pass  # e.g. second 60: the general path below says why
        else:
            frac = m.group(1)
            return start, start + (10 ** (6 - len(frac)) if frac else 1_000_000)
    m = _RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a FHIR date, dateTime or instant")
    g = m.groupdict()
    tz = _zone(g["tz"]) if g["tz"] else (zone or local_zone())
    start, step = _start_and_step(g, tz)
    try:
        end = start + step if isinstance(step, timedelta) else step(start)
    except (OverflowError, ValueError):  # the end of 9999 (HIS feeds' "no end"): the end of time
        return _us(start), _END_OF_TIME
    return _us(start), _us(end)


def http_date(instant: str) -> str:
    """RFC 9110 date for Last-Modified from a FHIR instant."""
    start, _ = parse_range(instant)
    dt = _EPOCH + timedelta(microseconds=start)
    return dt.strftime("%a, %d %b %Y %H:%M:%S GMT")
