"""Intake fidelity: does the hub ever merge two people, or lose a fact it acknowledged?

A synthetic region's hospitals send their HL7 v2 messages and WS/T 500 CDA documents, defects included
(``hub.synth.units``: one invalid resident ID number typed for many people, ``-`` / ``无`` / all-zero
placeholders, filler author ids, ``<id extension="1"/>`` on every entry, 15-digit numbers). They are
loaded into a fresh data directory through the hub's own intake, in-process:

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

The goal: no merged people, no lost acknowledged fact. The benchmark reports whether it is met and
exits 0 either way: it measures.

    python -m bench.intake_fidelity --people 150
    python -m bench.intake_fidelity --quick
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import record
from hub.synth.units import FACT_KINDS, Fact, Unit

NOW = datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=8)))  # after every generated visit
RESOURCE_OF = {"diagnosis": "Condition", "medication": "MedicationRequest", "lab": "Observation",
               "visit": "Encounter"}
READ_TYPES = (*RESOURCE_OF.values(), "Practitioner")  # what the counting reads back (not Binary, Bundle)
_DATE_FIELDS = ("onsetDateTime", "recordedDate", "authoredOn", "effectiveDateTime", "issued")


@dataclass(slots=True)
class Outcome:
    """What the intake answered for one unit, and the Patients it wrote."""

    unit: Unit
    accepted: bool
    patients: list[str] = field(default_factory=list)  # "Patient/<id>"
    refusal: str | None = None
    findings: list[str] = field(default_factory=list)  # rule ids


# -- loading ----------------------------------------------------------------------------------------

class Intake:
    """The hub's intake over one data directory: ``send(unit) -> Outcome``."""

    def __init__(self, data_dir: Path) -> None:
        from hub.documents import DocumentService
        from hub.ingest import Hub
        from hub.quarantine import Quarantine
        from hub.store import ResourceStore

        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ResourceStore.sqlite(str(data_dir / "events.sqlite"))
        self.hub = Hub(self.store)
        self.quarantine = Quarantine(data_dir / "quarantine.sqlite")
        self.documents = DocumentService(self.hub, self.quarantine)

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


# -- reading the store back -------------------------------------------------------------------------

@dataclass(slots=True)
class Stored:
    """The store as the counting needs it: the latest version of each resource, and every name each
    Practitioner has had."""

    latest: dict[tuple[str, str], dict] = field(default_factory=dict)
    practitioner_names: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def read_store(store, page: int = 5000) -> Stored:
    from hub.events import DELETED, from_stored

    import orjson

    out = Stored()
    start = 1
    while True:
        batch = store.notifications_of(READ_TYPES, start, page)
        if not batch:
            return out
        for n in batch:
            ev = from_stored(n)
            key = (ev.rtype, ev.rid)
            if ev.kind == DELETED:
                out.latest.pop(key, None)
                continue
            d = orjson.loads(ev.resource)
            out.latest[key] = d
            if ev.rtype == "Practitioner":
                out.practitioner_names[ev.rid] |= {_name(n) for n in d.get("name") or ()}
        start = batch[-1].id + 1


def _name(n: dict) -> str:
    return n.get("text") or (n.get("family", "") + "".join(n.get("given") or ()))


# -- counting ---------------------------------------------------------------------------------------

def _codes(d: dict) -> set[str]:
    out = set()
    for part in (d, *(d.get("component") or ())):
        for k in ("code", "medicationCodeableConcept", "valueCodeableConcept"):
            for c in (part.get(k) or {}).get("coding") or ():
                if c.get("code"):
                    out.add(c["code"])
    for i in d.get("identifier") or ():
        if i.get("value"):
            out.add(i["value"])
    return out


def _norm(v) -> str:
    try:
        return repr(round(float(v), 6))
    except (TypeError, ValueError):
        return str(v)


def _values(d: dict) -> set[str]:
    out = set()
    for part in (d, *(d.get("component") or ())):
        q = part.get("valueQuantity")
        if q and q.get("value") is not None:
            out.add(_norm(q["value"]))
    return out


def _dates(d: dict) -> frozenset[str]:
    """The days a resource is dated (any of its dates: a mapper may put the truth's date in either)."""
    out = {d[k][:10] for k in _DATE_FIELDS if isinstance(d.get(k), str)}
    out |= {d[k]["start"][:10] for k in ("effectivePeriod", "period")
            if isinstance(d.get(k), dict) and isinstance(d[k].get("start"), str)}
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class _Carrier:
    """A stored resource that may carry a fact: its Patient, values and dates."""

    patient: str | None
    values: frozenset[str]
    dates: frozenset[str]  # empty: the resource carries no date


def fact_index(stored: Stored) -> dict[tuple[str, str], list[_Carrier]]:
    """(resource type, code) -> the stored resources carrying that code. An Observation panel carries
    its members' codes and values too (a result and its item code may be two members of one panel)."""
    latest = stored.latest
    index: dict[tuple[str, str], list[_Carrier]] = defaultdict(list)
    for (rtype, _), d in latest.items():
        if rtype not in RESOURCE_OF.values():
            continue
        codes, values = _codes(d), _values(d)
        for m in d.get("hasMember") or ():
            ref = (m.get("reference") or "").split("/")
            member = latest.get((ref[0], ref[1])) if len(ref) == 2 else None
            if member is not None:
                codes |= _codes(member)
                values |= _values(member)
        carrier = _Carrier((d.get("subject") or {}).get("reference"), frozenset(values), _dates(d))
        for c in codes:
            index[(rtype, c)].append(carrier)
    return index


def _lost_reason(fact: Fact, person: str, own: list[str], carriers: list[_Carrier],
                 people: dict[str, set[str]]) -> str | None:
    """None when the fact is found (see the module docstring), else why it is lost. ``own``: the
    Patients the unit itself wrote: another feed's copy of the fact does not stand in for this one."""
    value = _norm(fact.value) if fact.value is not None else None
    mine = [c for c in carriers if c.patient in own]
    if not mine:
        elsewhere = any((value is None or value in c.values) and (not c.dates or fact.date in c.dates)
                        for c in carriers)
        return "only-on-other-patients" if elsewhere else "absent"
    reasons = set()
    for c in mine:
        if value is not None and value not in c.values:
            reasons.add("code-without-value")
            continue
        if c.dates and fact.date not in c.dates:
            reasons.add("other-date")
            continue
        who = people.get(c.patient or "", set())
        if who == {person}:
            return None
        reasons.add("on-merged-patient" if person in who else "on-another-person")
    for r in ("on-merged-patient", "on-another-person", "code-without-value", "other-date"):
        if r in reasons:
            return r
    return "absent"


def count(outcomes: list[Outcome], stored: Stored) -> dict:
    """Everything the benchmark reports, from what the intake answered and what the store holds."""
    accepted = [o for o in outcomes if o.accepted]
    people: dict[str, set[str]] = defaultdict(set)
    family_of: dict[str, set[str]] = defaultdict(set)
    for o in accepted:
        for p in o.patients:
            people[p].add(o.unit.person_key)
            family_of[p].add(o.unit.family)
    merged = {p: who for p, who in people.items() if len(who) > 1}
    by_family = {}
    for fam in ("cda", "v2"):
        ps = [p for p in people if fam in family_of[p]]
        m = [p for p in ps if p in merged]
        by_family[fam] = {"patients": len(ps), "merged_patients": len(m),
                          "people_in_merges": len(set().union(*(merged[p] for p in m)) if m else set())}
    names = stored.practitioner_names
    merged_pr = {r: n for r, n in names.items() if len(n) > 1}

    index = fact_index(stored)
    facts = Counter()
    lost = Counter()
    lost_by = {"kind": Counter(), "family": Counter(), "family_kind": Counter(), "reason": Counter(),
               "family_kind_reason": Counter(), "defect": Counter()}
    for o in accepted:
        for f in o.unit.facts:
            facts[(o.unit.family, f.kind)] += 1
            reason = _lost_reason(f, o.unit.person_key, o.patients, index.get((RESOURCE_OF[f.kind], f.code), []),
                                  people)
            if reason is None:
                continue
            lost[(o.unit.family, f.kind)] += 1
            lost_by["kind"][f.kind] += 1
            lost_by["family"][o.unit.family] += 1
            lost_by["family_kind"][f"{o.unit.family} {f.kind}"] += 1
            lost_by["reason"][reason] += 1
            lost_by["family_kind_reason"][f"{o.unit.family} {f.kind} {reason}"] += 1
            for d in o.unit.defects or ("none",):
                lost_by["defect"][d] += 1
    total_facts, total_lost = sum(facts.values()), sum(lost.values())
    refused = [o for o in outcomes if not o.accepted]
    refusals = Counter(o.refusal for o in refused)
    # a refused unit's facts are not lost (the sender was told), but refusing is no way to reach the goal
    refused_facts = Counter(f"{o.unit.family} {f.kind}" for o in refused for f in o.unit.facts)
    return {
        "units": {"sent": len(outcomes), "accepted": len(accepted), "refused": len(outcomes) - len(accepted),
                  "by_kind": dict(sorted(Counter(f"{o.unit.family} {o.unit.kind}" for o in outcomes).items()))},
        "people": {"patients": len(people), "true_people": len({o.unit.person_key for o in accepted}),
                   "merged_patients": len(merged),
                   "people_in_merges": len(set().union(*merged.values())) if merged else 0,
                   "max_people_per_patient": max((len(w) for w in people.values()), default=0),
                   "by_family": by_family},
        "practitioners": {"practitioners": len(names), "merged_practitioners": len(merged_pr),
                          "names_in_merges": sum(len(n) for n in merged_pr.values()),
                          "max_names_per_practitioner": max((len(n) for n in names.values()), default=0)},
        "facts": {"acknowledged": total_facts, "lost": total_lost,
                  "by_family_kind": {f"{fam} {k}": {"facts": facts[(fam, k)], "lost": lost[(fam, k)]}
                                     for fam in ("cda", "v2") for k in FACT_KINDS if facts[(fam, k)]},
                  "lost_by_kind": dict(lost_by["kind"]), "lost_by_family": dict(lost_by["family"]),
                  "lost_by_reason": dict(lost_by["reason"].most_common()),
                  "lost_by_family_kind_reason": dict(sorted(lost_by["family_kind_reason"].items())),
                  "lost_by_defect": dict(lost_by["defect"].most_common())},
        "refusals": dict(refusals.most_common()),
        "facts_in_refused_units": dict(sorted(refused_facts.items())),
        "findings": dict(Counter(r for o in outcomes for r in o.findings).most_common()),
        "goal": {"met": not merged and total_lost == 0, "merged_patients": len(merged), "lost_facts": total_lost,
                 "text": "zero Patients merging distinct people and zero lost acknowledged facts"},
    }


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
             f"  Practitioners with several doctors' names: {pr['merged_practitioners']} of {pr['practitioners']} "
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
    p, f = r["people"], r["facts"]
    kinds = "; ".join(f"{k} {v['lost']}/{v['facts']}" for k, v in f["by_family_kind"].items())
    return [
        (f"Intake fidelity, {r['region_people']} people, {r['units']['sent']} v2 + CDA units: Patients merging "
         "distinct people (people involved); Practitioners with several names",
         f"{p['merged_patients']} ({p['people_in_merges']}); {r['practitioners']['merged_practitioners']}", "0; 0"),
        ("Intake fidelity: acknowledged facts lost (family kind lost/facts); units refused",
         f"{f['lost']} of {f['acknowledged']} ({kinds}); {r['units']['refused']}", "0"),
        ("Intake fidelity: load through POST /cda and the v2 intake, units per CPU s",
         f"{r['throughput']['units_per_cpu_s']}", ""),
    ]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.intake_fidelity")
    p.add_argument("--people", type=int, default=150, help="size of the region (150: about a minute)")
    p.add_argument("--quick", action="store_true", help="a small region (30 people), for a smoke run")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    result = run(30 if args.quick else args.people, args.seed)
    print(report(result))
    print("wrote", record("intake_fidelity", result))
    return result


if __name__ == "__main__":
    main()
