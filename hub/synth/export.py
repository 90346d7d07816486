"""Writing a synthetic region to disk: one NDJSON file per resource type plus ``truth.csv``."""

from __future__ import annotations

import csv
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import orjson

from .region import Region


def write_ndjson(
    out_dir: str | Path, seed: int = 42, people: int = 100, province: str = "500000"
) -> dict[str, int]:
    """Stream ``Region(seed, people, province)`` into ``out_dir``: ``<ResourceType>.ndjson`` (one resource
    per line, in generation order) and ``truth.csv`` (``patient_reference,person_key,noise_kinds`` with the
    noise kinds joined by ``;``). Returns the number of resources written per resource type (the truth has
    one row per Patient). The same arguments always give byte-identical files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    region = Region(seed, people, province)
    counts: Counter[str] = Counter()
    with ExitStack() as stack:
        files: dict[str, IO[bytes]] = {}

        def write(resource: dict) -> None:
            rt = resource["resourceType"]
            f = files.get(rt)
            if f is None:
                f = files[rt] = stack.enter_context(open(out / f"{rt}.ndjson", "wb", buffering=1 << 20))
            f.write(orjson.dumps(resource) + b"\n")
            counts[rt] += 1

        truth_file = stack.enter_context(open(out / "truth.csv", "w", newline="", encoding="utf-8"))
        truth = csv.writer(truth_file, lineterminator="\n")
        truth.writerow(("patient_reference", "person_key", "noise_kinds"))
        for inst in region.institutions:
            write(region.organization(inst))
        for resources, rows in region.iter_people():
            for resource in resources:
                write(resource)
            truth.writerows((r.patient_reference, r.person_key, ";".join(r.noise_kinds)) for r in rows)
    return dict(counts)


def write_units(out_dir: str | Path, seed: int = 42, people: int = 100, province: str = "500000") -> int:
    """The region's intake units (``hub.synth.units``) as files: ``cda/<n>-<code>.xml``, ``v2/<n>-<type>.hl7``
    and ``truth.jsonl`` (one line per unit: file, family, kind, institution, person, facts, defects,
    author). Returns the number of units. The same arguments always give byte-identical files."""
    from .units import iter_units

    out = Path(out_dir)
    for family in ("cda", "v2"):
        (out / family).mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "truth.jsonl", "wb") as truth:
        for n, u in enumerate(iter_units(Region(seed, people, province)), 1):
            name = f"{u.family}/{n:07d}-{u.kind.replace('^', '_')}.{'xml' if u.family == 'cda' else 'hl7'}"
            (out / name).write_bytes(u.payload)
            truth.write(orjson.dumps({"file": name, "family": u.family, "kind": u.kind,
                                      "institution": u.source.institution, "person": u.person_key,
                                      "facts": [f._asdict() for f in u.facts], "defects": u.defects,
                                      "author": u.author}) + b"\n")
    return n
