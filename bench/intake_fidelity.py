"""Intake fidelity: does the hub ever merge two people, or lose a fact it acknowledged?

A synthetic region's hospitals send, for every visit, their HL7 v2 messages (ADT with DG1 diagnoses, ORU,
RDE^O11) and WS/T 500 CDA documents (C0001 or C0053, C0004, C0007), defects included (``hub.synth.units``:
one invalid resident ID number typed for many people, ``-`` / ``无`` / all-zero placeholders, filler
author ids, ``<id extension="1"/>`` on every entry and order numbers restarting at 1, 15-digit and
mistyped numbers, newborns under a parent's number). They are loaded into a fresh data directory through
the hub's own intake, in-process:

- CDA: ``hub.documents.DocumentService.ingest_cda`` (what ``POST /cda`` runs: quality control, mapping,
  validation, one transaction; refusals quarantined);
- v2: ``fhir_mapping.hl7v2.convert`` (what the connector's spool runs) then ``hub.worker.write_units``
  (the batch Bundle the connector's sinks deliver, through ``hub.api.bundles.process``), one message
  per batch.

Then the store is read back (its event log) and counted against the generator's truth:

- **people per Patient**: the true people whose accepted units wrote each Patient; more than one is a
  merge of distinct people (merged Patients, and the people they involve, per source family);
- **names per Practitioner**: distinct author names over a Practitioner's versions (the generator's
  doctors have distinct names within an institution): more than one is a merge of practitioners;
- **facts**: every fact of every acknowledged unit (diagnosis -> Condition with its ICD-10 code,
  medication order -> MedicationRequest with its ATC code, laboratory result -> Observation with its
  LOINC code and value, in one Observation or one panel, visit -> Encounter with its visit number), dated
  as the truth dates it (when the resource carries a date), attached to a Patient the unit itself
  wrote (another feed's copy does not stand in) whose people are exactly the unit's person. A fact not
  found is lost, with why: ``absent`` (nothing with its code on the unit's own Patient),
  ``only-on-other-patients`` (overwritten by another unit's write, or only another feed's copy),
  ``on-merged-patient`` / ``on-another-person`` (there, but on a Patient of several or of other people),
  ``code-without-value`` (the code is there, the result value is not with it), ``other-date`` (only
  another day's);
- refusals by reason, findings by rule, and the load's throughput (units per CPU second) on the side.

The goal: no Patient and no Practitioner merging distinct people, no lost acknowledged fact. The benchmark reports whether it is met and
exits 0 either way: it measures.

    python -m bench.intake_fidelity                 # 400 people, about 6,000 units
    python -m bench.intake_fidelity --people 150
    python -m bench.intake_fidelity --quick
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import record
from bench.fidelity import Outcome, Stored, count, read_store
from hub.synth.units import Unit

__all__ = ["Intake", "Outcome", "Stored", "count", "load", "main", "read_store", "report", "run", "summary_rows"]

NOW = datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=8)))  # after every generated visit


# -- loading ----------------------------------------------------------------------------------------

class Intake:
    """The hub's intake over one data directory: ``send(unit) -> Outcome``."""

    def __init__(self, data_dir: Path) -> None:
        from hub.documents import DocumentService
        from hub.repository import Repository
        from hub.core.ingest import Hub
        from hub.quarantine import Quarantine
        from hub.core.store import ResourceStore

        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ResourceStore.sqlite(str(data_dir / "events.sqlite"))
        self.hub = Hub(self.store)
        self.quarantine = Quarantine(data_dir / "quarantine.sqlite")
        self.documents = DocumentService(Repository(self.hub), self.quarantine)

    def close(self) -> None:
        self.quarantine.close()
        self.store.close()

    def send(self, unit: Unit) -> Outcome:
        return self._cda(unit) if unit.family == "cda" else self._v2(unit)

    def _cda(self, unit: Unit) -> Outcome:
        r = self.documents.ingest_cda(unit.payload, unit.source, now=NOW)
        rules = [c.get("code", "") for i in r.report.get("issue", ())
                 for c in (i.get("details") or {}).get("coding", ())[:1]]
        if r.status == 422:
            return Outcome(unit, False, refusal="cda: " + (", ".join(sorted(set(rules))) or "rejected"),
                           findings=rules)
        patients = sorted({"/".join(x.split("/")[:2]) for x in r.resources if x.startswith("Patient/")})
        return Outcome(unit, True, patients, findings=rules)

    def _v2(self, unit: Unit) -> Outcome:
        from fhir_mapping.base import MappingError
        from fhir_mapping.hl7v2 import convert
        from hub.worker import write_units

        try:
            conv = convert(unit.payload, unit.source)
        except MappingError as e:
            return Outcome(unit, False, refusal=f"v2 mapping: {e.rule or e.code}")
        rules = [f.rule for f in conv.findings]
        source = {"institution": unit.source.institution, "feed": unit.source.feed}
        [err] = write_units(self.hub, [{"resources": conv.resources, "deletes": conv.deletes}], source)
        if err is not None:
            return Outcome(unit, False, refusal=f"v2 hub: {err.get('code') or err.get('reason', '')[:80]}",
                           findings=rules)
        patients = sorted({f"Patient/{r['id']}" for r in conv.resources if r["resourceType"] == "Patient"})
        return Outcome(unit, True, patients, findings=rules)


# -- the run ----------------------------------------------------------------------------------------

def load(units: Iterable[Unit], data_dir: Path) -> tuple[list[Outcome], Stored, dict]:
    """Send every unit through the intake; the outcomes, the store read back, and the load's times."""
    intake = Intake(data_dir)
    try:
        outcomes, by_family = [], Counter()
        n_family = Counter()
        wall = time.perf_counter()
        for u in units:
            t = time.process_time()
            outcomes.append(intake.send(u))
            by_family[u.family] += time.process_time() - t
            n_family[u.family] += 1
        cpu, wall = sum(by_family.values()), time.perf_counter() - wall
        stored = read_store(intake.store)
    finally:
        intake.close()
    n = len(outcomes)
    return outcomes, stored, {
        "units": n, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
        "units_per_cpu_s": round(n / cpu, 1) if cpu else None,
        "by_family": {f: {"units": n_family[f], "cpu_s": round(c, 2),
                          "units_per_cpu_s": round(n_family[f] / c, 1) if c else None} for f, c in by_family.items()}}


def region_units(people: int, seed: int) -> Iterator[Unit]:
    from hub.synth import Region
    from hub.synth.units import iter_units

    return iter_units(Region(seed=seed, people=people))


def run(people: int, seed: int = 7) -> dict:
    units = list(region_units(people, seed))
    tmp = Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    try:
        outcomes, stored, speed = load(units, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"region_people": people, "seed": seed, **count(outcomes, stored), "throughput": speed}
    return result


def report(r: dict) -> str:
    g, p, f, pr = r["goal"], r["people"], r["facts"], r["practitioners"]
    lines = [f"intake fidelity, {r['region_people']} people, {r['units']['sent']} units "
             f"({r['units']['accepted']} accepted, {r['units']['refused']} refused)",
             f"  GOAL {'MET' if g['met'] else 'NOT MET'}: {g['text']}",
             f"  Patients merging distinct people: {p['merged_patients']} of {p['patients']} "
             f"({p['people_in_merges']} people involved, at most {p['max_people_per_patient']} on one); "
             + ", ".join(f"{k} {v['merged_patients']}/{v['patients']}" for k, v in p["by_family"].items()),
             f"  Practitioners merging doctors (several names on one): {pr['merged_practitioners']} of {pr['practitioners']} "
             f"({pr['names_in_merges']} names)",
             f"  acknowledged facts lost: {f['lost']} of {f['acknowledged']}"]
    lines += [f"    {k}: {v['lost']} of {v['facts']}" for k, v in f["by_family_kind"].items()]
    lines.append("    why: " + ", ".join(f"{k} {v}" for k, v in f["lost_by_reason"].items()))
    lines.append("  refused: " + (", ".join(f"{k} {v}" for k, v in r["refusals"].items()) or "none")
                 + (" (their facts: " + ", ".join(f"{k} {v}" for k, v in r["facts_in_refused_units"].items()) + ")"
                    if r["facts_in_refused_units"] else ""))
    t = r["throughput"]
    lines.append(f"  load: {t['units_per_cpu_s']} units per CPU s ({t['cpu_s']} CPU s, {t['wall_s']} s wall); "
                 + ", ".join(f"{k} {v['units_per_cpu_s']}" for k, v in t["by_family"].items()))
    return "\n".join(lines)


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    p, f, u = r["people"], r["facts"], r["units"]
    kinds = "; ".join(f"{k} {v['lost']}/{v['facts']}" for k, v in f["by_family_kind"].items())
    return [
        (f"Intake fidelity, {r['region_people']} people, {u['sent']:,} HL7 v2 + WS/T 500 units: Patients merging "
         "distinct people (people involved); Practitioners merging doctors",
         f"{p['merged_patients']} ({p['people_in_merges']}); {r['practitioners']['merged_practitioners']}", "0; 0"),
        ("Intake fidelity: acknowledged facts lost (per family and kind, lost/facts)",
         f"{f['lost']:,} of {f['acknowledged']:,} ({kinds})", "0"),
        ("Intake fidelity: units refused; load through POST /cda and the v2 intake, units per CPU s",
         f"{u['refused']}; {r['throughput']['units_per_cpu_s']}", ""),
    ]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.intake_fidelity")
    p.add_argument("--people", type=int, default=400,
                   help="size of the region (400: about 6,000 units, a minute or two)")
    p.add_argument("--quick", action="store_true", help="a small region (30 people), for a smoke run")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    result = run(30 if args.quick else args.people, args.seed)
    print(report(result))
    print("wrote", record("intake_fidelity", result))
    return result


if __name__ == "__main__":
    main()
