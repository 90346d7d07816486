"""What WS/T 500 documents say, mapped as a clinician reads it: a diagnosis' name and code are one
Condition, "无" is no finding at all."""

from __future__ import annotations

import orjson
import pytest

from fhir_mapping.cda import convert_traced
from tests.cda_docs import SRC, by_type, wst500
from tests.test_cda_helpers import check_no_silent_drops, invalid_resources

DE = 'codeSystem="2.16.156.10011.2.2.1"'


def obs(code: str, label: str, value: str, nested: str = "") -> str:
    rel = f'<entryRelationship typeCode="COMP">{nested}</entryRelationship>' if nested else ""
    return (f'<observation classCode="OBS" moodCode="EVN"><code code="{code}" {DE} displayName="{label}"/>'
            f'{value}{rel}</observation>')


def st(text: str) -> str:
    return f'<value xsi:type="ST">{text}</value>'


def cd(code: str, display: str, system: str = "2.16.156.10011.2.3.3.11") -> str:
    return f'<value xsi:type="CD" code="{code}" displayName="{display}" codeSystem="{system}"/>'


def section(*entries: str) -> str:
    return ('<component><section><code code="11535-2" codeSystem="2.16.840.1.113883.6.1"/><title>出院诊断</title>'
            + "".join(f"<entry>{e}</entry>" for e in entries) + "</section></component>")


def run(*entries: str):
    conv, trace = convert_traced(wst500(sections=section(*entries)), SRC)
    assert invalid_resources(conv) == []
    check_no_silent_drops(conv, trace)
    return conv, by_type(conv)


NAME = ("DE05.01.025.00", "出院诊断-西医诊断名称")
CODE = ("DE05.01.024.00", "出院诊断-西医诊断编码")


def test_name_with_nested_code_is_one_condition():
    conv, t = run(obs(*NAME, st("高血压病3级（极高危）"), obs(*CODE, cd("I10.x05", "高血压3级"))))
    (c,) = t["Condition"]
    assert c["code"]["text"] == "高血压病3级（极高危）"
    assert c["code"]["coding"] == [{"system": "urn:oid:2.16.156.10011.2.3.3.11", "code": "I10.x05",
                                    "display": "高血压3级"}]


def test_code_with_nested_name_is_one_condition():
    conv, t = run(obs(*CODE, cd("E11.9", "2型糖尿病"), obs(*NAME, st("2型糖尿病"))))
    (c,) = t["Condition"]
    assert c["code"]["coding"][0]["code"] == "E11.9" and c["code"]["text"] == "2型糖尿病"


def test_tcm_name_and_code_side_by_side_in_an_organizer():
    org = ('<organizer classCode="CLUSTER" moodCode="EVN"><statusCode code="completed"/>'
           f'<component>{obs("DE05.10.172.00", "中医病名名称", st("眩晕病"))}</component>'
           f'<component>{obs("DE05.10.130.00", "中医病名代码", cd("BNG070", "眩晕病", "2.16.156.10011.2.3.3.14"))}</component>'
           f'<component>{obs("DE05.10.172.00", "中医证候名称", st("痰湿内阻证"))}</component>'
           f'<component>{obs("DE05.10.130.00", "中医证候代码", cd("ZBMTS0", "痰湿内阻证", "2.16.156.10011.2.3.3.14"))}</component>'
           f'<component>{obs("DE09.00.104.00", "入院病情代码", cd("1", "有", "2.16.156.10011.2.3.1.253"))}</component>'
           '</organizer>')
    conv, t = run(org)
    assert sorted((c["code"]["text"], c["code"]["coding"][0]["code"]) for c in t["Condition"]) == \
        [("痰湿内阻证", "ZBMTS0"), ("眩晕病", "BNG070")]
    assert len(t["Observation"]) == 1  # 入院病情 stays an observation


def test_name_and_code_in_neighbouring_entries():
    conv, t = run(obs(*NAME, st("急性阑尾炎")), obs(*CODE, cd("K35.9", "急性阑尾炎")),
                  obs(*CODE, cd("I10", "高血压")))
    assert sorted((c["code"].get("text", ""), c["code"]["coding"][0]["code"]) for c in t["Condition"]) == \
        [("", "I10"), ("急性阑尾炎", "K35.9")]


def test_filler_values_make_no_resource():
    conv, t = run(obs(*NAME, st("无"), obs(*CODE, '<value xsi:type="CD" nullFlavor="NI"/>')),
                  obs("DE04.50.130.00", "检验报告结果", st("无")),
                  obs("DE06.00.179.00", "备注", st("-")),
                  obs("DE05.01.024.00", "诊断编码", '<value xsi:type="CD" nullFlavor="UNK"/>'))
    assert "Condition" not in t and "Observation" not in t
    found = [f for f in conv.findings if f.rule == "cda.entry.absent-value"]
    assert len(found) == 5 and {f.severity for f in found} == {"information"}
    div = t["Composition"][0]["section"][0]["text"]["div"]
    assert "检验报告结果: 无" in div  # still readable in the narrative


@pytest.mark.parametrize("written", ["无。", "（无）", "无.", "(無)", "不详。"])
def test_a_punctuated_filler_makes_no_resource(written):
    """An allergy "无。" became an AllergyIntolerance "无。" (and a diagnosis "（无）" a Condition) where
    "无" made none: the clinical filler rule reads the value without its punctuation."""
    conv, t = run(obs("DE02.10.022.00", "过敏史", st(written)), obs(*NAME, st(written)))
    assert "AllergyIntolerance" not in t and "Condition" not in t
    assert len([f for f in conv.findings if f.rule == "cda.entry.absent-value"]) == 2


@pytest.mark.parametrize("written", ["+", "++", "±", "（+）", "＋＋＋"])
def test_a_graded_result_written_in_signs_is_kept(written):
    """A laboratory result graded in signs (a dipstick's "++", an occult blood "±") was read as
    punctuation, a filler: the result left the report's data with an information finding."""
    conv, t = run(obs("DE04.50.130.00", "检验报告结果", st(written)))
    assert [o["valueString"] for o in t["Observation"]] == [written]
    assert not [f for f in conv.findings if f.rule == "cda.entry.absent-value"]


def test_a_punctuated_clinical_word_is_still_a_value():
    """其他 (a category) and 待查 (to be confirmed) are identifier fillers only: in a clinical value
    they say something, punctuated or not."""
    conv, t = run(obs("DE02.10.022.00", "过敏史", st("其他。")), obs(*NAME, st("（待查）")))
    assert [a["code"]["text"] for a in t["AllergyIntolerance"]] == ["其他。"]
    assert [c["code"]["text"] for c in t["Condition"]] == ["（待查）"]


def test_filler_name_keeps_the_code_and_zero_is_a_value():
    conv, t = run(obs(*NAME, st("无"), obs(*CODE, cd("J18.9", "肺炎"))),
                  obs("DE04.10.167.00", "出血量", '<value xsi:type="PQ" value="0" unit="mL"/>'),
                  obs("DE04.01.119.00", "主诉", st("11")))
    (c,) = t["Condition"]
    assert c["code"] == {"coding": [{"system": "urn:oid:2.16.156.10011.2.3.3.11", "code": "J18.9", "display": "肺炎"}]}
    assert sorted(str(o.get("valueQuantity", o.get("valueString"))) for o in t["Observation"]) == \
        ["11", "{'value': 0, 'unit': 'mL', 'system': 'http://unitsofmeasure.org', 'code': 'mL'}"]


def test_sample_admission_discharge_record_pairs_every_diagnosis():
    from tests.test_cda_helpers import SAMPLES
    paths = sorted((SAMPLES / "wst500-cda").glob("C035*.xml"))
    if not paths:
        import pytest
        pytest.skip("../shared/samples not present")
    conv, trace = convert_traced(paths[0].read_bytes(), SRC)
    check_no_silent_drops(conv, trace)
    conds = by_type(conv)["Condition"]
    assert len(conds) == 6  # admission and discharge: western, TCM disease, TCM syndrome
    assert all(c["code"].get("coding") and c["code"].get("text") for c in conds)


def test_a_name_keeps_its_nested_code_even_with_a_code_entry_next_to_it():
    conv, t = run(obs(*NAME, st("急性阑尾炎"), obs(*CODE, cd("K35.9", "急性阑尾炎"))),
                  obs(*CODE, cd("I10", "高血压")))
    assert sorted((c["code"].get("text", ""), c["code"]["coding"][0]["code"]) for c in t["Condition"]) == \
        [("", "I10"), ("急性阑尾炎", "K35.9")]


TEMP = ("DE04.10.186.00", "体温")
SBP = ("DE04.10.174.00", "收缩压")


def test_a_titre_is_a_ratio_of_its_numerator_and_denominator():
    """An RTO value (1:320, with or without units) is valueRatio; it was dataAbsentReason unknown."""
    for written, expected in (
            ('<value xsi:type="RTO_PQ_PQ"><numerator value="1" unit="1"/><denominator value="320" unit="1"/></value>',
             {"numerator": {"value": 1, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"},
              "denominator": {"value": 320, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}}),
            ('<value xsi:type="RTO"><numerator value="1"/><denominator value="80"/></value>',
             {"numerator": {"value": 1}, "denominator": {"value": 80}})):
        _, t = run(obs("DE04.50.001.00", "抗体滴度", written))
        (o,) = t["Observation"]
        assert o["valueRatio"] == expected and "dataAbsentReason" not in o


def test_a_value_without_a_unit_gets_none_invented():
    """A REAL 1.50 on 体温 stays unitless: the data element's usual unit (Cel) is not put on it."""
    _, t = run(obs(*TEMP, '<value xsi:type="REAL" value="1.50"/>'))
    (o,) = t["Observation"]
    assert orjson.dumps(o["valueQuantity"]) == b'{"value":1.50}'
    _, t = run(obs(*TEMP, '<value xsi:type="PQ" value="37.5" unit="℃"/>'))
    assert t["Observation"][0]["valueQuantity"]["unit"] == "℃"


def test_a_quantity_keeps_its_translation():
    """A PQ with a translation (98.6 [degF] = 37 Cel) keeps both: the translation in the ISO 21090
    PQ-translation extension of the Quantity."""
    _, t = run(obs(*TEMP, '<value xsi:type="PQ" value="98.6" unit="[degF]"><translation value="37" code="Cel" '
                          'codeSystem="2.16.840.1.113883.6.8"/></value>'))
    q = t["Observation"][0]["valueQuantity"]
    assert q["value"] == 98.6 and q["unit"] == "[degF]"
    assert q["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-PQ-translation",
                               "valueQuantity": {"value": 37, "unit": "Cel", "system": "http://unitsofmeasure.org",
                                                 "code": "Cel"}}]


def test_every_value_of_an_observation_is_kept():
    """Two <value>s (120 and 80 mmHg): the first is the value, the second a component with the
    observation's code, and a finding says so; the second was dropped without a word."""
    conv, t = run(obs(*SBP, '<value xsi:type="PQ" value="120" unit="mmHg"/><value xsi:type="PQ" value="80" unit="mmHg"/>'))
    (o,) = t["Observation"]
    assert o["valueQuantity"]["value"] == 120
    (comp,) = o["component"]
    assert comp["code"] == o["code"] and comp["valueQuantity"] == {
        "value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    (f,) = [f for f in conv.findings if f.rule == "cda.value.several"]
    assert f.location.endswith("/observation/value[2]")


def test_a_value_the_mapper_cannot_read_is_reported():
    conv, t = run(obs(*TEMP, '<value xsi:type="IVL_TS"><width unit="min" value="30"/></value>'))
    assert t["Observation"][0]["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    (f,) = [f for f in conv.findings if f.rule == "cda.value.unread"]
    assert f.location.endswith("/observation/value")
