"""Named transforms: one cell of a HIS row -> one FHIR primitive (or ``None`` = leave the field out).

Each transform either returns a value that is valid FHIR JSON for its kind, or raises ``BadValue``
with a short reason (never echoing the value: cells may hold personal data). The kind each one
produces (``s`` string-like, ``i`` integer, ``d`` decimal, ``b`` boolean) is checked against the
target element when a mapping file is loaded.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from fhir_mapping import numbers
from fhir_mapping.identifiers import RESIDENT_ID_SYSTEM, is_filler_text, key_problem
from hub.core.errors import HubError
from terminology import resident_id


class BadValue(HubError, ValueError):
    error_code = "invalid"


# FHIR string: [ \r\n\t\S]+ ; other whitespace (vertical tab, form feed, U+3000 …) becomes a space.
_ODD_SPACE = re.compile(r"[^\S \r\n\t]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WS = re.compile(r"\s+")


def text(v: Any) -> str | None:
    """A cell as trimmed text; ``None`` for empty or missing. Lists and objects are refused."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, Decimal)):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if not isinstance(v, str):
        raise BadValue("is not a scalar value")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise BadValue("is not valid Unicode text") from None
    v = _CONTROL.sub("", _ODD_SPACE.sub(" ", v)).strip()
    return v or None


def t_string(v: Any, args: dict, ctx: Any) -> str | None:
    s = text(v)
    if s is not None and args.get("max_length") and len(s) > args["max_length"]:
        raise BadValue(f"is longer than {args['max_length']} characters")
    if s is not None and args.get("fillers") == "skip" and is_filler_text(s):
        # a cell that fills the field and says nothing ("-", 无, 不详): no phone number "-"
        ctx.finding("warning", "tabular.value.filler", f"column {ctx.column} holds a filler: "
                    "left out")
        return None
    return s


def t_code(v: Any, args: dict, ctx: Any) -> str | None:
    s = text(v)
    return None if s is None else _WS.sub(" ", s)


def t_integer(v: Any, args: dict, ctx: Any) -> int | None:
    if isinstance(v, bool):
        raise BadValue("is not an integer")
    if isinstance(v, int):
        n = v
    else:
        s = text(v)
        if s is None:
            return None
        try:
            d = Decimal(s)
        except InvalidOperation:
            raise BadValue("is not an integer") from None
        if not d.is_finite() or d != d.to_integral_value():
            raise BadValue("is not an integer")
        n = int(d)
    if not -2147483648 <= n <= 2147483647:
        raise BadValue("is outside the 32-bit integer range of FHIR")
    return n


def decimal_value(v: Any) -> Any:
    """A JSON number that keeps the written precision (``1.50`` stays ``1.50``): a float where the
    float writes back identically, else an ``orjson.Fragment`` of the exact text."""
    if isinstance(v, bool):
        raise BadValue("is not a number")
    if isinstance(v, int):
        d = Decimal(v)
    elif isinstance(v, float):
        d = Decimal(repr(v))
    else:
        s = text(v)
        if s is None:
            return None
        if not s.isascii():  # other scripts' digits (١٢٣), which Decimal reads, are no number
            raise BadValue("is not a number")
        try:
            d = Decimal(s)
        except InvalidOperation:
            raise BadValue("is not a number") from None
    if not d.is_finite():
        raise BadValue("is not a finite number")
    if d.adjusted() > 20 or (d and d.adjusted() < -20) or len(d.as_tuple().digits) > 28:
        raise BadValue("is out of the range this hub accepts for decimals")
    if isinstance(v, str) and "e" in v.lower():
        # written with an exponent (5.6e2: two digits, not 560's three): kept as written, as
        # FHIR's decimal allows and the other mappers keep it
        kept = numbers.decimal(text(v), exponent=True)
        if isinstance(kept, orjson.Fragment):
            return kept
    s = format(d, "f")
    if s.startswith("-") and d == 0:
        s = s[1:]
    if "." not in s and abs(int(s)) < 2**53:
        return int(s)
    f = float(s)
    if "." in s and repr(f) == s:
        return f
    return orjson.Fragment(s.encode())


def t_decimal(v: Any, args: dict, ctx: Any) -> Any:
    return decimal_value(v)


_TRUE = {"1", "y", "yes", "true", "t", "是", "有"}
_FALSE = {"0", "n", "no", "false", "f", "否", "无"}


def t_boolean(v: Any, args: dict, ctx: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    s = text(v)
    if s is None:
        return None
    s = s.lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise BadValue("is not a yes/no value")


# Formats as HIS exports write them, in the notation mapping files use.
_D = r"(?P<y>\d{4})"
_DATE_RE = {
    "YYYYMMDD": re.compile(_D + r"(?P<m>\d{2})(?P<d>\d{2})"),
    "YYYY-MM-DD": re.compile(_D + r"-(?P<m>\d{2})-(?P<d>\d{2})"),
    "YYYY/MM/DD": re.compile(_D + r"/(?P<m>\d{1,2})/(?P<d>\d{1,2})"),
}
_OFFSET = r"(?P<z>Z|[+-]\d{2}:?\d{2})?"
_FRAC = r"(?:\.(?P<f>\d{1,9}))?"
_DATETIME_RE = {
    # 'YYYY-MM-DD HH:MM:SS' also takes ISO 'T' (what the database poller writes) and fractions
    "YYYY-MM-DD HH:MM:SS": re.compile(_D + r"-(?P<m>\d{2})-(?P<d>\d{2})[ T](?P<H>\d{2}):(?P<M>\d{2})"
                                      r"(?::(?P<S>\d{2})" + _FRAC + ")?" + _OFFSET),
    "YYYYMMDDHHMMSS": re.compile(_D + r"(?P<m>\d{2})(?P<d>\d{2})(?P<H>\d{2})(?P<M>\d{2})(?P<S>\d{2})?"
                                 + _OFFSET),
    "YYYY/MM/DD HH:MM:SS": re.compile(_D + r"/(?P<m>\d{1,2})/(?P<d>\d{1,2}) (?P<H>\d{1,2}):(?P<M>\d{2})"
                                      r"(?::(?P<S>\d{2}))?"),
}
DATE_FORMATS = tuple(_DATE_RE)
DATETIME_FORMATS = tuple(_DATETIME_RE)


def _date(m: re.Match) -> dt.date:
    try:
        d = dt.date(int(m["y"]), int(m["m"]), int(m["d"]))
    except ValueError:
        raise BadValue("is not a real calendar date") from None
    if d.year < 1800:
        raise BadValue("is before 1800")
    return d


def _formats(args: dict, known: dict) -> list[str]:
    f = args.get("format")
    return list(known) if f is None else [f] if isinstance(f, str) else list(f)


def t_date(v: Any, args: dict, ctx: Any) -> str | None:
    s = text(v)
    if s is None:
        return None
    for name in _formats(args, _DATE_RE):
        m = _DATE_RE[name].fullmatch(s)
        if m:
            return _date(m).isoformat()
    # a date-time where a date is expected (a DATETIME column holding midnight): keep the date,
    # the date of the mapping's zone when the value names another (a timestamptz read in UTC:
    # 1980-05-01 00:00+08 came as 1980-04-30T16:00:00+00:00, a birth date a day early)
    for name in _DATETIME_RE:
        m = _DATETIME_RE[name].fullmatch(s)
        if m:
            zone = m.groupdict().get("z")
            if zone:
                stamp = t_datetime(v, {}, ctx)
                assert stamp is not None  # the same value, read as a date-time
                local = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(
                    _zone(ctx.timezone))
                return local.date().isoformat()
            return _date(m).isoformat()
    raise BadValue(f"is not a date in the format {' or '.join(_formats(args, _DATE_RE))}")


def t_datetime(v: Any, args: dict, ctx: Any) -> str | None:
    """A local date-time; the offset the source gave is kept, else the mapping's ``timezone``
    (+08:00) is written. A bare date stays a date (FHIR dateTime allows it)."""
    s = text(v)
    if s is None:
        return None
    for name in _formats(args, _DATETIME_RE):
        m = _DATETIME_RE[name].fullmatch(s)
        if not m:
            continue
        day = _date(m)
        gd = m.groupdict()
        hh, mi, ss = int(gd["H"]), int(gd["M"]), int(gd.get("S") or 0)
        frac = gd.get("f") or ""
        if hh > 23 or mi > 59 or ss > 59:
            raise BadValue("is not a real time of day")
        off = gd.get("z") or ctx.timezone
        if off != "Z":
            off = off if ":" in off else off[:3] + ":" + off[3:]
            if int(off[1:3]) > 14 or int(off[4:6]) > 59:
                raise BadValue("has an impossible UTC offset")
        out = f"{day.isoformat()}T{hh:02d}:{mi:02d}:{ss:02d}"
        return out + ("." + frac if frac else "") + off
    for name in _DATE_RE:
        m = _DATE_RE[name].fullmatch(s)
        if m:
            return _date(m).isoformat()
    raise BadValue(f"is not a date-time in the format {' or '.join(_formats(args, _DATETIME_RE))}")


def _zone(offset: str) -> dt.timezone:
    """``+08:00`` (or ``Z``) as a timezone."""
    if offset in ("Z", "z"):
        return dt.timezone.utc
    sign = -1 if offset.startswith("-") else 1
    hh, mm = int(offset[1:3]), int(offset[-2:])
    return dt.timezone(sign * dt.timedelta(hours=hh, minutes=mm))


def t_instant(v: Any, args: dict, ctx: Any) -> str | None:
    """A date-time with a time of day (FHIR instant): a bare date is refused."""
    out = t_datetime(v, args, ctx)
    if out is not None and "T" not in out:
        raise BadValue("has no time of day")
    return out


def t_map(v: Any, args: dict, ctx: Any) -> str | None:
    s = text(v)
    if s is None:
        return None
    table = ctx.value_maps[args["map"]]
    if s in table:
        return table[s]
    if "*" in table:
        return table["*"]
    raise BadValue(f"has a code that value map {args['map']!r} does not list")


def t_resident_id(v: Any, args: dict, ctx: Any) -> str | None:
    """A resident ID number (GB 11643): normalised (upper-case X, a 15-digit number upgraded to
    18). A placeholder (all zeros, 1234…, a filler) or a number failing the check is left out with
    a ``tabular.identifier.placeholder`` / ``.check-digit`` finding: never stored, never a key
    (``fhir_mapping.identifiers``)."""
    s = text(v)
    if s is None:
        return None
    s = s.replace(" ", "").upper()
    if len(s) == 15 and s.isdigit() and not resident_id.is_placeholder(s):
        try:
            s = resident_id.upgrade_15_to_18(s)
            ctx.finding("information", "tabular.resident-id.15-digit",
                        "a 15-digit resident ID number (issued before 1999) was upgraded to 18 digits")
        except ValueError:
            pass
    problem = key_problem(s, RESIDENT_ID_SYSTEM)
    if problem is not None:
        ctx.finding("warning", f"tabular.identifier.{problem}",
                    "the resident ID number is a placeholder value; left out" if problem == "placeholder"
                    else "the resident ID number fails the GB 11643 format or check digit; left out")
        return None
    return s


TRANSFORMS = {
    "string": (t_string, "s"),
    "code": (t_code, "s"),
    "integer": (t_integer, "i"),
    "decimal": (t_decimal, "d"),
    "boolean": (t_boolean, "b"),
    "date": (t_date, "s"),
    "datetime": (t_datetime, "s"),
    "instant": (t_instant, "s"),
    "map": (t_map, "s"),
    "resident_id": (t_resident_id, "s"),
}
# fillers: skip -> a filler cell is left out with a finding; not_after: [columns] -> a date later
# than theirs (a birth after the visit) is left out with a finding
TRANSFORM_ARGS = {"string": {"max_length", "fillers"}, "date": {"format", "not_after"},
                  "datetime": {"format"}, "instant": {"format"}, "map": {"map"}}

_COMPARATOR = re.compile(r"(<=|>=|<|>|≤|≥)\s*(.*)")
_COMPARATORS = {"≤": "<=", "≥": ">="}


def quantity_value(v: Any) -> tuple[str | None, Any]:
    """(comparator, number) of a lab value such as ``<0.5`` or ``12.30``."""
    s = text(v) if not isinstance(v, (int, float, Decimal)) or isinstance(v, bool) else v
    if isinstance(s, str):
        m = _COMPARATOR.fullmatch(s)
        if m:
            return _COMPARATORS.get(m.group(1), m.group(1)), decimal_value(m.group(2))
    return None, decimal_value(s)
