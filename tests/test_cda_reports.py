"""检验报告 / 检查报告: one DiagnosticReport over the results; a test item written as an organizer of
data elements is one Observation with its value, unit, interpretation and specimen."""

from __future__ import annotations

import orjson
import pytest

from fhir_mapping.cda import convert_traced
from fhir_mapping.numbers import value_of
from tests.cda_docs import SRC, by_type, wst500
from tests.test_cda_helpers import check_no_silent_drops, invalid_resources

DE = 'codeSystem="2.16.156.10011.2.2.1"'


def obs(code, label, value, *nested, effective=""):
    rels = "".join(f'<entryRelationship typeCode="COMP">{n}</entryRelationship>' for n in nested)
    return (f'<observation classCode="OBS" moodCode="EVN"><code code="{code}" {DE} displayName="{label}"/>'
            f'{effective}{value}{rels}</observation>')


def item(test_code, test_name, value, unit, flag, specimen=None):
    return ('<organizer classCode="CLUSTER" moodCode="EVN"><statusCode code="completed"/>'
            + item_components(test_code, test_name, value, unit, flag, specimen) + "</organizer>")


def item_components(test_code, test_name, value, unit, flag, specimen=None, result_extra=""):
    spec = obs("DE04.50.134.00", "标本类别", f'<value xsi:type="ST">{specimen}</value>',
               effective='<effectiveTime><low value="20240312070000"/><high value="20240312073000"/></effectiveTime>') \
        if specimen else ""
    comps = [obs("DE04.30.019.00", "检验项目代码",
                 f'<value xsi:type="CD" code="{test_code}" displayName="{test_name}" codeSystem="1.2.156.112604.1.9"/>',
                 *([spec] if spec else []), effective='<effectiveTime value="20240312080000"/>'),
             obs("DE04.30.017.00", "检验结果代码",
                 f'<value xsi:type="CD" code="{flag[0]}" displayName="{flag[1]}" codeSystem="2.16.156.10011.2.3.2.38"/>'),
             obs("DE04.30.015.00", "检验定量结果", value if value.startswith("<") else
                 f'<value xsi:type="REAL" value="{value}"/>',
                 obs("DE04.30.016.00", "检验定量结果计量单位", f'<value xsi:type="ST">{unit}</value>'))]
    if result_extra:  # after what the result nests, in its own observation
        comps[-1] = comps[-1][:-len("</observation>")] + result_extra + "</observation>"
    return "".join(f"<component>{c}</component>" for c in comps)


def st(text):
    return f'<value xsi:type="ST">{text}</value>'


def lab_report(conclusion="血常规未见明显异常"):
    method = obs("DE02.10.027.00", "检验方法名称", st("仪器法"))
    results = ('<component><section><code code="30954-2" codeSystem="2.16.840.1.113883.6.1"/>'
               f'<entry>{method}</entry>'
               f'<entry>{item("HGB", "血红蛋白", "132", "g/L", ("0", "正常"), specimen="静脉血")}</entry>'
               f'<entry>{item("WBC", "白细胞计数", "11.8", "10^9/L", ("1", "异常"))}</entry></section></component>')
    concl = obs("DE04.50.130.00", "检验报告结果", st(conclusion))
    report = ('<component><section><code displayName="检验报告"/>'
              f'<entry>{concl}</entry>'
              '</section></component>')
    return wst500(code="C0007", template="2.16.156.10011.2.1.1.27", sections=results + report)


def test_lab_report_is_a_diagnostic_report_over_its_results():
    conv, trace = convert_traced(lab_report(), SRC)
    assert invalid_resources(conv) == []
    check_no_silent_drops(conv, trace)
    t = by_type(conv)
    (rep,) = t["DiagnosticReport"]
    obs_by_code = {o["code"]["coding"][0]["code"]: o for o in t["Observation"]}
    assert set(obs_by_code) == {"HGB", "WBC"}  # one Observation per test item, nothing else
    assert sorted(r["reference"] for r in rep["result"]) == sorted(f"Observation/{o['id']}" for o in t["Observation"])
    assert rep["category"][0]["coding"][0]["code"] == "LAB"
    results_section = t["Composition"][0]["section"][0]
    assert results_section["entry"][0] == {"reference": f"DiagnosticReport/{rep['id']}"}  # read with its results
    assert rep["conclusion"] == "血常规未见明显异常"
    assert rep["effectiveDateTime"] == "2024-03-12T08:00:00+08:00"
    hgb, wbc = obs_by_code["HGB"], obs_by_code["WBC"]
    assert hgb["code"]["coding"][0]["display"] == "血红蛋白"
    assert hgb["valueQuantity"] == {"value": 132, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}
    assert wbc["valueQuantity"]["code"] == "10*9/L" and wbc["interpretation"][0]["coding"][0]["display"] == "异常"
    assert hgb["method"] == {"text": "仪器法"}
    (spec,) = t["Specimen"]
    assert spec["type"] == {"text": "静脉血"} and spec["collection"]["collectedDateTime"] == "2024-03-12T07:00:00+08:00"
    assert hgb["specimen"] == {"reference": f"Specimen/{spec['id']}"} and rep["specimen"] == [hgb["specimen"]]


def test_filler_conclusion_is_no_conclusion():
    conv, _ = convert_traced(lab_report(conclusion="无"), SRC)
    (rep,) = by_type(conv)["DiagnosticReport"]
    assert "conclusion" not in rep
    assert any(f.rule == "cda.entry.absent-value" for f in conv.findings)


def test_other_documents_make_no_diagnostic_report():
    conv, _ = convert_traced(lab_report().replace(b'code="C0007"', b'code="C0010"')
                             .replace(b"2.16.156.10011.2.1.1.27", b"2.16.156.10011.2.1.1.30"), SRC)
    assert "DiagnosticReport" not in by_type(conv)


def test_a_quantitative_result_the_mapper_cannot_read_as_a_number_is_kept():
    """检验定量结果 written as something other than a plain decimal PQ or REAL is kept (a range, a
    text like <0.5, a REAL with an exponent), never dropped for the interpretation (异常)."""
    plain = '<value xsi:type="REAL" value="11.8"/>'
    assert plain.encode() in lab_report()
    cases = {
        '<value xsi:type="PQ" value="&lt;0.5" unit="10^9/L"/>': ("valueString", "<0.5 10^9/L"),
        '<value xsi:type="ST">&lt;0.5</value>': ("valueString", "<0.5"),
        '<value xsi:type="IVL_PQ"><low value="1.0" unit="mg"/><high value="2" unit="mg"/></value>':
            ("valueRange", {"low": {"value": 1.0, "unit": "mg", "system": "http://unitsofmeasure.org",
                                    "code": "mg"},
                            "high": {"value": 2, "unit": "mg", "system": "http://unitsofmeasure.org",
                                     "code": "mg"}}),
        '<value xsi:type="REAL" value="1.5e3"/>': ("valueQuantity", 1500.0),
    }
    for written, (element, expected) in cases.items():
        conv, trace = convert_traced(lab_report().replace(plain.encode(), written.encode()), SRC)
        assert invalid_resources(conv) == [], written
        check_no_silent_drops(conv, trace)
        wbc = next(o for o in by_type(conv)["Observation"] if o["code"]["coding"][0]["code"] == "WBC")
        assert "valueCodeableConcept" not in wbc, written  # not the interpretation in its place
        got = wbc[element]
        if element == "valueQuantity":
            assert value_of(got["value"]) == expected and got["code"] == "10*9/L", got
            assert b'"value":1.5e3' in orjson.dumps(got)  # as written
        else:
            assert got == expected, (written, got)
        if element == "valueString":
            assert any(f.rule == "cda.value.invalid-quantity" for f in conv.findings), written


def test_record_numbers_in_patient_role_number_the_records_not_the_patient():
    """WS/T 500 puts the request form (电子申请单编号, 1.24), the report (1.33) and the specimen
    (1.14) numbers in patientRole. They became Patient identifiers, and the request form's
    number even the Patient's key: each new request of one outpatient made another Patient."""
    from tests.cda_docs import VALID_ID, ident

    def doc(requisition, report, specimen):
        ids = (ident("2.16.156.10011.1.11", "MZ0001") + ident("2.16.156.10011.1.24", requisition)
               + ident("2.16.156.10011.1.33", report) + ident("2.16.156.10011.1.14", specimen))
        return lab_report().replace(ident("2.16.156.10011.1.3", VALID_ID).encode(), ids.encode(), 1)

    conv, _ = convert_traced(doc("SQ1", "R1", "S1"), SRC)
    t = by_type(conv)
    (pat,) = t["Patient"]
    assert {i["value"] for i in pat["identifier"]} == {"MZ0001"}
    (rep,) = t["DiagnosticReport"]
    assert rep["identifier"][0]["value"] == "R1"
    assert rep["basedOn"] == [{"type": "ServiceRequest", "identifier": rep["basedOn"][0]["identifier"]}]
    assert rep["basedOn"][0]["identifier"]["value"] == "SQ1"
    assert t["Specimen"][0]["accessionIdentifier"]["value"] == "S1"
    (ref,) = t["DocumentReference"]
    assert {"type": "ServiceRequest", "identifier": rep["basedOn"][0]["identifier"]} in ref["context"]["related"]
    other, _ = convert_traced(doc("SQ2", "R2", "S2"), SRC)
    assert by_type(other)["Patient"][0]["id"] == pat["id"]  # one outpatient, one Patient


def _lab(*organizers):
    entries = "".join(f"<entry>{o}</entry>" for o in organizers)
    conv, trace = convert_traced(wst500(code="C0007", template="2.16.156.10011.2.1.1.27", sections=(
        '<component><section><code code="30954-2" codeSystem="2.16.840.1.113883.6.1"/>'
        f'{entries}</section></component>')), SRC)
    assert invalid_resources(conv) == []
    check_no_silent_drops(conv, trace)
    return conv, by_type(conv)


def _cluster(*components):
    return '<organizer classCode="CLUSTER" moodCode="EVN"><statusCode code="completed"/>' + "".join(components) + \
        "</organizer>"


def test_each_test_item_of_one_organizer_is_its_own_result():
    """An organizer with K 4.1 and Na 140: two Observations, each with its own value, unit and
    interpretation, both results of the report. Only K was kept, with both items' flags."""
    conv, t = _lab(_cluster(item_components("K", "钾", "4.1", "mmol/L", ("0", "正常"), specimen="血清"),
                            item_components("NA", "钠", "150", "mmol/L", ("1", "异常"))))
    by_code = {o["code"]["coding"][0]["code"]: o for o in t["Observation"]}
    assert set(by_code) == {"K", "NA"}
    k, na = by_code["K"], by_code["NA"]
    assert (value_of(k["valueQuantity"]["value"]), k["valueQuantity"]["unit"]) == (4.1, "mmol/L")
    assert (value_of(na["valueQuantity"]["value"]), na["valueQuantity"]["unit"]) == (150, "mmol/L")
    assert [i["coding"][0]["display"] for i in k["interpretation"]] == ["正常"]
    assert [i["coding"][0]["display"] for i in na["interpretation"]] == ["异常"]
    assert k["id"] != na["id"] and "specimen" in k and "specimen" not in na
    (rep,) = t["DiagnosticReport"]
    assert [r["reference"] for r in rep["result"]] == [f"Observation/{k['id']}", f"Observation/{na['id']}"]


def test_a_titre_result_is_a_ratio_not_its_flag():
    """检验定量结果 written as RTO (1:320) is valueRatio; it was replaced by the interpretation."""
    rto = '<value xsi:type="RTO_INT_INT"><numerator value="1"/><denominator value="320"/></value>'
    _, t = _lab(_cluster(item_components("HBsAb", "乙肝表面抗体", rto, "", ("1", "异常"))))
    (o,) = t["Observation"]
    assert o["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 320}}
    assert "valueCodeableConcept" not in o and o["interpretation"][0]["coding"][0]["display"] == "异常"


def test_a_lab_result_keeps_its_reference_range_and_interpretation_code():
    rng = ('<interpretationCode code="H" codeSystem="2.16.840.1.113883.5.83"/>'
           '<referenceRange><observationRange><value xsi:type="IVL_PQ"><low value="3.9" unit="mmol/L"/>'
           '<high value="6.1" unit="mmol/L"/></value></observationRange></referenceRange>')
    _, t = _lab(_cluster(item_components("GLU", "葡萄糖", "7.80", "mmol/L", ("1", "异常"), result_extra=rng)))
    (o,) = t["Observation"]
    (rr,) = o["referenceRange"]
    assert (value_of(rr["low"]["value"]), value_of(rr["high"]["value"]), rr["high"]["code"]) == (3.9, 6.1, "mmol/L")
    assert [c["coding"][0]["code"] for c in o["interpretation"]] == ["1", "H"]


def test_items_of_one_organizer_keep_their_own_specimens_and_extra_results():
    """Each item's own specimen is its own Specimen; a result written without its item code is
    kept as an Observation about the item before it, never taken in silently."""
    extra = '<component>' + obs("DE04.30.015.00", "检验定量结果", '<value xsi:type="REAL" value="151"/>') + '</component>'
    _, t = _lab(_cluster(item_components("K", "钾", "4.1", "mmol/L", ("0", "正常"), specimen="血清"),
                         item_components("NA", "钠", "150", "mmol/L", ("1", "异常"), specimen="全血"), extra))
    by_code = {o["code"]["coding"][0]["code"]: o for o in t["Observation"]}
    specs = {f"Specimen/{s['id']}": s["type"]["text"] for s in t["Specimen"]}
    assert specs[by_code["K"]["specimen"]["reference"]] == "血清"
    assert specs[by_code["NA"]["specimen"]["reference"]] == "全血"
    assert by_code["DE04.30.015.00"]["focus"] == [{"reference": f"Observation/{by_code['NA']['id']}"}]
    assert value_of(by_code["DE04.30.015.00"]["valueQuantity"]["value"]) == 151


HGB_CODE = '<value xsi:type="CD" code="HGB" displayName="血红蛋白" codeSystem="1.2.156.112604.1.9"/>'


@pytest.mark.parametrize("written, code", [
    # a code of a code system is the test, whatever word it spells: NA is sodium
    ('<value xsi:type="CD" code="NA" displayName="钠" codeSystem="1.2.156.112604.1.9"/>', "NA"),
    ('<value xsi:type="CD" code="NA" codeSystem="1.2.156.112604.1.9"/>', "NA"),
    ('<value xsi:type="CD" code="NA" displayName="Na" codeSystem="1.2.156.112604.1.9"/>', "NA"),
    # no code system: "N/A", "NA" written in place of the test say nothing
    ('<value xsi:type="CD" displayName="N/A"/>', None),
    ('<value xsi:type="ST">NA</value>', None),
    ('<value xsi:type="CD" code="-" codeSystem="1.2.156.112604.1.9"/>', None),
])
def test_a_test_coded_like_a_filler_word_keeps_its_code(written, code):
    """A test item coded "NA" (sodium) was taken for the filler "na" and named 检验项目代码 instead."""
    doc = lab_report()
    assert HGB_CODE.encode() in doc
    conv, trace = convert_traced(doc.replace(HGB_CODE.encode(), written.encode()), SRC)
    assert invalid_resources(conv) == []
    check_no_silent_drops(conv, trace)
    first = next(o for o in by_type(conv)["Observation"] if o["valueQuantity"]["value"] == 132)
    codes = [c["code"] for c in first["code"]["coding"]]
    filler = [f for f in conv.findings if f.rule == "cda.entry.absent-value" and "test item code" in f.message]
    if code:
        assert codes[0] == code and codes[-1] == "DE04.30.019.00" and not filler
        assert first["code"]["coding"][0]["system"] == "urn:oid:1.2.156.112604.1.9"
    else:
        assert codes == ["DE04.30.019.00"] and filler
