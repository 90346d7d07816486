"""FHIR XML in and out.

The hub stores and works in JSON. A body sent as ``application/fhir+xml`` (or ``application/xml``)
is written as the JSON the rest of the hub takes (and validates); an answer asked for in XML
(``_format=xml``, or an ``Accept`` that names XML and not JSON) is the JSON answer written as
XML. Both by ``hub.api.xmlform``, which keeps every value as written. The body is parsed by
``fhir_mapping.xmlsafe``, as every XML the hub reads: a DOCTYPE is refused (FHIR XML has none, and
entity declarations are where XML attacks live) in whatever encoding it is spelled, as is a body in
another encoding than UTF-8 (FHIR's, as for JSON); no entity is resolved, no DTD loaded, nothing
fetched from the network.
"""

from __future__ import annotations

from typing import cast

from fastapi import Request

from fhir_mapping.base import MappingError
from fhir_mapping.xmlsafe import parse_xml
from hub.api import xmlform
from hub.core import resource as res
from hub.core.errors import FhirError

XML_FORMATS = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}
FHIR_XML = "application/fhir+xml; charset=utf-8"
FHIR_NS = "{http://hl7.org/fhir}"


def format_asked(fmt: str) -> str:
    """The mime type or short name of a ``_format`` value. A ``+`` a client left unescaped in the
    query reads as a space (application/fhir json), as HAPI reads it too."""
    return fmt.split(";")[0].strip().lower().replace(" ", "+")


FHIR_JSON = "application/fhir+json; charset=utf-8"
# what an asked-for type is answered with (http.html#mime-type: a generic type asked for, the
# answer is in that type); the wildcards take FHIR JSON
_ANSWERS = {
    "application/fhir+json": FHIR_JSON, "application/json+fhir": FHIR_JSON, "json": FHIR_JSON,
    "application/json": "application/json; charset=utf-8",
    "text/json": "text/json; charset=utf-8",
    "application/fhir+xml": FHIR_XML, "application/xml+fhir": FHIR_XML, "xml": FHIR_XML,
    "application/xml": "application/xml; charset=utf-8", "text/xml": "text/xml; charset=utf-8",
    "*/*": FHIR_JSON, "application/*": FHIR_JSON,
}


def answer_type(request: Request) -> str | None:
    """The media type to answer in (see ``_answer_type``), worked out once per request: the
    format check, the answer and the XML test each ask."""
    found = request.scope.get("hub.answer_type", _UNSET)
    if found is _UNSET:
        found = request.scope["hub.answer_type"] = _answer_type(request)
    return cast(str | None, found)


_UNSET = object()


def _answer_type(request: Request) -> str | None:
    """The media type to answer in: ``_format`` if given, else the ``Accept`` type of the highest
    quality (RFC 9110 12.5.1: ``q`` values; on a tie, JSON, then the first named) that the hub
    writes; FHIR JSON when nothing is asked; None when nothing asked for can be written."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        return _ANSWERS.get(format_asked(fmt))
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return FHIR_JSON
    best: tuple[float, int, int, str] | None = None
    for order, (media, q) in enumerate(accept_entries(accept)):
        answer = _ANSWERS.get(media)
        if answer is None or q <= 0:
            continue
        key = (q, "json" in answer, -order, answer)
        if best is None or key > best:
            best = key
    return best[3] if best else None


def is_fhir_format(media: str) -> bool:
    """An ``Accept`` media range (lower case) the hub answers in FHIR (the wildcards too)."""
    return media in _ANSWERS


def accept_entries(accept: str) -> list[tuple[str, float]]:
    """An ``Accept`` header's media ranges (lower case) in order, each with its ``q`` (RFC 9110
    12.4.2; 0 for one unreadable, or naming another FHIR version than this server writes)."""
    out = []
    for part in accept.split(","):
        media, *params = part.split(";")
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
            elif name.strip().lower() == "fhirversion" and \
                    not value.strip().strip('"').startswith(("4.0", "4.3")):
                q = 0.0  # another FHIR version (3.0, 5.0): not what this server writes
        out.append((media.strip().lower(), q))
    return out


def wants_xml(request: Request) -> bool:
    answer = answer_type(request)
    return answer is not None and "xml" in answer


def is_xml(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in XML_FORMATS


def json_body(request: Request, raw: bytes) -> bytes:
    """The JSON text of a request's body: ``raw`` itself, or written from FHIR XML when its
    Content-Type names XML (the operations take Parameters in either format)."""
    if raw.strip() and is_xml(request.headers.get("content-type", "")):
        return xml_to_json(raw)
    return raw


def xml_to_json(body: bytes) -> bytes:
    """The JSON of a FHIR XML resource, to be validated as any JSON body is; 400 for XML that is
    not one, 422 for an element or value FHIR XML does not have there."""
    try:
        # the body's size is HUB_MAX_BODY's to limit; a value (an attribute, in FHIR XML) is
        # libxml2's (10 MB); nesting is libxml2's (256)
        root = parse_xml(body, max_bytes=len(body), max_depth=256, max_attribute_chars=len(body),
                         doctype=False, utf8_only=True, comments=False)
    except MappingError as e:
        raise _refusal(e) from None
    tag = root.tag if isinstance(root.tag, str) else ""
    if not tag.startswith(FHIR_NS):
        raise FhirError(400, "structure", "The XML root is not in the FHIR namespace "
                                          "(http://hl7.org/fhir)")
    rtype = tag[len(FHIR_NS):]
    res.check_type({"resourceType": rtype})
    return xmlform.xml_to_json(root)


def _refusal(e: MappingError) -> FhirError:
    if e.rule == "xml.encoding":
        return FhirError(415, "not-supported", f"{e.reason}: FHIR bodies are UTF-8 (FHIR "
                         "http.html#mime-type), XML as JSON")
    if e.rule in ("xml.doctype", "xml.doctype-entities", "xml.doctype-external", "xml.entity-reference"):
        return FhirError(400, "structure", "FHIR XML carries no DOCTYPE (nor entity declarations)")
    if "limit exceeded" in e.reason:  # lxml's guard (huge_tree off): a value over 10 MB
        return FhirError(413, "too-costly", "A value in this XML is over 10 MB, beyond what the "
                         "XML parser takes; send the resource as JSON (up to HUB_MAX_BODY)")
    return FhirError(400, "structure", "The body is not well-formed XML: "
                     + e.reason.removeprefix("not well-formed XML: "))


def json_to_xml(body: bytes, pretty: bool = False) -> bytes:
    """The XML of a FHIR JSON answer (a resource, a Bundle, an OperationOutcome)."""
    return xmlform.json_to_xml(body, pretty)
