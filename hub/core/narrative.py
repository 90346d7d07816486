"""A resource's narrative (``text.div``) is XHTML FHIR can carry: well-formed, a ``div`` of the
XHTML namespace at its root, some content (txt-2), and none of what txt-1 keeps out that could
run in a reader's browser (scripts, frames, forms, event-handler attributes, ``javascript:``
links, read as a browser reads a URL: tabs and newlines inside it dropped). The models take
any string: a narrative that is no XML broke the resource's XML form (escaped into text, or a
422 when sent back), and a script in it is stored XSS for any viewer."""

from __future__ import annotations

import re
import threading
from typing import Any

from lxml import etree

XHTML = "http://www.w3.org/1999/xhtml"
# elements txt-1 does not allow that act rather than format
_ACTIVE = frozenset(("script", "style", "iframe", "frame", "frameset", "object", "embed",
                     "applet", "form", "input", "button", "select", "textarea", "base", "link",
                     "meta"))
# attributes a browser reads as a URL it may follow or load (``xlink:href`` by its local name)
_URL_ATTRIBUTES = frozenset(("href", "src", "action", "formaction", "background", "poster",
                             "lowsrc", "dynsrc", "data", "codebase", "cite", "longdesc"))
_SCRIPT_SCHEMES = ("javascript:", "vbscript:")
# data: URLs of a type a browser renders as a document that can run script; an SVG is
# inert as an <img>, so only there is it let through
_SCRIPT_DATA = ("data:text/html", "data:application/xhtml+xml", "data:image/svg+xml",
                "data:text/xml", "data:application/xml")
# a browser drops ASCII tab and newline anywhere in a URL and C0 controls and spaces around
# it before it reads the scheme; a raw tab or newline in an attribute reaches the XML parser
# as a space, so every character up to U+0020 is dropped here (a URL with a space in its
# scheme is no URL of any scheme, so nothing legitimate is refused)
_URL_BLANKS = {i: None for i in range(0x21)}
_CSS_COMMENT = re.compile(r"/\*.*?(\*/|$)", re.S)
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})\s?|\\(.)", re.S)
_PARSERS = threading.local()  # an lxml parser is not to be shared between threads


def parser() -> etree.XMLParser:
    """This thread's parser of narratives: no entities resolved, no DTD loaded, nothing fetched,
    comments left out."""
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
        root = etree.fromstring(div.encode("utf-8", "surrogatepass"), parser())
    except (etree.XMLSyntaxError, ValueError) as e:
        return f"the narrative is not well-formed XHTML ({str(e).split(',')[0]})"
    if root is not None and root.getroottree().docinfo.doctype:
        # what XML the hub reads holds no DTD (a declared entity stays a node no XHTML writer has)
        return "the narrative holds a DOCTYPE, which an XHTML narrative may not"
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
            if local in _URL_ATTRIBUTES and _runs(value, name == "img" and local == "src"):
                return f"the narrative's {local} runs script, which txt-1 forbids"
            if local == "style" and _styles_script(value):
                return "the narrative's style runs script, which txt-1 forbids"
    return None


def _runs(url: str, image: bool) -> bool:
    """Whether a browser following or loading ``url`` may run script from it."""
    url = url.translate(_URL_BLANKS).lower()
    if url.startswith(_SCRIPT_SCHEMES):
        return True
    return url.startswith(_SCRIPT_DATA) and not (image and url.startswith("data:image/"))


def _styles_script(style: str) -> bool:
    """Whether a style attribute names script: a ``javascript:`` URL or an ``expression()``
    (which old browsers ran), read after CSS comments and escapes."""
    style = _CSS_COMMENT.sub("", style)
    style = _CSS_ESCAPE.sub(lambda m: _css_char(m[1]) if m[1] else m[2], style)
    style = style.translate(_URL_BLANKS).lower()
    return any(s in style for s in (*_SCRIPT_SCHEMES, "expression("))


def _css_char(hex_digits: str) -> str:
    code = int(hex_digits, 16)
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"
