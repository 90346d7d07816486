"""Resource counts per type (and finding counts per rule) over the shared CDA samples.

    PYTHONPATH=. python scripts/cda_counts.py [SAMPLES_DIR] [--findings] [--coverage]

--coverage adds what became of every clinical statement, by data-element class (WS 363 DE code up
to its second group, WS 445 HDSD set, C-CDA templateId or the CDA element): resource type,
absorbed into one, component, container, or the finding rule it was reported under.

Reads ../shared/samples (or SAMPLES_DIR): wst500-cda, wst483-ehr-sd, ccda. Documents the mapper
refuses are counted by their rule. Prints a Markdown table, so README numbers can be regenerated.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.cda import convert, convert_traced, dt

FOLDERS = ("wst500-cda", "wst483-ehr-sd", "ccda")


def _klass(st) -> str:
    code = dt.child(st, "code")
    c = dt.clean_str(code.get("code")) if code is not None else None
    if c and c.startswith("DE") and c.count(".") >= 2:
        return c[:7]
    if c and c.startswith("HDSD"):
        return c[:9]
    tpl = dt.child(st, "templateId")
    if tpl is not None and tpl.get("root"):
        return "tpl " + tpl.get("root").rsplit(".", 2)[-2] + "." + tpl.get("root").rsplit(".", 1)[-1]
    return dt.local(st) + ("" if c else " (no code)")


def _outcome(trace_value: str) -> str:
    if trace_value.startswith("finding:"):
        return trace_value
    kind, _, ref = trace_value.rpartition(":")
    rtype = ref.split("/", 1)[0]
    return f"{kind} into {rtype}" if kind else rtype


def coverage(samples: Path) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for folder in FOLDERS:
        for path in sorted((samples / folder).glob("*.xml")):
            try:
                _, trace = convert_traced(path.read_bytes(), SourceInfo(institution="SAMPLE", feed="counts"))
            except MappingError:
                continue
            for st, what in trace.items():
                out.setdefault(_klass(st), Counter())[_outcome(what)] += 1
    return out


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
    if "--coverage" in argv:
        print("\n| statements (class) | became |\n|---|---|")
        for klass, c in sorted(coverage(samples).items()):
            print(f"| {klass} | " + ", ".join(f"{k} {v}" for k, v in c.most_common()) + " |")
    if "--findings" in argv:
        print("\n| finding rule | count |\n|---|---:|")
        for rule, n in sorted(findings.items()):
            print(f"| {rule} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
