"""Entry ids are scoped by their document: hospitals number entries per document, so the same
``<id extension="1"/>`` in two patients' documents must not make one resource of two diagnoses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cda_docs import ident, mapped, wst500

RID = "2.16.156.10011.1.3"


def diagnosis(code: str, name: str, entry_id: str | None = "1") -> str:
    eid = ident("2.16.156.10011.1.99", entry_id) if entry_id is not None else ""
    return (f'<entry><observation classCode="OBS" moodCode="EVN">{eid}'
            '<code code="DE05.01.024.00" codeSystem="2.16.156.10011.2.2.1" displayName="诊断代码"/>'
            f'<value xsi:type="CD" code="{code}" codeSystem="2.16.156.10011.2.3.3.11" displayName="{name}"/>'
            '</observation></entry>')


def section(*entries: str, code: str = "29548-5") -> str:
    return (f'<component><section><code code="{code}" codeSystem="2.16.840.1.113883.6.1"/><title>诊断</title>'
            + "".join(entries) + "</section></component>")


def test_two_documents_reusing_an_entry_id_keep_their_own_conditions():
    a = mapped(wst500(doc_id="A", name="赵一", patient_ids=ident(RID, "11010519491231002X"),
                      sections=section(diagnosis("I10", "高血压"))))[1]
    b = mapped(wst500(doc_id="B", name="钱二", patient_ids=ident(RID, "110105195001010012"),
                      sections=section(diagnosis("E11.9", "2型糖尿病"))))[1]
    (ca,), (cb,) = a["Condition"], b["Condition"]
    assert ca["id"] != cb["id"]
    assert ca["code"]["coding"][0]["code"] == "I10" and cb["code"]["coding"][0]["code"] == "E11.9"
    assert ca["subject"] != cb["subject"]


def test_new_version_of_a_document_updates_the_same_entry_resources():
    v1 = mapped(wst500(doc_id="A1", set_id="SET-A", version=1, sections=section(diagnosis("I10", "高血压"))))[1]
    v2 = mapped(wst500(doc_id="A2", set_id="SET-A", version=2, sections=section(diagnosis("I11.9", "高血压性心脏病"))))[1]
    assert v1["Condition"][0]["id"] == v2["Condition"][0]["id"]
    assert v2["Condition"][0]["code"]["coding"][0]["code"] == "I11.9"
    other = mapped(wst500(doc_id="B1", set_id="SET-B", version=1, sections=section(diagnosis("I10", "高血压"))))[1]
    assert other["Condition"][0]["id"] != v1["Condition"][0]["id"]


def test_same_act_in_two_sections_of_one_document_is_one_resource():
    conv, t = mapped(wst500(sections=section(diagnosis("I10", "高血压")) +
                            section(diagnosis("I10", "高血压"), code="11535-2")))
    assert len(t["Condition"]) == 1
    assert not [f for f in conv.findings if f.rule == "cda.entry.duplicate-id"]


def test_filler_entry_id_is_not_a_key():
    conv, t = mapped(wst500(sections=section(diagnosis("I10", "高血压", "-"), diagnosis("E11.9", "2型糖尿病", "-"))))
    assert sorted(c["code"]["coding"][0]["code"] for c in t["Condition"]) == ["E11.9", "I10"]
    assert not [f for f in conv.findings if f.rule == "cda.entry.duplicate-id"]
    assert len([f for f in conv.findings if f.rule == "cda.identifier.placeholder"]) == 2


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="ABCXYZ0123456789", min_size=1, max_size=8), st.sampled_from(["I10", "E11.9", "J18.9"]))
def test_an_entry_id_never_joins_two_documents(entry_id, code):
    ids = []
    for doc in ("A", "B"):
        t = mapped(wst500(doc_id=doc, sections=section(diagnosis(code, "诊断", entry_id))))[1]
        ids.append(t["Condition"][0]["id"])
    assert ids[0] != ids[1]
    again = mapped(wst500(doc_id="A", sections=section(diagnosis(code, "诊断", entry_id))))[1]
    assert again["Condition"][0]["id"] == ids[0]  # and the same document lands on the same one


def _visit(number: str) -> str:
    return ('<componentOf><encompassingEncounter>'
            f'{ident("2.16.156.10011.1.11", number)}'
            '<effectiveTime><low value="20240312090000"/></effectiveTime>'
            '</encompassingEncounter></componentOf>')


def test_two_patients_documents_with_the_same_visit_number_keep_their_own_visits():
    """A visit number two patients' documents share (a counter reset, a typo) made one Encounter
    whose subject moved to the second patient, under which the first one's results then hung."""
    a = mapped(wst500(doc_id="A", name="赵一", patient_ids=ident(RID, "11010519491231002X"),
                      encounter=_visit("MZ-1"), sections=section(diagnosis("I10", "高血压"))))[1]
    b = mapped(wst500(doc_id="B", name="钱二", patient_ids=ident(RID, "110105195001010012"),
                      encounter=_visit("MZ-1"), sections=section(diagnosis("E11.9", "2型糖尿病"))))[1]
    (ea,), (eb,) = a["Encounter"], b["Encounter"]
    assert ea["id"] != eb["id"] and ea["subject"] != eb["subject"]
    assert a["Condition"][0]["encounter"]["reference"] == f"Encounter/{ea['id']}"
    # the same patient's next document of that visit meets the same Encounter
    again = mapped(wst500(doc_id="C", name="赵一", patient_ids=ident(RID, "11010519491231002X"),
                          encounter=_visit("MZ-1")))[1]
    assert again["Encounter"][0]["id"] == ea["id"]


def _stay(low: str, high: str) -> str:
    return ('<componentOf><encompassingEncounter>' + ident("2.16.156.10011.1.11", "ZY-9")
            + f'<effectiveTime><low value="{low}"/><high value="{high}"/></effectiveTime>'
            '</encompassingEncounter></componentOf>')


def test_a_visit_keeps_an_end_written_in_another_zone_or_as_a_date():
    """The end was compared with the start as text: an hour later in UTC (smaller figures) or a
    same-day discharge date was taken for an end before the start and dropped."""
    for high, end in (("20240305030000+0000", "2024-03-05T03:00:00+00:00"),
                      ("20240305", "2024-03-05")):
        enc = mapped(wst500(encounter=_stay("20240305100000+0800", high)))[1]["Encounter"][0]
        assert enc["period"] == {"start": "2024-03-05T10:00:00+08:00", "end": end}
    # an end that is before the start is still left out (Period's per-01)
    enc = mapped(wst500(encounter=_stay("20240305100000+0800", "20240304")))[1]["Encounter"][0]
    assert "end" not in enc["period"]


def _obs(code: str, value: str, extra: str = "") -> str:
    return ('<entry><observation classCode="OBS" moodCode="EVN">'
            f'<code code="{code}" codeSystem="2.16.156.10011.2.2.1"/>{value}{extra}</observation></entry>')


def test_values_said_otherwise_are_kept():
    """A diagnosis coded outside the code system (nullFlavor OTH) with its translation and
    original text was dropped; a reference range written as a word (阴性) was lost; a base64
    chief complaint was stored as its base64."""
    oth = ('<value xsi:type="CD" nullFlavor="OTH"><originalText>急性支气管炎</originalText>'
           '<translation code="J20.9" codeSystem="2.16.840.1.113883.6.3"/></value>')
    neg = ('<referenceRange><observationRange><value xsi:type="ST">阴性</value>'
           '</observationRange></referenceRange>')
    b64 = '<value xsi:type="ED" mediaType="text/plain" representation="B64">5ZKz5Ze95LiJ5aSp</value>'
    conv, t = mapped(wst500(sections=section(
        _obs("DE05.01.024.00", oth),
        _obs("DE04.50.001.00", '<value xsi:type="ST">阳性</value>', neg),
        _obs("DE04.01.119.00", b64), code="29548-5")))
    (cond,) = t["Condition"]
    assert cond["code"]["text"] == "急性支气管炎"
    assert any(c.get("code") == "J20.9" for c in cond["code"].get("coding", []))
    values = {o.get("valueString"): o for o in t["Observation"]}
    assert values["阳性"]["referenceRange"] == [{"text": "阴性"}]
    assert "咳嗽三天" in values


def test_a_section_in_another_namespace_is_said_not_dropped_in_silence():
    """<component xmlns=""> in the body: answered with no finding, its entries made nothing."""
    conv, t = mapped(wst500(sections=section(diagnosis("I10", "高血压"))
                            + '<component xmlns=""><section><title>生命体征</title></section></component>'))
    assert [c["code"]["coding"][0]["code"] for c in t["Condition"]] == ["I10"]
    assert [f for f in conv.findings if f.rule == "cda.section.namespace"]


def test_a_ccda_time_without_a_zone_is_read_in_the_documents_zone():
    """A C-CDA vital sign taken at 201409160845 (no zone) in a document of -0500 was stored as
    2014-09-16: the time of day was lost, with no finding."""
    from pathlib import Path

    from fhir_mapping.cda import convert
    from tests.cda_docs import SRC

    doc = (Path(__file__).parent / "fixtures" / "cda" / "ccda-progress-note.xml").read_bytes()
    doc = doc.replace(b'value="20240105144500-0500"', b'value="20240105144500"', 1)
    conv = convert(doc, SRC)
    times = [str(r) for r in conv.resources]
    assert any("2024-01-05T14:45:00-05:00" in t for t in times)


def _ids_by_code(**kw) -> dict[str, str]:
    return {c["code"]["coding"][0]["code"]: c["id"] for c in mapped(wst500(set_id="SET-K", **kw))[1]["Condition"]}


@pytest.mark.parametrize("first,then", [
    (["N18", "I50"], ["I50"]),            # the first left out: I50 stayed in place 2 and was renamed N18's
    (["N18", "I50"], ["I50", "N18"]),     # reordered
    (["N18", "I50"], ["E11.9", "N18", "I50"]),  # one added before the others
])
def test_entries_without_an_id_keep_their_resource_whatever_their_place(first, then):
    a = _ids_by_code(version=1, sections=section(*(diagnosis(c, c, None) for c in first)))
    b = _ids_by_code(version=2, sections=section(*(diagnosis(c, c, None) for c in then)))
    for code in set(first) & set(then):
        assert a[code] == b[code], code
    assert len(set(b.values())) == len(then)  # and none shares another's
    assert not set(b.values()) & {a[c] for c in set(first) - set(then)}


def test_two_alike_entries_without_an_id_are_two_resources():
    _, t = mapped(wst500(sections=section(diagnosis("I10", "高血压", None), diagnosis("I10", "高血压", None))))
    assert len({c["id"] for c in t["Condition"]}) == 2
