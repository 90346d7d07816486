"""ICD-10 code format and structure: which block and chapter a code belongs to.

The chapters and blocks are the WHO ICD-10 2019 list shipped as the CodeSystem
``terminology/data/CodeSystem-icd-10-structure.json`` (derived by ``scripts/derive_terminology.py``).

Code format (``valid_format``): a three-character category, a letter and two digits (``I10``, ``U07``);
optionally a dot and one to four characters: the WHO subcategory digit and the national extensions of
GB/T 14396 / 国家临床版 (``J18.9``, ``J18.900``, ``I10.x00``, ``K35.901``); optionally the clinical
version's ``x`` plus three digits (``I10.x00x002``); optionally the dagger ``+`` or asterisk ``*`` of
dual classification. The same pattern as the quality rule ``cda.icd10.format``
(``fhir_mapping/quality/rules/20-codes.yaml``); the tests hold the two together.

Pure functions; the structure is read once from the package data.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["valid_format", "category", "block_of", "chapter_of", "blocks_of", "Group", "groups"]

FORMAT = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Za-z]{1,4}(x[0-9]{3})?)?[+*]?$")
STRUCTURE_FILE = "CodeSystem-icd-10-structure.json"


@dataclass(frozen=True, slots=True)
class Group:
    """A chapter (code ``I`` … ``XXII``) or a block (code ``A00-A09``) and its category range."""

    code: str
    display: str
    kind: str  # "chapter" | "block"
    start: str
    end: str
    parent: str | None

    def contains(self, cat: str) -> bool:
        return self.start <= cat <= self.end


def valid_format(code: str) -> bool:
    """True if ``code`` has the form of an ICD-10 code (WHO or Chinese clinical extension)."""
    return isinstance(code, str) and FORMAT.fullmatch(code) is not None


def category(code: str) -> str | None:
    """The three-character category of a well-formed code (``J18.900`` -> ``J18``), else None."""
    return code[:3] if valid_format(code) else None


@functools.cache
def groups() -> tuple[Group, ...]:
    """Every chapter and block, in the order of the classification."""
    text = resources.files("terminology.data").joinpath(STRUCTURE_FILE).read_text("utf-8")
    out = []
    for c in json.loads(text)["concept"]:
        props = {p["code"]: p.get("valueCode", p.get("valueString")) for p in c.get("property", ())}
        out.append(Group(c["code"], c["display"], props["kind"], props["start"], props["end"],
                         props.get("parent")))
    return tuple(out)


@functools.cache
def _chapters() -> tuple[list[str], list[Group]]:
    chs = sorted((g for g in groups() if g.kind == "chapter"), key=lambda g: g.start)
    return [g.start for g in chs], chs


def chapter_of(code: str) -> str | None:
    """The chapter (Roman numeral) whose range holds the code's category, or None."""
    cat = category(code)
    if cat is None:
        return None
    starts, chs = _chapters()
    i = bisect.bisect_right(starts, cat) - 1
    return chs[i].code if i >= 0 and chs[i].contains(cat) else None


def blocks_of(code: str) -> list[str]:
    """Every block holding the code's category, outermost first (``C16.9`` -> C00-C97, C00-C75, C15-C26)."""
    cat = category(code)
    if cat is None:
        return []
    return [g.code for g in groups() if g.kind == "block" and g.contains(cat)]


def block_of(code: str) -> str | None:
    """The most specific block holding the code's category (``J18.900`` -> ``J09-J18``), or None
    (malformed code, or a category in no block, such as the gap U50-U81)."""
    found = blocks_of(code)
    return found[-1] if found else None
