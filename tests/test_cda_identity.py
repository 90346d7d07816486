"""Identity keys of CDA resources never come from filler values or identifiers failing their check
digit (DESIGN principle 6): documents about different people stay different Patients, authors with a
filler id stay different Practitioners, and what was refused is reported without its value."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_mapping.base import MappingError
from terminology import resident_id
from tests.cda_docs import VALID_ID, ident, mapped, wst500

RID = "2.16.156.10011.1.3"
INVALID_ID = "110105194912310021"  # right shape, wrong GB 11643 check character
NAMES = ["赵一", "钱二", "孙三", "李四", "周五", "吴六", "郑七", "王八", "冯九", "陈十", "褚十一", "卫十二"]


def test_dozen_documents_with_one_invalid_resident_id_are_a_dozen_patients():
    patients = {}
    for i, name in enumerate(NAMES):
        doc = wst500(doc_id=f"D{i}", name=name, sex="1" if i % 2 else "2",
                     patient_ids=ident(RID, INVALID_ID) + ident("2.16.156.10011.1.12", f"ZY{i:04d}"))
        conv, t = mapped(doc)
        (p,) = t["Patient"]
        patients[p["id"]] = (p["name"][0]["text"], p["gender"])
        assert INVALID_ID not in str(p["identifier"])
        (f,) = [f for f in conv.findings if f.rule == "cda.identifier.check-digit"]
        assert f.severity == "warning" and f.location == "/ClinicalDocument/recordTarget/patientRole/id[1]"
        assert INVALID_ID not in f.message
    assert len(patients) == len(NAMES)
    assert sorted(n for n, _ in patients.values()) == sorted(NAMES)  # no name flipped onto another


def test_valid_resident_id_is_still_the_key():
    ids = {mapped(wst500(doc_id=f"D{i}", name=n))[1]["Patient"][0]["id"] for i, n in enumerate(NAMES[:3])}
    assert len(ids) == 1
    conv, t = mapped(wst500())
    assert t["Patient"][0]["identifier"][0]["value"] == VALID_ID
    assert not [f for f in conv.findings if f.rule.startswith("cda.identifier")]


def test_fifteen_digit_resident_id_is_upgraded_and_keys():
    conv, t = mapped(wst500(patient_ids=ident(RID, "110105491231002")))
    assert t["Patient"][0]["identifier"][0]["value"] == resident_id.upgrade_15_to_18("110105491231002")
    assert [f.rule for f in conv.findings] == ["cda.identifier.upgraded"]


@pytest.mark.parametrize("filler", ["-", "无", "0000", "0 0 0", "ID_CARD_NO", "身份证号"])
def test_only_a_filler_or_invalid_patient_id_refuses_the_document(filler):
    for ids in (ident(RID, filler), ident(RID, INVALID_ID) + ident("2.16.156.10011.1.12", filler)):
        with pytest.raises(MappingError) as ei:
            mapped(wst500(patient_ids=ids))
        assert (ei.value.code, ei.value.rule) == ("AE", "cda.header.patient-id-missing")
        assert filler not in ei.value.reason and INVALID_ID not in ei.value.reason


@pytest.mark.parametrize("author_id", ["-", "无", "医务人员编码", "医务人员编号", "责任护士工号"])
def test_authors_with_a_filler_id_and_different_names_are_different_practitioners(author_id):
    seen = {}
    for i, name in enumerate(NAMES[:4]):
        conv, t = mapped(wst500(doc_id=f"D{i}", author_id=ident("2.16.156.10011.1.4", author_id),
                                author_name=name))
        (pr,) = t["Practitioner"]
        assert "identifier" not in pr and pr["name"][0]["text"] == name
        seen[pr["id"]] = name
        (f,) = [f for f in conv.findings if f.rule == "cda.identifier.placeholder"]
        assert f.location == "/ClinicalDocument/author/assignedAuthor/id" and author_id not in f.message
    assert len(seen) == 4
    # the same name at the same institution is the same person, whatever filler stood in the id
    again = mapped(wst500(doc_id="D9", author_id=ident("2.16.156.10011.1.4", "-"), author_name=NAMES[0]))[1]
    assert again["Practitioner"][0]["id"] in seen


def test_nameless_author_with_a_filler_id_is_scoped_to_its_document():
    ids = set()
    for i in range(3):
        t = mapped(wst500(doc_id=f"D{i}", author_id=ident("2.16.156.10011.1.4", "-"), author_name=None))[1]
        (pr,) = t["Practitioner"]
        ids.add(pr["id"])
        assert "identifier" not in pr
    assert len(ids) == 3


def test_filler_visit_number_and_encounter_id_are_not_encounter_keys():
    enc = ('<componentOf><encompassingEncounter>' + ident("2.16.156.10011.1.11", "-") +
           '<effectiveTime value="20240312"/></encompassingEncounter></componentOf>')
    encounters = set()
    for i, name in enumerate(NAMES[:3]):
        ids = ident(RID, VALID_ID[:-1] + "X") + ident("2.16.156.10011.1.12", "无")
        conv, t = mapped(wst500(doc_id=f"D{i}", name=name, patient_ids=ids, encounter=enc))
        (e,) = t["Encounter"]
        assert "identifier" not in e
        encounters.add(e["id"])
        assert len([f for f in conv.findings if f.rule == "cda.identifier.placeholder"]) == 2
    assert len(encounters) == 3


def test_filler_organization_and_location_ids():
    enc = ('<componentOf><encompassingEncounter><effectiveTime value="20240312"/><location><healthCareFacility>'
           '<serviceProviderOrganization>' + ident("2.16.156.10011.1.22", "-") + '<name>3床</name>'
           '<asOrganizationPartOf><wholeOrganization>' + ident("2.16.156.10011.1.26", "-") + '<name>心内科</name>'
           '</wholeOrganization></asOrganizationPartOf></serviceProviderOrganization>'
           '</healthCareFacility></location></encompassingEncounter></componentOf>')
    conv, t = mapped(wst500(encounter=enc))
    dept = [o for o in t["Organization"] if o.get("name") == "心内科"]
    assert len(dept) == 1 and "identifier" not in dept[0]
    (loc,) = t["Location"]
    assert loc["name"] == "3床" and "identifier" not in loc
    other = mapped(wst500(encounter=enc.replace("心内科", "骨科")))[1]
    assert {o["id"] for o in other["Organization"]} != {o["id"] for o in t["Organization"]}


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="0123456789", min_size=17, max_size=17), st.sampled_from(NAMES))
def test_no_failing_resident_id_is_ever_stored_or_keyed(first17, name):
    bad = first17 + str((int(resident_id.check_digit(first17).replace("X", "10")) + 1) % 10)
    conv, t = mapped(wst500(name=name, patient_ids=ident(RID, bad) + ident("2.16.156.10011.1.13", "BA1")))
    (p,) = t["Patient"]
    assert p["identifier"] == [{"system": "urn:oid:2.16.156.10011.1.13", "value": "BA1", "type": {"text": "病案号"}}]
    assert {f.rule for f in conv.findings} & {"cda.identifier.check-digit", "cda.identifier.placeholder"}
