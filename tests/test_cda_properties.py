"""Property tests: mutated documents (dropped elements, garbage attribute values, truncated bytes)
give a Conversion whose resources all pass the hub's validation, or a MappingError; nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.cda import convert
from tests.test_cda_helpers import FIXTURES, SAMPLES, invalid_resources

SRC = SourceInfo(institution="PROP")
DOCS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.xml"))]
for name in ("wst500-cda/C005中药处方.xml", "wst500-cda/C033中医住院病案首页.xml", "ccda/Discharge_Summary.xml",
             "wst483-ehr-sd/EHR-SD-12-高血压患者随访服务_样例患者_20200519.xml"):
    if (SAMPLES / name).is_file():
        DOCS.append((SAMPLES / name).read_bytes())

GARBAGE = st.sampled_from(["", " ", "x", "-1", "1e999", "NaN", "99999999999999999999", "2024-13-45",
                           "20241345", "2024021525", "202402151230+9999", "urn:oid:", "1.2.3", "true", "&",
                           "\u4e2d\u6587", "..", "0", "00000000", "\u00a0", "<", "a b", "12.", ".5"])

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _outcome(payload: bytes) -> None:
    try:
        conv = convert(payload, SRC)
    except MappingError as e:
        assert e.code in ("AR", "AE") and e.reason and e.rule
        return
    assert invalid_resources(conv) == []


@SETTINGS
@given(doc=st.sampled_from(DOCS), data=st.data())
def test_dropped_elements(doc, data):
    root = etree.fromstring(doc)
    elements = [e for e in root.iter() if isinstance(e.tag, str) and e.getparent() is not None]
    for _ in range(data.draw(st.integers(1, 6))):
        el = data.draw(st.sampled_from(elements))
        if el.getparent() is not None:
            el.getparent().remove(el)
    _outcome(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


@SETTINGS
@given(doc=st.sampled_from(DOCS), data=st.data())
def test_garbage_attribute_values(doc, data):
    root = etree.fromstring(doc)
    attrs = [(e, a) for e in root.iter() if isinstance(e.tag, str) for a in e.attrib]
    for _ in range(data.draw(st.integers(1, 12))):
        el, name = data.draw(st.sampled_from(attrs))
        el.set(name, data.draw(GARBAGE))
    _outcome(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


@SETTINGS
@given(doc=st.sampled_from(DOCS), data=st.data())
def test_truncated_bytes(doc, data):
    cut = data.draw(st.integers(0, len(doc) - 1))
    _outcome(doc[:cut])


@SETTINGS
@given(doc=st.sampled_from(DOCS), data=st.data())
def test_garbage_text(doc, data):
    root = etree.fromstring(doc)
    elements = [e for e in root.iter() if isinstance(e.tag, str) and len(e) == 0]
    for _ in range(data.draw(st.integers(1, 8))):
        el = data.draw(st.sampled_from(elements))
        el.text = data.draw(GARBAGE)
    _outcome(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
