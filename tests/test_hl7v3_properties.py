"""Property tests: mutated v3 messages give valid FHIR resources or a MappingError, nothing else."""

from __future__ import annotations

import copy

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
    "schedule-register.xml", "slot-query.xml")]
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


# what the hub holds, as the registrations wrote it: every response builder gets these (and
# resources written through REST look like them with any element missing or odd)
STORED = [r for n in ("patient-register.xml", "visit-register.xml", "order-new.xml", "request-lab.xml",
                      "request-surgery.xml", "lab-status.xml", "exam-status.xml", "surgery-schedule.xml",
                      "outpatient-appointment.xml", "terminology-register.xml", "schedule-register.xml",
                      "document-register.xml")
          for r in convert((FIX / n).read_bytes(), SRC).resources]
QUERIES = [("patient-query.xml", ""), ("visit-query.xml", ""), ("visit-query.xml", "appointment_query"),
           ("order-query.xml", ""), ("terminology-query.xml", ""), ("slot-query.xml", "")]
ODD = st.one_of(st.none(), st.just(""), st.just([]), st.just({}), st.just([{}]), TEXT,
                st.integers(-5, 5), st.booleans())


def _paths(d: object, at: tuple = ()) -> list[tuple]:
    """Every place in a resource (dict keys and list positions)."""
    out = []
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else []
    for k, v in items:
        out.append(at + (k,))
        out += _paths(v, at + (k,))
    return out


@SETTINGS
@given(st.sampled_from(range(len(QUERIES))), st.data())
def test_every_response_builder_answers_whatever_the_hub_holds(which, data):
    """Resources with elements dropped or given odd values (as a REST writer may store them,
    or worse) never break a response: it is well-formed v3, or the hub's search never returns
    such a resource and the builder is not asked."""
    name, service = QUERIES[which]
    raw = (FIX / name).read_bytes().replace(
        b"<!--CRITERIA-->", b'<patientId><value><item root="2.16.156.10011.2.5.1.4" extension="P0001"/>'
        b"</value></patientId>")
    q = parse_query(raw, SRC, service)
    held = orjson.loads(orjson.dumps(STORED))
    retyped = False  # a value of another JSON type than the element has: the hub never stores one
    for _ in range(data.draw(st.integers(1, 6))):
        res = data.draw(st.sampled_from(held))
        paths = _paths(res)
        if not paths:
            continue
        path = data.draw(st.sampled_from(paths))
        parent = res
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(path[-1], None)  # an element left out: the hub stores such resources
        else:
            # a copy: st.just hands out one object, and put in two places a later draw could
            # put it inside itself (a cycle no stored resource has)
            value = copy.deepcopy(data.draw(ODD))
            retyped = retyped or type(value) is not type(parent[path[-1]])
            parent[path[-1]] = value
    try:
        parse_xml(respond(q, held))
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
        # validation on write refuses a value of the wrong type; anything else is a defect
        assert retyped, f"{type(e).__name__}: {e}"
