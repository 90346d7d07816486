"""FHIR search parameters parsed into a storage-independent plan.

``parse(rtype, params)`` turns the ``(name, value)`` pairs of a search into a ``Query``:

- ``where``: a list of AND groups; each group is a list of OR alternatives (``Criterion``), one per
  comma-separated value of one parameter occurrence. A criterion carries the parameter code, its
  type, the modifier, the prefix and the value already typed for its parameter type (see the
  ``*Value`` classes). Chains (``subject:Patient.name=x``) carry a nested criterion on the target
  type, ``_has`` a ``Has`` with a nested criterion on the referring type.
- result controls: ``sort``, ``count``, ``include``/``revinclude``, ``total``, ``summary``,
  ``elements``, ``cursor``.
- ``ignored``: parameters that are unknown or unsupported (the caller warns, or refuses them when
  strict). A modifier a known parameter does not take is a 400 instead: ignoring it would drop
  the parameter's filter and widen the answer.

Nothing here knows how the index is stored: the SQLite planner (sqlite_query.py) and a later
Elasticsearch planner answer the same plans.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib import resources
from typing import Any

from hub.core.errors import FhirError, HubError, bad_request
from hub.core.fhirtime import parse_range
from projections.search.extract import normalize, normalize_reference, ucum_canonical
from projections.search.params import SearchParam, params_for
from projections.search.plan import boolean_params, canonical_params

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
ORDERED_TYPES = ("date", "number", "quantity")
CONTROL = ("_sort", "_count", "_include", "_revinclude", "_total", "_summary", "_elements",
           "_cursor", "_format", "_pretty")
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "missing", "in", "not-in", "below", "above"},
    "date": {"missing"}, "number": {"missing"}, "quantity": {"missing"},
    "reference": {"identifier", "missing"},  # plus :Type
    "uri": {"below", "above", "missing"},
    "composite": {"missing"},
}
SPECIAL_TYPES = {"_id": "token", "_lastUpdated": "date"}  # answered from the resource table


class Unsupported(HubError):
    """A parameter the server does not support: ignored with a warning, or 400 when strict."""

    error_code = "unsupported"


class NoValue(Unsupported):
    """A parameter given no value (``name=``, or only empty alternatives ``name=,``): ignored
    as an unsupported one is, and named so in the 400 of a strict search."""


# -- typed values ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code (``system|``)
    type_system: str | None = None  # :of-type
    type_code: str | None = None
    # codes that rows *without* a system also match: ``system`` is fixed by the binding of the
    # parameter's ``code`` elements, which are indexed without it (see fixed_systems)
    bound_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenSet:
    """A token criterion the terminology service expanded (``:in``, ``:not-in``, ``:below``,
    ``:above``): any of the codes, per system. ``unsystemed``: those codes also match rows without
    a system (a code element whose binding fixes the system, see fixed_systems)."""
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    unsystemed: tuple[str, ...] = ()


# the most codes one terminology modifier may stand for (each becomes an SQL parameter)
MAX_EXPANSION = 10_000
TERMINOLOGY_MODIFIERS = ("in", "not-in", "below", "above")


@dataclass(frozen=True)
class RangeValue:
    """A date (µs) or a number: the range the search value stands for, and the value itself."""
    lo: float
    hi: float
    value: float
    # ``ap``'s half-width where it is not 10 % of ``value``: a quantity in a canonical unit
    # reached by an offset (37 Cel is 310.15 K: 10 % of 37 Cel, not of 310.15 K)
    gap: float | None = None


@dataclass(frozen=True)
class QuantityValue:
    number: RangeValue
    system: str | None
    code: str | None
    canonical: RangeValue | None = None  # the number in the UCUM canonical unit (ucum.py)
    canonical_code: str | None = None


@dataclass(frozen=True)
class RefValue:
    targets: tuple[str, ...] = ()  # 'Type/id' or absolute URLs: any of them
    id_suffix: str | None = None  # a bare id whose type the parameter does not fix
    identifier: TokenValue | None = None
    # an absolute URL elsewhere, as sent: a canonical, which also matches it stored with any
    # version or fragment (url|1.0, url#part) when it names neither
    canonical: str | None = None


@dataclass
class Criterion:
    param: str
    type: str
    modifier: str | None = None
    prefix: str | None = None
    value: Any = None
    chain: Chain | None = None


@dataclass
class Chain:
    """Reference param chained: the target is a ``rtypes`` resource matching ``criterion``.
    ``base``: this server's base URL; a reference stored absolute on it is to the same target."""
    rtypes: tuple[str, ...]
    criterion: Criterion
    base: str | None = None
    # through a canonical (a url|version, not a Type/id): resolved to the targets' canonicals
    # before a backend sees it (projections.search.canonical.resolve)
    canonical: bool = False


@dataclass
class Has:
    """``_has:rtype:param:…``: some ``rtype`` resource matching ``criterion`` refers here by ``param``
    (as ``Type/id``, or absolute on ``base``, this server's base URL)."""
    rtype: str
    param: str
    criterion: Criterion
    base: str | None = None
    canonical: bool = False  # through a canonical: resolved as a chain's is


@dataclass
class Include:
    source: str  # resource type holding the reference
    param: str
    target: str | None  # restricts the target type
    iterate: bool = False


@dataclass
class SortKey:
    param: str
    type: str
    desc: bool


@dataclass
class Query:
    rtype: str
    where: list[list[Criterion]] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int | None = None
    include: list[Include] = field(default_factory=list)
    revinclude: list[Include] = field(default_factory=list)
    total: str | None = None  # none | estimate | accurate
    summary: str | None = None  # count | true | false | text | data
    elements: list[str] | None = None
    cursor: str | None = None
    ignored: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # those of ``ignored`` given no value
    notes: list[str] = field(default_factory=list)  # warnings of a search that still ran


# -- escaping -------------------------------------------------------------------------------------

def split_escaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` not preceded by a backslash; escapes are kept for the next split."""
    out, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i:i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def unsupported_modifier(name: str, modifier: str, code: str, kind: str) -> FhirError:
    """A modifier the parameter does not take: a 400, never ignored as an unknown parameter
    is (that drops the filter and widens the answer)."""
    return FhirError(400, "not-supported", f"{name}: the modifier :{modifier} is not supported "
                     f"on {code!r} (a {kind} parameter)")


def unescape(value: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", value)


# -- parsing of one parameter ---------------------------------------------------------------------

def param_type(rtype: str, code: str) -> tuple[str, SearchParam | None]:
    if code in SPECIAL_TYPES:
        return SPECIAL_TYPES[code], params_for(rtype).get(code)
    p = params_for(rtype).get(code)
    if p is None:
        raise Unsupported(f"Unknown search parameter {code!r} for {rtype}")
    if p.type == "special":
        raise Unsupported(f"Search parameter {code!r} (type special) is not supported")
    if p.type == "reference" and not p.answered:
        raise Unsupported(f"Search parameter {code!r} of {rtype} (its first entry's resource) "
                          "is not answered here")
    return p.type, p


def _prefix(raw: str, ptype: str) -> tuple[str | None, str]:
    if ptype in ORDERED_TYPES and len(raw) > 2 and raw[:2] in PREFIXES and not raw[2].isalpha():
        return raw[:2], raw[2:]
    return None, raw


def _number(raw: str) -> RangeValue:
    try:
        d = Decimal(raw)
    except InvalidOperation:
        raise bad_request(f"{raw!r} is not a number") from None
    if not d.is_finite():
        raise bad_request(f"{raw!r} is not a number")
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: not the "n", "N", "F" of NaN and infinity
    # implicit precision: half a unit of the last digit given (100 is [99.5, 100.5)); in
    # exponent notation half a unit of the digit after the mantissa's last, because R4's own
    # example (search.html#number) reads 1e2 as [95, 105), not the [50, 150) that one
    # significant figure alone would give, and a client that wrote 1e2 from it expects that
    finer = 2 if "e" in raw.lower() else 1
    half = Decimal(5) * Decimal(10) ** (exponent - finer)
    value = float(d)
    out = holding(float(d - half), float(d + half), value)
    if not math.isfinite(out.lo) or not math.isfinite(out.hi):  # 1e309: beyond any stored value
        raise bad_request(f"{raw!r} is out of range")
    return out


def holding(lo: float, hi: float, value: float) -> RangeValue:
    """[lo, hi) widened, where floats cannot tell the bounds from the value (a search value of
    15 or more decimals: the half-width is below the step between floats there), to the next
    float above the value, so the range always holds the value it stands for."""
    if not lo <= value:
        lo = value
    if not hi > value:
        hi = math.nextafter(value, math.inf)
    return RangeValue(lo, hi, value)


def _date(raw: str) -> RangeValue:
    try:
        lo, hi = parse_range(raw)
    except (ValueError, OverflowError):
        raise bad_request(f"{raw!r} is not a FHIR date, dateTime or instant") from None
    return RangeValue(lo, hi, lo)


def _token(raw: str, modifier: str | None) -> TokenValue:
    if modifier == "of-type":
        parts = split_escaped(raw, "|")
        if len(parts) != 3 or not parts[2]:
            raise bad_request(f"identifier:of-type needs system|code|value, not {raw!r}")
        ts, tc, v = (unescape(x) for x in parts)
        return TokenValue(None, v, ts or None, tc or None)
    parts = split_escaped(raw, "|")
    if len(parts) == 1:
        return TokenValue(None, unescape(parts[0]))
    system, code = unescape(parts[0]), unescape("|".join(parts[1:]))
    return TokenValue(system, code or None)


@lru_cache(maxsize=1)
def _code_systems() -> dict:
    return json.loads(resources.files("projections.data").joinpath("code_systems.json").read_text())


def fixed_systems(rtype: str, code: str) -> dict[str, list[str]]:
    """system -> codes of the ``code`` elements of a token parameter whose binding fixes the system.

    Derived by scripts/derive_code_systems.py: ``Patient.gender`` is indexed as ``|male``; a search
    for ``http://hl7.org/fhir/administrative-gender|male`` must find it.
    """
    return _code_systems().get(rtype, {}).get(code, {})


def _bind_system(rtype: str, code: str, tv: TokenValue) -> TokenValue:
    if not tv.system:
        return tv
    codes = fixed_systems(rtype, code).get(tv.system)
    if not codes or (tv.code is not None and tv.code not in codes):
        return tv
    return replace(tv, bound_codes=tuple(codes) if tv.code is None else (tv.code,))


def _quantity(raw: str) -> QuantityValue:
    parts = [unescape(x) for x in split_escaped(raw, "|")]
    if len(parts) > 3:
        raise bad_request(f"{raw[:60]!r}: a quantity is number|system|code, not {len(parts)} parts")
    number = _number(parts[0])
    system = parts[1] if len(parts) > 1 and parts[1] else None
    code = parts[2] if len(parts) > 2 and parts[2] else None
    canonical = ccode = None
    if code and system in (None, "http://unitsofmeasure.org"):
        form = ucum_canonical(code)
        ccode = form.unit  # an affine map (Cel, [degF]) rises too: the range keeps its order
        canonical = holding(form.to(number.lo), form.to(number.hi), form.to(number.value))
        if form.offset:
            canonical = replace(canonical, gap=abs(form.to(number.value) - form.to(0)) * 0.1)
        if not math.isfinite(canonical.lo) or not math.isfinite(canonical.hi):
            raise bad_request(f"{raw!r} is out of range")
    return QuantityValue(number, system, code, canonical, ccode)


def local_reference(ref: str, base: str | None) -> str:
    """``Type/id`` for an absolute reference to this server's own base URL; others unchanged."""
    if base and ref.startswith(base) and ref[len(base):len(base) + 1] == "/":
        return ref[len(base) + 1:]
    return ref


def with_base(targets: tuple[str, ...], base: str | None) -> tuple[str, ...]:
    """Local references also in their absolute form on this server: a resource may store either."""
    if not base:
        return targets
    return targets + tuple(f"{base}/{t}" for t in targets if "://" not in t)


def _reference(raw: str, p: SearchParam | None, modifier: str | None,
               base: str | None = None) -> RefValue:
    raw = unescape(raw)
    if modifier == "identifier":
        return RefValue(identifier=_token(raw, None))
    local = local_reference(raw, base)
    if "/" in local and "://" not in local and not all(local.split("/")):  # Patient/, /1
        raise bad_request(f"{raw[:60]!r}: a reference is Type/id (or an id, or a URL)")
    if modifier and modifier[0].isupper():  # :Type
        if "/" in raw:
            return RefValue(targets=with_base((normalize_reference(local_reference(raw, base))[0],), base))
        return RefValue(targets=with_base((f"{modifier}/{raw}",), base))
    if "/" in raw:
        local = local_reference(raw, base)
        ref, _ = normalize_reference(local)
        canonical = local if "://" in local and "|" not in local and "#" not in local else None
        return RefValue(targets=with_base((ref,), base), canonical=canonical)
    targets = p.targets if p is not None else ()
    if targets:
        return RefValue(targets=with_base(tuple(f"{t}/{raw}" for t in targets), base))
    return RefValue(id_suffix=raw)


def _value(rtype: str, code: str, ptype: str, p: SearchParam | None, modifier: str | None,
           raw: str, base: str | None = None) -> tuple[str | None, Any]:
    """(prefix, typed value) of one comma-separated alternative."""
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise bad_request(f"{code}:missing takes true or false, not {raw!r}")
        return None, raw == "true"
    prefix, body = _prefix(raw, ptype)
    if ptype == "string":
        return None, unescape(body)
    if ptype == "token":
        if modifier == "text":
            return None, unescape(body)
        tv = _token(body, modifier)
        if tv.code is not None and tv.code not in ("true", "false") \
                and code in boolean_params(rtype):
            raise bad_request(f"{code}={raw[:60]!r}: {code} is a boolean, searched by true or false")
        return None, _bind_system(rtype, code, tv)
    if ptype == "date":
        return prefix, _date(unescape(body))
    if ptype == "number":
        return prefix, _number(unescape(body))
    if ptype == "quantity":
        return prefix, _quantity(body)
    if ptype == "reference":
        return None, _reference(body, p, modifier, base)
    if ptype == "uri":
        return None, unescape(body)
    if ptype == "composite":
        comps = split_escaped(raw, "$")
        if p is None or len(comps) != len(p.components):
            raise bad_request(f"{code}={raw!r} needs {len(p.components) if p else '?'} "
                              "components separated by $")
        if not p.answered:  # three components (the index keeps two), or a reference one
            raise Unsupported(f"Composite {code!r} is not answered here (its components: "
                              f"{', '.join(c.type for c in p.components)})")
        if not all(c.strip() for c in comps):
            raise bad_request(f"{code}={raw[:60]!r}: each of its components needs a value")
        out = []
        for comp, craw in zip(p.components, comps):
            out.append((comp.type, *_value(rtype, comp.code, comp.type, None, None, craw)))
        return None, tuple(out)
    raise Unsupported(f"Search parameter type {ptype!r} is not supported")


def expand_token(rtype: str, code: str, modifier: str, value: str, terminology: Any) -> TokenSet:
    """The codes a terminology modifier stands for, by system (each system also under its other
    URIs: ``urn:oid:…`` and the canonical URL). Comma alternatives are merged (OR)."""
    from terminology.service import TerminologyError, TerminologyNotFound

    if terminology is None:  # ignored, the search would widen to every code
        raise FhirError(400, "not-supported", f"{code}:{modifier} needs the terminology service, "
                        "which is not running here")
    pairs: set[tuple[str, str]] = set()
    try:
        for alt in split_escaped(value, ","):
            alt = unescape(alt)
            if modifier in ("in", "not-in"):
                if not alt:
                    raise bad_request(f"{code}:{modifier} needs a ValueSet URL")
                pairs |= terminology.expand_codes(alt, with_aliases=True)
                continue
            system, bar, c = alt.partition("|")
            if not bar or not system or not c:
                raise bad_request(f"{code}:{modifier} needs system|code, not {alt!r}")
            codes = (terminology.descendants(system, c) if modifier == "below"
                     else terminology.ancestors(system, c))
            for s in terminology.system_aliases(system) | {system}:
                pairs |= {(s, x) for x in codes}
            if len(pairs) > MAX_EXPANSION:
                break
    except TerminologyNotFound as e:
        raise bad_request(f"{code}:{modifier}: {e}") from None
    except TerminologyError as e:
        raise bad_request(f"{code}:{modifier}: {e}") from None
    if len(pairs) > MAX_EXPANSION:
        raise bad_request(f"{code}:{modifier}={value[:200]!r} stands for more than {MAX_EXPANSION} "
                          "codes; narrow it (a smaller value set or a lower code)")
    by_system: dict[str, list[str]] = {}
    for system, c in sorted(pairs):
        by_system.setdefault(system, []).append(c)
    unsystemed = set()
    for system, codes in fixed_systems(rtype, code).items():
        unsystemed |= set(by_system.get(system, ())) & set(codes)
    return TokenSet(tuple((s, tuple(cs)) for s, cs in by_system.items()), tuple(sorted(unsystemed)))


def parse_criteria(rtype: str, name: str, value: str, base: str | None = None,
                   terminology: Any = None) -> list[Criterion]:
    """The OR alternatives of one ``name=value`` on ``rtype`` (chains and _has included).

    ``base``: this server's base URL; absolute references to it mean the local ``Type/id``.
    ``terminology``: a ``terminology.service.TerminologyService`` for the modifiers that need one.
    """
    if name.startswith("_has:"):
        parts = name.split(":", 3)
        if len(parts) < 4 or not parts[3]:
            raise bad_request(f"{name!r}: _has needs _has:Type:reference:parameter")
        _, src, ref_param, rest = parts
        if src not in _resource_types():
            raise bad_request(f"{name!r}: unknown resource type {src!r}")
        rp = params_for(src).get(ref_param)
        if rp is None or rp.type != "reference":
            raise bad_request(f"{name!r}: {src} has no reference parameter {ref_param!r}")
        inner = parse_criteria(src, rest, value, base, terminology)
        through = ref_param in canonical_params(src)
        return [Criterion("_has", "has", value=Has(src, ref_param, c, base, through))
                for c in inner]
    if name == "near" and rtype == "Location":  # type special: the planner's own (also chained)
        return [Criterion("near", "geo", value=_near(value))]
    head, dot, rest = name.partition(".")
    code, _, given_modifier = head.partition(":")
    modifier = given_modifier or None
    ptype, p = param_type(rtype, code)
    if dot:
        if ptype != "reference":
            raise bad_request(f"{name!r}: only reference parameters can be chained")
        targets = (modifier,) if modifier else tuple(p.targets if p else ())
        rest_code = rest.partition(".")[0].partition(":")[0]
        usable = tuple(t for t in targets if t in _resource_types()
                       and (rest_code in params_for(t) or rest_code.startswith("_has")))
        if not usable:
            raise bad_request(f"{name!r}: no target type of {code!r} has a parameter {rest_code!r}")
        out = []
        for t in usable:
            for c in parse_criteria(t, rest, value, base, terminology):
                out.append(Criterion(code, "reference", chain=Chain(
                    (t,), c, base, code in canonical_params(rtype))))
        # one Criterion per (target, alternative): OR of them
        return out
    if code == "_id" and modifier not in (None, "not", "missing"):  # an id is no coding
        raise bad_request(f"_id:{modifier} is not meaningful: _id takes :not and :missing")
    if modifier and modifier not in MODIFIERS.get(ptype, ()):
        if not (ptype == "reference" and modifier[0].isupper() and modifier in _resource_types()):
            # not ignored as an unknown parameter is: that would drop the filter and widen the
            # answer (a female Patient found by gender:exact=male)
            raise unsupported_modifier(name, modifier, code, ptype)
    if modifier in TERMINOLOGY_MODIFIERS and ptype == "token":
        if code in SPECIAL_TYPES:
            raise bad_request(f"{code}:{modifier} is not meaningful")
        ts = expand_token(rtype, code, modifier, value, terminology)
        return [Criterion(code, ptype, "not" if modifier == "not-in" else None, None, ts)]
    # an empty alternative (name=a, with a trailing comma) is no value: left out, not a
    # criterion that a string's prefix search would let match everything
    alternatives = [a for a in split_escaped(value, ",") if a.strip()] \
        if modifier != "missing" else [value]
    if not alternatives:  # name=, (only empty alternatives): no value, as name= is
        raise NoValue(f"{name} has no value")
    out = []
    for alt in alternatives:
        prefix, typed = _value(rtype, code, ptype, p, modifier, alt, base)
        out.append(Criterion(code, ptype, modifier, prefix, typed))
    return out


def lacks(rtype: str, name: str) -> bool:
    """Whether the criterion ``name`` (``code[:modifier][.chain]``) names no search parameter
    of ``rtype``; a result control or common parameter (``_…``) it never is."""
    if name.startswith("_"):
        return False
    return name.partition(".")[0].partition(":")[0] not in params_for(rtype)


def criteria_groups(rtype: str, name: str, value: str, base: str | None = None,
                    terminology: Any = None) -> list[list[Criterion]]:
    """The AND groups of one ``name=value``: its OR alternatives as one group, but for ``:not``,
    one group per value: ``gender:not=male,female`` is neither (NOT (a OR b)), as HAPI and
    Microsoft's server read it; each negation OR'ed with the others would select everything."""
    group = parse_criteria(rtype, name, value, base, terminology)
    if len(group) > 1 and all(c.modifier == "not" and c.chain is None and c.type != "has"
                              for c in group):
        return [[c] for c in group]
    return [group] if group else []


_TYPES_CACHE: set[str] | None = None


def _resource_types() -> set[str]:
    global _TYPES_CACHE
    if _TYPES_CACHE is None:
        from projections.search.params import resource_types

        _TYPES_CACHE = set(resource_types())
    return _TYPES_CACHE


# -- result controls ------------------------------------------------------------------------------

_UNIT_KM = {"km": 1.0, "[km]": 1.0, "m": 0.001, "[m]": 0.001, "mi": 1.609344, "[mi_i]": 1.609344,
            "[mi_us]": 1.609347}
NEAR_DEFAULT_KM = 5.0
NEAR_MAX_KM = 5000.0


def _near(value: str) -> tuple[float, float, float]:
    """(latitude, longitude, distance in km) of ``near=lat|long[|distance[|units]]`` (R4)."""
    parts = value.split("|")
    try:
        lat, lon = float(parts[0]), float(parts[1])
        km = float(parts[2]) if len(parts) > 2 and parts[2] else NEAR_DEFAULT_KM
        unit = parts[3] if len(parts) > 3 and parts[3] else "km"
    except (ValueError, IndexError):
        raise bad_request(f"near={value[:60]!r}: expected latitude|longitude|distance|units") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or unit not in _UNIT_KM or not 0 <= km:
        raise bad_request(f"near={value[:60]!r}: a latitude, a longitude, a distance >= 0 and "
                          f"units among {', '.join(_UNIT_KM)}")
    return lat, lon, min(km * _UNIT_KM[unit], NEAR_MAX_KM)


def _include(rtype: str, name: str, value: str, rev: bool) -> Include:
    iterate = name.endswith(":iterate") or name.endswith(":recurse")
    # wildcards: every reference parameter (_include=*, Type:*), from every type (_revinclude=*:*)
    if value == "*" or value == "*:*":
        # iterated, every reference of whatever was included, not only of the searched type
        return Include("*" if rev or iterate else rtype, "*", None, iterate)
    parts = value.split(":")
    if len(parts) == 2 and parts[1] == "*":
        if parts[0] not in _resource_types():
            raise bad_request(f"{name}={value!r}: unknown resource type {parts[0]!r}")
        if not rev and not iterate and parts[0] != rtype:
            raise bad_request(f"{name}={value!r}: the source type must be {rtype} (or use :iterate)")
        return Include(parts[0], "*", None, iterate)
    if len(parts) not in (2, 3):
        raise bad_request(f"{name}={value!r}: expected SourceType:parameter[:TargetType]")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in _resource_types():
        raise bad_request(f"{name}={value!r}: unknown resource type {source!r}")
    p = params_for(source).get(code)
    if p is None or p.type != "reference":
        raise bad_request(f"{name}={value!r}: {source} has no reference parameter {code!r}")
    if not p.answered:
        raise bad_request(f"{name}={value!r}: {source}.{code} (its first entry's resource) is "
                          "not followed here")
    if not rev and not iterate and source != rtype:
        raise bad_request(f"{name}={value!r}: the source type must be {rtype} (or use :iterate)")
    return Include(source, code, target, iterate)


def _sort(rtype: str, value: str) -> list[SortKey]:
    keys = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        desc = item.startswith("-")
        code = item[1:] if desc else item
        ptype, _ = param_type(rtype, code)
        if ptype == "composite":
            raise Unsupported(f"Sorting by composite parameter {code!r} is not supported")
        keys.append(SortKey(code, ptype, desc))
    return keys


def parse(rtype: str, params: list[tuple[str, str]], max_count: int = 1000,
          default_count: int | None = None, base: str | None = None,
          terminology: Any = None) -> Query:
    q = Query(rtype, count=default_count)
    base = base.rstrip("/") if base else None
    for name, value in params:
        try:
            if name == "_count":
                if not (value.isascii() and value.isdigit()):
                    raise bad_request(f"_count={value!r} is not a non-negative integer")
                q.count = min(int(value), max_count)
                if int(value) > max_count:
                    q.notes.append(f"_count={value} is above this server's maximum: "
                                   f"{max_count} per page")
            elif name == "_sort":
                q.sort = _sort(rtype, value)
            elif name == "_total":
                if value not in ("none", "estimate", "accurate"):
                    raise bad_request(f"_total={value!r}: none, estimate or accurate")
                q.total = value
            elif name == "_summary":
                if value not in ("count", "true", "false", "text", "data"):
                    raise bad_request(f"_summary={value!r}: true, text, data, count or false")
                q.summary = value
            elif name == "_elements":
                q.elements = [e.strip() for e in value.split(",") if e.strip()]
            elif name.split(":")[0] == "_include":
                q.include.append(_include(rtype, name, value, False))
            elif name.split(":")[0] == "_revinclude":
                q.revinclude.append(_include(rtype, name, value, True))
            elif name == "_cursor":
                q.cursor = value
            elif name in ("_format", "_pretty"):
                continue
            elif name == "near" and rtype == "Location":
                q.where.append([Criterion("near", "geo", value=_near(value))])
            elif name.split(":")[0] in ("_text", "_content"):
                from projections.search.fulltext import enabled, terms

                code, _, modifier = name.partition(":")
                if modifier:  # ignored as an unknown parameter is, it dropped the filter and
                    # the answer was every resource (_content:not=alpha found alpha too)
                    raise unsupported_modifier(name, modifier, code, "full-text")
                if not enabled(rtype):
                    raise Unsupported(f"{name} is not indexed for {rtype} (HUB_FULLTEXT)")
                try:
                    found = terms(value)
                except ValueError as e:
                    raise bad_request(f"{name}={value[:60]!r}: {e}") from None
                # (the indexed text it searches, the alternatives of terms)
                q.where.append([Criterion(name, "fulltext", value=(
                    "narrative" if name == "_text" else "content", found))])
            elif name.startswith("_") and name.split(":")[0].split(".")[0] not in (
                    "_has", *SPECIAL_TYPES, "_tag", "_profile", "_security", "_source"):
                raise Unsupported(f"{name} is not supported")
            else:
                if not value.strip():  # no value (name=): ignored, as HAPI and Microsoft do
                    raise NoValue(f"{name} has no value")
                q.where.extend(criteria_groups(rtype, name, value, base, terminology))
        except NoValue:
            q.empty.append(name)
            q.ignored.append(name)
        except Unsupported:
            q.ignored.append(name)
    return q


# -- helpers the planners share -------------------------------------------------------------------

def approx(v: RangeValue, now_us: float | None = None, is_date: bool = False) -> tuple[float, float]:
    """The range ``ap`` accepts: 10 % around the value (dates: 10 % of the distance from now)."""
    if is_date:
        now = now_us if now_us is not None else time.time() * 1e6
        gap = max(abs(now - v.lo), abs(now - v.hi)) * 0.1
        return v.lo - gap, v.hi + gap
    gap = abs(v.value) * 0.1 if v.gap is None else v.gap
    return min(v.lo, v.value - gap), max(v.hi, v.value + gap)


def range_bounds(prefix: str | None, v: RangeValue) -> tuple[str, Any, Any]:
    """How a Range [L, H] of a resource meets a number search value, as R4's prefixes read a
    target range (search.html, prefixes): ``eq`` the search value's range (its implicit
    precision) holds the whole Range, ``gt``/``lt`` the Range reaches above/below the value,
    ``sa``/``eb`` it lies wholly above/below it, ``ap`` it meets the approximate range. A Range
    whose ends are equal answers as a point value of the parameter would (``ge`` is ``H >= v``).
    (operator, first bound, second bound), for each backend to write as its test."""
    if prefix in (None, "eq", "ne"):
        return ("in" if prefix != "ne" else "not-in"), v.lo, v.hi
    if prefix in ("gt", "ge", "eb"):
        return {"gt": "hi>", "ge": "hi>=", "eb": "hi<"}[prefix], v.value, None
    if prefix in ("lt", "le", "sa"):
        return {"lt": "lo<", "le": "lo<=", "sa": "lo>"}[prefix], v.value, None
    if prefix == "ap":
        lo, hi = approx(v)
        return "meets", lo, hi
    raise bad_request(f"Unknown prefix {prefix!r}")


def string_key(s: str) -> str:
    return normalize(s)


def bound(x: float) -> float:
    return x if math.isfinite(x) else (1e300 if x > 0 else -1e300)


# -- values the backends test alike -------------------------------------------------------------

WORD = re.compile(r"\w+")
CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")


@lru_cache(maxsize=1 << 12)
def text_query(q: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(word prefixes, CJK substrings) of a ``:text`` search, normalized (case, accents, width)."""
    words: list[str] = []
    cjk: list[str] = []
    for w in WORD.findall(normalize(q)):
        (cjk if CJK.search(w) else words).append(w)
    return tuple(words), tuple(cjk)


def uri_prefixes(uri: str) -> list[str]:
    """``uri`` and its parents by path (``:above``), down to the authority."""
    out, cut = [uri], uri
    while "/" in cut.rstrip("/"):
        cut = cut.rstrip("/").rsplit("/", 1)[0]
        if cut.endswith(":/") or cut.endswith(":"):
            break
        out.append(cut)
    return out
