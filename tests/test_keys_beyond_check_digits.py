"""Keys that pass every check and still belong to someone else: a newborn registered under a parent's
valid resident ID number, and order numbers that a sender restarts at 1 in every message. Neither may
put two people, or two prescriptions, on one resource."""

from __future__ import annotations

import pytest

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import _convert
from fhir_mapping.identifiers import someone_elses
from tests.cda_docs import mapped, wst500
from tests.cda_docs import ident as cda_ident
from tests.test_hl7v2_support import assert_valid, by_type

SRC = SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1")
MOTHER = "11010519491231002X"  # valid GB 11643, born 1949-12-31, female


def conv(payload: bytes):
    c = _convert(payload, SRC)
    assert_valid(c)
    return c


def adt(pid3: str, visit: str, name: str, birth: str, sex: str = "M") -> bytes:
    return ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||ADT^A01|C" + visit + "|P|2.5\r"
            f"PID|1||{pid3}||{name}||{birth}|{sex}\r"
            f"PV1|1|I|产科^301^02||||||||||||||||{visit}\r").encode()


def test_a_number_a_generation_away_is_someone_elses_and_a_year_off_is_not():
    assert someone_elses(MOTHER, "2024-03-10")       # the mother's number on her baby's record
    assert someone_elses(MOTHER, "19800101")
    assert not someone_elses(MOTHER, "1949-12-31")
    assert not someone_elses(MOTHER, "1950-02-15")   # a lunar-calendar date, a year off
    assert not someone_elses(MOTHER, "1958")         # a mistyped decade digit stays within ten years
    assert not someone_elses(MOTHER, None) and not someone_elses(None, "2024-03-10")


def test_v2_newborn_under_the_mothers_number_is_not_the_mother():
    mother = conv(adt(f"{MOTHER}^^^^NNCHN", "ZY001", "王^丽", "19491231", "F"))
    baby = conv(adt(f"{MOTHER}^^^^NNCHN", "ZY002", "王丽之子", "20240310"))
    pm, pb = by_type(mother, "Patient")[0], by_type(baby, "Patient")[0]
    assert pm["id"] != pb["id"]
    assert [i["value"] for i in pm["identifier"]] == [MOTHER]
    assert MOTHER not in [i["value"] for i in pb.get("identifier", [])]
    (f,) = [f for f in baby.findings if f.rule == "v2.identifier.other-person"]
    assert f.location == "PID-3" and MOTHER not in f.message


def test_cda_newborn_under_the_mothers_number_is_keyed_by_its_record_number():
    ids = cda_ident("2.16.156.10011.1.3", MOTHER) + cda_ident("2.16.156.10011.1.2", "HR-BABY-1")
    conv_b, t = mapped(wst500(doc_id="DOC-B", patient_ids=ids, name="王丽之女", birth="20240310"))
    conv_m, tm = mapped(wst500(doc_id="DOC-M", patient_ids=cda_ident("2.16.156.10011.1.3", MOTHER),
                               name="王丽", birth="19491231"))
    baby, mom = t["Patient"][0], tm["Patient"][0]
    assert baby["id"] != mom["id"]
    assert [i["value"] for i in baby["identifier"]] == ["HR-BABY-1"]
    assert any(f.rule == "cda.identifier.other-person" for f in conv_b.findings)
    # with nothing else to key on, the newborn's document is refused rather than put on the mother
    with pytest.raises(MappingError) as e:
        mapped(wst500(doc_id="DOC-C", patient_ids=cda_ident("2.16.156.10011.1.3", MOTHER), birth="20240310"))
    assert e.value.rule == "cda.header.patient-id-missing"


def rde(pid3: str, visit: str, msg_id: str, drug: str) -> bytes:
    return ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||RDE^O11|" + msg_id + "|P|2.5\r"
            f"PID|1||{pid3}^^^H1^MR||张^三||19800101|M\r"
            f"PV1|1|O|内科||||||||||||||||{visit}\r"
            "ORC|NW|1\r"
            f"RXE|^^^20240315|{drug}|1||mg\r").encode()


def test_order_numbers_restarting_at_one_never_overwrite_another_prescription():
    a = conv(rde("MR1", "V1", "M1", "A10BA02^二甲双胍^ATC"))
    b = conv(rde("MR2", "V2", "M2", "A10BA02^二甲双胍^ATC"))        # another patient, order "1" again
    c = conv(rde("MR1", "V1", "M3", "C09AA02^依那普利^ATC"))         # same patient, another drug, order "1"
    again = conv(rde("MR1", "V1", "M4", "A10BA02^二甲双胍^ATC"))     # the first order, sent again
    ids = [by_type(x, "MedicationRequest")[0]["id"] for x in (a, b, c, again)]
    assert len(set(ids[:3])) == 3
    assert ids[3] == ids[0]


def test_v3_newborn_registered_under_a_parents_number_keeps_only_its_own_ids():
    from fhir_mapping.hl7v3 import convert
    from tests.test_identifier_keys import LOCAL, SRC as V3_SRC, patient, values
    parent = "110105198003151234"  # valid, born 1980-03-15, as the fixture's patient
    adult = convert(patient("M-P", LOCAL, person_resident=parent), V3_SRC)
    baby_msg = patient("M-N", LOCAL.replace("P0001", "P0002"), person_resident=parent, name="测试甲之子")
    baby = convert(baby_msg.replace(b'<birthTime value="19800315"/>', b'<birthTime value="20240310"/>'), V3_SRC)
    (pa,) = [r for r in adult.resources if r["resourceType"] == "Patient"]
    (pb,) = [r for r in baby.resources if r["resourceType"] == "Patient"]
    assert parent in values(pa) and parent not in values(pb) and pa["id"] != pb["id"]
    assert any(f.rule == "v3.identifier.other-person" for f in baby.findings)


def test_the_same_order_number_and_drug_in_another_visit_is_another_prescription():
    first = conv(rde("MR1", "V1", "M1", "A10BA02^二甲双胍^ATC"))
    later = conv(rde("MR1", "V7", "M9", "A10BA02^二甲双胍^ATC"))   # next month's visit, order "1" again
    assert by_type(first, "MedicationRequest")[0]["id"] != by_type(later, "MedicationRequest")[0]["id"]


def oru(pid3: str, msg_id: str) -> bytes:
    return ("MSH|^~\\&|LIS|H1|HUB|R|20240315083000+0800||ORU^R01|" + msg_id + "|P|2.5.1\r"
            f"PID|1||{pid3}^^^H1^MR||张^三||19800101|M\r"
            "PV1|1|O|内科||||||||||||||||V1\r"
            "ORC|RE|1|1\r"
            "OBR|1|1|1|2345-7^葡萄糖^LN|||20240315080000\r"
            "OBX|1|NM|2345-7^葡萄糖^LN||5.6|mmol/L|||||F\r"
            "SPM|1|S1^S1||BLD^全血^HL70487\r").encode()


def test_specimen_and_order_numbers_a_laboratory_reuses_keep_patients_apart():
    a, b = conv(oru("MR1", "L1")), conv(oru("MR2", "L2"))
    for rtype in ("Specimen", "ServiceRequest", "DiagnosticReport", "Observation"):
        assert by_type(a, rtype)[0]["id"] != by_type(b, rtype)[0]["id"], rtype
    assert by_type(b, "Observation")[0]["specimen"]["reference"] == f"Specimen/{by_type(b, 'Specimen')[0]['id']}"
