"""The order of business versions (``CodeSystem.version``, ``ConceptMap.version``, a profile's):
one rule for search's canonical references, the terminology read model, ``$translate`` and the
normalisers.

Versions are compared part by part (parts split at ``.`` and ``-``), numbers as numbers, also
inside a part (``v10`` after ``v9``); a number part before a text part; a pre-release before its
release (SemVer: ``2.0.0-ballot`` before ``2.0.0``; build metadata after ``+`` is ignored); no
version before any.
``version_text`` is that order as a text that sorts byte by byte (what SQL ``ORDER BY`` needs,
and ``version_key`` for Python's ``max``).
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"\d+")
_WIDTH = 20  # a number part is compared with up to this many digits


def _padded(text: str) -> str:
    return _DIGITS.sub(lambda m: m.group().lstrip("0").zfill(_WIDTH), text)


def _text_parts(text: str) -> str:
    # a number part "0" + its digits padded, a text part "1" + its text (numbers before texts);
    # "." between parts sorts before any digit or letter: a shorter version sorts first
    return ".".join("0" + p.lstrip("0").zfill(_WIDTH) if p.isdigit() else "1" + _padded(p)
                    for p in re.split(r"[.\-]", text))


def version_key(version: object) -> str:
    """Sort key: ``max(..., key=version_key)`` is the latest version (anything but a text:
    none)."""
    return version_text(version if isinstance(version, str) else None)


def version_text(version: str | None) -> str:
    """The order above as a text (no version: the empty text, before every other)."""
    if not version:
        return ""
    release, dash, pre = version.split("+", 1)[0].partition("-")
    # after the release: "!" and its pre-release sort before "#" (none), and both before "."
    return _text_parts(release) + ("!" + _text_parts(pre) if dash else "#")
