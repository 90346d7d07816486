"""Every segment Microsoft's FHIR-Converter maps is, in our mapper, mapped or deliberately refused with a
reason (tables/segments.json); what the table claims is what the shared samples give."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fhir_mapping.hl7v2.tables import table
from tests.test_hl7v2_support import SAMPLES

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_v2_converter.py"
_spec = importlib.util.spec_from_file_location("compare_v2_converter", _SCRIPT)
compare_v2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_v2)


def test_every_reference_segment_is_mapped_or_refused_with_a_reason():
    seg = table("segments")
    mapped, refused, later = set(seg["mapped"]), set(seg["refused"]), set(seg["not_yet"])
    assert not (mapped & refused) and not (mapped & later) and not (refused & later)
    assert set(compare_v2.REFERENCE_SEGMENTS) <= mapped | refused, sorted(
        set(compare_v2.REFERENCE_SEGMENTS) - mapped - refused)
    assert all(len(reason) > 30 for reason in seg["refused"].values())
    assert all(v["resources"] for v in seg["mapped"].values())


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/samples/hl7v2 not present")
def test_the_samples_give_what_the_table_claims():
    result = compare_v2.compare(SAMPLES.parent)
    by_segment = {s["segment"]: s for s in result["segments"]}
    for name, s in by_segment.items():
        if s["ours"] == "mapped":  # some claimed resource was made from a sample holding the segment
            assert set(s["resources"]) - set(s["claimed_but_not_produced"]), name
    # OUL-R22-01's only patient ids are zeros (00000-0000000, 000000): no key, refused
    assert result["total"]["refused"] == ["ADT-A29-01", "ADT-A40-01", "ADT-A41-01", "OUL-R22-01"]
    assert result["total"]["ours_all"] > 800
