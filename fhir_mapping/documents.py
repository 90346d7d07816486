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
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fhir_mapping import source_order
from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.identifiers import usable
from fhir_mapping.ids import stable_id

HUB_TAGS = "https://fhir-region-hub.example/CodeSystem/hub-tags"
EXT = "https://fhir-region-hub.example/StructureDefinition/"
# the institution a quality report is filed under (the sender, else the document's custodian)
QUALITY_INSTITUTION = EXT + "quality-institution"
QUALITY_TAG = {"system": HUB_TAGS, "code": "document-quality"}
DOCUMENT_CODES = "urn:oid:2.16.156.10011.2.4"  # WS/T 500 shared-document codes (C0001…)
_V3 = "{urn:hl7-org:v3}"


class QualityRejected(MappingError):
    """A rule with policy ``reject`` fired. ``report`` is the OperationOutcome resource (to store)
    and ``decision`` the quality decision; ``to_dict`` carries the rule ids for dead letters."""

    # set by for_connector: what still travels to the hub, and the refused payload as a dead letter
    conversions: list[Conversion]
    rejected: list[tuple[int, bytes, MappingError]]

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
    h = header(payload)
    return h.doc_id, h.doc_type


@dataclass(frozen=True, slots=True)
class Header:
    """What a report needs from a document's header, read leniently (the document may not map)."""

    doc_id: str
    doc_type: str = "unknown"
    set_id: str = ""  # root^extension
    version: int | None = None
    custodian: str = ""  # the custodian organisation's code (id extension, else root)
    custodian_name: str = ""
    time: str | None = None  # effectiveTime as sent (HL7 TS)


def header(payload: bytes) -> Header:
    doc_id, code, set_id, version, cust, cust_name, time = "", "unknown", "", None, "", "", None
    try:
        from fhir_mapping.xmlsafe import parse_xml

        root = parse_xml(payload)
        el = root.find(f"{_V3}id")
        if el is not None and (el.get("root") or el.get("extension")):
            doc_id = f"{el.get('root', '')}^{el.get('extension', '')}"
        el = root.find(f"{_V3}code")
        if el is not None and el.get("code"):
            code = el.get("code")
        el = root.find(f"{_V3}setId")
        if el is not None and (el.get("root") or el.get("extension")):
            set_id = f"{el.get('root', '')}^{el.get('extension', '')}"
        el = root.find(f"{_V3}versionNumber")
        if el is not None:  # one out of bounds is refused by its rule (cda.document.version-invalid)
            version = source_order.version_number(el.get("value"))
        el = root.find(f"{_V3}effectiveTime")
        if el is not None and el.get("value"):
            time = el.get("value").strip()
        cust, cust_name = _custodian(root)
    except Exception:  # noqa: BLE001 - not well-formed or hostile: the quality rules say why
        try:  # who sent a document that is not well-formed: from its recovered tree
            from fhir_mapping.quality.engine import recovered_tree

            recovered = recovered_tree(payload)
            if recovered is not None:
                cust, cust_name = _custodian(recovered)
        except Exception:  # noqa: BLE001 - nothing to recover: the report says "unknown"
            pass
    return Header(doc_id or "sha1:" + hashlib.sha1(payload).hexdigest(), code, set_id, version,
                  cust, cust_name, time)


def _custodian(root: Any) -> tuple[str, str]:
    """(code, name) of the custodian organisation; "" for what the document does not say."""
    code = name = ""
    org = root.find(f"{_V3}custodian/{_V3}assignedCustodian/{_V3}representedCustodianOrganization")
    if org is not None:
        el = org.find(f"{_V3}id")
        if el is not None:
            code = usable_code(el.get("extension")) or usable_code(el.get("root"))
        el = org.find(f"{_V3}name")
        if el is not None:
            name = " ".join("".join(el.itertext()).split())[:200]
    return code, name


def usable_code(value: str | None) -> str:
    """An institution code from the document, or "" for a filler (``-``, a template label)."""
    v = " ".join((value or "").split())[:128]
    return v if v and usable(v) and v.isprintable() else ""


def reporting_source(source: SourceInfo, h: Header) -> SourceInfo:
    """The connector's source, its institution taken from the document's custodian when the
    connector names none (a report says which hospital sent it, not "unknown")."""
    if source.institution or not h.custodian:
        return source
    return replace(source, institution=h.custodian, name=source.name or h.custodian_name)


def is_quality_report(d: object) -> bool:
    """Is ``d`` a quality report (an OperationOutcome with the ``document-quality`` tag)?"""
    return isinstance(d, dict) and d.get("resourceType") == "OperationOutcome" and any(
        isinstance(t, dict) and t.get("system") == QUALITY_TAG["system"]
        and t.get("code") == QUALITY_TAG["code"] for t in (d.get("meta") or {}).get("tag") or ())


def quality_report(outcome: dict[str, Any], decision: str, source: SourceInfo, doc_id: str,
                   doc_type: str, now: datetime, document_ref: str | None = None,
                   type_system: str = DOCUMENT_CODES) -> dict:
    """The report as a storable OperationOutcome (what the data-quality projection counts).
    ``doc_type`` is a code of ``type_system``: a WS/T 500 document code, or a message's
    interaction (an HL7 v3 registration's findings are reported the same way)."""
    ext = [{"url": QUALITY_INSTITUTION, "valueString": source.institution or "unknown"},
           *([{"url": EXT + "quality-institution-name", "valueString": source.name}]
             if source.name else []),
           {"url": EXT + "quality-document-type",
            "valueCoding": {"system": type_system, "code": doc_type}},
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
    """Quality control, then mapping; the Conversion's resources end with the quality report.

    The report holds the rule findings and the mapper's own (entries it could not map, invalid
    times, duplicate ids), so both are stored, answered and counted. Unless the connector names the
    institution, the report names the document's custodian. The resources are stamped with the
    document's set, version and time (``fhir_mapping.source_order``): a late older version does not
    replace what a newer one wrote."""
    from fhir_mapping import cda, quality

    checked = quality.evaluate(payload, now=now)
    h = header(payload)
    reporting = reporting_source(source, h)
    if checked["decision"] == "reject":
        report = quality_report(checked["outcome"], "reject", reporting, h.doc_id, h.doc_type, now)
        raise QualityRejected(report, checked["rules"])
    conversion = cda.convert(payload, source)
    composition = next((r for r in conversion.resources if r["resourceType"] == "Composition"), None)
    if composition is not None:
        versioned = bool(h.set_id) and h.version is not None
        conversion.set_source(composition.get("date"), composition["id"] if versioned else None,
                              h.version if versioned else None)
    doc_ref = next((f"DocumentReference/{r['id']}" for r in conversion.resources
                    if r["resourceType"] == "DocumentReference"), None)
    merged = quality.report([*checked["findings"], *conversion.findings]) \
        if conversion.findings else checked
    report = quality_report(merged["outcome"], merged["decision"], reporting, h.doc_id, h.doc_type,
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
