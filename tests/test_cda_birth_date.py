"""An impossible birth date is reported and left out, never silently dropped nor kept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cda_docs import VALID_ID, ident, mapped, wst500

# A record number beside the resident ID number: a birth date far from the one the number encodes makes
# the number someone else's (not this patient's key), and these tests are about the birth date alone.
IDS = ident("2.16.156.10011.1.2", "HR-0001") + ident("2.16.156.10011.1.3", VALID_ID)


@pytest.mark.parametrize("birth", ["19990231", "19991301", "18790101", "20300101", "20240313", "abc"])
def test_impossible_birth_date_is_a_finding_without_birth_date(birth):
    conv, t = mapped(wst500(patient_ids=IDS, birth=birth))  # the document is dated 2024-03-12
    assert "birthDate" not in t["Patient"][0]
    (f,) = [f for f in conv.findings if f.rule == "cda.patient.birth-date-invalid"]
    assert f.severity == "warning" and f.location == "/ClinicalDocument/recordTarget/patientRole/patient/birthTime"
    assert birth not in f.message


@pytest.mark.parametrize("birth,expected", [("19491231", "1949-12-31"), ("1880", "1880"), ("202403", "2024-03"),
                                            ("20240312", "2024-03-12"), ("19800101083000", "1980-01-01")])
def test_possible_birth_date_is_kept(birth, expected):
    conv, t = mapped(wst500(patient_ids=IDS, birth=birth))
    assert t["Patient"][0]["birthDate"] == expected
    assert not [f for f in conv.findings if f.rule.startswith(("cda.patient", "cda.time"))]


@settings(max_examples=30, deadline=None)
@given(st.dates())
def test_birth_date_kept_exactly_when_between_1880_and_the_document(d):
    conv, t = mapped(wst500(patient_ids=IDS, birth=d.strftime("%Y%m%d").zfill(8)))
    ok = 1880 <= d.year and d.isoformat() <= "2024-03-12"
    assert ("birthDate" in t["Patient"][0]) == ok
    assert any(f.rule == "cda.patient.birth-date-invalid" for f in conv.findings) == (not ok)
