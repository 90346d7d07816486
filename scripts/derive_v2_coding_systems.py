"""Derive fhir_mapping/hl7v2/tables/coding_systems.json: HL7 v2 coding-system names (table 0396)
to FHIR system URIs.

Inputs: scripts/terminology_sources/v2_coding_systems.yaml (the URIs, from the FHIR R4 terminology
registry) and ../shared/fhir-r4/v2-tables.json (the official table 0396, for the names). A
``table_0396`` name that is not in the official table, or an alias that is, is an error. The output
also lists every official name (``_table_0396``): the mapper keeps a table name it has no URI for
under the hub's own URI, and reports a name outside the table. Run from the project root:

    python scripts/derive_v2_coding_systems.py [../shared/fhir-r4/v2-tables.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "fhir-r4" / "v2-tables.json"
SPEC = ROOT / "scripts" / "terminology_sources" / "v2_coding_systems.yaml"
OUT = ROOT / "fhir_mapping" / "hl7v2" / "tables" / "coding_systems.json"
URL = "http://terminology.hl7.org/CodeSystem/v2-0396"


def main(source: Path = SOURCE) -> None:
    bundle = json.loads(source.read_text("utf-8"))
    [cs] = [e["resource"] for e in bundle["entry"] if e["resource"].get("url") == URL]
    official = sorted({c["code"] for c in cs["concept"]})
    upper = {n.upper() for n in official}
    spec = yaml.safe_load(SPEC.read_text("utf-8"))
    wrong = [n for n in spec["table_0396"] if n.upper() not in upper]
    clash = [n for n in spec["aliases"] if n.upper() in upper]
    if wrong or clash:
        raise SystemExit(f"not in table 0396: {wrong}; aliases that are table names: {clash}")
    out: dict = {
        "_doc": "CWE/CE-3 (name of coding system, HL7 table 0396) -> FHIR system URI, derived by "
                "scripts/derive_v2_coding_systems.py from scripts/terminology_sources/"
                "v2_coding_systems.yaml and the official table (v2-0396 "
                f"{cs.get('version', '')}). `_table_0396`: every name of the table. HL7nnnn and "
                "OIDs are handled by rule, L/99zzz are local (fhir_mapping.hl7v2.datatypes).",
        "_table_0396": official,
    }
    for name in sorted(spec["table_0396"]) + sorted(spec["aliases"]):
        out[name] = spec["table_0396"].get(name) or spec["aliases"][name]
    OUT.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"{OUT}: {len(out) - 2} names, {len(official)} in table 0396")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
