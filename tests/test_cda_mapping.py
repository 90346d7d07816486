"""CDA -> FHIR on the project's own fixtures (WS/T 500 C0010, C0030; a C-CDA progress note)."""

from __future__ import annotations

import re

import pytest

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.cda import convert, convert_traced, tables
from tests.test_cda_helpers import FIXTURES, check_document, check_no_silent_drops, invalid_resources

SRC = SourceInfo(institution="H11000001", feed="test")
C0010 = (FIXTURES / "C0010-anesthesia-preop-visit.xml").read_bytes()
C0010_V2 = (FIXTURES / "C0010-anesthesia-preop-visit-v2.xml").read_bytes()
C0030 = (FIXTURES / "C0030-critical-condition-notice.xml").read_bytes()
CCDA = (FIXTURES / "ccda-progress-note.xml").read_bytes()


def _map(payload: bytes):
    conv, trace = convert_traced(payload, SRC)
    assert invalid_resources(conv) == []
    check_no_silent_drops(conv, trace)
    return conv, check_document(conv, payload)


def _one(by_type, rtype, pred=lambda r: True):
    found = [r for r in by_type.get(rtype, []) if pred(r)]
    assert len(found) == 1, (rtype, found)
    return found[0]


def _codes(cc):
    return {(c.get("system"), c.get("code")) for c in cc.get("coding", [])}


@pytest.mark.parametrize("payload", [C0010, C0010_V2, C0030, CCDA], ids=["C0010", "C0010v2", "C0030", "ccda"])
def test_fixtures_valid_and_deterministic(payload):
    conv, _ = _map(payload)
    again = convert(payload, SRC)
    assert again.resources == conv.resources


def test_c0010_header():
    conv, t = _map(C0010)
    assert conv.kind == "cda:C0010" and conv.unit_id == "2.16.156.10011.1.1^HUBTEST-C0010-0001"
    p = _one(t, "Patient")
    systems = {i["system"]: i["value"] for i in p["identifier"]}
    assert systems["urn:oid:2.16.156.10011.1.3"] == "11010519491231002X"
    assert systems["urn:oid:2.16.156.10011.1.12"] == "ZY20240311007"
    assert systems["urn:oid:2.16.156.10011.1.13"] == "BA0088123"
    assert p["gender"] == "female" and p["birthDate"] == "1949-12-31"
    (ext,) = p["extension"]
    assert ext["valueCoding"] == {"system": "urn:oid:2.16.156.10011.2.3.3.4", "code": "2", "display": "女性"}
    assert p["address"][0]["city"] == "北京市" and p["address"][0]["district"] == "东城区"
    assert p["telecom"] == [{"system": "phone", "value": "13800000000"}]
    assert not [f for f in conv.findings if f.rule.startswith(("cda.patient", "cda.identifier"))]  # valid ID
    comp = _one(t, "Composition")
    assert _codes(comp["type"]) >= {("urn:oid:2.16.156.10011.2.4", "C0010")}
    assert comp["title"] == "麻醉术前访视记录" and comp["date"] == "2024-03-12T09:30:00+08:00"
    assert [a["mode"] for a in comp["attester"]] == ["legal"]
    # department chain: bed and room are Locations, department -> ward -> hospital Organizations
    enc = _one(t, "Encounter")
    assert enc["class"]["code"] == "IMP" and enc["period"]["start"] == "2024-03-11T08:00:00+08:00"
    orgs = {o["id"]: o for o in t["Organization"]}
    dept = orgs[enc["serviceProvider"]["reference"].split("/")[1]]
    assert dept["name"] == "普通外科"
    ward = orgs[dept["partOf"]["reference"].split("/")[1]]
    hosp = orgs[ward["partOf"]["reference"].split("/")[1]]
    assert (ward["name"], hosp["name"]) == ("外科三病区", "测试市第一人民医院")
    assert {loc["name"] for loc in t["Location"]} == {"12床", "305病房"}
    assert len(enc["location"]) == 2
    assert comp["custodian"]["reference"] == f"Organization/{hosp['id']}"
    # author (root .1.7) and legal authenticator (root .1.4): two identifiers, two Practitioners
    assert [pr["code"] for pr in t["PractitionerRole"]] == [[{"text": "麻醉医师"}]] * 2
    assert comp["author"][0]["reference"] == t["PractitionerRole"][0]["practitioner"]["reference"]


def test_c0010_entries():
    conv, t = _map(C0010)
    cond = _one(t, "Condition")
    assert _codes(cond["code"]) == {("urn:oid:2.16.156.10011.2.3.3.11", "K80.100")}
    assert cond["onsetDateTime"] == "2024-03-11"
    allergy = _one(t, "AllergyIntolerance")
    assert allergy["code"] == {"text": "青霉素过敏"}
    sbp = _one(t, "Observation", lambda o: ("http://loinc.org", "8480-6") in _codes(o["code"]))
    assert sbp["valueQuantity"] == {"value": 142, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                    "code": "mm[Hg]"}
    assert sbp["category"][0]["coding"][0]["code"] == "vital-signs"
    temp = _one(t, "Observation", lambda o: ("http://loinc.org", "8310-5") in _codes(o["code"]))
    assert temp["valueQuantity"]["code"] == "Cel"
    abo = _one(t, "Observation", lambda o: ("http://loinc.org", "883-9") in _codes(o["code"]))
    assert abo["category"][0]["coding"][0]["code"] == "laboratory"
    procs = {p["category"]["text"]: p for p in t["Procedure"]}
    assert _codes(procs["手术"]["code"]) == {("urn:oid:2.16.156.10011.2.3.3.12", "51.2301")}
    assert procs["手术"]["status"] == "preparation"
    assert procs["麻醉"]["code"]["coding"][0]["display"] == "全身麻醉"
    # the unknown local code: narrative + finding with XPath
    (f,) = [f for f in conv.findings if f.rule == "cda.entry.unmapped"]
    assert f.location == "/ClinicalDocument/component/structuredBody/component[5]/section/entry[4]/observation"
    comp = _one(t, "Composition")
    sec = comp["section"][4]
    assert "院内麻醉风险评分: 3" in sec["text"]["div"] and sec["text"]["status"] == "generated"
    assert comp["section"][0]["text"]["div"] == \
        '<div xmlns="http://www.w3.org/1999/xhtml"><p>术前诊断：胆囊结石伴慢性胆囊炎</p></div>'
    # every section entry reference is in the Bundle
    in_bundle = {e["fullUrl"] for e in _one(t, "Bundle")["entry"]}
    for s in comp["section"]:
        for e in s.get("entry", []):
            assert e["reference"] in in_bundle


def test_new_version_supersedes():
    c1, t1 = _map(C0010)
    c2, t2 = _map(C0010_V2)
    for rtype in ("Composition", "DocumentReference", "Bundle", "Patient", "Encounter", "Condition"):
        assert _one(t1, rtype)["id"] == _one(t2, rtype)["id"], rtype
    assert _one(t1, "Binary")["id"] != _one(t2, "Binary")["id"]  # each version's bytes kept
    comp2 = _one(t2, "Composition")
    assert comp2["relatesTo"] == [{"code": "replaces", "targetIdentifier": {
        "system": "urn:oid:2.16.156.10011.1.1", "value": "HUBTEST-C0010-0001"}}]
    assert comp2["extension"][0]["valueString"] == "2"
    dr2 = _one(t2, "DocumentReference")
    assert dr2["masterIdentifier"]["value"] == "HUBTEST-C0010-0002"
    assert dr2["relatesTo"][0]["code"] == "replaces"
    assert dr2["identifier"][0]["value"] == "HUBTEST-C0010-SET"

    def weight(t):
        return _one(t, "Observation", lambda o: ("http://loinc.org", "29463-7") in _codes(o["code"]))
    assert weight(t1)["id"] == weight(t2)["id"]
    assert (weight(t1)["valueQuantity"]["value"], weight(t2)["valueQuantity"]["value"]) == (58.5, 59.0)


def test_c0030():
    conv, t = _map(C0030)
    rules = {f.rule: f for f in conv.findings}
    assert rules["cda.identifier.check-digit"].location == \
        "/ClinicalDocument/recordTarget/patientRole/patient/id"
    assert "440304" not in rules["cda.identifier.check-digit"].message  # no personal data
    # the failing number is not stored either: the inpatient number identifies and keys the Patient
    assert [i["system"] for i in _one(t, "Patient")["identifier"]] == ["urn:oid:2.16.156.10011.1.12"]
    assert rules["cda.entry.uncoded"].location.endswith("section/entry[4]/observation")
    assert len(t["Condition"]) == 2
    comp = _one(t, "Composition")
    assert comp["date"] == "2024-04-01T22:15:00+08:00"
    div = comp["section"][1]["text"]["div"]
    assert "<table><thead><tr><th>项目</th>" in div and "<span>血氧饱和度 85%</span>" in div
    assert "家属已知情" in div and comp["section"][1]["text"]["status"] == "additional"
    assert "<ul><li>重症肺炎</li>" in comp["section"][0]["text"]["div"]
    ts = _one(t, "Observation", lambda o: "valueDateTime" in o)
    assert ts["valueDateTime"] == "2024-04-01T22:10:00+08:00"


def test_ccda_progress_note():
    conv, t = _map(CCDA)
    assert conv.kind == "cda:11506-3"
    p = _one(t, "Patient")
    assert p["gender"] == "female" and p["name"][0]["family"] == "Patient"
    cond = _one(t, "Condition")
    assert _codes(cond["code"]) == {("http://snomed.info/sct", "59621000"), ("http://hl7.org/fhir/sid/icd-10-cm", "I10")}
    assert cond["clinicalStatus"]["coding"][0]["code"] == "active"
    med = _one(t, "MedicationRequest")
    assert _codes(med["medicationCodeableConcept"]) == {("http://www.nlm.nih.gov/research/umls/rxnorm", "314076")}
    assert med["dosageInstruction"][0]["timing"]["repeat"]["period"] == 24
    al = _one(t, "AllergyIntolerance")
    assert al["reaction"][0]["severity"] == "moderate"
    assert al["reaction"][0]["manifestation"][0]["coding"][0]["code"] == "247472004"
    panels = [o for o in t["Observation"] if o.get("hasMember")]
    assert sorted(len(o["hasMember"]) for o in panels) == [1, 2]
    hb = _one(t, "Observation", lambda o: ("http://loinc.org", "718-7") in _codes(o["code"]))
    assert hb["effectiveDateTime"] == "2024-01-05T10:00:00-05:00"
    assert hb["referenceRange"][0]["low"]["value"] == 12.0
    imm = _one(t, "Immunization")
    assert imm["vaccineCode"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/cvx" and imm["lotNumber"] == "LOT-1"
    assert _one(t, "Procedure")["performedDateTime"] == "2022-06-14"
    assert len(t["Encounter"]) == 2
    (f,) = [f for f in conv.findings if f.rule == "cda.entry.unmapped"]
    assert f.location.endswith("component[9]/section/entry/act")
    assert "Blood pressure recheck" in _one(t, "Composition")["section"][8]["text"]["div"]


# ------------------------------------------------------------------ the table of document types

def test_document_table_has_all_53_wst500_types():
    t = tables()
    rows = [d for d in t.documents_by_code.values() if d["family"] == "wst500"]
    assert sorted(d["code"] for d in rows) == [f"C{n:04d}" for n in range(1, 54)]
    for d in rows:
        n = int(d["code"][1:])
        assert d["templateId"] == f"2.16.156.10011.2.1.1.{20 + n}"
        assert t.documents_by_template[d["templateId"]] is d


@pytest.mark.parametrize("n", range(1, 54))
def test_every_wst500_type_maps_header_composition_sections(n):
    t = tables()
    row = t.documents_by_code[f"C{n:04d}"]
    doc = C0030.replace(b'2.16.156.10011.2.1.1.50', row["templateId"].encode()) \
        .replace(b'code="C0030"', f'code="C{n:04d}"'.encode())
    conv, by_type = _map(doc)
    comp = by_type["Composition"][0]
    assert conv.kind == f"cda:C{n:04d}"
    assert comp["type"]["coding"][0] == {"system": "urn:oid:2.16.156.10011.2.4", "code": f"C{n:04d}",
                                         "display": row["name"]}
    assert len(comp["section"]) == 2
    assert not [f for f in conv.findings if f.rule == "cda.document.type-unknown"]


def test_unknown_document_type_still_maps_with_finding():
    doc = C0030.replace(b'2.16.156.10011.2.1.1.50', b'2.16.156.10011.2.1.1.99').replace(b'C0030', b'C0099')
    conv, _ = _map(doc)
    assert any(f.rule == "cda.document.type-unknown" for f in conv.findings)


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("doc,code,rule", [
    (b'<foo xmlns="urn:hl7-org:v3"/>', "AR", "cda.not-clinical-document"),
    (b'<ClinicalDocument/>', "AR", "cda.not-clinical-document"),
    (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><ClinicalDocument '
     b'xmlns="urn:hl7-org:v3">&x;</ClinicalDocument>', "AR", "xml.doctype-entities"),
    (C0030[:500], "AR", "xml.not-well-formed"),
    (re.sub(rb'<id root="2.16.156.10011.1.1" extension="HUBTEST-C0030-0001"/>', b"", C0030), "AE",
     "cda.header.id-missing"),
    (re.sub(rb"<recordTarget.*?</recordTarget>", b"", C0030, flags=re.S), "AE", "cda.header.record-target-missing"),
    (re.sub(rb"<id root=\"2.16.156.10011.1.(12|3)\"[^>]*/>", b"", C0030), "AE", "cda.header.patient-id-missing"),
    (re.sub(rb"<effectiveTime value=\"2024040122[^>]*/>", b"", C0030).replace(b"<time value", b"<time x"), "AE",
     "cda.header.time-missing"),
])
def test_refusals(doc, code, rule):
    with pytest.raises(MappingError) as ei:
        convert(doc, SRC)
    assert (ei.value.code, ei.value.rule) == (code, rule), ei.value.to_dict()
    assert ei.value.reason


# ------------------------------------------------------------------ table-driven: data, not code

def test_new_data_element_and_document_type_are_table_changes(monkeypatch):
    import dataclasses

    from fhir_mapping.cda import mapper

    base = tables()
    entries = dict(base.entries)
    entries["elements"] = {**base.entries["elements"],
                           "LOCAL-77": {"kind": "Observation", "category": "survey"}}
    row = {"code": "C0099", "templateId": "2.16.156.10011.2.1.1.99", "name": "测试新文档", "family": "wst500"}
    patched = dataclasses.replace(
        base, entries=entries,
        documents_by_template={**base.documents_by_template, row["templateId"]: row},
        documents_by_code={**base.documents_by_code, row["code"]: row})
    monkeypatch.setattr(mapper, "tables", lambda: patched)
    conv, t = _map(C0010.replace(b"2.16.156.10011.2.1.1.30", b"2.16.156.10011.2.1.1.99").replace(b"C0010", b"C0099"))
    assert conv.kind == "cda:C0099" and _one(t, "Composition")["title"] == "麻醉术前访视记录"
    assert not [f for f in conv.findings if f.rule in ("cda.entry.unmapped", "cda.document.type-unknown")]
    local = _one(t, "Observation", lambda o: ("urn:oid:1.2.156.999.1", "LOCAL-77") in _codes(o["code"]))
    assert local["valueInteger"] == 3


def test_repeated_entry_id_same_act_is_one_resource_other_content_is_reported():
    start = CCDA.index(b"<entry>", CCDA.index(b"<title>Problems</title>"))
    end = CCDA.index(b"</entry>", start) + len(b"</entry>")
    problem = CCDA[start:end]
    # the same act quoted again in the plan section: one Condition, no finding
    same = CCDA.replace(b"<title>Plan of Treatment</title>", b"<title>Plan of Treatment</title>" + problem)
    conv, t = _map(same)
    assert len(t["Condition"]) == 1
    assert not [f for f in conv.findings if f.rule == "cda.entry.duplicate-id"]
    # the same id on different content: two Conditions, reported
    other = CCDA.replace(b"<title>Plan of Treatment</title>",
                         b"<title>Plan of Treatment</title>" + problem.replace(b'code="59621000"', b'code="38341003"'))
    conv, t = _map(other)
    assert len(t["Condition"]) == 2
    assert len([f for f in conv.findings if f.rule == "cda.entry.duplicate-id"]) == 1
