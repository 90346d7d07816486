"""Intake fidelity of HL7 v2 results: whatever OBX-2 says and whatever OBX-5 holds, the result is
kept, as a parsed value or as the text sent with a finding; an order's comment (NTE after ORC) is
kept on the order; GB18030 text under an 8859/1 declaration is read as GB18030 with a finding."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import _convert
from fhir_mapping.hl7v2.results import _VT
from tests.test_hl7v2_support import assert_valid, by_type

SRC = SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1")
MSH = "MSH|^~\\&|LIS|H1|HUB|R|20240401100000+0800||{type}|M1|P|2.5.1||||||{charset}\r"
PID = "PID|1||P200^^^^MR||王^五||19700101|M\r"
OBR = "OBR|1|ORD200|FIL200|LAB1^测试组合^L|||20240401090000+0800||||||||||||||||||F\r"


def oru(*segments: str, charset: str = "UNICODE UTF-8") -> str:
    return MSH.format(type="ORU^R01^ORU_R01", charset=charset) + PID + "".join(segments)


def conv(text: str, encoding: str = "utf-8"):
    c = _convert(text.encode(encoding), SRC)
    assert_valid(c)
    return c


def obs(c, code: str) -> dict:
    (o,) = [r for r in by_type(c, "Observation") if r["code"]["coding"][0]["code"] == code]
    return o


def rules_at(c, field: str) -> list[str]:
    """The rules of the findings at ``field`` (``OBX-5``) of any OBX (``OBX[2]-5``, ``OBX-5[1]``)."""
    seg, n = field.split("-")
    return [f.rule for f in c.findings if re.match(rf"{seg}(\[\d+\])?-{n}\b", f.location or "")]


@pytest.mark.parametrize("obx, kept", [
    ("OBX|1|NR|R1^范围^L||阴性^弱阳性||||||F", "阴性^弱阳性"),  # no bound a number
    ("OBX|1|NR|R1^范围^L||5^很高||||||F", "5^很高"),  # one bound a number, the other words
    ("OBX|1|DR|R1^期间^L||昨天^今天||||||F", "昨天^今天"),
    ("OBX|1|DR|R1^期间^L||20240101^今天||||||F", "20240101^今天"),
    ("OBX|1|MO|R1^费用^L||一百^CNY||||||F", "一百^CNY"),
    ("OBX|1|CWE|R1^结果^L||^^^^^^^^||||||F", None),  # nothing in it: no value, no finding
    ("OBX|1|NM|R1^数值^L||^5||||||F", "^5"),
    ("OBX|1|SN|R1^数值^L||||||||F", None),
])
def test_an_unparsable_value_is_kept_as_the_text_sent_with_a_finding(obx, kept):
    """NR, DR with words in OBX-5 gave a final Observation with no value and no finding; MO dropped
    the whole result (AA all the same)."""
    c = conv(oru(OBR, obx + "\r"))
    o = obs(c, "R1")
    assert o["status"] == "final"
    if kept is None:
        assert not any(k.startswith("value") for k in o)
        return
    assert o["valueString"] == kept
    assert "v2.obx-5.kept-as-text" in rules_at(c, "OBX-5")
    assert "v2.obx-5.unmapped" not in [f.rule for f in c.findings]


@pytest.mark.parametrize("data, enc, expected", [
    ("quoted=20text=E4=B8=AD", "Q", "quoted text中".encode()),
    ("aGVsbG8=", "Base64", b"hello"),
])
def test_an_ed_in_quoted_printable_is_decoded_onto_the_report(data, enc, expected):
    c = conv(oru(OBR, f"OBX|1|ED|R5^报告^L||LIS^TEXT^PLAIN^{enc}^{data}||||||F\r"))
    (rep,) = by_type(c, "DiagnosticReport")
    (form,) = rep["presentedForm"]
    assert base64.b64decode(form["data"]) == expected and form["contentType"] == "text/plain"
    assert not [f for f in c.findings if f.rule.startswith("v2.obx-5")]


@pytest.mark.parametrize("where", ["report", "loose"])
@pytest.mark.parametrize("obx, kept", [
    ("OBX|1|ED|R4^图像^L||LIS^IM^JPEG^Base64^@@notbase64@@||||||F", "LIS^IM^JPEG^Base64^@@notbase64@@"),
    ("OBX|1|ED|R4^图像^L||LIS^IM^JPEG^XYZ^abc||||||F", "LIS^IM^JPEG^XYZ^abc"),
    ("OBX|1|RP|R4^影像^L||reports/x.pdf^LIS^AP^PDF||||||F", "reports/x.pdf^LIS^AP^PDF"),
])
def test_a_document_that_cannot_be_read_is_kept_as_its_text(where, obx, kept):
    """An ED with bad base64 or an unknown encoding, or an RP that is no URL, was dropped."""
    c = conv(oru(OBR, obx + "\r") if where == "report" else oru(obx + "\r").replace("ORU^R01^ORU_R01",
                                                                                       "ADT^A08^ADT_A01"))
    o = obs(c, "R4")
    assert o["valueString"] == kept and o["status"] == "final"
    assert "v2.obx-5.attachment-invalid" in rules_at(c, "OBX-5")
    if where == "report":
        (rep,) = by_type(c, "DiagnosticReport")
        assert rep["result"] == [{"reference": f"Observation/{o['id']}"}] and "presentedForm" not in rep


def test_an_order_comment_after_orc_is_a_note_of_the_order():
    c = conv(oru("ORC|RE|ORD200|FIL200\r", "NTE|1||ORC后的医嘱备注\r", OBR, "NTE|1||OBR后的报告备注\r",
                 "OBX|1|ST|R1^结果^L||阴性||||||F\r", "NTE|1||结果备注\r"))
    (order,) = by_type(c, "ServiceRequest")
    assert [n["text"] for n in order["note"]] == ["ORC后的医嘱备注", "OBR后的报告备注"]
    (rep,) = by_type(c, "DiagnosticReport")
    assert rep["conclusion"] == "OBR后的报告备注"  # an order's comment is no conclusion of its report
    assert [n["text"] for n in obs(c, "R1")["note"]] == ["结果备注"]
    # an order message: the same
    orm = conv((MSH.format(type="ORM^O01^ORM_O01", charset="UNICODE UTF-8") + PID + "ORC|NW|ORD200\r"
                "NTE|1||空腹采血\r" + OBR.replace("|F\r", "|\r")))
    assert [n["text"] for n in by_type(orm, "ServiceRequest")[0]["note"]] == ["空腹采血"]


def charset_findings(c) -> list[str]:
    return [f.rule for f in c.findings if f.rule.startswith("v2.msh18")]


@pytest.mark.parametrize("name, result", [("王^八", "标本溶血请复查"), ("欧阳^娜娜", "阴性")])
@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_gb18030_text_under_an_8859_1_declaration_is_read_as_gb18030_with_a_finding(name, result, encoding):
    """It was stored as Latin-1 mojibake (王八 as Íõ°Ë) with no finding."""
    text = oru(OBR, f"OBX|1|ST|K^备注^L||{result}||||||F\r", charset="8859/1").replace("王^五", name)
    c = conv(text, encoding)
    assert by_type(c, "Patient")[0]["name"][0]["text"] == name.replace("^", "")
    assert obs(c, "K")["valueString"] == result
    assert charset_findings(c) == ["v2.msh18.mismatch"]


@pytest.mark.parametrize("name", ["Müller^Anna", "José^María", "Gößmann^Eva", "Élise^Roux", "Ñúñez^Íñigo"])
def test_latin_1_text_under_an_8859_1_declaration_stays_as_written(name):
    c = conv(oru(OBR, "OBX|1|ST|K^note^L||Trübung 37°C||||||F\r", charset="8859/1").replace("王^五", name)
             .replace("测试组合", "Labor"), "latin-1")
    assert by_type(c, "Patient")[0]["name"][0]["family"] == name.split("^")[0]
    assert obs(c, "K")["valueString"] == "Trübung 37°C"
    assert charset_findings(c) == []


def test_gb18030_and_latin_text_read_both_ways_under_8859_1_is_refused_not_guessed():
    # 王五 reads only as Chinese; "Mü" + "l" reads as Latin text (and as GB18030 M黮): neither reading
    # keeps the whole message, so it is refused, as the same bytes are under a UTF-8 declaration
    payload = oru(OBR, "OBX|1|ST|K^note^L||\0||||||F\r", charset="8859/1")
    raw = payload.encode("gbk").replace(b"\0", "Mül".encode("latin-1"))
    with pytest.raises(MappingError) as e:
        _convert(raw, SRC)
    assert (e.value.code, e.value.rule, e.value.location) == ("AR", "v2.encoding.ambiguous", "OBX-5")


# -- every value type, any text ------------------------------------------------------------------
_TYPED = sorted(k for k in _VT if not k.startswith("_"))
_TEXT_TYPES = {"ST", "TX", "FT", "XCN", "XAD", "XPN", "CX", "EI", "TN", "XTN", "AD", "PN"}
_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="|\\\r\n")
_WORD = st.text(_CHARS, min_size=1, max_size=12).filter(lambda s: s.strip(" ^&~"))
_PICK = st.sampled_from(["阴性", "5", "1.50", "<0.5", "20240101", "1200", "abc", "mg", "CNY", "+", "-",
                         "2024013", "A^B", "@@", "=3D"])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([*_TYPED, "", "XX", "nm"]),
       st.lists(st.one_of(_WORD, _PICK, st.just("")), min_size=1, max_size=5),
       st.lists(st.sampled_from("^^^&~"), min_size=4, max_size=4),
       st.booleans())
def test_any_value_type_with_any_text_keeps_the_result(vt, parts, seps, in_report):
    """For any OBX-2 and any OBX-5 holding text, the result is an Observation carrying a value (the
    parsed value, or the text sent with a finding at OBX-2 or OBX-5), or, for a document, the report's
    presentedForm: never a result without its value, never a result dropped."""
    value = "".join(p + (seps[i] if i < len(parts) - 1 else "") for i, p in enumerate(parts))
    if not value.replace("^", "").replace("&", "").replace("~", "").strip():
        return
    segment = f"OBX|1|{vt}|K^结果^L||{value}||||||F\r"
    text = oru(OBR, segment) if in_report else oru(segment).replace("ORU^R01^ORU_R01", "ADT^A08^ADT_A01")
    c = conv(text)
    found = [o for o in by_type(c, "Observation") if o["code"]["coding"][0]["code"] == "K"]
    if not found:  # a document: presented by a report
        assert vt.upper() in ("ED", "RP"), (vt, value, [f.message for f in c.findings])
        assert any(r.get("presentedForm") for r in by_type(c, "DiagnosticReport"))
        return
    (o,) = found
    values = [k for k in o if k.startswith("value")] or (
        ["component"] if o.get("component") and all(any(k.startswith("value") for k in p)
                                                    for p in o["component"]) else [])
    assert values, (vt, value, o, [f.message for f in c.findings])
    strings = [o.get("valueString")] + [p.get("valueString") for p in o.get("component", [])]
    if any(strings) and vt.upper() not in _TEXT_TYPES:
        assert rules_at(c, "OBX-5") or rules_at(c, "OBX-2"), (vt, value)


def test_a_document_message_keeps_an_unreadable_ed_as_text_content():
    """MDM: an ED whose data is no Base64 was left out of the DocumentReference."""
    mdm = (MSH.format(type="MDM^T02^MDM_T02", charset="UNICODE UTF-8").replace("|LIS|", "|EMR|") + PID +
           "EVN|T02|20240401100000\rTXA|1|DS|TX|20240401100000||||||||DOC1|||||AU\r"
           "OBX|1|ED|11502-2^报告^LN||EMR^AP^PDF^Base64^@@notbase64@@||||||F\r")
    c = conv(mdm)
    (doc,) = by_type(c, "DocumentReference")
    datas = [base64.b64decode(x["attachment"]["data"]) for x in doc["content"] if "data" in x["attachment"]]
    assert datas == ["EMR^AP^PDF^Base64^@@notbase64@@".encode()]
    assert "v2.obx-5.attachment-invalid" in rules_at(c, "OBX-5")


def test_a_result_sent_in_a_document_message_is_an_observation_of_the_document():
    """MDM: an OBX that is no document content (a measurement, a coded finding) was dropped with an
    information finding; it is a result of the patient's visit, mapped as ORU maps it and referred
    to from the DocumentReference."""
    results = ("OBX|2|NM|8867-4^心率^LN||72|/min^次/分^UCUM|60-100|N|||F\r"
               "NTE|1||静息状态\r"
               "OBX|3|CWE|LA-BLOOD^血型^L||A^A型^L||||||F\r"
               "OBX|4|SN|2160-0^肌酐^LN||>^200|umol/L|||||F\r")
    mdm = (MSH.format(type="MDM^T02^MDM_T02", charset="UNICODE UTF-8").replace("|LIS|", "|EMR|") + PID +
           "PV1|1|I|W1^101^1||||||||||||||||V900\rTXA|1|DS|TX|20240401100000||||||||DOC9|||||AU\r"
           "OBX|1|TX|18842-5^出院小结^LN||患者好转出院||||||F\r" + results)
    c = conv(mdm)
    (doc,) = by_type(c, "DocumentReference")
    assert base64.b64decode(doc["content"][0]["attachment"]["data"]).decode() == "患者好转出院"
    heart, blood, creat = obs(c, "8867-4"), obs(c, "LA-BLOOD"), obs(c, "2160-0")
    assert heart["valueQuantity"]["value"] == 72 and heart["note"][0]["text"] == "静息状态"
    assert heart["referenceRange"][0]["low"]["value"] == 60
    assert blood["valueCodeableConcept"]["coding"][0]["code"] == "A"
    assert creat["valueQuantity"]["comparator"] == ">"
    for o in (heart, blood, creat):
        assert o["subject"] == doc["subject"] and o["encounter"] == doc["context"]["encounter"][0]
    assert {r["reference"] for r in doc["context"]["related"]} == {
        f"Observation/{o['id']}" for o in (heart, blood, creat)}
    assert not [f for f in c.findings if f.rule.startswith("v2.mdm")]
    # the ORU mapping of the same OBX: one rule for a result wherever it is sent
    o = obs(conv(oru(OBR, results)), "8867-4")
    assert {k: o[k] for k in ("valueQuantity", "referenceRange", "interpretation", "status")} == {
        k: heart[k] for k in ("valueQuantity", "referenceRange", "interpretation", "status")}


ADT_MSH = MSH.format(type="ADT^A01^ADT_A01", charset="UNICODE UTF-8")
ADT_PV1 = "PV1|1|I|心内科^301^02||||||||||||||||ZY001\r"


def adt(*segments: str):
    return conv(ADT_MSH + "EVN|A01|20240401100000\r" + PID + ADT_PV1 + "".join(segments))


@pytest.mark.parametrize("segment, rtype, rule", [
    ("AL1|1|DA|无", "AllergyIntolerance", "v2.al1-3.filler"),
    ("AL1|1|DA|无。", "AllergyIntolerance", "v2.al1-3.filler"),
    ("AL1|1|DA|^无", "AllergyIntolerance", "v2.al1-3.filler"),
    ("AL1|1|DA|^不详^^^-", "AllergyIntolerance", "v2.al1-3.filler"),
    ("IAM|1|DA|（无）||||||", "AllergyIntolerance", "v2.al1-3.filler"),
    ("DG1|1||无", "Condition", "v2.dg1-3.filler"),
    ("DG1|1||^无", "Condition", "v2.dg1-3.filler"),
    ("DG1|1|||无", "Condition", "v2.dg1-3.filler"),
    ("DG1|1||-|不详", "Condition", "v2.dg1-3.filler"),
    ("PR1|1||^无", "Procedure", "v2.pr1-3.filler"),
])
def test_a_text_only_filler_makes_no_clinical_resource(segment, rtype, rule):
    """An allergen, diagnosis or procedure written 无 with no code became an AllergyIntolerance
    "to 无" (a Condition "无"), which the CDA mapper makes of the same entry nowhere."""
    c = adt(segment + "\r")
    assert by_type(c, rtype) == []
    assert rule in [f.rule for f in c.findings if f.severity == "information"]


@pytest.mark.parametrize("segment, rtype, said", [
    ("AL1|1|DA|01^无^LOCAL", "AllergyIntolerance", "01"),  # a code of a code system is a value
    ("AL1|1|DA|无^^LOCAL", "AllergyIntolerance", "无"),
    ("AL1|1|DA|^青霉素", "AllergyIntolerance", "青霉素"),
    ("AL1|1|DA|0", "AllergyIntolerance", "0"),
    ("DG1|1||^无|高血压", "Condition", "高血压"),  # the description names the diagnosis
    ("DG1|1||I10^高血压^I10|无", "Condition", "I10"),
    ("DG1|1||^其他", "Condition", "其他"),  # a clinical word, not a filler
    ("PR1|1||^无|阑尾切除术", "Procedure", "阑尾切除术"),
    ("PR1|1|||阑尾切除术", "Procedure", "阑尾切除术"),  # no code, its description alone
])
def test_a_coded_or_real_value_stays(segment, rtype, said):
    c = adt(segment + "\r")
    (r,) = by_type(c, rtype)
    assert said in str(r["code"])
    assert not [f for f in c.findings if f.rule.endswith(".filler")]


def test_a_procedure_with_nothing_said_is_a_warning():
    c = adt("PR1|1||||20240315\r")
    assert by_type(c, "Procedure") == []
    assert "v2.pr1-3.missing" in [f.rule for f in c.findings if f.severity == "warning"]


PRB_MSH = MSH.format(type="PPR^PC1^PPR_PC1", charset="UNICODE UTF-8")


def test_a_filler_problem_makes_no_condition_unless_something_is_said_of_it():
    bare = conv(PRB_MSH + PID + "PRB|AD|20240315|^无\r")
    assert by_type(bare, "Condition") == []
    assert "v2.prb-3.filler" in [f.rule for f in bare.findings]
    noted = conv(PRB_MSH + PID + "PRB|AD|20240315|^无\rNTE|1||家族史阳性\r")
    (cond,) = by_type(noted, "Condition")
    assert cond["note"][0]["text"] == "家族史阳性"
