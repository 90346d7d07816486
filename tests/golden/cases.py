"""The golden cases: which of the project's own fixtures each mapper family is pinned on, and how one
mapping is rendered to the stored JSON (``tests/golden/<family>/<fixture>.json``).

Shared by ``tests/test_golden.py`` (compares) and ``tests/golden/regen.py`` (rewrites). The mappers
are pure (no clock, no randomness; ids are ``fhir_mapping.ids.stable_id`` over the source's own
keys), so the output is stored as it is: ``normalise`` is the one place where anything that varied
from run to run would be made stable, and today it only turns the Conversions into JSON types.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from fhir_mapping.base import Conversion, SourceInfo

GOLDEN = Path(__file__).resolve().parent
FIXTURES = GOLDEN.parent / "fixtures"

# the same sending institutions the families' own mapping tests use
SOURCES = {
    "hl7v2": SourceInfo(institution="CQSRMYY", oid="2.16.156.10011.99.1.1", name="重庆市第一人民医院", feed="adt"),
    "cda": SourceInfo(institution="H11000001", feed="test"),
    "hl7v3": SourceInfo(institution="H0001", oid="1.2.156.112604.1.2.1", name="测试医院"),
    "tabular": SourceInfo(institution="H0001", oid="1.2.156.112604.1.1", name="市第一人民医院"),
}

# family -> fixture file names under tests/fixtures/<family>/
CASES: dict[str, tuple[str, ...]] = {
    "hl7v2": ("adt_a01_utf8.hl7", "adt_a40_merge.hl7", "oru_r01_cn.hl7"),
    "cda": ("C0030-critical-condition-notice.xml", "ccda-progress-note.xml"),
    "hl7v3": ("patient-register.xml", "patient-merge.xml"),
    "tabular": ("outpatient-visit.csv", "lab-result.csv", "prescription.csv"),
}


def _mapper(family: str, fixture: str) -> Callable[[bytes, SourceInfo], list[Conversion]]:
    """The family's own mapper (not the registry's ``cda`` kind, which adds quality control on the
    connector's clock). Every mapper gives a list: a CSV export is one Conversion per row."""
    if family == "hl7v2":
        from fhir_mapping.hl7v2 import convert as v2

        return lambda payload, source: [v2(payload, source)]
    if family == "cda":
        from fhir_mapping.cda import convert as cda

        return lambda payload, source: [cda(payload, source)]
    if family == "hl7v3":
        from fhir_mapping.hl7v3 import convert as v3

        return lambda payload, source: [v3(payload, source)]
    if family == "tabular":
        from fhir_mapping.tabular import load_mapping

        return load_mapping(Path(fixture).stem).convert_csv  # the fixture is named after its mapping
    raise ValueError(f"no golden mapper for family {family!r}")


def all_cases() -> list[tuple[str, str]]:
    return [(family, name) for family, names in CASES.items() for name in names]


def golden_path(family: str, fixture: str) -> Path:
    return GOLDEN / family / f"{fixture}.json"


def normalise(convs: list[Conversion]) -> list[dict[str, Any]]:
    """The one place where the mapping output is made comparable: each Conversion as a plain dict
    (resources, findings, ids, source order), in the mapper's own order. Nothing is replaced: the
    mappers read no clock and draw no random ids, so there is nothing that varies from run to run.
    Should a mapper ever stamp one, blank it here, with the reason, rather than in the files.
    Resources are not copied: their exact decimals are ``orjson.Fragment``s, written as they are."""
    out = []
    for c in convs:
        d = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
        d["findings"] = [dataclasses.asdict(f) for f in c.findings]
        out.append(d)
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return orjson.Fragment(str(o).encode())
    raise TypeError(f"golden output: {type(o).__name__} is not JSON")


def render(family: str, fixture: str) -> str:
    """Map one fixture; pretty-printed (two spaces), key-sorted JSON, written the way the hub writes
    JSON (orjson: exact decimals, UTF-8 text); lists keep the mapper's order."""
    payload = (FIXTURES / family / fixture).read_bytes()
    convs = _mapper(family, fixture)(payload, SOURCES[family])
    return orjson.dumps(normalise(convs), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
                        default=_json_default).decode("utf-8") + "\n"


def diff(expected: str, actual: str, path: Path) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                        fromfile=f"{path} (stored)", tofile=f"{path} (mapped now)", n=3))
