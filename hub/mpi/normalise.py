"""Features of a Patient for matching: pure functions of the Patient's JSON dict.

``features(patient)`` returns a small dict (stored as JSON by the candidate index):

====  =====================================================================================
ref   ``Patient/<id>``
id    the resident ID number, 18 characters (15-digit numbers upgraded), or None
ids   its status: ``valid`` | ``invalid`` (check character wrong: a typo) | ``inconsistent``
      (valid, but its sex or birth date contradicts the record: someone else's number, e.g. a
      newborn's parent) | ``placeholder`` | ``malformed`` | None (absent)
hc    health card number
x     identifiers of every other system, ``system|value`` (value NFKC, trimmed, upper-cased;
      at most 8): kept so a change of configuration re-reads them without the Patient
oid   those the index reads (``hub.mpi.identifiers``: systems configured ``unique`` or
      ``identifying``): blocking keys; ``uid``: the ``unique`` ones, hard identifiers
name  full name: trimmed, NFKC, traditional folded to simplified, minority separators removed
fam   surname (simplified); ``py``: pinyin of the full name with the surname's own reading, no
      spaces; ``pyf``: pinyin of the surname
nb    1 when the name is a newborn's placeholder ("<parent>之子/之女", twins "<parent>之大子",
      "之小女", "之一子", "之二女", "男婴", ... whether written as text or split into family and
      given; "<parent>大宝/二宝"; the marks are data/newborn-names.json): the name is left out;
      ``nbo``: its birth-order mark (大, 小, 一, 二…), when it has one
mb    ``multipleBirthInteger`` (the birth order of twins), when given
sfx   a generational suffix (``jr``, ``sr``, ``ii``, ``iii``, ``iv``, ``v``) from ``HumanName.suffix``,
      or Jr / Sr / Junior / Senior ending the family name, given names or text (then left out of
      the name: John Smith Jr. and John Smith are one name), when there is one
sex   ``male`` | ``female`` | None; ``bd``: birth date ``YYYY-MM-DD`` or None
ph    phone numbers, digits only, +86/0086 stripped
dist  GB/T 2260 district code: the hub's administrative-division extension (``valueCode``), an
      address extension coded in GB/T 2260 (``valueCoding`` / ``valueCodeableConcept``), or a
      six-digit code written in ``address.district`` or ``address.text``
dn    the district's name as written in ``address.district`` (simplified, no spaces; a code there
      is ``dist``, not a name), or None
addr  the home address's lines (else its text), folded like names, at most 100 characters; an
      address that places no one (a filler, 不详, or administrative areas only, 郑州市中原区:
      ``nobodys_address``) is none;
      ``pc``: its postal code
nw    a Latin-script name's words (surname first, lower-case, single spaces) when one is a lone letter or
      Roman numeral (a middle initial, a newborn's Baby A or Twin B), else left out
aw    a Latin-script address's words (lower-case, in order, single spaces), else None: compared
      as word sets, since clerks write a street and a locality in either order or leave one out
city  the address's city or locality (``address.city``, folded like names), or None
====  =====================================================================================
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

from hub.mpi import identifiers
from terminology import resident_id

DATA = Path(__file__).with_name("data")
RESIDENT_ID = "urn:oid:2.16.156.10011.1.3"
HEALTH_CARD = "urn:oid:2.16.156.10011.1.19"
DIVISION_EXTENSION = "https://fhir-region-hub.example/StructureDefinition/administrative-division"
DIVISION_SYSTEMS = ("https://fhir-region-hub.example/CodeSystem/gb-t-2260",)  # GB/T 2260 (terminology/data)
MAX_TEXT = 200  # longer names, numbers or addresses are cut (hostile input stays cheap)

# separators inside minority names (维吾尔族, 藏族 ...) and the stray spaces of Latin input
_SEPARATORS = re.compile(r"[·•.．・‧∙⋅\s\-_]+")
# newborn placeholder names (data/newborn-names.json): "<parent>之子", twins and further siblings
# "<parent>之大子/之小女/之一子/之二女/之长子/之次女", "<parent>之子一", "<parent>男婴/女婴/婴儿" with a
# birth order after it, and "<parent>大宝/二宝"
_NEWBORN = json.loads((DATA / "newborn-names.json").read_text(encoding="utf-8"))
_ORDER: str = _NEWBORN["orders"]
_O = f"[{re.escape(_ORDER)}]"
_NEWBORN_MARK = re.compile(
    rf"^(?:{'|'.join(map(re.escape, _NEWBORN['alone']))}){_O}?$"
    rf"|之{_O}?(?:{'|'.join(map(re.escape, _NEWBORN['children']))}){_O}?$"
    rf"|(?:{'|'.join(map(re.escape, _NEWBORN['infants']))}){_O}?$"
    rf"|(?P<ordinal>(?<=..){_O}(?:{'|'.join(map(re.escape, _NEWBORN['ordinal']))}))$")
# Latin-script placeholders: Baby Boy, Li Baby Girl, BabyA, Twin 2, Baby of Li Fang (the data's "latin")
_LATIN_ORDER = r"[a-z]|\d{1,2}|ii|iii|iv|vi"
_LATIN_WORD = re.compile(
    rf"(?:{'|'.join(map(re.escape, _NEWBORN['latin']['words']))})"
    rf"(?:{'|'.join(map(re.escape, _NEWBORN['latin']['with']))})?(?P<order>{_LATIN_ORDER})?")
_LATIN_WITH = frozenset(_NEWBORN["latin"]["with"])
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
_LONE_MARK = re.compile(r"[a-z]|ii|iii|iv|vi")  # a lone letter or Roman numeral: an initial, a birth order
_DISTRICT = re.compile(r"^\d{6}$")
# generational suffixes: a father and a son share a name and a home; the suffix tells them apart
_GENERATIONS = {"jr": "jr", "junior": "jr", "sr": "sr", "senior": "sr", "ii": "ii", "2nd": "ii",
                "iii": "iii", "3rd": "iii", "iv": "iv", "4th": "iv", "v": "v", "5th": "v"}
# written at the end of a name, only the unambiguous words: a trailing II is a newborn's order too
# (Baby Boy II), which the name keeps
_TRAILING_GENERATION = re.compile(r"(?<=[a-z])[\s,.]+(jr|junior|sr|senior)[\s.]*$", re.IGNORECASE)
_GENERATION_WORD = re.compile(r"\s*(jr|junior|sr|senior)[\s.]*", re.IGNORECASE)


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    surnames = json.loads((DATA / "surnames.json").read_text(encoding="utf-8"))
    return surnames["compound"], surnames["single"]


@lru_cache(maxsize=1)
def _t2s():
    import opencc  # opencc-python-reimplemented: pure Python, dictionaries of OpenCC

    return opencc.OpenCC("t2s")


@lru_cache(maxsize=65536)
def simplify(text: str) -> str:
    """Trimmed, NFKC-normalised (full-width letters and digits to ASCII), traditional characters
    folded to simplified, Latin letters lower-cased."""
    text = unicodedata.normalize("NFKC", text[:MAX_TEXT]).strip()
    return _t2s().convert(text).lower() if text else ""


def clean_name(text: str) -> str:
    """A name for comparison: simplified, minority-name separators and spaces removed."""
    return _SEPARATORS.sub("", simplify(text))


@lru_cache(maxsize=65536)
def _syllables(text: str) -> tuple[str, ...]:
    from pypinyin import Style, lazy_pinyin

    return tuple(s.strip() for s in lazy_pinyin(text, style=Style.NORMAL, errors="default") if s.strip())


def split_surname(name: str) -> tuple[str, str]:
    """(surname, given name) of a full name without separators: a compound surname when one starts
    it, else the first character."""
    compound, _ = _tables()
    if len(name) > 2 and name[:2] in compound:
        return name[:2], name[2:]
    return name[:1], name[1:]


def surname_pinyin(family: str) -> str:
    """Pinyin of a surname with the readings surnames take (单 shan, 曾 zeng, 解 xie, 区 ou ...)."""
    compound, single = _tables()
    if family in compound:
        return compound[family].replace(" ", "")
    if len(family) == 1 and family in single:
        return single[family]
    if len(family) > 2 and family[:2] in compound:  # a compound surname followed by more
        return compound[family[:2]].replace(" ", "") + surname_pinyin(family[2:])
    if family[:1] in single:
        return single[family[:1]] + "".join(_syllables(family[1:]))
    return "".join(_syllables(family))


def name_pinyin(family: str, given: str) -> str:
    return surname_pinyin(family) + "".join(_syllables(given))


def phone_digits(value: str) -> str | None:
    """Digits of a phone number, country code +86 / 0086 dropped; None when fewer than 7 remain."""
    digits = "".join(c for c in unicodedata.normalize("NFKC", value[:MAX_TEXT]) if c.isdigit())
    if value.strip().startswith("+86") or digits.startswith("0086"):
        digits = digits[2:] if digits.startswith("86") else digits[4:]
    elif len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    return digits if 7 <= len(digits) <= 15 and not _fake_phone(digits) else None


# numbers registration desks type when a patient gives none: an operator's service line, the
# keyboard's run of digits; as matching evidence they linked strangers of one common name
_FAKE_PHONES = frozenset({"13800138000", "10086", "10010", "10000", "12345", "95588"})


def _fake_phone(digits: str) -> bool:
    """A filler phone: one digit repeated after a prefix of up to three (13800000000), a run of
    ascending or descending digits, the whole number (1234567) or eight or more after such a
    prefix (12345678901, 13876543210), or a listed service number. A landline's area code is
    three or four digits (010, 0371): after a four-digit one, the subscriber's seven or eight
    digits repeated or running are a filler too (0371-88888888, 0371-1234567)."""
    if digits in _FAKE_PHONES:
        return True
    for start in range(5 if digits.startswith("0") else 4):
        rest = digits[start:]
        if len(rest) >= 7 and len(set(rest)) == 1:
            return True
        if len(rest) >= (7 if start in (0, 4) else 8) and \
                any(all((int(rest[i + 1]) - int(rest[i])) % 10 == step for i in range(len(rest) - 1))
                    for step in (1, 9)):
            return True
    return False


# what clerks type between a resident ID number's parts (410102-19850615-1234, 410102 1985...)
_ID_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212_./]+")


def resident_id_features(value: str, sex: str | None, birth: str | None) -> tuple[str | None, str | None]:
    """(18-character number or None, status) of a resident ID number as recorded. Separators
    between its parts are left out only when the number then passes its check (GB 11643): a
    number that fails it with separators in it is no key (``malformed``), not a typo of one."""
    s = unicodedata.normalize("NFKC", value[:MAX_TEXT]).strip().upper().replace(" ", "")
    joined = _ID_SEPARATORS.sub("", s)
    if joined != s and joined:
        idno, status = _resident_id_status(joined, sex, birth)
        if status in ("valid", "inconsistent"):
            return idno, status
    return _resident_id_status(s, sex, birth)


def _resident_id_status(s: str, sex: str | None, birth: str | None) -> tuple[str | None, str | None]:
    if not s:
        return None, None
    if resident_id.is_placeholder(s):
        return None, "placeholder"
    if len(s) == 15 and s.isdigit():
        try:
            s = resident_id.upgrade_15_to_18(s)
        except ValueError:
            return None, "malformed"
    if len(s) != 18 or not s[:17].isdigit() or not (s[17].isdigit() or s[17] == "X"):
        return None, "malformed"
    if not resident_id.is_valid(s):
        return s, "invalid"
    id_birth = resident_id.birth_date(s)
    id_sex = resident_id.sex(s)
    if sex and id_sex != sex:
        return s, "inconsistent"
    if birth and id_birth is not None:
        iso = id_birth.isoformat()
        if iso != birth and not (iso[:4] == birth[:4] and iso[5:7] == birth[8:10] and iso[8:10] == birth[5:7]):
            return s, "inconsistent"
    return s, "valid"


def _items(value: Any) -> list:
    """The elements of a FHIR array (anything else: none)."""
    return value if isinstance(value, list) else []


def _official_name(patient: dict) -> dict | None:
    names = [n for n in _items(patient.get("name")) if isinstance(n, dict)]
    if not names:
        return None
    return next((n for n in names if n.get("use") == "official"), None) or next(
        (n for n in names if n.get("use") not in ("old", "anonymous", "nickname")), names[0])


def _name_parts(patient: dict) -> tuple[str, str, str | None, str]:
    """(surname, given, newborn placeholder's birth-order mark, the parent it names) of the
    patient's official name; the mark is None for a name that is no placeholder, "" for one
    without an order (之女); the parent is "" but in a placeholder that names one (张丽之女)."""
    n = _official_name(patient)
    if n is None:
        return "", "", None, ""
    family: str = n["family"] if isinstance(n.get("family"), str) else ""
    given = "".join(_given_names(n))[:MAX_TEXT]
    text: str = n["text"] if isinstance(n.get("text"), str) else ""
    family, text = _TRAILING_GENERATION.sub("", family[:MAX_TEXT]), _TRAILING_GENERATION.sub("", text[:MAX_TEXT])
    family, given = clean_name(family), clean_name(given)
    if not family and not given and text:
        family, given = split_surname(clean_name(text))
    elif not family and given and not given.isascii():  # a Latin given name alone is no surname
        family, given = split_surname(given)
    mark = _NEWBORN_MARK.search(family + given)  # it may sit in the given name: 王 + 丽之子
    if mark and mark.group("ordinal") and (family + given)[:mark.start()] in _tables()[0]:
        mark = None  # 欧阳大宝: a compound surname and a given name, no parent's name
    if mark:
        return "", "", "".join(ch for ch in mark.group(0) if ch in _ORDER), \
            (family + given)[:mark.start()]
    # a Latin placeholder keeps its name (the surname is the family's; Baby A and Baby B compare
    # as two names): only marked as a newborn's, with its birth order
    return family, given, _latin_newborn(patient), ""


def _latin_newborn(patient: dict) -> str | None:
    """The birth order ("" for none) of an official name that is a Latin-script newborn
    placeholder (Baby Boy, "Li, Baby Girl A", BabyB, Twin 2, Baby of Li Fang: data/newborn-names.json,
    any case, any punctuation), else None."""
    n = _official_name(patient)
    if n is None:
        return None
    parts = [n.get("family")] + _items(n.get("given")) if n.get("family") or n.get("given") \
        else [n.get("text")]
    words = [w for p in parts if isinstance(p, str) for w in re.findall(r"[^\W_]+", simplify(p))][:12]
    if "of" in words[1:]:
        words = words[:words.index("of", 1)]  # Baby of Li Fang: the parent's name says no more
    order = ""
    if len(words) > 1 and re.fullmatch(_LATIN_ORDER, words[-1]):
        order, words = words[-1], words[:-1]
    found, other = False, 0
    for w in words:
        m = _LATIN_WORD.fullmatch(w)
        if m:
            found, order = True, m.group("order") or order
        elif w not in _LATIN_WITH:
            other += 1
    return order if found and other <= 1 else None


def _given_names(n: dict) -> list[str]:
    """The given names, a generational suffix written among them left out (John Jr., or Jr. as a
    given name after the first: a lone Junior is a given name in some countries)."""
    given = [g[:MAX_TEXT] for g in _items(n.get("given")) if isinstance(g, str)]
    return [g for i, g in enumerate(_TRAILING_GENERATION.sub("", g) for g in given)
            if not (i and _GENERATION_WORD.fullmatch(g))]


def _generation(patient: dict) -> str | None:
    """The generational suffix of the official name (``jr``, ``sr``, ``ii`` ...), or None: from
    ``HumanName.suffix``, else Jr / Sr / Junior / Senior ending its family name, given names or
    text (John Smith Jr.)."""
    n = _official_name(patient)
    if n is None:
        return None
    for x in _items(n.get("suffix")):
        if isinstance(x, str):
            word = simplify(x).strip(" .,")
            if word in _GENERATIONS:
                return _GENERATIONS[word]
    given = [g for g in _items(n.get("given")) if isinstance(g, str)]
    if len(given) > 1:
        m = _GENERATION_WORD.fullmatch(given[-1][:MAX_TEXT])
        if m:
            return _GENERATIONS[m.group(1).lower()]
    for x in (n.get("family"), given[-1] if given else None, n.get("text")):
        m = _TRAILING_GENERATION.search(x[:MAX_TEXT]) if isinstance(x, str) else None
        if m:
            return _GENERATIONS[m.group(1).lower()]
    return None


def _marked_words(patient: dict) -> str | None:
    """The words of the official Latin-script name (surname first, as ``name`` joins them) when one
    of them is a lone letter or Roman numeral, else None: the spaces ``name`` drops tell Baby A from
    Babya."""
    n = _official_name(patient)
    if n is None:
        return None
    parts = [n.get("family")] + _items(n.get("given")) if n.get("family") or n.get("given") \
        else [n.get("text")]
    words = [w for p in parts if isinstance(p, str) for w in _SEPARATORS.split(simplify(p)) if w]
    return " ".join(words)[:MAX_TEXT] if any(_LONE_MARK.fullmatch(w) for w in words) else None


def features(patient: dict, roles: identifiers.Roles = identifiers.DEFAULT) -> dict[str, Any]:
    """The matching features of a Patient dict (never raises on odd input: odd parts are left out);
    ``roles``: what each identifier system is (the shipped table unless the hub configured more)."""
    f: dict[str, Any] = {"ref": f"Patient/{patient.get('id')}"}
    sex = patient.get("gender")
    f["sex"] = sex if sex in ("male", "female") else None
    bd = patient.get("birthDate")
    m = _DATE.match(bd) if isinstance(bd, str) else None
    f["bd"] = m.group(0) if m else None
    f["id"] = f["ids"] = f["hc"] = None
    others: list[str] = []
    for ident in _items(patient.get("identifier")):
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if not isinstance(value, str) or not isinstance(system, str):
            continue
        if system == RESIDENT_ID:
            idno, status = resident_id_features(value, f["sex"], f["bd"])
            if f["ids"] not in ("valid",):  # a valid number wins over a second, worse one
                f["id"], f["ids"] = idno, status
        elif system == HEALTH_CARD:
            # a filler card number (无, -, 000000) is nobody's: two namesakes' records "shared" one
            f["hc"] = identifiers.value_key(value)
        elif len(others) < identifiers.MAX_OTHER and not identifiers.builtin(system):
            v = identifiers.value_key(value)
            if v:
                others.append(f"{system[:MAX_TEXT]}|{v}")
    f["x"] = sorted(set(others))
    f["uid"], f["oid"] = identifiers.split(f["x"], roles)
    family, given, order, parent = _name_parts(patient)
    f["nb"] = 0 if order is None else 1
    if order:
        f["nbo"] = order  # twins: 之大女 and 之小女 are two children
    if parent:
        f["nbp"] = parent  # 张丽之女: never 张丽 herself
    mb = patient.get("multipleBirthInteger")
    if isinstance(mb, int) and not isinstance(mb, bool) and 0 < mb < 100:
        f["mb"] = mb  # the birth order of twins: 1 and 2 are two children
    f["fam"] = family or None
    f["name"] = (family + given) or None
    sfx = _generation(patient) if f["name"] else None
    if sfx:
        f["sfx"] = sfx  # John Smith Jr. and John Smith Sr.: two people of one name
    words = _marked_words(patient) if f["name"] and f["name"].isascii() else None
    if words:
        f["nw"] = words
    f["pyf"] = surname_pinyin(family) if family else None
    f["py"] = name_pinyin(family, given) if f["name"] else None
    phones = set()
    for t in _items(patient.get("telecom")):
        if isinstance(t, dict) and t.get("system") in ("phone", "sms", None) and isinstance(t.get("value"), str):
            p = phone_digits(t["value"])
            if p:
                phones.add(p)
    f["ph"] = sorted(phones)[:5]
    # an institution's own merge (an HL7 v2 A40, a v3 merge: Patient.link replaced-by and
    # replaces) says its two records are one person; the matcher follows it within the
    # institution that made it
    org = patient.get("managingOrganization")
    f["org"] = org.get("reference") if isinstance(org, dict) and \
        isinstance(org.get("reference"), str) else None
    f["merged"] = sorted({x["other"]["reference"] for x in _items(patient.get("link"))
                          if isinstance(x, dict) and x.get("type") in ("replaced-by", "replaces")
                          and isinstance(x.get("other"), dict)
                          and isinstance(x["other"].get("reference"), str)
                          and x["other"]["reference"].startswith("Patient/")})[:5]
    f["dist"] = _district(patient)
    f["dn"] = _district_name(patient)
    f["addr"], f["pc"], f["aw"], f["city"] = _address(patient)
    return f


_WORDS = re.compile(r"[a-z0-9]+")
_ADDRESS = json.loads((DATA / "address-fillers.json").read_text(encoding="utf-8"))
_UNIT_MAX = 20  # the longest administrative name (双江拉祜族佤族布朗族傣族自治县) with room


def _bare(text: str) -> str:
    """Text without punctuation, symbols, spaces and control characters."""
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PSZC")


@lru_cache(maxsize=1)
def _address_words() -> tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]:
    """(fillers and area words, as :func:`_bare` leaves them; administrative suffixes; endings
    below a county) of data/address-fillers.json."""
    words = frozenset(w for v in (*_ADDRESS["fillers"], *_ADDRESS["areas"]) if (w := _bare(simplify(v))))
    return words, tuple(_ADDRESS["suffixes"]), tuple(_ADDRESS["below_county"])


def _area_unit(unit: str, suffixes: tuple[str, ...], below: tuple[str, ...]) -> bool:
    """An administrative area's name down to a county (河南省, 郑州市, 中原区), or a six-digit code."""
    if len(unit) == 6 and unit.isdigit():
        return True
    return len(unit) >= 2 and unit.endswith(suffixes) and not unit.endswith(below) and \
        all("\u4e00" <= c <= "\u9fff" for c in unit)


@lru_cache(maxsize=16384)
def nobodys_address(text: str) -> bool:
    """Whether an address (as folded for comparison) places no one: all of it fillers (不详, 无,
    地址不详, N/A, repeated or joined), area words and administrative areas down to the county
    (河南省郑州市中原区, 郑州市): no street, road, village, building or number of its own, so two
    strangers share it as readily as one person. The words are data/address-fillers.json."""
    s = _bare(text)
    words, suffixes, below = _address_words()
    ends = [False] * (len(s) + 1)  # ends[i]: s[:i] is made of such parts (linear, never regex backtracking)
    ends[0] = True
    for i in range(len(s)):
        if ends[i]:
            for j in range(i + 1, min(len(s), i + _UNIT_MAX) + 1):
                if not ends[j] and (s[i:j] in words or _area_unit(s[i:j], suffixes, below)):
                    ends[j] = True
    return ends[len(s)]


def _address(patient: dict) -> tuple[str | None, str | None, str | None, str | None]:
    """(address lines or text, postal code, Latin-script words, city) of the first address that
    has lines, text or a postal code."""
    for a in _items(patient.get("address")):
        if not isinstance(a, dict):
            continue
        lines = [x for x in _items(a.get("line")) if isinstance(x, str)]
        # the lines, else the text; either one only when it places someone (不详, 郑州市: read as
        # no address at all)
        text, addr = "", ""
        for t in (" ".join(lines), a["text"] if isinstance(a.get("text"), str) else ""):
            folded = clean_name(t)[:100]
            if folded and not nobodys_address(folded):
                text, addr = t, folded
                break
        pc: str = a["postalCode"] if isinstance(a.get("postalCode"), str) else ""
        pc = clean_name(pc)[:20]
        city = clean_name(a["city"])[:40] if isinstance(a.get("city"), str) else ""
        if addr or pc:
            words = None
            if addr and addr.isascii():
                words = " ".join(_WORDS.findall(simplify(text).replace("'", "")))[:100] or None
            return addr or None, pc or None, words, city or None
    return None, None, None, None


def _division_code(e: dict) -> str | None:
    """The GB/T 2260 code an address extension carries, or None."""
    if e.get("url") == DIVISION_EXTENSION:
        code = e.get("valueCode")
        return code if isinstance(code, str) and _DISTRICT.match(code) else None
    codings = []
    if isinstance(e.get("valueCoding"), dict):
        codings.append(e["valueCoding"])
    if isinstance(e.get("valueCodeableConcept"), dict):
        codings += _items(e["valueCodeableConcept"].get("coding"))
    for c in codings:
        if isinstance(c, dict) and c.get("system") in DIVISION_SYSTEMS:
            code = c.get("code")
            if isinstance(code, str) and _DISTRICT.match(code):
                return code
    return None


def _addresses(patient: dict) -> list[dict]:
    """Addresses, current ones first (an old address says less about where the person is)."""
    addresses = [a for a in _items(patient.get("address")) if isinstance(a, dict)]
    return sorted(addresses, key=lambda a: a.get("use") == "old")


def _district(patient: dict) -> str | None:
    for a in _addresses(patient):
        for e in _items(a.get("extension")):
            if isinstance(e, dict):
                code = _division_code(e)
                if code:
                    return code
        # a division code written into the address (a postal code is six digits too: not read)
        for key in ("district", "text"):
            v = a.get(key)
            if isinstance(v, str):
                m = re.search(r"(?<!\d)([1-8]\d{5})(?!\d)", v[:MAX_TEXT])
                if m:
                    return m.group(1)
    return None


def _district_name(patient: dict) -> str | None:
    for a in _addresses(patient):
        v = a.get("district")
        if isinstance(v, str):
            name = clean_name(re.sub(r"[\d()（）]+", "", v))
            if name:
                return name
    return None
