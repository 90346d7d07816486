"""What the region's hospitals send the hub, defects included, with the truth of every unit.

``iter_units(region)`` yields, visit by visit, the HL7 v2 messages (``hub.synth.hl7v2``: ADT with the
diagnoses as DG1, ORU with the results, RDE^O11 with the prescriptions) and the WS/T 500 CDA documents
(``hub.synth.cda``) of each visit, as ``Unit``: the payload and its source, the true person
it is about and the clinical facts it carries (``Fact``: a diagnosis, a medication order, a laboratory
result, the visit). Benchmarks load the payloads through the hub's intake and look for every fact.

Each institution has a ``Dialect``: the ways its systems fill what they send, as seen in real feeds:

- ``patient_keys``: ``record`` sends the institution's record number (CDA 病案号 ``2.16.156.10011.1.13``,
  v2 ``MR``) on every unit; ``resident`` sends only the resident ID number as the lasting identifier
  (CDA: the visit number on patientRole, the ID number on patient; v2: ``NNCHN`` and the health card in
  PID-3, the record number only when no ID number is sent);
- ``default_id``: a resident ID number failing its GB 11643 check digit that registration types for
  people whose card is not at hand (``default_id_rate`` of registrations, and every registration
  without a number when ``missing_id`` is ``default``): one number, many different people;
- ``missing_id``: what is sent when there is no number: nothing, ``-``, ``无``, ``000000000000000000``
  or the default number;
- ``author_id``: the author / ordering-provider id: real staff numbers, or a filler (``-``, ``无``,
  ``医务人员编码``) for every doctor;
- ``entry_ids``: every CDA entry carries ``<id root="2.16.156.10011.1.1" extension="1"/>``, the same in
  every document; the v2 orders of each RDE are numbered 1, 2, … again.

The region's own identity noise (placeholders, mistyped and 15-digit ID numbers) comes on top.
Everything is seeded: the same region gives the same units, byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from fhir_mapping.base import SourceInfo
from terminology.resident_id import check_digit

from . import cda
from .hl7v2 import Builder, dtm, esc, lab_results, visit_messages
from .region import Institution, Region
from .tables import table

RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
HEALTH_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.19"
FACT_KINDS = ("diagnosis", "medication", "lab", "visit")
_FILLER_AUTHORS = ("-", "无", "医务人员编码")
_MISSING = ("", "-", "无", "000000000000000000", "default")
_KEYS_BY_RECORD = {"tertiary": 0.7, "township": 0.4, "village": 0.2}  # share of institutions
_VISIT_ROOT = {"IMP": "2.16.156.10011.1.12", "AMB": "2.16.156.10011.1.11", "EMER": "2.16.156.10011.1.11"}


class Fact(NamedTuple):
    """One clinical fact a unit carries, as the truth knows it."""

    kind: str  # diagnosis | medication | lab | visit
    code: str  # ICD-10 code | ATC code | LOINC code | visit number
    date: str  # YYYY-MM-DD (local) the fact is dated
    value: str | None = None  # a laboratory result's value as sent


class Unit(NamedTuple):
    """One payload for the hub's intake and its truth."""

    family: str  # cda | v2
    kind: str  # document code (C0004) or message type (ADT^A01)
    payload: bytes
    source: SourceInfo
    person_key: str  # the true person the unit is about
    facts: tuple[Fact, ...]
    defects: tuple[str, ...]  # the defects this unit carries (dialect and identity noise)
    author: str  # the true name of the unit's author / ordering provider


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one institution's systems fill what they send (see the module docstring)."""

    patient_keys: str  # record | resident
    default_id: str
    default_id_rate: float
    missing_id: str
    author_id: str  # staff | a filler
    entry_ids: bool
    doctors: tuple[str, ...]


def dialect(region: Region, inst: Institution) -> Dialect:
    rng = random.Random(f"{region.seed}:dialect:{inst.n}")
    keys = "record" if rng.random() < _KEYS_BY_RECORD[inst.level] else "resident"
    first17 = f"{inst.district}19{rng.randrange(50, 99)}0101{rng.randrange(1, 999):03d}"
    good = check_digit(first17)
    default = first17 + "0123456789X"[("0123456789X".index(good) + 1 + rng.randrange(10)) % 11]
    names: list[str] = []
    f = region._factory
    while len(names) < 4 + (inst.level == "tertiary") * 4:
        name = f.surname(rng) + f.given(rng, rng.choice(("male", "female")))
        if name not in names:
            names.append(name)
    return Dialect(keys, default, rng.choice((0.05, 0.1, 0.2)), rng.choice(_MISSING),
                   rng.choice(("staff", "staff", *_FILLER_AUTHORS)), rng.random() < 0.5, tuple(names))


@dataclass(slots=True)
class _Registration:
    """A person as one institution registered them, as its feeds send it."""

    patient: dict  # the region's Patient
    resident_id: str | None  # the resident ID number as sent
    defects: tuple[str, ...]


def _registration(region: Region, d: Dialect, patient: dict, noise: tuple[str, ...]) -> _Registration:
    rng = random.Random(f"{region.seed}:intake:{patient['id']}")
    sent = next((i["value"] for i in patient["identifier"] if i["system"] == RESIDENT_ID_SYSTEM), None)
    defects = [f"resident-id-{n[3:].replace('_', '-')}" for n in noise if n.startswith("id_")]
    if "newborn_parent_id" in noise:  # a valid number, but the parent's: no check can tell
        defects.append("resident-id-of-parent")
    if sent is None:
        sent = None if d.missing_id == "" else d.default_id if d.missing_id == "default" else d.missing_id
        if sent is not None:
            defects.append("resident-id-default-shared" if sent == d.default_id else "resident-id-filler")
    elif rng.random() < d.default_id_rate:
        sent = d.default_id
        defects.append("resident-id-default-shared")
    return _Registration(patient, sent, tuple(defects))


def _after_pv1(payload: bytes, segments: list[str]) -> bytes:
    """The message with ``segments`` inserted after its PV1 (UTF-8)."""
    segs = payload.split(b"\r")
    at = next(i for i, x in enumerate(segs) if x.startswith(b"PV1|")) + 1
    return b"\r".join(segs[:at] + [x.encode("utf-8") for x in segments] + segs[at:])


def _date(ts: str) -> str:
    return ts[:10]


def _hl7_ts(ts: str) -> str:
    return ts[:19].replace("-", "").replace("T", "").replace(":", "")


def _lab_value(obs: dict) -> str:
    return str(obs["valueQuantity"]["value"])


class _Visit(NamedTuple):
    inst: Institution
    enc: dict
    conditions: list[dict]
    observations: list[dict]
    medications: list[dict]


def _visits(resources: list[dict], region: Region) -> Iterator[_Visit]:
    cur: _Visit | None = None
    for r in resources:
        t = r["resourceType"]
        if t == "Encounter":
            if cur is not None:
                yield cur
            n = int(r["serviceProvider"]["reference"].rsplit("-", 1)[1])
            cur = _Visit(region.institutions[n - 1], r, [], [], [])
        elif cur is not None and t == "Condition":
            cur.conditions.append(r)
        elif cur is not None and t == "Observation":
            cur.observations.append(r)
        elif cur is not None and t == "MedicationRequest":
            cur.medications.append(r)
    if cur is not None:
        yield cur


class _Writer:
    """Turns one visit into its units."""

    def __init__(self, region: Region, encoding: str = "utf-8") -> None:
        self.region = region
        self.dialects = {i.n: dialect(region, i) for i in region.institutions}
        self.v2 = Builder(region, encoding, doctor=self._xcn)
        self.meds = table("clinical")["medications"]

    def doctor(self, inst: Institution, enc: dict) -> tuple[str, str]:
        """(id as sent, true name) of the visit's doctor."""
        d = self.dialects[inst.n]
        k = random.Random(f"{self.region.seed}:doctor:{enc['id']}").randrange(len(d.doctors))
        staff_no = f"D{inst.n:03d}{k + 1:02d}"
        return (staff_no if d.author_id == "staff" else d.author_id), d.doctors[k]

    def _xcn(self, inst: Institution, enc: dict) -> str:
        ident, name = self.doctor(inst, enc)
        return f"{ident}^{name[0]}^{name[1:]}"

    def units(self, reg: _Registration, person_key: str, v: _Visit) -> Iterator[Unit]:
        inst, enc = v.inst, v.enc
        d = self.dialects[inst.n]
        visit_no = enc["identifier"][0]["value"]
        start = enc["period"]["start"]
        visit = Fact("visit", visit_no, _date(start))
        author_id, author = self.doctor(inst, enc)
        defects = list(reg.defects)
        if d.patient_keys == "resident":
            defects.append("keyed-by-resident-id")
        if d.author_id != "staff":
            defects.append("author-id-filler")
        yield from self._v2(reg, person_key, v, visit, tuple(defects), author)
        yield from self._cda(reg, person_key, v, visit, tuple(defects), (author_id, author))

    # -- HL7 v2 -----------------------------------------------------------------------------------
    def _v2(self, reg: _Registration, person_key: str, v: _Visit, visit: Fact, defects: tuple[str, ...],
            author: str) -> Iterator[Unit]:
        """The visit's messages (``hub.synth.hl7v2.visit_messages``), its diagnoses as DG1 in the
        A01/A04/A03, and its prescriptions as one RDE^O11."""
        d = self.dialects[v.inst.n]
        p = reg.patient
        idents = []
        for i in p["identifier"]:
            if i["system"] == RESIDENT_ID_SYSTEM:
                continue
            if i["system"] == HEALTH_CARD_SYSTEM or d.patient_keys == "record" or reg.resident_id is None:
                idents.append(i)
        if reg.resident_id is not None:
            idents.insert(0, {"system": RESIDENT_ID_SYSTEM, "value": reg.resident_id})
        patient = {**p, "identifier": idents}
        start = v.enc["period"]["start"]
        lab_facts = tuple(Fact("lab", o["code"]["coding"][0]["code"], _date(o["effectiveDateTime"]), _lab_value(o))
                          for o in lab_results(v.observations))
        dx = [(c["code"]["coding"][0]["code"], c["code"]["coding"][0]["display"]) for c in v.conditions]
        dx_facts = tuple(Fact("diagnosis", code, _date(start)) for code, _ in dx)
        for kind, payload, src in visit_messages(self.v2, patient, v.enc, v.observations):
            facts: tuple[Fact, ...] = (visit,)
            if kind == "ORU^R01":
                facts += lab_facts
            elif kind != "ADT^A08" and dx:
                final = "F" if kind == "ADT^A03" else "A"
                payload = _after_pv1(payload, [f"DG1|{k}||{esc(code)}^{esc(name)}^I10||{dtm(start)}|{final}"
                                               for k, (code, name) in enumerate(dx, 1)])
                facts += dx_facts
            yield Unit("v2", kind, payload, src, person_key, facts, defects, author)
        if v.medications:
            yield self._rde(patient, person_key, v, visit, defects + (("order-number-reused",) if d.entry_ids else ()),
                            author)

    def _rde(self, patient: dict, person_key: str, v: _Visit, visit: Fact, defects: tuple[str, ...],
             author: str) -> Unit:
        """RDE^O11: one ORC/RXE/RXR per prescribed drug. A sloppy HIS numbers the orders of each
        message 1, 2, … (``entry_ids`` dialect); a careful one gives them the visit's number."""
        b, inst, enc = self.v2, v.inst, v.enc
        start = enc["period"]["start"]
        msh, _ = b.msh(inst, start, "RDE^O11", "RDE_O11")
        segs = [msh, b.pid(patient), b.pv1(enc, inst, discharge=False)]
        facts = [visit]
        for k, m in enumerate(v.medications, 1):
            atc = m["medicationCodeableConcept"]["coding"][0]["code"]
            row = self.meds[atc]
            placer = str(k) if self.dialects[inst.n].entry_ids else f"{visit.code}-M{k}"
            orc = [""] * 13
            orc[1], orc[2], orc[9], orc[12] = "NW", f"{esc(placer)}^HIS", dtm(start), self._xcn(inst, enc)
            rxe = [""] * 8
            rxe[1], rxe[2], rxe[3] = f"1^{esc(row['frequency'])}", f"{esc(atc)}^{esc(row['name'])}^ATC", esc(row["dose"])
            rxe[5] = f"{esc(row['unit'])}^{esc(row['unit'])}^UCUM"
            rxe[7] = f"{esc(row['route'])}，{esc(row['frequency'])}，每次{esc(row['dose'])}{esc(row['unit'])}"
            segs += ["ORC|" + "|".join(orc[1:]), "RXE|" + "|".join(rxe[1:]), f"RXR|^{esc(row['route'])}"]
            facts.append(Fact("medication", atc, _date(start)))
        src = SourceInfo(institution=inst.id, oid=inst.oid, name=inst.name, feed="his-v2")
        return Unit("v2", "RDE^O11", b.encode("\r".join(segs) + "\r"), src, person_key, tuple(facts), defects, author)

    # -- CDA --------------------------------------------------------------------------------------
    def _cda(self, reg: _Registration, person_key: str, v: _Visit, visit: Fact, defects: tuple[str, ...],
             author: tuple[str, str]) -> Iterator[Unit]:
        inst, enc = v.inst, v.enc
        d = self.dialects[inst.n]
        p = reg.patient
        cls = enc["class"]["code"]
        visit_no = visit.code
        ids = []
        if d.patient_keys == "record":
            mr = next(i["value"] for i in p["identifier"] if i["system"] == inst.patient_system)
            ids.append(("2.16.156.10011.1.13", mr))
        ids.append((_VISIT_ROOT[cls], visit_no))
        hc = next((i["value"] for i in p["identifier"] if i["system"] == HEALTH_CARD_SYSTEM), None)
        if hc:
            ids.append(("2.16.156.10011.1.19", hc))
        name = p["name"][0]["text"]
        period = enc["period"]
        src = SourceInfo(institution=inst.id, oid=inst.oid, name=inst.name, feed="his-cda")
        doc_defects = defects + (("entry-id-reused",) if d.entry_ids else ())

        def header(code: str, when: str) -> cda.Header:
            return cda.Header(
                code=code, doc_id=f"{code}-{visit_no}", when=_hl7_ts(when), custodian=(f"{inst.n:010d}", inst.name),
                patient_ids=tuple(ids), resident_id=reg.resident_id, name=name, gender=p.get("gender", "unknown"),
                birth=p["birthDate"].replace("-", ""), author=author,
                visit=(_hl7_ts(period["start"]), _hl7_ts(period["end"]) if cls == "IMP" else None),
                entry_ids=d.entry_ids)

        start = period["start"]
        if v.conditions:
            code = "C0053" if cls == "IMP" else "C0001"
            when = period["end"] if cls == "IMP" else start
            doc = cda.Document(header(code, when))
            dx = [(c["code"]["coding"][0]["code"], c["code"]["coding"][0]["display"]) for c in v.conditions]
            doc.diagnoses(dx, _hl7_ts(start)[:8])
            facts = (visit, *(Fact("diagnosis", c, _date(start)) for c, _ in dx))
            yield Unit("cda", code, doc.bytes(), src, person_key, facts, doc_defects, author[1])
        if v.medications:
            doc = cda.Document(header("C0004", start))
            items = []
            for m in v.medications:
                atc = m["medicationCodeableConcept"]["coding"][0]["code"]
                row = self.meds[atc]
                items.append({"atc": atc, **row})
            doc.prescriptions(items)
            facts = (visit, *(Fact("medication", m["atc"], _date(start)) for m in items))
            yield Unit("cda", "C0004", doc.bytes(), src, person_key, facts, doc_defects, author[1])
        labs = lab_results(v.observations)
        if labs:
            when = labs[0]["effectiveDateTime"]
            doc = cda.Document(header("C0007", when))
            results = [(o["code"]["coding"][0]["code"], o["code"]["text"], _lab_value(o), o["valueQuantity"]["unit"],
                        o["interpretation"][0]["coding"][0]["code"] != "N") for o in labs]
            doc.lab_results(results, _hl7_ts(when))
            facts = (visit, *(Fact("lab", c, _date(when), val) for c, _, val, _, _ in results))
            yield Unit("cda", "C0007", doc.bytes(), src, person_key, facts, doc_defects, author[1])


def iter_units(region: Region, families: tuple[str, ...] = ("v2", "cda")) -> Iterator[Unit]:
    """Every unit the region's institutions send, visit by visit in the region's order: the visit's
    HL7 v2 messages (ADT, ORU, RDE), then its CDA documents (C0001 or C0053, C0004, C0007)."""
    w = _Writer(region)
    for resources, truth in region.iter_people():
        who = {t.patient_reference.split("/", 1)[1]: t for t in truth}
        dialects = w.dialects
        regs: dict[str, _Registration] = {}
        for r in resources:
            if r["resourceType"] == "Patient":
                inst_n = int(r["managingOrganization"]["reference"].rsplit("-", 1)[1])
                regs[r["id"]] = _registration(region, dialects[inst_n], r, who[r["id"]].noise_kinds)
        for v in _visits(resources, region):
            pid = v.enc["subject"]["reference"].split("/", 1)[1]
            for u in w.units(regs[pid], who[pid].person_key, v):
                if u.family in families:
                    yield u
