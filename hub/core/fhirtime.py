"""FHIR date, dateTime and instant values as UTC ranges (microseconds since the epoch).

A partial value stands for the whole period it names: ``2024`` is [2024-01-01, 2025-01-01).
Values without a time zone are read as UTC; values with one keep their meaning and are compared
in UTC. Used by history ``_since``/``_at`` now and by date search later.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d{1,9})?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_END_OF_TIME = 253402300800 * 1_000_000  # 10000-01-01T00:00:00Z in µs


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
    start = start.replace(second=int(g["S"]))
    if not g["f"]:
        return start, timedelta(seconds=1)
    frac = g["f"][1:]
    start = start.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return start, timedelta(microseconds=10 ** max(0, 6 - len(frac)))


# Full date-times with seconds and a zone (every instant, most dateTimes): parsed in C.
_FULL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.(\d{1,6}))?(?:Z|[+-]\d{2}:\d{2})")


def parse_range(value: str) -> tuple[int, int]:
    """[start, end) of a FHIR date/dateTime/instant in µs since the epoch; ValueError if malformed."""
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
    tz = timezone.utc
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hh, mm = int(g["tz"][1:3]), int(g["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
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
