"""Normalisation of Patients for matching: ID numbers, names, phones, districts (hub.mpi.normalise)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from hub.mpi.normalise import (
    RESIDENT_ID, clean_name, features, name_pinyin, phone_digits, resident_id_features, simplify,
    split_surname, surname_pinyin,
)
from terminology.resident_id import check_digit

ID18 = "11010519491231002X"  # the GB 11643 example: born 1949-12-31, female


def patient(**kw) -> dict:
    p = {"resourceType": "Patient", "id": "x", "name": [{"family": "张", "given": ["三"]}],
         "gender": "male", "birthDate": "1980-01-02"}
    p.update(kw)
    return p


def test_resident_id_valid_and_derived_facts():
    assert resident_id_features(ID18, "female", "1949-12-31") == (ID18, "valid")
    assert resident_id_features(ID18.lower(), None, None) == (ID18, "valid")
    assert resident_id_features(" 110105 19491231 002X ", "female", None) == (ID18, "valid")
    assert resident_id_features("１１０１０５１９４９１２３１００２Ｘ", None, None) == (ID18, "valid")  # full width


def test_resident_id_check_digit_typo_is_invalid_but_kept():
    typo = ID18[:3] + "2" + ID18[4:]
    assert resident_id_features(typo, None, None) == (typo, "invalid")


def test_resident_id_15_digits_upgraded():
    first17 = "110105" + "19" + "491231" + "002"
    assert resident_id_features("110105491231002", None, None) == (first17 + check_digit(first17), "valid")


def test_resident_id_placeholders_and_junk():
    for v in ("000000000000000000", "111111111111111111", "123456789012345678", "000000198001010012"):
        assert resident_id_features(v, None, None) == (None, "placeholder")
    assert resident_id_features("abc", None, None) == (None, "malformed")
    assert resident_id_features("", None, None) == (None, None)


def test_resident_id_contradicting_sex_or_birth_is_someone_elses():
    assert resident_id_features(ID18, "male", None)[1] == "inconsistent"
    assert resident_id_features(ID18, "female", "2023-05-01")[1] == "inconsistent"  # a parent's number
    # day and month swapped in the record: still this person's number
    first17 = "11010519800304002"
    idno = first17 + check_digit(first17)
    assert resident_id_features(idno, "female", "1980-04-03")[1] == "valid"


def test_traditional_folded_and_trimmed():
    assert simplify(" 張曉東 ") == "张晓东"
    assert clean_name("劉　德華") == "刘德华"
    f = features(patient(name=[{"family": "單", "given": ["國強"]}]))
    assert f["name"] == "单国强" and f["fam"] == "单" and f["py"] == "shanguoqiang"


def test_surname_readings():
    expected = {"单": "shan", "曾": "zeng", "解": "xie", "区": "ou", "仇": "qiu", "朴": "piao",
                "查": "zha", "欧阳": "ouyang", "尉迟": "yuchi", "万俟": "moqi"}
    for family, reading in expected.items():
        assert surname_pinyin(family) == reading, family
    assert name_pinyin("曾", "曾") == "zengceng"  # the given name keeps the word reading
    assert split_surname("欧阳明") == ("欧阳", "明")
    assert split_surname("单明") == ("单", "明")


def test_minority_name_separators():
    for text in ("买买提·艾力", "买买提•艾力", "买买提.艾力", "买买提 · 艾力", "买买提・艾力"):
        f = features(patient(name=[{"text": text}]))
        assert f["name"] == "买买提艾力", text
    assert features(patient(name=[{"family": "艾力", "given": ["买买提"]}]))["py"] == "ailimaimaiti"


def test_latin_name_words_kept_when_one_is_a_lone_letter():
    # the name drops its spaces (Baby A reads babya): the words are kept for a lone letter or numeral
    f = features(patient(name=[{"family": "Smith", "given": ["Baby", "A"]}]))
    assert f["name"] == "smithbabya" and f["nw"] == "smith baby a"
    assert features(patient(name=[{"family": "Smith", "given": ["John A."]}]))["nw"] == "smith john a"
    assert features(patient(name=[{"text": "Baby II Smith"}]))["nw"] == "baby ii smith"
    assert "nw" not in features(patient(name=[{"family": "Smith", "given": ["John"]}]))
    assert "nw" not in features(patient())  # not a Latin-script name


def test_newborn_placeholder_name_is_left_out():
    f = features(patient(name=[{"text": "王芳之子"}]))
    assert f["nb"] == 1 and f["name"] is None


def test_phones_and_district():
    assert phone_digits("+86 139-1726-3548") == "13917263548"
    assert phone_digits("0086 13917263548") == "13917263548"
    assert phone_digits("8613917263548") == "13917263548"
    assert phone_digits("000-0000") is None
    p = patient(telecom=[{"system": "phone", "value": "+86 13917263548"}, {"system": "email", "value": "a@b"}],
                address=[{"extension": [{"url": "https://fhir-region-hub.example/StructureDefinition/"
                                                "administrative-division", "valueCode": "500103"}]}])
    f = features(p)
    assert f["ph"] == ["13917263548"] and f["dist"] == "500103"
    assert features(patient(address=[{"text": "重庆市渝中区(500103)解放碑1号"}]))["dist"] == "500103"


def test_identifiers():
    f = features(patient(identifier=[
        {"system": RESIDENT_ID, "value": "000000000000000000"},
        {"system": RESIDENT_ID, "value": "110105198001020015"[:17] + check_digit("11010519800102001")},
        {"system": "urn:oid:2.16.156.10011.1.19", "value": "abc123"},
        {"system": "urn:oid:2.16.156.10011.1.2", "value": "HR-1"},
        {"system": "urn:oid:2.16.156.10011.99.1.7.1", "value": "MRN"}]))
    assert f["ids"] == "valid" and f["hc"] == "ABC123" and f["oid"] == ["urn:oid:2.16.156.10011.1.2|HR-1"]


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["name", "family", "given", "text", "identifier", "system", "value",
                                         "telecom", "address", "extension", "url", "valueCode",
                                         "gender", "birthDate", "use"]), c, max_size=4),
                    max_leaves=20))
def test_features_never_raise(junk):
    p = {"resourceType": "Patient", "id": "j"}
    if isinstance(junk, dict):
        p.update(junk)
    else:
        p["name"] = junk
    f = features(p)
    assert f["ref"] == "Patient/j"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_resident_id_features_total(value):
    idno, status = resident_id_features(value, None, None)
    assert status in (None, "valid", "invalid", "placeholder", "malformed", "inconsistent")
    assert idno is None or len(idno) == 18


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[0-9]{6}(19[5-9][0-9]|20[01][0-9])(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])[0-9]{3}\Z"))
def test_15_and_18_digit_forms_agree(first17):
    if first17[:2] not in ("11", "50", "62", "44"):
        first17 = "50" + first17[2:]
    idno = first17 + check_digit(first17)
    assert resident_id_features(idno, None, None) == (idno, "valid")
    if first17[6:8] == "19":
        old = first17[:6] + first17[8:]
        assert resident_id_features(old, None, None) == (idno, "valid")


def test_newborn_placeholder_split_into_family_and_given_and_twins():
    for family, given in (("王", "丽之子"), ("王", "丽之大子"), ("王", "丽之小女"), ("王", "丽之一子"),
                          ("王", "丽之二女"), ("欧阳", "丽之长子"), ("王", "丽之子二"), ("王丽", "男婴")):
        f = features(patient(name=[{"family": family, "given": [given]}]))
        assert f["nb"] == 1 and f["name"] is None, (family, given)
    for text in ("王丽之大女", "王丽之小子", "王丽女婴二"):
        assert features(patient(name=[{"text": text}]))["nb"] == 1, text
    # a given name ending in 子 or 女 without the mark is a name
    for family, given in (("王", "丽子"), ("李", "子君"), ("孙", "美女")):
        f = features(patient(name=[{"family": family, "given": [given]}]))
        assert f["nb"] == 0 and f["name"] == family + given


def test_district_code_and_name():
    coded = {"url": "https://example.org/any-extension",
             "valueCoding": {"system": "https://fhir-region-hub.example/CodeSystem/gb-t-2260",
                             "code": "440106"}}
    assert features(patient(address=[{"extension": [coded]}]))["dist"] == "440106"
    concept = {"url": "https://example.org/x", "valueCodeableConcept": {"coding": [
        {"system": "https://example.org/other", "code": "999999"},
        {"system": "https://fhir-region-hub.example/CodeSystem/gb-t-2260", "code": "440106"}]}}
    assert features(patient(address=[{"extension": [concept]}]))["dist"] == "440106"
    f = features(patient(address=[{"district": "天河區", "postalCode": "510630"}]))
    assert f["dist"] is None and f["dn"] == "天河区"  # a postal code is not a division code
    f = features(patient(address=[{"district": "440106"}]))
    assert f["dist"] == "440106" and f["dn"] is None
    f = features(patient(address=[{"use": "old", "district": "越秀区"},
                                  {"use": "home", "district": "天河区（440106）"}]))
    assert f["dist"] == "440106" and f["dn"] == "天河区"  # the current address first
    assert features(patient())["dn"] is None


def test_district_names_compare_when_codes_are_missing():
    from hub.mpi.compare import compare

    a = features(patient(address=[{"district": "天河區"}]))
    b = features(patient(address=[{"district": "天河区 "}]))
    c = features(patient(address=[{"district": "越秀区"}]))
    coded = features(patient(address=[{"district": "越秀区", "extension": [
        {"url": "https://fhir-region-hub.example/StructureDefinition/administrative-division",
         "valueCode": "440104"}]}]))
    assert compare(a, b)[0]["dist"] == "same" and compare(a, c)[0]["dist"] == "different"
    assert compare(coded, features(patient(address=[{"district": "440104"}])))[0]["dist"] == "same"


def test_generational_suffix_is_kept_apart_from_the_name():
    """John Smith Jr. is John Smith by name, and a Jr. (a son of a father of that name): the suffix,
    in HumanName.suffix or written at the end of the name, is its own feature."""
    smith = {"family": "Smith", "given": ["John"]}
    for name, sfx in (({**smith, "suffix": ["Jr."]}, "jr"), ({**smith, "suffix": ["PhD", "III"]}, "iii"),
                      ({"family": "Smith Jr.", "given": ["John"]}, "jr"),
                      ({"family": "Smith", "given": ["John", "Sr."]}, "sr"),
                      ({"family": "Smith", "given": ["John Junior"]}, "jr"),
                      (smith, None), ({**smith, "suffix": ["MD"]}, None)):
        f = features(patient(name=[name]))
        assert (f["name"], f.get("sfx")) == ("smithjohn", sfx), name
    assert features(patient(name=[{"text": "John Smith, Sr."}]))["name"] == \
        features(patient(name=[{"text": "John Smith"}]))["name"]
    assert features(patient(name=[{"text": "John Smith, Sr."}]))["sfx"] == "sr"
    # a lone Junior is a given name; Baby Boy II keeps its birth order in the name
    assert features(patient(name=[{"family": "Silva", "given": ["Junior"]}]))["name"] == "silvajunior"
    assert features(patient(name=[{"text": "Baby Boy II"}]))["name"].endswith("ii")
    assert "sfx" not in features(patient())
