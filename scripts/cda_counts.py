"""Resource counts per type (and finding counts per rule) over the shared CDA samples.

    PYTHONPATH=. python scripts/cda_counts.py [SAMPLES_DIR] [--findings]

Reads ../shared/samples (or SAMPLES_DIR): wst500-cda, wst483-ehr-sd, ccda. Documents the mapper
refuses are counted by their rule. Prints a Markdown table, so README numbers can be regenerated.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.cda import convert

FOLDERS = ("wst500-cda", "wst483-ehr-sd", "ccda")


def counts(samples: Path) -> tuple[dict[str, Counter], Counter, Counter]:
    per_folder: dict[str, Counter] = {}
    findings: Counter = Counter()
    refused: Counter = Counter()
    for folder in FOLDERS:
        c: Counter = Counter()
        for path in sorted((samples / folder).glob("*.xml")):
            try:
                conv = convert(path.read_bytes(), SourceInfo(institution="SAMPLE", feed="counts"))
            except MappingError as e:
                refused[e.rule or e.code] += 1
                continue
            c["documents"] += 1
            c.update(r["resourceType"] for r in conv.resources)
            findings.update(f.rule for f in conv.findings)
        per_folder[folder] = c
    return per_folder, findings, refused


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    samples = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared" / "samples"
    if not samples.is_dir():
        samples = Path("/work/shared/samples")
    per_folder, findings, refused = counts(samples)
    types = sorted({t for c in per_folder.values() for t in c} - {"documents"})
    print("| resource type | " + " | ".join(FOLDERS) + " | total |")
    print("|---|" + "---:|" * (len(FOLDERS) + 1))
    for t in ["documents"] + types:
        row = [per_folder[f].get(t, 0) for f in FOLDERS]
        print(f"| {t} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    if refused:
        print("\nrefused: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    if "--findings" in argv:
        print("\n| finding rule | count |\n|---|---:|")
        for rule, n in sorted(findings.items()):
            print(f"| {rule} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
