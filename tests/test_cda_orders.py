"""Prescriptions and orders: WS/T 500 西药处方 / 中药处方 become MedicationRequests carrying their dose,
route, frequency, quantity and validity; non-drug orders and 出院医嘱 become ServiceRequests."""

from __future__ import annotations

import pytest

from fhir_mapping.cda import convert_traced
from tests.cda_docs import SRC, VALID_ID, by_type, ident, wst500
from tests.test_cda_helpers import check_no_silent_drops, invalid_resources

DE = 'codeSystem="2.16.156.10011.2.2.1"'
IDS = ident("2.16.156.10011.1.3", VALID_ID) + ident("2.16.156.10011.1.20", "CF20240312001")


def obs(code, label, value, mood="EVN"):
    return (f'<observation classCode="OBS" moodCode="{mood}"><code code="{code}" {DE} displayName="{label}"/>'
            f'{value}</observation>')


def rel(inner):
    return f'<entryRelationship typeCode="COMP">{inner}</entryRelationship>'


def drug(name, dose, unit, freq, total):
    return (f'<substanceAdministration classCode="SBADM" moodCode="EVN"><text/>'
            '<routeCode code="1" displayName="口服" codeSystem="2.16.156.10011.2.3.1.158"/>'
            f'<doseQuantity value="{dose}" unit="{unit}"/><rateQuantity><translation code="01" displayName="{freq}"/>'
            '</rateQuantity><consumable><manufacturedProduct><manufacturedLabeledDrug><code/>'
            f'<name>{name}</name></manufacturedLabeledDrug></manufacturedProduct></consumable>'
            + rel(obs("DE08.50.043.00", "药物规格", '<value xsi:type="ST">0.25g*24片</value>'))
            + rel(obs("DE06.00.135.00", "药物使用总剂量", f'<value xsi:type="PQ" value="{total}" unit="{unit}"/>'))
            + "</substanceAdministration>")


def section(code, *entries):
    return (f'<component><section><code code="{code}" codeSystem="2.16.840.1.113883.6.1"/>'
            + "".join(f"<entry>{e}</entry>" for e in entries) + "</section></component>")


def run(sections, **kw):
    conv, trace = convert_traced(wst500(sections=sections, patient_ids=IDS, **kw), SRC)
    assert invalid_resources(conv) == []
    check_no_silent_drops(conv, trace)
    return conv, by_type(conv)


def test_western_prescription():
    conv, t = run(section("10160-0", drug("阿莫西林胶囊", "0.5", "g", "tid", "10.5"),
                          obs("DE06.00.294.00", "处方有效天数", '<value xsi:type="PQ" value="3" unit="天"/>'),
                          drug("布洛芬缓释胶囊", "0.3", "g", "bid", "4.2"),
                          obs("DE08.50.032.00", "处方类别代码",
                              '<value xsi:type="CD" code="2" displayName="西药处方" codeSystem="2.16.156.10011.2.3.2.40"/>')),
                  code="C0004", template="2.16.156.10011.2.1.1.24")
    meds = {m["medicationCodeableConcept"]["text"]: m for m in t["MedicationRequest"]}
    assert set(meds) == {"阿莫西林胶囊", "布洛芬缓释胶囊"}
    m = meds["阿莫西林胶囊"]
    d = m["dosageInstruction"][0]
    assert d["doseAndRate"][0]["doseQuantity"] == {"value": 0.5, "unit": "g", "system": "http://unitsofmeasure.org",
                                                    "code": "g"}
    assert d["route"]["coding"][0]["display"] == "口服" and d["timing"]["code"]["text"] == "tid"
    assert m["dispenseRequest"]["quantity"]["value"] == 10.5
    assert m["dispenseRequest"]["validityPeriod"] == {"start": "2024-03-12", "end": "2024-03-15"}
    assert m["groupIdentifier"]["value"] == "CF20240312001"  # the prescription number, not the patient's
    assert {"code": "2", "display": "西药处方", "system": "urn:oid:2.16.156.10011.2.3.2.40"} in \
        [c for cat in m["category"] for c in cat.get("coding", [])]
    assert m["note"] == [{"text": "药物规格: 0.25g*24片"}]
    assert "Observation" not in t  # every detail is part of its drug
    (p,) = t["Patient"]
    assert [i["value"] for i in p["identifier"]] == [VALID_ID]


def test_herbal_prescription_with_number_of_doses():
    herbal = obs("DE08.50.049.00", "中药饮片处方", '<value xsi:type="ST">黄芪30g 党参15g 白术10g</value>'
                 + rel(obs("DE08.50.050.00", "中药饮片剂数", '<value xsi:type="PQ" value="7" unit="剂"/>'))
                 + rel(obs("DE08.50.047.00", "中药饮片煎煮法", '<value xsi:type="ST">水煎服</value>'))
                 + rel(obs("DE06.00.136.00", "中药用药法", '<value xsi:type="ST">每日一剂，早晚分服</value>')))
    conv, t = run(section("10160-0", herbal), code="C0005", template="2.16.156.10011.2.1.1.25")
    (m,) = t["MedicationRequest"]
    assert m["medicationCodeableConcept"]["text"] == "黄芪30g 党参15g 白术10g"
    assert m["dispenseRequest"]["quantity"] == {"value": 7, "unit": "剂"}
    d = m["dosageInstruction"][0]
    assert d["text"] == "每日一剂，早晚分服" and d["additionalInstruction"] == [{"text": "中药饮片煎煮法: 水煎服"}]


def test_discharge_and_non_drug_orders_are_service_requests():
    conv, t = run(section("46209-3",
                          obs("DE06.00.287.00", "出院医嘱", '<value xsi:type="ST">低盐饮食，两周后门诊复查</value>'),
                          obs("DE06.00.288.00", "医嘱项目内容", '<value xsi:type="ST">一级护理</value>', mood="RQO"),
                          obs("DE06.00.288.00", "医嘱项目内容", '<value xsi:type="ST">无</value>', mood="RQO")))
    srs = sorted(t["ServiceRequest"], key=lambda r: r["code"]["text"])
    assert [s["code"]["text"] for s in srs] == ["一级护理", "出院医嘱"]
    assert srs[1]["patientInstruction"] == "低盐饮食，两周后门诊复查"
    assert all(s["intent"] == "order" and s["subject"] == {"reference":
                                                           f"Patient/{t['Patient'][0]['id']}"} for s in srs)


def _timed(*times: str) -> str:
    return ('<substanceAdministration classCode="SBADM" moodCode="EVN"><text/>' + "".join(times)
            + '<doseQuantity value="0.5" unit="g"/><consumable><manufacturedProduct>'
            '<manufacturedLabeledDrug><code/><name>阿莫西林胶囊</name></manufacturedLabeledDrug>'
            '</manufacturedProduct></consumable></substanceAdministration>')


IVL = ('<effectiveTime xsi:type="IVL_TS"><low value="20240305"/><high value="20240310"/>'
       '</effectiveTime>')


def test_dosing_keeps_its_course_beside_its_frequency_and_events():
    """C-CDA writes the course (IVL_TS) and then the frequency (PIVL_TS): the course was lost
    whenever a frequency followed it; an event (EIVL_TS: at bedtime, before meals) was lost."""
    every8 = '<effectiveTime xsi:type="PIVL_TS" operator="A"><period value="8" unit="hr"/></effectiveTime>'
    _, t = run(section("10160-0", _timed(IVL, every8)))
    rep = t["MedicationRequest"][0]["dosageInstruction"][0]["timing"]["repeat"]
    assert rep["boundsPeriod"] == {"start": "2024-03-05", "end": "2024-03-10"}
    assert (rep["frequency"], rep["period"], rep["periodUnit"]) == (1, 8, "h")
    bedtime = ('<effectiveTime xsi:type="EIVL_TS" operator="A"><event code="ACM"/>'
               '<offset><width value="30" unit="min"/></offset></effectiveTime>')
    _, t = run(section("10160-0", _timed(bedtime, IVL)))
    rep = t["MedicationRequest"][0]["dosageInstruction"][0]["timing"]["repeat"]
    assert rep["when"] == ["ACM"] and rep["offset"] == 30 and "boundsPeriod" in rep
    odd = '<effectiveTime xsi:type="PIVL_TS"><period value="2" unit="fortnight"/></effectiveTime>'
    conv, t = run(section("10160-0", _timed(IVL, odd)))
    assert "period" not in t["MedicationRequest"][0]["dosageInstruction"][0]["timing"]["repeat"]
    assert [f for f in conv.findings if f.rule == "cda.medication.frequency"]


def test_a_frequency_keeps_its_code_beside_its_words():
    """WS/T's frequency (03 每日三次, its code system named) kept only its words."""
    drug_el = drug("阿莫西林胶囊", "0.5", "g", "每日三次", "10.5").replace(
        '<translation code="01" displayName="每日三次"/>',
        '<translation code="03" codeSystem="2.16.156.10011.2.3.1.252" displayName="每日三次"/>')
    _, t = run(section("10160-0", drug_el), code="C0004", template="2.16.156.10011.2.1.1.24")
    code = t["MedicationRequest"][0]["dosageInstruction"][0]["timing"]["code"]
    assert code["text"] == "每日三次" and code["coding"][0]["code"] == "03"
    assert code["coding"][0]["system"].endswith("2.16.156.10011.2.3.1.252")


FORM_EXT = "https://fhir-region-hub.example/StructureDefinition/medication-form"


def test_administration_unit_is_the_drugs_form_and_the_unit_of_a_unitless_dose():
    """administrationUnitCode (the unit one dose is counted in: 片, 粒) was Dosage.method, which says
    how a drug is given (swallow, inject). It is the drug's form (C-CDA on FHIR: Medication.form),
    and the unit of a dose written without one: "1" is one capsule, not "1" of nothing."""
    unit = ('<administrationUnitCode code="4" displayName="胶囊剂" codeSystem="2.16.156.10011.2.3.1.211"'
            ' codeSystemName="药物剂型代码表"/>')
    counted = drug("阿莫西林胶囊", "0.5", "g", "tid", "10.5").replace(
        '<doseQuantity value="0.5" unit="g"/>', '<doseQuantity value="2"/>').replace(
        "<consumable>", unit + "<consumable>", 1)
    weighed = drug("布洛芬缓释胶囊", "0.3", "g", "bid", "4.2").replace(
        "<consumable>", unit + "<consumable>", 1)
    _, t = run(section("10160-0", counted, weighed), code="C0004", template="2.16.156.10011.2.1.1.24")
    meds = {m["medicationCodeableConcept"]["text"]: m for m in t["MedicationRequest"]}
    form = {"coding": [{"system": "urn:oid:2.16.156.10011.2.3.1.211", "code": "4", "display": "胶囊剂"}]}
    for m in meds.values():
        assert "method" not in m["dosageInstruction"][0]
        assert m["extension"] == [{"url": FORM_EXT, "valueCodeableConcept": form}]
    assert meds["阿莫西林胶囊"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == {
        "value": 2, "unit": "胶囊剂", "system": "urn:oid:2.16.156.10011.2.3.1.211", "code": "4"}
    # a dose with a unit of its own keeps it: the form is not its unit
    assert meds["布洛芬缓释胶囊"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == {
        "value": 0.3, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}


def _with_nested_dose(dose_el: str, nested_value: str) -> str:
    el = drug("阿莫西林胶囊", "0.5", "g", "tid", "10.5").replace('<doseQuantity value="0.5" unit="g"/>', dose_el)
    return el.replace("</substanceAdministration>", rel(obs("DE06.00.134.00", "药物使用次剂量", nested_value))
                      + "</substanceAdministration>")


G = {"system": "http://unitsofmeasure.org", "code": "g", "unit": "g"}


@pytest.mark.parametrize("dose_el, nested, want_dose, want_note, warned", [
    # both given and different: the drug's dose is the dosage, the nested one a note with a finding
    ('<doseQuantity value="0.5" unit="g"/>', '<value xsi:type="PQ" value="0.25" unit="g"/>',
     {"value": 0.5, **G}, "药物使用次剂量: 0.25 g", True),
    # the same dose twice says nothing more
    ('<doseQuantity value="0.5" unit="g"/>', '<value xsi:type="PQ" value="0.50" unit="g"/>',
     {"value": 0.5, **G}, None, False),
    # a rate alone is no dose: the nested dose is the dose
    ("", '<value xsi:type="PQ" value="0.25" unit="g"/>', {"value": 0.25, **G}, None, False),
    # a dose in words is kept in words
    ('<doseQuantity value="0.5" unit="g"/>', '<value xsi:type="ST">每次2粒</value>',
     {"value": 0.5, **G}, "药物使用次剂量: 每次2粒", False),
])
def test_a_nested_dose_is_kept_beside_the_drugs_own(dose_el, nested, want_dose, want_note, warned):
    """A dose data element inside a drug that had a dose (or a rate) of its own was marked taken
    and its value dropped."""
    el = _with_nested_dose(dose_el, nested).replace(
        "<rateQuantity>", '<rateQuantity value="2" unit="mL/h">' if not dose_el else "<rateQuantity>")
    conv, t = run(section("10160-0", el), code="C0004", template="2.16.156.10011.2.1.1.24")
    (m,) = t["MedicationRequest"]
    assert m["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == want_dose
    notes = [n["text"] for n in m.get("note", [])]
    assert notes == ["药物规格: 0.25g*24片"] + ([want_note] if want_note else [])
    assert bool([f for f in conv.findings if f.rule == "cda.medication.dose-differs"]) == warned
