"""MCCI_IN000002UV01 acknowledgements and the transmission wrapper every answer shares."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lxml import etree

from fhir_mapping.base import Finding, MappingError
from fhir_mapping.ids import stable_id
from fhir_mapping.xmlsafe import parse_xml

from .common import V3, XSI, attr, first, ids, table, v3_ts

ACK_CODES = ("AA", "AE", "AR")
# the hub's data-quality rule ids have no OID: named, as the FHIR CodeSystem of the quality reports
FINDING_RULES = "https://fhir-region-hub.example/CodeSystem/quality-rule"
MAX_DETAILS = 100  # findings listed in one acknowledgement (the stored report has them all)


def E(parent: etree._Element | None, name: str, **attrs: str | None) -> etree._Element:
    el = etree.Element(f"{{{V3}}}{name}", nsmap={None: V3, "xsi": XSI}) if parent is None \
        else etree.SubElement(parent, f"{{{V3}}}{name}")
    for k, v in attrs.items():
        if v is not None:
            el.set(k.replace("__", ":").rstrip("_"), str(v))
    return el


def id_items(parent: etree._Element, name: str, pairs: list[tuple[str, str]]) -> etree._Element:
    el = E(parent, name)
    for root, ext in pairs:
        item = E(el, "item", root=root)
        if ext:
            item.set("extension", ext)
    return el


def request_header(payload: bytes | dict[str, Any] | None) -> dict[str, Any]:
    """The header of the message being answered: a header dict (``parse_query(...)['header']``), the raw
    bytes (parsed leniently: an unreadable message still gets an answer, without a target id), or None."""
    if isinstance(payload, dict):
        return payload
    if not payload:
        return {}
    try:
        root = parse_xml(payload)
    except MappingError:
        return {}
    idel = first(root, "id")
    return {"interaction": etree.QName(root).localname,
            "message_id": {"root": attr(idel, "root"), "extension": attr(idel, "extension")},
            "creation_time": attr(first(root, "creationTime"), "value"),
            "sender": ids(first(root, "sender/device/id")), "receiver": ids(first(root, "receiver/device/id"))}


def wrapper(interaction: str, header: dict[str, Any], *, now: datetime | None, message_id: str | None,
            salt: str = "") -> etree._Element:
    """Root element, id, creationTime, interactionId, processing codes, receiver (= the request's sender)
    and sender (= the request's receiver)."""
    t = table("interactions")
    root = E(None, interaction, ITSVersion="XML_1.0")
    req_id = header.get("message_id") or {}
    mid = message_id or stable_id("v3-answer", interaction, req_id.get("root"), req_id.get("extension"), salt)
    E(root, "id", root=t["message_id_root"], extension=mid)
    created = v3_ts(now) if now is not None else (header.get("creation_time") or "")
    E(root, "creationTime", value=created) if created else E(root, "creationTime", nullFlavor="UNK")
    E(root, "interactionId", root=t["interaction_id_root"], extension=interaction)
    E(root, "processingCode", code="P")
    E(root, "processingModeCode", code="T")
    E(root, "acceptAckCode", code="NE")
    for role, type_code, who in (("receiver", "RCV", header.get("sender")), ("sender", "SND", header.get("receiver"))):
        r = E(root, role, typeCode=type_code)
        dev = E(r, "device", classCode="DEV", determinerCode="INSTANCE")
        id_items(dev, "id", [tuple(x) for x in (who or [])] or [(t["device_id_root"], "")])
    return root


DETAIL_TYPES = {"error": "E", "warning": "W", "information": "I"}


def ack_element(root: etree._Element, header: dict[str, Any], code: str, text: str,
                details: Sequence[Finding] = ()) -> etree._Element:
    if code not in ACK_CODES:
        raise ValueError(f"acknowledgement code must be one of {ACK_CODES}, not {code!r}")
    ack = E(root, "acknowledgement", typeCode=code)
    req_id = header.get("message_id") or {}
    if req_id.get("root") or req_id.get("extension"):
        tm = E(ack, "targetMessage")
        E(tm, "id", root=req_id.get("root") or None, extension=req_id.get("extension") or None)
    if text or code != "AA":
        det = E(ack, "acknowledgementDetail", typeCode="E" if code != "AA" else "I")
        E(det, "text", value=text or ("rejected" if code == "AR" else "application error"))
    for f in list(details)[:MAX_DETAILS]:  # data-quality findings: rule and location, never the value
        det = E(ack, "acknowledgementDetail", typeCode=DETAIL_TYPES.get(f.severity, "W"))
        E(det, "code", code=f.rule, codeSystemName=FINDING_RULES)
        E(det, "text", value=f.message)
        if f.location:
            E(det, "location", value=f.location)
    return ack


def acknowledge(payload: bytes | dict[str, Any] | None, code: str = "AA", text: str = "", *,
                now: datetime | None = None, message_id: str | None = None,
                details: Sequence[Finding] = ()) -> bytes:
    """MCCI_IN000002UV01 for any message: ``code`` AA (accepted), AE (application error) or AR
    (rejected), ``text`` the detail (an error's reason), then one acknowledgementDetail per
    data-quality finding in ``details`` (typeCode E/W/I, the rule id as code, the location). The
    acknowledgement's id is derived from the request's id and the code unless given; its
    creationTime is ``now`` (else the request's)."""
    header = request_header(payload)
    root = wrapper(table("interactions")["ack"], header, now=now, message_id=message_id, salt=code + text)
    ack_element(root, header, code, text, details)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
