"""The true identities of the synthetic region's people, before any institution records them.

People live in households of ``HOUSEHOLD`` consecutive indices (block ``i // HOUSEHOLD``). A block is either
a family (head, usually a spouse, a child, and one unrelated person) or ``HOUSEHOLD`` unrelated people.
Person ``i`` is a pure function of ``(seed, province, i)``: its own ``random.Random`` and its block's one,
so a prefix of a bigger region has the same people, and nothing about other people is ever kept.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from itertools import accumulate

from terminology.resident_id import check_digit

from .tables import table

HOUSEHOLD = 4
REFERENCE_DATE = dt.date(2024, 12, 31)  # "today" of every synthetic region: no clock is read
FIRST_VISIT_DATE = dt.date(2020, 1, 1)
DIVISION_EXTENSION = "https://fhir-region-hub.example/StructureDefinition/administrative-division"
"""Address extension (valueCode) with the GB/T 2260 county-level division code of the address."""

_MOBILE_PREFIXES = [f"13{d}" for d in range(10)] + [f"15{d}" for d in "012356789"] + [f"18{d}" for d in range(10)]
# Age bands (years at REFERENCE_DATE) of adults living alone or heading a household, with weights.
_ADULT_AGES = ((16, 30, 17), (30, 45, 22), (45, 60, 27), (60, 75, 22), (75, 96, 12))
_ADULT_AGE_CUM = list(accumulate(w for *_, w in _ADULT_AGES))


@dataclass(frozen=True, slots=True)
class Person:
    """One real person of the region, as the truth knows them."""

    index: int
    key: str  # person key of the truth table
    family: str  # surname
    given: str
    gender: str  # 'male' | 'female'
    birth: dt.date
    id_number: str  # 18-digit resident ID number, valid
    phone: str | None  # own mobile number (children and some elderly have none)
    contact_phone: str | None  # number given at registration: own, else a family member's
    health_card: str | None
    address: dict  # FHIR Address, shared by the household
    district: str  # home district code
    parent: Person | None = None  # for children: the parent (the mother if known) a newborn is registered under

    @property
    def name(self) -> str:
        return self.family + self.given


class _Names:
    def __init__(self) -> None:
        t = table("names")
        self.surnames = [s for s, _ in t["surnames"]]
        self.surname_cum = list(accumulate(w for _, w in t["surnames"]))
        g = t["given_chars"]
        self.given = {"male": g["male"], "female": g["female"]}
        self.neutral = g["neutral"]
        self.homophones = {c: [o for o in group if o != c] for group in t["homophones"] for c in group}


class PeopleFactory:
    """Makes the people of one region: ``block(b)`` returns the people of household block ``b``."""

    def __init__(self, seed: int, province: str) -> None:
        divisions = table("divisions")
        if province not in divisions or province.startswith("_"):
            raise ValueError(f"unknown province {province!r}; known: {[p for p in divisions if p[0] != '_']}")
        self.seed = seed
        self.province = divisions[province]
        self.districts = sorted(self.province["districts"])
        self.other_districts = sorted(
            d for p, v in divisions.items() if p != province and not p.startswith("_") for d in v["districts"]
        )
        self.places = table("places")
        self.names = _Names()

    # -- small draws ------------------------------------------------------------------------------
    def surname(self, rng: random.Random) -> str:
        return rng.choices(self.names.surnames, cum_weights=self.names.surname_cum)[0]

    def given(self, rng: random.Random, gender: str) -> str:
        pool = self.names.given[gender]
        chars = [rng.choice(self.names.neutral if rng.random() < 0.15 else pool) for _ in range(2)]
        if rng.random() < 0.2 or chars[0] == chars[1] and rng.random() < 0.7:
            return chars[1]
        return chars[0] + chars[1]

    @staticmethod
    def phone(rng: random.Random) -> str:
        return rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"

    def id_number(self, rng: random.Random, region: str, birth: dt.date, gender: str) -> str:
        seq = rng.randrange(100) * 10 + rng.randrange(5) * 2 + (gender == "male")
        first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
        return first17 + check_digit(first17)

    def id_region(self, rng: random.Random, home: str) -> str:
        r = rng.random()
        if r < 0.08:
            return rng.choice(self.other_districts)  # moved here from another province
        return home if r < 0.75 else rng.choice(self.districts)

    def address(self, rng: random.Random, district: str) -> dict:
        p, prov = self.places, self.province
        name = prov["districts"][district]
        if name.endswith("区") and rng.random() < 0.7:
            line = (
                f"{rng.choice(p['streets'])}{rng.randint(1, 400)}号{rng.randint(1, 30)}栋"
                f"{rng.randint(1, 4)}单元{rng.randint(1, 33)}{rng.randint(1, 6):02d}室"
            )
        else:
            line = f"{rng.choice(p['towns'])}镇{rng.choice(p['villages'])}村{rng.randint(1, 12)}组{rng.randint(1, 120)}号"
        city = prov["cities"][district[:4]]
        text = prov["name"] + ("" if city == prov["name"] else city) + name + line
        return {
            "extension": [{"url": DIVISION_EXTENSION, "valueCode": district}],
            "use": "home",
            "text": text,
            "line": [line],
            "city": city,
            "district": name,
            "state": prov["name"],
            "country": "CN",
        }

    @staticmethod
    def adult_birth(rng: random.Random) -> dt.date:
        lo, hi, _ = _ADULT_AGES[rng.choices(range(len(_ADULT_AGES)), cum_weights=_ADULT_AGE_CUM)[0]]
        return REFERENCE_DATE - dt.timedelta(days=rng.randrange(lo * 365, hi * 365))

    # -- people -----------------------------------------------------------------------------------
    def _person(
        self,
        i: int,
        rng: random.Random,
        gender: str,
        birth: dt.date,
        family: str | None = None,
        household: Person | None = None,
        parent: Person | None = None,
    ) -> Person:
        age = (REFERENCE_DATE - birth).days // 365
        if household is None:
            home = rng.choice(self.districts)
            address = self.address(rng, home)
            id_region = self.id_region(rng, home)
        else:
            home, address = household.district, household.address
            id_region = household.id_number[:6] if rng.random() < 0.9 else self.id_region(rng, home)
        own_phone = self.phone(rng) if 16 <= age and (age < 75 or rng.random() < 0.5) else None
        contact = own_phone
        if household is not None and (own_phone is None or rng.random() < 0.25):
            contact = household.contact_phone or own_phone
        return Person(
            index=i,
            key=f"person-{i}",
            family=family or self.surname(rng),
            given=self.given(rng, gender),
            gender=gender,
            birth=birth,
            id_number=self.id_number(rng, id_region, birth, gender),
            phone=own_phone,
            contact_phone=contact,
            health_card=f"{rng.getrandbits(96):024X}" if rng.random() < 0.4 else None,
            address=address,
            district=home,
            parent=parent,
        )

    def block(self, b: int) -> list[Person]:
        """The ``HOUSEHOLD`` people with indices ``b*HOUSEHOLD ...``, in index order."""
        seed, base = self.seed, b * HOUSEHOLD
        hh = random.Random(f"{seed}:household:{b}")
        rngs = [random.Random(f"{seed}:person:{base + k}") for k in range(HOUSEHOLD)]
        gender = lambda r: "male" if r.random() < 0.5 else "female"  # noqa: E731
        if hh.random() >= 0.6:  # unrelated people
            return [self._person(base + k, r, gender(r), self.adult_birth(r)) for k, r in enumerate(rngs)]
        # family: head, spouse (or a second unrelated adult), child, unrelated adult
        newborn = hh.random() < 0.15
        if newborn:
            window = (REFERENCE_DATE - FIRST_VISIT_DATE).days - 60
            child_birth = FIRST_VISIT_DATE + dt.timedelta(days=hh.randrange(window))
        else:
            child_birth = REFERENCE_DATE - dt.timedelta(days=hh.randrange(365, 25 * 365))
        parent_birth = lambda r: child_birth - dt.timedelta(days=r.randrange(21 * 365, 40 * 365))  # noqa: E731
        r0, r1, r2, r3 = rngs
        head = self._person(base, r0, gender(r0), parent_birth(r0))
        if hh.random() < 0.85:
            other = "female" if head.gender == "male" else "male"
            spouse = self._person(base + 1, r1, other, parent_birth(r1), household=head)
            father, mother = (head, spouse) if head.gender == "male" else (spouse, head)
        else:
            spouse = self._person(base + 1, r1, gender(r1), self.adult_birth(r1))
            father = mother = head
        child = self._person(base + 2, r2, gender(r2), child_birth, father.family, household=head, parent=mother)
        return [head, spouse, child, self._person(base + 3, r3, gender(r3), self.adult_birth(r3))]
