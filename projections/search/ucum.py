"""UCUM units in canonical form, for quantity search (R4 search.html#quantity: "the server SHOULD
convert to canonical units when the system is UCUM", as HAPI FHIR does with ucum-java).

``ucum_canonical(code)`` gives the ``UcumForm`` of a unit: the canonical unit (SI base units,
written by pint) and the map of a value into it, ``form.to(value)``: a scale, a power of ten and,
for the temperatures ``Cel`` and ``[degF]``, an offset. The units are parsed by ucumvert (the UCUM
grammar built from the official ucum-essence, giving pint units); the form of each unit string is
computed once and cached, so an indexed quantity costs a dictionary look-up. The forms of R4's
common units are derived ahead (``data/ucum_forms.json``): building the registry takes a second,
which a server, follower or command meeting only those units never spends.

What UCUM does not make commensurable stays apart: an arbitrary unit (``[IU]``, ``[arb'U]``,
``[HPF]`` …) or a logarithmic one (``B``, ``Np``) is kept in the canonical unit by name (pint
reads them as pure numbers), so ``m[IU]/mL`` meets ``[IU]/L`` but not ``/L``. An annotation is
unity, as UCUM says (``{cells}/uL`` is ``/uL``). A unit ucumvert refuses (invalid, or a special
unit it does not define, ``[pH]``) is its own canonical form: matched as written.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple


class UcumForm(NamedTuple):
    """1 ``code`` at value x is ``to(x)`` of ``unit``: (x * scale) * 10**power + offset."""

    scale: float
    power: int
    offset: float
    unit: str

    def to(self, value: float) -> float:
        v = value * self.scale if self.scale != 1.0 else value
        if self.power and math.isfinite(v):
            # the power of ten moves the decimal point of the value as written (its shortest
            # repr), read back correctly rounded: 5 mg and 0.005 g are one float, as the same
            # decimal is, where multiplying by 10.0**-6 would leave them an ulp apart
            mantissa, _, exp = repr(v).partition("e")
            v = float(f"{mantissa}e{int(exp or 0) + self.power}")
        return v + self.offset if self.offset else v


def _as_written(code: str) -> UcumForm:
    return UcumForm(1.0, 0, 0.0, code)


# pure numbers: dimensionless in UCUM too, so %, [ppm] and 10*3 convert into one another and 1
_PURE = frozenset({"percent", "ppth", "ppm", "ppb", "pptr", "pi", "_10", "dimensionless"})
_SPAN = 1e6
_lock = threading.Lock()  # the registry's caches are not known to be thread-safe
_registry: Any = None


def _load() -> Any:
    """The UCUM registry, built on first use (about a second: the grammar and pint's units)."""
    global _registry
    if _registry is None:
        from ucumvert import PintUcumRegistry

        _registry = PintUcumRegistry()
    return _registry


def _significant(x: float, digits: int) -> float:
    return float(f"{x:.{digits - 1}e}")


@lru_cache(maxsize=1)
def _derived() -> dict[str, UcumForm]:
    """The forms of the common units (``data/ucum_forms.json``, ``scripts/derive_ucum_forms.py``):
    read from the table, a process meeting only these never builds ucumvert's registry."""
    table = json.loads((Path(__file__).parent / "data" / "ucum_forms.json").read_text())["forms"]
    return {code: UcumForm(float(s), int(p), float(o), u) for code, (s, p, o, u) in table.items()}


@lru_cache(maxsize=4096)
def ucum_canonical(code: str) -> UcumForm:
    """The canonical form of the UCUM unit ``code``; one not understood is its own, unconverted."""
    if not code:
        return _as_written(code)
    derived = _derived().get(code)
    if derived is not None:
        return derived
    with _lock:
        try:
            return _canonical(_load(), code)
        except Exception:  # ucumvert raises lark's and pint's errors alike: not a unit it knows
            return _as_written(code)


def _canonical(reg: Any, code: str) -> UcumForm:
    q = reg.from_ucum(code)
    if not hasattr(q, "units"):  # an annotation alone ({score}) comes back as a token
        return _as_written(code)
    kept: Counter[str] = Counter()
    for name, exp in q.units._units.items():
        atom = reg.parse_unit_name(name)[0][1]  # without its prefix
        # (an angle is dimensionless to pint too, but keeps its base unit, radian, by itself)
        if atom not in _PURE and not reg.get_dimensionality(name) \
                and "radian" not in reg.get_base_units(name)[1]._units:
            kept[atom] += exp  # an arbitrary unit ([IU], [HPF]): commensurable only with itself

    def base(x: float) -> Any:
        return reg.Quantity(x * q.magnitude, q.units).to_base_units()

    zero, one = base(0), base(1)
    offset, scale = float(zero.magnitude), float(one.magnitude) - float(zero.magnitude)
    if offset:
        if abs(float(base(2).magnitude) - offset - 2 * scale) > 1e-9 * abs(scale):
            return _as_written(code)  # logarithmic (B, Np, dB): no linear map keeps a range
        # affine (Cel, [degF]): the scale read over a span that keeps its digits
        scale = (float(base(_SPAN).magnitude) - offset) / _SPAN
    if not scale > 0:
        return _as_written(code)
    # float noise of the chain of factors (0.9999999999999999 for mmol/L) rounded off: a power
    # of ten stays exact, so 5.4 mmol/L and 5400 umol/L meet at one value
    mantissa, power = f"{scale:.14e}".split("e")
    base_unit = format(one.units, "~C")
    parts = [base_unit] if base_unit else []
    parts += [f"{k}{'' if e == 1 else e}" for k, e in sorted(kept.items()) if e]
    return UcumForm(float(mantissa), int(power), _significant(offset, 15) if offset else 0.0,
                    ".".join(parts) or "1")
