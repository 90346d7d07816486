"""Comparison levels: how two Patients' features agree, field by field, and the hard vetoes.

``compare(a, b)`` returns ``{field: level}`` (a field missing on either side is left out: it says
nothing) and the vetoes. Levels, from strongest agreement down:

========  ==================================================================================
id        exact | typo (one digit off or two transposed: edit distance 1, OSA) | different
name      exact | pinyin (same reading: homophones) | swap (given name characters swapped) |
          similar (Jaro-Winkler of the pinyin >= 0.9) | different
birth     exact | swapped (day and month) | year (same year only) | different
sex       same | different
phone     same (any number in common) | different
dist      same (district code; without codes on both sides, the district name) | different
hc        exact | different (health card)
========  ==================================================================================

An identifier of a system configured ``unique`` (``hub.mpi.identifiers``) weighs as the ID number
does when the numbers are not both there: a shared value is ``id`` ``exact``, none shared in a system
both carry is ``different``.

Vetoes (never linked, whatever the score): ``id_conflict`` (two different valid, consistent resident
ID numbers), ``identifier_conflict`` (no value in common in a unique system both carry) and
``sex_conflict``.
"""

from __future__ import annotations

from typing import Any

from rapidfuzz.distance import OSA, JaroWinkler

from hub.mpi.identifiers import compare_unique

FIELDS = ("id", "name", "birth", "sex", "phone", "dist", "hc")
LEVELS = {
    "id": ("exact", "typo", "different"),
    "name": ("exact", "pinyin", "swap", "similar", "different"),
    "birth": ("exact", "swapped", "year", "different"),
    "sex": ("same", "different"),
    "phone": ("same", "different"),
    "dist": ("same", "different"),
    "hc": ("exact", "different"),
}
_ID_USABLE = ("valid", "invalid")
SIMILAR = 0.9


def compare_id(a: dict, b: dict) -> str | None:
    if a.get("ids") not in _ID_USABLE or b.get("ids") not in _ID_USABLE:
        return None
    x, y = a["id"], b["id"]
    if x == y:
        return "exact"
    if OSA.distance(x, y, score_cutoff=2) <= 1:
        # two valid numbers one digit apart are two people (twins get neighbouring sequences)
        return "different" if a["ids"] == b["ids"] == "valid" else "typo"
    return "different"


def compare_name(a: dict, b: dict) -> str | None:
    x, y = a.get("name"), b.get("name")
    if not x or not y:
        return None
    if x == y:
        return "exact"
    if a["py"] == b["py"]:
        return "pinyin"
    fx, fy = a.get("fam") or "", b.get("fam") or ""
    gx, gy = x[len(fx):], y[len(fy):]
    if fx == fy and len(gx) > 1 and sorted(gx) == sorted(gy):
        return "swap"
    if JaroWinkler.similarity(a["py"], b["py"]) >= SIMILAR:
        return "similar"
    return "different"


def compare_birth(x: str | None, y: str | None) -> str | None:
    if not x or not y:
        return None
    if x == y:
        return "exact"
    if x[:4] == y[:4]:
        if x[5:7] == y[8:10] and x[8:10] == y[5:7]:
            return "swapped"
        return "year"
    return "different"


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """({field: level} for the fields both sides have, [vetoes])."""
    levels: dict[str, str] = {}
    vetoes: list[str] = []
    lv = compare_id(a, b)
    if lv is not None:
        levels["id"] = lv
        if lv == "different" and a["ids"] == b["ids"] == "valid":
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
    return levels, vetoes
