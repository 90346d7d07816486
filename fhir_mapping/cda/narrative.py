"""CDA narrative block (section/text) -> FHIR Narrative XHTML (a ``<div>`` in the XHTML namespace).

Only the XHTML subset FHIR allows is produced: structure (p, span, ul/ol/li, table…, br, sub, sup)
and text. Attributes other than colspan/rowspan are dropped, links become text, multimedia
references are dropped (their caption text is kept). Every character of text is kept.
"""

from __future__ import annotations

from lxml import etree

from fhir_mapping.cda.dt import local

XHTML = "http://www.w3.org/1999/xhtml"

_TAGS = {
    "paragraph": "p", "content": "span", "item": "li", "caption": "b",
    "table": "table", "thead": "thead", "tbody": "tbody", "tfoot": "tfoot", "tr": "tr", "th": "th",
    "td": "td", "colgroup": "colgroup", "col": "col", "br": "br", "sub": "sub", "sup": "sup",
    "linkHtml": "span", "footnote": "span", "footnoteRef": "span", "renderMultiMedia": "span",
}
_KEEP_ATTRS = {"colspan", "rowspan"}
_BLOCK_IN_P = {"ul", "ol", "table", "p"}


def _x(tag: str) -> str:
    return f"{{{XHTML}}}{tag}"


def _convert(src, dst) -> None:
    dst_last = None
    if src.text:
        dst.text = (dst.text or "") + src.text
    for c in src:
        if not isinstance(c.tag, str):  # comment / PI: skip it, keep its tail
            if c.tail:
                if dst_last is None:
                    dst.text = (dst.text or "") + c.tail
                else:
                    dst_last.tail = (dst_last.tail or "") + c.tail
            continue
        name = local(c)
        if name == "list":
            tag = "ol" if (c.get("listType") or "").lower() == "ordered" else "ul"
        else:
            tag = _TAGS.get(name, "span")
        if tag in _BLOCK_IN_P and dst.tag == _x("p"):
            tag = "span" if tag == "p" else tag  # block inside p: html5-ish; keep simple for p in p
        if tag == "col" or tag == "colgroup":
            continue
        el = etree.SubElement(dst, _x(tag))
        for a in _KEEP_ATTRS:
            v = c.get(a)
            if v and v.isdigit():
                el.set(a, v)
        if tag == "br":
            pass
        elif name == "list":
            # list captions and stray text become list items; only li may sit in ul/ol
            cap = c.find("{urn:hl7-org:v3}caption")
            if cap is not None:
                li = etree.SubElement(el, _x("li"))
                _convert(cap, li)
            for it in c:
                if isinstance(it.tag, str) and local(it) == "item":
                    li = etree.SubElement(el, _x("li"))
                    _convert(it, li)
            if len(el) == 0:
                dst.remove(el)
                el = None
        elif name == "table":
            _table(c, el)
        else:
            _convert(c, el)
        if el is not None:
            if c.tail:
                el.tail = c.tail
            dst_last = el
        elif c.tail:
            if dst_last is None:
                dst.text = (dst.text or "") + c.tail
            else:
                dst_last.tail = (dst_last.tail or "") + c.tail


def _table(src, dst) -> None:
    # table content model: caption?, thead?, tbody/tr…, tfoot?  (text between rows is dropped only
    # if whitespace)
    for c in src:
        if not isinstance(c.tag, str):
            continue
        name = local(c)
        if name == "caption":
            cap = etree.SubElement(dst, _x("caption"))
            _convert(c, cap)
        elif name in ("thead", "tbody", "tfoot"):
            sec = etree.SubElement(dst, _x(name))
            _rows(c, sec)
        elif name == "tr":
            body = etree.SubElement(dst, _x("tbody"))
            _row(c, body)
    if len(dst) == 0:
        etree.SubElement(etree.SubElement(etree.SubElement(dst, _x("tbody")), _x("tr")), _x("td"))


def _rows(src, dst) -> None:
    for c in src:
        if isinstance(c.tag, str) and local(c) == "tr":
            _row(c, dst)
    if len(dst) == 0:
        etree.SubElement(etree.SubElement(dst, _x("tr")), _x("td"))


def _row(src, dst) -> None:
    tr = etree.SubElement(dst, _x("tr"))
    for c in src:
        if isinstance(c.tag, str) and local(c) in ("td", "th"):
            cell = etree.SubElement(tr, _x(local(c)))
            for a in _KEEP_ATTRS:
                v = c.get(a)
                if v and v.isdigit():
                    cell.set(a, v)
            _convert(c, cell)
    if len(tr) == 0:
        etree.SubElement(tr, _x("td"))


def has_content(text_el) -> bool:
    if text_el is None:
        return False
    if text_el.get("mediaType") not in (None, "text/x-hl7-text+xml"):
        return False
    return any("".join(text_el.itertext()).split())


def to_div(text_el, extra: list[str] | None = None, extra_title: str | None = None) -> str | None:
    """XHTML div string for a section/text element plus ``extra`` lines (unmapped entries),
    or None when there is nothing to say."""
    keep = has_content(text_el)
    if not keep and not extra:
        return None
    div = etree.Element(_x("div"), nsmap={None: XHTML})
    if keep:
        _convert(text_el, div)
    if extra:
        if extra_title:
            p = etree.SubElement(div, _x("p"))
            p.text = extra_title
        ul = etree.SubElement(div, _x("ul"))
        for line in extra:
            li = etree.SubElement(ul, _x("li"))
            li.text = line
    return etree.tostring(div, encoding="unicode")


def plain_div(lines: list[str]) -> str:
    div = etree.Element(_x("div"), nsmap={None: XHTML})
    for line in lines:
        p = etree.SubElement(div, _x("p"))
        p.text = line
    return etree.tostring(div, encoding="unicode")
