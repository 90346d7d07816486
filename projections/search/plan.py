"""The extraction plans behind ``projections.search.extract``: the value shapes, the converters, the
path parser and each type's plan. ``codegen`` turns a plan into one function; ``extract`` runs it.

``extract(resource)`` takes a resource dict (parsed from the stored canonical JSON) and returns
``{parameter code: [value, …]}`` for the parameters that have values (absent means ``:missing``),
each value shaped for the index by the parameter's type:

=========  =========================================================================================
string     ``Str(value, norm)``: norm is case-folded, accents stripped, whitespace collapsed, and
           full-/half-width folded (NFKC); CJK text is otherwise kept as it is
token      ``Token(system, code, text, type_system, type_code)``: text is Coding.display,
           CodeableConcept.text (in a row of its own) or Identifier.type.text (``:text``); type_*
           are an Identifier's type coding (``:of-type``); booleans and codes have no system
date       ``DateRange(start, end)``: [start, end) in µs since the epoch, UTC; open Period ends are ±inf
number     ``float``
quantity   ``Quantity(value, system, code, unit, canonical_value, canonical_code)``: for UCUM units
           the value in the unit's canonical form (``ucum.py``: 5 mg -> 5e-06 kg, 37 Cel -> 310.15 K)
number,    ``ValueRange(lo, hi, system, code, unit, canonical_lo, canonical_hi, canonical_code)``
quantity   for a Range (``Condition.onsetRange``, ``useContext.valueRange``, a RiskAssessment
           probability): its two ends, an open one infinite
reference  ``Ref(reference, type, identifier_system, identifier_value)``: ``Type/id`` for relative
           references (versions dropped), absolute URLs kept, the type from the reference or
           Reference.type, the logical identifier for ``:identifier``
uri        ``str``
composite  a tuple with one value per component, for every combination within one context node
special    ``(latitude, longitude)`` (Location near)
=========  =========================================================================================

Expressions are compiled once per resource type. Simple paths (``Patient.name``, choices,
``ofType(…)``/``as``, ``where(resolve() is T)``, ``where(system='phone')``, ``[0]``, ``%resource``)
become direct dict walks typed by fhir_mapping/tables/element_types.json; anything else is evaluated by
fhirpathpy (``compile_stats()`` says which).
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import timezone
from decimal import Decimal
from functools import lru_cache
from itertools import product
from typing import Any, Callable, NamedTuple, cast

import orjson

from hub.core.errors import HubError
from hub.core.fhirtime import local_zone, parse_range
from hub.core.jsontypes import TYPES as ELEMENTS
from hub.core.resource import RESOURCE_TYPES
from projections.search.params import SearchParam, indexed_params, params_for
from projections.search.ucum import ucum_canonical


class Str(NamedTuple):
    value: str
    norm: str


class Token(NamedTuple):
    system: str | None
    code: str | None
    text: str | None
    type_system: str | None
    type_code: str | None


class DateRange(NamedTuple):
    start: float  # int µs, or -inf
    end: float  # int µs, or +inf


class Quantity(NamedTuple):
    value: float
    system: str | None
    code: str | None
    unit: str | None
    canonical_value: float
    canonical_code: str | None


class ValueRange(NamedTuple):
    """A Range (number and quantity parameters): [lo, hi], an end left open is -inf or +inf.
    Unit columns as Quantity's; for a number parameter the units are not compared."""
    lo: float
    hi: float
    system: str | None
    code: str | None
    unit: str | None
    canonical_lo: float
    canonical_hi: float
    canonical_code: str | None


class Ref(NamedTuple):
    reference: str | None
    type: str | None
    identifier_system: str | None
    identifier_value: str | None


# ---------------------------------------------------------------------------------------------
# Normalisation of strings and units

_STRIP_ACCENTS_BELOW = 0x2000  # Latin, Greek, Cyrillic …: their combining marks are accents


@lru_cache(maxsize=1 << 16)
def normalize(s: str) -> str:
    """Search form of a string: NFKC, accents off (not kana voicing marks), case-folded, spaces collapsed."""
    if s.isascii():
        return " ".join(s.lower().split())
    s = unicodedata.normalize("NFKC", s)
    out: list[str] = []
    for ch in s:
        if ord(ch) < _STRIP_ACCENTS_BELOW:
            out.extend(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        else:
            out.append(ch)
    return " ".join("".join(out).casefold().split())


UCUM = "http://unitsofmeasure.org"
# ---------------------------------------------------------------------------------------------
# Converters: one FHIR value -> index values, chosen at compile time by (parameter type, FHIR type)

def _num(v: Any) -> float | None:
    t = type(v)
    if t is float or t is int:
        return float(v)
    if t is orjson.Fragment:  # a decimal kept as written (hub.resource.parse_json)
        return float(orjson.dumps(v))
    if t is Decimal:  # from the fhirpathpy fallback
        return float(v)
    return None


def _range(value: str) -> tuple[float, float]:
    return _range_in(value, local_zone())


@lru_cache(maxsize=1 << 16)
def _range_in(value: str, zone: timezone) -> tuple[float, float]:
    # keyed by the zone too: a zone-less value means another range under another HUB_TIMEZONE
    return parse_range(value, zone)


_REF = re.compile(r"^(?P<base>[a-z][a-z0-9+.-]*://.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9.-]{1,128})"
                  r"(?:/_history/[A-Za-z0-9.-]{1,64})?$")


@lru_cache(maxsize=1 << 16)
def normalize_reference(ref: str) -> tuple[str, str | None]:
    """(reference, type): ``Type/id`` without a version; absolute URLs kept (less their version)."""
    m = _REF.match(ref)
    if not m or m.group("type") not in RESOURCE_TYPES:
        return ref, None
    tail = f"{m.group('type')}/{m.group('id')}"
    return (m.group("base") or "") + tail, m.group("type")


def local_target(ref: str, bases: tuple[str | None, ...]) -> tuple[str, str] | None:
    """(type, id) of a reference to a resource of this server: ``Type/id`` (a version of it too)
    or absolute on one of ``bases`` (each ending in a slash); None for another server's."""
    local, rtype = normalize_reference(ref.strip())
    for own in bases:
        if own and local.startswith(own):
            local = local[len(own):]
            break
    if rtype is None or "://" in local:
        return None
    return rtype, local.split("/", 1)[1]


def _contained_type(root: dict, ref: str) -> str | None:
    for c in root.get("contained", ()):
        if isinstance(c, dict) and c.get("id") == ref[1:]:
            return c.get("resourceType")
    return None


def reference_type(v: dict, root: dict) -> str | None:
    """The type a Reference points to, as far as the reference, its type or a contained resource tell."""
    t = v.get("type")
    ref = v.get("reference")
    if type(ref) is str:
        if ref.startswith("#"):
            return _contained_type(root, ref) or t
        rt = normalize_reference(ref)[1]
        if rt:
            return rt
    return t if type(t) is str else None


Converter = Callable[[Any, dict, list], None]  # (FHIR value, the resource, values found so far)


def _c_str(v, root, out):
    if type(v) is str:
        out.append(Str(v, normalize(v)))


_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _c_name(v, root, out):
    for key in ("text", "family"):
        _c_str(v.get(key), root, out)
    for key in ("given", "prefix", "suffix"):
        for s in v.get(key, ()):
            _c_str(s, root, out)
    family, given = v.get("family"), v.get("given")
    # Chinese, Japanese and Korean names are written family first without a space: 张三
    if type(family) is str and given and _CJK.search(family):
        _c_str(family + "".join(g for g in given if type(g) is str), root, out)


def _c_address(v, root, out):
    _c_str(v.get("text"), root, out)
    for s in v.get("line", ()):
        _c_str(s, root, out)
    for key in ("city", "district", "state", "postalCode", "country"):
        _c_str(v.get(key), root, out)


def _c_code(v, root, out):
    if type(v) is str:
        out.append(Token(None, v, None, None, None))
    elif type(v) is int:
        out.append(Token(None, str(v), None, None, None))


def _c_bool(v, root, out):
    if v is True or v is False:
        out.append(Token(None, "true" if v else "false", None, None, None))


def _c_coding(v, root, out):
    if v.get("code") is not None or v.get("system") is not None:
        out.append(Token(v.get("system"), v.get("code"), v.get("display"), None, None))


def _c_concept(v, root, out):
    for c in v.get("coding", ()):
        system, code = c.get("system"), c.get("code")
        if code is not None or system is not None:
            out.append(Token(system, code, c.get("display"), None, None))
    text = v.get("text")
    if type(text) is str:
        out.append(Token(None, None, text, None, None))


def _c_identifier(v, root, out):
    system, value, typ = v.get("system"), v.get("value"), v.get("type")
    if system is None and value is None:
        return
    text = typ.get("text") if typ else None
    codings = typ.get("coding") if typ else None
    if codings:
        for c in codings:
            out.append(Token(system, value, text, c.get("system"), c.get("code")))
    else:
        out.append(Token(system, value, text, None, None))


def _c_contact(v, root, out):
    if v.get("value") is not None:
        out.append(Token(v.get("system"), v.get("value"), None, None, None))


def _c_date(v, root, out):
    if type(v) is str:
        try:
            out.append(DateRange(*_range(v)))
        except ValueError:
            pass


def _bounds(period: dict) -> tuple[float, float] | None:
    start, end = period.get("start"), period.get("end")
    if start is None and end is None:
        return None
    try:
        s = _range(start) if start else (-math.inf, -math.inf)
        e = _range(end) if end else (math.inf, math.inf)
    except ValueError:
        return None
    if s[0] < e[1]:
        return s[0], e[1]
    return min(s[0], e[0]), max(s[1], e[1])  # start after end (breaks per-1): cover both


def _c_period(v, root, out):
    b = _bounds(v)
    if b:
        out.append(DateRange(*b))


def _c_timing(v, root, out):
    # the outer limits of the schedule: its events and its boundsPeriod
    spans = []
    for e in v.get("event", ()):
        try:
            spans.append(_range(e))
        except (ValueError, AttributeError):
            pass
    bounds = (v.get("repeat") or {}).get("boundsPeriod")
    if bounds:
        b = _bounds(bounds)
        if b:
            spans.append(b)
    if spans:
        out.append(DateRange(min(s[0] for s in spans), max(s[1] for s in spans)))


def _c_number(v, root, out):
    n = _num(v)
    if n is not None:
        out.append(n)


def _c_quantity(v, root, out):
    value = _num(v.get("value"))
    if value is None:
        return
    system, code, unit = v.get("system"), v.get("code"), v.get("unit")
    cvalue, ccode = value, code
    if system == UCUM and type(code) is str:
        form = ucum_canonical(code)
        cvalue, ccode = form.to(value), form.unit
    out.append(Quantity(value, system, code, unit, cvalue, ccode))
    if type(unit) is str and unit and unit != code:
        # R4: "5.4||mg" matches where "either the code or the stated human unit" is mg. The
        # stated unit is a row of its own, under no system (so system|code finds only the code),
        # sorting where the coded row does
        out.append(Quantity(value, None, unit, unit, cvalue, None))


def _end_unit(q: dict) -> tuple:
    system, code = q.get("system"), q.get("code")
    return system, code, q.get("unit")


def _c_range(v, root, out):
    low, high = v.get("low") or {}, v.get("high") or {}
    lo, hi = _num(low.get("value")), _num(high.get("value"))
    if lo is None and hi is None:
        return
    units = {_end_unit(q) for q, x in ((low, lo), (high, hi)) if x is not None}
    if len(units) > 1:  # ends in units that differ (rng-2 wants the same): UCUM-comparable only
        canon = {ucum_canonical(c).unit if s == UCUM and type(c) is str else None
                 for s, c, _ in units}
        if len(canon) != 1 or None in canon:
            return
        ends = [ucum_canonical(q["code"]).to(x) if x is not None else None
                for q, x in ((low, lo), (high, hi))]
        out.append(ValueRange(-math.inf if ends[0] is None else ends[0],
                              math.inf if ends[1] is None else ends[1], UCUM, None, None,
                              -math.inf if ends[0] is None else ends[0],
                              math.inf if ends[1] is None else ends[1], canon.pop()))
        return
    system, code, unit = units.pop()
    lo_, hi_ = -math.inf if lo is None else lo, math.inf if hi is None else hi
    clo, chi, ccode = lo_, hi_, code
    if system == UCUM and type(code) is str:
        form = ucum_canonical(code)
        clo, chi, ccode = form.to(lo_), form.to(hi_), form.unit
    out.append(ValueRange(lo_, hi_, system, code, unit, clo, chi, ccode))
    if type(unit) is str and unit and unit != code:  # the stated unit, as for a Quantity
        out.append(ValueRange(lo_, hi_, None, unit, unit, clo, chi, None))


def _c_money(v, root, out):
    value = _num(v.get("value"))
    if value is not None:
        cur = v.get("currency")
        out.append(Quantity(value, "urn:iso:std:iso:4217", cur, cur, value, cur))


def _c_reference(v, root, out):
    ref, ident = v.get("reference"), v.get("identifier")
    rtype = reference_type(v, root)
    if type(ref) is str and not ref.startswith("#"):
        ref = normalize_reference(ref)[0]
    isys = ival = None
    if ident:
        isys, ival = ident.get("system"), ident.get("value")
    if ref is not None or ival is not None:
        out.append(Ref(ref, rtype, isys, ival))


def _c_canonical(v, root, out):
    if type(v) is str:
        out.append(Ref(v, normalize_reference(v.split("|", 1)[0])[1], None, None))


def _c_resource(v, root, out):
    # Bundle composition/message: "Bundle.entry[0].resource" is a resource, indexed as a reference to it
    if isinstance(v, dict) and v.get("resourceType") and v.get("id"):
        out.append(Ref(f"{v['resourceType']}/{v['id']}", v["resourceType"], None, None))


def _c_uri(v, root, out):
    if type(v) is str:
        out.append(v)


def _c_position(v, root, out):
    lat, lon = _num(v.get("latitude")), _num(v.get("longitude"))
    if lat is not None and lon is not None:
        out.append((lat, lon))


def _on(attr: str, conv: Converter) -> Converter:
    def c(v, root, out):
        inner = v.get(attr)
        if inner is not None:
            conv(inner, root, out)
    return c


_QUANTITIES = ("Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity")
_STRINGS = ("string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown")
_DATES = ("date", "dateTime", "instant")

CONVERTERS: dict[tuple[str, str], Converter] = {
    **{("string", t): _c_str for t in (*_STRINGS, *_DATES)},
    ("string", "HumanName"): _c_name, ("string", "Address"): _c_address,
    **{("token", t): _c_code for t in (*_STRINGS, *_DATES, "integer", "positiveInt", "unsignedInt")},
    ("token", "boolean"): _c_bool, ("token", "Coding"): _c_coding,
    ("token", "CodeableConcept"): _c_concept, ("token", "Identifier"): _c_identifier,
    ("token", "ContactPoint"): _c_contact, ("token", "CodeableReference"): _on("concept", _c_concept),
    **{("date", t): _c_date for t in (*_DATES, "string")},
    ("date", "Period"): _c_period, ("date", "Timing"): _c_timing,
    **{("number", t): _c_number for t in ("integer", "decimal", "positiveInt", "unsignedInt")},
    **{("quantity", t): _c_quantity for t in _QUANTITIES},
    ("quantity", "Range"): _c_range, ("number", "Range"): _c_range,
    ("quantity", "Money"): _c_money,
    ("reference", "Reference"): _c_reference, ("reference", "Resource"): _c_resource,
    ("reference", "CodeableReference"): _on("reference", _c_reference),
    **{("reference", t): _c_canonical for t in ("canonical", "uri", "url", "string")},
    **{("uri", t): _c_uri for t in ("uri", "url", "canonical", "oid", "uuid", "string")},
    ("special", "LocationPosition"): _c_position,
}


def _guess_type(v: Any) -> str:
    """The FHIR type of a value the fallback evaluator returned (it gives no types)."""
    if v is True or v is False:
        return "boolean"
    if isinstance(v, str):
        return "string"
    if _num(v) is not None:
        return "decimal"
    if not isinstance(v, dict):
        return ""
    keys = v.keys()
    for key, name in (("resourceType", "Resource"), ("coding", "CodeableConcept"),
                      ("reference", "Reference"), ("family", "HumanName"), ("given", "HumanName"),
                      ("city", "Address"), ("line", "Address"), ("start", "Period"), ("end", "Period"),
                      ("event", "Timing"), ("repeat", "Timing"), ("latitude", "LocationPosition"),
                      ("currency", "Money"), ("value", "Quantity" if "code" in keys or "unit" in keys
                                                   else "Identifier" if "system" in keys else ""),
                      ("system", "Coding"), ("code", "Coding"), ("text", "CodeableConcept"),
                      ("low", "Range"), ("high", "Range")):
        if key in keys and name:
            return name
    return ""


# ---------------------------------------------------------------------------------------------
# Compiling FHIRPath to dict walks

class CompileError(HubError):
    """The expression is more than a simple path; it is left to the FHIRPath library."""

    error_code = "unsupported"


_TOKENS = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<id>%?[A-Za-z_][A-Za-z0-9_]*)"
                     r"|(?P<op>!=|[.()\[\]|=]))")


def _tokenize(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKENS.match(expr, pos)
        if not m or m.end() == pos:
            raise CompileError(f"cannot read {expr[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None  # each alternative of _TOKENS is a named group
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Paths only: ``a.b.c``, ``(…)``, ``|``, ``[n]``, ``ofType(T)``, ``as T``, ``first()``,
    ``where(resolve() is T)``, ``where(name = 'literal')``. Returns alternatives of step lists."""

    def __init__(self, expr: str):
        self.toks, self.i = _tokenize(expr), 0

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.peek()
        if (value is not None and v != value) or (kind is not None and k != kind):
            raise CompileError(f"expected {value or kind}, found {v or 'the end'}")
        self.i += 1
        return v

    def parse(self) -> list[list[tuple]]:
        paths = self.union()
        if self.peek()[0] != "end":
            raise CompileError(f"unsupported {self.peek()[1]!r}")
        return paths

    def union(self) -> list[list[tuple]]:
        paths = self.term()
        while self.peek()[1] == "|":
            self.take("|")
            paths += self.term()
        return paths

    def term(self) -> list[list[tuple]]:
        k, v = self.peek()
        if v == "(":
            self.take("(")
            paths = self.union()
            self.take(")")
        elif v == "%resource":
            self.take()
            paths = [[("root",)]]
        elif k == "id" and not v.startswith("%") and self.peek(1)[1] != "(":
            paths = [[("name", self.take())]]
        else:
            raise CompileError(f"unsupported {v!r}")
        while True:
            v = self.peek()[1]
            if v == ".":
                self.take(".")
                step = self.invocation()
            elif v == "[":
                self.take("[")
                step = ("index", int(self.take(kind="num")))
                self.take("]")
            elif v == "as" and self.peek(1)[0] == "id":
                self.take()
                step = ("ofType", self.take(kind="id"))
            else:
                return paths
            paths = [p + [step] for p in paths]

    def invocation(self) -> tuple:
        name = self.take(kind="id")
        if self.peek()[1] != "(":
            return ("name", name)
        self.take("(")
        step: tuple
        if name == "ofType":
            step = ("ofType", self.take(kind="id"))
        elif name == "first":
            step = ("index", 0)
        elif name == "where" and self.peek()[1] == "resolve":
            for expected in ("resolve", "(", ")", "is"):
                self.take(expected)
            step = ("resolveIs", self.take(kind="id"))
        elif name == "where" and self.peek(1)[1] == "=" and self.peek(2)[0] == "str":
            field = self.take(kind="id")
            self.take("=")
            step = ("whereEq", field, self.take(kind="str")[1:-1])
        else:
            raise CompileError(f"unsupported function {name}()")
        self.take(")")
        return step


def _type_name(kind: str, key_suffix: str | None = None) -> str:
    """FHIR type of an element from its element_types kind (and its choice suffix, if any)."""
    if key_suffix:
        return key_suffix[0].lower() + key_suffix[1:] if kind in "bids" else key_suffix
    return {"b": "boolean", "i": "integer", "d": "decimal", "s": "string"}.get(kind, kind)


def _choices(fields: dict, name: str) -> dict[str, str]:
    """type -> key of the choice element ``name[x]`` (valueQuantity, valueString, …)."""
    n = len(name)
    return {_type_name(spec[0], key[n:]): key for key, spec in fields.items()
            if key.startswith(name) and len(key) > n and key[n].isupper()}


def _same_type(have: str, want: str) -> bool:
    return have == want or have == "string" and want in _STRINGS + _DATES or (
        have.lower() == want.lower())


Step = Callable[[list, dict], list]


# Each step also says what it is (``sym``), for projections.search.codegen.

def _sym(step: Step, *sym) -> Step:
    cast(Any, step).sym = sym
    return step


def _field(key: str) -> Step:
    def step(nodes, root):
        out = []
        for n in nodes:
            v = n.get(key)
            if v is not None:
                if type(v) is list:
                    out += v
                else:
                    out.append(v)
        return out
    return _sym(step, "field", key)


def _index(i: int) -> Step:
    return _sym(lambda nodes, root: nodes[i:i + 1], "index", i)


def _resolve_is(t: str) -> Step:
    return _sym(lambda nodes, root: [n for n in nodes if reference_type(n, root) == t], "resolveIs", t)


def _where_eq(field: str, literal: str) -> Step:
    return _sym(lambda nodes, root: [n for n in nodes if n.get(field) == literal],
                "whereEq", field, literal)


def _to_root(nodes, root):
    return [root]


_sym(_to_root, "root")


class Branch(NamedTuple):
    first_key: str | None  # the resource's top-level key the walk starts with, if it starts at the root
    steps: tuple[Step, ...]  # after the first key
    type: str  # FHIR type of what the walk ends on


def _merge_oftype(path: list[tuple]) -> list[tuple]:
    """``name`` followed by ``ofType(T)`` becomes one step ``name`` with a wanted type (choices need it)."""
    out: list[tuple] = []
    for step in path:
        if step[0] == "ofType" and out and out[-1][0] == "name" and len(out[-1]) == 2:
            out[-1] = ("name", out[-1][1], step[1])
        else:
            out.append(step)
    return out


def _bind(path: list[tuple], rtype: str, ctx: str, absolute: bool) -> list[Branch]:
    """Type a parsed path against the element table; one branch per (choice) type it can end on.

    The first element read from the starting node becomes the branch's ``first_key``, so that
    extraction only walks what a resource has.
    """
    path = _merge_oftype(path)
    if absolute and path[0][0] == "name" and path[0][1] in (rtype, "Resource", "DomainResource"):
        path = path[1:]
    branches: list[tuple[str | None, list[Step], str]] = [(None, [], ctx)]
    for step in path:
        new = []
        for first, steps, t in branches:
            kind = step[0]
            if kind == "root":
                new.append((first, steps + [_to_root], rtype))
            elif kind == "index":
                new.append((first, steps + [_index(step[1])], t))
            elif kind == "whereEq":
                new.append((first, steps + [_where_eq(step[1], step[2])], t))
            elif kind == "resolveIs":
                if t != "Reference":
                    raise CompileError("resolve() on something other than a Reference")
                new.append((first, steps + [_resolve_is(step[1])], t))
            elif kind == "ofType":
                if _same_type(t, step[1]):
                    new.append((first, steps, step[1] if t == "string" else t))
            else:
                new += _name(step, first, steps, t)
        branches = new
    return [Branch(first, tuple(steps), t) for first, steps, t in branches]


def _name(step: tuple, first: str | None, steps: list[Step], t: str) -> list:
    fields = ELEMENTS.get(t)
    if fields is None:
        raise CompileError(f"no element table for {t}")
    name, want = step[1], step[2] if len(step) > 2 else None
    if name in fields:
        have = _type_name(fields[name][0])
        if want is not None:
            if not _same_type(have, want):
                return []  # the element is never of that type
            have = want if have == "string" else have
        keys = {have: name}
    else:
        keys = _choices(fields, name)
        if not keys:
            raise CompileError(f"{t} has no element {name}")
        if want is not None:
            keys = {c: k for c, k in keys.items() if c.lower() == want.lower()}
    out: list[tuple[str | None, list[Step], str]] = []
    for ctype, key in keys.items():
        if first is None and not steps:
            out.append((key, [], ctype))
        else:
            out.append((first, steps + [_field(key)], ctype))
    return out


def _run(branch_steps: tuple[Step, ...], nodes: list, root: dict) -> list:
    for step in branch_steps:
        if not nodes:
            break
        nodes = step(nodes, root)
    return nodes


def compile_path(expression: str, rtype: str, ctx: str | None = None) -> list[Branch]:
    """Branches of a path expression on ``rtype`` (or relative to a node of type ``ctx``)."""
    paths = _Parser(expression).parse()
    out = []
    for path in paths:
        out += _bind(path, rtype, ctx or rtype, absolute=ctx is None)
    return out


# ---------------------------------------------------------------------------------------------
# Plans: every parameter of a type, compiled

class _Walk(NamedTuple):
    code: str
    first_key: str | None
    steps: tuple[Step, ...]
    convert: Converter


class _Composite(NamedTuple):
    code: str
    contexts: tuple[Branch, ...]
    components: tuple[tuple[tuple[_Walk, ...], ...], ...]  # per context branch, per component
    # per context branch: the keys the value (last) component starts with, when every walk of it
    # starts with a key: a node holding none of them has no rows (most Observations lack most
    # value types), found without running a walk
    value_keys: tuple[frozenset[str] | None, ...] = ()


class _Fallback(NamedTuple):
    code: str
    type: str
    evaluate: Callable[[dict], list]


class Plan(NamedTuple):
    by_key: dict[str, tuple[_Walk, ...]]  # top-level key -> walks that start there
    from_root: tuple[_Walk, ...]
    composites: tuple[_Composite, ...]
    fallbacks: tuple[_Fallback, ...]
    skipped: dict[str, str]  # code -> why


def _walks(code: str, ptype: str, branches: list[Branch]) -> list[_Walk]:
    out = []
    for b in branches:
        conv = CONVERTERS.get((ptype, b.type))
        if conv is not None:
            out.append(_Walk(code, b.first_key, b.steps, conv))
    return out


_EXISTS_NOT_FALSE = re.compile(r"(\w+)\.(\w+)\.exists\(\) and \1\.\2 != false")


def _exists_not_false(expression: str, rtype: str) -> Callable[[dict], list] | None:
    """``Patient.deceased.exists() and Patient.deceased != false`` (a choice element read as a
    flag), evaluated directly: fhirpathpy took a sixth of a Patient's extraction time for it."""
    m = _EXISTS_NOT_FALSE.fullmatch(expression)
    if m is None or m.group(1) != rtype:
        return None
    prefix = m.group(2)
    keys = tuple(_choices(ELEMENTS.get(rtype) or {}, prefix).values())
    if not keys:
        return None

    def evaluate(resource: dict) -> list:
        for k in keys:
            v = resource.get(k)
            if v is not None:
                return [v is not False]
        return [False]
    return evaluate


@lru_cache(maxsize=None)
def _fhirpath(expression: str) -> Callable[..., list]:
    import fhirpathpy
    from fhirpathpy.models import models

    return fhirpathpy.compile(expression, models["r4"])


def _compile_param(p: SearchParam, rtype: str, plan: dict) -> None:
    if not p.expression:
        plan["skipped"][p.code] = "no expression"
        return
    try:
        if p.type == "composite":
            contexts = compile_path(p.expression, rtype)
            comps = tuple(
                tuple(tuple(_walks(c.code, c.type, compile_path(c.expression, rtype, ctx.type)))
                      for c in p.components)
                for ctx in contexts)
            value_keys = tuple(
                frozenset(k for w in cs[-1] if (k := w.first_key) is not None)
                if cs and cs[-1] and all(w.first_key is not None for w in cs[-1]) else None
                for cs in comps)
            plan["composites"].append(_Composite(p.code, tuple(contexts), comps, value_keys))
            return
        walks = _walks(p.code, p.type, compile_path(p.expression, rtype))
    except CompileError as e:
        if p.type == "composite":
            plan["skipped"][p.code] = f"composite not compiled: {e}"
            return
        try:
            fn = _exists_not_false(p.expression, rtype) or _fhirpath(p.expression)
        except Exception as e2:  # noqa: BLE001 - the library's parse errors have no common type
            plan["skipped"][p.code] = f"not compiled ({e}); fhirpathpy: {e2}"
            return
        plan["fallbacks"].append(_Fallback(p.code, p.type, fn))
        return
    for w in walks:
        if w.first_key is None:
            plan["from_root"].append(w)
        else:
            plan["by_key"].setdefault(w.first_key, []).append(w)


@lru_cache(maxsize=None)
def plan_for(rtype: str) -> Plan:
    plan: dict = {"by_key": {}, "from_root": [], "composites": [], "fallbacks": [], "skipped": {}}
    for p in indexed_params(rtype).values():  # aliases are answered from others' rows
        _compile_param(p, rtype, plan)
    return Plan({k: tuple(v) for k, v in plan["by_key"].items()}, tuple(plan["from_root"]),
                tuple(plan["composites"]), tuple(plan["fallbacks"]), plan["skipped"])


@lru_cache(maxsize=None)
def canonical_params(rtype: str) -> frozenset[str]:
    """``rtype``'s reference parameters whose path ends on a canonical (a primitive: the element
    table types canonical as string) rather than a Reference: ``QuestionnaireResponse``'s
    ``questionnaire``. Their values name a resource by its ``url`` (``|version``), not its id."""
    out = set()
    for code, p in indexed_params(rtype).items():
        if p.type != "reference" or not p.expression:
            continue
        try:
            branches = compile_path(p.expression, rtype)
        except CompileError:
            continue
        if any(b.type in _STRINGS for b in branches):
            out.add(code)
    return frozenset(out)


@lru_cache(maxsize=None)
def boolean_params(rtype: str) -> frozenset[str]:
    """``rtype``'s token parameters on a boolean only (``Patient.active``, the ``deceased`` flag):
    a search by one takes ``true`` or ``false``, any other code no resource can hold."""
    out = set()
    for code, p in params_for(rtype).items():
        if p.type != "token" or not p.expression:
            continue
        if _EXISTS_NOT_FALSE.fullmatch(p.expression):
            out.add(code)
            continue
        try:
            branches = compile_path(p.expression, rtype)
        except CompileError:
            continue
        if branches and all(b.type == "boolean" for b in branches):
            out.add(code)
    return frozenset(out)


# ---------------------------------------------------------------------------------------------
# Extraction

def _values(walks: tuple[_Walk, ...], node: dict, root: dict) -> list:
    """Values of the walks starting at ``node``."""
    found: list = []
    for _, first, steps, conv in walks:
        if first is None:
            nodes = [node]
        else:
            v = node.get(first)
            if v is None:
                continue
            nodes = v if type(v) is list else [v]
        if steps:
            nodes = _run(steps, nodes, root)
        for n in nodes:
            conv(n, root, found)
    return found


def _composite(c: _Composite, root: dict, out: dict) -> None:
    rows: list = []
    for ctx, comps, keys in zip(c.contexts, c.components, c.value_keys):
        top = root if ctx.first_key is None else root.get(ctx.first_key)
        nodes = [] if top is None else top if type(top) is list else [top]
        for node in _run(ctx.steps, nodes, root):
            if keys is not None and (type(node) is not dict or keys.isdisjoint(node)):
                continue
            parts = []
            for walks in reversed(comps):  # the value (last) is the most selective: look at it first
                # a CodeableConcept's text row has no code to pair a value with
                found = [v for v in _values(walks, node, root) if type(v) is not Token or v.code is not None]
                if not found:
                    break
                parts.append(found)
            else:
                rows += product(*reversed(parts))
    if rows:
        out[c.code] = rows


@lru_cache(maxsize=None)
def range_params(rtype: str) -> frozenset[str]:
    """The number, quantity and composite parameters of ``rtype`` that can hold a Range (its
    values are ``ValueRange``s, kept apart from the point values)."""
    plan = plan_for(rtype)
    walks = [w for ws in plan.by_key.values() for w in ws] + list(plan.from_root)
    composite = {c.code for c in plan.composites  # a Range component (context-type-quantity)
                 if any(w.convert is _c_range for comps in c.components for ws in comps
                        for w in ws)}
    return frozenset({w.code for w in walks if w.convert is _c_range} | composite
                     | {f.code for f in plan.fallbacks if f.type in ("number", "quantity")})


def holds_ranges(rtype: str, code: str) -> bool:
    """Whether parameter ``code`` (or one it is answered from) can hold a Range, whose values
    the backends keep apart from the point values and test beside them (a number or quantity
    parameter's in rows of their own, a composite's in its own rows' Range columns)."""
    p = params_for(rtype).get(code)
    if p is None or p.type not in ("number", "quantity", "composite"):
        return False
    ranged = range_params(rtype)
    return code in ranged or any(b in ranged for b in p.stored_as)


def compile_stats(rtypes=None) -> dict:
    """How the parameters of the given types (default: all) compile: direct walks, fallback, skipped."""
    from projections.search.params import resource_types

    direct = fallback = 0
    fallbacks, skipped = [], []
    for rtype in rtypes or resource_types():
        plan = plan_for(rtype)
        fb = {f.code for f in plan.fallbacks}
        n = len(indexed_params(rtype))
        fallback += len(fb)
        direct += n - len(fb) - len(plan.skipped)
        fallbacks += [f"{rtype}.{c}" for c in sorted(fb)]
        skipped += [f"{rtype}.{c}: {why}" for c, why in sorted(plan.skipped.items())]
    return {"direct": direct, "fallback": fallback, "skipped": len(skipped),
            "fallback_params": fallbacks, "skipped_params": skipped}
