"""Identity keys of the HL7 v2 mapper: an identifier failing its check digit (GB 11643) or a filler
value (``-``, ``无``, all zeros, a template label...) is never the key of a resource nor an identifier
value; the key falls back to the next institution-scoped number and the input gets a finding that names
the field, never the value."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import _convert
from tests.test_hl7v2_support import assert_valid, by_type

SRC = SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1")
RESIDENT = "urn:oid:2.16.156.10011.1.3"
BAD_CHECK = "510108198503124518"  # the check character should be 9
FILLERS = ["-", "无", "不详", "000000000000000000", "0", "医务人员编码", "身份证号", "N/A", "null", "123456", "XXXX"]


def adt(pid3: str, visit: str, name: str = "王^小明", *, extra: str = "", pv1_doctor: str = "") -> bytes:
    return ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||ADT^A01|C" + visit + "|P|2.5\r"
            f"PID|1||{pid3}||{name}||19850312|M\r"
            f"PV1|1|I|心内科^301^02||||{pv1_doctor}||||||||||||{visit}|||||||||||||||||||||||||20240315080000\r"
            + extra).encode()


def conv(payload: bytes):
    c = _convert(payload, SRC)
    assert_valid(c)
    return c


def identifier_values(resources: list[dict]) -> set[str]:
    out: set[str] = set()

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("identifier", "masterIdentifier"):
                    for i in v if isinstance(v, list) else [v]:
                        out.add(i.get("value"))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(resources)
    return out


@pytest.mark.parametrize("bad", [BAD_CHECK, "000000000000000000", "-", "无"])
def test_people_sharing_an_invalid_resident_id_stay_different_patients(bad):
    a = conv(adt(f"{bad}^^^^NNCHN", "ZY001", "王^小明"))
    b = conv(adt(f"{bad}^^^^NNCHN", "ZY002", "李^四"))
    pa, pb = by_type(a, "Patient")[0], by_type(b, "Patient")[0]
    assert pa["id"] != pb["id"] and a.patient_key != b.patient_key
    for c in (a, b):
        assert bad not in identifier_values(c.resources)
        rules = {f.rule: f for f in c.findings}
        assert "v2.pid3.keyed-by-visit" in rules
        problem = rules.get("v2.identifier.check-digit") or rules.get("v2.identifier.placeholder")
        assert problem.location == "PID-3" and bad not in problem.message


def test_record_number_keys_the_patient_and_the_invalid_id_is_dropped():
    a = conv(adt(f"MR001^^^^MR~{BAD_CHECK}^^^^NNCHN", "ZY001"))
    b = conv(adt("MR001^^^^MR~510108198503124519^^^^NNCHN", "ZY001"))
    assert by_type(a, "Patient")[0]["id"] == by_type(b, "Patient")[0]["id"]
    assert [f.location for f in a.findings if f.rule == "v2.identifier.check-digit"] == ["PID-3[2]"]
    assert RESIDENT not in {i.get("system") for i in by_type(a, "Patient")[0]["identifier"]}
    assert "510108198503124519" in identifier_values(b.resources)


def test_no_usable_identifier_and_no_visit_number_is_refused():
    with pytest.raises(MappingError) as e:
        _convert(("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||ADT^A28|C1|P|2.5\r"
                  "PID|1||-^^^^MR~000000000000000000^^^^NNCHN||王^小明\r").encode(), SRC)
    assert e.value.code == "AE" and e.value.rule == "v2.pid3.missing" and e.value.location == "PID-3"


def test_placeholder_visit_number_is_not_the_encounter_key():
    a = conv(adt("MR001^^^^MR", "-"))
    enc = by_type(a, "Encounter")[0]
    assert "identifier" not in enc
    assert {f.location for f in a.findings if f.rule == "v2.identifier.placeholder"} == {"PV1-19"}
    assert any(f.rule == "v2.pv1-19.missing" for f in a.findings)  # keyed by patient + admit time
    b = conv(adt("MR002^^^^MR", "-"))
    assert by_type(b, "Encounter")[0]["id"] != enc["id"]


def test_practitioner_with_a_filler_id_is_keyed_by_name_or_not_made():
    one = conv(adt("MR001^^^^MR", "ZY001", pv1_doctor="0^张^医生"))
    two = conv(adt("MR002^^^^MR", "ZY002", pv1_doctor="0^李^医生"))
    p1, p2 = by_type(one, "Practitioner")[0], by_type(two, "Practitioner")[0]
    assert p1["id"] != p2["id"] and "identifier" not in p1
    assert any(f.rule == "v2.identifier.placeholder" and f.location == "PV1-7.1" for f in one.findings)
    nameless = conv(adt("MR003^^^^MR", "ZY003", pv1_doctor="医务人员编码"))
    assert not by_type(nameless, "Practitioner")


def _oru(control: str, mr: str, placer: str, filler: str, doctor: str) -> bytes:
    return ("MSH|^~\\&|LIS|H1|HUB|R|20240315083000+0800||ORU^R01|" + control + "|P|2.5\r"
            f"PID|1||{mr}^^^^MR||王^小明\r"
            f"ORC|RE|{placer}|{filler}|||||||||{doctor}\r"
            f"OBR|1|{placer}|{filler}|GLU^葡萄糖^L|||20240315080000|||||||||{doctor}\r"
            "OBX|1|NM|GLU^葡萄糖^L||5.6|mmol/L|3.9-6.1||||F\r").encode()


def test_placeholder_order_numbers_are_scoped_by_message():
    a = conv(_oru("M1", "MR001", "-", "无", ""))
    b = conv(_oru("M2", "MR002", "-", "无", ""))
    ra, rb = by_type(a, "DiagnosticReport")[0], by_type(b, "DiagnosticReport")[0]
    assert ra["id"] != rb["id"] and "identifier" not in ra
    assert {f.location for f in a.findings if f.rule == "v2.identifier.placeholder"} == {"OBR-2", "OBR-3"}


def _pid(fields: str) -> bytes:
    return ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||ADT^A04|C1|P|2.5\r" + fields + "\r"
            "PV1|1|O|内科||||||||||||||||MZ1\r").encode()


_FIELDS = {
    "PID-3": lambda v: adt(f"MR1^^^^MR~{v}^^^^NNCHN~{v}^^^^HC~{v}^^^^MR", "ZY1"),
    "PID-2/4/19/20": lambda v: _pid(f"PID|1|{v}^^^^PI|MR1^^^^MR|{v}^^^^PT|王^小明||19850312|M|||||||||||{v}|{v}^BJ"),
    "PV1-19/PV1-7": lambda v: adt("MR1^^^^MR", v, pv1_doctor=f"{v}^张^医生"),
    "NK1-33": lambda v: adt("MR1^^^^MR", "ZY1", extra=f"NK1|1|李^秀英|SPO{'|' * 30}{v}^^^^NI\r"),
    "ORC/OBR": lambda v: _oru("M1", "MR1", v, v, f"{v}^王^医生"),
    "SPM-2": lambda v: _oru("M1", "MR1", "P1", "F1", "").replace(
        b"OBX|1", f"SPM|1|{v}&&&^{v}&&&||BLD^全血^HL70487\rOBX|1".encode()),
    "SCH-1/2": lambda v: ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||SIU^S12|C1|P|2.5\r"
                          f"SCH|{v}|{v}|||||复诊\rPID|1||MR1^^^^MR||王^小明\r").encode(),
    "TXA-12": lambda v: ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||MDM^T02|C1|P|2.5\r"
                         f"PID|1||MR1^^^^MR||王^小明\rTXA|1|DS|TX|20240315||||||||{v}|{v}\r"
                         "OBX|1|TX|X^出院小结^L||正文\r").encode(),
    "FT1-2/DG1-20/IN1": lambda v: ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||DFT^P03|C1|P|2.5\r"
                                   "PID|1||MR1^^^^MR||王^小明\r"
                                   f"DG1|1||I10^高血压^I10{'|' * 17}{v}\r"
                                   f"IN1|1|P1^职工医保|{v}|医保中心||||{v}{'|' * 28}{v}\r"
                                   f"FT1|1|{v}||20240315||CG|F01^检查费^L|||1|20.00\r").encode(),
}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(FILLERS + ["  -  ", "暂无", "000000", "病案号"]), st.sampled_from(sorted(_FIELDS)))
def test_fillers_never_appear_as_identifier_values(value, where):
    c = conv(_FIELDS[where](value))
    assert value.strip() not in identifier_values(c.resources)
    found = [f for f in c.findings if f.rule == "v2.identifier.placeholder"]
    assert found
    if len(value.strip()) > 1:  # ("-" and "0" occur in field names such as PID-20)
        assert not any(value.strip() in f.message for f in found)


def test_resident_id_in_pid19_keeps_its_system_and_is_checked():
    good = conv(_pid("PID|1||MR1^^^^MR||王^小明||19850312|M|||||||||||510108198503124519|B123^BJ^20300101"))
    idents = {i.get("system") or i["type"]["coding"][0]["code"]: i for i in by_type(good, "Patient")[0]["identifier"]}
    assert idents[RESIDENT]["value"] == "510108198503124519"
    assert idents["DL"] == {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "DL"}]}, "value": "B123", "period": {"end": "2030-01-01"},
                            "assigner": {"display": "BJ"}}
    bad = conv(_pid(f"PID|1||MR1^^^^MR||王^小明||19850312|M|||||||||||{BAD_CHECK}"))
    assert BAD_CHECK not in identifier_values(bad.resources)
    assert [f.location for f in bad.findings if f.rule == "v2.identifier.check-digit"] == ["PID-19"]


def test_placeholder_allergy_ids_do_not_merge_allergies():
    c = conv(adt("MR1^^^^MR", "ZY1", extra="IAM|1|DA|P01^青霉素^L|||A|-\rIAM|2|FA|F01^花生^L|||A|-\r"))
    assert sorted(a["code"]["text"] for a in by_type(c, "AllergyIntolerance")) == ["花生", "青霉素"]
    assert [f.location for f in c.findings if f.rule == "v2.identifier.placeholder"] == ["IAM-7.1", "IAM[2]-7.1"]


def test_a_control_id_used_again_for_another_message_keeps_both_lineages():
    """A sender that started its MSH-10 counter again: the second message's Provenance took the
    first one's id and replaced it (the first patient's lineage gone). A message sent again
    keeps its one Provenance."""
    from connectors.testing import adt_stream
    from fhir_mapping.base import SourceInfo
    from fhir_mapping.hl7v2 import convert

    (_, [a, _]), (_, [b, _]) = adt_stream(2, seed=47)[:2]
    b = b.replace(b"|M0000001A|", b"|M0000000A|")  # another patient, the same control id
    source = SourceInfo(institution="H0001", oid="2.16.156.10011.99.1.1")

    def provenance(msg: bytes) -> str:
        return next(r["id"] for r in convert(msg, source).resources
                    if r["resourceType"] == "Provenance")

    assert provenance(a) != provenance(b)
    assert provenance(a) == provenance(a)
