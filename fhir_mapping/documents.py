"""A clinical document's way in: quality control, then mapping, and the quality report as a resource.

``check_and_convert`` runs the document quality rules (``fhir_mapping.quality``) and, unless a rule
with policy ``reject`` fired, the CDA mapper (``fhir_mapping.cda``). Either way the quality report
is a FHIR ``OperationOutcome`` (tagged ``document-quality``, with the institution, document type,
decision and check time as extensions) that is written with the document's resources, so the event
log holds every report and the data-quality projection is rebuilt from it. A rejected document
raises ``QualityRejected``, which carries that report: the caller quarantines the payload with it
and still stores the report.

Pure like every mapper: the check time ``now`` is an argument, ids come from the document's own
identifiers (the same document checked twice yields the same report id).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.ids import stable_id

HUB_TAGS = "https://fhir-region-hub.example/CodeSystem/hub-tags"
EXT = "https://fhir-region-hub.example/StructureDefinition/"
QUALITY_TAG = {"system": HUB_TAGS, "code": "document-quality"}
DOCUMENT_CODES = "urn:oid:2.16.156.10011.2.4"  # WS/T 500 shared-document codes (C0001…)
_V3 = "{urn:hl7-org:v3}"


class QualityRejected(MappingError):
    """A rule with policy ``reject`` fired. ``report`` is the OperationOutcome resource (to store)
    and ``decision`` the quality decision; ``to_dict`` carries the rule ids for dead letters."""

    def __init__(self, report: dict[str, Any], rules: list[str]):
        first = next((i for i in report["issue"] if "reject" in i.get("diagnostics", "")),
                     report["issue"][0])
        super().__init__(f"document refused by quality control: {first['details'].get('text', '')}",
                         code="AR", location=(first.get("location") or [None])[0],
                         rule=first["details"]["coding"][0]["code"] if first["details"].get(
                             "coding") else "quality")
        self.report = report
        self.rules = rules

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "rules": self.rules}


def document_keys(payload: bytes) -> tuple[str, str]:
    """(document id ``root^extension``, document type code) read leniently, for reports of
    documents that may not map; a hash of the bytes and "unknown" where the XML does not say."""
    doc_id, code = "", "unknown"
    try:
        from fhir_mapping.xmlsafe import parse_xml

        root = parse_xml(payload)
        el = root.find(f"{_V3}id")
        if el is not None and (el.get("root") or el.get("extension")):
            doc_id = f"{el.get('root', '')}^{el.get('extension', '')}"
        el = root.find(f"{_V3}code")
        if el is not None and el.get("code"):
            code = el.get("code")
    except Exception:  # noqa: BLE001 - not well-formed or hostile: the quality rules say why
        pass
    return doc_id or "sha1:" + hashlib.sha1(payload).hexdigest(), code


def quality_report(outcome: dict[str, Any], decision: str, source: SourceInfo, doc_id: str,
                   doc_type: str, now: datetime, document_ref: str | None = None) -> dict:
    """The report as a storable OperationOutcome (what the data-quality projection counts)."""
    ext = [{"url": EXT + "quality-institution", "valueString": source.institution or "unknown"},
           {"url": EXT + "quality-document-type",
            "valueCoding": {"system": DOCUMENT_CODES, "code": doc_type}},
           {"url": EXT + "quality-decision", "valueCode": decision},
           {"url": EXT + "quality-checked", "valueDateTime": now.isoformat()},
           {"url": EXT + "quality-document-id", "valueString": doc_id[:1000]}]
    if document_ref:
        ext.append({"url": EXT + "quality-document", "valueReference": {"reference": document_ref}})
    return {"resourceType": "OperationOutcome",
            # the type too: hospitals reuse document ids across types (the WS/T 500 samples all say RN001)
            "id": stable_id("QualityReport", source.institution, doc_type, doc_id),
            "meta": {"tag": [QUALITY_TAG]}, "extension": ext, "issue": outcome["issue"]}


def check_and_convert(payload: bytes, source: SourceInfo, now: datetime) -> Conversion:
    """Quality control, then mapping; the Conversion's resources end with the quality report."""
    from fhir_mapping import cda, quality

    checked = quality.evaluate(payload, now=now)
    doc_id, doc_type = document_keys(payload)
    if checked["decision"] == "reject":
        report = quality_report(checked["outcome"], "reject", source, doc_id, doc_type, now)
        raise QualityRejected(report, checked["rules"])
    conversion = cda.convert(payload, source)
    doc_ref = next((f"DocumentReference/{r['id']}" for r in conversion.resources
                    if r["resourceType"] == "DocumentReference"), None)
    report = quality_report(checked["outcome"], checked["decision"], source, doc_id, doc_type,
                            now, doc_ref)
    conversion.resources.append(report)
    return conversion


def for_connector(payload: bytes, source: SourceInfo, now: datetime) -> list[Conversion]:
    """A connector's conversion of a document. A refused document becomes a dead letter in the
    connector's spool while its report still travels to the hub (so refusals are counted too)."""
    try:
        return [check_and_convert(payload, source, now)]
    except QualityRejected as e:
        e.conversions = [Conversion(resources=[e.report], unit_id=document_keys(payload)[0],
                                    kind="quality-report")]
        e.rejected = [(0, payload, e)]
        raise
