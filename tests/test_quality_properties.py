"""Property tests: whatever bytes arrive, quality control answers with findings, never an exception."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from fhir_mapping.quality import QualityFinding, check_bytes, report
from hub.core.resource import validate

CLEAN = (Path(__file__).parent / "fixtures" / "quality" / "wst500-C0002-clean.xml").read_bytes()
NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ATTRS = ["code", "codeSystem", "value", "unit", "extension", "root", "nullFlavor", "{http://www.w3.org/2001/XMLSchema-instance}type"]
VALUES = st.one_of(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30), st.sampled_from(
    ["", "PQ", "IVL_PQ", "TS", "1", "2", "9", "M", "2.16.156.10011.2.3.3.11.3", "2.16.156.10011.2.3.3.4",
     "999999198003150000", "110105800315123", "20240230", "2024", "20240305101500+0800", "-0", "X"]))


def _outcome_ok(found: list) -> None:
    assert all(isinstance(f, QualityFinding) for f in found)
    assert "quality.internal" not in {f.rule for f in found}, found
    rep = report(found)
    assert rep["decision"] in ("accept", "accept-with-warnings", "reject")
    validate("OperationOutcome", orjson.dumps(rep["outcome"]), rep["outcome"])


@SETTINGS
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(data):
    _outcome_ok(check_bytes(data, now=NOW))


@SETTINGS
@given(st.integers(0, len(CLEAN)), st.integers(0, 400), st.binary(max_size=40))
def test_byte_level_mutations(pos, cut, insert):
    data = CLEAN[:pos] + insert + CLEAN[pos + cut:]
    _outcome_ok(check_bytes(data, now=NOW))


@SETTINGS
@given(st.data())
def test_tree_level_mutations(data):
    root = etree.fromstring(CLEAN)
    elements = [e for e in root.iter() if isinstance(e.tag, str)]
    for _ in range(data.draw(st.integers(1, 4))):
        el = data.draw(st.sampled_from(elements))
        op = data.draw(st.sampled_from(["attr", "drop", "text", "dup"]))
        if op == "attr":
            el.set(data.draw(st.sampled_from(ATTRS)), data.draw(VALUES))
        elif op == "drop" and el.getparent() is not None:
            el.getparent().remove(el)
            elements = [e for e in root.iter() if isinstance(e.tag, str)]
        elif op == "text":
            el.text = "".join(c for c in data.draw(st.text(max_size=20)) if c.isprintable())
        elif op == "dup" and el.getparent() is not None:
            el.addnext(etree.fromstring(etree.tostring(el)))
            elements = [e for e in root.iter() if isinstance(e.tag, str)]
    _outcome_ok(check_bytes(etree.tostring(root), now=NOW))
