"""The terminology resources shipped with the hub (``terminology/data/``, see its README.md).

``iter_builtin()`` yields every shipped FHIR resource as a dict: CodeSystems first, then ValueSets,
then NamingSystems, each group in file-name order, so a loader can resolve a ValueSet's systems and
fold OIDs into URLs as it goes. The files are derived by ``scripts/derive_terminology.py``; nothing
here reads ``../shared``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources

__all__ = ["iter_builtin", "builtin_files"]

_ORDER = ("CodeSystem", "ValueSet", "NamingSystem")


def builtin_files() -> list[str]:
    """The names of the shipped resource files, in the order ``iter_builtin`` yields them."""
    names = [p.name for p in resources.files("terminology.data").iterdir()
             if p.name.endswith(".json") and p.name.split("-", 1)[0] in _ORDER]
    return sorted(names, key=lambda n: (_ORDER.index(n.split("-", 1)[0]), n))


def iter_builtin() -> Iterator[dict]:
    """Every shipped CodeSystem, ValueSet and NamingSystem (a fresh dict each time)."""
    data = resources.files("terminology.data")
    for name in builtin_files():
        yield json.loads(data.joinpath(name).read_text("utf-8"))
