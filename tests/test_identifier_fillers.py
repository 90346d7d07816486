"""The filler rule shared by the mappers: template labels left in a field are fillers; in clinical
values, numbers never are."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_mapping.identifiers import is_filler, is_filler_text, key_problem


@pytest.mark.parametrize("value", ["责任护士工号", "会诊科室名称", "医疗卫生机构编号", "主治医师编码", "ID_CARD_NO", "-", "无",
                                   # the HL7 v3 samples' templates: 患者ID keyed two people as one
                                   "患者ID", "PatientID", "被合并患者ID", "登记人ID", "操作人ID",
                                   "文档流水号"])
def test_template_labels_and_fillers_are_no_identifiers(value):
    assert is_filler(value) and key_problem(value, "2.16.156.10011.1.4") == "placeholder"


@pytest.mark.parametrize("value", ["0 0 0", " 0  0 ", "X X X X", "- -", "1 2 3 4 5 6"])
def test_spaces_inside_a_filler_keep_it_a_filler(value):
    assert key_problem(value, "2.16.156.10011.1.12") == "placeholder"


@pytest.mark.parametrize("value", ["無", "不詳", "ー", "ｰ", "ーー", "ㅡ", "－", "―", "‐", "無 ", "身份證號", "測試"])
def test_a_filler_written_in_another_form_is_a_filler(value):
    """The traditional form (無 for 无), a dash-like letter (the katakana long-vowel mark ー an input
    method offers beside the dash), a full-width form: a filler still, for keys and clinical values."""
    assert is_filler(value) and key_problem(value, "2.16.156.10011.1.19") == "placeholder"
    assert is_filler_text(value)


@pytest.mark.parametrize("value", ["D01102", "心内科", "王建国", "HA201102113366666", "ZY20240311007",
                                   "ID20240311007", "PID0001"])
def test_real_identifiers_and_names_are_not_fillers(value):
    assert not is_filler(value)


@given(st.one_of(st.integers(-10**6, 10**6).map(str), st.decimals(allow_nan=False, allow_infinity=False,
                                                                    places=2).map(str)))
def test_a_number_is_always_a_value(v):
    assert not is_filler_text(v)


@pytest.mark.parametrize("value,filler", [("无", True), ("不详", True), ("-", True), ("药物通用名称", True),
                                          ("11", False), ("0", False), ("正常", False), ("阴性", False)])
def test_filler_text(value, filler):
    assert is_filler_text(value) is filler


# digits of other scripts and forms: str.isdigit() takes them, int() does not take all of them
_OTHER_DIGITS = "²³¹⁰₀①٣۳१๓０"


@given(st.text(alphabet=st.sampled_from("0123456789X" + _OTHER_DIGITS), min_size=14, max_size=19),
       st.sampled_from(["urn:oid:2.16.156.10011.1.3", "2.16.156.10011.1.4", None]))
def test_any_digits_are_judged_without_an_error(value, system):
    """A resident ID number with a superscript or an Arabic-Indic digit is refused as a key, not
    a crash (it was a ValueError from int(), so a 500 on a conditional write and a failed
    mapping); only ASCII digits make a number."""
    problem = key_problem(value, system)
    if system == "urn:oid:2.16.156.10011.1.3" and not value.isascii():
        assert problem in ("check-digit", "placeholder")


def test_a_number_written_with_other_digits_is_no_resident_id():
    assert key_problem("11010119900101123²", "urn:oid:2.16.156.10011.1.3") == "check-digit"
    assert key_problem("١١٠١٠١١٩٩٠٠١٠١١٢٣٤", "urn:oid:2.16.156.10011.1.3") == "check-digit"
