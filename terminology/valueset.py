"""Value sets: ``compose`` compiled to a plan, expanded, and tested for one code without expanding.

R4 semantics (https://hl7.org/fhir/R4/valueset.html#compositions): the expansion is the union of
the ``include``s minus the union of the ``exclude``s. One include is the intersection of what it
names: its ``system`` (all of it, or its ``concept`` list, or the concepts passing every
``filter``) and each of its ``valueSet``s. ``compose.inactive = false`` (or the ``activeOnly``
parameter) drops inactive concepts. A ValueSet without ``compose`` but with an ``expansion`` is
its expansion.

Filters on the hierarchy (property ``concept`` or ``code``): ``is-a`` (the code and everything
below), ``descendent-of`` (below only), ``is-not-a``, ``generalizes``, ``=``, ``in``, ``not-in``,
``regex``; on ``parent`` / ``child`` (``=``, ``in``), ``display`` and ``inactive`` (``=``), and any
other concept property (``=``, ``in``, ``not-in``, ``regex``, ``exists``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import NamedTuple

import regex

from terminology import rows as R
from terminology.store import (
    CodeSystemRef,
    TerminologyError,
    TerminologyNotFound,
    TerminologyStore,
    split_canonical,
)

MAX_DEPTH = 32  # include.valueSet nesting, at most (a cycle is found as one, at any depth)
# the stored value sets being expanded or asked, outermost first (a cycle: one met again)
_ACTIVE: ContextVar[tuple[str, ...]] = ContextVar("terminology_active", default=())
MAX_REGEX = 200
HIERARCHY_PROPS = ("concept", "code")
OPS = ("=", "is-a", "descendent-of", "is-not-a", "regex", "in", "not-in", "generalizes", "exists")
PARTIAL = ("fragment", "example", "not-present")  # CodeSystem.content of which the hub holds part


class Entry(NamedTuple):
    system: str
    version: str | None
    code: str
    display: str | None
    inactive: bool = False
    abstract: bool = False
    # the value set's own designations of the code (compose.include.concept, expansion.contains)
    designations: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Filter:
    prop: str
    op: str
    value: str


@dataclass
class Include:
    system: str | None
    version: str | None
    concepts: dict[str, str | None] | None  # code -> display given in the value set
    filters: list[Filter]
    valuesets: list[str]
    designations: dict[str, tuple[dict, ...]] = field(default_factory=dict)  # code -> given ones


@dataclass
class Plan:
    url: str | None
    version: str | None
    includes: list[Include]
    excludes: list[Include]
    inactive: bool | None  # compose.inactive
    expansion: list[Entry] | None = None  # a ValueSet given by its expansion only
    key: str | None = None  # the stored resource (cache key), None for an inline value set
    _codes: dict = field(default_factory=dict)  # (sid, filter) -> codes passing it


@dataclass(frozen=True)
class Options:
    active_only: bool = False
    # canonical system -> (version, forced): system-version / force-system-version
    system_versions: tuple[tuple[str, str, bool], ...] = ()

    def version_for(self, svc: TerminologyStore, system: str, given: str | None) -> str | None:
        canonical = svc.canonical_system(system)
        for s, v, forced in self.system_versions:
            if svc.canonical_system(s) == canonical and (forced or given is None):
                return v
        return given


class Source(NamedTuple):
    """A code system a value set draws on, at the version it takes there."""
    system: str  # canonical
    version: str | None  # the include's pin, or what the options give, or None: the latest
    cs: CodeSystemRef | None  # None: the hub does not hold it
    by_rule: bool  # every code or those passing filters (not a concept list)

    @property
    def partial(self) -> bool:
        """The hub holds part of the system: codes it lacks may pass the rule."""
        return self.by_rule and self.cs is not None and self.cs.content in PARTIAL


# -- compiling ------------------------------------------------------------------------------------


def _include(d: object, where: str) -> Include:
    if not isinstance(d, dict):
        raise TerminologyError(f"{where} must be an object")
    system = R.text(d.get("system"))
    concepts: dict[str, str | None] | None = None
    designations: dict[str, tuple[dict, ...]] = {}
    if d.get("concept") is not None:
        concepts = {}
        for c in R.as_list(d.get("concept")):
            if isinstance(c, dict) and R.text(c.get("code")) and c["code"] not in concepts:
                concepts[c["code"]] = R.text(c.get("display"))
                given = _designations(c)
                if given:
                    designations[c["code"]] = given
    filters = []
    for i, f in enumerate(R.as_list(d.get("filter"))):
        if not isinstance(f, dict) or not all(R.text(f.get(k)) for k in ("property", "op")) \
                or not isinstance(f.get("value"), str):
            raise TerminologyError(f"{where}.filter[{i}] needs property, op and value")
        if f["op"] not in OPS:
            raise TerminologyError(f"{where}.filter[{i}]: unknown op {f['op'][:40]!r}")
        filters.append(Filter(f["property"], f["op"], f["value"]))
    valuesets = [v for v in R.as_list(d.get("valueSet")) if R.text(v)]
    if system is None and not valuesets:
        raise TerminologyError(f"{where} names neither a system nor a valueSet")
    if (concepts is not None or filters) and system is None:
        raise TerminologyError(f"{where} has concepts or filters but no system")
    return Include(system, R.text(d.get("version")), concepts, filters, valuesets, designations)


def _designations(c: dict) -> tuple[dict, ...]:
    """A concept's designations that have a value (``compose.include.concept``,
    ``expansion.contains``)."""
    return tuple(x for x in R.as_list(c.get("designation"))
                 if isinstance(x, dict) and R.text(x.get("value")))


def compile_plan(vs: dict, key: str | None = None) -> Plan:
    compose = vs.get("compose")
    url, version = R.text(vs.get("url")), R.text(vs.get("version"))
    if not isinstance(compose, dict):
        expansion = vs.get("expansion")
        if isinstance(expansion, dict):
            return Plan(url, version, [], [], None, list(_flat(expansion.get("contains"))), key)
        raise TerminologyError(f"ValueSet {url or ''} has neither compose nor expansion")
    includes = [_include(d, f"compose.include[{i}]")
                for i, d in enumerate(R.as_list(compose.get("include")))]
    excludes = [_include(d, f"compose.exclude[{i}]")
                for i, d in enumerate(R.as_list(compose.get("exclude")))]
    inactive = compose.get("inactive")
    return Plan(url, version, includes, excludes, inactive if isinstance(inactive, bool) else None,
                None, key)


def _flat(contains: object):
    for c in R.as_list(contains):
        if not isinstance(c, dict):
            continue
        if R.text(c.get("system")) and R.text(c.get("code")):
            yield Entry(c["system"], R.text(c.get("version")), c["code"], R.text(c.get("display")),
                        c.get("inactive") is True, c.get("abstract") is True, _designations(c))
        yield from _flat(c.get("contains"))


def stored_plan(svc: TerminologyStore, canonical: str, version: str | None = None) -> Plan:
    ref = svc.value_set(canonical, version)
    if ref is None:
        url, v = split_canonical(canonical)
        raise TerminologyNotFound(f"Value set {url}" + (f" version {v or version}"
                                                          if (v or version) else "")
                                  + " is not known")
    return plan_of(svc, ref)


def plan_of(svc: TerminologyStore, ref) -> Plan:
    plan = svc.plans.get(ref.stream)
    if plan is None:
        plan = svc.plans[ref.stream] = compile_plan(ref.body, ref.stream)
    return plan


# -- filters --------------------------------------------------------------------------------------


# A regex filter is the caller's pattern run over every code or display of a code system: a
# pattern that backtracks ((a|a)*Z) takes time doubling with each character it is run over, and
# Python's re, holding the interpreter, froze the whole API process meanwhile. The `regex`
# library stops a match at a deadline: a filter gets this many seconds in all.
REGEX_SECONDS = 1.0


def _regex(value: str) -> Callable[[str], bool]:
    """``fullmatch`` of the filter's pattern, within the filter's time (400 too-costly past it)."""
    if len(value) > MAX_REGEX:
        raise TerminologyError(f"regex filters are at most {MAX_REGEX} characters")
    try:
        rx = regex.compile(value)
    except (regex.error, ValueError, OverflowError) as e:
        raise TerminologyError(f"bad regex filter {value[:60]!r}: {e}") from None
    deadline = time.monotonic() + REGEX_SECONDS

    def fullmatch(text: str) -> bool:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return rx.fullmatch(text, timeout=left, concurrent=True) is not None
        except TimeoutError:
            raise TerminologyError(f"the regex filter {value[:60]!r} takes too long over this "
                                   "code system; simplify it", "too-costly") from None
    return fullmatch


def _all_codes(svc: TerminologyStore, cs: CodeSystemRef) -> set[str]:
    return {c for (c,) in svc.q("SELECT code FROM t_concept WHERE sid=?", (cs.sid,))}


def filter_codes(svc: TerminologyStore, cs: CodeSystemRef, f: Filter) -> set[str]:
    """The codes of ``cs`` passing ``f`` (may name codes the system does not define)."""
    op, v = f.op, f.value
    values = [x.strip() for x in v.split(",") if x.strip()]
    if f.prop in HIERARCHY_PROPS:
        if op == "is-a":
            return {v, *svc._below(cs, v)}
        if op == "descendent-of":
            return set(svc._below(cs, v))
        if op == "is-not-a":
            return _all_codes(svc, cs) - {v, *svc._below(cs, v)}
        if op == "generalizes":
            return {v, *svc._above(cs, v)}
        if op == "=":
            return {v}
        if op == "in":
            return set(values)
        if op == "not-in":
            return _all_codes(svc, cs) - set(values)
        if op == "regex":
            rx = _regex(v)
            return {c for c in _all_codes(svc, cs) if rx(c)}
    elif f.prop in ("parent", "child") and op in ("=", "in"):
        out: set[str] = set()
        for x in values if op == "in" else [v]:
            out.update(svc.children(cs, x) if f.prop == "parent" else svc.parents(cs, x))
        return out
    elif f.prop == "display" and op in ("=", "regex"):
        rows = svc.q("SELECT code, display FROM t_concept WHERE sid=?", (cs.sid,))
        if op == "=":
            return {c for c, d in rows if d == v}
        rx = _regex(v)
        return {c for c, d in rows if d is not None and rx(d)}
    elif f.prop == "inactive" and op == "=" and v in ("true", "false"):
        return {c for (c,) in svc.q("SELECT code FROM t_concept WHERE sid=? AND active=?",
                                    (cs.sid, int(v == "false")))}
    elif op in ("=", "in", "not-in", "regex", "exists"):
        if op == "=":
            return {c for (c,) in svc.q("SELECT code FROM t_prop WHERE sid=? AND prop=? AND value=?",
                                        (cs.sid, f.prop, v))}
        rows = svc.q("SELECT code, value FROM t_prop WHERE sid=? AND prop=?", (cs.sid, f.prop))
        if op == "in":
            return {c for c, x in rows if x in values}
        if op == "not-in":
            return _all_codes(svc, cs) - {c for c, x in rows if x in values}
        if op == "regex":
            rx = _regex(v)
            return {c for c, x in rows if rx(x)}
        if v not in ("true", "false"):
            raise TerminologyError("an exists filter takes true or false")
        having = {c for c, _ in rows}
        return having if v == "true" else _all_codes(svc, cs) - having
    raise TerminologyError(f"filter {f.prop[:40]} {op} is not supported")


def filter_test(svc: TerminologyStore, plan: Plan, cs: CodeSystemRef, f: Filter,
                code: str) -> bool:
    """Does ``code`` pass ``f``? The hierarchy filters are one indexed read; the others use
    their code set, kept with the plan."""
    if f.prop in HIERARCHY_PROPS:
        if f.op == "is-a":
            return svc.is_a(cs, code, f.value)
        if f.op == "descendent-of":
            return code != f.value and svc.is_a(cs, code, f.value)
        if f.op == "is-not-a":
            return not svc.is_a(cs, code, f.value)
        if f.op == "generalizes":
            return svc.is_a(cs, f.value, code)
        if f.op == "=":
            return code == f.value
    key = (cs.sid, f)
    codes = plan._codes.get(key)
    if codes is None:
        codes = plan._codes[key] = filter_codes(svc, cs, f)
    return code in codes


# -- expansion ------------------------------------------------------------------------------------


def _entry(cs: CodeSystemRef, concept, display: str | None = None,
           designations: tuple[dict, ...] = ()) -> Entry:
    return Entry(cs.url or "", cs.version, concept.code, display or concept.display,
                 not concept.active, concept.abstract, designations)


def _include_entries(svc: TerminologyStore, inc: Include, opts: Options,
                     depth: int) -> list[Entry]:
    parts: list[list[Entry]] = []
    if inc.system is not None:
        version = opts.version_for(svc, inc.system, inc.version)
        cs = svc.code_system(inc.system, version)
        if inc.concepts is not None:
            if cs is not None:
                found = {c.code: c for c in svc.concepts(cs, list(inc.concepts))}
                given = inc.designations
                entries = [_entry(cs, found[code], display, given.get(code, ()))
                           for code, display in inc.concepts.items() if code in found]
                if cs.content in ("fragment", "not-present"):  # listed codes stand as given
                    entries += [Entry(cs.url or inc.system, cs.version, code, display,
                                      designations=given.get(code, ()))
                                for code, display in inc.concepts.items() if code not in found]
            else:  # a system the hub does not hold: the value set's word for it
                entries = [Entry(svc.canonical_system(inc.system), version, code, display,
                                 designations=inc.designations.get(code, ()))
                           for code, display in inc.concepts.items()]
        else:
            if cs is None:
                raise TerminologyNotFound(f"Code system {inc.system}"
                                          + (f" version {version}" if version else "")
                                          + " is not known: cannot expand")
            if inc.filters:
                codes = set.intersection(*(filter_codes(svc, cs, f) for f in inc.filters))
                concepts = (svc.concepts(cs, list(codes)) if len(codes) < 5000 else
                            [c for c in svc.concepts(cs) if c.code in codes])
            else:
                concepts = svc.concepts(cs)
            entries = [_entry(cs, c) for c in concepts]
        parts.append(entries)
    for canonical in inc.valuesets:
        parts.append(expand(svc, stored_plan(svc, canonical), opts, depth + 1))
    result = parts[0]
    for other in parts[1:]:
        keep = {(svc.canonical_system(e.system), e.code) for e in other}
        result = [e for e in result if (svc.canonical_system(e.system), e.code) in keep]
    return result


def _enter(plan: Plan, depth: int) -> Token | None:
    """Mark ``plan`` as being worked on; a cycle (met again inside itself) or a nesting over
    ``MAX_DEPTH`` is refused. Found so rather than by depth alone, a cycle costs one pass
    around it, and the answer does not depend on what the cache happens to hold."""
    if depth > MAX_DEPTH:
        raise TerminologyError(f"Value sets include each other more than {MAX_DEPTH} deep")
    if plan.key is None:
        return None
    active = _ACTIVE.get()
    if plan.key in active:
        raise TerminologyError("Value sets include each other in a cycle: "
                               + " -> ".join([*active[active.index(plan.key):], plan.key]))
    return _ACTIVE.set((*active, plan.key))


def expand(svc: TerminologyStore, plan: Plan, opts: Options = Options(),
           depth: int = 0) -> list[Entry]:
    """Every concept of the value set, in include order, each once."""
    token = _enter(plan, depth)
    try:
        return _expand(svc, plan, opts, depth)
    finally:
        if token is not None:
            _ACTIVE.reset(token)


def _expand(svc: TerminologyStore, plan: Plan, opts: Options, depth: int) -> list[Entry]:

    def compute() -> list[Entry]:
        if plan.expansion is not None:
            entries = plan.expansion
        else:
            entries = [e for inc in plan.includes for e in _include_entries(svc, inc, opts, depth)]
        drop = {(svc.canonical_system(e.system), e.code)
                for exc in plan.excludes for e in _include_entries(svc, exc, opts, depth)}
        seen: set[tuple[str, str]] = set()
        out = []
        active_only = opts.active_only or plan.inactive is False
        for e in entries:
            key = (svc.canonical_system(e.system), e.code)
            if key in seen or key in drop or (active_only and e.inactive):
                continue
            seen.add(key)
            out.append(e)
        return out

    if plan.key is None:
        return compute()
    return svc.cached_expansion((plan.key, opts), compute)


def expand_stored(svc: TerminologyStore, canonical: str) -> list[Entry]:
    svc.refresh()
    return expand(svc, stored_plan(svc, canonical))


def sources(svc: TerminologyStore, plan: Plan, opts: Options = Options(), depth: int = 0,
            seen: set | None = None) -> list[Source]:
    """The code systems the includes draw on, nested value sets' too (an unknown one is
    skipped: expanding or looking up reports it)."""
    seen = set() if seen is None else seen
    if depth > MAX_DEPTH or (plan.key is not None and plan.key in seen):
        return []
    if plan.key is not None:
        seen.add(plan.key)
    out = []
    for inc in plan.includes:
        if inc.system is not None:
            version = opts.version_for(svc, inc.system, inc.version)
            out.append(Source(svc.canonical_system(inc.system), version,
                              svc.code_system(inc.system, version), inc.concepts is None))
        for canonical in inc.valuesets:
            try:
                nested = stored_plan(svc, canonical)
            except TerminologyNotFound:
                continue
            out += sources(svc, nested, opts, depth + 1, seen)
    return out


# -- one code -------------------------------------------------------------------------------------


def _include_has(svc: TerminologyStore, plan: Plan, inc: Include, system: str, code: str,
                 opts: Options, depth: int, memo: dict | None = None) -> Entry | None:
    entry = None
    if inc.system is not None:
        if svc.canonical_system(inc.system) != system:
            return None
        version = opts.version_for(svc, inc.system, inc.version)
        cs = svc.code_system(inc.system, version)
        if inc.concepts is not None:
            concept = svc.concept(cs, code) if cs is not None else None
            if cs is not None and concept is not None:
                if concept.code not in inc.concepts:
                    return None
                entry = _entry(cs, concept, inc.concepts[concept.code],
                               inc.designations.get(concept.code, ()))
            elif code in inc.concepts and (cs is None or cs.content in ("fragment", "not-present")):
                entry = Entry(system, version, code, inc.concepts[code],
                              designations=inc.designations.get(code, ()))
            else:
                return None
        else:
            if cs is None:
                raise TerminologyNotFound(f"Code system {inc.system}"
                                          + (f" version {version}" if version else "")
                                          + " is not known")
            concept = svc.concept(cs, code)
            if concept is None:
                return None
            if not all(filter_test(svc, plan, cs, f, concept.code) for f in inc.filters):
                return None
            entry = _entry(cs, concept)
    for canonical in inc.valuesets:
        # each included value set is asked once per code: value sets that include each other
        # several times over (no cycle) made the lookups multiply with each level (F^depth)
        if memo is None:
            memo = {}
        key = (canonical, system, code)
        if key not in memo:
            memo[key] = lookup(svc, stored_plan(svc, canonical), system, code, opts, depth + 1,
                               memo)
        found = memo[key]
        if found is None:
            return None
        entry = entry or found
    return entry


def lookup(svc: TerminologyStore, plan: Plan, system: str, code: str,
           opts: Options = Options(), depth: int = 0, memo: dict | None = None) -> Entry | None:
    """The value set's entry of ``system|code`` (any URI of the system), or None. Decided
    include by include, without expanding (a hierarchy filter is one indexed read)."""
    token = _enter(plan, depth)
    try:
        return _lookup(svc, plan, system, code, opts, depth, memo)
    finally:
        if token is not None:
            _ACTIVE.reset(token)


def _lookup(svc: TerminologyStore, plan: Plan, system: str, code: str, opts: Options,
            depth: int, memo: dict | None) -> Entry | None:
    system = svc.canonical_system(system)
    if plan.expansion is not None:
        hit = next((e for e in plan.expansion if e.code == code
                    and svc.canonical_system(e.system) == system), None)
    else:
        hit = None
        memo = {} if memo is None else memo
        for inc in plan.includes:
            hit = _include_has(svc, plan, inc, system, code, opts, depth, memo)
            if hit is not None:
                break
    if hit is None:
        return None
    if any(_include_has(svc, plan, exc, system, hit.code, opts, depth, memo)
           for exc in plan.excludes):
        return None
    if hit.inactive and (opts.active_only or plan.inactive is False):
        return None
    return hit
