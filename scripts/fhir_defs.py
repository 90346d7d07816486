"""Reading the official R4 definitions in ../shared/fhir-r4 (for the derive_* scripts only)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fhir-r4"
NPM_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "npm"


def npm_package(name: str, version: str) -> Path:
    """The unpacked npm package ``name@version`` (``npm pack`` once into .cache/npm, as the
    Makefile fetches the console's chart library): its ``package`` folder."""
    where = NPM_CACHE / f"{name.replace('/', '-').lstrip('@')}-{version}"
    if not (where / "package" / "package.json").exists():
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=where, check=True,
                       stdout=subprocess.DEVNULL)
        with tarfile.open(next(where.glob("*.tgz"))) as tar:
            tar.extractall(where, filter="data")
    return where / "package"


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
