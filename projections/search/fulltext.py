"""Full-text search: ``_text`` (the narrative) and ``_content`` (every string of the resource).

The search index keeps one FTS5 row per resource of the types configured (``TYPES`` below;
``sp_fts``: rowid = the resource's pk) with its narrative as text (tags stripped) and its
strings. SQLite's ``unicode61`` tokenizer splits on spaces and punctuation, which Chinese does
not have: each CJK character is made a word of its own here, and a search term's characters a
phrase, so ``高血压`` finds the three characters in a row.

A search value is read as FHIR's simple text search: words must all be present, ``"a phrase"`` in
a row, ``OR`` between two terms either; a comma separates alternatives, as in every FHIR parameter
(R4 types ``_content`` as a string), except inside a phrase or escaped (a backslash before it).
Every term is handed to FTS5 as a quoted string, so no FTS5 syntax a caller sends is ever
interpreted.
"""

from __future__ import annotations

import os
import re
from typing import Any

_TAG = re.compile(r"<[^>]*>")
_ENTITY = re.compile(r"&(amp|lt|gt|quot|apos|nbsp|#\d+);")
_CJK = re.compile(r"([\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff])")
_TERM = re.compile(r'"([^"]*)"|(\S+)')
_ROOT_SKIP = frozenset({"resourceType", "id", "meta", "text"})  # the narrative is added apart
_SKIP = frozenset({"reference", "system", "url", "data"})  # links, code system URIs, base64
# The types whose text is indexed: documents and reports, whose meaning is in their free text (a
# full-text row for every resource costs about a quarter more rebuild time and index; the coded
# types' text is searchable already with :text on their codes). HUB_FULLTEXT: a comma list of
# types, "*" for all, "" for none.
DEFAULT_TYPES = ("Composition", "DocumentReference", "DiagnosticReport", "ClinicalImpression",
                 "CarePlan", "Communication")
_configured = os.environ.get("HUB_FULLTEXT")
TYPES: frozenset[str] | None = (
    frozenset(DEFAULT_TYPES) if _configured is None else
    None if _configured.strip() == "*" else
    frozenset(t.strip() for t in _configured.split(",") if t.strip()))


def enabled(rtype: str) -> bool:
    return TYPES is None or rtype in TYPES


MAX_CHARS = 20000  # of one resource's strings: a giant attachment's text does not bloat the index
MAX_TERMS = 16


def _spaced(text: str) -> str:
    return _CJK.sub(r" \1 ", text)


def narrative(d: dict) -> str:
    text = d.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    if not isinstance(div, str):
        return ""
    plain = _ENTITY.sub(" ", _TAG.sub(" ", div))
    return _spaced(plain)[:MAX_CHARS]


def content(d: dict) -> str:
    out: list[str] = []
    size = 0

    def walk(o: Any, root: bool = False) -> None:
        nonlocal size
        if size > MAX_CHARS:
            return
        if isinstance(o, dict):
            for k, v in o.items():
                if k not in _SKIP and not (root and k in _ROOT_SKIP):
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, str):
            out.append(o)
            size += len(o)
    walk(d, True)
    return (narrative(d) + " " + _spaced(" ".join(out)))[:MAX_CHARS]


def terms(value: str) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """A ``_text``/``_content`` value as alternatives (``OR``, or a comma) of terms that must all
    be present, each term a phrase of tokens (a CJK character is a token); ValueError when empty
    or too long."""
    groups: list[list[tuple[str, ...]]] = []
    for alternative in _alternatives(value):  # "a,b" was the phrase "a b", matching neither
        groups.append([])
        for m in _TERM.finditer(alternative):
            phrase, word = m.group(1), m.group(2)
            if word == "OR" and groups[-1]:
                groups.append([])
                continue
            tokens = tuple(_spaced(phrase if phrase is not None else word).split())
            if tokens:
                groups[-1].append(tokens)
    out = tuple(tuple(g) for g in groups if g)
    if not out or sum(len(g) for g in out) > MAX_TERMS:
        raise ValueError(f"between 1 and {MAX_TERMS} search terms")
    return out


def _alternatives(value: str) -> list[str]:
    """The value split at its commas, but those inside a quoted phrase or escaped (a backslash
    before it: a comma of the text)."""
    out, cur, quoted, i = [], [], False, 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and value[i + 1:i + 2] == ",":
            cur.append(",")
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def match_query(column: str, groups: tuple[tuple[tuple[str, ...], ...], ...]) -> str:
    """The FTS5 query of ``terms`` on ``column``: every term a quoted phrase, so no FTS5 syntax a
    caller sends is ever interpreted."""
    ors = ["(" + " AND ".join('"' + " ".join(t.replace('"', '""') for t in tokens) + '"'
                              for tokens in g) + ")" for g in groups]
    return f"{column} : ({' OR '.join(ors)})"
