"""The identifier-key rule in the HL7 v3 and tabular mappers: a filler value or a resident ID number
failing its check digit is never a key of any resource and never stored as an identifier; the key
falls back to the next institution-scoped identifier, else the input is refused naming where; each
such value is a located finding (never the value). Also: v3 findings reach the acknowledgement and
the quality projection; hostile input still gets an answer and is kept for replay."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from lxml import etree

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v3 import convert
from fhir_mapping.tabular import load_mapping
from hub.quarantine import Quarantine

FIX = Path(__file__).parent / "fixtures" / "hl7v3"
V3 = "{urn:hl7-org:v3}"
INST, OID = "H0831", "1.2.156.112604.8.31"
SRC = SourceInfo(institution=INST, oid=OID, feed="keys-test")
DECLARED = {"content-type": "application/xml", "x-hub-source-institution": INST,
            "x-hub-source-oid": OID}
BAD_RESIDENT = "110105198003151235"  # the fixture's valid number with a wrong check digit
LOCAL = '<id><item root="2.16.156.10011.2.5.1.4" extension="P0001"/></id>'
LOCATION = "/*/hl7:controlActProcess/hl7:subject/hl7:registrationRequest/hl7:subject1/hl7:patient/hl7:id"
PERSON_ID = '<id><item root="2.16.156.10011.1.3" extension="110105198003151234"/></id>'


def patient(msg: str, patient_ids: str, person_resident: str = BAD_RESIDENT, name: str = "测试甲") -> bytes:
    text = (FIX / "patient-register.xml").read_text("utf-8")
    for old, new in ((LOCAL, patient_ids), (PERSON_ID, f'<id><item root="2.16.156.10011.1.3" '
                                                        f'extension="{person_resident}"/></id>'),
                     ("T-MSG-0001", msg), ("测试甲", name)):
        assert old in text
        text = text.replace(old, new)
    return text.encode("utf-8")


def practitioner(msg: str, staff: str, resident: str, name: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<PRPM_IN301010UV01 xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ITSVersion="XML_1.0">
  <id root="2.16.156.10011.2.5.1.1" extension="{msg}"/>
  <creationTime value="20240308100000"/>
  <interactionId root="2.16.156.10011.2.5.1.2" extension="PRPM_IN301010UV01"/>
  <processingCode code="P"/><acceptAckCode code="AL"/>
  <receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id><item root="2.16.156.10011.2.5.1.3" extension="PLATFORM"/></id></device></receiver>
  <sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id><item root="2.16.156.10011.2.5.1.3" extension="HIS01"/></id></device></sender>
  <controlActProcess classCode="CACT" moodCode="EVN">
    <subject typeCode="SUBJ"><registrationRequest classCode="REG" moodCode="RQO"><statusCode code="active"/>
      <subject1 typeCode="SBJ"><healthCareProvider classCode="PROV">
        <id><item root="2.16.156.10011.1.4" extension="{staff}"/></id>
        <statusCode code="active"/>
        <healthCarePrincipalPerson classCode="PSN" determinerCode="INSTANCE">
          <id><item root="2.16.156.10011.1.3" extension="{resident}"/></id>
          <name xsi:type="LIST_EN"><item><part value="{name}"/></item></name>
        </healthCarePrincipalPerson>
      </healthCareProvider></subject1>
    </registrationRequest></subject>
  </controlActProcess>
</PRPM_IN301010UV01>""".encode("utf-8")


def of_type(conv, rtype: str) -> list[dict]:
    return [r for r in conv.resources if r["resourceType"] == rtype]


def values(res: dict) -> list[str]:
    return [i["value"] for i in res.get("identifier", [])]


# -- HL7 v3 --------------------------------------------------------------------------------------

def test_v3_patients_sharing_an_invalid_resident_id_stay_apart_keyed_on_their_record_numbers():
    # the invalid number first: it used to be the key when no local patient id came first
    record = '<id><item root="2.16.156.10011.1.3" extension="%s"/><item root="2.16.156.10011.1.13" extension="{}"/></id>' % BAD_RESIDENT
    a = convert(patient("M-A", record.format("BA0001")), SRC)
    b = convert(patient("M-B", record.format("BA0002"), name="测试丙"), SRC)
    (pa,), (pb,) = of_type(a, "Patient"), of_type(b, "Patient")
    assert pa["id"] != pb["id"]  # before: both keyed on the shared invalid number
    for conv, pat in ((a, pa), (b, pb)):
        assert BAD_RESIDENT not in values(pat)  # never stored
        found = [f for f in conv.findings if f.rule == "v3.identifier.check-digit"]
        assert found and all(BAD_RESIDENT not in f.message for f in found)
        assert all(f.location for f in found)


def test_v3_patient_identified_only_by_an_invalid_number_is_refused_naming_the_element():
    only_bad = '<id><item root="2.16.156.10011.1.3" extension="%s"/></id>' % BAD_RESIDENT
    for ids in (only_bad, '<id><item root="2.16.156.10011.2.5.1.4" extension="无"/></id>'):
        with pytest.raises(MappingError) as e:
            convert(patient(f"M-{uuid.uuid4().hex[:6]}", ids), SRC)
        assert e.value.code == "AE" and e.value.rule == "v3.patient.id-missing"
        assert e.value.location == LOCATION  # the patient's id element


def test_v3_practitioners_with_a_filler_staff_number_are_different_practitioners():
    a = convert(practitioner("M-P1", "医务人员编码", "110105198003151234", "医生甲"), SRC)
    b = convert(practitioner("M-P2", "医务人员编码", "11010519491231002X", "医生乙"), SRC)
    (pa,), (pb,) = of_type(a, "Practitioner"), of_type(b, "Practitioner")
    assert pa["id"] != pb["id"]  # keyed on each one's valid resident ID number, not the label
    assert "医务人员编码" not in values(pa) + values(pb)
    assert "v3.identifier.placeholder" in {f.rule for f in a.findings}
    with pytest.raises(MappingError) as e:  # nothing usable identifies this one
        convert(practitioner("M-P3", "-", BAD_RESIDENT, "医生丙"), SRC)
    assert e.value.code == "AE" and e.value.rule == "v3.practitioner.id-missing"


def ack_details(content: bytes) -> list[tuple[str, str, str]]:
    root = etree.fromstring(content, etree.XMLParser(resolve_entities=False, no_network=True))
    out = []
    for d in root.iter(f"{V3}acknowledgementDetail"):
        code = d.find(f"{V3}code")
        loc = d.find(f"{V3}location")
        out.append((d.get("typeCode"), code.get("code") if code is not None else "",
                    loc.get("value") if loc is not None else ""))
    return out


def test_v3_findings_are_acknowledged_stored_and_counted(client, live):
    v3 = f"http://127.0.0.1:{live.port}/v3"
    ok = client.post(v3, content=patient(f"M-{uuid.uuid4().hex[:8]}", LOCAL.replace("P0001", "PK001")),
                     headers=DECLARED)
    assert ok.status_code == 200
    details = ack_details(ok.content)
    assert ("W", "v3.identifier.check-digit") in {(t, c) for t, c, _ in details}
    assert all(BAD_RESIDENT not in c + loc for _, c, loc in details)
    q = client.get("/$quality-report", params={"institution": INST, "group": "document_type,rule"})
    rows = {(r["document_type"], r["rule"]): r["findings"] for r in q.json()["rows"]}
    assert rows[("PRPA_IN201311UV02", "v3.identifier.check-digit")] >= 1
    # refused (nothing identifies the patient): AE naming the element, kept for replay
    refused = client.post(v3, content=patient(f"M-{uuid.uuid4().hex[:8]}", '<id><item root="2.16.156.10011.1.3" '
                                              f'extension="{BAD_RESIDENT}"/></id>'), headers=DECLARED)
    root = etree.fromstring(refused.content)
    assert root.find(f"{V3}acknowledgement").get("typeCode") == "AE"
    text = root.find(f"{V3}acknowledgement/{V3}acknowledgementDetail/{V3}text").get("value")
    assert "usable identifier" in text and "quarantine entry" in text and BAD_RESIDENT not in text


# -- tabular ---------------------------------------------------------------------------------------

def visit_row(**cells) -> dict:
    m = load_mapping("outpatient-visit")
    row = {c: spec["example"] for c, spec in m.columns.items()}
    row.update(cells)
    return row


def test_tabular_rows_with_a_filler_record_number_fall_back_to_the_visit():
    m = load_mapping("outpatient-visit")
    a = m.convert_row(visit_row(patient_id="-", visit_no="MZ1", id_card_no=BAD_RESIDENT), SRC)
    b = m.convert_row(visit_row(patient_id="-", visit_no="MZ2", id_card_no=BAD_RESIDENT), SRC)
    (pa,), (pb,) = of_type(a, "Patient"), of_type(b, "Patient")
    assert pa["id"] != pb["id"]  # not one Patient for everybody whose number is "-"
    for pat in (pa, pb):
        assert "-" not in values(pat) and BAD_RESIDENT not in values(pat)
    rules = {(f.rule, f.location) for f in a.findings}
    assert ("tabular.identifier.placeholder", "patient_id") in rules
    assert ("tabular.identifier.check-digit", "id_card_no") in rules
    assert all("-" != f.message and BAD_RESIDENT not in f.message for f in a.findings)
    # the lab view keys the same visit's patient alike: the result points at that Patient
    lab = load_mapping("lab-result")
    row = {c: spec["example"] for c, spec in lab.columns.items()}
    row.update(patient_id="0000", visit_no="MZ1")
    (obs,) = of_type(lab.convert_row(row, SRC), "Observation")
    assert obs["subject"]["reference"] == f"Patient/{pa['id']}"
    # a doctor code that is the template's label is no identifier
    (enc,) = of_type(m.convert_row(visit_row(doctor_code="医务人员编码", visit_no="MZ3"), SRC), "Encounter")
    assert "identifier" not in enc["participant"][0].get("individual", {})


def test_tabular_row_with_nothing_usable_to_key_is_refused_naming_the_column():
    m = load_mapping("outpatient-visit")
    with pytest.raises(MappingError) as e:
        m.convert_row(visit_row(patient_id="无", visit_no="--"), SRC)
    assert e.value.location in ("patient_id", "visit_no") and e.value.rule.startswith("tabular.identifier.")
    # a lab item coded NA (sodium) is a code, not a filler: still a key
    lab = load_mapping("lab-result")
    row = {c: spec["example"] for c, spec in lab.columns.items()}
    row.update(item_code="NA")
    assert of_type(lab.convert_row(row, SRC), "Observation")


# -- hostile input on the intake paths touched here -------------------------------------------

def test_oversized_and_malformed_documents_get_an_answer_and_are_kept(client, live):
    xml = {"content-type": "application/xml", "x-hub-source-institution": "H0832"}
    deep = b"<ClinicalDocument xmlns='urn:hl7-org:v3'>" + b"<a>" * 5000 + b"</a>" * 5000 + \
        b"</ClinicalDocument>"
    huge_attr = b"<ClinicalDocument xmlns='urn:hl7-org:v3' x='" + b"A" * 3_000_000 + b"'/>"
    garbage = bytes(range(256)) * 64
    kept = []
    for body in (deep, huge_attr, garbage, b"<?xml version='1.0'?><ClinicalDocument"):
        r = client.post("/../cda", content=body, headers=xml)
        assert r.status_code in (413, 422), r.status_code
        if r.status_code == 422:
            assert r.json()["resourceType"] == "OperationOutcome"
            kept.append((int(r.headers["x-quarantine-id"]), body))
    assert kept
    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    try:
        for qid, body in kept:
            assert q.get(qid)["payload"] == body  # byte for byte, for replay
    finally:
        q.close()
    v3 = f"http://127.0.0.1:{live.port}/v3"
    for body in (deep, garbage, patient("M-X", LOCAL)[:-60]):
        r = client.post(v3, content=body, headers=DECLARED)
        assert r.status_code in (200, 413)
        assert etree.fromstring(r.content).find(f"{V3}acknowledgement").get("typeCode") in ("AR", "AE")
    assert client.get("/metadata").status_code == 200
