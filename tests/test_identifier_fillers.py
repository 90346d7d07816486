"""The filler rule shared by the mappers: template labels left in a field are fillers; in clinical
values, numbers never are."""

from __future__ import annotations

import functools

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
                                          ("11", False), ("0", False), ("正常", False), ("阴性", False),
                                          ("+", False), ("++", False), ("±", False), ("(+)", False),
                                          ("+-", False), ("--", True), ("/", True)])
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


# -- the rule reads past punctuation, case, forms and repetition ------------------------------------

def _table_words() -> list[str]:
    from importlib import resources

    import yaml

    data = yaml.safe_load(resources.files("fhir_mapping").joinpath("tables/fillers.yaml").read_text("utf-8"))
    return [str(v) for v in (*data["values"], *data["identifier_values"])]


_WORDS = _table_words()
# what feeds wrap a filler in: punctuation, brackets, quotes, symbols, spaces (full-width ones too)
_WRAP = st.text(alphabet=st.sampled_from(list(" 　.。,，、:;!?/\\_*#<>()（）[]【】{}「」\"'“”‘’《》~^|+=$@%&\t")),
                max_size=3)


def _full_width(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def _traditional(s: str) -> str:
    return _s2t().convert(s)


@functools.lru_cache(maxsize=1)
def _s2t():
    import opencc  # loading its dictionaries per draw made generation too slow for Hypothesis

    return opencc.OpenCC("s2t")


@st.composite
def _written(draw, word: str) -> str:
    """``word`` as a feed may write it: in any case, full-width or traditional, punctuation or
    spaces between its characters and around it, perhaps twice (a word, not a number: "123123" may
    be a record number)."""
    w = "".join(c.upper() if draw(st.booleans()) else c for c in word)
    w = draw(st.sampled_from([w, _full_width(w), _traditional(w)]))
    inner = "".join(c + draw(st.sampled_from(["", "", ".", " ", "/", "　"])) for c in w)
    times = 1 if word.isdigit() else draw(st.integers(1, 3))
    sep = draw(_WRAP)
    return draw(_WRAP) + sep.join([inner] * times) + draw(_WRAP)


@given(st.sampled_from(_WORDS).flatmap(_written), st.sampled_from(["2.16.156.10011.1.12", None]))
def test_a_filler_word_however_written_is_a_filler(value, system):
    assert is_filler(value) and key_problem(value, system) == "placeholder"


@pytest.mark.parametrize("value", ["无。", "N.A.", "undefined", "(null)", "NaN", "#N/A", "<NULL>", "null null",
                                   "-1", "不明", "未提供", "待定", "暂缺", "无记录", "空白", "无/不详", "（無）",
                                   "－１", "(-1)", "−999", "0-0-0-0", "x x x x", "9999", "其他"])
def test_the_probes_fillers_are_fillers(value):
    assert key_problem(value, "2.16.156.10011.1.12") == "placeholder"


# a record number: letters and digits, sometimes with dashes, in the ways hospital systems write them
_RECORD = st.one_of(
    st.from_regex(r"[A-Z]{1,3}-?(19|20)[0-9]{2}-?[0-9]{3,8}", fullmatch=True),
    st.from_regex(r"(MR|ZY|MZ|BA|P|HC|D)[0-9]{3,10}", fullmatch=True),
    st.from_regex(r"[A-Z][0-9]{1,3}", fullmatch=True),
    # digits only: not one digit repeated nor a run of consecutive digits (those are fillers)
    st.from_regex(r"[0-9]{6,12}", fullmatch=True).filter(
        lambda s: len({(int(b) - int(a)) % 10 for a, b in zip(s, s[1:])}) > 1))


@given(_RECORD)
def test_a_realistic_record_number_is_a_key(value):
    assert key_problem(value, "2.16.156.10011.1.12") is None
    assert key_problem(value.lower(), "2.16.156.10011.1.12") is None


@pytest.mark.parametrize("value", ["MR-2024-001", "1", "7", "A1", "22", "111", "B12", "V-F1", "NA1", "TEST-001",
                                   "N1", "0001234567", "1-1"])
def test_short_and_dashed_record_numbers_stay_keys(value):
    """A small clinic numbers its patients from 1: a short value is a key unless it is listed
    (``0``, ``x``) or a repeated character of the filler kind."""
    assert key_problem(value, "2.16.156.10011.1.12") is None


@pytest.mark.parametrize("value,filler", [("其他", False), ("待定", False), ("缺失", False), ("NaN", True),
                                          ("undefined", True)])
def test_identifier_only_fillers_are_values_in_clinical_text(value, filler):
    """其他 is a category of many code systems and 缺失 a tooth's finding: fillers as an identifier,
    values as a clinical value."""
    assert is_filler(value) and is_filler_text(value) is filler


@pytest.mark.parametrize("value", ["无。", "（无）", "无.", "(無)", "【无】", "无 。", "“无”", "N/A", "n.a.", "#N/A",
                                   "<NULL>", "不详。", "无无", "无/不详", "未知；", "暂无。"])
def test_a_clinical_filler_read_past_its_punctuation_is_a_filler(value):
    """An allergy "无。" or "（无）" became an AllergyIntolerance where "无" made none: the clinical
    rule reads the value as the identifier rule does, without punctuation, brackets and spaces."""
    assert is_filler_text(value)


@pytest.mark.parametrize("value", ["其他。", "（待查）", "缺失.", "待定", "略。", "(0)", "0.", "1,000", "12.5%",
                                   "无青霉素过敏", "青霉素（无）", "阴性。", "（11）"])
def test_a_clinical_value_in_punctuation_stays_a_value(value):
    """Words that say something in a clinical value (其他, 待查: identifier fillers only) and numbers
    stay values however they are punctuated."""
    assert not is_filler_text(value)


def _clinical_words() -> list[str]:
    from importlib import resources

    import yaml

    data = yaml.safe_load(resources.files("fhir_mapping").joinpath("tables/fillers.yaml").read_text("utf-8"))
    return [str(v) for v in data["values"] if not str(v).isdigit()]  # digits are values in clinical text


@given(st.sampled_from(_clinical_words()).flatmap(_written))
def test_a_clinical_filler_word_however_written_is_a_filler(value):
    assert is_filler_text(value)


def _identifier_only_words() -> list[str]:
    from importlib import resources

    import yaml

    data = yaml.safe_load(resources.files("fhir_mapping").joinpath("tables/fillers.yaml").read_text("utf-8"))
    return [str(v) for v in data["identifier_values"]]


@given(st.sampled_from(_identifier_only_words()).flatmap(_written))
def test_an_identifier_only_filler_however_written_stays_a_clinical_value(value):
    """其他, 待查, 缺失 are categories and findings in a clinical value, punctuated or not."""
    assert is_filler(value) and not is_filler_text(value)
