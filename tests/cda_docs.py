"""Small WS/T 500 documents written by the tests themselves: a header with the identifiers, names and
times a test varies, and sections given as XML text. Synthetic data only."""

from __future__ import annotations

from fhir_mapping.base import SourceInfo
from fhir_mapping.cda import convert

SRC = SourceInfo(institution="H44000077", feed="test")
VALID_ID = "11010519491231002X"  # GB 11643 valid


def ident(root: str, ext: str) -> str:
    return f'<id root="{root}" extension="{ext}"/>'


def wst500(*, doc_id: str = "DOC-1", set_id: str | None = None, version: int | None = None,
           patient_ids: str = ident("2.16.156.10011.1.3", VALID_ID), name: str = "测试患者甲",
           sex: str = "2", birth: str = "19491231", author_id: str = ident("2.16.156.10011.1.7", "D001"),
           author_name: str | None = "测试医师乙", encounter: str = "", sections: str = "",
           code: str = "C0010", template: str = "2.16.156.10011.2.1.1.30") -> bytes:
    setid = f'<setId root="2.16.156.10011.1.1" extension="{set_id}"/>' if set_id else "<setId/>"
    ver = f'<versionNumber value="{version}"/>' if version is not None else "<versionNumber/>"
    person = f"<assignedPerson><name>{author_name}</name></assignedPerson>" if author_name else ""
    body = f"<component><structuredBody>{sections}</structuredBody></component>" if sections else \
        "<component><structuredBody><component><section><code code=\"10154-3\" codeSystem=\"2.16.840.1.113883.6.1\"/>" \
        "<text>无</text></section></component></structuredBody></component>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <realmCode code="CN"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_MT000040"/>
  <templateId root="{template}"/>
  {ident("2.16.156.10011.1.1", doc_id)}
  <code code="{code}" codeSystem="2.16.156.10011.2.4"/>
  <title>测试文档</title>
  <effectiveTime value="20240312093000"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  {setid}{ver}
  <recordTarget><patientRole>{patient_ids}
    <patient><name>{name}</name>
      <administrativeGenderCode code="{sex}" codeSystem="2.16.156.10011.2.3.3.4"/>
      <birthTime value="{birth}"/></patient></patientRole></recordTarget>
  <author><time value="20240312093000"/><assignedAuthor>{author_id}{person}</assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization>
    {ident("2.16.156.10011.1.5", "H44000077")}<name>测试区中心医院</name>
  </representedCustodianOrganization></assignedCustodian></custodian>
  {encounter}
  {body}
</ClinicalDocument>""".encode("utf-8")


def by_type(conv) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in conv.resources:
        out.setdefault(r["resourceType"], []).append(r)
    return out


def mapped(payload: bytes, source: SourceInfo = SRC):
    conv = convert(payload, source)
    return conv, by_type(conv)
