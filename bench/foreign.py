"""A second synthetic region, made differently from ``hub.synth``, to test matching on data it was
not tuned on (its records are never used to estimate weights).

What differs from the project's generator: a southern surname distribution (陈, 林, 黄 first, with a
long tail), its own given-name characters, one-character given names half the time, and other noise:
names in traditional characters or in pinyin only (either order), a character dropped or a homophone
typed, resident ID numbers with two digits transposed or one mistyped, sex missing, birth dates
recorded in the lunar calendar, a year off, day and month swapped, or missing, phones mistyped,
addresses missing or another one. And
the hard cases a region of millions holds: twins (same birth date, surname, phone and address,
different given names) and strangers with the same name and the same birth date.

``ForeignRegion(seed, people).records()`` yields ``(patient dict, person key, noise kinds)``;
``pairs_of_kind`` lists the people pairs that are twins or name-and-birth-date namesakes.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

from lunardate import LunarDate

from terminology.resident_id import check_digit

RESIDENT_ID = "urn:oid:2.16.156.10011.1.3"
DIVISION_EXTENSION = "https://fhir-region-hub.example/StructureDefinition/administrative-division"

# (surname, weight): a Guangdong/Fujian-like head and a flat tail
SURNAMES = [("陈", 90), ("林", 60), ("黄", 55), ("李", 50), ("张", 40), ("吴", 35), ("梁", 30),
            ("郑", 28), ("刘", 27), ("何", 25), ("王", 24), ("杨", 22), ("蔡", 20), ("罗", 20),
            ("谢", 18), ("许", 17), ("周", 16), ("叶", 16), ("邱", 14), ("苏", 14), ("曾", 13),
            ("钟", 13), ("赖", 12), ("卢", 12), ("温", 10), ("欧阳", 6), ("司徒", 4), ("麦", 8),
            ("冯", 8), ("邓", 9), ("潘", 8), ("庄", 7), ("方", 7), ("彭", 7), ("余", 7), ("江", 6)]
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建文辉国荣俊峰志宏鹏健雪梅琳晶颖慧欣怡婷嘉豪浩宇子轩梓涵诗雨思彤佳乐锦泽楷铭"
# traditional forms of characters above (names as typed in Hong Kong, Taiwan or older systems)
TRADITIONAL = {"陈": "陳", "黄": "黃", "张": "張", "吴": "吳", "梁": "樑", "郑": "鄭", "刘": "劉",
               "杨": "楊", "罗": "羅", "谢": "謝", "许": "許", "叶": "葉", "苏": "蘇", "钟": "鍾",
               "赖": "賴", "卢": "盧", "温": "溫", "邓": "鄧", "庄": "莊", "伟": "偉", "丽": "麗",
               "军": "軍", "艳": "艷", "杰": "傑", "涛": "濤", "华": "華", "红": "紅", "辉": "輝",
               "国": "國", "荣": "榮", "峰": "峯", "宏": "宏", "鹏": "鵬", "梅": "梅", "颖": "穎",
               "欣": "欣", "婷": "婷", "嘉": "嘉", "豪": "豪", "轩": "軒", "涵": "涵", "诗": "詩",
               "锦": "錦", "泽": "澤", "铭": "銘", "乐": "樂", "静": "靜", "敏": "敏"}
HOMOPHONES = ["伟玮炜", "芳方", "静晶婧", "丽莉立", "明铭", "华桦", "红宏鸿", "辉晖", "峰锋", "杰洁",
              "涛滔", "婷亭", "怡仪", "欣馨", "嘉佳家", "宇雨语", "泽则", "涵晗", "乐勒", "梅玫"]
DISTRICTS = ["440103", "440104", "440105", "440106", "440111", "440303", "440304", "440305",
             "350102", "350103", "350104", "350203", "350205", "350206", "445102", "445103"]
STREETS = [f"{a}{b}" for a in ("中山", "解放", "人民", "建设", "东风", "滨江", "湖滨", "新华", "五一", "花园")
           for b in ("路", "大道", "北路", "南街", "西路")]
NOISE = {  # kind: probability per record (after the first, "clean" one of a person)
    "name_traditional": 0.08, "name_pinyin": 0.05, "name_dropped_char": 0.03,
    "name_homophone": 0.06, "id_missing": 0.30, "id_transposed": 0.03, "id_typo": 0.03,
    "sex_missing": 0.15, "birth_lunar": 0.06, "birth_year_off": 0.03,
    "birth_day_month_swapped": 0.02, "birth_missing": 0.02, "phone_typo": 0.04,
    "phone_missing": 0.2, "district_missing": 0.3, "address_moved": 0.08, "address_missing": 0.1,
}
_PINYIN_CACHE: dict[str, str] = {}


def _pinyin(text: str) -> str:
    if text not in _PINYIN_CACHE:
        from pypinyin import lazy_pinyin
        _PINYIN_CACHE[text] = "".join(lazy_pinyin(text)).capitalize()
    return _PINYIN_CACHE[text]


class ForeignRegion:
    def __init__(self, seed: int = 5, people: int = 2000, twins: float = 0.02,
                 namesakes: float = 0.03):
        self.seed, self.people = seed, people
        self.twins, self.namesakes = twins, namesakes
        self.special: dict[str, list[tuple[str, str]]] = {"twins": [], "namesakes": []}

    # -- people --------------------------------------------------------------------------------
    def _person(self, rng: random.Random, key: str, **fixed) -> dict:
        sex = fixed.get("sex") or rng.choice(("male", "female"))
        birth = fixed.get("birth") or (dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(33000)))
        family = fixed.get("family") or rng.choices([s for s, _ in SURNAMES],
                                                    weights=[w for _, w in SURNAMES])[0]
        given = fixed.get("given") or "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        region = fixed.get("district") or rng.choice(DISTRICTS)
        seq = rng.randrange(100) * 10 + rng.randrange(5) * 2 + (sex == "male")
        first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
        phone = fixed.get("phone") or f"1{rng.choice('3578')}{rng.randrange(10**9):09d}"
        return {"key": key, "sex": sex, "birth": birth, "family": family, "given": given,
                "id": first17 + check_digit(first17), "phone": phone,
                "district": fixed.get("district") or region,
                "line": fixed.get("line") or self._line(rng)}

    @staticmethod
    def _line(rng: random.Random) -> str:
        return f"{rng.choice(STREETS)}{rng.randint(1, 300)}号{rng.randint(1, 30)}栋{rng.randint(101, 2806)}房"

    def persons(self) -> list[dict]:
        rng = random.Random(f"foreign:{self.seed}")
        out: list[dict] = []
        i = 0
        while len(out) < self.people:
            p = self._person(rng, f"f-{i}")
            out.append(p)
            i += 1
            r = rng.random()
            if r < self.twins:  # a twin: same birth, surname, home and phone; another given name
                t = self._person(rng, f"f-{i}", birth=p["birth"], family=p["family"],
                                 district=p["district"], line=p["line"], phone=p["phone"])
                while t["given"] == p["given"]:
                    t["given"] = "".join(rng.choice(GIVEN) for _ in range(len(p["given"])))
                out.append(t)
                self.special["twins"].append((p["key"], t["key"]))
                i += 1
            elif r < self.twins + self.namesakes:  # a stranger with the same name and birth date
                s = self._person(rng, f"f-{i}", birth=p["birth"], family=p["family"],
                                 given=p["given"])
                out.append(s)
                self.special["namesakes"].append((p["key"], s["key"]))
                i += 1
        return out

    # -- records -------------------------------------------------------------------------------
    def records(self) -> Iterator[tuple[dict, str, list[str]]]:
        rng = random.Random(f"foreign-records:{self.seed}")
        n = 0
        for p in self.persons():
            k = rng.choices((1, 2, 3, 4, 5), weights=(25, 35, 22, 12, 6))[0]
            for j in range(k):
                noise = [kind for kind, pr in NOISE.items() if j > 0 and rng.random() < pr]
                n += 1
                yield self._patient(rng, p, f"fr{n}", rng.randrange(40), noise), p["key"], noise

    def _patient(self, rng: random.Random, p: dict, pid: str, inst: int, noise: list[str]) -> dict:
        family, given = p["family"], p["given"]
        if "name_homophone" in noise:
            pos = rng.randrange(len(given))
            for group in HOMOPHONES:
                if given[pos] in group:
                    given = given[:pos] + rng.choice(group.replace(given[pos], "")) + given[pos + 1:]
                    break
            else:
                noise.remove("name_homophone")
        if "name_dropped_char" in noise:
            if len(given) > 1:
                given = given[rng.randrange(2)]
            else:
                noise.remove("name_dropped_char")
        if "name_traditional" in noise:
            family = "".join(TRADITIONAL.get(c, c) for c in family)
            given = "".join(TRADITIONAL.get(c, c) for c in given)
        name: dict = {"use": "official"}
        if "name_pinyin" in noise:
            fam_py = {"曾": "Zeng", "欧阳": "Ouyang", "司徒": "Situ"}.get(family) or _pinyin(family)
            if rng.random() < 0.5:
                name.update(family=fam_py.upper(), given=[_pinyin(given).upper()])
            else:
                name["text"] = f"{_pinyin(given)} {fam_py}"  # given name first, as in English
                name.update(family=fam_py, given=[_pinyin(given)])
        elif rng.random() < 0.5:
            name["text"] = family + given
        else:
            name.update(family=family, given=[given])
        birth = p["birth"]
        bd: str | None = birth.isoformat()
        if "birth_lunar" in noise:
            lunar = LunarDate.from_solar_date(birth.year, birth.month, birth.day)
            bd = f"{lunar.year:04d}-{lunar.month:02d}-{lunar.day:02d}"
        elif "birth_year_off" in noise:
            bd = f"{birth.year + rng.choice((-1, 1)):04d}{bd[4:]}"
            if bd.endswith("02-29"):
                bd = bd[:-2] + "28"
        elif "birth_day_month_swapped" in noise:
            if birth.day <= 12 and birth.day != birth.month:
                bd = f"{birth.year:04d}-{birth.day:02d}-{birth.month:02d}"
            else:
                noise.remove("birth_day_month_swapped")
        elif "birth_missing" in noise:
            bd = None
        ident = [{"system": f"urn:oid:2.16.156.10011.99.7.{inst}", "value": f"{inst}-{pid}"}]
        if "id_missing" not in noise:
            idno = p["id"]
            if "id_transposed" in noise:
                i = rng.randrange(6, 16)
                if idno[i] != idno[i + 1]:
                    idno = idno[:i] + idno[i + 1] + idno[i] + idno[i + 2:]
                else:
                    noise.remove("id_transposed")
            elif "id_typo" in noise:
                i = rng.randrange(14, 17)
                idno = idno[:i] + str((int(idno[i]) + rng.randint(1, 9)) % 10) + idno[i + 1:]
            ident.append({"system": RESIDENT_ID, "value": idno})
        patient: dict = {"resourceType": "Patient", "id": pid, "identifier": ident, "name": [name]}
        if "sex_missing" not in noise:
            patient["gender"] = p["sex"]
        if bd:
            patient["birthDate"] = bd
        if "phone_missing" not in noise:
            phone = p["phone"]
            if "phone_typo" in noise:
                i = rng.randrange(3, 11)
                phone = phone[:i] + str((int(phone[i]) + 1) % 10) + phone[i + 1:]
            patient["telecom"] = [{"system": "phone", "value": phone}]
        addr: dict = {}
        if "address_moved" in noise:
            addr["line"] = [self._line(rng)]
        elif "address_missing" not in noise:
            addr["line"] = [p["line"]]
        if "district_missing" not in noise:
            addr["extension"] = [{"url": DIVISION_EXTENSION, "valueCode": p["district"]}]
        if addr:
            patient["address"] = [addr]
        return patient
