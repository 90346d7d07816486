"""Derive projections/search/data/ucum_forms.json: the canonical form of every common UCUM unit.

Quantity search compares UCUM units in canonical form (``projections.search.ucum``). Parsing a
unit needs ucumvert's registry, which takes about a second to build in every process that meets
its first unit: each server, follower and command. The forms of R4's common UCUM units
(``fhir_mapping/tables/ucum_common.json``, 1,364 codes) and of the units the synthetic region
sends are computed here once, by the same function, and read from the table at run time; a unit
not in it is parsed as before. Run from the project root after a ucumvert upgrade:

    python scripts/derive_ucum_forms.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMMON = ROOT / "fhir_mapping" / "tables" / "ucum_common.json"
CLINICAL = ROOT / "hub" / "synth" / "data" / "clinical.json"
OUT = ROOT / "projections" / "search" / "data" / "ucum_forms.json"


def codes() -> list[str]:
    found = set(json.loads(COMMON.read_text())["codes"])
    found |= set(re.findall(r'"unit":\s*"([^"]+)"', CLINICAL.read_text()))
    return sorted(found)


def main() -> None:
    from importlib.metadata import version

    from projections.search import ucum

    reg = ucum._load()
    forms = {}
    for code in codes():
        try:
            form = ucum._canonical(reg, code)
        except Exception:  # noqa: BLE001 - not a unit ucumvert knows: matched as written
            form = ucum._as_written(code)
        forms[code] = list(form)
    doc = ("canonical forms (scale, power of ten, offset, unit) of common UCUM units, derived "
           f"by scripts/derive_ucum_forms.py with ucumvert {version('ucumvert')}")
    rows = ",\n".join(f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
                      for k, v in forms.items())  # one unit a line: reviewed as diffs
    OUT.write_text(f'{{"_doc": {json.dumps(doc)},\n"forms": {{\n{rows}\n}}}}\n')
    print(f"{len(forms)} units -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
