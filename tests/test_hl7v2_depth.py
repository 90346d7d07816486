"""Depth of the HL7 v2 mapping: orders other than OBR (pharmacy, diet, supply), problems (PPR), results
in billing messages, each OBR as order and report, NK1, coded fields with their systems, routes, and
every AIS of an appointment. Small messages of our own, each checked resource by resource."""

from __future__ import annotations

import orjson
import pytest

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import _convert
from tests.test_hl7v2_support import assert_valid, by_type

SRC = SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1")
MSH = "MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||{kind}|{ctl}|P|2.5\r"
PID = "PID|1||MR1^^^^MR||王^小明||19850312|M||||||||M\r"
PV1 = "PV1|1|I|心内科^301^02||||||||||||||||ZY001\r"
V2_0162 = "http://terminology.hl7.org/CodeSystem/v2-0162"


def conv(kind: str, body: str, ctl: str = "C1"):
    c = _convert((MSH.format(kind=kind, ctl=ctl) + body).encode(), SRC)
    assert_valid(c)
    return c


def test_orm_pharmacy_order_is_a_medication_request_with_the_route_of_its_own_rxr():
    c = conv("ORM^O01", PID + PV1 + "ORC|NW|P100|F100||||||20240315090000|||D1^李^医生\r"
             "RXO|A001^阿莫西林胶囊^L|0.5||g^克\r"
             "RXR|PO\r")
    (mr,) = by_type(c, "MedicationRequest")
    assert mr["medicationCodeableConcept"]["coding"][0]["code"] == "A001"
    assert mr["dosageInstruction"][0]["route"] == {"coding": [{"system": V2_0162, "code": "PO"}]}
    assert mr["identifier"][0]["value"] == "P100" and mr["requester"]["display"] == "李医生"
    assert not by_type(c, "ServiceRequest")


def test_rde_takes_the_route_from_the_rxr_following_rxe():
    c = conv("RDE^O11", PID + PV1 + "ORC|NW|P1|F1\rRXO|A001^阿莫西林^L|1||g\rRXR|PO\r"
             "RXE||A001^阿莫西林^L|0.5||g^克\rRXR|IV^静脉注射^HL70162\r")
    (mr,) = by_type(c, "MedicationRequest")
    assert mr["dosageInstruction"][0]["route"]["coding"][0] == {"system": V2_0162, "code": "IV", "display": "静脉注射"}


def test_rde_keeps_its_observations_notes_instructions_timing_rate_and_site():
    """An RDE with the weight and creatinine the dose was judged by: the OBX were dropped with
    no finding, as were TQ1's timing and priority, RXE-7's later repetitions, the rate, the
    pharmacist's NTE and the site (AA all the same)."""
    rxe = ["", "C001^头孢曲松^L", "1", "", "g^g", "", "皮试阴性后使用~静脉滴注30分钟以上~避光"]
    rxe += [""] * 7 + ["RX001"] + [""] * 7 + ["100", "mL/h"]
    c = conv("RDE^O11", PID + PV1 + "ORC|NW|P1|F1\r"
             "TQ1|1||Q8H||||20240115100000+0800|20240122100000+0800|S\r"
             "RXE|" + "|".join(rxe) + "\rNTE|1||药师：注意过敏史\r"
             "RXR|IV^静脉^HL70162|LA^左臂^HL70163\r"
             "OBX|1|NM|29463-7^Body weight^LN||65|kg|||||F\r"
             "OBX|2|NM|2160-0^Creatinine^LN||120|umol/L|57-111|H|||F\rNTE|1||空腹\r")
    (mr,) = by_type(c, "MedicationRequest")
    d = mr["dosageInstruction"][0]
    assert [x["text"] for x in d["additionalInstruction"]] == ["皮试阴性后使用", "静脉滴注30分钟以上", "避光"]
    assert d["timing"]["repeat"] == {"frequency": 1, "period": 8, "periodUnit": "h", "boundsPeriod": {
        "start": "2024-01-15T10:00:00+08:00", "end": "2024-01-22T10:00:00+08:00"}}
    assert mr["priority"] == "stat" and d["site"]["coding"][0]["code"] == "LA"
    assert d["doseAndRate"][0]["rateQuantity"] == {"value": 100, "unit": "mL/h"}
    assert mr["note"] == [{"text": "药师：注意过敏史"}]
    assert any(i["value"] == "RX001" for i in mr["identifier"])
    obs = {o["code"]["coding"][0]["code"]: o for o in by_type(c, "Observation")}
    assert set(obs) == {"29463-7", "2160-0"}
    assert obs["2160-0"]["note"] == [{"text": "空腹"}] and obs["2160-0"]["valueQuantity"]["value"] == 120
    assert all(o["basedOn"] == [{"reference": f"MedicationRequest/{mr['id']}"}] for o in obs.values())
    assert sorted(r["reference"] for r in mr["supportingInformation"]) == sorted(
        f"Observation/{o['id']}" for o in obs.values())


def test_a_diagnosis_deleted_by_dg1_21_is_entered_in_error():
    """An A08 resending a DG1 with action D (table 0206) left the diagnosis active."""
    dg1 = ["1", "", "J18.9^肺炎^I10", "", "", "A"] + [""] * 14 + ["D"]
    c = conv("ADT^A08", PID + PV1 + "DG1|" + "|".join(dg1) + "\r")
    (cond,) = by_type(c, "Condition")
    assert cond["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in cond
    kept = conv("ADT^A08", PID + PV1 + "DG1|" + "|".join(dg1[:-1]) + "\r")
    (again,) = by_type(kept, "Condition")
    assert again["id"] == cond["id"] and again["clinicalStatus"]["coding"][0]["code"] == "active"


def test_hex_escapes_are_bytes_of_the_message_character_set_and_highlights_no_characters():
    """\\XE5BCA0\\ under UTF-8 is 张 (it was read as three Latin-1 characters), \\H\\ and \\N\\
    mark no character (they were "_"), and a line break is a line feed in every text type."""
    msh = MSH.replace("|P|2.5", "|P|2.5|||||CHN|UNICODE UTF-8")
    body = ("PID|1||MR1^^^^MR||\\XE5BCA0\\^\\H\\三\\N\\||19850312|M\r" + PV1
            + "OBR|1||F1|CBC^血常规^L\rOBX|1|FT|N1^所见^L||第一行\\.br\\第二行||||||F\r")
    c = _convert((msh.format(kind="ORU^R01", ctl="C1") + body).encode(), SRC)
    (p,) = by_type(c, "Patient")
    assert p["name"][0]["family"] == "张" and p["name"][0]["given"] == ["三"]
    (o,) = by_type(c, "Observation")
    assert o["valueString"] == "第一行\n第二行"


@pytest.mark.parametrize("section, category", [
    ("RAD", "imaging"), ("CT", "imaging"), ("CH", "laboratory"), ("", "laboratory"), ("ZZ", None)])
def test_a_report_is_filed_by_its_diagnostic_service_section(section, category):
    """OBR-24 RAD: a chest X-ray's impression was filed as laboratory (and found by
    category=laboratory, never by imaging)."""
    obr = ["1", "", "F1", "CXR^胸片^L"] + [""] * 19 + [section]
    c = conv("ORU^R01", PID + PV1 + "OBR|" + "|".join(obr) + "\r"
             "OBX|1|TX|IMP^印象^L||双肺纹理增粗||||||F\r")
    (report,), (obs,) = by_type(c, "DiagnosticReport"), by_type(c, "Observation")
    got = [c["coding"][0] for c in report.get("category", [])]
    kinds = [x["code"] for x in got if x.get("system", "").endswith("observation-category")]
    assert kinds == ([category] if category else [])
    assert [x["code"] for x in obs.get("category", [{"coding": [{}]}])[0]["coding"] if x] == (
        [category] if category else [])
    if section in ("RAD", "CT", "CH"):
        assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": section} in got


@pytest.mark.parametrize("units, ucum", [
    ("10\\S\\9/L", None), ("iu/ml", None), ("mg/24h", None), ("mmol/L", "mmol/L"),
    ("mg/dL^mg/dL^ANS+", "mg/dL"), ("10*9/L^^UCUM", "10*9/L")])
def test_a_unit_is_claimed_as_ucum_only_when_it_is(units, ucum):
    """Any ASCII unit was given the UCUM system (10^9/L, iu/ml, mg/24h are none); ANS+ (HL7's
    unit table) lost the system of a unit UCUM shares."""
    c = conv("ORU^R01", PID + PV1 + "OBR|1||F1|CBC^血常规^L\r"
             f"OBX|1|NM|WBC^白细胞^L||5.6|{units}|||||F\r")
    q = by_type(c, "Observation")[0]["valueQuantity"]
    assert q.get("code") == ucum and ("system" in q) == (ucum is not None)
    assert q["unit"]


@pytest.mark.parametrize("obx, key, value", [
    ("CQ|Q1^量^L||5^mg&毫克", "valueQuantity", {"value": 5, "unit": "毫克", "system":
                                               "http://unitsofmeasure.org", "code": "mg"}),
    ("SI|Q1^序号^L||3", "valueInteger", 3),
    ("TN|Q1^电话^L||010-12345678", "valueString", "010-12345678"),
    ("AD|Q1^地址^L||人民路1号^^北京", "valueString", "人民路1号 北京"),
    ("DT|Q1^日期^L||20241399", "valueString", "20241399"),
    ("TM|Q1^时间^L||2561", "valueString", "2561"),
    ("ZZ|Q1^其他^L||abc", "valueString", "abc"),
])
def test_a_result_is_never_dropped_for_its_value_type(obx, key, value):
    """CQ, SI, TN, AD, PN and an unknown type, or a DT/TM that is no date or time, dropped the
    whole Observation (code, status, time): now the value is kept, as text if need be."""
    c = conv("ORU^R01", PID + PV1 + f"OBR|1||F1|P^检查^L\rOBX|1|{obx}||||||F\r")
    (o,) = by_type(c, "Observation")
    assert o[key] == value and o["status"] == "final"


def test_allergy_reactions_written_as_words_are_text():
    """AL1-5 皮疹~呼吸困难 became codes with no system and no text."""
    c = conv("ADT^A08", PID + PV1 + "AL1|1|DA|PCN^青霉素^L|SV|皮疹~呼吸困难~RASH^Rash^L\r")
    (a,) = by_type(c, "AllergyIntolerance")
    assert a["reaction"][0]["manifestation"] == [
        {"text": "皮疹"}, {"text": "呼吸困难"}, {"coding": [{"code": "RASH", "display": "Rash"}], "text": "Rash"}]


def test_an_invalid_observation_time_is_said_before_the_reports_is_used():
    c = conv("ORU^R01", PID + PV1 + "OBR|1||F1|P^检查^L|||20240115080000+0800\r"
             "OBX|1|NM|GLU^血糖^L||5.6|mmol/L|||||F|||20240230120000\r")
    (o,) = by_type(c, "Observation")
    assert o["effectiveDateTime"] == "2024-01-15T08:00:00+08:00"
    assert [f for f in c.findings if f.rule == "v2.obx-14.invalid" and f.location == "OBX-14"]


def test_a_reference_range_sent_in_repetitions_is_kept_whole():
    c = conv("ORU^R01", PID + PV1 + "OBR|1||F1|P^检查^L\r"
             "OBX|1|NM|K^钾^L||4.1|mmol/L|3.5~5.5||||F\r")
    (o,) = by_type(c, "Observation")
    assert o["referenceRange"] == [{"text": "3.5~5.5"}]


def test_a_procedure_keeps_its_people_roles_description_type_and_reason():
    pr1 = ["1", "", "31.1^气管切开^ICD9CM", "气管切开术", "20240115100000+0800", "A^麻醉^L", "45",
           "D01^赵^麻醉师"] + ["", ""] + ["D02^钱^外科医生", ""] + [""] * 2 + ["J96.0^呼吸衰竭^I10"]
    c = conv("ADT^A01", PID + PV1 + "PR1|" + "|".join(pr1) + "\r")
    (p,) = by_type(c, "Procedure")
    assert [x["function"]["text"] for x in p["performer"]] == ["anesthesiologist", "surgeon"]
    assert p["reasonCode"][0]["coding"][0]["code"] == "J96.0"
    assert p["category"]["coding"][0]["code"] == "A"
    assert {"text": "气管切开术"} in p["note"] and {"text": "anesthesia minutes: 45"} in p["note"]


def test_orm_diet_order_is_a_nutrition_order():
    c = conv("ORM^O01", PID + PV1 + "ORC|NW|D100|||||||20240315090000\r"
             "ODS|D||LS^低盐饮食^L|每日食盐少于5克\rODS|S||ENS^肠内营养粉^L\rODS|P||VEG^素食^L\rNTE|1||忌辛辣\r")
    (no,) = by_type(c, "NutritionOrder")
    assert no["status"] == "active" and no["intent"] == "order" and no["dateTime"] == "2024-03-15T09:00:00+08:00"
    assert no["oralDiet"] == {"type": [{"coding": [{"code": "LS", "display": "低盐饮食"}], "text": "低盐饮食"}],
                              "instruction": "每日食盐少于5克"}
    assert no["supplement"][0]["type"]["text"] == "肠内营养粉"
    assert no["foodPreferenceModifier"][0]["text"] == "素食" and no["note"] == [{"text": "忌辛辣"}]
    assert no["identifier"][0]["value"] == "D100"


def test_orm_supply_order_is_a_supply_request():
    c = conv("ORM^O01", PID + "ORC|NW|S100|||||||20240315090000\rRQD|1|G01^无菌纱布^L|||20|BAO^包|||ICU^重症监护室|20240316\r"
             "RQD|2|||||5\r")
    (sr,) = by_type(c, "SupplyRequest")
    assert sr["itemCodeableConcept"]["text"] == "无菌纱布" and sr["quantity"] == {"value": 20, "unit": "包"}
    assert sr["occurrenceDateTime"] == "2024-03-16" and sr["deliverTo"] == {"display": "重症监护室"}
    assert any(f.rule == "v2.rqd.incomplete" and f.location == "RQD[2]-2" for f in c.findings)


def test_orm_without_any_order_detail_is_refused():
    with pytest.raises(MappingError) as e:
        conv("ORM^O01", PID + "ORC|NW|X1\r")
    assert e.value.rule == "v2.obr.missing" and "ODS" in e.value.reason


PRB = "PRB|{action}|20240315|I10^高血压^I10|PRB001|||20230101||||||C^confirmed|A^active||20220601\r"


def test_problem_add_update_delete():
    add = conv("PPR^PC1", PID + PV1 + PRB.format(action="AD") + "NTE|1||家族史阳性\r"
               "OBX|1|NM|8480-6^收缩压^LN||160|mm[Hg]|90-140|H|||F\r")
    (cond,) = by_type(add, "Condition")
    assert cond["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert cond["clinicalStatus"]["coding"][0]["code"] == "active"
    assert cond["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert cond["onsetDateTime"] == "2022-06-01" and cond["recordedDate"] == "2023-01-01"
    assert cond["note"] == [{"text": "家族史阳性"}] and cond["identifier"][0]["value"] == "PRB001"
    (obs,) = by_type(add, "Observation")
    assert cond["evidence"] == [{"detail": [{"reference": f"Observation/{obs['id']}"}]}]
    update = conv("PPR^PC2", PID + PV1 + PRB.format(action="UP").replace("A^active", "R^resolved"), "C2")
    assert by_type(update, "Condition")[0]["id"] == cond["id"]
    assert by_type(update, "Condition")[0]["clinicalStatus"]["coding"][0]["code"] == "resolved"
    delete = conv("PPR^PC3", PID + PV1 + PRB.format(action="DE"), "C3")
    (gone,) = by_type(delete, "Condition")
    assert gone["id"] == cond["id"] and "clinicalStatus" not in gone
    assert gone["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert by_type(delete, "Provenance")[0]["activity"]["coding"][0]["code"] == "deprecate"


def test_bar_and_dft_keep_their_results():
    bar = conv("BAR^P01", "EVN|P01\r" + PID + PV1 + "OBX|1|NM|29463-7^体重^LN||65|kg|||||F\r")
    assert by_type(bar, "Observation")[0]["valueQuantity"]["value"] == 65
    dft = conv("DFT^P03", "EVN|P03\r" + PID + PV1 + "FT1|1|T1||20240315||CG|F01^血常规^L|||1|20.00&CNY\r"
               "ORC|RE|P1|F1\rOBR|1|P1|F1|CBC^血常规^L\rOBX|1|NM|6690-2^白细胞^LN||5.2|10*9/L|||||F\r")
    (sr,), (rep,), (obs,) = by_type(dft, "ServiceRequest"), by_type(dft, "DiagnosticReport"), by_type(dft, "Observation")
    assert rep["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}] and rep["result"][0]["reference"].endswith(obs["id"])
    assert len(by_type(dft, "ChargeItem")) == 1


def test_every_obr_is_an_order_and_a_report_with_its_specimen():
    c = conv("ORU^R01", PID + PV1 + "ORC|RE|P1|F1\rOBR|1|P1|F1|CBC^血常规^L|||20240315080000\r"
             "OBX|1|NM|6690-2^白细胞^LN||5.2|10*9/L|||||F\rSPM|1|S1^^^^|SP2|BLD^全血^HL70487|||||||||||||20240315075000\r"
             "OBR|2|P2|F2|GLU^葡萄糖^L|||20240315080000||||||||SER^血清\r"
             "OBX|1|NM|2345-7^葡萄糖^LN||5.6|mmol/L|||||F\r", )
    reports = {r["code"]["coding"][0]["code"]: r for r in by_type(c, "DiagnosticReport")}
    orders = {r["code"]["coding"][0]["code"]: r for r in by_type(c, "ServiceRequest")}
    specimens = {s["type"]["coding"][0]["code"]: s for s in by_type(c, "Specimen")}
    assert set(reports) == set(orders) == {"CBC", "GLU"} and set(specimens) == {"BLD", "SER"}
    for code, spec in (("CBC", "BLD"), ("GLU", "SER")):  # SER from OBR-15 (v2.3/2.4)
        sref = {"reference": f"Specimen/{specimens[spec]['id']}"}
        assert reports[code]["basedOn"] == [{"reference": f"ServiceRequest/{orders[code]['id']}"}]
        assert reports[code]["specimen"] == [sref] and orders[code]["specimen"] == [sref]
        (obs,) = [o for o in by_type(c, "Observation") if {"reference": f"Observation/{o['id']}"} in reports[code]["result"]]
        assert obs["specimen"] == sref and obs["basedOn"] == reports[code]["basedOn"]


def test_nk1_is_a_related_person_with_coded_relationship_and_pid16_keeps_its_system():
    c = conv("ADT^A04", PID + PV1 + "NK1|1|李^秀英|SPO|解放碑街道民族路188号^^重庆^重庆^400010|13800000000"
             + "|" * 28 + "510108198503124519^^^^NNCHN\r")
    (rp,) = by_type(c, "RelatedPerson")
    codings = rp["relationship"][0]["coding"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "SPS"} in codings
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0063", "code": "SPO"} in codings
    assert rp["name"][0]["text"] == "李秀英" and rp["address"][0]["city"] == "重庆"
    assert rp["telecom"] == [{"system": "phone", "value": "13800000000"}]
    assert rp["identifier"][0]["system"] == "urn:oid:2.16.156.10011.1.3"
    marital = by_type(c, "Patient")[0]["maritalStatus"]["coding"]
    assert marital == [{"system": "http://terminology.hl7.org/CodeSystem/v2-0002", "code": "M"},
                       {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M",
                        "display": "Married"}]


def test_every_ais_aig_ail_aip_of_an_appointment_is_kept():
    c = conv("SIU^S12", "SCH|A1|F1|||||复诊^复诊^L|||30|MIN\r" + PID + PV1 +
             "RGS|1\rAIS|1||CT^CT检查^L|20240320090000\rAIS|2||MRI^磁共振^L|20240320100000\r"
             "AIG|1||DEV1^CT机\rAIG|2||DEV2^MRI机\rAIL|1||放射科^101\rAIL|2||放射科^102\r"
             "AIP|1||D1^张^医生\rAIP|2||D2^李^医生\r")
    (appt,) = by_type(c, "Appointment")
    assert [s["coding"][0]["code"] for s in appt["serviceType"]] == ["CT", "MRI"]
    requests = by_type(c, "ServiceRequest")
    assert sorted(r["code"]["coding"][0]["code"] for r in requests) == ["CT", "MRI"]
    assert sorted(b["reference"] for b in appt["basedOn"]) == sorted(f"ServiceRequest/{r['id']}" for r in requests)
    actors = [p["actor"].get("display", "") for p in appt["participant"]]
    assert {"CT机", "MRI机", "放射科 / 101", "放射科 / 102", "张医生", "李医生"} <= set(actors)


def test_iam_reactions_from_iar_and_pd1_primary_care():
    c = conv("ADT^A60", PID + "PD1|||社区卫生服务中心|D9^赵^全科\r" + PV1 +
             "IAM|1|FA^食物过敏^HL70127|P01^花生^L|||A|A1\rIAR|R1^皮疹^L|MO^Moderate|AL|口服抗组胺药\r"
             "IAR|R2^呼吸困难^L|SV\r")
    (al,) = by_type(c, "AllergyIntolerance")
    assert [r["manifestation"][0]["text"] for r in al["reaction"]] == ["皮疹", "呼吸困难"]
    assert [r["severity"] for r in al["reaction"]] == ["moderate", "severe"]
    assert al["reaction"][0]["note"] == [{"text": "口服抗组胺药"}]
    gp = by_type(c, "Patient")[0]["generalPractitioner"]
    assert gp[0]["display"] == "赵全科" and gp[1] == {"display": "社区卫生服务中心"}


def test_visit_roles_are_encounter_participants():
    c = conv("ADT^A01", PID + PV1 + "ROL|1|AD|AT^Attending^HL70443|D1^张^医生|20240315080000\r"
             "PRT|1|AD||RP^Referring^HL70912|D2^李^医生\rPRT|2|AD||PP^Primary Care^HL70912|D3^赵^医生\r")
    parts = {p["individual"]["display"]: p for p in by_type(c, "Encounter")[0]["participant"]}
    assert parts["张医生"]["type"][0]["coding"][0]["code"] == "ATND"
    assert parts["张医生"]["period"] == {"start": "2024-03-15T08:00:00+08:00"}
    assert parts["李医生"]["type"][0]["coding"][0]["code"] == "REF"
    assert parts["赵医生"]["type"][0]["coding"][0]["code"] == "PP"  # no v3 type: the sender's coding


def test_referral_providers():
    c = conv("REF^I12", "RF1|A^Accepted|||||R1\rPRD|RP^Referring^HL70286|王^医生|人民路1号^^重庆||||P001\r"
             "PRD|RT^Referred to^HL70286|陈^医生|||||-\r" + PID + "ORC|NW|P1\rOBR|1|P1||GI^胃镜^L\r")
    (sr,) = by_type(c, "ServiceRequest")
    pracs = {p["name"][0]["text"]: p for p in by_type(c, "Practitioner")}
    assert sr["requester"]["reference"] == f"Practitioner/{pracs['王医生']['id']}"
    assert sr["performer"] == [{"reference": f"Practitioner/{pracs['陈医生']['id']}", "display": "陈医生"}]
    assert pracs["王医生"]["identifier"][0]["value"] == "P001" and "identifier" not in pracs["陈医生"]


def test_compound_components_dose_limits_and_supplier():
    c = conv("RDE^O11", PID + "ORC|NW|P1\rRXE||IVB^静脉营养液^L|1||BAG^袋\rRXC|B|NS^生理盐水^L|250|ML^毫升\r"
             "RXC|A|KCL^氯化钾^L|1|G^克|10|mg/mL^mg/mL\rCDO|1|A|3^g|1^d\r")
    (med,), (mr,) = by_type(c, "Medication"), by_type(c, "MedicationRequest")
    assert mr["medicationReference"] == {"reference": f"Medication/{med['id']}"}
    assert [(i["itemCodeableConcept"]["text"], i["isActive"]) for i in med["ingredient"]] == [("生理盐水", False), ("氯化钾", True)]
    assert med["ingredient"][1]["strength"] == {"numerator": {"value": 10, "unit": "mg/mL"},
                                                "denominator": {"value": 1}}  # rat-1
    assert mr["dosageInstruction"][0]["maxDosePerPeriod"] == {"numerator": {"value": 3, "unit": "g"},
                                                              "denominator": {"value": 1, "unit": "d", "code": "d",
                                                                              "system": "http://unitsofmeasure.org"}}
    sup = conv("ORM^O01", PID + "ORC|NW|S1\rRQD|1|G01^纱布^L|||2\rRQ1||M1|医用材料厂|V1|某某供应商\r")
    assert by_type(sup, "SupplyRequest")[0]["supplier"] == [{"display": "某某供应商"}]


@pytest.mark.parametrize("kind, body", [
    ("ORM^O01", "ORC|NW|P1\rOBR|1|P1||CT^CT^L\r"),
    ("ORU^R01", "OBR|1|P1|F1|CT^CT^L\rOBX|1|ST|X^X^L||ok||||||F\r"),
    ("RDE^O11", "ORC|NW|P1\rRXE||A1^阿莫西林^L|1||g\r"),
])
def test_charges_travel_with_orders_and_results(kind, body):
    c = conv(kind, PID + PV1 + body + "FT1|1|T9||20240315||CG|F01^检查费^L|||1|80.00&CNY\r")
    (item,) = by_type(c, "ChargeItem")
    assert item["code"]["text"] == "检查费" and item["priceOverride"]["currency"] == "CNY"
    assert orjson.loads(orjson.dumps(item["priceOverride"]["value"])) == 80


def test_fixture_problem_list_and_mixed_orders():
    from tests.test_hl7v2_mapping import conv as fixture_conv

    ppr = fixture_conv("ppr_pc1_cn.hl7")
    conds = {c["code"]["coding"][0]["code"]: c for c in by_type(ppr, "Condition")}
    assert conds["I10.x00"]["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert conds["E11.900"]["verificationStatus"]["coding"][0]["code"] == "provisional"
    assert len(conds["I10.x00"]["evidence"][0]["detail"]) == 2 and "evidence" not in conds["E11.900"]
    assert not ppr.findings
    orm = fixture_conv("orm_o01_diet_supply_cn.hl7")
    kinds = sorted(r["resourceType"] for r in orm.resources if r["resourceType"] in (
        "NutritionOrder", "SupplyRequest", "MedicationRequest", "ChargeItem", "ServiceRequest"))
    assert kinds == ["ChargeItem", "MedicationRequest", "NutritionOrder", "SupplyRequest"]
    assert by_type(orm, "SupplyRequest")[0]["supplier"] == [{"display": "某某医疗器械公司"}]
    assert by_type(orm, "MedicationRequest")[0]["dosageInstruction"][0]["route"]["coding"][0]["system"] == V2_0162
    assert not orm.findings


def test_order_participations_from_prt():
    c = conv("ORU^R01", PID + PV1 + "ORC|RE|P1|F1\rPRT|1|AD||OP^Order Provider^HL70912|D1^张^医生\r"
             "OBR|1|P1|F1|CBC^血常规^L|||20240315080000\rPRT|2|AD||PRI^Principal Result Interpreter^HL70912|D2^李^医生\r"
             "PRT|3|AD||TN^Technician^HL70912|T1^赵^技师\rOBX|1|NM|6690-2^白细胞^LN||5.2|10*9/L|||||F\r"
             "PRT|4|AD||RO^Responsible Observer^HL70912|T2^钱^技师\r")
    (sr,), (rep,) = by_type(c, "ServiceRequest"), by_type(c, "DiagnosticReport")
    assert sr["requester"]["display"] == "张医生" and [p["display"] for p in sr["performer"]] == ["赵技师"]
    assert [p["display"] for p in rep["resultsInterpreter"]] == ["李医生"]
    assert [p.get("display") for p in rep["performer"][1:]] == ["赵技师"]


def test_a_visits_diagnoses_keep_their_type_and_rank():
    """DG1-6 (admitting, working, final) and DG1-15 (priority) were not mapped: a visit's
    principal diagnosis could not be told from its others."""
    c = conv("ADT^A01", "EVN|A01|20240315083000\r" + PID + PV1
             + "DG1|1||I21.9^急性心肌梗死^I10||20240315|A|||||||||2\r"
             + "DG1|2||I10^高血压^I10||20240315|F|||||||||1\r"
             + "DG1|3||E11^糖尿病^I10||20240315|Q|||||||||x\r")
    (enc,) = by_type(c, "Encounter")
    conds = {cd["id"]: cd for cd in by_type(c, "Condition")}
    listed = {d["condition"]["reference"].split("/")[1]: d for d in enc["diagnosis"]}
    assert set(listed) == set(conds)
    by_code = {conds[i]["code"]["coding"][0]["code"]: d for i, d in listed.items()}
    assert by_code["I10"]["rank"] == 1 and by_code["I21.9"]["rank"] == 2
    assert "rank" not in by_code["E11"]  # no number: not a rank, with a finding
    assert by_code["I21.9"]["use"]["coding"][0]["code"] == "AD"
    assert by_code["I10"]["use"]["coding"] == [{"system": "http://terminology.hl7.org/CodeSystem/v2-0052",
                                                "code": "F", "display": "Final"}]
    cats = {cd["code"]["coding"][0]["code"]: cd["category"] for cd in conds.values()}
    assert cats["I10"][1]["coding"][0]["code"] == "F"
    assert cats["E11"][1] == {"text": "Q"}
    rules = {f.rule for f in c.findings}
    assert {"v2.dg1-6.unlisted", "v2.dg1-15.invalid"} <= rules


def obx(*fields: str) -> str:
    return "OBX|" + "|".join(fields) + "\r"


def test_a_results_site_equipment_and_time_of_analysis_are_kept():
    """OBX-18 (the analyser, lowest level first), OBX-19 (when it analysed) and OBX-20 (where on the
    body) were dropped: the Observation's device, its analysis-date-time extension and bodySite."""
    fields = ["1", "NM", "2345-7^葡萄糖^LN", "", "5.6", "mmol/L", "", "", "", "", "F", "", "", "20240315080000",
              "", "", "", "M7^LAB~AU5800-01^LAB~-", "20240315093000", "LA^左臂^HL70163~RA^右臂^HL70163"]
    c = conv("ORU^R01", PID + PV1 + "ORC|RE|P1|F1\rOBR|1|P1|F1|GLU^血糖^L|||20240315080000\r" + obx(*fields))
    (o,) = by_type(c, "Observation")
    assert o["bodySite"]["coding"][0]["code"] == "LA"
    assert {"text": "observation site (OBX-20): 右臂"} in o["note"]
    assert o["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time",
                               "valueDateTime": "2024-03-15T09:30:00+08:00"}]
    devices = {d["id"]: d for d in by_type(c, "Device")}
    module = devices[o["device"]["reference"].split("/")[1]]
    assert module["identifier"][0]["value"] == "M7" and module["identifier"][0]["assigner"] == {"display": "LAB"}
    analyser = devices[module["parent"]["reference"].split("/")[1]]
    assert analyser["identifier"][0]["value"] == "AU5800-01" and "parent" not in analyser
    assert len(devices) == 2  # the filler "-" is no equipment
    assert {(f.rule, f.location) for f in c.findings} >= {("v2.identifier.placeholder", "OBX-18[3]"),
                                                          ("v2.obx-20.repeats", "OBX-20")}
    # one device named twice made each the other's parent; a namespace without a number, nothing
    fields[17] = "A^LAB~B^LAB~A^LAB~^LAB"
    c = conv("ORU^R01", PID + PV1 + "ORC|RE|P1|F1\rOBR|1|P1|F1|GLU^血糖^L|||20240315080000\r" + obx(*fields))
    devices = {d["id"]: d for d in by_type(c, "Device")}
    assert len(devices) == 2 and sum("parent" in d for d in devices.values()) == 1
    assert {f.rule for f in c.findings} >= {"v2.obx-18.repeated"}
    fields[17] = "^LAB"
    c = conv("ORU^R01", PID + PV1 + "ORC|RE|P1|F1\rOBR|1|P1|F1|GLU^血糖^L|||20240315080000\r" + obx(*fields))
    assert not by_type(c, "Device") and "v2.obx-18.no-number" in {f.rule for f in c.findings}


def test_relevant_clinical_information_is_kept_on_the_order():
    """OBR-13 was dropped: as text (ST to v2.6) and coded (CWE), on the ServiceRequest of the order and
    of a result's report, by the IG's R5 supportingInfo extension."""
    url = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ServiceRequest.supportingInfo"
    obr = "OBR|1|P1|F1|GLU^血糖^L|||20240315080000||||||发热3天，空腹~R50.9^发热^I10\r"
    for kind in ("ORM^O01", "ORU^R01"):
        c = conv(kind, PID + PV1 + "ORC|NW|P1|F1\r" + obr + obx("1", "NM", "2345-7^葡萄糖^LN", "", "5.6"))
        (sr,) = by_type(c, "ServiceRequest")
        assert sr["extension"] == [
            {"url": url, "valueCodeableConcept": {"text": "发热3天，空腹"}},
            {"url": url, "valueCodeableConcept": {"coding": [
                {"system": "http://hl7.org/fhir/sid/icd-10", "code": "R50.9", "display": "发热"}], "text": "发热"}}], kind


def test_give_strength_is_the_medications_ingredient_strength():
    """RXE-25/26 (give strength, 500 mg a tablet; RXE-33/34 the volume it is in) were dropped."""
    rxe = ["", "A001^阿莫西林胶囊^L", "2", "", "TAB^片"] + [""] * 19 + ["500", "mg^毫克"]
    c = conv("RDE^O11", PID + PV1 + "ORC|NW|P1|F1\rRXE|" + "|".join(rxe) + "\r")
    (mr,), (med,) = by_type(c, "MedicationRequest"), by_type(c, "Medication")
    assert mr["medicationReference"] == {"reference": f"Medication/{med['id']}"}
    assert med["code"]["coding"][0]["code"] == "A001"
    assert med["ingredient"] == [{"itemCodeableConcept": med["code"],
                                  "strength": {"numerator": {"value": 500, "unit": "毫克"},
                                               "denominator": {"value": 1}}}]  # rat-1
    rxe[5] = "TAB^片"  # a dosage form: per one tablet
    c = conv("RDE^O11", PID + PV1 + "ORC|NW|P1|F1\rRXE|" + "|".join(rxe) + "\r")
    assert by_type(c, "Medication")[0]["ingredient"][0]["strength"]["denominator"] == {
        "value": 1, "unit": "片"}
    def strength(s25: str, s26: str, s33: str, s34: str) -> list[str]:
        return rxe[:24] + [s25, s26] + [""] * 6 + [s33, s34]

    rxe = strength("250", "mg", "5", "mL^毫升")
    c = conv("RDE^O11", PID + PV1 + "ORC|NW|P1|F1\rRXE|" + "|".join(rxe) + "\r")
    assert by_type(c, "Medication")[0]["ingredient"][0]["strength"] == {
        "numerator": {"value": 250, "unit": "mg"}, "denominator": {"value": 5, "unit": "毫升"}}
    # a volume that is no number (5ml) was read as per one: five times too strong; a volume
    # without its strength was dropped. Each is a note of the order, with a finding
    for given, words in ((("250", "mg", "5ml", "mL"), "250 mg 5ml mL"), (("", "", "5", "mL"), "5 mL")):
        c = conv("RDE^O11", PID + PV1 + "ORC|NW|P1|F1\rRXE|" + "|".join(strength(*given)) + "\r")
        assert not by_type(c, "Medication")
        (mr,) = by_type(c, "MedicationRequest")
        assert any(words in n["text"] for n in mr["note"]), mr.get("note")
        assert "v2.rxe-25.as-note" in [f.rule for f in c.findings]


def test_a_note_about_the_patient_is_kept_on_the_patient():
    """An NTE right after PID (and after PD1) was dropped: the Patient's note extensions."""
    c = conv("ADT^A01", "EVN|A01|20240315083000\r" + PID + "NTE|1||对青霉素过敏史不详，家属代述\r"
             "PD1||||D1^王^医生\rNTE|2||听力障碍，需书面沟通||D7^李^护士|20240315090000\r" + PV1
             + "NTE|3||访视备注\r")
    (pat,) = by_type(c, "Patient")
    notes = [e["valueAnnotation"] for e in pat["extension"] if e["url"] == "http://hl7.org/fhir/StructureDefinition/note"]
    (nurse,) = [p for p in by_type(c, "Practitioner") if p["identifier"][0]["value"] == "D7"]
    assert notes == [{"text": "对青霉素过敏史不详，家属代述"},
                     {"text": "听力障碍，需书面沟通", "time": "2024-03-15T09:00:00+08:00",
                      "authorReference": {"reference": f"Practitioner/{nurse['id']}", "display": "李护士"}}]
    siu = conv("SIU^S12", "SCH|A1|A1|||||||30|min|^^30^20240316090000\rNTE|1||空腹前来\r" + PID
               + "NTE|1||轮椅\r")
    assert by_type(siu, "Appointment")[0]["comment"] == "空腹前来"
    assert [e["valueAnnotation"]["text"] for e in by_type(siu, "Patient")[0]["extension"]
            if e["url"].endswith("/note")] == ["轮椅"]


@pytest.mark.parametrize("vt, value, element, expected", [
    ("CE", "L-25116^大肠埃希菌^SNM~L-24801^肺炎克雷伯菌^SNM", "valueCodeableConcept",
     ["大肠埃希菌", "肺炎克雷伯菌"]),
    ("NM", "60~120", "valueQuantity", [60, 120]),
])
def test_every_repetition_of_a_result_is_kept_as_a_component(vt, value, element, expected):
    """A repeating OBX-5 (two organisms, two readings) kept its first value, with a finding."""
    c = conv("ORU^R01", PID + PV1 + "ORC|RE|P1|F1\rOBR|1|P1|F1|CUL^培养^L|||20240315080000\r"
             + obx("1", vt, "600-7^培养结果^LN", "", value, "mmHg" if vt == "NM" else "", "50-150", "", "", "", "F"))
    (o,) = by_type(c, "Observation")
    assert not any(k.startswith("value") for k in o) and "referenceRange" not in o
    got = [comp[element] for comp in o["component"]]
    assert [g["coding"][0]["display"] if vt == "CE" else g["value"] for g in got] == expected
    assert all(comp["code"] == o["code"] for comp in o["component"])
    if vt == "NM":
        assert got[0]["unit"] == "mmHg" and o["component"][1]["referenceRange"][0]["high"]["value"] == 150
    assert not [f for f in c.findings if f.rule.startswith("v2.obx-5")]
    # empty repetitions (60~~120, ~5) hold nothing: no false "not a number" warning
    c = conv("ORU^R01", PID + PV1 + "ORC|RE|P1|F1\rOBR|1|P1|F1|CUL^培养^L|||20240315080000\r"
             + obx("1", vt, "600-7^培养结果^LN", "", "~" + value.replace("~", "~~"),
                   "mmHg" if vt == "NM" else "", "", "", "", "", "F"))
    (o,) = by_type(c, "Observation")
    assert len(o["component"]) == len(expected)
    assert not [f for f in c.findings if f.rule.startswith("v2.obx-5")]


def test_a_date_only_report_time_is_no_made_up_instant():
    """OBR-22 20240315 (a day) became issued 2024-03-15T00:00:00+08:00, a time nobody sent."""
    obr = ["OBR", "1", "P1", "F1", "GLU^血糖^L", "", "", "20240315080000"] + [""] * 14 + ["{}", "", "", "F"]
    body = PID + PV1 + "ORC|RE|P1|F1\r" + "|".join(obr) + "\r"
    (rep,) = by_type(conv("ORU^R01", body.format("20240315")), "DiagnosticReport")
    assert "issued" not in rep
    assert rep["_issued"] == {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/originalText",
                                             "valueString": "20240315"}]}
    (rep,) = by_type(conv("ORU^R01", body.format("202403151030")), "DiagnosticReport")
    assert rep["issued"] == "2024-03-15T10:30:00+08:00" and "_issued" not in rep


def test_a_date_only_document_time_is_no_made_up_instant():
    """TXA-4 20240315 (a day) became the DocumentReference's date at midnight, a time nobody sent;
    with its hour it is the date, and TXA-6 stands in when TXA-4 is empty."""
    def doc(txa4: str, txa6: str = "") -> dict:
        c = conv("MDM^T02", PID + f"TXA|1|DS|TX|{txa4}||{txa6}||||||D1\rOBX|1|TX|X^出院小结^L||正文\r")
        (ref,) = by_type(c, "DocumentReference")
        return ref
    ref = doc("20240315")
    assert "date" not in ref
    assert ref["_date"] == {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/originalText",
                                           "valueString": "20240315"}]}
    assert doc("202403151030")["date"] == "2024-03-15T10:30:00+08:00"
    assert doc("", "20240316080000")["date"] == "2024-03-16T08:00:00+08:00"
    # TXA-4 no instant (invalid, or a date only): TXA-6 is, and is the date
    for txa4 in ("bogus", "20240315"):
        assert doc(txa4, "20240315093000")["date"] == "2024-03-15T09:30:00+08:00", txa4


NTE_BY = "NTE|1||请一周后复查||D9^张^医生|20240315100000+0800\r"


@pytest.mark.parametrize("kind, body, rtype", [
    ("ORU^R01", "OBR|1||F1|CBC^血常规^L\rOBX|1|NM|WBC^白细胞^L||5.6|10*9/L|||||F\r" + NTE_BY, "Observation"),
    ("ORM^O01", "ORC|NW|P1|F1\rOBR|1|P1|F1|CBC^血常规^L\r" + NTE_BY, "ServiceRequest"),
    ("RDE^O11", "ORC|NW|P1|F1\rRXE||A001^阿莫西林^L|0.5||g^克\r" + NTE_BY, "MedicationRequest"),
    ("RDE^O11", "ORC|NW|P1|F1\rRXE||A001^阿莫西林^L|0.5||g^克\rOBX|1|NM|29463-7^Body weight^LN||65|kg|||||F\r"
     + NTE_BY, "Observation"),
    ("ORM^O01", "ORC|NW|D100\rODS|D||LS^低盐饮食^L\r" + NTE_BY, "NutritionOrder"),
    ("PPR^PC1", PRB.format(action="AD") + NTE_BY, "Condition"),
    ("ADT^A60", "IAM|1|FA^食物过敏^HL70127|P01^花生^L|||A|A1\r" + NTE_BY, "AllergyIntolerance"),
])
def test_a_note_keeps_who_wrote_it_and_when(kind, body, rtype):
    """NTE-5 (entered by) and NTE-6 (entered date/time) were dropped from the notes of results,
    orders and problems: the note's author (a Practitioner) and its time, by the v2-to-FHIR IG."""
    c = conv(kind, PID + PV1 + body)
    (res,) = by_type(c, rtype)
    (doctor,) = [p for p in by_type(c, "Practitioner") if p.get("identifier", [{}])[0].get("value") == "D9"]
    (note,) = res["note"]
    assert note == {"text": "请一周后复查", "time": "2024-03-15T10:00:00+08:00",
                    "authorReference": {"reference": f"Practitioner/{doctor['id']}", "display": "张医生"}}


@pytest.mark.parametrize("nte, note, finding", [
    ("NTE|1||复查||^李^护士|20240315\r", {"text": "复查", "time": "2024-03-15", "authorString": "李护士"}, False),
    ("NTE|1||复查~空腹|||2024031599\r", {"text": "复查\n空腹"}, True),
])
def test_a_note_without_an_author_id_or_a_valid_time(nte, note, finding):
    """A name without an id is the author's name; a time that is none is reported, the note kept."""
    c = conv("ORU^R01", PID + PV1 + "OBR|1||F1|CBC^血常规^L\rOBX|1|NM|WBC^白细胞^L||5.6|10*9/L|||||F\r" + nte)
    (obs,) = by_type(c, "Observation")
    assert obs["note"] == [note]
    assert ("v2.nte-6.invalid" in [f.rule for f in c.findings]) == finding


IAM = "IAM|1|FA^食物过敏^HL70127|P01^花生^L|||A|A1\r"


@pytest.mark.parametrize("body, allergy_notes, reaction_notes, finding", [
    # a note on the allergy, then one on its reaction (after the management IAR-4 kept as a note)
    (IAM + "NTE|1||家属代述\rIAR|R1^皮疹^L|MO||口服抗组胺药\rNTE|1||2小时后消退\r",
     ["家属代述"], [["口服抗组胺药", "2小时后消退"]], False),
    # notes on each of two reactions
    (IAM + "IAR|R1^皮疹^L\rNTE|1||面部\rIAR|R2^呼吸困难^L|SV\rNTE|1||需急救~已吸氧\r",
     [], [["面部"], ["需急救\n已吸氧"]], False),
    # an IAR without its reaction is reported; the note after it stays with the allergy
    (IAM + "IAR|||||\rNTE|1||反应不详\r", ["反应不详"], [], True),
])
def test_the_notes_of_an_allergy_and_its_reactions(body, allergy_notes, reaction_notes, finding):
    """The NTE after IAM and IAR were skipped without a finding: each is the allergy's note, or,
    after an IAR, its reaction's."""
    c = conv("ADT^A60", PID + PV1 + body)
    (al,) = by_type(c, "AllergyIntolerance")
    assert [n["text"] for n in al.get("note", [])] == allergy_notes
    assert [[n["text"] for n in r.get("note", [])] for r in al.get("reaction", [])] == reaction_notes
    assert ("v2.iar-1.missing" in [f.rule for f in c.findings]) == finding


V2_0335 = "http://terminology.hl7.org/CodeSystem/v2-0335"
UCUM = "http://unitsofmeasure.org"
START, END = "2024-01-15T10:00:00+08:00", "2024-01-16T10:00:00+08:00"
ORDER = "ORC|NW|P1|F1\r"
BLOOD_PRESSURE = "OBR|1|P1|F1|BP^血压监测^L\r"


def tq1(**fields: str) -> str:
    a = [""] * 14
    a[0] = "1"
    for k, v in fields.items():
        a[int(k[1:]) - 1] = v
    return "TQ1|" + "|".join(a).rstrip("|") + "\r"


@pytest.mark.parametrize("kind, body, expected, rules", [
    # a repeat pattern with its course and priority (after the ORC, as OML/OMG send it)
    ("OML^O21", ORDER + tq1(f3="Q8H", f7="20240115100000+0800", f8="20240116100000+0800", f9="S") + BLOOD_PRESSURE,
     {"priority": "stat", "occurrenceTiming": {"code": {"coding": [{"system": V2_0335, "code": "Q8H"}], "text": "Q8H"},
      "repeat": {"frequency": 1, "period": 8, "periodUnit": "h", "boundsPeriod": {"start": START, "end": END}}}}, []),
    # a start and end alone: a Period; a start alone: a dateTime (after the OBR, as ORU sends it)
    ("ORM^O01", ORDER + BLOOD_PRESSURE + tq1(f7="20240115100000+0800", f8="20240116100000+0800"),
     {"occurrencePeriod": {"start": START, "end": END}}, []),
    ("ORM^O01", ORDER + BLOOD_PRESSURE + tq1(f7="20240115100000+0800", f9="A"),
     {"occurrenceDateTime": START, "priority": "asap"}, []),
    # quantity, explicit times, occurrence duration, total occurrences, condition and instruction
    ("ORM^O01", ORDER + BLOOD_PRESSURE + tq1(f2="1^次", f3="BID", f4="0800~2000", f10="收缩压>160时",
                                             f11="卧位测量", f13="30^min", f14="6"),
     {"quantityQuantity": {"value": 1, "unit": "次"}, "asNeededCodeableConcept": {"text": "收缩压>160时"},
      "note": [{"text": "卧位测量"}],
      "occurrenceTiming": {"code": {"coding": [{"system": V2_0335, "code": "BID"}], "text": "BID"}, "repeat": {
          "frequency": 2, "period": 1, "periodUnit": "d", "timeOfDay": ["08:00:00", "20:00:00"],
          "duration": 30, "durationUnit": "min", "count": 6}}}, []),
    # TQ1-9 before OBR-5 (kept by v2.5 for old senders)
    ("ORU^R01", "OBR|1|P1|F1|BP^血压监测^L|R||20240115103000+0800\r" + tq1(f7="20240115100000+0800", f9="S"),
     {"priority": "stat", "occurrenceDateTime": START}, []),
    # a sequence: every 15 minutes for an hour, then every 2 hours: the first the occurrence, the second a note
    ("OML^O21", ORDER + tq1(f3="Q15M", f6="1^H") + tq1(f1="2", f3="Q2H", f6="1^D") + BLOOD_PRESSURE,
     {"occurrenceTiming": {"code": {"coding": [{"system": V2_0335, "code": "Q15M"}], "text": "Q15M"}, "repeat": {
         "frequency": 1, "period": 15, "periodUnit": "min", "boundsDuration": {
             "value": 1, "unit": "h", "system": UCUM, "code": "h"}}},
      "note": [{"text": "then (TQ1 2): repeat Q2H; for 1 D"}]}, ["v2.tq1.further"]),
    # an order's own observation time beside its TQ1 timing is a note; TQ1-5 is the timing's text
    ("ORM^O01", ORDER + "OBR|1|P1|F1|BP^血压监测^L|||20240114080000+0800\r" + tq1(f3="QD", f5="1^H"),
     {"occurrenceTiming": {"code": {"coding": [{"system": V2_0335, "code": "QD"}], "text": "QD relative 1^H"},
                           "repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
      "note": [{"text": "observation date/time (OBR-7): 2024-01-14T08:00:00+08:00"}]},
     ["v2.tq1-5.as-text", "v2.obr-time.beside-tq1"]),
    # the order's instruction stays the order's, its result's note the result's
    ("ORM^O01", ORDER + BLOOD_PRESSURE + tq1(f11="卧位测量") + "OBX|1|NM|8480-6^收缩压^LN||150|mm[Hg]|||||F\r"
     "NTE|1||测量前休息5分钟\r", {"note": [{"text": "卧位测量"}]}, []),
])
def test_the_timing_of_a_service_order(kind, body, expected, rules):
    """TQ1 of an ORC/OBR order was not mapped at all: its timing, course, priority, quantity, condition
    and instruction are the ServiceRequest's, by the v2-to-FHIR IG's TQ1[ServiceRequest] map."""
    c = conv(kind, PID + PV1 + body)
    (sr,) = by_type(c, "ServiceRequest")
    assert {k: sr.get(k) for k in expected} == expected
    assert [f.rule for f in c.findings if f.rule in ("v2.tq1.further", "v2.tq1-5.as-text",
                                                     "v2.obr-time.beside-tq1")] == rules


def test_a_medication_timing_keeps_its_times_duration_and_count():
    """TQ1-4 (explicit times), TQ1-13 (occurrence duration) and TQ1-14 (total occurrences) were
    dropped from a medication's timing too."""
    c = conv("RDE^O11", PID + PV1 + ORDER + tq1(f3="BID", f4="0800~2000", f13="30^min", f14="6")
             + "RXE||A001^阿莫西林^L|0.5||g^克\r")
    (mr,) = by_type(c, "MedicationRequest")
    assert mr["dosageInstruction"][0]["timing"]["repeat"] == {
        "frequency": 2, "period": 1, "periodUnit": "d", "timeOfDay": ["08:00:00", "20:00:00"],
        "duration": 30, "durationUnit": "min", "count": 6}
