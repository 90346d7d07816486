"""Our HL7 v2 mapper next to Microsoft's FHIR-Converter on the shared sample messages.

For every message in ``<samples>/messages`` this converts it with ``fhir_mapping.hl7v2`` and counts the
resources per type, next to the counts in the reference converter's output
(``<samples>/expected-fhir/<name>-expected.json``); then totals per type; then the segments of the
samples that the reference converter maps, each with what we do with it (``tables/segments.json``:
mapped to which resources, or refused and why) and whether the messages holding it really gave the
resources we claim.

    python scripts/compare_v2_converter.py                 # text report
    python scripts/compare_v2_converter.py --json out.json # the numbers, for a diff between two runs
    python scripts/compare_v2_converter.py --markdown      # the coverage table of the README

Pure reading: no network, nothing written unless ``--json`` is given. Deterministic (sorted output).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import convert

DEFAULT_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "hl7v2"

# Segment -> resource types the reference converter builds from it (its Hl7v2 templates at
# microsoft/FHIR-Converter 70fd328e: the segment variables passed to each 'Resource/<Type>' include of
# the message templates). Kept here as data so the comparison needs no copy of the templates.
REFERENCE_SEGMENTS: dict[str, list[str]] = {
    "ACC": ["Location", "Observation", "Organization", "Practitioner"],
    "AIG": ["Appointment", "Device"],
    "AIL": ["Appointment", "Location"],
    "AIP": ["Appointment", "Organization", "Practitioner"],
    "AIS": ["ServiceRequest"],
    "AL1": ["AllergyIntolerance"],
    "ARV": ["Encounter", "Patient"],
    "AUT": ["ClaimResponse"],
    "BLG": ["Account"],
    "CDO": ["MedicationDispense", "MedicationRequest"],
    "CON": ["Consent", "Patient", "Practitioner", "RelatedPerson"],
    "CTD": ["Patient"],
    "CTI": ["ResearchStudy"],
    "DB1": ["Organization", "Patient"],
    "DG1": ["Condition", "Encounter", "EpisodeOfCare", "Organization", "Practitioner"],
    "EVN": ["Account", "Location", "Organization", "Practitioner", "Provenance"],
    "FT1": ["ChargeItem", "Device", "MedicationDispense", "Organization", "Practitioner", "Procedure"],
    "GT1": ["Account", "Organization", "Patient", "RelatedPerson"],
    "IAM": ["AllergyIntolerance", "Organization", "Practitioner", "RelatedPerson"],
    "IAR": ["AllergyIntolerance"],
    "IN1": ["ClaimResponse", "Coverage", "Organization", "Patient", "RelatedPerson"],
    "IN2": ["Coverage", "Organization", "Patient", "RelatedPerson"],
    "INV": ["Substance"],
    "MRG": ["Linkage"],
    "MSH": ["Device", "MessageHeader", "Organization", "Provenance"],
    "NK1": ["Organization", "Patient", "RelatedPerson"],
    "NTE": ["AllergyIntolerance", "Appointment", "ChargeItem", "Immunization", "MedicationDispense",
            "MedicationRequest", "NutritionOrder", "Observation", "ServiceRequest"],
    "OBR": ["DiagnosticReport", "Organization", "Practitioner", "PractitionerRole", "ServiceRequest", "Specimen"],
    "OBX": ["DiagnosticReport", "DocumentReference", "Immunization", "Observation", "Organization",
            "Practitioner", "PractitionerRole"],
    "ODS": ["NutritionOrder"],
    "ORC": ["Immunization", "MedicationDispense", "MedicationRequest", "NutritionOrder", "Organization",
            "Practitioner", "PractitionerRole", "ServiceRequest", "SupplyRequest"],
    "PD1": ["Organization", "Patient", "Practitioner"],
    "PDA": ["Condition", "Encounter", "Observation", "Organization", "Practitioner", "Procedure"],
    "PID": ["Account", "Linkage", "Organization", "Patient", "RelatedPerson"],
    "PR1": ["Organization", "Practitioner", "Procedure"],
    "PRD": ["Organization", "Practitioner", "PractitionerRole", "ServiceRequest"],
    "PRT": ["Device", "Organization", "Practitioner", "PractitionerRole"],
    "PV1": ["Encounter", "EpisodeOfCare", "Location", "Organization", "Practitioner", "Procedure"],
    "PV2": ["Encounter", "EpisodeOfCare", "Organization"],
    "RF1": ["Organization", "Practitioner", "ServiceRequest"],
    "ROL": ["Organization", "Practitioner", "PractitionerRole"],
    "RQ1": ["Organization", "SupplyRequest"],
    "RQD": ["Organization", "PractitionerRole", "SupplyRequest"],
    "RXA": ["Immunization", "Location", "Organization", "Practitioner"],
    "RXC": ["Medication"],
    "RXD": ["Location", "Medication", "MedicationDispense", "Practitioner"],
    "RXE": ["Medication", "MedicationDispense", "MedicationRequest", "Organization", "Practitioner",
            "PractitionerRole"],
    "RXO": ["Medication", "MedicationRequest", "Organization", "Practitioner", "PractitionerRole"],
    "RXR": ["Immunization", "MedicationDispense", "MedicationRequest"],
    "SAC": ["Specimen"],
    "SCH": ["Appointment", "Practitioner", "PractitionerRole"],
    "SFT": ["Device", "MessageHeader"],
    "SPM": ["Observation", "Organization", "Specimen"],
    "TQ1": ["Appointment", "MedicationRequest", "ServiceRequest"],
    "TXA": ["DocumentReference", "Organization", "Practitioner", "PractitionerRole"],
}


def our_segments() -> dict:
    """tables/segments.json of the mapper being measured (absent in older trees: nothing declared)."""
    try:
        from fhir_mapping.hl7v2.tables import table

        return table("segments")
    except (FileNotFoundError, OSError):
        return {"mapped": {}, "refused": {}}


def segments_of(payload: bytes) -> list[str]:
    text = payload.replace(b"\r\n", b"\r").replace(b"\n", b"\r").lstrip(b"\xef\xbb\xbf")
    return [s[:3].decode("ascii", "replace") for s in text.split(b"\r") if len(s) >= 3]


def compare(samples: Path) -> dict:
    messages = sorted((samples / "messages").glob("*.hl7"))
    declared = our_segments()
    rows, ours_total, theirs_total, distinct_total = [], Counter(), Counter(), Counter()
    seen_segments: dict[str, list[str]] = {}
    produced: dict[str, Counter] = {}
    for path in messages:
        payload = path.read_bytes()
        segs = segments_of(payload)
        for s in set(segs):
            seen_segments.setdefault(s, []).append(path.stem)
        try:
            conv = convert(payload, SourceInfo())
            ours = Counter(r["resourceType"] for r in conv.resources)
            refused = None
        except MappingError as e:
            ours, refused = Counter(), f"{e.code} {e.rule}"
        expected = samples / "expected-fhir" / f"{path.stem}-expected.json"
        theirs, distinct = Counter(), Counter()
        if expected.is_file():
            bundle = json.loads(expected.read_text("utf-8"))
            entries = [e["resource"] for e in bundle.get("entry", [])]
            theirs = Counter(r["resourceType"] for r in entries)
            # the reference bundles repeat one resource once per mention (a Location per PL field)
            distinct = Counter(t for t, _ in {(r["resourceType"], r.get("id")) for r in entries})
        for s in set(segs):
            produced.setdefault(s, Counter()).update(ours)
        ours_total.update(ours)
        theirs_total.update(theirs)
        distinct_total.update(distinct)
        rows.append({"message": path.stem, "ours": dict(sorted(ours.items())),
                     "theirs": dict(sorted(theirs.items())), "refused": refused,
                     "reference_output": expected.is_file()})
    segments = []
    for seg in sorted(REFERENCE_SEGMENTS):
        mapped = declared.get("mapped", {}).get(seg)
        refused = declared.get("refused", {}).get(seg)
        later = declared.get("not_yet", {}).get(seg)
        claim = mapped["resources"] if mapped else []
        missing = sorted(set(claim) - set(produced.get(seg, {})))
        segments.append({"segment": seg, "reference": REFERENCE_SEGMENTS[seg],
                         "ours": "mapped" if mapped else "refused" if refused else "not yet",
                         "resources": claim, "note": (mapped or {}).get("note", "") if mapped else refused or later or "",
                         "claimed_but_not_produced": missing if seg in seen_segments else [],
                         "messages": len(seen_segments.get(seg, []))})
    return {"messages": len(messages), "rows": rows,
            "total": {"ours": dict(sorted(ours_total.items())), "theirs": dict(sorted(theirs_total.items())),
                      "theirs_distinct": dict(sorted(distinct_total.items())),
                      "ours_all": sum(ours_total.values()), "theirs_all": sum(theirs_total.values()),
                      "theirs_distinct_all": sum(distinct_total.values()),
                      "refused": sorted(r["message"] for r in rows if r["refused"])},
            "segments": segments}


def _fmt(c: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items()) or "-"


def text_report(result: dict) -> str:
    out = [f"{result['messages']} messages"]
    for r in result["rows"]:
        ours = r["refused"] and f"refused ({r['refused']})" or _fmt(r["ours"])
        out.append(f"\n{r['message']}\n  ours:   {ours}\n  theirs: {_fmt(r['theirs']) if r['reference_output'] else '(no reference output)'}")
    t = result["total"]
    out.append(f"\nTOTAL ours {t['ours_all']} resources, theirs {t['theirs_all']} entries "
               f"({t['theirs_distinct_all']} distinct type/id); refused by us: {', '.join(t['refused']) or 'none'}")
    types = sorted(set(t["ours"]) | set(t["theirs"]))
    out.append(f"{'type':<22}{'ours':>6}{'theirs':>8}{'distinct':>10}")
    out += [f"{k:<22}{t['ours'].get(k, 0):>6}{t['theirs'].get(k, 0):>8}{t['theirs_distinct'].get(k, 0):>10}"
            for k in types]
    out.append("\nSegments the reference converter maps (messages of the samples holding them):")
    for s in result["segments"]:
        extra = (f" (not made from the samples: {', '.join(s['claimed_but_not_produced'])})"
                 if s["claimed_but_not_produced"] else "")
        what = ", ".join(s["resources"]) if s["ours"] == "mapped" else s["note"]
        out.append(f"  {s['segment']} ({s['messages']}): {s['ours']:<8} {what}{extra}")
    todo = [s["segment"] for s in result["segments"] if s["ours"] == "not yet"]
    out.append(f"\nmapped by them, neither mapped nor refused by us: {', '.join(todo) or 'none'}")
    return "\n".join(out)


def markdown(result: dict) -> str:
    out = ["| segment | samples | reference converter makes | we | resources / reason |", "|---|---:|---|---|---|"]
    for s in result["segments"]:
        what = ", ".join(s["resources"]) if s["ours"] == "mapped" else s["note"]
        if s["ours"] == "mapped" and s["note"]:
            what += f" ({s['note']})"
        out.append(f"| {s['segment']} | {s['messages']} | {', '.join(s['reference'])} | {s['ours']} | {what} |")
    t = result["total"]
    out += ["", "| resource | ours | reference (entries) | reference (distinct ids) |", "|---|---:|---:|---:|"]
    out += [f"| {k} | {t['ours'].get(k, 0)} | {t['theirs'].get(k, 0)} | {t['theirs_distinct'].get(k, 0)} |"
            for k in sorted(set(t["ours"]) | set(t["theirs"]))]
    out.append(f"| **all** | **{t['ours_all']}** | **{t['theirs_all']}** | **{t['theirs_distinct_all']}** |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--json", type=Path, help="write the numbers here")
    p.add_argument("--markdown", action="store_true", help="print the README coverage table")
    args = p.parse_args(argv)
    if not (args.samples / "messages").is_dir():
        print(f"no sample messages under {args.samples}", file=sys.stderr)
        return 2
    result = compare(args.samples)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(markdown(result) if args.markdown else text_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
