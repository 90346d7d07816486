"""The R4 search parameters of each resource type, from projections/data/search_parameters.json.

The table is derived by scripts/derive_search_params.py from the specification; nothing here reads
../shared. Every type also has the common parameters (``_id``, ``_lastUpdated``, ``_tag``, ``_profile``,
``_security``, ``_source``), their expressions written against the type (``Patient.meta.tag``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

TYPES = ("string", "token", "date", "number", "quantity", "reference", "uri", "composite", "special")
COMPOSITE_COMPONENTS = ("token", "quantity", "date", "number", "string", "uri")


@dataclass(frozen=True, slots=True)
class Component:
    code: str
    type: str
    expression: str  # relative to each node the composite's expression selects


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str
    expression: str | None
    id: str = ""  # the SearchParameter's id: its url is http://hl7.org/fhir/SearchParameter/{id}
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    comparators: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    # Stored as other parameters' rows (see ``_aliases``): their codes, and for a typed reference
    # alias (``patient`` = ``subject`` where the target is a Patient) the target type.
    stored_as: tuple[str, ...] = ()
    target_type: str | None = None

    @property
    def answered(self) -> bool:
        """Whether a search by it is answered: every type but ``special`` and the Bundle's
        ``composition``/``message``; a composite when the
        index holds what it compares (two components, none a reference: the composite table
        keeps a first token and a second value)."""
        if self.type == "special":
            return False
        if self.type == "reference" and (self.expression or "").endswith("entry[0].resource"):
            # Bundle composition/message: the first entry's resource, inside the Bundle, which
            # the index would take for the local resource of the same id
            return False
        if self.type == "composite":
            return len(self.components) == 2 and all(
                c.type in COMPOSITE_COMPONENTS for c in self.components)
        return True

    @property
    def url(self) -> str:
        return f"http://hl7.org/fhir/SearchParameter/{self.id}"


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(resources.files("projections.data").joinpath("search_parameters.json").read_text())


def _param(code: str, e: dict, rtype: str | None = None) -> SearchParam:
    expression = e.get("expression")
    if rtype and expression and expression.startswith("Resource."):
        expression = rtype + expression[len("Resource"):]
    return SearchParam(
        code=code, type=e["type"], expression=expression, id=e.get("id", ""),
        targets=tuple(e.get("target", ())),
        components=tuple(Component(c["code"], c["type"], c["expression"]) for c in e.get("component", ())),
        comparators=tuple(e.get("comparator", ())), modifiers=tuple(e.get("modifier", ())),
    )


@lru_cache(maxsize=None)
def params_for(rtype: str) -> dict[str, SearchParam]:
    """code -> parameter, for a resource type the hub accepts (KeyError otherwise)."""
    table = _table()
    own = table["types"][rtype]
    out = {code: _param(code, e, rtype) for code, e in table["common"].items()}
    out.update((code, _param(code, e)) for code, e in own.items())
    for code, (stored_as, target_type) in _aliases(out).items():
        out[code] = replace(out[code], stored_as=stored_as, target_type=target_type)
    return out


def indexed_params(rtype: str) -> dict[str, SearchParam]:
    """The parameters whose values the index stores (aliases are answered from others' rows)."""
    return {c: p for c, p in params_for(rtype).items() if not p.stored_as}


def _parts(expression: str) -> tuple[str, ...]:
    """The top-level alternatives of a FHIRPath union, outer parentheses removed."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in expression:
        depth += (ch == "(") - (ch == ")")
        if ch == "|" and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return tuple(_unwrap(p.strip()) for p in out)


def _unwrap(p: str) -> str:
    while p.startswith("(") and p.endswith(")"):
        depth = 0
        for i, ch in enumerate(p):
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and i < len(p) - 1:
                return p  # "(a) | (b)": the parentheses do not enclose it all
        p = p[1:-1].strip()
    return p


_TYPED = re.compile(r"(.+)\.where\(resolve\(\) is (\w+)\)")


def _aliases(params: dict[str, SearchParam]) -> dict[str, tuple[tuple[str, ...], str | None]]:
    """Parameters whose index rows would repeat other parameters' rows, and which those are.

    The specification defines several parameters over the same data: ``phonetic`` is ``name``,
    ``combo-code`` is ``code | component.code``, ``patient`` is ``subject`` where the target is a
    Patient. Storing them again would make the index a quarter bigger and slower to build; the
    query answers them from the rows of the parameters they repeat.
    """
    def shape(p: SearchParam) -> tuple:
        return (p.type, tuple((c.code and "", c.type, c.expression) for c in p.components))

    plain = {c: p for c, p in params.items() if p.expression and not c.startswith("_")}
    out: dict[str, tuple[tuple[str, ...], str | None]] = {}
    for code, p in plain.items():
        # ``or ""``: every expression of ``plain`` is set (for the type checker)
        m = _TYPED.fullmatch(p.expression or "") if p.type == "reference" else None
        if m:
            base = [c for c, q in plain.items() if c != code and q.type == "reference"
                    and q.expression == m.group(1)]
            if base:
                out[code] = ((base[0],), m.group(2))
            continue
        parts = _parts(p.expression or "")
        # others of the same type (and, for composites, the same component expressions) whose
        # alternatives together are exactly this one's; the first in order when two are equal
        left, union = set(parts), []
        for c, q in plain.items():
            if c == code or c in out or shape(q)[1] != shape(p)[1] or q.type != p.type:
                continue
            q_parts = set(_parts(q.expression or ""))
            if q_parts and q_parts <= left and (len(parts) > 1 or c < code):
                union.append(c)
                left -= q_parts
        if union and not left:
            out[code] = (tuple(union), None)
    # an alias of an alias would need two steps at query time: keep such a parameter stored
    return {c: a for c, a in out.items() if not any(b in out for b in a[0])}


def param(rtype: str, code: str) -> SearchParam | None:
    return params_for(rtype).get(code)


def resource_types() -> tuple[str, ...]:
    return tuple(_table()["types"])
