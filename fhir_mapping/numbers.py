"""A number written in a source document as the FHIR JSON value that keeps its written precision.

R4 keeps a decimal's precision as written: a lab value of ``1.50`` is not ``1.5``. A float keeps
it where Python writes it back identically (``1.5``, ``72.3``); otherwise the value is an
``orjson.Fragment`` of the exact text, as the hub's own JSON parser produces, which orjson writes
as is. ``value_of`` gives the number of either, for a comparison or a sum.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson

# what sources write: a sign, digits with an optional fraction, or a bare fraction (".5", "5.");
# ASCII digits only (Python's int() and float() also read other scripts' digits, which JSON has not)
_SOURCE = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)$")
# HL7 v3 REAL and PQ values (and FHIR decimals) may carry an exponent: 1.5e3
_EXPONENT = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?[eE][+-]?[0-9]{1,3}$")


def decimal(text: str | None, exponent: bool = False) -> int | float | orjson.Fragment | None:
    """A source's decimal text as a FHIR JSON number (None: not a number, or over 30
    characters). ``+1.50`` -> 1.50, ``.5`` -> 0.5, ``007`` -> 7, ``5.`` -> 5; with ``exponent``
    (HL7 v3 data types, not HL7 v2's NM), ``1.5e3`` as written."""
    v = (text or "").strip()
    if exponent and len(v) <= 30 and _EXPONENT.match(v.removeprefix("+")):
        return _fragment(v.removeprefix("+"))
    if not v or len(v) > 30 or _SOURCE.match(v) is None:
        return None
    if v[0] == "+":
        v = v[1:]
    if v.startswith("."):
        v = "0" + v
    elif v.startswith("-."):
        v = "-0" + v[1:]
    if v.endswith("."):
        v = v[:-1]
    intpart = v.lstrip("-").split(".")[0]
    if len(intpart) > 1 and intpart.startswith("0"):
        stripped = intpart.lstrip("0") or "0"
        v = ("-" if v.startswith("-") else "") + stripped + v.lstrip("-")[len(intpart):]
    if "." not in v:
        n = int(v)
        # beyond 64 bits, JSON writers (orjson) take no int: the number as written
        return n if -(1 << 63) <= n < (1 << 63) else _fragment(v)
    f = float(v)
    if repr(f) == v:
        return f
    return _fragment(v)


@lru_cache(maxsize=1 << 16)
def _fragment(text: str) -> orjson.Fragment:
    """One Fragment per written form, so equal values compare equal (Fragments compare by identity)."""
    return orjson.Fragment(text.encode())


def value_of(v: Any) -> float:
    """The numeric value of what ``decimal`` returned (an orjson Fragment included)."""
    if isinstance(v, (int, float)):
        return float(v)
    return float(orjson.dumps(v))
