"""Derive projections/data/compartment_patient.json from the R4 Patient CompartmentDefinition.

``{resource type: [search parameters that put a resource of that type in a Patient's compartment]}``;
types without parameters are left out. Run from the project root:

    python scripts/derive_compartment.py [../shared/fhir-r4/compartmentdefinition-patient.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "fhir-r4" / "compartmentdefinition-patient.json"
OUT = ROOT / "projections" / "data" / "compartment_patient.json"


def main(source: Path = SOURCE) -> None:
    d = json.loads(source.read_text())
    assert d["resourceType"] == "CompartmentDefinition" and d["code"] == "Patient", d.get("code")
    table = {r["code"]: r["param"] for r in d["resource"] if r.get("param")}
    OUT.write_text(json.dumps(dict(sorted(table.items())), indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(table)} resource types")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
