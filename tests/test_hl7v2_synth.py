"""The HL7 v2 generator of the synthetic region, and the mapper over what it generates."""

from __future__ import annotations

from collections import Counter

from fhir_mapping.hl7v2 import _convert
from hub.synth import Region
from hub.synth.hl7v2 import dtm, esc, iter_messages, messages
from tests.test_hl7v2_support import assert_valid, by_type


def test_generator_is_deterministic_and_covers_the_kinds():
    a, b = messages(seed=3, people=40), messages(seed=3, people=40)
    assert a == b
    kinds = Counter(k for k, _, _ in a)
    assert {"ADT^A04", "ADT^A08", "ORU^R01"} <= set(kinds)
    assert all(p.startswith(b"MSH|^~\\&|") for _, p, _ in a)


def test_helpers():
    assert dtm("2024-03-15T08:30:00+08:00") == "20240315083000+0800"
    assert dtm("1985-03-12") == "19850312"
    assert esc("10^9/L|a&b~c\\") == "10\\S\\9/L\\F\\a\\T\\b\\R\\c\\E\\"


def test_every_generated_message_converts_and_validates():
    region = Region(seed=11, people=25)
    msgs = list(iter_messages(region))
    by_patient: dict[str, set[str]] = {}
    for kind, payload, src in msgs:
        conv = _convert(payload, src)
        assert_valid(conv)
        assert conv.kind == kind
        assert not [f for f in conv.findings if f.rule.startswith("v2.obx") or f.rule == "v2.cx.system-unknown"]
        by_patient.setdefault(conv.patient_key, set()).update(
            r["id"] for r in conv.resources if r["resourceType"] == "Encounter")
    assert len(by_patient) >= 10


def test_a08_after_a01_updates_the_same_resources_and_units_are_unescaped():
    msgs = messages(seed=5, people=30)
    first: dict[str, dict] = {}
    checked = 0
    for kind, payload, src in msgs:
        conv = _convert(payload, src)
        enc = by_type(conv, "Encounter")
        if kind in ("ADT^A01", "ADT^A04"):
            first[enc[0]["identifier"][0]["value"]] = {"patient": conv.patient_key, "enc": enc[0]["id"]}
        elif kind == "ADT^A08":
            seen = first[enc[0]["identifier"][0]["value"]]
            assert seen == {"patient": conv.patient_key, "enc": enc[0]["id"]}
            checked += 1
        elif kind == "ORU^R01":
            units = {o["valueQuantity"].get("unit") for o in by_type(conv, "Observation") if "valueQuantity" in o}
            assert not any("\\" in (u or "") for u in units)
    assert checked > 10


def test_gb18030_and_utf8_give_the_same_resources():
    region_u = list(iter_messages(Region(seed=9, people=15), encoding="utf-8"))
    region_g = list(iter_messages(Region(seed=9, people=15), encoding="gb18030"))
    assert len(region_u) == len(region_g)
    for (k, pu, su), (_, pg, sg) in zip(region_u, region_g):
        assert pu != pg or pu.isascii()
        cu, cg = _convert(pu, su), _convert(pg, sg)
        assert cu.resources == cg.resources, k
