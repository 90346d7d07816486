"""FHIR XML written from and read into JSON text (hub.api.xmlform): every official R4B example the
models accept goes to XML and back unchanged, values as written; fhir.resources reads the XML."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from hub.api import fhirxml, xmlform
from hub.core import resource as res
from hub.core.errors import FhirError
from tests.test_examples import all_examples


def _canonical(o):
    """JSON with each number as its text and each narrative as canonical XML (an XML round trip
    may write <br/> as <br></br>)."""
    if isinstance(o, dict):
        return {k: etree.tostring(etree.fromstring(v), method="c14n")
                if k == "div" and isinstance(v, str) else _canonical(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_canonical(v) for v in o]
    return o


def _as_written(text: bytes):
    d = json.loads(text, parse_float=lambda s: ("number", s), parse_int=lambda s: ("number", s))
    d.pop("fhir_comments", None)  # comments are not content
    return _canonical(d)


def _accepted(raw: bytes) -> bool:
    try:
        res.model_class(json.loads(raw)["resourceType"]).model_validate_json(raw)
        return True
    except Exception:  # noqa: BLE001 - the hub refuses it: it is never written as XML
        return False


def test_every_example_goes_to_xml_and_back_unchanged():
    examples = all_examples()
    assert len(examples) > 2500
    changed = []
    for name, raw in examples:
        try:
            xml = xmlform.json_to_xml(raw)
            back = fhirxml.xml_to_json(xml)
            same = _as_written(back) == _as_written(raw)
        except Exception:  # noqa: BLE001 - told apart below
            same = False
        if not same and _accepted(raw):
            changed.append(name)
    assert changed == []


def test_the_models_read_the_xml_written():
    """An independent reader: fhir.resources takes the XML of the examples (every 10th) but
    those whose XML it cannot read even when it wrote it itself (a KeyError of its own)."""
    refused = []
    for name, raw in all_examples()[::10]:
        if not _accepted(raw):
            continue
        model = res.model_class(json.loads(raw)["resourceType"])
        try:
            model.model_validate_xml(xmlform.json_to_xml(raw))
        except Exception:  # noqa: BLE001
            try:
                model.model_validate_xml(model.model_validate_json(raw).model_dump_xml())
            except Exception:  # noqa: BLE001 - the models cannot read their own XML either
                continue
            refused.append(name)
    assert refused == []


_NAMES = ["name", "family", "given", "telecom", "value", "extension", "url", "valueString",
          "contained", "Patient", "Observation", "id", "gender", "active", "birthDate",
          "identifier", "system", "meta", "text", "div", "status", "junk", "_gender"]
_NS = ["http://hl7.org/fhir", "http://www.w3.org/1999/xhtml", None, "urn:other"]


@st.composite
def _trees(draw, depth: int = 0):
    tag = draw(st.sampled_from(_NAMES))
    ns = draw(st.sampled_from(_NS))
    el = etree.Element(f"{{{ns}}}{tag}" if ns else tag)
    for attr in draw(st.lists(st.sampled_from(["value", "id", "url", "colour"]), max_size=2,
                              unique=True)):
        el.set(attr, draw(st.sampled_from(["true", "1.50", "x", "", "2020", "-0", "1e999"])))
    if depth < 4:
        for child in draw(st.lists(_trees(depth + 1), max_size=3)):
            el.append(child)
    return el


@settings(max_examples=300, deadline=None)
@given(body=_trees())
def test_any_xml_is_json_or_a_fhir_error(body):
    """A Patient holding any tree of elements and attributes: FHIR JSON or a 4xx naming where,
    never another exception."""
    root = etree.Element("{http://hl7.org/fhir}Patient")
    root.append(body)
    try:
        out = xmlform.xml_to_json(root)
    except FhirError as e:
        assert 400 <= e.status < 500
    else:
        assert json.loads(out)["resourceType"] == "Patient"


def test_json_that_is_no_resource_has_no_xml_form():
    """A table of the hub's own asked for in XML is a 406, not a guess at its elements."""
    import pytest

    for body in (b'{"report":"document-quality","rows":[]}', b'[1,2]',
                 b'{"resourceType":"NoSuchType"}'):
        with pytest.raises(FhirError) as e:
            fhirxml.json_to_xml(body)
        assert e.value.status == 406


_CODECS = [("utf-8", "UTF-8"), ("utf-8-sig", "UTF-8"), ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"),
           ("utf-16-be", "UTF-16BE"), ("utf-32", "UTF-32"), ("utf-7", "UTF-7"), ("cp037", "IBM037"),
           ("latin-1", "ISO-8859-1"), ("gb18030", "GB18030")]


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(_CODECS), declared=st.booleans(), doctype=st.sampled_from(
    ["", "<!DOCTYPE Patient>", '<!DOCTYPE Patient [<!ENTITY x "EXPANDED">]>',
     '<!DOCTYPE Patient SYSTEM "file:///etc/hostname">', '<!-- c --><!DOCTYPE Patient [<!ENTITY x "EXPANDED">]>']),
    value=st.sampled_from(["&x;", "Li", "G\u00f3mez", "\u6768"]))
def test_a_fhir_xml_body_in_any_encoding_is_utf8_json_or_refused(codec, declared, doctype, value):
    """The hub takes FHIR XML in UTF-8 without a DOCTYPE, and nothing else: whatever the encoding
    and however the DOCTYPE is spelled, no entity is ever expanded."""
    name, label = codec
    text = (f'<?xml version="1.0" encoding="{label}"?>' if declared else "") + doctype + \
        f'<Patient xmlns="http://hl7.org/fhir"><name><family value="{value}"/></name></Patient>'
    try:
        body = text.encode(name)
    except UnicodeEncodeError:
        return
    try:
        out = fhirxml.xml_to_json(body)
    except FhirError as e:
        assert e.status in (400, 415), e
    else:
        # what is taken is UTF-8 (an ASCII-only sample of another codec is too) and holds no entity
        body.decode("utf-8-sig")
        assert (not declared or label == "UTF-8") and b"EXPANDED" not in out
        if body.removeprefix(b"\xef\xbb\xbf") == text.encode():
            assert not doctype and json.loads(out)["name"][0]["family"] == value
