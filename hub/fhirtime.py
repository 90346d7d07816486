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


def _us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_range(value: str) -> tuple[int, int]:
    """[start, end) of a FHIR date/dateTime/instant in µs since the epoch; ValueError if malformed."""
    m = _RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a FHIR date, dateTime or instant")
    g = m.groupdict()
    tz = timezone.utc
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hh, mm = int(g["tz"][1:3]), int(g["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    y = int(g["y"])
    if g["m"] is None:
        start, end = datetime(y, 1, 1, tzinfo=tz), datetime(y + 1, 1, 1, tzinfo=tz)
    elif g["d"] is None:
        mo = int(g["m"])
        start = datetime(y, mo, 1, tzinfo=tz)
        end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=tz)
    else:
        day = datetime(y, int(g["m"]), int(g["d"]), tzinfo=tz)
        if g["H"] is None:
            start, end = day, day + timedelta(days=1)
        else:
            start = day.replace(hour=int(g["H"]), minute=int(g["M"]))
            if g["S"] is None:
                end = start + timedelta(minutes=1)
            else:
                start = start.replace(second=int(g["S"]))
                if g["f"]:
                    frac = g["f"][1:]
                    start = start.replace(microsecond=int(frac[:6].ljust(6, "0")))
                    end = start + timedelta(microseconds=10 ** max(0, 6 - len(frac)))
                else:
                    end = start + timedelta(seconds=1)
    return _us(start), _us(end)


def http_date(instant: str) -> str:
    """RFC 9110 date for Last-Modified from a FHIR instant."""
    start, _ = parse_range(instant)
    dt = _EPOCH + timedelta(microseconds=start)
    return dt.strftime("%a, %d %b %Y %H:%M:%S GMT")
