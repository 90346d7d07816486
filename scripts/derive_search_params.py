"""Derive the R4 search parameters of every resource type the hub accepts: projections/data/search_parameters.json.

Reads ../shared/fhir-r4/search-parameters.json (a Bundle of the specification's SearchParameters) and keeps,
per resource type of fhir_mapping/tables/resource_types.json, each parameter's code, type, FHIRPath expression
restricted to that type (multi-base expressions are split on their top-level ``|``), targets, composite
components (code, type, expression relative to the composite's context) and comparators/modifiers. The
parameters every resource has (``_id``, ``_lastUpdated``, ``_tag``, ``_profile``, ``_security``,
``_source``) are kept once under "common", written against ``Resource``. Run after changing either input:

    .venv/bin/python scripts/derive_search_params.py
"""

from __future__ import annotations

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "fhir-r4" / "search-parameters.json"
OUT = ROOT / "projections" / "data" / "search_parameters.json"
RESOURCE_TYPES = json.loads((ROOT / "fhir_mapping" / "tables" / "resource_types.json").read_text())
COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")


def split_union(expression: str) -> list[str]:
    """The parts of ``a | (b | c) | d`` at parenthesis depth 0: ``a``, ``(b | c)``, ``d``."""
    parts, depth, quoted, cur = [], 0, False, []
    for ch in expression:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
        elif not quoted and ch == "|" and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def head(part: str) -> str:
    m = re.match(r"\(*\s*([A-Za-z]+)", part)
    return m.group(1) if m else ""


def for_base(expression: str, base: str, sp: dict) -> str:
    """The parts of a (possibly multi-base) expression that apply to ``base``."""
    parts = split_union(expression)
    # InsurancePlan-name is written "name | alias", relative to its (single) base.
    if len(sp["base"]) == 1 and all(head(p) and not head(p)[0].isupper() for p in parts):
        parts = [f"{base}.{p}" for p in parts]
    return " | ".join(p for p in parts if head(p) == base)


def components(sp: dict, by_url: dict) -> list[dict]:
    out = []
    for c in sp.get("component", ()):
        d = by_url[c["definition"]]
        # Spec oddity: Observation-code-value-date writes ofType(DateTime) for ofType(dateTime).
        out.append({"code": d["code"], "type": d["type"],
                    "expression": c["expression"].replace("ofType(DateTime)", "ofType(dateTime)")})
    # Spec oddity: DocumentReference-relationship pairs "code" with relatesto (a reference) and
    # "target" with relation (a token); pair each definition with the element its own expression names.
    if sp["id"] == "DocumentReference-relationship":
        by_code = {c["code"]: c for c in out}
        out = [{**by_code["relation"], "expression": "code"},
               {**by_code["relatesto"], "expression": "target"}]
    return out


def entry(sp: dict, expression: str | None, by_url: dict) -> dict:
    e = {"id": sp["id"], "type": sp["type"]}
    if expression:
        e["expression"] = expression.replace("ofType(DateTime)", "ofType(dateTime)")
    for key in ("target", "modifier", "comparator"):
        if sp.get(key):
            e[key] = sorted(sp[key])
    if sp.get("component"):
        e["component"] = components(sp, by_url)
    return e


def main() -> None:
    bundle = json.loads(SOURCE.read_text())
    params = [e["resource"] for e in bundle["entry"]]
    by_url = {sp["url"]: sp for sp in params}
    common: dict[str, dict] = {}
    types: dict[str, dict[str, dict]] = {t: {} for t in RESOURCE_TYPES}
    for sp in params:
        if sp["base"] in (["Resource"], ["DomainResource"]):
            if sp["code"] in COMMON:
                common[sp["code"]] = entry(sp, sp.get("expression"), by_url)
            continue
        for base in sp["base"]:
            if base not in types:
                continue  # an R4 type the R4B models do not have (MedicinalProduct, …)
            expression = for_base(sp.get("expression") or "", base, sp)
            if not expression:
                print(f"  skipped {sp['id']} for {base}: no expression for this type")
                continue
            types[base][sp["code"]] = entry(sp, expression, by_url)
    out = {"fhirVersion": "4.0.1", "common": dict(sorted(common.items())),
           "types": {t: dict(sorted(ps.items())) for t, ps in sorted(types.items())}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
    # one resource type per line, so diffs after a regeneration stay readable
    text = re.sub(r'(?<=[{,])("(?:[A-Z][A-Za-z]+)":\{")', r"\n\1", text, count=0)
    OUT.write_text(text + "\n")
    n = sum(len(ps) for ps in types.values())
    empty = sorted(t for t, ps in types.items() if not ps)
    print(f"{n} parameters on {len(types)} types (+{len(common)} common) -> {OUT} "
          f"({OUT.stat().st_size // 1024} KiB)")
    print(f"types with only the common parameters (R4B-only types): {', '.join(empty)}")


if __name__ == "__main__":
    main()
