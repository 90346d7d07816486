"""Reading the official R4 definitions in ../shared/fhir-r4 (for the derive_* scripts only)."""

from __future__ import annotations

import json
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fhir-r4"


def complete_code_systems() -> dict[frozenset[str], list[str]]:
    """The code set of every complete official CodeSystem (concepts flattened) -> its urls."""
    out: dict[frozenset[str], list[str]] = {}

    def walk(concepts, into):
        for c in concepts or ():
            into.add(c["code"])
            walk(c.get("concept"), into)

    for entry in json.loads((SHARED / "valuesets.json").read_text())["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "CodeSystem" and r.get("content") == "complete":
            codes: set[str] = set()
            walk(r.get("concept"), codes)
            if codes:
                out.setdefault(frozenset(codes), []).append(r["url"])
    return out
