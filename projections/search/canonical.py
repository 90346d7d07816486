"""Includes, chains and ``_has`` through canonical references (R4 search.html, "Canonical
references"): ``QuestionnaireResponse.questionnaire`` holds ``url|version``, which names the
resource of that ``url`` and ``version``; a ``url`` without a version names the latest version
held (versions compared part by part, numbers as numbers). The index holds a canonical as the
text it is, not as a ``Type/id``, so the backends' own includes and chains cannot follow it:
this module does, for any backend, by searching the targets' ``url`` and reading their
``version``. A chain becomes a criterion on the canonicals that name what its target matched,
a ``_has`` one on the ids of what the referring resources' canonicals name (``resolve``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from hub.core.versions import version_key
from projections.search.backend import Row, SearchBackend
from projections.search.extract import extract
from projections.search.params import params_for, resource_types
from projections.search.plan import canonical_params
from projections.search.query import (
    Chain,
    Criterion,
    Has,
    Include,
    Query,
    RefValue,
    TokenValue,
    criteria_groups,
)

# what one canonical (or one resource's url) brings at most: a code system or a profile has a
# handful of versions, not thousands
LIMIT = 1000

Bodies = Callable[[list[Row]], dict[tuple[str, str], dict]]
"""The parsed current resources of rows, of those the caller sees."""


def _escape(value: str) -> str:
    return re.sub(r"([\\,|$])", r"\\\1", value)


@lru_cache(maxsize=None)
def _has_url(rtype: str) -> bool:
    return "url" in params_for(rtype)


@lru_cache(maxsize=None)
def _sources(target: str) -> tuple[tuple[str, str], ...]:
    """(type, parameter) of every canonical parameter that may name a ``target``."""
    return tuple((t, code) for t in resource_types() for code in sorted(canonical_params(t))
                 if target in params_for(t)[code].targets)


def involved(include: list[Include], revinclude: list[Include], rtypes: Iterable[str]) -> bool:
    """Whether any of these includes may follow a canonical from or to resources of ``rtypes``
    (so that nothing is read for the many that cannot)."""
    types = set(rtypes)
    for inc in include:
        if any(canonical_params(t) and inc.source in ("*", t)
               and (inc.param == "*" or inc.param in canonical_params(t)) for t in types):
            return True
    for inc in revinclude:
        if any(_has_url(t) and (inc.target is None or inc.target == t) and any(
                inc.source in ("*", s) and inc.param in ("*", p) for s, p in _sources(t))
               for t in types):
            return True
    return False


def _by_url(backend: SearchBackend, bodies: Bodies, rtype: str, url: str,
            base: str | None) -> list[tuple[Row, dict]]:
    q = Query(rtype, where=criteria_groups(rtype, "url", _escape(url), base))
    rows = backend.page(q, LIMIT, False).rows
    got = bodies(rows)
    return [(r, got[(r.rtype, r.rid)]) for r in rows if (r.rtype, r.rid) in got]


def _named(held: list[tuple[Row, dict]], version: str | None) -> list[Row]:
    """Of the resources of one url, the one ``version`` names, or without one the latest."""
    if version:
        return [r for r, d in held if d.get("version") == version]
    if not held:
        return []
    newest = max(version_key(d.get("version")) for _, d in held)
    return [r for r, d in held if version_key(d.get("version")) == newest]


def forward(backend: SearchBackend, bodies: Bodies, rows: list[Row], include: list[Include],
            base: str | None) -> list[Row]:
    """The resources the canonicals of ``rows`` name, for the includes that follow them."""
    wanted: dict[tuple[str, str], None] = {}  # (canonical, target type), in order
    held = bodies(rows)
    for r in rows:
        d = held.get((r.rtype, r.rid))
        if d is None:
            continue
        values = None
        for inc in include:
            if inc.source not in ("*", r.rtype):
                continue
            codes = sorted(canonical_params(r.rtype)) if inc.param == "*" else (
                [inc.param] if inc.param in canonical_params(r.rtype) else [])
            for code in codes:
                values = extract(d) if values is None else values
                targets = (inc.target,) if inc.target else params_for(r.rtype)[code].targets
                for v in values.get(code, ()):
                    if isinstance(v.reference, str):
                        for t in targets:
                            if t in resource_types() and _has_url(t):
                                wanted[(v.reference, t)] = None
    out: list[Row] = []
    for canonical, rtype in wanted:
        url, _, version = canonical.partition("#")[0].partition("|")
        out += _named(_by_url(backend, bodies, rtype, url, base), version or None)
    return out


def reverse(backend: SearchBackend, bodies: Bodies, rows: list[Row], revinclude: list[Include],
            base: str | None) -> list[Row]:
    """The resources whose canonicals name ``rows``: as ``url|version``, or as the bare ``url``
    when the row is that url's latest version."""
    held = bodies(rows)
    out: list[Row] = []
    for r in rows:
        d = held.get((r.rtype, r.rid)) or {}
        url = d.get("url")
        if not isinstance(url, str) or not url:
            continue
        version = d.get("version") if isinstance(d.get("version"), str) else None
        names: set[str] | None = None
        for inc in revinclude:
            if inc.target not in (None, r.rtype):
                continue
            for src, code in _sources(r.rtype):
                if inc.source not in ("*", src) or inc.param not in ("*", code):
                    continue
                if names is None:
                    latest = (r.rtype, r.rid) in {(n.rtype, n.rid) for n in _named(
                        _by_url(backend, bodies, r.rtype, url, base), None)}
                    names = ({f"{url}|{version}"} if version else set()) | (
                        {url} if latest else set())
                if not names:
                    continue
                # the url with any version or fragment, then those naming this one
                q = Query(src, where=[[Criterion(code, "reference", value=RefValue(
                    targets=(url,), canonical=url))]])
                candidates = backend.page(q, LIMIT, False).rows
                got = bodies(candidates)
                out += [c for c in candidates if (c.rtype, c.rid) in got and any(
                    isinstance(v.reference, str) and v.reference.partition("#")[0] in names
                    for v in extract(got[(c.rtype, c.rid)]).get(code, ()))]
    return out


# an id no resource has (ids are letters, digits, '-' and '.'): a criterion that matches nothing
_NO_ID = "!none"


def resolve(backend: SearchBackend, bodies: Bodies, q: Query, base: str | None) -> list[str]:
    """Rewrite, in place, ``q``'s chains and ``_has`` through canonicals (nested ones too) into
    criteria a backend answers; the notes to tell the caller (a target list cut short)."""
    notes: list[str] = []
    for i, group in enumerate(q.where):
        if any(_through(c) for c in group):
            q.where[i] = [r for c in group for r in _resolved(backend, bodies, q.rtype, c, base,
                                                               notes)] or [_nothing()]
    return notes


def unresolved(q: Query) -> bool:
    """Whether ``q`` holds a chain or ``_has`` through a canonical (not yet resolved)."""
    return any(_through(c) for group in q.where for c in group)


def _through(c: Criterion) -> bool:
    if c.chain is not None:
        return c.chain.canonical or _through(c.chain.criterion)
    if c.type == "has":
        return c.value.canonical or _through(c.value.criterion)
    return False


def _nothing() -> Criterion:
    return Criterion("_id", "token", value=TokenValue(None, _NO_ID))


def _rows(backend: SearchBackend, q: Query, what: str, notes: list[str]) -> list[Row]:
    page = backend.page(q, LIMIT, False)
    if page.next_cursor:
        notes.append(f"{what} matched more than {LIMIT} resources: only the first {LIMIT} "
                     "were followed")
    return page.rows


def _resolved(backend: SearchBackend, bodies: Bodies, rtype: str, c: Criterion,
              base: str | None, notes: list[str]) -> list[Criterion]:
    """The OR alternatives ``c`` stands for, with no canonical left to follow."""
    if not _through(c):
        return [c]
    if c.chain is not None:
        (target,) = c.chain.rtypes
        inner = _resolved(backend, bodies, target, c.chain.criterion, base, notes)
        if not c.chain.canonical:
            return [Criterion(c.param, c.type, c.modifier, c.prefix, c.value,
                              Chain(c.chain.rtypes, i, c.chain.base)) for i in inner]
        found = _rows(backend, Query(target, where=[inner]), f"The chain {c.param}.", notes)
        names: dict[str, None] = {}
        for key, d in bodies(found).items():
            url = d.get("url")
            if not isinstance(url, str) or not url:
                continue
            version = d.get("version")
            if isinstance(version, str) and version:
                names[f"{url}|{version}"] = None
            latest = _named(_by_url(backend, bodies, target, url, base), None)
            if key in {(n.rtype, n.rid) for n in latest}:
                names[url] = None
        if not names:
            return []
        return [Criterion(c.param, "reference", value=RefValue(targets=tuple(names)))]
    h: Has = c.value
    inner = _resolved(backend, bodies, h.rtype, h.criterion, base, notes)
    if not h.canonical:
        return [Criterion(c.param, c.type, c.modifier, c.prefix,
                          Has(h.rtype, h.param, i, h.base)) for i in inner]
    referring = _rows(backend, Query(h.rtype, where=[inner]), f"_has:{h.rtype}:{h.param}",
                      notes)
    ids: dict[str, None] = {}
    wanted: dict[str, None] = {}
    for d in bodies(referring).values():
        for v in extract(d).get(h.param, ()):
            if isinstance(v.reference, str):
                wanted[v.reference.partition("#")[0]] = None
    for name in wanted:
        url, _, version = name.partition("|")
        for row in _named(_by_url(backend, bodies, rtype, url, base), version or None):
            ids[row.rid] = None
    return [Criterion("_id", "token", value=TokenValue(None, rid)) for rid in ids]
