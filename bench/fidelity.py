"""The counting of ``bench.intake_fidelity``: what the hub's intake answered and what its store holds,
against the generator's truth (``hub.synth.units``). Pure over its inputs: the test builds stores by hand."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from hub.synth.units import FACT_KINDS, Fact, Unit

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


# -- reading the store back -------------------------------------------------------------------------

@dataclass(slots=True)
class Stored:
    """The store as the counting needs it: the latest version of each resource, and every name each
    Practitioner has had."""

    latest: dict[tuple[str, str], dict] = field(default_factory=dict)
    practitioner_names: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def read_store(store, page: int = 5000) -> Stored:
    from hub.core.events import DELETED, from_stored

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
                out.practitioner_names[ev.rid] |= {_name(name) for name in d.get("name") or ()}
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
    """None when the fact is found (see ``bench.intake_fidelity``), else why it is lost. ``own``: the
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
    defects_of: dict[str, set[str]] = defaultdict(set)
    for o in accepted:
        for p in o.patients:
            people[p].add(o.unit.person_key)
            family_of[p].add(o.unit.family)
            defects_of[p].update(o.unit.defects)
    merged = {p: who for p, who in people.items() if len(who) > 1}
    # which defects the units of merged Patients carry (a Patient counts once under each)
    merged_by_defect = Counter(d for p in merged for d in defects_of[p])
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
            for d in o.unit.defects or ("none",):  # under every defect the unit carries: co-occurrence, not cause
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
                   "by_family": by_family, "merged_patients_by_defect": dict(merged_by_defect.most_common())},
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
        # practitioners are people too: a Practitioner keyed on a filler merges doctors (DESIGN.md principle 6)
        "goal": {"met": not merged and not merged_pr and total_lost == 0, "merged_patients": len(merged),
                 "merged_practitioners": len(merged_pr), "lost_facts": total_lost,
                 "text": "zero Patients or Practitioners merging distinct people, zero lost acknowledged facts"},
    }
