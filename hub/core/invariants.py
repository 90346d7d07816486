"""Invariants of the base specification that the R4B models do not evaluate (they check
structure and types, no FHIRPath), written out for the resources where breaking one misleads a
reader of the stored data. Each check appends a warning ``Issue("invariant", "key: human text")``
at the element that breaks it: a write is answered with it and kept (HL7's own example maps break
cmd-1), ``$validate`` reports it; `hub terminology load` refuses such CSV rows itself.

- cmd-1 (ConceptMap.group.element.target): a ``narrower`` or ``inexact`` map SHALL say why in a
  comment, else a reader takes it for a usable translation.
"""

from __future__ import annotations

from typing import Any

from hub.core.errors import Issue

CMD_1 = "cmd-1: If the map is narrower or inexact, there SHALL be some comments"


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


def check(rtype: str, d: dict, prefix: str, issues: list[Issue]) -> None:
    """Append to ``issues`` a warning for each invariant ``d`` breaks (expressions from
    ``prefix``)."""
    found = CHECKS.get(rtype)
    if found is not None:
        found(d, prefix, issues)
