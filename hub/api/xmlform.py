"""FHIR XML written from, and read into, FHIR JSON text by the rules of R4 xml.html and json.html,
keeping every primitive value as written.

fhir.resources reads and writes XML through its models, whose decimals are floats and whose
date-times are Python datetimes: a lab value sent as ``1.50`` came out as ``1.5``, ``0.0000010``
as ``1e-06``, and ``10:00:00.5-03:00`` as ``10:00:00.500000-03:00``, though R4 asks that a
decimal's precision be kept as written. Here the models give only what they know of structure
(each type's elements in the order XML needs them, which are primitive, repeated, resources,
XHTML); values go from text to text. Elements carry their ``id`` as an attribute, and an
extension its ``url``; a resource's ``id`` is an element; a primitive's id and extensions
(``_name`` in JSON) are its element's; XHTML narrative is the ``div`` element itself; a
contained resource sits inside an element of its own type.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from itertools import zip_longest
from typing import Any, NamedTuple

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.utils import (
    determine_version_prefix_from_class,
    get_fhir_type_name,
    is_list_type,
    is_primitive_type,
)
from lxml import etree

from fhir_mapping.base import MappingError
from fhir_mapping.xmlsafe import parse_xml
from hub.core import jsontext, xhtml
from hub.core.errors import FhirError
from hub.core.resource import RESOURCE_TYPES

FHIR = "http://hl7.org/fhir"
XHTML = "http://www.w3.org/1999/xhtml"
_NUMBERS = {"decimal", "integer", "integer64", "unsignedInt", "positiveInt"}
# R4's lexical forms (datatypes.html), which are JSON's numbers: no sign but a minus, no leading
# zero (``+5`` and ``007`` were taken and stored as 5 and 7)
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


class Element(NamedTuple):
    """What XML needs to know of one element of a type."""

    kind: str  # "primitive", "xhtml", "resource" (one inside it) or "complex"
    type: str  # the FHIR type: "decimal", "Coding", "ObservationComponent", …
    repeats: bool


class Number(str):
    """A JSON number's text, kept as written."""


@lru_cache(maxsize=None)
def _model(type_name: str) -> Any:
    return get_fhir_model_class(type_name)


@lru_cache(maxsize=None)
def elements(type_name: str) -> dict[str, Element]:
    """The elements of ``type_name``, by JSON name, in the order of its definition."""
    cls = _model(type_name)
    prefix = determine_version_prefix_from_class(cls)
    aliases = cls.get_alias_mapping()
    out: dict[str, Element] = {}
    for name in cls.elements_sequence():
        field = cls.model_fields[aliases[name]]
        fhir_type = get_fhir_type_name(field, prefix=prefix)
        kind = ("xhtml" if fhir_type == "xhtml" else "primitive") if is_primitive_type(field) \
            else "resource" if fhir_type == "Resource" else "complex"
        out[name] = Element(kind, fhir_type, is_list_type(field))
    return out


@lru_cache(maxsize=None)
def _ranks(type_name: str) -> dict[str, int]:
    """Each element's place in its type's definition: FHIR XML keeps that order (xml.html)."""
    return {name: i for i, name in enumerate(elements(type_name))}


@lru_cache(maxsize=None)
def _is_resource(type_name: str) -> bool:
    return bool(_model(type_name).has_resource_base())


# -- JSON to XML ----------------------------------------------------------------------------------


def json_to_xml(body: bytes, pretty: bool = False) -> bytes:
    """The XML of the FHIR JSON resource ``body`` (a resource, a Bundle, an OperationOutcome);
    406 for JSON that is no resource (a table of the hub's own has no XML form)."""
    d = json.loads(body, parse_float=Number, parse_int=Number)
    if not isinstance(d, dict) or d.get("resourceType") not in RESOURCE_TYPES:
        raise FhirError(406, "not-supported", "This answer has no FHIR XML form; ask for JSON")
    root = etree.Element(f"{{{FHIR}}}{d['resourceType']}", nsmap={None: FHIR})
    _write(root, d["resourceType"], d)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=pretty)


def _write(parent: etree._Element, type_name: str, d: dict) -> None:
    resource = _is_resource(type_name)
    for name, el in elements(type_name).items():
        value: Any = d.get(name)
        extra: Any = d.get("_" + name)
        if value is None and extra is None:
            continue
        if not resource and name == "id" or type_name == "Extension" and name == "url":
            if isinstance(value, str):  # an element's id and an extension's url are attributes
                parent.set(name, jsontext.replaced(value))
            continue
        values: list[Any] = value if isinstance(value, list) else [value]
        if el.kind == "primitive":
            extras = extra if isinstance(extra, list) else [extra]
            for v, x in zip_longest(values, extras):
                if v is None and x is None:
                    continue
                child = etree.SubElement(parent, f"{{{FHIR}}}{name}")
                if v is not None:
                    child.set("value", _text(v))
                if x:
                    _write(child, "Element", x)
        elif el.kind == "xhtml":
            parent.append(_xhtml(value))
        elif el.kind == "resource":
            for r in values:
                holder = etree.SubElement(parent, f"{{{FHIR}}}{name}")
                inner = etree.SubElement(holder, f"{{{FHIR}}}{r['resourceType']}")
                _write(inner, r["resourceType"], r)
        else:
            for v in values:
                _write(etree.SubElement(parent, f"{{{FHIR}}}{name}"), el.type, v)


def _text(v: Any) -> str:
    if v is True or v is False:
        return "true" if v else "false"
    return jsontext.replaced(str(v))



def _xhtml(div: str) -> etree._Element:
    data = div.encode("utf-8", "surrogatepass")
    try:
        return parse_xml(data, max_bytes=len(data), max_depth=256, max_attribute_chars=len(data),
                         doctype=False, utf8_only=True, comments=False)
    except MappingError:  # stored before narratives were checked: its text, escaped
        el = etree.Element(f"{{{XHTML}}}div", nsmap={None: XHTML})
        el.text = jsontext.replaced(div)
        return el


# -- XML to JSON ----------------------------------------------------------------------------------


def xml_to_json(root: etree._Element) -> bytes:
    """The FHIR JSON text of the resource whose element is ``root`` (in the FHIR namespace, of
    a known type); 422 naming the element that is not FHIR XML."""
    rtype = etree.QName(root).localname
    d = {"resourceType": rtype, **_read(root, rtype, rtype)}
    return orjson.dumps(d)


def _read(node: etree._Element, type_name: str, path: str, primitive: bool = False) -> dict:
    """The JSON object of ``node``, of type ``type_name``; ``primitive``: the element of a
    primitive value, read for its id and extensions (its value is read by the caller)."""
    known = elements(type_name)
    resource = _is_resource(type_name)
    d: dict[str, Any] = {}
    for attr, value in node.attrib.items():
        if attr == "id" and not resource or attr == "url" and type_name == "Extension":
            d[attr] = value
        elif not (attr.startswith("{") or primitive and attr == "value"):
            # a namespaced attribute (xsi:schemaLocation and the like) is no content
            raise _invalid(f"Unknown attribute {attr!r}", path)
    repeated: dict[str, tuple[list, list]] = {}  # repeated primitives: values, their extras
    ranks, last = _ranks(type_name), -1
    _no_text(node.text, path)
    for child in node:
        _no_text(child.tail, path)
        if not isinstance(child.tag, str):
            continue  # a processing instruction
        q = etree.QName(child)
        name, where = q.localname, f"{path}.{q.localname}"
        el = known.get(name)
        if el is None or q.namespace != (XHTML if el.kind == "xhtml" else FHIR):
            raise _invalid(f"Unknown element {name!r} in {type_name}", where)
        if ranks[name] < last:  # an element's repeats together, all in the definition's order
            raise _invalid(f"{name} is out of order in {type_name} (FHIR XML keeps the "
                           "order of the definition)", where)
        last = ranks[name]
        if el.kind == "xhtml":
            _once(d, name, where)
            # the XHTML its own: no prefix, no namespace of the resource's declared on it
            d[name] = xhtml.element_text(child)
            continue
        if el.kind == "primitive":
            _no_text(child.text, where)
            raw = child.get("value")
            value = None if raw is None else _primitive(raw, el.type, where)
            # read for its id and extensions, and so that an attribute FHIR XML has not there
            # (gender foo="bar") is refused, not dropped
            extra = (_read(child, "Element", where, primitive=True) or None) \
                if len(child) or set(child.attrib) - {"value"} else None
            if value is None and extra is None:
                raise _invalid(f"{name} has neither a value nor extensions", where)
            if el.repeats:
                values, extras = repeated.setdefault(name, ([], []))
                values.append(value)
                extras.append(extra)
            else:
                _once(d, name, where)
                if value is not None:
                    d[name] = value
                if extra is not None:
                    d["_" + name] = extra
            continue
        if el.kind == "resource":
            inner = [c for c in child if isinstance(c.tag, str)]
            if len(inner) != 1 or etree.QName(inner[0]).namespace != FHIR:
                raise _invalid(f"{name} must hold one resource", where)
            rtype = etree.QName(inner[0]).localname
            if rtype not in RESOURCE_TYPES:
                raise _invalid(f"Unknown resource type {rtype!r}", where)
            value = {"resourceType": rtype, **_read(inner[0], rtype, where)}
        else:
            value = _read(child, el.type, where)
        if el.repeats:
            d.setdefault(name, []).append(value)
        else:
            _once(d, name, where)
            d[name] = value
    for name, (values, extras) in repeated.items():
        if any(v is not None for v in values):
            d[name] = values
        if any(x is not None for x in extras):
            d["_" + name] = extras
    return d


def _no_text(text: str | None, where: str) -> None:
    """FHIR XML holds values in ``value`` attributes: text in an element (``<birthDate
    value="1970-01-01">1980-02-02</birthDate>``) is no content of it, and was dropped."""
    if text and text.strip():
        raise _invalid(f"Text {text.strip()[:40]!r} inside an element: FHIR XML keeps values "
                       "in value attributes", where)


def _once(d: dict, name: str, where: str) -> None:
    if name in d or "_" + name in d:
        raise _invalid(f"{name} may occur once", where)


def _primitive(raw: str, type_name: str, where: str) -> Any:
    if type_name == "boolean":
        if raw not in ("true", "false"):
            raise _invalid(f"{raw[:40]!r} is not a boolean (true or false)", where)
        return raw == "true"
    if type_name in _NUMBERS:
        text = raw.strip()
        if type_name == "decimal" and _DECIMAL.fullmatch(text):
            if math.isinf(float(text)):  # no JSON reader takes it back (1e400)
                raise _invalid(f"{raw[:40]!r} is beyond the range of a decimal", where)
            return orjson.Fragment(text.encode())
        if type_name != "decimal" and _INTEGER.fullmatch(text):
            # beyond 64 bits (orjson writes no such int): beyond every FHIR integer's range
            if len(text) > 20 or not -(1 << 63) <= int(text) < (1 << 63):
                raise _invalid(f"{raw[:40]!r} is beyond the range of a FHIR {type_name}", where)
            return int(text)
        raise _invalid(f"{raw[:40]!r} is not a FHIR {type_name}", where)
    return raw


def _invalid(diagnostics: str, where: str) -> FhirError:
    return FhirError(422, "structure", diagnostics, where)
