"""System-level search: ``GET [base]?_type=A,B&…`` and ``POST [base]/_search``.

Each type's search runs through the same planner and repository as a type search (so access,
consent, the audit and every parameter behave the same); the page is filled from the types in the
order ``_type`` lists them (all types without it), and the ``next`` link's cursor says where it
stopped: the type's place and that type's own keyset cursor. The whole query is planned for
every type before any page is answered, lest a refusal wait for the page that reaches its type.
A parameter a listed type does not know is refused (``Prefer: handling=strict``); else, when
another type searched knows it, that type contributes nothing (none of its resources can meet
the criterion; ignoring it there would hand out all of them), with an informational issue; one
no type searched knows is ignored with a warning, as in a type search. Without ``_type``, only
the types the caller may search are searched, AuditEvent (the audit log's own search) only when
named; Person (the master patient index's view, with a search of its own) never. ``_sort`` across types is
refused: each type's order is its own (with one type listed it sorts). An ``_include`` goes to the
type it names as its source. ``_total=accurate`` and ``_summary=count`` add the
types' counts.

The compartment search of every type, ``GET [base]/Patient/{id}/*`` and ``POST
[base]/Patient/{id}/_search`` (R4 http.html#search), is the same search over the types of the
Patient compartment, each searched as ``Patient/{id}/{type}`` is (``search_bundle`` with the
compartment), so access and consent hold per type exactly as there. Either is audited as one
search (``Repository.as_one``): one AuditEvent naming what its types handed out.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hub.api.paging import link
from hub.api.search import plan_search, search_bundle
from hub.core import resource as res
from hub.core.access import Action
from hub.core.config import Settings
from hub.core.errors import FhirError, Issue, bad_request
from hub.core.ingest import Context
from hub.repository import VIEW_TYPES, Repository
from projections.search.compartment import compartment_group, patient_compartment
from projections.search.query import lacks

_OWN = ("_type", "_cursor", "_count", "_total")


Compartment = tuple[str, str]  # (compartment type, id): Patient/{id}/*


def _types(params: list[tuple[str, str]], compartment: Compartment | None = None
           ) -> tuple[list[str], bool]:
    listed = [t.strip() for k, v in params if k == "_type" for t in v.split(",") if t.strip()]
    universe = res.RESOURCE_TYPES if compartment is None \
        else frozenset(patient_compartment()) & res.RESOURCE_TYPES
    if not listed:  # AuditEvents live in the audit log, with a search of their own: named only
        return sorted(universe - {"AuditEvent"} - VIEW_TYPES), False
    unknown = [t for t in listed if t not in res.RESOURCE_TYPES]
    if unknown:
        raise bad_request(f"Unknown resource type(s) in _type: {', '.join(unknown[:5])}")
    outside = [t for t in listed if t not in universe]
    if outside:
        raise FhirError(400, "not-supported", f"_type={outside[0]}: {outside[0]} is not in the "
                        "Patient compartment")
    views = [t for t in listed if t in VIEW_TYPES]
    if views:  # the MPI's own search, which takes other parameters and pages by its own cursor
        raise bad_request(f"_type={views[0]}: {views[0]} is the master patient index's view, "
                          f"searched at GET /fhir/{views[0]}?identifier=|patient=|link=|_id=, "
                          "not across types")
    return list(dict.fromkeys(listed)), True


def _cursor(value: str | None, n_types: int) -> tuple[int, str | None]:
    if not value:
        return 0, None
    place, _, inner = value.partition(".")
    if not (place.isascii() and place.isdigit()) or int(place) >= n_types:
        raise bad_request("The paging cursor is not one this server wrote")
    return int(place), inner or None


def _next_cursor(bundle: dict) -> str | None:
    for lk in bundle.get("link", []):
        if lk.get("relation") == "next":
            return dict(parse_qsl(urlsplit(lk["url"]).query)).get("_cursor")
    return None


def _one_access(compartment: Compartment | None) -> Action:
    """What a search across types (of the system, or of a compartment) is audited as: one
    search, in one AuditEvent (its types' searches are its parts, not accesses of their own)."""
    if compartment is None:
        return Action("search-system")
    return Action("search-system", compartment[0], compartment[1])


def system_search(repo: Repository, ctx: Context, params: list[tuple[str, str]], base: str,
                  settings: Settings, strict: bool, compartment: Compartment | None = None
                  ) -> dict:
    """A search across types; with ``compartment`` (``("Patient", id)``) across the types of
    that compartment, within it."""
    return repo.as_one(ctx, _one_access(compartment), lambda: _system_search(
        repo, ctx, params, base, settings, strict, compartment))


def _system_search(repo: Repository, ctx: Context, params: list[tuple[str, str]], base: str,
                   settings: Settings, strict: bool, compartment: Compartment | None) -> dict:
    # the whole query against every type first: a page filled before the type that refuses it
    # (a criterion it lacks under strict handling, a malformed modifier, a type named but not
    # the caller's to search) would answer 200, and the next page 400 or 403
    _check_system_search(repo, ctx, params, base, settings, strict, compartment)
    types, explicit, count, counting, rest, (start, inner) = _parsed(params, settings,
                                                                     compartment)
    values = dict(params)
    lacking, notes = _lacking(types, rest, strict)

    entries: list[dict] = []
    outcomes: dict[str, dict] = {}
    total, known = 0, True
    next_cursor: str | None = None
    refused: FhirError | None = None  # why a type this caller may not search was left out
    searched = matched = 0
    for place, rtype in enumerate(types):
        if place < start and not counting:
            continue
        own: list[tuple[str, str]] = [(k, v) for k, v in rest if _applies(k, v, rtype)]
        wanted = count - matched
        fill = place >= start and wanted > 0 and next_cursor is None
        own.append(("_count", str(wanted if fill else 0)))
        if counting:
            own.append(("_total", "accurate"))
        if fill and place == start and inner:
            own.append(("_cursor", inner))
        if not fill and not counting:
            break
        if rtype in lacking:  # planned (access, the other parameters) but never run: no match
            try:
                plan_search(repo, ctx, rtype, [(k, v) for k, v in own if k not in lacking[rtype]],
                            base, settings, strict)
            except FhirError as e:
                if not explicit and e.status in (401, 403):
                    refused = e
                    continue
                raise
            searched += 1
            continue
        try:
            b = search_bundle(repo, ctx, rtype, own, base, settings, strict, compartment)
        except FhirError as e:
            if not explicit and e.status in (401, 403):
                refused = e
                continue  # a type this caller may not search: not part of "all types"
            raise
        searched += 1
        if counting and "total" not in b:  # a type too big to count for this caller
            known = False
        total += b.get("total", 0)
        for entry in b.get("entry", []):
            mode = entry["search"]["mode"]
            if mode == "outcome":
                outcomes[str(entry["resource"]["issue"])] = entry
            elif fill:
                entries.append(entry)
                matched += mode == "match"
        if fill:
            inner_next = _next_cursor(b)
            if inner_next:  # this type has more: the next page goes on in it
                next_cursor = f"{place}.{inner_next}"
            elif matched >= count and place + 1 < len(types):  # full: from the next type on
                next_cursor = f"{place + 1}."
    if not searched and refused is not None and start == 0:
        raise refused  # a caller who may search no type at all
    if next_cursor and next_cursor.endswith(".") and not counting:
        # the page ended with a type: say "next" only if some type after it has a match
        nxt = int(next_cursor[:-1])
        # whether a type after it has a match, asked of the index: nothing of it is handed out
        # (within one recorded access its searches are no part of it)
        probe = ctx if ctx.gathered is None else dataclasses.replace(ctx, gathered=[])
        if not any(_has_any(repo, probe, t, rest, base, settings, strict, explicit, compartment)
                   for t in types[nxt:] if t not in lacking):
            next_cursor = None
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if counting and known:
        out["total"] = total
    path = base if compartment is None else f"{base}/{compartment[0]}/{compartment[1]}/*"
    links = [{"relation": "self", "url": link(path, params)}]
    if next_cursor:
        links.append({"relation": "next", "url": link(path, params, _cursor=next_cursor)})
    out["link"] = links
    if values.get("_summary") == "count":
        entries = []
    if notes:
        outcomes["lacking"] = {"resource": {"resourceType": "OperationOutcome",
                                            "issue": [n.to_json() for n in notes]},
                               "search": {"mode": "outcome"}}
    all_entries = _once(entries) + list(outcomes.values())
    if all_entries:
        out["entry"] = all_entries
    return out


def _parsed(params: list[tuple[str, str]], settings: Settings, compartment: Compartment | None
            ) -> tuple[list[str], bool, int, bool, list[tuple[str, str]], tuple[int, str | None]]:
    """The search's own parameters: the types (and whether listed), the page size, whether the
    types' counts are added, the parameters passed on to each type, the cursor's place."""
    if compartment is not None and compartment[0] != "Patient":
        raise FhirError(400, "not-supported",
                        f"Only the Patient compartment is supported, not {compartment[0]}")
    types, explicit = _types(params, compartment)
    if len(types) > 1 and any(k == "_sort" for k, _ in params):
        raise bad_request("_sort is not supported across types; search one type to sort")
    values = dict(params)
    count_raw = values.get("_count")
    if count_raw is not None and not (count_raw.isascii() and count_raw.isdigit()):
        raise bad_request(f"_count={count_raw!r} is not a non-negative integer")
    count = min(int(count_raw), settings.max_count) if count_raw else settings.default_count
    counting = values.get("_summary") == "count" or values.get("_total") == "accurate"
    rest = [(k, v) for k, v in params if k not in _OWN]
    return types, explicit, count, counting, rest, _cursor(values.get("_cursor"), len(types))


def check_system_search(repo: Repository, ctx: Context, params: list[tuple[str, str]],
                        base: str, settings: Settings, strict: bool,
                        compartment: Compartment | None = None) -> None:
    """Whether ``system_search`` would fail, nothing read: each type's search planned as it
    would be run (a type this caller may not search left out of "all types", as there), for a
    transaction's GET checked before its writes. Stricter only in planning every type, where a
    page filled early would not reach the last ones."""
    # a refusal recorded once, as the search would be
    repo.as_one(ctx, _one_access(compartment), lambda: _check_system_search(
        repo, ctx, params, base, settings, strict, compartment), answered=False)


def _check_system_search(repo: Repository, ctx: Context, params: list[tuple[str, str]],
                         base: str, settings: Settings, strict: bool,
                         compartment: Compartment | None) -> None:
    types, explicit, _, counting, rest, (start, inner) = _parsed(params, settings, compartment)
    # strict: a type lacking a criterion another has is refused once its access is known (a
    # type the caller may not search is no part of "all types"), naming the type
    lacking, _ = _lacking(types, rest, False)
    refused: FhirError | None = None
    planned = 0
    for place, rtype in enumerate(types):
        own = [(k, v) for k, v in rest if _applies(k, v, rtype)
               and k not in lacking.get(rtype, ())] + [("_count", "0")]
        if counting:
            own.append(("_total", "accurate"))
        if place == start and inner:
            own.append(("_cursor", inner))
        try:
            plan_search(repo, ctx, rtype, own, base, settings, strict)
            if compartment is not None:
                compartment_group(*compartment, rtype, base)
        except FhirError as e:
            if not explicit and e.status in (401, 403):
                refused = e
                continue
            raise
        planned += 1
        if strict and rtype in lacking:
            raise FhirError(400, "not-supported", f"Unsupported search parameter(s) of {rtype}: "
                            f"{', '.join(sorted(lacking[rtype]))}")
    if not planned and refused is not None and start == 0:
        raise refused


def _lacking(types: list[str], rest: list[tuple[str, str]], strict: bool
             ) -> tuple[dict[str, set[str]], list[Issue]]:
    """The types that lack a criterion some other type searched has (type -> those criteria),
    which contribute no match, and the informational issues saying so; none when strict (the
    type search refuses what its type lacks, ``_check_system_search`` before any page)."""
    if strict or len(types) < 2:
        return {}, []
    lacking: dict[str, set[str]] = {}
    notes = []
    for name in dict.fromkeys(k for k, _ in rest):
        without = [t for t in types if lacks(t, name)]
        if not without or len(without) == len(types):  # known to all, or unknown: a type search's
            continue
        for t in without:
            lacking.setdefault(t, set()).add(name)
        named = ", ".join(without) if len(without) <= 10 else f"{len(without)} of the types searched"
        notes.append(Issue("informational", f"{name}: no search parameter of {named}; none of "
                           "their resources can meet it, so they contribute no matches",
                           "information"))
    return lacking, notes


def _once(entries: list[dict]) -> list[dict]:
    """Each resource once in the page (bdl-7: one fullUrl per resource): an include that is
    also a match, or that another type's search included too, is left out, as a type search
    leaves out an include that is one of its matches."""
    matches = {e.get("fullUrl") for e in entries if e["search"]["mode"] == "match"}
    seen: set[str | None] = set()
    out = []
    for e in entries:
        if e["search"]["mode"] == "include":
            if e.get("fullUrl") in matches or e.get("fullUrl") in seen:
                continue
            seen.add(e.get("fullUrl"))
        out.append(e)
    return out


def _applies(key: str, value: str, rtype: str) -> bool:
    """Whether a parameter goes to ``rtype``'s search: an ``_include`` names the type it follows
    references from (``Observation:subject`` goes to the Observations only; a wildcard and an
    ``:iterate`` one to every type), as HAPI reads them across types."""
    if key != "_include":
        return True
    source = value.split(":", 1)[0]
    return value in ("*", "*:*") or source in ("*", rtype)


def _has_any(repo: Repository, ctx: Context, rtype: str, rest: list[tuple[str, str]], base: str,
             settings: Settings, strict: bool, explicit: bool,
             compartment: Compartment | None = None) -> bool:
    try:
        b = search_bundle(repo, ctx, rtype, [*rest, ("_count", "1"), ("_total", "none")], base,
                          settings, strict, compartment)
    except FhirError as e:
        if not explicit and e.status in (401, 403):
            return False
        raise
    return any(entry["search"]["mode"] == "match" for entry in b.get("entry", []))
