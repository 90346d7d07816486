"""Which identifier values may key a resource, for every mapper (CDA, HL7 v3, HL7 v2, tabular).

Hospital systems fill identifier fields they do not have with something: ``-``, ``无``, the template's
own label (``医务人员编码``), all zeros, or a resident ID number that fails its check digit (one number
typed for many people). Keyed on such a value, a dozen documents about different people become one
Patient and every author one Practitioner. The rule: a value for which :func:`key_problem` gives a reason
is never a key and never stored as an identifier value; the mapper keys on the next institution-scoped
identifier and reports a finding named ``<family>.identifier.<reason>``.

The filler list is data (``tables/fillers.yaml``); pure functions, no I/O after import.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

import yaml

from terminology import resident_id

__all__ = ["RESIDENT_ID_OID", "RESIDENT_ID_SYSTEM", "is_filler", "is_filler_text", "is_resident_id_system",
           "key_problem", "resident_id_conflicts", "someone_elses", "usable"]

RESIDENT_ID_OID = "2.16.156.10011.1.3"
RESIDENT_ID_SYSTEM = f"urn:oid:{RESIDENT_ID_OID}"
_RESIDENT_SYSTEMS = frozenset({RESIDENT_ID_OID, RESIDENT_ID_SYSTEM})


@lru_cache(maxsize=1)
def _fillers() -> tuple[frozenset[str], tuple[str, ...]]:
    """(labels, read as :func:`_bare` leaves a value; label suffixes)."""
    data = _table()
    labels = frozenset(_bare(_fold(str(v))) for v in data["labels"])
    suffixes = tuple(str(v) for v in data.get("label_suffixes") or ())
    return labels, suffixes


@lru_cache(maxsize=1)
def _table() -> dict:
    return yaml.safe_load(resources.files("fhir_mapping").joinpath("tables/fillers.yaml").read_text("utf-8"))


@lru_cache(maxsize=1)
def _filler_words() -> tuple[frozenset[str], re.Pattern[str], re.Pattern[str]]:
    """The identifier fillers as :func:`_bare` leaves them ("n/a" is "na", "patient_id" "patientid"),
    a pattern for one of the words (not a number: "123123" may be a number) repeated ("nullnull"),
    and one for Chinese characters that are filler words only ("无不详", "无无")."""
    data = _table()
    return _words_of((*data["values"], *(data.get("identifier_values") or ())))


@lru_cache(maxsize=1)
def _text_words() -> tuple[frozenset[str], re.Pattern[str], re.Pattern[str]]:
    """The same of the clinical-value fillers: the table's ``values`` only."""
    return _words_of(_table()["values"])


def _words_of(values) -> tuple[frozenset[str], re.Pattern[str], re.Pattern[str]]:
    words = frozenset(w for v in values if (w := _bare(_fold(str(v)))))
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True) if not w.isdigit())
    cjk = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True) if _cjk_only(w))
    return words, re.compile(f"({alternatives})\\1+"), re.compile(f"(?:{cjk})+")


def _listed(k: str, vocabulary: tuple[frozenset[str], re.Pattern[str], re.Pattern[str]]) -> bool:
    """Whether ``k`` (a value as :func:`_bare` leaves it) is a word of ``vocabulary``
    (:func:`_words_of`), one of them repeated, Chinese filler words only, or a template's label
    (``医务人员编码``, ``会诊科室名称``): what both the identifier and the clinical rule take as listed."""
    labels, suffixes = _fillers()
    words, repeated, cjk_words = vocabulary
    return (k in words or k in labels or repeated.fullmatch(k) is not None
            or (_cjk_only(k) and (cjk_words.fullmatch(k) is not None
                                  or (len(k) > 2 and k.endswith(suffixes)))))


def _bare(s: str) -> str:
    """``s`` without punctuation, symbols (brackets, quotes, #, <, >), spaces and control characters,
    casefolded: what is left of "#N/A", "<NULL>", "(null)" or "无。" to judge."""
    return "".join(c for c in s if unicodedata.category(c)[0] not in "PSZC").casefold()


# A graded (semi-quantitative) result written in signs, as laboratories report a dipstick or an
# occult blood test: a plus, repeated or bracketed, or ± (+- and -+ as typed). A lone dash stays a
# filler: in a remark or an allergy field it stands for nothing written.
_GRADED = re.compile(r"[(\[（]?(?:\+{1,4}|±|\+-|-\+|∓)[)\]）]?")


# A negative whole number, bracketed or not: a "no value" sentinel of a program (-1, -999), never a
# record number. Dashes as NFKC and _DASH_LETTERS leave them, and the minus sign.
_NEGATIVE = re.compile(r"[(\[]?[-\u2010-\u2015\u2212][0-9]+(?:\.0*)?[)\]]?")


# Letters that look like a dash, typed for one (punctuation dashes are no letters: "punctuation only"
# takes them): the katakana long-vowel mark ー (and its half-width ｰ, folded to it by NFKC) and the
# Hangul vowel ㅡ (folded to its conjoining form ᅳ), which Chinese input methods offer beside the dash
_DASH_LETTERS = str.maketrans(dict.fromkeys("\u30fc\u3161\u1173", "-"))


def _fold(value: str) -> str:
    """A value as the filler rule reads it: NFKC (full-width forms to ASCII), a dash-like letter a
    dash, traditional characters simplified (無 is 无, 不詳 不详)."""
    return _fold_short(value) if len(value) <= 64 else _fold_short.__wrapped__(value)


@lru_cache(maxsize=4096)
def _fold_short(value: str) -> str:
    s = unicodedata.normalize("NFKC", value).translate(_DASH_LETTERS)
    if any(ord(c) > 0x2E7F for c in s):  # CJK: load the t2s dictionaries only when it can matter
        import opencc  # opencc-python-reimplemented: pure Python, dictionaries of OpenCC

        s = _t2s(opencc).convert(s)
    return s


@lru_cache(maxsize=1)
def _t2s(opencc):
    return opencc.OpenCC("t2s")


def _cjk_only(s: str) -> bool:
    return all("\u4e00" <= c <= "\u9fff" or c in "（）()" for c in s)


def is_resident_id_system(system: str | None) -> bool:
    return bool(system) and system in _RESIDENT_SYSTEMS


def is_filler(value: str | None) -> bool:
    """True for a value that fills the field without identifying anyone, whatever the field. It is
    read folded (full-width ``－``, a long-vowel mark ``ー`` for a dash, traditional ``無``: see
    ``_fold``), spaces, punctuation, symbols and brackets left out and case ignored (``#N/A``,
    ``<NULL>``, ``(null)``, ``无。``: :func:`_bare`); what is left is a filler when it is nothing
    (``-``, ``。``), a listed word (``无``, ``不详``, ``null``, ``undefined``, ``NaN``…, the table
    ``fillers.yaml``), such a word repeated (``null null``, ``无无``) or Chinese filler words only
    (``无/不详``), a template label (``医务人员编码``), one character repeated (a digit: four times or
    more: ``0000``, ``xxxx``; "22" is a document serial number seen in the samples), a run of digits
    (``123456``), or a negative number (``-1``, a program's sentinel). Short values are keys: a small
    clinic's record ``1`` or ``A1`` identifies its patient (only ``0`` and ``x`` are listed)."""
    if value is None:
        return False
    s = "".join(_fold(str(value)).split())
    if not s:
        return False
    k = _bare(s)
    if not k:
        return True  # "-", "--", "/", "*", "。", "#"
    if _listed(k, _filler_words()):
        return True  # a listed word, or a field label left in the value: 责任护士工号
    if len(k) > 2 and k[-2:] == "id" and _cjk_only(k[:-2]):
        return True  # 患者ID, 登记人ID: a template's label, which keyed two people as one
    if _NEGATIVE.fullmatch(s):
        return True  # -1, (-1), -999
    if len(k) >= 2 and len(set(k)) == 1 and (not k.isdigit() or k[0] == "0" or len(k) >= 4):
        return True  # "00", "XXXX", "9999", "0-0-0"; but "22" is a document serial number seen in the samples
    return resident_id.is_placeholder(k) and len(k) >= 6


def is_filler_text(value: str | None) -> bool:
    """True for a clinical value (free text or a code's display) that says nothing: a listed filler
    (``无``, ``不详``, ``-``), such a word repeated or Chinese filler words only (``无无``, ``无/不详``),
    a field label left in it, or punctuation. It is read as :func:`is_filler` reads a value (folded,
    without punctuation, symbols, brackets and spaces, in any case: ``无。``, ``（无）``, ``N/A``), with
    the clinical vocabulary: the table's ``values``, not its ``identifier_values`` (``其他``, ``待查``
    say something in a clinical value). Unlike :func:`is_filler`, digits and repeated characters are
    values here ("0" ml, tooth "11", "(0)")."""
    if value is None:
        return False
    s = _fold(str(value)).strip()
    if not s or s.replace(".", "", 1).lstrip("+-").isdigit():
        return False
    if _GRADED.fullmatch(s.replace(" ", "")):
        return False  # "+", "++", "±", "+-": a graded result (a urine protein, an occult blood)
    k = _bare(s)
    if not k:
        return True  # "-", "/", "。"
    if k.isdigit():
        return False  # "(0)", "1,000", "12.5%": a number, never a filler
    return _listed(k, _text_words())


def key_problem(value: str | None, system: str | None = None) -> str | None:
    """Why ``value`` (of identifier ``system``, a URI or bare OID) cannot key a resource, or None when it
    can: ``missing``, ``placeholder`` (a filler), ``check-digit`` (a resident ID number that fails GB 11643:
    length, region, birth date or check character). 15-digit resident numbers are not keys either: upgrade
    them first (``terminology.resident_id.upgrade_15_to_18``)."""
    if value is None or not str(value).strip():
        return "missing"
    if is_filler(value):
        return "placeholder"
    if is_resident_id_system(system) and not resident_id.is_valid(str(value).strip()):
        return "check-digit"
    return None


# A newborn is registered under a parent's number until it has its own: the number is valid, so no
# check catches it, but the birth date it encodes is a generation away from the record's own. Ten
# years leaves room for a mistyped year, a lunar-calendar date or a digit slip, and is still far
# less than the gap between any parent and child.
_GENERATION_YEARS = 10


def someone_elses(value: str | None, birth_date: str | None) -> bool:
    """True when ``value`` is a resident ID number whose encoded birth date lies more than ten years
    from ``birth_date`` (``YYYY-MM-DD`` or ``YYYYMMDD``, at least the year) of the record it is on: it
    is somebody else's number (a parent's, on a newborn's record), so it may not key that record."""
    if not value or not birth_date or not resident_id.is_valid(str(value).strip()):
        return False  # an invalid number is refused for that already (key_problem)
    born = resident_id.birth_date(str(value).strip())
    digits = birth_date.replace("-", "")
    if born is None or len(digits) < 4 or not digits[:4].isdigit():
        return False
    return abs(born.year - int(digits[:4])) > _GENERATION_YEARS


def resident_id_conflicts(values: Iterable[str | None], birth_date: str | None) -> frozenset[str]:
    """Of the valid resident ID numbers one record carries (``values``, any others are ignored), those
    it may not keep, upper-cased. Two different valid numbers are two people's (one typed from the
    wrong card, a relative's a few years apart, which :func:`someone_elses` does not catch): keyed on
    both, the record links to both persons. The number whose encoded birth date is the record's own
    ``birth_date`` (``YYYY-MM-DD`` or ``YYYYMMDD``, as far as it goes) is kept and the others are
    not; when none of them or more than one is, none is kept. One number, however often, is no
    conflict (its birth date is :func:`someone_elses`'s question)."""
    distinct = {v for v in (str(x).strip().upper() for x in values if x) if resident_id.is_valid(v)}
    if len(distinct) < 2:
        return frozenset()
    digits = (birth_date or "").replace("-", "")[:8]
    own = {v for v in distinct
           if len(digits) >= 4 and digits.isdigit() and (born := resident_id.birth_date(v)) is not None
           and born.strftime("%Y%m%d").startswith(digits)}
    return frozenset(distinct - own if len(own) == 1 else distinct)


def usable(value: str | None, system: str | None = None) -> bool:
    return key_problem(value, system) is None
