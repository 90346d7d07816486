"""Invariants of the base specification that the R4B models do not evaluate (they check
structure and types, no FHIRPath), written out for the resources where breaking one misleads a
reader of the stored data. Each check appends a warning ``Issue("invariant", "key: human text")``
at the element that breaks it: a write is answered with it and kept (HL7's own example maps break
cmd-1), ``$validate`` reports it; `hub terminology load` refuses such CSV rows itself.

- cmd-1 (ConceptMap.group.element.target): a ``narrower`` or ``inexact`` map SHALL say why in a
  comment, else a reader takes it for a usable translation.

``refusals`` are the few whose breach makes the terminology services answer inconsistently: errors,
so that the write is a 422 (``hub.core.resource.validate``, every write path):

- csd-1 (CodeSystem): every code is defined once (nested twice included); the index keeps the
  first, a second one with another meaning silently disappeared.
- dom-2 (every resource): a contained resource contains none itself; the hub's reads of contained
  resources (references, compartments, narratives) look one level down, and R4 allows no more.
- a CodeSystem's hierarchy (nesting, ``parent``/``child`` properties, also under another name with
  the concept-properties URI) does not loop: $subsumes A,B and B,A disagreed and $lookup dropped a
  parent (the index cuts cycles), as the CSV path already refuses.
"""

from __future__ import annotations

from typing import Any

from hub.core.errors import Issue

CMD_1 = "cmd-1: If the map is narrower or inexact, there SHALL be some comments"
DOM_2 = "dom-2: If the resource is contained in another resource, it SHALL NOT contain nested Resources"


def _items(v: Any) -> list[tuple[int, dict]]:
    return [(i, x) for i, x in enumerate(v) if isinstance(x, dict)] if isinstance(v, list) else []


def _concept_map(d: dict, prefix: str, issues: list[Issue]) -> None:
    for gi, g in _items(d.get("group")):
        for ei, e in _items(g.get("element")):
            for ti, t in _items(e.get("target")):
                if t.get("equivalence") in ("narrower", "inexact") and not t.get("comment"):
                    issues.append(Issue("invariant", CMD_1, "warning", expression=(
                        f"{prefix}.group[{gi}].element[{ei}].target[{ti}]")))


CHECKS = {"ConceptMap": _concept_map}

CSD_1 = "csd-1: Within a code system definition, all the codes SHALL be unique"
_PARENT_URI = "http://hl7.org/fhir/concept-properties#parent"
_CHILD_URI = "http://hl7.org/fhir/concept-properties#child"


def _code_system(d: dict, prefix: str, issues: list[Issue]) -> None:
    declared = {p["code"]: p.get("uri") for _, p in _items(d.get("property"))
                if isinstance(p.get("code"), str)}
    parent_props = {"parent", *(c for c, u in declared.items() if u == _PARENT_URI)}
    child_props = {"child", *(c for c, u in declared.items() if u == _CHILD_URI)}
    where: dict[str, str] = {}  # code -> the path of its definition
    parents: dict[str, list[str]] = {}
    stack: list[tuple[dict, str, str | None]] = [
        (c, f"{prefix}.concept[{i}]", None) for i, c in reversed(_items(d.get("concept")))]
    while stack:  # depth first, in definition order
        c, path, up = stack.pop()
        code = c.get("code")
        if not isinstance(code, str) or not code:
            continue
        if code in where:
            issues.append(Issue("invariant", f"{CSD_1}: code {code[:100]!r} is defined again "
                                f"(first at {where[code]})", "error", f"{path}.code"))
            continue
        where[code] = path
        ups = parents.setdefault(code, [])
        if up is not None:
            ups.append(up)
        for _, p in _items(c.get("property")):
            name = p.get("code")
            # the value as the index reads it (terminology.rows.property_value)
            value = next((v.get("code") if isinstance(v, dict) else v
                          for k, v in p.items() if k.startswith("value")), None)
            if not isinstance(value, str) or not value:
                continue
            if name in parent_props:
                ups.append(value)
            elif name in child_props:
                parents.setdefault(value, []).append(code)
        stack.extend((child, f"{path}.concept[{i}]", code)
                     for i, child in reversed(_items(c.get("concept"))))
    loop = parent_loop(parents)
    if loop:
        shown = " -> ".join(repr(x[:40]) for x in loop[:8]) + (" -> …" if len(loop) > 8 else "")
        issues.append(Issue("invariant", f"The concept hierarchy loops: {shown} (each is the "
                            "parent of the one before): a code cannot be its own ancestor",
                            "error", where.get(loop[0], f"{prefix}.concept")))


def parent_loop(parents: dict[str, list[str]]) -> list[str]:
    """The first parent loop found (code, its parent, …, code again), or []: a CodeSystem's
    hierarchy, written as JSON or as a CSV file (``terminology.csvformat``)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in parents:
        if state.get(start):
            continue
        stack = [(start, iter(parents.get(start, ())))]
        state[start] = 1
        while stack:
            code, it = stack[-1]
            up = next(it, None)
            if up is None:
                state[code] = 2
                stack.pop()
            elif state.get(up) == 1:
                path = [c for c, _ in stack]
                return path[path.index(up):] + [up]
            elif not state.get(up):
                state[up] = 1
                stack.append((up, iter(parents.get(up, ()))))
    return []


REFUSALS = {"CodeSystem": _code_system}


def _no_nested_contained(d: dict, prefix: str, issues: list[Issue]) -> None:
    for i, c in _items(d.get("contained")):
        if "contained" in c:
            issues.append(Issue("invariant", DOM_2, "error", f"{prefix}.contained[{i}].contained"))


def refusals(rtype: str, d: dict, prefix: str, issues: list[Issue]) -> None:
    """Append to ``issues`` an error for each invariant ``d`` breaks that the hub refuses."""
    _no_nested_contained(d, prefix, issues)
    found = REFUSALS.get(rtype)
    if found is not None:
        found(d, prefix, issues)


def check(rtype: str, d: dict, prefix: str, issues: list[Issue]) -> None:
    """Append to ``issues`` a warning for each invariant ``d`` breaks (expressions from
    ``prefix``)."""
    found = CHECKS.get(rtype)
    if found is not None:
        found(d, prefix, issues)
