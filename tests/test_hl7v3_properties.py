"""Property tests: mutated v3 messages give valid FHIR resources or a MappingError, nothing else."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v3 import acknowledge, convert, is_query, parse_query, respond
from fhir_mapping.xmlsafe import parse_xml
from hub.core.resource import validate

FIX = Path(__file__).parent / "fixtures" / "hl7v3"
MESSAGES = [(FIX / n).read_bytes() for n in (
    "patient-register.xml", "patient-merge.xml", "patient-query.xml", "visit-register.xml",
    "visit-query.xml", "order-new.xml", "request-lab.xml", "request-surgery.xml",
    "order-query.xml", "lab-status.xml", "exam-status.xml", "surgery-schedule.xml",
    "outpatient-appointment.xml", "terminology-register.xml", "terminology-query.xml",
    "schedule-register.xml")]
SRC = SourceInfo(institution="H0001", oid="1.2.156.112604.1.2.1")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)
VALUES = st.one_of(TEXT, st.sampled_from(["", "1", "2", "9", "X", "20240230", "2024", "110105198003151234",
                                          "2.16.156.10011.2.5.1.4", "2.16.156.10011.1.3", "not an oid"]))


def _run(data: bytes) -> None:
    try:
        if is_query(data):
            q = parse_query(data, SRC)
            parse_xml(respond(q, []))
            return
        conv = convert(data, SRC)
    except MappingError as e:
        assert e.code in ("AE", "AR")
        parse_xml(acknowledge(data, e.code, e.reason))
        return
    for r in conv.resources:
        validate(r["resourceType"], orjson.dumps(r), r)


@SETTINGS
@given(st.sampled_from(range(len(MESSAGES))), st.data())
def test_tree_mutations(which, data):
    root = etree.fromstring(MESSAGES[which])
    for _ in range(data.draw(st.integers(1, 4))):
        elements = [e for e in root.iter() if isinstance(e.tag, str)]
        el = data.draw(st.sampled_from(elements))
        op = data.draw(st.sampled_from(["attr", "drop", "dup"]))
        if op == "attr":
            el.set(data.draw(st.sampled_from(["value", "code", "root", "extension", "codeSystem"])), data.draw(VALUES))
        elif op == "drop" and el.getparent() is not None:
            el.getparent().remove(el)
        elif op == "dup" and el.getparent() is not None:
            el.addnext(etree.fromstring(etree.tostring(el)))
    _run(etree.tostring(root))


@SETTINGS
@given(st.sampled_from(range(len(MESSAGES))), st.integers(0, 4000), st.integers(0, 200), st.binary(max_size=30))
def test_byte_mutations(which, pos, cut, insert):
    msg = MESSAGES[which]
    _run(msg[:pos] + insert + msg[pos + cut:])
