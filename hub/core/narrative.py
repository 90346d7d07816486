"""A resource's narrative (``text.div``) is XHTML FHIR can carry: well-formed, a ``div`` of the
XHTML namespace at its root, some content (txt-2), and none of what txt-1 keeps out that could
run in a reader's browser (scripts, frames, forms, event-handler attributes, ``javascript:``
links). The models take any string: a narrative that is no XML broke the resource's XML form
(escaped into text, or a 422 when sent back), and a script in it is stored XSS for any viewer."""

from __future__ import annotations

import threading
from typing import Any

from lxml import etree

XHTML = "http://www.w3.org/1999/xhtml"
# elements txt-1 does not allow that act rather than format
_ACTIVE = frozenset(("script", "style", "iframe", "frame", "frameset", "object", "embed",
                     "applet", "form", "input", "button", "select", "textarea", "base", "link",
                     "meta"))
_PARSERS = threading.local()  # an lxml parser is not to be shared between threads


def _parser() -> etree.XMLParser:
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
            remove_comments=True)
    return parser


def problem(div: Any) -> str | None:
    """Why ``div`` is no narrative FHIR allows, or None."""
    if not isinstance(div, str):
        return None  # the models say so
    try:
        root = etree.fromstring(div.encode("utf-8", "surrogatepass"), _parser())
    except (etree.XMLSyntaxError, ValueError) as e:
        return f"the narrative is not well-formed XHTML ({str(e).split(',')[0]})"
    if root is None or root.tag != f"{{{XHTML}}}div":
        return ("the narrative's root must be a div in the XHTML namespace "
                f"(xmlns=\"{XHTML}\")")
    if not ("".join(root.itertext()).strip() or any(
            etree.QName(e).localname == "img" for e in root.iter() if isinstance(e.tag, str))):
        return "the narrative has no content (txt-2)"
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue  # a processing instruction
        name = etree.QName(el).localname.lower()
        if name in _ACTIVE:
            return f"the narrative holds a <{name}> element, which FHIR narratives may not (txt-1)"
        for attr, value in el.attrib.items():
            local = etree.QName(attr).localname.lower()
            if local.startswith("on"):
                return f"the narrative holds an event handler ({local}), which txt-1 forbids"
            if local in ("href", "src") and value.strip().lower().startswith(
                    ("javascript:", "vbscript:", "data:text/html")):
                return f"the narrative's {local} runs script, which txt-1 forbids"
    return None
