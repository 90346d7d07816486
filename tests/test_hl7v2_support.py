"""Helpers shared by the tests/test_hl7v2_*.py files (no tests here): fixtures and validation."""

from __future__ import annotations

from pathlib import Path

import orjson

from fhir_mapping.base import Conversion
from hub.core.resource import validate

FIXTURES = Path(__file__).parent / "fixtures" / "hl7v2"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "hl7v2" / "messages"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def assert_valid(conv: Conversion) -> None:
    """Every resource passes the hub's validation; ids are unique; exactly one Provenance, which
    targets every other resource."""
    seen = set()
    for r in conv.resources:
        validate(r["resourceType"], orjson.dumps(r), r)
        key = (r["resourceType"], r["id"])
        assert key not in seen, key
        seen.add(key)
    provs = [r for r in conv.resources if r["resourceType"] == "Provenance"]
    assert len(provs) == 1
    targets = {t["reference"] for t in provs[0]["target"]}
    assert targets == {f"{t}/{i}" for t, i in seen if t != "Provenance"}
    assert conv.unit_id
    if conv.patient_key:
        assert conv.patient_key.removeprefix("Patient/") in {i for t, i in seen if t == "Patient"}


def by_type(conv: Conversion, rtype: str) -> list[dict]:
    return [r for r in conv.resources if r["resourceType"] == rtype]
