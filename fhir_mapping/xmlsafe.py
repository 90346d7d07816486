"""Safe XML parsing for every XML mapper (CDA, HL7 v3): one entry point, hostile input refused fast.

``parse_xml(data) -> lxml root element`` or ``MappingError(code="AR", rule="xml.<what>")``.

What is refused, and how cheaply:

* ``xml.not-bytes`` / ``xml.empty`` / ``xml.too-large``: checked before any parsing (``len``).
* ``xml.doctype-entities``: a DOCTYPE with an internal subset (``[...]``: entity, parameter-entity
  or attribute-default declarations: billion laughs, quadratic blowup, external entities) or any
  ``<!ENTITY`` before the root element. Found by a byte scan of the prolog only (the text before the
  root element), so it costs nothing for a normal document.
* ``xml.doctype-external``: a DOCTYPE naming an external DTD (``SYSTEM``/``PUBLIC``): libxml2 may
  read an external subset to look up an undefined entity even with ``load_dtd=False``, so it is
  refused before parsing. Only a bare ``<!DOCTYPE name>`` is tolerated.
* ``xml.doctype``: any DOCTYPE at all, where the caller takes none (``doctype=False``: FHIR XML).
* ``xml.encoding``: a document in another encoding than UTF-8, where the caller takes UTF-8 only
  (``utf8_only=True``: FHIR XML): a BOM or byte pattern of UTF-16/32 or EBCDIC, or a declaration
  naming another encoding; checked before parsing, and the encoding the parser used after.
* ``xml.not-well-formed``: libxml2's own error, with line and column. The parser never expands
  entities (``resolve_entities=False``), loads no DTD, uses no network and keeps ``huge_tree`` off
  (libxml2's own hard limits: depth 256, 10 MB text node), so even a document slipping past the
  prolog scan cannot make it allocate beyond a small multiple of its size.
* ``xml.too-deep``: elements nested deeper than ``max_depth``; one XPath of ``max_depth+1`` child
  steps evaluated in C (work proportional to the number of elements).
* ``xml.attribute-too-large``: an attribute value longer than ``max_attribute_chars`` (one C XPath).
* ``xml.entity-reference``: an unexpanded entity reference node survived parsing (defence in depth).
* After parsing, whatever the prolog scan could not read (an encoding such as UTF-7 spells ``<!`` in
  other bytes): a parsed DOCTYPE declaring entities or naming an external DTD is refused as above.

The parser objects are per thread (lxml parsers are not to be shared between threads).
"""

from __future__ import annotations

import codecs
import re
import threading

from lxml import etree

from fhir_mapping.base import MappingError

__all__ = ["parse_xml", "MAX_BYTES", "MAX_DEPTH", "MAX_ATTRIBUTE_CHARS", "XML_RULES"]

MAX_BYTES = 10 * 1024 * 1024  # a CDA document is typically 20-300 KB; embedded images stay under this
MAX_DEPTH = 100  # real CDA nests ~25 deep (entry/organizer/component/observation/entryRelationship…)
MAX_ATTRIBUTE_CHARS = 64 * 1024

# rule id -> what it means (for quality reports and docs)
XML_RULES = {
    "xml.not-bytes": "payload is not bytes",
    "xml.empty": "payload is empty",
    "xml.too-large": "payload exceeds the byte-size limit",
    "xml.doctype-entities": "DOCTYPE with an internal subset or entity declarations",
    "xml.doctype-external": "DOCTYPE referring to an external DTD (SYSTEM/PUBLIC)",
    "xml.doctype": "a DOCTYPE where none is taken",
    "xml.encoding": "an encoding other than UTF-8 where only UTF-8 is taken",
    "xml.not-well-formed": "payload is not well-formed XML",
    "xml.too-deep": "elements nested deeper than the depth limit",
    "xml.attribute-too-large": "an attribute value exceeds the size limit",
    "xml.entity-reference": "an entity reference remained in the parsed document",
}

_local = threading.local()

_ROOT_START = re.compile(rb"<[A-Za-z_:\x80-\xff]")  # first element start tag (not <? <! </)
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_ENTITY = re.compile(rb"<!ENTITY", re.IGNORECASE)
_EXTERNAL_ID = re.compile(rb"\b(SYSTEM|PUBLIC)\b")


def _parser(comments: bool) -> etree.XMLParser:
    name = "parser" if comments else "parser_no_comments"
    p = getattr(_local, name, None)
    if p is None:
        p = etree.XMLParser(
            resolve_entities=False, load_dtd=False, dtd_validation=False, attribute_defaults=False,
            no_network=True, huge_tree=False, recover=False, decompress=False, collect_ids=False,
            remove_comments=not comments, remove_pis=False, strip_cdata=True,
        )
        setattr(_local, name, p)
    return p


_depth_cache: dict[int, etree.XPath] = {}
_attr_cache: dict[int, etree.XPath] = {}


def _too_deep(max_depth: int) -> etree.XPath:
    x = _depth_cache.get(max_depth)
    if x is None:
        x = _depth_cache[max_depth] = etree.XPath("boolean(/" + "/".join(["*"] * (max_depth + 1)) + ")")
    return x


def _big_attr(limit: int) -> etree.XPath:
    x = _attr_cache.get(limit)
    if x is None:
        x = _attr_cache[limit] = etree.XPath(f"(//@*[string-length(.) > {int(limit)}])[1]")
    return x


def _ascii_view(data: bytes) -> bytes:
    """The bytes to scan for markup: the data itself for ASCII-compatible encodings (UTF-8, GBK,
    GB18030, Latin-1…), a UTF-8 transcoding of the prolog for UTF-16/32 (BOM or ``<\\0`` pattern)."""
    head = data[:4]
    enc = None
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        enc = "utf-32"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        enc = "utf-16"
    elif head == b"<\0\0\0":
        enc = "utf-32-le"
    elif head == b"\0\0\0<":
        enc = "utf-32-be"
    elif head[:2] == b"<\0":
        enc = "utf-16-le"
    elif head[:2] == b"\0<":
        enc = "utf-16-be"
    if enc is None:
        return data
    return data.decode(enc, errors="replace").encode("utf-8", errors="replace")


def _prolog(view: bytes) -> bytes:
    """The bytes before the root element: XML declaration, comments, PIs, whitespace, DOCTYPE.
    Comments and PIs are skipped as units, so a ``<a`` inside a comment cannot end the prolog
    early and hide a DOCTYPE behind it."""
    i, n = 0, len(view)
    if view.startswith(codecs.BOM_UTF8):
        i = 3
    while i < n:
        while i < n and view[i] in b" \t\r\n":
            i += 1
        if view.startswith(b"<!--", i):
            end = view.find(b"-->", i + 4)
            i = n if end < 0 else end + 3
        elif view.startswith(b"<?", i):
            end = view.find(b"?>", i + 2)
            i = n if end < 0 else end + 2
        elif view.startswith(b"<!", i):  # DOCTYPE (or junk): the prolog runs to the root element
            m = _ROOT_START.search(view, i + 2)
            # the internal subset may itself hold '<' + letter only inside declarations ('<!ENTITY'),
            # which the DOCTYPE checks refuse anyway
            return view[: m.start()] if m else view
        else:
            return view[:i]
    return view


def _scan_prolog(data: bytes, doctype: bool) -> None:
    prolog = _prolog(_ascii_view(data))
    d = _DOCTYPE.search(prolog)
    if d is not None and not doctype:
        raise MappingError("XML DOCTYPE is refused: this XML carries none (nor entity declarations)",
                           code="AR", rule="xml.doctype", location=f"byte {d.start()}")
    if d is not None:
        rest = prolog[d.end():]
        if b"[" in rest or _ENTITY.search(rest):
            raise MappingError(
                "XML DOCTYPE with an internal subset (entity or attribute declarations) is refused: "
                "documents must not declare entities", code="AR", rule="xml.doctype-entities",
                location=f"byte {d.start()}")
        if _EXTERNAL_ID.search(rest):
            raise MappingError(
                "XML DOCTYPE with an external DTD (SYSTEM or PUBLIC identifier) is refused: "
                "no DTD is ever loaded", code="AR", rule="xml.doctype-external",
                location=f"byte {d.start()}")
    e = _ENTITY.search(prolog)
    if e is not None:
        raise MappingError("XML entity declaration is refused", code="AR", rule="xml.doctype-entities",
                           location=f"byte {e.start()}")


def parse_xml(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
              max_attribute_chars: int = MAX_ATTRIBUTE_CHARS, doctype: bool = True,
              utf8_only: bool = False, comments: bool = True) -> etree._Element:
    """Parse ``data`` safely and return the root element; ``MappingError(code="AR")`` otherwise.

    ``max_depth`` counts the root as depth 1. libxml2 itself stops at depth 256 (huge_tree off).
    ``doctype=False`` refuses even a bare DOCTYPE; ``utf8_only`` refuses any other encoding;
    ``comments=False`` leaves comments out of the tree.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise MappingError(f"XML payload must be bytes, got {type(data).__name__}", code="AR",
                           rule="xml.not-bytes")
    if not data.strip():
        raise MappingError("XML payload is empty", code="AR", rule="xml.empty")
    if len(data) > max_bytes:
        raise MappingError(f"XML payload is {len(data)} bytes, over the limit of {max_bytes}", code="AR",
                           rule="xml.too-large")
    if utf8_only:
        _check_utf8(_named_encoding(data))
    _scan_prolog(data, doctype)
    data = _gbk_as_gb18030(data)
    parser = _parser(comments)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        line, col = (e.position if e.position else (None, None))
        msg = re.sub(r",? line \d+, column \d+\s*$", "", (e.msg or str(e)).strip())
        where = f"line {line}, column {col}" if line else None
        raise MappingError(f"not well-formed XML: {msg}" + (f" ({where})" if where else ""),
                           code="AR", rule="xml.not-well-formed", location=where) from None
    except (ValueError, TypeError) as e:  # e.g. unsupported encoding declaration
        raise MappingError(f"not well-formed XML: {e}", code="AR", rule="xml.not-well-formed") from None
    if root is None:
        raise MappingError("XML payload has no root element", code="AR", rule="xml.not-well-formed")
    _check_parsed(root.getroottree().docinfo, doctype, utf8_only)
    if _too_deep(max_depth)(root):
        raise MappingError(f"XML elements are nested deeper than {max_depth} levels", code="AR",
                           rule="xml.too-deep")
    big = _big_attr(max_attribute_chars)(root)
    if big:
        a = big[0]
        owner = a.getparent()
        path = owner.getroottree().getpath(owner) if owner is not None else ""
        raise MappingError(f"XML attribute {a.attrname!r} is {len(a)} characters, over the limit of "
                           f"{max_attribute_chars}", code="AR", rule="xml.attribute-too-large",
                           location=f"{path}/@{a.attrname}")
    if _has_entity_refs(root):
        raise MappingError("XML entity references are refused", code="AR", rule="xml.entity-reference")
    return root


_UTF8 = ("utf-8", "utf8")
_ENCODING_DECL = re.compile(rb"""^<\?xml\s[^>]*?encoding\s*=\s*["']([^"']{0,40})["']""")


def _named_encoding(data: bytes) -> str:
    """The encoding ``data`` is in by its first bytes (XML 1.0 appendix F): a BOM, the pattern of
    ``<`` in UTF-16/32 or EBCDIC, else the declaration's label (UTF-8 when it names none)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    elif data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "UTF-32"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    head = data[:4]
    if b"\0" in head:
        return "UTF-16 or UTF-32"
    if head == b"\x4c\x6f\xa7\x94":  # '<?xm' in EBCDIC
        return "EBCDIC"
    m = _ENCODING_DECL.match(data)
    return m.group(1).decode("ascii", "replace") if m else "UTF-8"


def _check_utf8(encoding: str) -> None:
    if encoding.strip().lower() not in _UTF8:
        raise MappingError(f"XML in {encoding[:40]!r}: only UTF-8 is taken", code="AR", rule="xml.encoding")


def _check_parsed(docinfo: etree.DocInfo, doctype: bool, utf8_only: bool) -> None:
    """What the parser read, whatever bytes spelled it: the prolog scan reads ASCII-compatible
    bytes and UTF-16/32, and an encoding such as UTF-7 writes ``<!ENTITY`` in other bytes."""
    if utf8_only:
        _check_utf8(docinfo.encoding or "")
    if not docinfo.doctype:
        return
    if not doctype:
        raise MappingError("XML DOCTYPE is refused: this XML carries none (nor entity declarations)",
                           code="AR", rule="xml.doctype")
    if docinfo.system_url or docinfo.public_id:
        raise MappingError("XML DOCTYPE with an external DTD (SYSTEM or PUBLIC identifier) is refused: "
                           "no DTD is ever loaded", code="AR", rule="xml.doctype-external")
    dtd = docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise MappingError("XML DOCTYPE with an internal subset (entity or attribute declarations) is refused: "
                           "documents must not declare entities", code="AR", rule="xml.doctype-entities")


# GB2312 and GBK as declared by Chinese senders: their bytes hold GBK and GB18030 characters
# (镕, 喆, 䶮: common in names) that a strict GB2312 decoder refuses, so the whole document was
# refused. Read as GB18030, their superset, as WHATWG's encoding standard reads these labels.
_GB_DECLARATION = re.compile(rb"""^(\s*<\?xml[^>\x80-\xff]*?encoding\s*=\s*["'])(gb2312|gbk|gb_2312-80|x-gbk|cp936|"""
                             rb"""euc-cn|csgb2312)(["'])""", re.IGNORECASE)


def _gbk_as_gb18030(data: bytes) -> bytes:
    m = _GB_DECLARATION.match(data[:300])
    if m is None:
        return data
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return data  # not GB18030 either: the parser says where
    return (m.group(1) + b"UTF-8" + m.group(3)) + text[len(m.group(0).decode("ascii")):].encode()


# A transport's charset label: letters, digits and the punctuation IANA names use
_CHARSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}")
_DECLARATION = re.compile(rb"<\?xml\s[^>]*?\?>")


def declare_charset(data: bytes, content_type: str) -> bytes:
    """``data`` with the ``charset`` its Content-Type names written into its XML declaration,
    where the document itself names none (no BOM, no ``encoding``): such a GB 18030 document was
    read as UTF-8 and refused. A document's own declaration is left as it is; an unknown or
    malformed label changes nothing (the parser then says what it cannot read)."""
    charset = ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').strip()
    if not charset or not _CHARSET.fullmatch(charset):
        return data
    try:
        if codecs.lookup(charset).name in ("utf-8", "ascii"):
            return data
    except LookupError:
        return data
    if data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) \
            or data[:2] in (b"<\0", b"\0<"):
        return data
    m = _DECLARATION.match(data)
    if m is None:
        return b'<?xml version="1.0" encoding="' + charset.encode() + b'"?>' + data
    if b"encoding" in m.group(0):
        return data
    return m.group(0)[:-2].rstrip() + b' encoding="' + charset.encode() + b'"?>' + data[m.end():]


def _has_entity_refs(root: etree._Element) -> bool:
    # An unexpanded reference appears as an _Entity node among the tree's children; only possible
    # when a DOCTYPE declared it, which the prolog scan refuses; checked only in that rare case.
    if not root.getroottree().docinfo.doctype:
        return False
    return any(isinstance(n, etree._Entity) for n in root.iter(etree.Entity))
