"""Comparison levels: how two Patients' features agree, field by field, and the hard vetoes.

``compare(a, b)`` returns ``{field: level}`` (a field missing on either side is left out: it says
nothing) and the vetoes. Levels, from strongest agreement down:

========  ==================================================================================
id        exact | typo (one digit off or two transposed: edit distance 1, OSA) | different
name      exact | pinyin (same reading: homophones) | swap (given name characters swapped, or a
          surname and given name in each other's place) | phonetic (Latin script:
          surname and given name each sound alike, Metaphone or NYSIIS) | edit (Latin script: each
          part a typo of the other's, Jaro-Winkler >= 0.88 or one letter off in four or more) | partial (a character of a Chinese
          given name dropped; Latin script: one part missing, the other the same or a typo of it) | given (Latin
          script: the given names alike, the surnames not: a name taken at marriage) | family
          (Latin script: the surnames alike, the given names not) | similar (Jaro-Winkler of the pinyin >= 0.9;
          ``given_apart`` tells two given names in characters apart within it) | different
          (also two names both carrying numbers, other ones: Baby 1 and Baby 2; and two Latin names both
          carrying birth-order letters, other ones: Baby A and Baby B, Twin A and Twin B, John A and John B)
birth     exact | swapped (day and month) | lunar (one is the other's date in the Chinese lunar
          calendar, as many registrations record it) | year1 (same day and month, the year one
          off) | typo (one digit mistyped or two transposed, also across a separator) | year (same year only) | different
sex       same | different
phone     same (any number in common) | different
dist      same (district code; without codes on both sides, the district name) | different
hc        exact | different (health card)
addr      exact (address lines) | similar (the same numbers, Jaro-Winkler >= 0.9: a typo in a
          name; Latin script: the same numbers and the words of one nearly all among the other's,
          in any order: a locality left out or put first) | street (Latin script: those words
          alike, the house number another or missing) | different
pc        same (postal code) | typo (one digit off or two transposed) | different
city      same (city or locality) | similar (Latin script: two letters off at most) | different
========  ==================================================================================

A resident ID number whose birth date the record contradicts only as a mistyped or lunar birth date
does (``NEAR_BIRTH``) is still compared: the number is right, the date beside it is not.

An identifier of a system configured ``unique`` (``hub.mpi.identifiers``) weighs as the ID number
does when the numbers are not both there: a shared value is ``id`` ``exact``, none shared in a system
both carry is ``different``.

Vetoes (never linked, whatever the score): ``id_conflict`` (two different valid, consistent resident
ID numbers), ``identifier_conflict`` (no value in common in a unique system both carry) and
``sex_conflict``.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, JaroWinkler

from hub.mpi.identifiers import compare_unique
from terminology import resident_id

FIELDS = ("id", "name", "birth", "sex", "phone", "dist", "hc", "addr", "pc", "city")
LEVELS = {
    "id": ("exact", "typo", "different"),
    "name": ("exact", "pinyin", "swap", "phonetic", "edit", "partial", "given", "family", "similar",
             "different"),
    "birth": ("exact", "swapped", "lunar", "year1", "typo", "year", "different"),
    "sex": ("same", "different"),
    "phone": ("same", "different"),
    "dist": ("same", "different"),
    "hc": ("exact", "different"),
    "addr": ("exact", "similar", "street", "different"),
    "pc": ("same", "typo", "different"),
    "city": ("same", "similar", "different"),
}
_ID_USABLE = ("valid", "invalid")
NEAR_BIRTH = ("swapped", "lunar", "year1")  # a birth date mistyped or recorded in the lunar calendar
SIMILAR = 0.9
LATIN_EDIT = 0.88
LATIN_WORDS = 90  # rapidfuzz token_set_ratio of two Latin-script addresses' words
_NUMBERS = re.compile(r"\d+")
# a newborn's birth order after the word that stands for its name, spaces gone: babya, twinb, babyboyii
_NEWBORN_ORDER = re.compile(r"(?:baby|twin|triplet|infant|newborn|boy|girl)(i{1,3}|iv|vi|[a-z])$")
_LONE_MARK = re.compile(r"[a-z]|ii|iii|iv|vi")


def id_status(f: dict) -> str | None:
    """The resident ID number's status for comparison and blocking: an ``inconsistent`` number whose
    sex agrees and whose birth date is the record's but for a near slip (``NEAR_BIRTH``) counts as
    ``valid``; someone else's number (a newborn's parent's: decades apart) stays ``inconsistent``."""
    status = f.get("ids")
    if status != "inconsistent" or not f.get("id") or not f.get("bd"):
        return status
    idno = f["id"]
    if f.get("sex") and resident_id.sex(idno) != f["sex"]:
        return status
    id_birth = f"{idno[6:10]}-{idno[10:12]}-{idno[12:14]}"
    return "valid" if compare_birth(f["bd"], id_birth) in NEAR_BIRTH else status


def compare_id(a: dict, b: dict) -> str | None:
    sa, sb = id_status(a), id_status(b)
    if sa not in _ID_USABLE or sb not in _ID_USABLE:
        return None
    x, y = a["id"], b["id"]
    if x == y:
        return "exact"
    if OSA.distance(x, y, score_cutoff=2) <= 1:
        # two valid numbers one digit apart are two people (twins get neighbouring sequences)
        return "different" if sa == sb == "valid" else "typo"
    return "different"


def numbered_apart(x: str, y: str) -> bool:
    """Two names that both carry numbers, other ones (Baby 1 and Baby 2, birth orders, test
    records): another number is another person, though the sounds and the letters, which the
    digits are no part of, agree."""
    nx, ny = _NUMBERS.findall(x), _NUMBERS.findall(y)
    return bool(nx and ny) and nx != ny


def lettered_apart(a: dict, b: dict) -> bool:
    """Two Latin names that both carry birth-order letters, other ones: Baby A and Baby B (a letter
    after a newborn's word: Twin, Infant, Baby Boy), or a lone letter or Roman numeral in the same
    place among as many words (``nw``). Another letter is another child, though the names sound
    alike and are one letter apart. Two middle initials that disagree (John A and John B Smith)
    are different names too: two people more likely than one, and never merging two people
    outweighs linking one person twice; a name with an initial and one without (John A Smith,
    John Smith) is compared as before."""
    x, y = a.get("name") or "", b.get("name") or ""
    mx, my = _NEWBORN_ORDER.search(x), _NEWBORN_ORDER.search(y)
    if mx and my and mx.group(1) != my.group(1):
        return True
    wx, wy = (a.get("nw") or "").split(), (b.get("nw") or "").split()
    if not wx or len(wx) != len(wy):
        return False
    marks = [i for i, w in enumerate(wx) if _LONE_MARK.fullmatch(w)]
    return marks == [i for i, w in enumerate(wy) if _LONE_MARK.fullmatch(w)] and \
        any(wx[i] != wy[i] for i in marks)


def compare_name(a: dict, b: dict) -> str | None:
    x, y = a.get("name"), b.get("name")
    if not x or not y:
        return None
    if x == y:
        return "exact"
    if numbered_apart(x, y) or (x.isascii() and y.isascii() and lettered_apart(a, b)):
        return "different"
    if a["py"] == b["py"]:
        return "pinyin"
    fx, fy = a.get("fam") or "", b.get("fam") or ""
    gx, gy = x[len(fx):], y[len(fy):]
    if fx == fy and len(gx) > 1 and sorted(gx) == sorted(gy):
        return "swap"
    if not x.isascii() and fx and gx and (fx, gx) == (gy, fy):
        return "swap"  # surname and given name in each other's place (燕 李 for 李燕)
    if fx == fy and not x.isascii() and abs(len(gx) - len(gy)) == 1 and min(len(gx), len(gy)) >= 1 \
            and (gx in gy or gy in gx):
        return "partial"
    if x.isascii() and y.isascii():
        latin = _compare_latin((fx, gx), (fy, gy))
        if latin:
            return latin
    if JaroWinkler.similarity(a["py"], b["py"]) >= SIMILAR:
        return "similar"
    return "different"


@lru_cache(maxsize=65536)
def _readings(char: str) -> frozenset[str]:
    """Every toneless reading of a character (乐: le, yue): one shared is a homophone."""
    from pypinyin import Style, pinyin

    return frozenset(pinyin(char, style=Style.NORMAL, heteronym=True, errors="default")[0])


def _sound_alike(x: str, y: str) -> bool:
    return x == y or bool(_readings(x) & _readings(y))


def given_apart(a: dict, b: dict) -> bool:
    """Two names in Chinese characters whose given names differ outright: a character of one with
    no reading in common with the other's in its place (建国 and 建军, 三 and 四), or, a character
    dropped, the shorter not among the longer's by sound. A homophone (子涵, 梓涵), a swap (明伟,
    伟明) or a dropped character (浩平, 平) is the same given name mistyped; a shared surname or
    character, however much of the pinyin it makes, is no likeness of the given names."""
    x, y = a.get("name") or "", b.get("name") or ""
    if not _cjk(x) or not _cjk(y):
        return False
    gx, gy = x[len(a.get("fam") or ""):], y[len(b.get("fam") or ""):]
    if not gx or not gy:
        return False
    if len(gx) == len(gy):
        return not (all(map(_sound_alike, gx, gy)) or all(map(_sound_alike, gx, reversed(gy))))
    short, long_ = sorted((gx, gy), key=len)
    if len(long_) - len(short) != 1:
        return False
    return not any(all(map(_sound_alike, short, long_[:k] + long_[k + 1:])) for k in range(len(long_)))


def same_given(a: dict, b: dict) -> bool:
    """Whether two given names are one given name mistyped, as far as can be told: in characters,
    not ``given_apart``; in characters against pinyin (麦子颖, Mai Zi), the pinyin spelled from
    the characters' readings, swapped, or with a character dropped on either side. Anything else
    (建国 and jianjun, names not read as Chinese) is not shown to be the same."""
    x, y = a.get("name") or "", b.get("name") or ""
    if _cjk(x) and _cjk(y):
        gx, gy = x[len(a.get("fam") or ""):], y[len(b.get("fam") or ""):]
        return bool(gx and gy) and not given_apart(a, b)
    chars, latin = (a, b) if _cjk(x) else (b, a)
    parts = latin_parts(latin)
    if not _cjk(chars.get("name") or "") or not parts:
        return False
    g, spelled = chars["name"][len(chars.get("fam") or ""):], parts[1]
    if not g or not spelled:
        return False
    if _spelled(spelled, g) or _spelled(spelled, g[::-1]):
        return True
    if len(g) > 1 and any(_spelled(spelled, g[:k] + g[k + 1:]) for k in range(len(g))):
        return True  # a character dropped in the pinyin
    # a character dropped in the characters: the pinyin spells them with one syllable more
    for k in range(len(g) + 1):
        for i in range(len(spelled)):
            if _spelled(spelled[:i], g[:k]) and any(
                    _spelled(spelled[j:], g[k:]) for j in range(i + 1, min(i + 6, len(spelled)) + 1)):
                return True
    return False


def _spelled(text: str, chars: str) -> bool:
    """Whether ``text`` is ``chars`` in pinyin, each character by one of its readings (ü as u or v)."""
    if not chars:
        return not text
    return any(text.startswith(r) and _spelled(text[len(r):], chars[1:])
               for r in _latin_readings(chars[0]))


@lru_cache(maxsize=65536)
def _latin_readings(char: str) -> frozenset[str]:
    return frozenset(r for x in _readings(char) for r in (x, x.replace("v", "u").replace("ü", "u"),
                                                          x.replace("ü", "v")) if r.isascii())


def _cjk(name: str) -> bool:
    return bool(name) and all("\u3400" <= c <= "\u9fff" or "\U00020000" <= c <= "\U0003134f" for c in name)


@lru_cache(maxsize=65536)
def solar_of_lunar(date: str) -> str | None:
    """The solar date of ``YYYY-MM-DD`` read as a lunar-calendar date (not a leap month), or None
    when no such lunar date exists (a 30th in a short month, out of the table's range)."""
    from lunardate import LunarDate

    try:
        return LunarDate(int(date[:4]), int(date[5:7]), int(date[8:10])).to_solar_date().isoformat()
    except (ValueError, IndexError, OverflowError):
        return None


def _year1(x: str, y: str) -> bool:
    try:
        return abs(int(x[:4]) - int(y[:4])) == 1 and x[4:] == y[4:]
    except ValueError:
        return False


def latin_parts(f: dict) -> tuple[str, str] | None:
    """(surname, given name) of a Latin-script name (either may be empty), else None."""
    name = f.get("name")
    if not name or not name.isascii():
        return None
    fam = f.get("fam") or ""
    return fam, name[len(fam):]


def count_terms(f: dict) -> list[str]:
    """What the index counts of a Patient for term frequencies: its normalised name, for a
    Latin-script name its given name alone (``given:<name>``), each phone (``ph:<digits>``) and its
    address lines (``ad:<lines>``): no normalised name holds a colon."""
    out: list[str] = []
    name = f.get("name")
    if name:
        out.append(name)
        parts = latin_parts(f)
        if parts and parts[1]:
            out.append(f"given:{parts[1]}")
    out.extend(f"ph:{p}" for p in f.get("ph") or ())
    if f.get("addr"):
        out.append(f"ad:{f['addr']}")
    return out


@lru_cache(maxsize=65536)
def sounds(word: str) -> tuple[str, str]:
    import jellyfish  # Metaphone and NYSIIS: how an English-reading clerk hears a Latin name

    return jellyfish.metaphone(word), jellyfish.nysiis(word)


def _alike(x: str, y: str) -> bool:
    sx, sy = sounds(x), sounds(y)
    return sx[0] == sy[0] or sx[1] == sy[1]


def _typo(x: str, y: str) -> bool:
    """Two Latin name parts a slip apart: Jaro-Winkler >= 0.88, or (a short name, where one
    letter moves Jaro-Winkler most) one letter off or two transposed in four letters or more."""
    return JaroWinkler.similarity(x, y) >= LATIN_EDIT or \
        (min(len(x), len(y)) >= 4 and OSA.distance(x, y, score_cutoff=2) <= 1)


def _compare_latin(a: tuple[str, str], b: tuple[str, str]) -> str | None:
    """The level of two Latin-script (surname, given name) pairs that aren't the same, or None."""
    (fa, ga), (fb, gb) = a, b
    if (fa, ga) == (gb, fb) and fa and ga:
        return "swap"
    if not (fa and ga and fb and gb):  # a part missing on one side: the other the same, or a slip
        have_a, have_b = {p for p in a if p}, {p for p in b if p}
        if len(have_a) + len(have_b) != 3:
            return None
        return "partial" if have_a & have_b or any(
            _typo(p, q) for p in have_a for q in have_b) else None
    for (p, q), (r, t) in (((fa, ga), (fb, gb)), ((fa, ga), (gb, fb))):
        if _alike(p, r) and _alike(q, t):
            return "phonetic"
    for (p, q), (r, t) in (((fa, ga), (fb, gb)), ((fa, ga), (gb, fb))):
        if _typo(p, r) and _typo(q, t):
            return "edit"
    if _alike(ga, gb) or JaroWinkler.similarity(ga, gb) >= LATIN_EDIT:
        return "given"
    if _alike(fa, fb) or JaroWinkler.similarity(fa, fb) >= LATIN_EDIT:
        return "family"
    return None


def compare_birth(x: str | None, y: str | None) -> str | None:
    if not x or not y:
        return None
    if x == y:
        return "exact"
    if x[:4] == y[:4] and x[5:7] == y[8:10] and x[8:10] == y[5:7]:
        return "swapped"
    # a lunar date lies 3 to 8 weeks before its solar one, within a year: cheap test first
    if abs(_ordinal(x) - _ordinal(y)) <= 62 and (solar_of_lunar(x) == y or solar_of_lunar(y) == x):
        return "lunar"
    if _year1(x, y):
        return "year1"
    # on the eight digits: two digits transposed across a separator (1996-01-11 keyed 1990-61-11)
    # are one slip too
    if len(x) == len(y) == 10 and OSA.distance(x.replace("-", ""), y.replace("-", ""),
                                               score_cutoff=2) == 1:
        return "typo"
    if x[:4] == y[:4]:
        return "year"
    return "different"


def _ordinal(date: str) -> int:
    try:
        return dt.date(int(date[:4]), int(date[5:7]), int(date[8:10])).toordinal()
    except ValueError:
        return 0


def _digits(text: str) -> str:
    """The numbers of an address (house, building, room): one digit off is another home."""
    return "".join(c if c.isdigit() else " " for c in text).split().__str__()


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """({field: level} for the fields both sides have, [vetoes])."""
    levels: dict[str, str] = {}
    vetoes: list[str] = []
    lv = compare_id(a, b)
    if lv is not None:
        levels["id"] = lv
        if lv == "different" and id_status(a) == id_status(b) == "valid":
            vetoes.append("id_conflict")
    # identifiers of systems configured unique (hub.mpi.identifiers): hard identifiers too
    agree, conflict = compare_unique(a, b)
    if conflict:
        vetoes.append("identifier_conflict")
    if "id" not in levels and (agree or conflict):
        levels["id"] = "exact" if agree and not conflict else "different"
    lv = compare_name(a, b)
    if lv is not None:
        levels["name"] = lv
    lv = compare_birth(a.get("bd"), b.get("bd"))
    if lv is not None:
        levels["birth"] = lv
    if a.get("sex") and b.get("sex"):
        same = a["sex"] == b["sex"]
        levels["sex"] = "same" if same else "different"
        if not same:
            vetoes.append("sex_conflict")
    if a.get("ph") and b.get("ph"):
        levels["phone"] = "same" if set(a["ph"]) & set(b["ph"]) else "different"
    if a.get("dist") and b.get("dist"):
        levels["dist"] = "same" if a["dist"] == b["dist"] else "different"
    elif a.get("dn") and b.get("dn"):  # no codes on both sides: the district names written
        levels["dist"] = "same" if a["dn"] == b["dn"] else "different"
    if a.get("hc") and b.get("hc"):
        levels["hc"] = "exact" if a["hc"] == b["hc"] else "different"
    x, y = a.get("addr"), b.get("addr")
    if x and y:
        levels["addr"] = compare_address(x, y, a.get("aw"), b.get("aw"))
    x, y = a.get("pc"), b.get("pc")
    if x and y:
        levels["pc"] = ("same" if x == y else "typo" if len(x) == len(y)
                        and OSA.distance(x, y, score_cutoff=2) == 1 else "different")
    if a.get("city") and b.get("city"):
        levels["city"] = compare_city(a["city"], b["city"])
    return levels, vetoes


def compare_address(x: str, y: str, wx: str | None, wy: str | None) -> str:
    """The level of two address lines (folded, no spaces), with their Latin-script words."""
    if x == y:
        return "exact"
    same_numbers = _digits(x) == _digits(y)
    if same_numbers and JaroWinkler.similarity(x, y) >= SIMILAR:
        return "similar"
    if wx and wy:
        words = _latin_words_alike(wx, wy)
        if words:
            return "similar" if same_numbers else "street"
    return "different"


def _latin_words_alike(wx: str, wy: str) -> bool:
    """The words of one address nearly all among the other's (numbers left out), and what they
    share more than a number and a short word such as "street"."""
    ax = " ".join(w for w in wx.split() if not w.isdigit())
    ay = " ".join(w for w in wy.split() if not w.isdigit())
    if not ax or not ay or fuzz.token_set_ratio(ax, ay) < LATIN_WORDS:
        return False
    shared = set(ax.split()) & set(ay.split())
    return sum(map(len, shared)) >= 8


def compare_city(x: str, y: str) -> str:
    if x == y:
        return "same"
    if x.isascii() and y.isascii() and min(len(x), len(y)) >= 5 and \
            OSA.distance(x, y, score_cutoff=3) <= 2:
        return "similar"  # a mistyped locality name
    return "different"
