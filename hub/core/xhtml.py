"""A narrative's XHTML written one way: what the same XHTML is, however it was spelled.

A ``div`` read from FHIR XML is written as its own document: the XHTML namespace as the default
one (``<h:div xmlns:h=…>`` comes out as ``<div xmlns=…>``), and no declaration of another
namespace the enclosing resource had (``xmlns:f="http://hl7.org/fhir"``). The same writing of a
JSON narrative is its canonical form: ``&quot;`` and ``"`` in text, a line break and a space in
an attribute, are one XHTML, so a resource read as XML and sent back unchanged is unchanged.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from hub.core.narrative import XHTML, parser


def element_text(div: etree._Element) -> str:
    """The text of the XHTML element ``div``, the XHTML namespace its default one."""
    return etree.tostring(_copy(div, None), encoding=str, with_tail=False)


def _copy(src: etree._Element, parent: etree._Element | None) -> etree._Element:
    el = etree.Element(src.tag, nsmap={None: XHTML}) if parent is None \
        else etree.SubElement(parent, src.tag)
    for name, value in src.attrib.items():
        el.set(name, value)
    el.text = src.text
    for child in src:
        if isinstance(child.tag, str):
            copied = _copy(child, el)
        else:  # a processing instruction (comments are not kept)
            copied = etree.ProcessingInstruction(child.target, child.text)
            el.append(copied)
        copied.tail = child.tail
    return el


def canonical(div: str) -> str:
    """``div`` written as ``element_text`` writes it; as it is when it is no XML."""
    try:
        root = etree.fromstring(div.encode("utf-8", "surrogatepass"), parser())
    except (etree.XMLSyntaxError, ValueError):
        return div
    return div if root is None else element_text(root)


def canonical_divs(d: Any) -> Any:
    """A copy of ``d`` (parsed JSON) with each narrative ``div`` in its canonical form."""
    if isinstance(d, dict):
        return {k: canonical(v) if k == "div" and isinstance(v, str) else canonical_divs(v)
                for k, v in d.items()}
    if isinstance(d, list):
        return [canonical_divs(v) for v in d]
    return d
