"""Derive projections/data/code_systems.json: the systems that bindings fix for ``code`` elements.

Extraction indexes a ``code`` element (``Patient.gender``) as a token without a system: the system
is not in the resource, it is fixed by the element's required binding. A client may still search
with it (``gender=http://hl7.org/fhir/administrative-gender|male``). This table tells the query
side which systems a token parameter's system-less codes belong to:

    {resource type: {parameter: {system: [codes]}}}

It is derived from fhir_mapping/tables/element_types.json (whose code lists are kept only where they equal a
complete official CodeSystem) and ../shared/fhir-r4/valuesets.json (which CodeSystem has exactly
those codes; where several have, all of them). Only parameters whose expression the compiled
extractor understands are covered. Run from the project root after deriving element_types:

    .venv/bin/python scripts/derive_code_systems.py
"""

from __future__ import annotations

import json
from pathlib import Path

from hub.core.jsontypes import TYPES as ELEMENTS
from projections.search.plan import CompileError, _merge_oftype, _Parser
from fhir_defs import complete_code_systems
from projections.search.params import params_for, resource_types

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "projections" / "data" / "code_systems.json"


def end_codes(path: list[tuple], rtype: str) -> list[str] | None:
    """The code list of the element a path ends on, if it is a code element with one."""
    path = _merge_oftype(path)
    if path and path[0][0] == "name" and path[0][1] in (rtype, "Resource", "DomainResource"):
        path = path[1:]
    t, spec = rtype, None
    for step in path:
        if step[0] in ("index", "whereEq"):
            continue
        if step[0] != "name" or t not in ELEMENTS or step[1] not in ELEMENTS[t]:
            return None
        spec = ELEMENTS[t][step[1]]
        t = spec[0]
    return spec[2] if spec is not None and len(spec) > 2 else None


def main() -> None:
    by_codes = complete_code_systems()
    table: dict[str, dict[str, dict[str, list[str]]]] = {}
    for rtype in resource_types():
        for code, p in params_for(rtype).items():
            if p.type != "token" or not p.expression:
                continue
            try:
                paths = _Parser(p.expression).parse()
            except CompileError:
                continue
            found: dict[str, list[str]] = {}
            for path in paths:
                codes = end_codes(path, rtype)
                for system in by_codes.get(frozenset(codes or ()), ()):
                    found[system] = sorted(set(found.get(system, [])) | set(codes))
            if found:
                table.setdefault(rtype, {})[code] = dict(sorted(found.items()))
    OUT.write_text(json.dumps(dict(sorted(table.items())), indent=0, sort_keys=True,
                              ensure_ascii=False) + "\n")
    print(f"{OUT}: {sum(len(v) for v in table.values())} parameters of {len(table)} types")


if __name__ == "__main__":
    main()
