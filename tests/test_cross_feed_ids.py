"""Feeds of one institution meet on the same resources: a lab-result row of a database view refers
to the Patient and Encounter that the HL7 v2 ADT feed wrote (ids from fhir_mapping.ids)."""

from __future__ import annotations

import orjson

from fhir_mapping.base import SourceInfo
from fhir_mapping.hl7v2 import convert
from fhir_mapping.tabular import load_mapping

SOURCE = SourceInfo(institution="CQSRMYY", oid="2.16.156.10011.99.1.1", name="重庆市人民医院")

ADT = ("MSH|^~\\&|HIS|CQSRMYY|HUB|REGION|20240315083000+0800||ADT^A01^ADT_A01|X1|P|2.5|||||"
       "|UNICODE UTF-8\r"
       "PID|1||0012345678^^^CQSRMYY^MR||张^三丰||19850312|M\r"
       "PV1|1|O|内科||||||||||||||||MZ202403010001\r").encode()


def test_a_lab_row_refers_to_the_patient_and_visit_the_adt_feed_wrote():
    adt = convert(ADT, SOURCE)
    patient = next(r for r in adt.resources if r["resourceType"] == "Patient")
    encounter = next(r for r in adt.resources if r["resourceType"] == "Encounter")
    lab_view = load_mapping("lab-result")
    row = {c: None for c in lab_view.columns} | {  # the view's other columns empty
        "report_no": "JY1", "item_code": "GLU", "item_name": "葡萄糖", "patient_id": "0012345678",
        "visit_no": "MZ202403010001", "result_value": "5.60", "result_unit": "mmol/L",
        "report_time": "2024-03-01 11:20:05"}
    (lab,) = lab_view.convert_row_json(orjson.dumps(row), SOURCE)
    obs = next(r for r in lab.resources if r["resourceType"] == "Observation")
    assert obs["subject"]["reference"] == f"Patient/{patient['id']}"
    assert obs["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    assert lab.patient_key == adt.patient_key == f"Patient/{patient['id']}"
