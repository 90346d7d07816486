"""Whose record a v2 message writes to: one patient per message (a second patient's results are
never attached to the first), a visit number scoped by its patient, and a Patient key that does not
depend on the order of PID-3 repetitions nor join identifiers of different types or issuers."""

from __future__ import annotations

import pytest

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import _convert
from tests.test_hl7v2_support import assert_valid, by_type

SRC = SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1")
MR = "^^^H1&2.16.156.10011.99.1.1&ISO^MR"


def msg(mtype: str, *segments: str, control: str = "C1") -> bytes:
    return "\r".join([f"MSH|^~\\&|LIS|H1|HUB|R|20240315143000+0800||{mtype}|{control}|P|2.5.1",
                      *segments, ""]).encode()


def conv(payload: bytes):
    c = _convert(payload, SRC)
    assert_valid(c)
    return c


def subjects(c) -> set[str]:
    return {r["subject"]["reference"] for r in c.resources if "subject" in r}


# -- one patient per message ------------------------------------------------------------------
TWO_PATIENTS = {
    "ORU with two patient result groups": msg(
        "ORU^R01^ORU_R01",
        f"PID|1||P001{MR}||张^三||19850312|M", "PV1|1|O|内科||||||||||||||||MZ001",
        "OBR|1|A1|F1|2093-3^总胆固醇^LN", "OBX|1|NM|2093-3^总胆固醇^LN||6.20|mmol/L|3.1-5.7|H|||F",
        f"PID|2||P002{MR}||李^四||19900101|F", "PV1|1|O|内科||||||||||||||||MZ002",
        "OBR|1|A2|F2|2093-3^总胆固醇^LN", "OBX|1|NM|2093-3^总胆固醇^LN||3.10|mmol/L|3.1-5.7|N|||F"),
    "ORU whose second patient has no visit": msg(
        "ORU^R01^ORU_R01",
        f"PID|1||P001{MR}||张^三||19850312|M", "OBR|1|A1|F1|2093-3^TC^LN", "OBX|1|NM|2093-3^TC^LN||6.2|mmol/L||||F",
        f"PID|2||P002{MR}||李^四||19900101|F", "OBR|1|A2|F2|2093-3^TC^LN", "OBX|1|NM|2093-3^TC^LN||3.1|mmol/L||||F"),
    "ORM with a second patient's order": msg(
        "ORM^O01^ORM_O01",
        f"PID|1||P001{MR}||张^三||19850312|M", "ORC|NW|A1", "OBR|1|A1||2093-3^TC^LN",
        f"PID|2||P002{MR}||李^四||19900101|F", "ORC|NW|A2", "OBR|1|A2||2093-3^TC^LN"),
    "ADT whose second patient carries a diagnosis": msg(
        "ADT^A08^ADT_A01", "EVN|A08|20240315",
        f"PID|1||P001{MR}||张^三||19850312|M", "PV1|1|I|内科||||||||||||||||ZY001",
        f"PID|2||P002{MR}||李^四||19900101|F", "DG1|1||I10^高血压^I10"),
}


@pytest.mark.parametrize("payload", TWO_PATIENTS.values(), ids=TWO_PATIENTS.keys())
def test_a_second_patients_data_is_never_written_to_the_first(payload):
    with pytest.raises(MappingError) as e:
        _convert(payload, SRC)
    assert e.value.code == "AE" and e.value.rule == "v2.pid.repeated"
    assert e.value.location == "PID[2]" and "more than one patient" in e.value.reason


def test_a_patient_link_maps_the_first_patient_and_says_so():
    """A second PID followed by nothing of its own (a link's second patient): the first patient
    is mapped, the second left out with a finding (a merge's pairs are each merged:
    tests/test_hl7v2_medication_facts.py)."""
    c = conv(msg("ADT^A08^ADT_A01", "EVN|A08|20240315",
                 "PID|1||MR888^^^^MR||张^三||19850312|M", "PID|2||MR999^^^^MR||李^四||19900101|F"))
    values = {i["value"] for p in by_type(c, "Patient") for i in p["identifier"]}
    assert values == {"MR888"}
    assert any(f.rule == "v2.pid.repeated" and f.severity == "information" for f in c.findings)


def test_the_second_patients_visit_is_not_the_first_patients():
    """A link of two patients (PID, then PID with PV1): the first patient had no visit of its own."""
    c = conv(msg("ADT^A08^ADT_A01", "EVN|A08|20240315",
                 f"PID|1||P001{MR}||张^三||19850312|M",
                 f"PID|2||P002{MR}||李^四||19900101|F", "PV1|1|I|内科||||||||||||||||ZY002"))
    assert not by_type(c, "Encounter")
    assert [i["value"] for p in by_type(c, "Patient") for i in p["identifier"]] == ["P001"]


# -- a visit under its patient -----------------------------------------------------------------
def adt(pid3: str, visit: str, *, control: str = "C1", name: str = "张^三") -> bytes:
    return msg("ADT^A04^ADT_A01", "EVN|A04|20240315", f"PID|1||{pid3}||{name}||19850312|M",
               f"PV1|1|O|内科||||||||||||||||{visit}", control=control)


VISIT_CASES = {
    "the same visit number at two patients": (adt(f"P001{MR}", "0001"), adt(f"P002{MR}", "0001", name="李^四"), False),
    "the same patient and visit, two messages": (adt(f"P001{MR}", "0001"), adt(f"P001{MR}", "0001", control="C2"), True),
    "one patient, two visits": (adt(f"P001{MR}", "0001"), adt(f"P001{MR}", "0002"), False),
}


@pytest.mark.parametrize("first,second,same", VISIT_CASES.values(), ids=VISIT_CASES.keys())
def test_a_visit_is_keyed_under_its_patient(first, second, same):
    a, b = conv(first), conv(second)
    [ea], [eb] = by_type(a, "Encounter"), by_type(b, "Encounter")
    assert (ea["id"] == eb["id"]) is same
    assert ea["subject"]["reference"] == a.patient_key and eb["subject"]["reference"] == b.patient_key


def test_the_feeds_of_one_hospital_meet_on_one_visit():
    """The HL7 v2 ADT, a v3 visit registration and the outpatient-visit view give one visit of one
    patient the same Encounter id (fhir_mapping.ids.encounter_id)."""
    import orjson

    from fhir_mapping.ids import encounter_id
    from fhir_mapping.tabular import load_mapping

    v2 = conv(adt(f"0012345678{MR}", "MZ202403010001"))
    [enc] = by_type(v2, "Encounter")
    assert enc["id"] == encounter_id("H1", "0012345678", "MZ202403010001")
    row = {c: s["example"] for c, s in load_mapping("outpatient-visit").columns.items()}
    [tab] = load_mapping("outpatient-visit").convert_row_json(orjson.dumps(row), SRC)
    assert row["patient_id"] == "0012345678" and row["visit_no"] == "MZ202403010001"
    assert by_type(tab, "Encounter")[0]["id"] == enc["id"]
    assert tab.patient_key == v2.patient_key


# -- the Patient key ---------------------------------------------------------------------------
def pid_msg(pid: str) -> bytes:
    return msg("ADT^A08^ADT_A01", "EVN|A08|20240315", pid, "PV1|1|O|内科||||||||||||||||MZ9")


def patient_of(pid: str) -> dict:
    [p] = by_type(conv(pid_msg(pid)), "Patient")
    return p


def record(value: str) -> str:
    from fhir_mapping.ids import patient_id

    return patient_id("H1", value)


OTHER_PEOPLE = {
    "a record number and a laboratory's patient id": (
        "PID|1||0088123^^^HIS^MR||张^三||19850312|M", "PID|1||0088123^^^LIS^PI||李^四||19900101|F"),
    "a record number and an outpatient number (.11)": (
        "PID|1||0088123^^^^MR||张^三||19850312|M",
        "PID|1||0088123^^^H1&2.16.156.10011.99.1.1.11&ISO^MZ||王^五||19700101|M"),
    "a record number and PID-2": (
        "PID|1||0088123^^^^MR||张^三||19850312|M", "PID|1|0088123|||王^五||19700101|M"),
    "a record number and another hospital's record number": (
        "PID|1||0088123^^^^MR||张^三||19850312|M",
        "PID|1||0088123^^^H9&2.16.156.10011.99.9&ISO^MR||王^五||19700101|M"),
    "two types of patient id": (
        "PID|1||0088123^^^^PI||张^三||19850312|M", "PID|1||0088123^^^^PT||王^五||19700101|M"),
    "a health card and a record number": (
        "PID|1||0088123^^^^MR||张^三||19850312|M", "PID|1||0088123^^^^JKK||王^五||19700101|M"),
}

ONE_PERSON = {
    "repetitions in either order": (
        "PID|1||PI777^^^^PI~MR888^^^^MR||张^三||19850312|M", "PID|1||MR888^^^^MR~PI777^^^^PI||张^三||19850312|M"),
    "secondary ids in either order": (
        "PID|1||A1^^^^PT~B2^^^^PI||张^三||19850312|M", "PID|1||B2^^^^PI~A1^^^^PT||张^三||19850312|M"),
    "the record number with and without the institution's OID": (
        f"PID|1||MR888{MR}||张^三||19850312|M", "PID|1||MR888^^^^MR~510108198503124510^^^^NNCHN||张^三||19850312|M"),
    "an untyped PID-3 number of the institution": (
        "PID|1||MR888||张^三||19850312|M", "PID|1||MR888^^^^MR||张^三||19850312|M"),
    "the HIS's record number relayed by the LIS": (
        "PID|1||MR888^^^HIS^MR||张^三||19850312|M", "PID|1||MR888^^^H1^MR||张^三||19850312|M"),
}


@pytest.mark.parametrize("a,b", OTHER_PEOPLE.values(), ids=OTHER_PEOPLE.keys())
def test_identifiers_of_other_types_or_issuers_never_make_one_patient(a, b):
    assert patient_of(a)["id"] != patient_of(b)["id"]


@pytest.mark.parametrize("a,b", ONE_PERSON.values(), ids=ONE_PERSON.keys())
def test_the_key_does_not_depend_on_the_order_or_the_spelling_of_one_record(a, b):
    assert patient_of(a)["id"] == patient_of(b)["id"]


def test_the_record_number_keys_the_patient_as_every_feed_does():
    """Preferred whatever its place (the shared convention, fhir_mapping.ids.patient_id)."""
    assert patient_of("PID|1||PI777^^^^PI~MR888^^^^MR||张^三||19850312|M")["id"] == record("MR888")
    assert patient_of(f"PID|1||P001{MR}~510108198503124510^^^^NNCHN||张^三||19850312|M")["id"] == record("P001")
    assert patient_of("PID|1||0088123^^^LIS^PI||李^四||19900101|F")["id"] != record("0088123")


def test_a_merge_names_the_retired_patient_by_the_same_key():
    c = conv(msg("ADT^A40^ADT_A39", "EVN|A40|20240315", "PID|1||MR888^^^^MR||张^三||19850312|M",
                 "MRG|PI111^^^^PI~MR111^^^^MR"))
    retired = next(p for p in by_type(c, "Patient") if p["active"] is False)
    assert retired["id"] == record("MR111")


# -- the system of each patient id type ----------------------------------------------------------
OID = "2.16.156.10011.99.1.1"
# CX-5 type -> the institution-local suffix of its system: the record number's register is .1, every
# other patient id type a register of its own
PATIENT_ID_SYSTEMS = {"MR": 1, "PI": 19, "PT": 20, "MRT": 21, "JZH": 22}


def patient_under(pid: str, source: SourceInfo = SRC) -> dict:
    c = _convert(pid_msg(pid), source)
    assert_valid(c)
    [p] = by_type(c, "Patient")
    return p


def system_values(p: dict) -> set[str]:
    return {f"{i.get('system')}|{i['value']}" for i in p["identifier"]}


@pytest.mark.parametrize("tcode, suffix", PATIENT_ID_SYSTEMS.items())
def test_each_patient_id_type_has_a_system_of_its_own(tcode, suffix):
    """PI, PT, MRT and JZH had the record number's system: a Patient keyed by its PI carried the
    identifier of the record-number Patient of the same digits (one system|value on two people)."""
    from fhir_mapping.ids import stable_id

    p = patient_under(f"PID|1||0088123^^^^{tcode}||李^四||19900101|F")
    assert [i["system"] for i in p["identifier"]] == [f"urn:oid:{OID}.{suffix}"]
    record_patient = patient_under("PID|1||0088123^^^^MR||张^三||19850312|M")
    if tcode == "MR":
        assert p["id"] == record_patient["id"] == record("0088123")
    else:
        assert not system_values(p) & system_values(record_patient)
        # keyed as before the type had a system of its own: the Patient keeps its id
        assert p["id"] == stable_id("H1", "Patient", tcode, f"urn:oid:{OID}.1", "0088123")


def test_a_record_number_system_made_unique_does_not_link_a_patient_id_of_the_same_digits():
    """A region that configures the record numbers' system unique for the master patient index: a
    laboratory's PI of the same digits was an exact identifier match with the record's Patient."""
    from hub.mpi.compare import compare
    from hub.mpi.identifiers import ROLE_EXTENSION, roles_from
    from hub.mpi.normalise import features

    record_numbers = {"resourceType": "NamingSystem", "id": "h1-mr", "name": "H1MR", "status": "active",
                      "kind": "identifier", "date": "2026-12-01",
                      "uniqueId": [{"type": "oid", "value": f"{OID}.1"}],
                      "extension": [{"url": ROLE_EXTENSION, "valueCode": "unique"}]}
    roles = roles_from([record_numbers])
    zhang = features(patient_under("PID|1||0088123^^^^MR||张^三||19850312|M"), roles)
    li = features(patient_under("PID|1||0088123^^^^PI||李^四||19900101|F"), roles)
    assert zhang["uid"] == [f"urn:oid:{OID}.1|0088123"] and li["uid"] == []
    levels, _ = compare(zhang, li)
    assert levels.get("id") != "exact"


@pytest.mark.parametrize("configured", [["PI"], ["pi", "JZH"]])
def test_a_type_the_institution_issues_from_its_record_register_is_its_record_number(tmp_path, configured):
    """Where the HIS's patient id is the record number (connector institution.record_number_types),
    a PI is the record number: its system and the Patient it keys."""
    from connectors.config import ConnectorConfig

    cfg = ConnectorConfig.from_dict({"name": "h1-lis", "institution": {
        "code": "H1", "oid": OID, "record_number_types": configured},
        "sources": [{"type": "mllp"}], "sink": {"type": "http"}}, base=tmp_path)
    p = patient_under("PID|1||0088123^^^^PI||张^三||19850312|M", cfg.source_info)
    assert p["identifier"] == [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                     "code": "PI"}]},
                                "system": f"urn:oid:{OID}.1", "value": "0088123"}]
    assert p["id"] == record("0088123")
    assert patient_under("PID|1||0088123^^^^PT||张^三||19850312|M", cfg.source_info)["identifier"][0][
        "system"] == f"urn:oid:{OID}.20"


def test_record_number_types_must_be_a_list_of_types(tmp_path):
    from connectors.config import ConfigError, ConnectorConfig

    with pytest.raises(ConfigError, match="record_number_types"):
        ConnectorConfig.from_dict({"name": "h1", "institution": {"code": "H1", "oid": OID, "record_number_types": "PI"},
                                   "sources": [{"type": "mllp"}], "sink": {"type": "http"}}, base=tmp_path)


# -- the institution named as assigning authority ------------------------------------------------
OWN_AA = f"^^^CQSRMYY&{OID}&ISO"
OTHER_AA = "^^^H9&2.16.156.10011.99.9&ISO"


@pytest.mark.parametrize("tcode, suffix", PATIENT_ID_SYSTEMS.items())
def test_the_institution_as_assigning_authority_leaves_the_type_its_system(tcode, suffix):
    """CX-4 naming the institution's own OID made every type's system the bare OID: a record
    number and a PI of the same digits (two people) were one system|value, and a record number
    had another system than the one it has sent without CX-4."""
    sent_with = patient_under(f"PID|1||4242{OWN_AA}^{tcode}||冯^一||19600101|M")
    sent_without = patient_under(f"PID|1||4242^^^^{tcode}||冯^一||19600101|M")
    assert [i["system"] for i in sent_with["identifier"]] == [f"urn:oid:{OID}.{suffix}"]
    assert system_values(sent_with) == system_values(sent_without)


def test_a_record_number_and_a_patient_id_under_the_institution_are_two_people():
    feng = patient_under(f"PID|1||4242{OWN_AA}^MR||冯^一||19600101|M")
    chen = patient_under(f"PID|1||4242{OWN_AA}^PI||陈^二||19950101|F")
    assert feng["id"] != chen["id"]
    assert not system_values(feng) & system_values(chen)


def test_another_authoritys_types_stay_apart():
    """Another hospital's OID: its record number keeps the OID, its PI the OID and PI's suffix."""
    mr = patient_under(f"PID|1||4242{OTHER_AA}^MR||冯^一||19600101|M")
    pi = patient_under(f"PID|1||4242{OTHER_AA}^PI||陈^二||19950101|F")
    assert system_values(mr) == {"urn:oid:2.16.156.10011.99.9|4242"}
    assert system_values(pi) == {"urn:oid:2.16.156.10011.99.9.19|4242"}


@pytest.mark.parametrize("aa", [OWN_AA, OTHER_AA])
def test_a_resident_id_number_keeps_its_national_system_whatever_the_authority(aa):
    p = patient_under(f"PID|1||0088123^^^^MR~510108198503124519{aa}^NNCHN||张^三||19850312|M")
    assert "urn:oid:2.16.156.10011.1.3|510108198503124519" in system_values(p)


def test_patients_keyed_under_an_authority_keep_their_ids():
    """The system moved, the key did not: a Patient stored before is the one the next ADT updates."""
    from fhir_mapping.ids import stable_id

    assert patient_under(f"PID|1||4242{OWN_AA}^MR||冯^一||19600101|M")["id"] == record("4242")
    assert patient_under(f"PID|1||4242{OWN_AA}^PI||陈^二||19950101|F")["id"] == stable_id(
        "H1", "Patient", "PI", f"urn:oid:{OID}", "4242")
    assert patient_under(f"PID|1||4242{OTHER_AA}^PI||陈^二||19950101|F")["id"] == stable_id(
        "H1", "Patient", "PI", "urn:oid:2.16.156.10011.99.9", "4242")


def test_a_practitioner_number_has_one_system_however_its_authority_is_filled():
    """XCN-9 naming the institution's own OID gave the doctor's number the bare OID, without it
    the practitioner register's system: one doctor, two identifiers by how the HIS filled it."""
    def doctor(xcn: str) -> dict:
        c = _convert(msg("ADT^A04^ADT_A01", "EVN|A04|20240315143000",
                         "PID|1||4242^^^^MR||冯^一||19600101|M", f"PV1|1|O|||||{xcn}"), SRC)
        assert_valid(c)
        [d] = by_type(c, "Practitioner")
        return d
    with_authority = doctor("D017^王^医生^^^^^^H1&2.16.156.10011.99.1.1&ISO")
    without = doctor("D017^王^医生")
    assert system_values(with_authority) == system_values(without)
    assert [i["system"] for i in without["identifier"]] == [f"urn:oid:{OID}.6"]
