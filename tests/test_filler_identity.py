"""Two people whose identifier is a filler stay two people, in every intake family, against a real
``hub serve`` (SQLite and PostgreSQL): an HL7 v2 PID-3 ``无。`` (answered and merged into one Patient
carrying both diagnoses before the filler rule read past punctuation), an XCN-1 practitioner id
``无。`` (two doctors one Practitioner), a CDA inpatient number ``无。`` and an HL7 v3 local id
``undefined``; a tabular row's ``N.A.`` likewise. The filler is reported where it stood."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree

from connectors.sinks.http import HttpSink
from connectors.spool import Unit
from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import _convert
from fhir_mapping.hl7v3 import convert as v3_convert
from fhir_mapping.tabular import load_mapping
from terminology.resident_id import check_digit

FIX = Path(__file__).parent / "fixtures"
INST, OID = "H0001", "1.2.156.112604.1.2.1"
SRC = SourceInfo(institution=INST, oid=OID, name="Test hospital", feed="filler-test")
XML = {"content-type": "application/xml", "x-hub-source-institution": INST, "x-hub-source-oid": OID,
       "x-hub-source-feed": "filler-test"}
V3 = "{urn:hl7-org:v3}"


def resident(born: str, serial: str) -> str:
    first17 = f"110105{born}{serial}"
    return first17 + check_digit(first17)


def patient_of(client, ref: str) -> tuple[str, str]:
    r = client.get(f"/{ref}")
    assert r.status_code == 200, r.text
    d = r.json()
    return d["name"][0]["text"] if "text" in d["name"][0] else d["name"][0]["family"], d["birthDate"]


# -- HL7 v2 ----------------------------------------------------------------------------------------

def adt(cid: str, pid3: str, name: str, born: str, visit: str, dg1: str = "", pv1_7: str = "") -> bytes:
    return ("MSH|^~\\&|HIS|CQSRMYY^2.16.156.10011.99.1.1^ISO|HUB|REGION|20240501090000+0800||ADT^A01^ADT_A01|"
            f"{cid}|P|2.5||||||UNICODE UTF-8\rEVN|A01|20240501090000\r"
            f"PID|1||{pid3}||{name}||{born}\r"
            f"PV1|1|O|内科||||{pv1_7}||||||||||||{visit}\r" + (f"DG1|1||{dg1}|||A\r" if dg1 else "")).encode()


def deliver(sink: HttpSink, payload: bytes):
    c = _convert(payload, SRC)
    unit = Unit(0, "adt", c.unit_id, c.kind, c.patient_key, c.resources, c.deletes, time.time())
    assert sink.deliver([unit]) == [None]
    return c


@pytest.mark.parametrize("filler", ["无。", "N.A.", "undefined", "(null)", "#N/A", "null null", "-1", "不明"])
def test_two_people_with_a_filler_record_number_stay_two_patients_v2(live, client, tmp_path, filler):
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials(INST, tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    a = deliver(sink, adt(f"F1{tag}", f"{filler}^^^^MR", "赵^一", "19600101", f"VA{tag}", "E11.900^2型糖尿病^ICD10"))
    b = deliver(sink, adt(f"F2{tag}", f"{filler}^^^^MR", "钱^二", "19900202", f"VB{tag}", "O80.000^单胎顺产^ICD10"))
    assert a.patient_key != b.patient_key
    assert patient_of(client, a.patient_key)[1] == "1960-01-01"
    assert patient_of(client, b.patient_key)[1] == "1990-02-02"
    for c, code in ((a, "E11.900"), (b, "O80.000")):
        assert "v2.identifier.placeholder" in {f.rule for f in c.findings}
        conditions = client.get("/Condition", params={"subject": c.patient_key}).json().get("entry", [])
        assert [e["resource"]["code"]["coding"][0]["code"] for e in conditions] == [code]


def test_two_doctors_with_a_filler_id_stay_two_practitioners_v2(live, client, tmp_path):
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials(INST, tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    a = deliver(sink, adt(f"D1{tag}", f"PA{tag}^^^^MR", "韩^一", "19850312", f"VA{tag}", pv1_7="无。^王^建国"))
    b = deliver(sink, adt(f"D2{tag}", f"PB{tag}^^^^MR", "韩^二", "19850312", f"VB{tag}", pv1_7="无。^李^芳"))
    (pa,) = [r for r in a.resources if r["resourceType"] == "Practitioner"]
    (pb,) = [r for r in b.resources if r["resourceType"] == "Practitioner"]
    assert pa["id"] != pb["id"]
    names = {client.get(f"/Practitioner/{p['id']}").json()["name"][0]["family"] for p in (pa, pb)}
    assert names == {"王", "李"}
    assert any(f.rule == "v2.identifier.placeholder" and f.location == "PV1-7.1" for f in a.findings)


# -- CDA -------------------------------------------------------------------------------------------

def cda(doc: str, name: str, born: str, resident_id: str = "不详") -> bytes:
    text = (FIX / "cda" / "filler-inpatient-number.xml").read_text("utf-8")
    for old, new in (("HUBTEST-C0030-F1", doc), ("测试患者丙", name), ('<birthTime value="19800101"/>',
                                                                   f'<birthTime value="{born}"/>'),
                     ('extension="不详"', f'extension="{resident_id}"')):
        assert old in text
        text = text.replace(old, new)
    return text.encode("utf-8")


def test_two_documents_with_a_filler_inpatient_number_stay_two_patients_cda(client):
    tag = str(time.time_ns())[-9:]
    subjects = []
    for doc, name, born, serial in ((f"F1{tag}", "测试患者丙", "19800101", "123"),
                                    (f"F2{tag}", "测试患者己", "20100101", "246")):
        r = client.post("/../cda", content=cda(doc, name, born, resident(born, serial)), headers=XML)
        assert r.status_code == 201, r.text
        assert "cda.identifier.placeholder" in {c["code"] for i in r.json()["issue"]
                                                for c in i.get("details", {}).get("coding", [])}
        doc_ref = client.get("/" + r.headers["location"].split("/fhir/", 1)[1]).json()
        subjects.append(doc_ref["subject"]["reference"])
    a, b = subjects
    assert a != b
    assert patient_of(client, a) == ("测试患者丙", "1980-01-01")
    assert patient_of(client, b) == ("测试患者己", "2010-01-01")


def test_a_document_whose_patient_ids_are_all_fillers_is_refused_cda(client):
    """The probe's documents: inpatient number 无。, resident ID 不详: nothing identifies the patient,
    so neither is filed (both were one Patient)."""
    tag = str(time.time_ns())[-9:]
    for doc, name, born in ((f"G1{tag}", "测试患者丙", "19800101"), (f"G2{tag}", "测试患者己", "20100101")):
        r = client.post("/../cda", content=cda(doc, name, born), headers=XML)
        assert r.status_code == 422, r.text
        assert "无。" not in r.text


# -- HL7 v3 ----------------------------------------------------------------------------------------

def v3_patient(msg: str, local: str, resident_id: str, name: str) -> bytes:
    text = (FIX / "hl7v3" / "patient-register.xml").read_text("utf-8")
    ids = (f'<item root="2.16.156.10011.2.5.1.4" extension="{local}"/>'
           f'<item root="2.16.156.10011.1.3" extension="{resident_id}"/>')
    for old, new in (('<item root="2.16.156.10011.2.5.1.4" extension="P0001"/>', ids),
                     ("110105198003151234", resident_id),
                     ("T-MSG-0001", msg), ("测试甲", name)):
        assert old in text
        text = text.replace(old, new)
    return text.encode("utf-8")


@pytest.mark.parametrize("filler", ["undefined", "<NULL>", "NaN"])
def test_two_registrations_with_a_filler_local_id_stay_two_patients_v3(live, client, filler):
    tag = str(time.time_ns())[-9:]
    refs = []
    for msg, name, serial in ((f"U1{tag}", "冯甲", "123"), (f"U2{tag}", "陈乙", "246")):
        data = v3_patient(msg, filler.replace("<", "&lt;").replace(">", "&gt;"), resident("19800315", serial), name)
        r = client.post(f"http://127.0.0.1:{live.port}/v3", content=data, headers=XML)
        root = etree.fromstring(r.content)
        assert root.find(f".//{V3}acknowledgement").get("typeCode") == "AA", r.text
        conv = v3_convert(data, SourceInfo(institution=INST, oid=OID, feed="filler-test"))
        (pat,) = [x for x in conv.resources if x["resourceType"] == "Patient"]
        assert any(f.rule == "v3.identifier.placeholder" for f in conv.findings)
        refs.append(f"Patient/{pat['id']}")
    assert refs[0] != refs[1]
    assert patient_of(client, refs[0])[0] == "冯甲" and patient_of(client, refs[1])[0] == "陈乙"


# -- tabular ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("filler", ["N.A.", "无。", "(null)", "-1"])
def test_two_rows_with_a_filler_record_number_stay_two_patients_tabular(filler):
    m = load_mapping("outpatient-visit")

    def row(**cells):
        r = {c: spec["example"] for c, spec in m.columns.items()}
        r.update(cells)
        return r

    a = m.convert_row(row(patient_id=filler, visit_no="MZ1", id_card_no="-"), SRC)
    b = m.convert_row(row(patient_id=filler, visit_no="MZ2", id_card_no="-"), SRC)
    (pa,) = [r for r in a.resources if r["resourceType"] == "Patient"]
    (pb,) = [r for r in b.resources if r["resourceType"] == "Patient"]
    assert pa["id"] != pb["id"]
    assert ("tabular.identifier.placeholder", "patient_id") in {(f.rule, f.location) for f in a.findings}
    with pytest.raises(MappingError):  # nothing else to key on: refused, not keyed on the filler
        m.convert_row(row(patient_id=filler, visit_no="--", id_card_no="-"), SRC)
