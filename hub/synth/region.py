"""The synthetic region: institutions, and per person their registrations, visits and the truth.

Each person is generated from random generators seeded by ``(seed, person index)`` and forgotten once
their resources are yielded, so memory does not grow with the region. Institutions are few (they grow
with the square root of the population) and are kept.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple

from . import fhir as F
from .people import DIVISION_EXTENSION, FIRST_VISIT_DATE, HOUSEHOLD, REFERENCE_DATE, PeopleFactory, Person
from .tables import table

OID_ARC = "2.16.156.10011.99.1"
LEVELS = ("tertiary", "township", "village")
NOISE_KINDS = (
    "name_homophone",  # a character replaced by a homophone (input-method error)
    "name_typo",  # the two characters of the given name swapped
    "birth_date_day_month_swapped",
    "id_missing",  # no resident ID number
    "id_placeholder",  # 000000000000000000 and the like
    "id_typo",  # one digit mistyped: the check character no longer matches
    "id_15_digit",  # the old 15-digit number of the same person
    "newborn_parent_id",  # a newborn registered under the parent's ID number
    "newborn_parent_name",  # a newborn registered as "<parent's name>之子/之女"
    "shared_phone",  # the phone given is a family member's
)
RESOURCES_PER_PERSON = 25.7  # measured average (10,000 people), for estimate_resources()
_PLACEHOLDER_IDS = ("000000000000000000", "000000000000000000", "111111111111111111", "123456789012345678")
_CLASS_PREFIX = {"AMB": "MZ", "IMP": "ZY", "EMER": "JZ"}
_LEVEL_RANK = {"village": 0, "township": 1, "tertiary": 2}
_FEVER = frozenset({"J06.9", "J20.9", "J18.9", "N39.0", "K35.8"})


@dataclass(frozen=True, slots=True)
class Institution:
    """A hospital, township health centre or village clinic of the region."""

    n: int  # number under the synthetic OID arc
    name: str
    level: str  # 'tertiary' | 'township' | 'village'
    district: str  # GB/T 2260 code
    part_of: int | None = None  # a village clinic's township health centre

    @property
    def oid(self) -> str:
        return f"{OID_ARC}.{self.n}"

    @property
    def id(self) -> str:
        """Organization resource id."""
        return f"org-{self.n}"

    @property
    def patient_system(self) -> str:
        """Identifier system of this institution's patient record numbers."""
        return f"urn:oid:{self.oid}.1"

    @property
    def visit_system(self) -> str:
        """Identifier system of this institution's visit (encounter) numbers."""
        return f"urn:oid:{self.oid}.2"

    def record_number(self, person_index: int) -> str:
        """The record number this institution gives a person (one registration per person)."""
        prefix = {"tertiary": "", "township": "WS", "village": "CS"}[self.level]
        return f"{prefix}{(self.n * 7919 % 89 + 10) * 1_000_000 + person_index}"


class TruthRow(NamedTuple):
    """Who a Patient registration really is, and which identity noise it carries."""

    patient_reference: str  # "Patient/<id>"
    person_key: str
    noise_kinds: tuple[str, ...]


def institution_counts(people: int) -> tuple[int, int, int]:
    """(tertiary, township, village) counts: 3/10/20 at 1,000 people, scaling with sqrt(people), each >= 1."""
    s = math.sqrt(people / 1000)
    return max(1, round(3 * s)), max(1, round(10 * s)), max(1, round(20 * s))


class _Clinical:
    """The clinical tables, indexed for generation."""

    def __init__(self) -> None:
        t = table("clinical")
        self.labs, self.meds, self.procedures, self.vitals = t["labs"], t["medications"], t["procedures"], t["vitals"]
        conds = t["conditions"]
        self.by_code = {c["code"]: c for c in conds}
        self.chronic = [c for c in conds if c["kind"] == "chronic"]
        self.acute = {}  # class -> (conditions, cumulative weights)
        for cls in F.CLASS_DISPLAY:
            acute = [c for c in conds if c["kind"] == "acute" and cls in c["classes"]]
            self.acute[cls] = (acute, list(accumulate(c["weight"] for c in acute)))


class Region:
    """A seeded, deterministic synthetic region.

    ``Region(seed, people)`` always yields the same resources in the same order. Person ``i``'s identity
    (name, sex, birth date, ID number, phone, address, household) depends only on ``(seed, province, i)``,
    so it is the same in a region of 10 and of 1,000 people; the institutions grow with the population,
    so where a person is registered and what their visits contain differ between region sizes.
    """

    def __init__(self, seed: int = 42, people: int = 100, province: str = "500000",
                 visit_scale: int = 1) -> None:
        if people < 0:
            raise ValueError("people must be >= 0")
        if visit_scale < 1:
            raise ValueError("visit_scale must be >= 1")
        self.seed, self.people, self.province = seed, people, province
        # a person's visits to each institution, times this: 1 is the region's few visits in the
        # window; larger gives records as long as Synthea's (whole histories per patient)
        self.visit_scale = visit_scale
        self._factory = PeopleFactory(seed, province)
        self._clinical = _Clinical()
        self._level_names = table("places")["levels"]
        self.institutions: list[Institution] = self._make_institutions()
        self._by_level = {lv: [i for i in self.institutions if i.level == lv] for lv in LEVELS}
        self._last_block: tuple[int, list[Person]] = (-1, [])
        self._villages_by_district: dict[str, list[Institution]] = {}
        for inst in self._by_level["village"]:
            self._villages_by_district.setdefault(inst.district, []).append(inst)

    # -- institutions -----------------------------------------------------------------------------
    def _make_institutions(self) -> list[Institution]:
        rng = random.Random(f"{self.seed}:institutions")
        prov, places = self._factory.province, table("places")
        districts = rng.sample(self._factory.districts, len(self._factory.districts))
        n_tertiary, n_township, n_village = institution_counts(self.people)
        insts: list[Institution] = []
        templates = places["tertiary_names"]
        for k in range(n_tertiary):
            d = districts[k % len(districts)]
            city = prov["cities"][d[:4]]
            name = f"{city}{prov['districts'][d]}{templates[k // len(districts) % len(templates)]}"
            if k >= len(districts) * len(templates):
                name += f"第{k // (len(districts) * len(templates)) + 1}分院"
            insts.append(Institution(len(insts) + 1, name, "tertiary", d))
        towns = []
        for k in range(n_township):
            d, town = districts[k % len(districts)], rng.choice(places["towns"])
            towns.append(town)
            insts.append(Institution(len(insts) + 1, f"{prov['districts'][d]}{town}镇卫生院", "township", d))
        townships = insts[n_tertiary:]
        for k in range(n_village):
            t = townships[k % n_township]
            village = places["villages"][(k // n_township + t.n) % len(places["villages"])]
            name = f"{towns[k % n_township]}镇{village}村卫生室"
            insts.append(Institution(len(insts) + 1, name, "village", t.district, part_of=t.n))
        return insts

    def organization(self, inst: Institution) -> dict:
        """The Organization resource of an institution."""
        prov = self._factory.province
        org = {
            "resourceType": "Organization",
            "id": inst.id,
            "identifier": [F.identifier("XX", "urn:ietf:rfc:3986", f"urn:oid:{inst.oid}", use="official")],
            "active": True,
            "type": [F.concept(F.ORGANIZATION_TYPE, "prov", "Healthcare Provider", self._level_names[inst.level])],
            "name": inst.name,
            "address": [
                {
                    "extension": [{"url": DIVISION_EXTENSION, "valueCode": inst.district}],
                    "use": "work",
                    "city": prov["cities"][inst.district[:4]],
                    "district": prov["districts"][inst.district],
                    "state": prov["name"],
                    "country": "CN",
                }
            ],
        }
        if inst.part_of is not None:
            org["partOf"] = F.ref("Organization", f"org-{inst.part_of}")
        return org

    def person(self, index: int) -> Person:
        """The true identity of person ``index`` (also for indices beyond ``people``)."""
        b = index // HOUSEHOLD
        if self._last_block[0] != b:  # consecutive indices share their household block
            self._last_block = (b, self._factory.block(b))
        return self._last_block[1][index % HOUSEHOLD]

    # -- streaming --------------------------------------------------------------------------------
    def iter_people(self) -> Iterator[tuple[list[dict], list[TruthRow]]]:
        """Per person, in index order: their resources (Patients, then each Encounter followed by its
        Conditions, Observations, MedicationRequests and Procedures) and their truth rows."""
        for b in range((self.people + HOUSEHOLD - 1) // HOUSEHOLD):
            for person in self._factory.block(b):
                if person.index < self.people:
                    yield self._person_resources(person)

    def iter_resources(self) -> Iterator[dict]:
        """Every resource, referenced ones first: all Organizations, then person by person."""
        for inst in self.institutions:
            yield self.organization(inst)
        for resources, _ in self.iter_people():
            yield from resources

    def resources_of(self, index: int) -> tuple[list[dict], list[TruthRow]]:
        """Person ``index``'s resources and truth rows, as ``iter_people`` yields them, without
        generating anyone else: what one person of a large region (the demo's, say) has."""
        if not 0 <= index < self.people:
            raise IndexError(f"person {index} is not in a region of {self.people} people")
        return self._person_resources(self.person(index))

    def iter_truth(self) -> Iterator[TruthRow]:
        """The true person of every Patient registration, in the order the Patients are yielded.

        This generates the region again; ``iter_people`` gives resources and truth in one pass."""
        for _, truth in self.iter_people():
            yield from truth

    def estimate_resources(self) -> int:
        """Approximate number of resources ``iter_resources`` yields (within a few percent)."""
        return len(self.institutions) + round(self.people * RESOURCES_PER_PERSON)

    # -- one person -------------------------------------------------------------------------------
    def _person_resources(self, person: Person) -> tuple[list[dict], list[TruthRow]]:
        rng = random.Random(f"{self.seed}:visits:{person.index}")
        health = _Health(rng, person, self._clinical)
        visits = self._schedule(rng, person)  # [(start, institution, class)], chronological
        first_visit: dict[int, dt.datetime] = {}
        for start, inst, _ in visits:
            first_visit.setdefault(inst.n, start)
        resources, truth, patient_ids = [], [], {}
        for inst in sorted({v[1] for v in visits}, key=lambda i: (first_visit[i.n], i.n)):
            patient, noise = self._registration(rng, person, inst, first_visit[inst.n].date())
            patient_ids[inst.n] = patient["id"]
            resources.append(patient)
            truth.append(TruthRow(f"Patient/{patient['id']}", person.key, noise))
        ordinal: dict[int, int] = {}
        for start, inst, cls in visits:
            j = ordinal[inst.n] = ordinal.get(inst.n, 0) + 1
            visit_no = f"{_CLASS_PREFIX[cls]}{inst.record_number(person.index)}{j:02d}"
            _Visit(self._clinical, rng, person, health, inst, cls, start, visit_no, patient_ids[inst.n]).emit(resources)
        return resources, truth

    def _schedule(self, rng: random.Random, person: Person) -> list[tuple[dt.datetime, Institution, str]]:
        by = self._by_level
        village = rng.choice(self._villages_by_district.get(person.district) or by["village"])
        hospital = rng.choice(by["tertiary"])
        assert village.part_of is not None  # a village clinic belongs to a township centre
        pool = [village, self.institutions[village.part_of - 1], hospital, rng.choice(self.institutions)]
        chosen = rng.sample(pool, rng.choices((1, 2, 3, 4), cum_weights=(25, 70, 95, 100))[0])
        born_in_window = person.birth >= FIRST_VISIT_DATE
        if born_in_window and hospital not in chosen:
            chosen.append(hospital)
        start = max(person.birth, FIRST_VISIT_DATE).toordinal()
        visits: list[tuple[dt.datetime, Institution, str]] = []
        # longer histories (visit_scale): more visits after each institution's first, drawn from
        # a generator of their own, so that the people and their registrations stay as they are
        more = random.Random(f"{self.seed}:history:{person.index}")
        for inst in dict.fromkeys(chosen):  # unique, in order
            n = rng.choices((1, 2, 3), cum_weights=(65, 90, 100))[0]
            own = [self._visit(rng, inst, start) for _ in range(n)]
            first = min(v[0] for v in own).toordinal()
            visits += own + [self._visit(more, inst, first) for _ in range(n * (self.visit_scale - 1))]
        if born_in_window:  # the birth: seen at the hospital within days
            day = person.birth + dt.timedelta(days=rng.randrange(3))
            at = dt.datetime(day.year, day.month, day.day, rng.randrange(8, 17), rng.randrange(60))
            visits.append((at, hospital, "IMP"))
        visits.sort(key=lambda v: (v[0], v[1].n))
        return visits

    @staticmethod
    def _visit(rng: random.Random, inst: Institution, start: int) -> tuple[dt.datetime, Institution, str]:
        """One visit to ``inst`` on a day from ``start`` (an ordinal) to the reference date."""
        cls = "AMB"
        if inst.level == "tertiary":
            cls = rng.choices(("AMB", "IMP", "EMER"), cum_weights=(72, 87, 100))[0]
        elif inst.level == "township" and rng.random() < 0.05:
            cls = "IMP"
        day = dt.date.fromordinal(start + rng.randrange(REFERENCE_DATE.toordinal() - start + 1))
        hour = rng.randrange(24) if cls == "EMER" else rng.choice((8, 9, 10, 11, 14, 15, 16))
        return dt.datetime(day.year, day.month, day.day, hour, rng.randrange(60)), inst, cls

    def _registration(
        self, rng: random.Random, person: Person, inst: Institution, first: dt.date
    ) -> tuple[dict, tuple[str, ...]]:
        """The Patient an institution records at a person's first visit there, and the noise in it."""
        noise: list[str] = []
        family, given, text = person.family, person.given, None
        idno: str | None
        birth, idno, phone = person.birth, person.id_number, person.contact_phone
        if person.parent is not None and (first - person.birth).days < 60:  # registered as a newborn
            if rng.random() < 0.6:
                idno = person.parent.id_number
                noise.append("newborn_parent_id")
            else:
                idno = None
                noise.append("id_missing")
            if rng.random() < 0.5:
                text = f"{person.parent.name}之{'子' if person.gender == 'male' else '女'}"
                noise.append("newborn_parent_name")
            phone = person.parent.contact_phone
        else:
            r = rng.random()
            if r < 0.06:
                family, given = self._homophone(rng, family, given, noise)
            elif r < 0.09 and len(given) == 2 and given[0] != given[1]:
                given = given[::-1]
                noise.append("name_typo")
            if rng.random() < 0.04 and birth.day <= 12 and birth.day != birth.month:
                birth = birth.replace(month=birth.day, day=birth.month)
                noise.append("birth_date_day_month_swapped")
            r = rng.random()
            if r < 0.05:
                idno = None
                noise.append("id_missing")
            elif r < 0.08:
                idno = rng.choice(_PLACEHOLDER_IDS)
                noise.append("id_placeholder")
            elif r < 0.10:
                k = rng.randrange(17)
                idno = idno[:k] + str((int(idno[k]) + rng.randint(1, 9)) % 10) + idno[k + 1 :]
                noise.append("id_typo")
            elif r < 0.14 and birth.year < 1985:
                idno = idno[:6] + idno[8:17]
                noise.append("id_15_digit")
        if phone is not None and phone != person.phone:
            noise.append("shared_phone")

        pid = f"p-{inst.n}-{inst.record_number(person.index)}"
        identifiers = [F.identifier("MR", inst.patient_system, inst.record_number(person.index), use="usual")]
        if idno is not None:
            identifiers.append(F.identifier("NI", F.RESIDENT_ID_SYSTEM, idno, use="official"))
        if person.health_card and rng.random() < 0.7:
            identifiers.append(F.identifier("HC", F.HEALTH_CARD_SYSTEM, person.health_card))
        name: dict[str, Any] = {"use": "official", "text": text or family + given}
        if not text:
            name |= {"family": family, "given": [given]}
        patient = {"resourceType": "Patient", "id": pid, "identifier": identifiers, "active": True, "name": [name]}
        if phone:
            patient["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
        patient["gender"] = person.gender
        patient["birthDate"] = birth.isoformat()
        home = person.address  # shared by the household: copy what is nested
        patient["address"] = [{**home, "extension": [dict(e) for e in home["extension"]], "line": list(home["line"])}]
        patient["managingOrganization"] = F.ref("Organization", inst.id)
        return patient, tuple(noise)

    def _homophone(self, rng: random.Random, family: str, given: str, noise: list[str]) -> tuple[str, str]:
        full = family + given
        spots = [k for k, c in enumerate(full) if c in self._factory.names.homophones]
        if not spots:
            return family, given
        k = rng.choice(spots)
        full = full[:k] + rng.choice(self._factory.names.homophones[full[k]]) + full[k + 1 :]
        noise.append("name_homophone")
        return full[: len(family)], full[len(family) :]


def _some(rng: random.Random, items: list[str]) -> list[str]:
    """One (two thirds of the time) or two of ``items``."""
    return rng.sample(items, min(len(items), rng.choice((1, 1, 2))))


class _Health:
    """A person's lasting health: chronic conditions with their regimen, body size, blood pressure."""

    def __init__(self, rng: random.Random, person: Person, clinical: _Clinical) -> None:
        age = (REFERENCE_DATE - person.birth).days / 365.25
        boost = 1.5 if age >= 60 else 1.0
        self.chronic = [c for c in clinical.chronic if age >= c["min_age"] and rng.random() < c["prevalence"] * boost]
        self.codes = frozenset(c["code"] for c in self.chronic)
        self.regimen = {c["code"]: _some(rng, c["meds"]) for c in self.chronic}
        male = person.gender == "male"
        self.height = rng.gauss(170 if male else 158, 6)
        self.bmi = rng.gauss(23.5, 3)
        self.systolic = rng.randint(138, 165) if "I10" in self.codes else rng.randint(100, 132)

    def size_at(self, age: float) -> tuple[float, float]:
        """(height cm, weight kg) at an age in years."""
        if age >= 18:
            h, bmi = self.height, self.bmi
        else:
            h = min(self.height, 50 + 25 * min(age, 1) + 12 * min(max(age - 1, 0), 1) + 6.5 * max(age - 2, 0))
            bmi = 16 + 0.25 * max(age - 6, 0)
        return round(h, 1), round(bmi * (h / 100) ** 2, 1)


class _Visit:
    """One encounter and what it produced."""

    def __init__(
        self, clinical: _Clinical, rng: random.Random, person: Person, health: _Health, inst: Institution,
        cls: str, start: dt.datetime, visit_no: str, patient_id: str,
    ) -> None:
        self.c, self.rng, self.person, self.health, self.inst, self.cls = clinical, rng, person, health, inst, cls
        self.start, self.visit_no = start, visit_no
        self.age = (start.date() - person.birth).days / 365.25
        self.patient_id = patient_id
        self.key = f"{inst.n}-{visit_no}"

    @property
    def subject(self) -> dict:
        return F.ref("Patient", self.patient_id)

    @property
    def encounter(self) -> dict:
        return F.ref("Encounter", f"e-{self.key}")

    def emit(self, out: list[dict]) -> None:
        rng, start, cls = self.rng, self.start, self.cls
        if cls == "IMP":
            end = start + dt.timedelta(days=rng.randint(2, 12), hours=rng.randint(0, 6))
        else:
            end = start + dt.timedelta(minutes=rng.randint(10, 360 if cls == "EMER" else 90))
        out.append(
            {
                "resourceType": "Encounter",
                "id": f"e-{self.key}",
                "identifier": [F.identifier("VN", self.inst.visit_system, self.visit_no, use="official")],
                "status": "finished",
                "class": {"system": F.ACT_CODE, "code": cls, "display": F.CLASS_DISPLAY[cls]},
                "subject": self.subject,
                "period": {"start": F.ts(start), "end": F.ts(end)},
                "serviceProvider": F.ref("Organization", self.inst.id),
            }
        )
        reasons = self._reasons()
        conditions = []
        for k, cond in enumerate(reasons, 1):
            cid = f"c-{self.key}-{k}"
            conditions.append(cid)
            res = {
                "resourceType": "Condition",
                "id": cid,
                "clinicalStatus": F.coded(F.CONDITION_CLINICAL, "active" if cond["kind"] == "chronic" else "resolved"),
                "verificationStatus": F.coded(F.CONDITION_VERIFICATION, "confirmed"),
                "category": [F.coded(F.CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
                "code": F.concept(F.ICD10, cond["code"], cond["display"]),
                "subject": self.subject,
                "encounter": self.encounter,
            }
            if cond["kind"] != "chronic":
                res["abatementDateTime"] = F.ts(end)
            res["recordedDate"] = F.ts(start)
            out.append(res)
        obs_time = F.ts(start + dt.timedelta(minutes=rng.randint(5, 30)))
        n = self._vitals(out, reasons, obs_time)
        self._labs(out, reasons, n, F.ts(start + dt.timedelta(minutes=rng.randint(40, 180))))
        self._medications(out, reasons, conditions, obs_time)
        self._procedures(out, reasons, conditions, obs_time)

    def _reasons(self) -> list[dict]:
        rng, c, age, h, cls = self.rng, self.c, self.age, self.health, self.cls
        if age < 28 / 365.25:
            return [c.by_code["P59.9" if rng.random() < 0.35 else "Z00.1"]]
        chronic = [x for x in h.chronic if cls in x["classes"]]
        r = rng.random()
        if cls == "AMB" and chronic and r < 0.5:
            main = rng.choice(chronic)
        elif cls == "AMB" and r < 0.65 and self.inst.level != "tertiary" and (age >= 65 or age < 7):
            main = c.by_code["Z00.0" if age >= 18 else "Z00.1"]
        elif cls != "AMB" and chronic and r < 0.3:
            main = rng.choice(chronic)
        else:
            acute, cum = c.acute[cls]
            for _ in range(20):
                main = rng.choices(acute, cum_weights=cum)[0]
                if age >= main["min_age"]:
                    break
            else:
                main = c.by_code["J06.9"]
        reasons = [main]
        if cls == "IMP" or self.inst.level == "tertiary":
            reasons += [x for x in h.chronic if x is not main and rng.random() < 0.5][:2]
        return reasons

    def _observation(self, k: int, category: str, code: str, display: str, text: str, when: str) -> dict:
        return F.observation(f"o-{self.key}-{k}", category, code, display, text, self.subject, self.encounter, when)

    def _vital(self, out: list[dict], k: int, name: str, when: str, value: float | None) -> dict:
        v = self.c.vitals[name]
        obs = self._observation(k, "vital-signs", v["code"], v["display"], v["text"], when)
        if value is not None:
            obs["valueQuantity"] = F.quantity(value, v["unit"])
        out.append(obs)
        return obs

    def _vitals(self, out: list[dict], reasons: list[dict], when: str) -> int:
        rng, age, codes = self.rng, self.age, {r["code"] for r in reasons}
        names = ["bp", "heart_rate"] if age >= 7 else ["heart_rate"]
        if self.cls != "AMB" or codes & _FEVER or age < 7:
            names.append("temperature")
        if self.cls == "IMP" or codes & {"J44.9", "J18.9"}:
            names += ["respiratory_rate", "spo2"]
        if self.cls == "IMP" or reasons[0]["kind"] in ("checkup", "newborn"):
            names += ["weight", "height"] + (["bmi"] if age >= 2 else [])
        height, weight = self.health.size_at(age)
        k = 0
        for name in names:
            k += 1
            if name == "bp":
                sys_ = int(self.health.systolic + rng.gauss(0, 8))
                obs = self._vital(out, k, "bp", when, None)
                dia = int(sys_ * 0.63 + rng.gauss(0, 5))
                obs["component"] = [
                    {"code": F.concept(F.LOINC, v["code"], v["display"], v["text"]), "valueQuantity": F.quantity(val, v["unit"])}
                    for v, val in ((self.c.vitals["systolic"], sys_), (self.c.vitals["diastolic"], dia))
                ]
                continue
            value: float
            if name == "heart_rate":
                value = int(rng.gauss(76, 9) if age >= 12 else rng.gauss(110, 12))
            elif name == "temperature":
                fever = codes & _FEVER and rng.random() < 0.6
                value = round(rng.uniform(37.6, 39.4) if fever else rng.gauss(36.6, 0.25), 1)
            elif name == "respiratory_rate":
                value = rng.randint(14, 22) if age >= 12 else rng.randint(20, 40)
            elif name == "spo2":
                value = rng.randint(88, 95) if "J44.9" in self.health.codes else rng.randint(95, 100)
            elif name == "weight":
                value = weight
            elif name == "height":
                value = height
            else:  # bmi
                value = round(weight / (height / 100) ** 2, 1)
            self._vital(out, k, name, when, value)
        return k

    def _labs(self, out: list[dict], reasons: list[dict], k: int, when: str) -> None:
        rng, level = self.rng, self.inst.level
        codes = list(dict.fromkeys(code for r in reasons for code in r["labs"]))
        if self.cls == "IMP":
            codes = list(dict.fromkeys(codes + ["6690-2", "718-7", "777-3"]))
        elif level == "village":
            codes = [c for c in codes if c == "14771-0"]  # a glucose meter is all a village clinic has
        elif level == "township":
            codes = codes[:3]
        female = self.person.gender == "female"
        known = self.health.codes | {r["code"] for r in reasons}
        for code in codes:
            lab = self.c.labs[code]
            lo, hi = lab["female"] if female and "female" in lab else (lab["low"], lab["high"])
            if known.intersection(lab["high_with"]) and rng.random() < 0.7 or rng.random() < 0.05:
                value, flag = hi * rng.uniform(1.05, 1.8), "H"
            elif lo > 0 and rng.random() < 0.03:
                value, flag = lo * rng.uniform(0.6, 0.95), "L"
            else:
                value, flag = rng.uniform(lo + (hi - lo) * 0.05, hi - (hi - lo) * 0.05), "N"
            d = lab["decimals"]
            value = round(value, d) if d else int(round(value))
            k += 1
            obs = self._observation(k, "laboratory", code, lab["display"], lab["text"], when)
            obs["valueQuantity"] = F.quantity(value, lab["unit"])
            obs["interpretation"] = F.interpretation(flag)
            rr = {"low": F.quantity(lo, lab["unit"])} if lo > 0 else {}
            rr["high"] = F.quantity(hi, lab["unit"])
            obs["referenceRange"] = [rr]
            out.append(obs)

    def _medications(self, out: list[dict], reasons: list[dict], conditions: list[str], when: str) -> None:
        rng, k = self.rng, 0
        for reason, cond_id in zip(reasons, conditions):
            meds = self.health.regimen.get(reason["code"])
            if meds is None:
                meds = _some(rng, reason["meds"])
            elif reason is not reasons[0] and rng.random() < 0.5:
                continue
            for code in meds:
                m = self.c.meds[code]
                k += 1
                out.append(
                    {
                        "resourceType": "MedicationRequest",
                        "id": f"m-{self.key}-{k}",
                        "status": "completed",
                        "intent": "order",
                        "medicationCodeableConcept": F.concept(F.ATC, code, m["name"], m["product"]),
                        "subject": self.subject,
                        "encounter": self.encounter,
                        "authoredOn": when,
                        "reasonReference": [F.ref("Condition", cond_id)],
                        "dosageInstruction": [
                            {
                                "text": f"{m['route']}，{m['frequency']}，每次{m['dose']}{F.unit_text(m['unit'])}",
                                "route": {"text": m["route"]},
                                "doseAndRate": [{"doseQuantity": F.quantity(m["dose"], m["unit"])}],
                            }
                        ],
                    }
                )

    def _procedures(self, out: list[dict], reasons: list[dict], conditions: list[str], when: str) -> None:
        rng, k, rank = self.rng, 0, _LEVEL_RANK[self.inst.level]
        for reason, cond_id in zip(reasons, conditions):
            for code, p in reason["procedures"]:
                proc = self.c.procedures[code]
                if _LEVEL_RANK[proc["min_level"]] > rank or proc["inpatient_only"] and self.cls != "IMP":
                    continue
                if rng.random() >= p:
                    continue
                k += 1
                out.append(
                    {
                        "resourceType": "Procedure",
                        "id": f"pr-{self.key}-{k}",
                        "status": "completed",
                        "code": F.concept(F.ICD9CM3, code, proc["display"]),
                        "subject": self.subject,
                        "encounter": self.encounter,
                        "performedDateTime": when,
                        "reasonReference": [F.ref("Condition", cond_id)],
                    }
                )
