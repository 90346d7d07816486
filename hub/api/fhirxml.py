"""FHIR XML in and out, through fhir.resources (``model_validate_xml`` / ``model_dump_xml``).

The hub stores and works in JSON. A body sent as ``application/fhir+xml`` (or ``application/xml``)
is read into the resource's model and written out as the JSON the rest of the hub takes; an
answer asked for in XML (``_format=xml``, or an ``Accept`` that names XML and not JSON) is the
JSON answer read into its model and written out as XML. A body with a DOCTYPE is refused (FHIR
XML has none, and entity declarations are where XML attacks live); the parser resolves no
entities, loads no DTD and fetches nothing from the network.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from lxml import etree

from hub.core import resource as res
from hub.core.errors import FhirError

XML_FORMATS = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}
FHIR_XML = "application/fhir+xml; charset=utf-8"
FHIR_NS = "{http://hl7.org/fhir}"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_comments=True)


def wants_xml(request: Request) -> bool:
    fmt = request.query_params.get("_format")
    if fmt is not None:
        return fmt.split(";")[0].strip().lower() in XML_FORMATS
    accept = request.headers.get("accept", "").lower()
    return "xml" in accept and "json" not in accept


def is_xml(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in XML_FORMATS


def xml_to_json(body: bytes) -> bytes:
    """The JSON of a FHIR XML resource; 400 for XML that is not one, 422 when it does not
    validate."""
    if b"<!doctype" in body.lower():  # FHIR XML has none; entities are where XML attacks live
        raise FhirError(400, "structure", "FHIR XML carries no DOCTYPE (nor entity declarations)")
    try:
        root = etree.fromstring(body, parser=_parser())
    except etree.XMLSyntaxError as e:
        raise FhirError(400, "structure", f"The body is not well-formed XML: {e}") from None
    tag = root.tag if isinstance(root.tag, str) else ""
    if not tag.startswith(FHIR_NS):
        raise FhirError(400, "structure", "The XML root is not in the FHIR namespace "
                                          "(http://hl7.org/fhir)")
    rtype = tag[len(FHIR_NS):]
    res.check_type({"resourceType": rtype})
    try:
        cls: Any = res.model_class(rtype)  # a fhir.resources model: it reads and writes XML
        model = cls.model_validate_xml(body, xmlparser=_parser())
    except Exception as e:  # noqa: BLE001 - the model's XML reading: pydantic and lxml errors
        raise FhirError(422, "invalid", f"The {rtype} in XML does not validate: "
                                        f"{str(e).splitlines()[0][:300]}") from None
    return model.model_dump_json(exclude_none=True).encode()


def json_to_xml(body: bytes, pretty: bool = False) -> bytes:
    """The XML of a FHIR JSON answer (a resource, a Bundle, an OperationOutcome)."""
    d = orjson.loads(body)
    rtype = d.get("resourceType") if isinstance(d, dict) else None
    if rtype not in res.RESOURCE_TYPES:  # a table of the hub's own (a report), not a resource
        raise FhirError(406, "not-supported", "This answer has no FHIR XML form; ask for JSON")
    model: Any = res.model_class(rtype).model_validate_json(body)
    return model.model_dump_xml(pretty_print=pretty)
