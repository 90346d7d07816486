"""Derive fhir_mapping/tables/ucum_common.json from R4's ucum-common value set.

The UCUM codes of the value set's one include (1,364 units of clinical use): a mapper gives a
unit the UCUM system only when its code is one of them, or the sender named UCUM (``10^9/L``,
``iu/ml`` and ``mg/24h`` are no UCUM and were claimed as UCUM). Run from the project root:

    python scripts/derive_ucum_common.py [../shared/fhir-r4/valuesets.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "fhir-r4" / "valuesets.json"
OUT = ROOT / "fhir_mapping" / "tables" / "ucum_common.json"
URL = "http://hl7.org/fhir/ValueSet/ucum-common"


def main(source: Path = SOURCE) -> None:
    bundle = json.loads(source.read_text())
    [vs] = [e["resource"] for e in bundle["entry"] if e["resource"].get("url") == URL]
    [include] = vs["compose"]["include"]
    assert include["system"] == "http://unitsofmeasure.org", include["system"]
    codes = sorted({c["code"] for c in include["concept"]})
    OUT.write_text(json.dumps({"_doc": f"UCUM codes of {URL} (R4), derived by "
                                        "scripts/derive_ucum_common.py", "codes": codes},
                              indent=0, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(codes)} codes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
