"""What a pharmacy order, a person update and a merge say, kept as said: RXE-27 is the indication (not
the strength's volume), every TQ1 with its course length, CDO-4's interval, the OBX of A28/A31, a
document sent outside a report, every PID/MRG pair of an A40. Small messages of our own."""

from __future__ import annotations

import pytest

from fhir_mapping.base import MappingError
from tests.test_hl7v2_depth import PID, PV1, conv
from tests.test_hl7v2_support import by_type

UCUM = "http://unitsofmeasure.org"
ORC = "ORC|NW|P1|F1||||||20240315090000+0800\r"


def rxe(**fields: str) -> str:
    """An RXE with the give code and amount, and ``f<n>`` fields."""
    a = [""] * 40
    a[1:5] = ["P001^泼尼松^L", "5", "", "mg^mg"]
    for k, v in fields.items():
        a[int(k[1:]) - 1] = v
    return "RXE|" + "|".join(a).rstrip("|") + "\r"


def days(n: int, unit: str = "d") -> dict:
    return {"value": n, "unit": unit, "system": UCUM, "code": unit}


def test_rxe_27_is_the_indication_and_33_34_the_strengths_volume():
    """RXE-27 (give indication, 2^肺炎) was read as the volume the strength is in: 0.25 g per 2 "24"."""
    c = conv("RDE^O11", PID + PV1 + ORC + rxe(f25="0.25", f26="g", f27="2^肺炎^L", f28="24"))
    (mr,), (med,) = by_type(c, "MedicationRequest"), by_type(c, "Medication")
    assert mr["reasonCode"] == [{"coding": [{"code": "2", "display": "肺炎"}], "text": "肺炎"}]
    assert med["ingredient"][0]["strength"] == {"numerator": {"value": 0.25, "unit": "g"}, "denominator": {"value": 1}}
    c = conv("RDE^O11", PID + PV1 + ORC + rxe(f25="250", f26="mg", f27="3355", f33="5", f34="mL"))
    (mr,), (med,) = by_type(c, "MedicationRequest"), by_type(c, "Medication")
    assert mr["reasonCode"] == [{"coding": [{"code": "3355"}]}] and "note" not in mr
    assert med["ingredient"][0]["strength"] == {"numerator": {"value": 250, "unit": "mg"},
                                                "denominator": {"value": 5, "unit": "mL"}}


@pytest.mark.parametrize("segments, expected", [
    # TQ1-6 service duration: the course length (3 days) was dropped
    ("TQ1|1||TID|||3^D&day&ISO\r" + rxe(), [{"seq": None, "dose": 5, "repeat": {
        "frequency": 3, "period": 1, "periodUnit": "d", "boundsDuration": days(3)}}]),
    ("TQ1|1||BID|||7^天|20240115080000+0800\r" + rxe(), [{"seq": None, "dose": 5, "repeat": {
        "frequency": 2, "period": 1, "periodUnit": "d", "boundsPeriod": {
            "start": "2024-01-15T08:00:00+08:00", "end": "2024-01-22T08:00:00+08:00"}}}]),
    # a taper: every TQ1 its own dosage with its own quantity; only the first was kept
    ("TQ1|1|2^片|TID|||3^D\rTQ1|2|1^片|QD|||4^D\r" + rxe(), [
        {"seq": 1, "dose": 2, "repeat": {"frequency": 3, "period": 1, "periodUnit": "d", "boundsDuration": days(3)}},
        {"seq": 2, "dose": 1, "repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "boundsDuration": days(4)}}]),
    # the pharmacy's own TQ1 (after RXE) is its order's timing, not the ORC-level one
    ("TQ1|1||TID|||3^D\r" + rxe() + "TQ1|1||Q8H||||20240115100000+0800|20240116100000+0800|S\r", [
        {"seq": None, "dose": 5, "repeat": {"frequency": 1, "period": 8, "periodUnit": "h", "boundsPeriod": {
            "start": "2024-01-15T10:00:00+08:00", "end": "2024-01-16T10:00:00+08:00"}}}]),
])
def test_every_tq1_is_a_dosage_with_its_course(segments, expected):
    c = conv("RDE^O11", PID + PV1 + ORC + segments)
    (mr,) = by_type(c, "MedicationRequest")
    got = [{"seq": d.get("sequence"), "dose": d["doseAndRate"][0]["doseQuantity"]["value"],
            "repeat": d["timing"]["repeat"]} for d in mr["dosageInstruction"]]
    assert got == expected
    assert mr.get("priority") == ("stat" if "|S\r" in segments else None)


def test_a_course_in_no_known_unit_is_the_timings_text():
    c = conv("RDE^O11", PID + PV1 + ORC + "TQ1|1||TID|||3^X\r" + rxe())
    (mr,) = by_type(c, "MedicationRequest")
    assert mr["dosageInstruction"][0]["timing"]["code"]["text"] == "TID for 3^X"
    assert "v2.tq1-6.unit-unknown" in [f.rule for f in c.findings]


@pytest.mark.parametrize("tq1, cdo4, limit", [
    ("", "^D", {"maxDosePerPeriod": {"numerator": {"value": 40, "unit": "mg"}, "denominator": days(1)}}),
    ("", "^M", {"maxDosePerPeriod": {"numerator": {"value": 40, "unit": "mg"}, "denominator": days(1, "mo")}}),
    ("", "2^WK", {"maxDosePerPeriod": {"numerator": {"value": 40, "unit": "mg"}, "denominator": days(2, "wk")}}),
    ("", "^PL", {"maxDosePerLifetime": {"value": 40, "unit": "mg"}}),
    # the order's course (O, or no interval): over its service duration when given
    ("TQ1|1||TID|||3^D\r", "^O", {"maxDosePerPeriod": {"numerator": {"value": 40, "unit": "mg"},
                                                        "denominator": days(3)}}),
    ("TQ1|1||TID|||3^D\r", "", {"maxDosePerPeriod": {"numerator": {"value": 40, "unit": "mg"},
                                                      "denominator": days(3)}}),
    ("", "^O", "cumulative dosage limit (CDO): 40 mg over the order's course"),
    ("", "^X", "cumulative dosage limit (CDO): 40 mg over ^X"),
])
def test_cdo_4_is_the_interval_the_limit_holds_over(tq1, cdo4, limit):
    """CDO|1|A|40^mg|^D (40 mg a day) was a lifetime limit, as was every interval without a number."""
    c = conv("RDE^O11", PID + PV1 + ORC + tq1 + rxe() + f"CDO|1|A|40^mg|{cdo4}\r")
    (mr,) = by_type(c, "MedicationRequest")
    d = mr["dosageInstruction"][0]
    if isinstance(limit, str):
        assert not {"maxDosePerPeriod", "maxDosePerLifetime"} & set(d)
        assert {"text": limit} in mr["note"] and "v2.cdo-4.as-note" in [f.rule for f in c.findings]
    else:
        assert {k: d[k] for k in ("maxDosePerPeriod", "maxDosePerLifetime") if k in d} == limit


def test_rds_keeps_instruction_text_one_compound_and_the_dispense_note():
    c = conv("RDS^O13", PID + PV1 + ORC + "RXC|A|D1^多西环素^L|1|TAB^片\r"
             + rxe(f7="^1 tablet by oral route 2 times daily.") + "RXC|A|D1^多西环素^L|1|TAB^片\r"
             "RXD|1|D1^多西环素^L|20240316|10|TAB^片||||饭后服用\rRXC|A|D1^多西环素^L|1|TAB^片\r")
    (mr,), (med,), (disp,) = (by_type(c, t) for t in ("MedicationRequest", "Medication", "MedicationDispense"))
    assert mr["dosageInstruction"][0]["text"] == "1 tablet by oral route 2 times daily."
    assert [i["itemCodeableConcept"]["text"] for i in med["ingredient"]] == ["多西环素"]
    assert disp["note"] == [{"text": "饭后服用"}]


@pytest.mark.parametrize("kind", ["ADT^A28^ADT_A05", "ADT^A31^ADT_A05"])
def test_a_person_update_keeps_its_observations(kind):
    c = conv(kind, "EVN|A28|20240315\r" + PID + "PV1|1|N\rOBX|1|NM|8867-4^心率^LN||72|/min|||||F\r")
    (obs,) = by_type(c, "Observation")
    assert obs["code"]["coding"][0]["code"] == "8867-4" and obs["valueQuantity"]["value"] == 72


@pytest.mark.parametrize("obx, form", [
    ("OBX|1|ED|11502-2^报告^LN||LIS^AP^PDF^Base64^JVBERi0xLjQK||||||F", {
        "contentType": "application/pdf", "data": "JVBERi0xLjQK", "title": "报告"}),
    ("OBX|1|RP|8867-4^heartrate^LN||https://example.org/r/1^^SD^PICT||||||F", {
        "url": "https://example.org/r/1", "title": "heartrate"}),
])
def test_a_document_outside_a_report_is_a_report_presenting_it(obx, form):
    """An ED/RP OBX outside an OBR group was dropped with a finding saying it was kept."""
    c = conv("ADT^A01", "EVN|A01|20240315\r" + PID + PV1 + obx + "\r")
    (rep,) = by_type(c, "DiagnosticReport")
    assert rep["presentedForm"] == [form] and rep["status"] == "final"
    assert not any("kept" in f.message for f in c.findings if f.rule.startswith("v2.obx-5"))
    c = conv("ADT^A01", "EVN|A01|20240315\r" + PID + PV1 + "OBX|1|ED|11502-2^报告^LN||LIS^AP^PDF^Base64^@@@\r")
    assert not by_type(c, "DiagnosticReport")  # no document: the result is kept as the text sent
    assert [o["valueString"] for o in by_type(c, "Observation")] == ["LIS^AP^PDF^Base64^@@@"]
    assert [f.message for f in c.findings if f.rule == "v2.obx-5.attachment-invalid"] == [
        "OBX-5 ED holds no usable document (data (ED-5) is not valid Base64): the result is kept as the "
        "text sent"]


A40 = "EVN|A40|20240315\rPID|1||MR888^^^^MR||张^三\rMRG|MR111^^^^MR\rPID|2||MR999^^^^MR||李^四\r"


def test_every_pid_mrg_pair_of_a_merge_is_merged():
    """A40 with two pairs merged the first and ignored the second."""
    c = conv("ADT^A40^ADT_A39", A40 + "MRG|MR222^^^^MR\r")
    pats = {p["identifier"][0]["value"]: p for p in by_type(c, "Patient")}
    for survivor, retired in (("MR888", "MR111"), ("MR999", "MR222")):
        assert pats[retired]["active"] is False
        assert pats[retired]["link"] == [{"other": {"reference": f"Patient/{pats[survivor]['id']}"},
                                          "type": "replaced-by"}]
        assert pats[survivor]["link"] == [{"other": {"reference": f"Patient/{pats[retired]['id']}"},
                                           "type": "replaces"}]
    # every pair is mapped, so no finding says the second PID was left out
    assert not [f for f in c.findings if f.rule == "v2.pid.repeated"]
    with pytest.raises(MappingError) as e:  # a pair without its MRG: no pair merged
        conv("ADT^A40^ADT_A39", A40)
    assert e.value.rule == "v2.mrg.unpaired" and "PID 2 of 2" in str(e.value)


def test_a_diagnosis_keeps_its_attestation_time():
    c = conv("ADT^A08", "EVN|A08|20240315\r" + PID + PV1 + "DG1|1||I10^高血压^I10||20240301|F"
             + "|" * 13 + "20240302101500+0800\r")
    (cond,) = by_type(c, "Condition")
    assert cond["recordedDate"] == "2024-03-01"
    assert cond["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/condition-assertedDate",
                                  "valueDateTime": "2024-03-02T10:15:00+08:00"}]


def tq1(f10: str = "", f11: str = "", pattern: str = "TID") -> str:
    return f"TQ1|1||{pattern}|||||||{f10}|{f11}\r"


@pytest.mark.parametrize("segments, want", [
    # TQ1-11 text instruction is the dosage's text, TQ1-10 condition text an instruction
    (tq1("疼痛时", "饭后半小时服用") + rxe(), [("饭后半小时服用", ["疼痛时"])]),
    # after the order's own text when that says something else; once when it says the same
    (tq1("", "饭后半小时服用") + rxe(f21="遵医嘱"), [("遵医嘱; 饭后半小时服用", None)]),
    (tq1("", "遵医嘱") + rxe(f21="遵医嘱"), [("遵医嘱", None)]),
    # beside the order's administration instructions (RXE-7; one alone is the text)
    (tq1("体温>38.5℃时") + rxe(f7="^多饮水~^避光"), [("多饮水", ["多饮水", "避光", "体温>38.5℃时"])]),
    (tq1("体温>38.5℃时") + rxe(f7="^多饮水"), [("多饮水", ["体温>38.5℃时"])]),
    # a taper: each TQ1 its own
    (tq1("", "前三天每日三次", "TID") + tq1("", "之后每日一次", "QD") + rxe(),
     [("前三天每日三次", None), ("之后每日一次", None)]),
])
def test_tq1_text_instruction_and_condition_are_kept(segments, want):
    """TQ1-10 (condition text) and TQ1-11 (text instruction) were dropped: the v2-to-FHIR IG gives
    them as the dosage's additionalInstruction and text."""
    c = conv("RDE^O11", PID + PV1 + ORC + segments)
    (mr,) = by_type(c, "MedicationRequest")
    got = [(d.get("text"), [x["text"] for x in d["additionalInstruction"]] if "additionalInstruction" in d else None)
           for d in mr["dosageInstruction"]]
    assert got == want
