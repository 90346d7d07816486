"""The query of a query-restricted SMART scope (``patient/Observation.rs?category=laboratory``):
which resources it selects, judged one resource at a time, and as search criteria.

A scope's query is read as a search on its type would read it (``projections.search.query``)
and judged on a resource with the values the search index would hold for it
(``projections.search.extract``), so a scope selects a resource exactly when a search with its
query would find it. Its parameters are AND'ed; comma-separated values of one are OR'ed.

Judged here: token parameters (``category``, ``code``, ``status``, ``_tag``, ``_security`` …,
as ``code``, ``system|code``, ``system|`` or ``|code``, and with ``:not``) and ``_id``. A scope
whose query holds anything else (another parameter type, a modifier, a chain, an unknown
parameter) selects nothing: the hub grants no more than it can check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from hub.core.errors import HubError
from projections.search.extract import Token, extract
from projections.search.query import Criterion, TokenValue, criteria_groups

__all__ = ["ScopeQuery", "compile_query", "search_groups"]


@dataclass(frozen=True)
class ScopeQuery:
    """A scope query on ``rtype``: AND of groups, each an OR of criteria. ``groups`` is None
    when the query cannot be judged here (it then selects nothing)."""

    rtype: str
    groups: tuple[tuple[Criterion, ...], ...] | None

    def matches(self, resource: dict) -> bool:
        if self.groups is None:
            return False
        if resource.get("resourceType") != self.rtype:
            return False
        try:
            values = extract(resource)
        except Exception:  # a resource the index cannot read is not one the scope selects
            return False
        return all(any(_matches(c, resource, values) for c in group) for group in self.groups)


def _supported(c: Criterion) -> bool:
    if c.chain is not None or not isinstance(c.value, TokenValue):
        return False
    if c.param == "_id":
        return c.modifier is None and c.value.code is not None
    return c.type == "token" and c.modifier in (None, "not")


def _matches(c: Criterion, resource: dict, values: dict[str, list]) -> bool:
    tv: TokenValue = c.value
    if c.param == "_id":
        return resource.get("id") == tv.code
    found = any(isinstance(t, Token) and _token(tv, t) for t in values.get(c.param, ()))
    return not found if c.modifier == "not" else found


def _token(tv: TokenValue, t: Token) -> bool:
    """The test ``projections.search.sqlite_query`` makes of an index row, on one value."""
    if tv.code is not None and t.code != tv.code:
        return False
    if tv.system == "":
        if t.system is not None:
            return False
    elif tv.system is not None and tv.bound_codes:
        # a code element whose binding fixes the system is indexed without it
        if t.system != tv.system and not (t.system is None and (
                tv.code is not None or t.code in tv.bound_codes)):
            return False
    elif tv.system is not None and t.system != tv.system:
        return False
    if tv.type_system is not None and t.type_system != tv.type_system:
        return False
    return tv.type_code is None or t.type_code == tv.type_code


@lru_cache(maxsize=1024)
def compile_query(rtype: str, query: tuple[tuple[str, str], ...]) -> ScopeQuery:
    """The scope query ``query`` (a ``Scope.query``) on ``rtype``."""
    groups: list[tuple[Criterion, ...]] = []
    for name, value in query:
        try:
            found = criteria_groups(rtype, name, value)
        except HubError:  # unknown or unsupported parameter, malformed value
            return ScopeQuery(rtype, None)
        if not found or not all(_supported(c) for group in found for c in group):
            return ScopeQuery(rtype, None)
        groups += [tuple(group) for group in found]
    return ScopeQuery(rtype, tuple(groups))


MAX_GROUPS = 64  # beyond: the search is not narrowed in its plan, only resource by resource


def search_groups(queries: Sequence[ScopeQuery]) -> list[list[Criterion]] | None:
    """The OR of several scope queries as AND groups of a search (``Query.where``): each group
    picks one group of every query (the product, OR distributed over AND). When none of the
    queries can be judged, one group no resource passes (``_id`` empty); None: the search is not
    narrowed in its plan (too many groups; the per-resource check still holds)."""
    usable = [q.groups for q in queries if q.groups is not None]
    if not usable:
        return [[Criterion("_id", "token", value=TokenValue(None, ""))]]
    product: list[list[Criterion]] = [[]]
    for groups in usable:
        if not groups:  # a query without parameters selects everything: no narrowing
            return None
        product = [[*chosen, *g] for chosen in product for g in groups]
        if len(product) > MAX_GROUPS:
            return None
    return [_dedup(g) for g in product]


def _dedup(group: list[Criterion]) -> list[Criterion]:
    out: list[Criterion] = []
    for c in group:
        if not any(c is o for o in out):
            out.append(c)
    return out
