"""What the terminology read model keeps of a resource: pure functions from FHIR JSON to rows.

CodeSystem: one row per concept (nested concepts flattened, in definition order) with its display,
whether it is active and abstract, and the rest (definition, designations, properties) as JSON;
the hierarchy as a closure (every ancestor of every concept) from concept nesting and the
``parent``/``child`` properties; each property value as a row for ``=`` filters. ConceptMap: one
row per source code -> target code. Aliases: the URIs a code system is also known by (its
``identifier`` OIDs; a NamingSystem's ``uniqueId``s).

The input is validated FHIR (``hub.core.ingest``), but inline resources in operation requests are
only parsed, so every accessor here tolerates any JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

# a sort key (text, for the read model's SQL): "1.10" > "1.9" > "1", "v10" > "v9", any version
# > none; one rule with search's canonicals
from hub.core.versions import version_key

T = TypeVar("T")

# R4 concept properties (http://hl7.org/fhir/concept-properties) and their usual codes
PARENT_URI = "http://hl7.org/fhir/concept-properties#parent"
CHILD_URI = "http://hl7.org/fhir/concept-properties#child"
INACTIVE_STATUS = {"retired", "inactive"}  # `status` values that make a concept inactive
OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
RFC3986 = "urn:ietf:rfc:3986"
# equivalences that say "this source is not this target" (ConceptMap $translate: no match)
NO_MATCH = {"unmatched", "disjoint"}
# reading a map backwards: "target is wider than source" becomes "narrower", and so on
REVERSED = {"wider": "narrower", "narrower": "wider", "subsumes": "specializes",
            "specializes": "subsumes"}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def latest_per_url(items: Iterable[T], url: Callable[[T], Any], version: Callable[[T], Any],
                   owner: Callable[[T], Any] | None = None,
                   held: dict[str, Any] | None = None) -> list[T]:
    """The current version of each canonical resource: per ``url`` the highest version
    (``version_key``), of equal ones the last given; an item without a url counts on its own.
    The one rule for ConceptMaps: the read model's, ``$translate``'s and the normalisers'.

    ``owner`` (items given in the order they were first stored): the institution that wrote an
    item, None for the region's (a steward's, an operator's). A url is held by the institution
    of its first item that has one; another institution's items of that url never become its
    current version (a map of one hospital's codes is not replaced by another's, whatever
    version it claims); the region's may. ``held``: who holds each url, when the items are not
    all of them (a scope's maps)."""
    items = list(items)
    if held is None and owner is not None:
        held = {}
        for item in items:
            u, who = url(item), owner(item)
            if isinstance(u, str) and u and who and u not in held:
                held[u] = who
    best: dict[Any, tuple[str, int, T]] = {}
    for i, item in enumerate(items):
        u, v = url(item), version(item)
        if owner is not None and held and u in held and owner(item) not in (None, "", held[u]):
            continue
        key = u if isinstance(u, str) and u else ("", i)
        rank = version_key(v if isinstance(v, str) else None)
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, i, item)
    return [item for _, _, item in sorted(best.values(), key=lambda b: b[1])]


def oid_uri(value: str) -> str:
    """``urn:oid:`` form of a bare OID; other values unchanged."""
    return f"urn:oid:{value}" if OID_RE.match(value) else value


def property_value(p: dict) -> Any:
    """The value of a concept property (``valueCode``, ``valueBoolean``, … ``valueCoding.code``)."""
    for key, value in p.items():
        if key.startswith("value"):
            if isinstance(value, dict):  # valueCoding
                return value.get("code")
            return value
    return None


def property_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


# -- CodeSystem --------------------------------------------------------------------------------


def property_codes(cs: dict) -> dict[str, str]:
    """Declared property code -> its uri (for recognising parent/child under other names)."""
    out = {}
    for p in as_list(cs.get("property")):
        if isinstance(p, dict) and text(p.get("code")):
            out[p["code"]] = p.get("uri") or ""
    return out


def iter_concepts(concepts: Any, parent: str | None = None) -> Iterator[tuple[dict, str | None]]:
    """(concept, the code it is nested under) depth first, in definition order."""
    stack = [(c, parent) for c in reversed(as_list(concepts))]
    while stack:
        c, up = stack.pop()
        if not isinstance(c, dict) or not text(c.get("code")):
            continue
        yield c, up
        stack.extend((child, c["code"]) for child in reversed(as_list(c.get("concept"))))


def concept_rows(cs: dict) -> tuple[list[tuple], dict[str, set[str]], list[tuple[str, str, str]]]:
    """([(code, seq, display, active, abstract, extra)], parents, [(code, property, value)]).

    ``extra`` holds definition, designations and properties (but parent and child: the
    hierarchy has them) for $lookup.
    """
    declared = property_codes(cs)
    parent_props = {"parent", *(c for c, u in declared.items() if u == PARENT_URI)}
    child_props = {"child", *(c for c, u in declared.items() if u == CHILD_URI)}
    rows: list[tuple] = []
    parents: dict[str, set[str]] = {}
    props: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for seq, (c, up) in enumerate(iter_concepts(cs.get("concept"))):
        code = c["code"]
        ups = parents.setdefault(code, set())
        if up is not None:
            ups.add(up)
        if code in seen:  # listed twice: refused on write (csd-1, hub.core.invariants); stored before
            continue
        seen.add(code)
        active, abstract = True, False
        kept = []
        for p in as_list(c.get("property")):
            if not isinstance(p, dict) or not text(p.get("code")):
                continue
            name, value = p["code"], property_value(p)
            if name in parent_props and text(value):
                ups.add(value)  # kept in the closure, not again with the concept
            elif name in child_props and text(value):
                parents.setdefault(value, set()).add(code)
            else:
                kept.append(p)
                if name == "inactive" and value is True:
                    active = False
                elif name == "status" and value in INACTIVE_STATUS:
                    active = False
                elif name in ("notSelectable", "abstract") and value is True:
                    abstract = True
            value_text = property_text(value)
            if value_text is not None:
                props.append((code, name, value_text))
        extra = {k: c[k] for k in ("definition", "designation") if k in c}
        if kept:
            extra["property"] = kept
        rows.append((code, seq, text(c.get("display")), int(active), int(abstract), extra))
    return rows, parents, props


def closure(parents: dict[str, set[str]]) -> dict[str, set[str]]:
    """Every ancestor of every code (not the code itself); cycles are cut, never looped."""
    done: dict[str, set[str]] = {}
    for start in parents:
        if start in done:
            continue
        # iterative depth first: a code's ancestors are its parents' ancestors plus its parents
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(parents.get(start, ())))]
        on_path = {start}
        while stack:
            code, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(code)
                acc: set[str] = set()
                for p in parents.get(code, ()):
                    if p == code or p in on_path:
                        continue  # a cycle back into the path
                    acc.add(p)
                    acc |= done.get(p, set())
                done[code] = acc
                continue
            if nxt in done or nxt in on_path or nxt == code:
                continue
            on_path.add(nxt)
            stack.append((nxt, iter(parents.get(nxt, ()))))
    return done


def identifiers_as_uris(d: dict) -> list[str]:
    """The URIs (``urn:oid:…``, URLs) a resource's ``identifier``s name."""
    out = []
    ids = d.get("identifier")
    for ident in ids if isinstance(ids, list) else [ids] if isinstance(ids, dict) else []:
        if not isinstance(ident, dict) or not text(ident.get("value")):
            continue
        value = ident["value"].strip()
        system = ident.get("system")
        if system == RFC3986 or value.startswith("urn:oid:") or OID_RE.match(value):
            out.append(oid_uri(value))
    return out


def naming_aliases(ns: dict) -> list[tuple[str, int]]:
    """(uri, preferred) of every uniqueId of a NamingSystem: oids as ``urn:oid:``, uris as is."""
    out = []
    for u in as_list(ns.get("uniqueId")):
        if not isinstance(u, dict) or not text(u.get("value")):
            continue
        kind, value = u.get("type"), u["value"].strip()
        if kind == "oid":
            value = oid_uri(value.removeprefix("urn:oid:"))
        elif kind not in ("uri", None):
            continue  # uuid, other: not how a system is written in a Coding
        out.append((value, int(u.get("preferred") is True)))
    return out


# -- ConceptMap --------------------------------------------------------------------------------


def map_rows(cm: dict) -> list[tuple]:
    """(source system, source code, source display, target system, target code, target display,
    equivalence, comment) for every target of every element; an element without targets has
    one row with no target (it says the code is known and unmapped)."""
    out: list[tuple] = []
    for g in as_list(cm.get("group")):
        if not isinstance(g, dict):
            continue
        ssys, tsys = text(g.get("source")) or "", text(g.get("target")) or ""
        for e in as_list(g.get("element")):
            if not isinstance(e, dict) or not text(e.get("code")):
                continue
            targets = [t for t in as_list(e.get("target")) if isinstance(t, dict)]
            if not targets:
                out.append((ssys, e["code"], text(e.get("display")), tsys, None, None,
                            "unmatched", None))
            for t in targets:
                out.append((ssys, e["code"], text(e.get("display")), tsys, text(t.get("code")),
                            text(t.get("display")), text(t.get("equivalence")) or "equivalent",
                            text(t.get("comment"))))
    return out


def unmapped(cm: dict) -> list[tuple[str, str, dict]]:
    """(source system, target system, group.unmapped) of the groups that say what to do with
    codes they do not list."""
    return [(text(g.get("source")) or "", text(g.get("target")) or "", g["unmapped"])
            for g in as_list(cm.get("group"))
            if isinstance(g, dict) and isinstance(g.get("unmapped"), dict)]


def scope(cm: dict, side: str) -> str | None:
    """``sourceUri``/``sourceCanonical`` (or target) of a ConceptMap: the value set it maps."""
    return text(cm.get(f"{side}Uri")) or text(cm.get(f"{side}Canonical"))


def header(d: dict) -> dict:
    """A terminology resource without its bulk (concepts, map groups): what $lookup and the
    operations read of the resource itself."""
    return {k: v for k, v in d.items() if k not in ("concept", "group", "text")}
