"""WS/T 500 CDA documents as the region's hospitals write them (lxml), for ``hub.synth.units``.

Four document types, the shapes of the WS/T 500-2016 templates (see ``../shared/samples/wst500-cda``):
病历概要 C0001 and 出院小结 C0053 carry the visit's diagnoses (DE05.01.024.00, ICD-10), 西药处方 C0004
its prescriptions (substanceAdministration, ATC code and product name), 检验报告 C0007 its laboratory
results (one CLUSTER organizer per item: 检验项目代码 DE04.30.019.00, 检验定量结果 DE04.30.015.00,
检验结果代码 DE04.30.017.00). The header carries what the institution's dialect says (``Dialect``):
which patient identifiers, which author id, whether every entry repeats ``<id extension="1"/>``.
Pure: the same arguments give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_NS = {None: V3, "xsi": XSI}
_XSI_TYPE = f"{{{XSI}}}type"
DE = "2.16.156.10011.2.2.1"  # WS 363 data-element catalogue
LOINC = "2.16.840.1.113883.6.1"
ATC = "2.16.840.1.113883.6.73"
ICD10 = "2.16.156.10011.2.3.3.11.3"
SEX = "2.16.156.10011.2.3.3.4"
RESULT_CODES = "2.16.156.10011.2.3.2.38"  # 检查/检验结果代码表
ENTRY_ID_ROOT = "2.16.156.10011.1.1"  # what every entry id of a sloppy template points at
TITLES = {"C0001": "病历概要", "C0004": "西药处方", "C0007": "检验报告", "C0053": "出院小结"}
TEMPLATE = {"C0001": "2.16.156.10011.2.1.1.21", "C0004": "2.16.156.10011.2.1.1.24",
            "C0007": "2.16.156.10011.2.1.1.27", "C0053": "2.16.156.10011.2.1.1.73"}
_GB_SEX = {"male": ("1", "男性"), "female": ("2", "女性")}


@dataclass(frozen=True, slots=True)
class Header:
    """What the header of one document says."""

    code: str  # C0001 | C0004 | C0007 | C0053
    doc_id: str
    when: str  # HL7 TS, local time
    custodian: tuple[str, str]  # (institution code, name)
    patient_ids: tuple[tuple[str, str], ...]  # patientRole/id (root, extension)
    resident_id: str | None  # patient/id under 2.16.156.10011.1.3, as the institution sends it
    name: str
    gender: str
    birth: str  # YYYYMMDD
    author: tuple[str, str]  # (id extension, name)
    visit: tuple[str, str | None]  # encompassingEncounter effectiveTime (low, high)
    entry_ids: bool  # every entry carries <id root=ENTRY_ID_ROOT extension="1"/>


def _el(parent, tag: str, **attrs: str | None):
    e = etree.SubElement(parent, tag)
    for k, v in attrs.items():
        if v is not None:
            e.set(k, v)
    return e


def _de(parent, code: str, display: str) -> None:
    _el(parent, "code", code=code, codeSystem=DE, codeSystemName="卫生信息数据元目录", displayName=display)


def _value(parent, xsi_type: str, **attrs: str | None):
    v = _el(parent, "value", **attrs)
    v.set(_XSI_TYPE, xsi_type)
    return v


class Document:
    """One CDA document being written: ``Document(header)``, then sections, then ``bytes()``."""

    def __init__(self, h: Header) -> None:
        self.h = h
        root = self.root = etree.Element("ClinicalDocument", nsmap=_NS)
        _el(root, "realmCode", code="CN")
        _el(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_MT000040")
        _el(root, "templateId", root=TEMPLATE[h.code])
        _el(root, "id", root="2.16.156.10011.1.1", extension=h.doc_id)
        _el(root, "code", code=h.code, codeSystem="2.16.156.10011.2.4", codeSystemName="卫生信息共享文档规范编码体系")
        etree.SubElement(root, "title").text = TITLES[h.code]
        _el(root, "effectiveTime", value=h.when)
        _el(root, "confidentialityCode", code="N", codeSystem="2.16.840.1.113883.5.25", displayName="正常访问保密级别")
        _el(root, "languageCode", code="zh-CN")
        role = _el(_el(root, "recordTarget", typeCode="RCT", contextControlCode="OP"), "patientRole", classCode="PAT")
        for oid, ext in h.patient_ids:
            _el(role, "id", root=oid, extension=ext)
        pat = _el(role, "patient", classCode="PSN", determinerCode="INSTANCE")
        if h.resident_id is not None:
            _el(pat, "id", root="2.16.156.10011.1.3", extension=h.resident_id)
        etree.SubElement(pat, "name").text = h.name
        sex = _GB_SEX.get(h.gender, ("9", "未说明的性别"))
        _el(pat, "administrativeGenderCode", code=sex[0], displayName=sex[1], codeSystem=SEX,
            codeSystemName="生理性别代码表(GB/T 2261.1)")
        _el(pat, "birthTime", value=h.birth)
        author = _el(root, "author", typeCode="AUT", contextControlCode="OP")
        _el(author, "time", value=h.when)
        aa = _el(author, "assignedAuthor", classCode="ASSIGNED")
        _el(aa, "id", root="2.16.156.10011.1.4", extension=h.author[0])
        etree.SubElement(_el(aa, "assignedPerson"), "name").text = h.author[1]
        org = _el(_el(_el(root, "custodian", typeCode="CST"), "assignedCustodian", classCode="ASSIGNED"),
                  "representedCustodianOrganization", classCode="ORG", determinerCode="INSTANCE")
        _el(org, "id", root="2.16.156.10011.1.5", extension=h.custodian[0])
        etree.SubElement(org, "name").text = h.custodian[1]
        ee = _el(_el(root, "componentOf"), "encompassingEncounter")
        eff = _el(ee, "effectiveTime")
        _el(eff, "low", value=h.visit[0])
        if h.visit[1]:
            _el(eff, "high", value=h.visit[1])
        self.body = _el(_el(root, "component"), "structuredBody")

    def section(self, loinc: str, display: str):
        sec = _el(_el(self.body, "component"), "section")
        _el(sec, "code", code=loinc, displayName=display, codeSystem=LOINC, codeSystemName="LOINC")
        _el(sec, "text")
        return sec

    def _entry(self, sec, tag: str, **attrs: str):
        st = _el(_el(sec, "entry", typeCode="COMP"), tag, **attrs)
        if self.h.entry_ids:
            _el(st, "id", root=ENTRY_ID_ROOT, extension="1")
        return st

    def diagnoses(self, items: list[tuple[str, str]], date: str) -> None:
        """(ICD-10 code, name) per diagnosis, dated ``date`` (YYYYMMDD)."""
        sec = self.section("29548-5", "Diagnosis")
        for code, display in items:
            ob = self._entry(sec, "observation", classCode="OBS", moodCode="EVN")
            _de(ob, "DE05.01.024.00", "诊断代码")
            _el(ob, "effectiveTime", value=date)
            _value(ob, "CD", code=code, codeSystem=ICD10, codeSystemName="诊断代码表ICD-10", displayName=display)

    def prescriptions(self, items: list[dict]) -> None:
        """Dicts with atc, name, product, route, dose, unit, frequency."""
        sec = self.section("10160-0", "HISTORY OF MEDICATION USE")
        for m in items:
            sa = self._entry(sec, "substanceAdministration", classCode="SBADM", moodCode="EVN")
            etree.SubElement(sa, "text").text = f"{m['route']}，{m['frequency']}，每次{m['dose']}{m['unit']}"
            _el(sa, "routeCode", displayName=m["route"])
            _el(sa, "doseQuantity", value=str(m["dose"]), unit=m["unit"])
            drug = _el(_el(_el(sa, "consumable"), "manufacturedProduct"), "manufacturedLabeledDrug")
            _el(drug, "code", code=m["atc"], codeSystem=ATC, codeSystemName="ATC", displayName=m["name"])
            etree.SubElement(drug, "name").text = m["product"]

    def lab_results(self, items: list[tuple[str, str, str, str, bool]], when: str) -> None:
        """(LOINC code, name, value, unit, abnormal) per result, taken at ``when``."""
        sec = self.section("30954-2", "STUDIES SUMMARY")
        for code, name, value, unit, abnormal in items:
            org = self._entry(sec, "organizer", classCode="CLUSTER", moodCode="EVN")
            _el(org, "statusCode", code="completed")
            item = _el(_el(org, "component", typeCode="COMP"), "observation", classCode="OBS", moodCode="EVN")
            _de(item, "DE04.30.019.00", "检验项目代码")
            _el(item, "effectiveTime", value=when)
            _value(item, "CD", code=code, codeSystem=LOINC, codeSystemName="LOINC", displayName=name)
            result = _el(_el(org, "component", typeCode="COMP"), "observation", classCode="OBS", moodCode="EVN")
            _de(result, "DE04.30.015.00", "检验定量结果")
            _value(result, "PQ", value=value, unit=unit)
            flag = _el(_el(org, "component", typeCode="COMP"), "observation", classCode="OBS", moodCode="EVN")
            _de(flag, "DE04.30.017.00", "检验结果代码")
            _value(flag, "CD", code="2" if abnormal else "1", codeSystem=RESULT_CODES,
                   codeSystemName="检查/检验结果代码表", displayName="异常" if abnormal else "正常")

    def bytes(self) -> bytes:
        return etree.tostring(self.root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
