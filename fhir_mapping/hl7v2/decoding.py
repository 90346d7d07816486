"""Bytes to an ``hl7.Message``: BOM, segment separators, the character set named by MSH-18.

MSH-18 is read from the raw bytes before decoding (the MSH fields up to MSH-18 are ASCII in every
character set we accept), then the whole payload is decoded with the codec the table names and
parsed by python-hl7. Everything wrong with the bytes themselves is a ``MappingError`` with code AR.
"""

from __future__ import annotations

import re
from functools import lru_cache

import hl7

from fhir_mapping.base import Finding, MappingError

from .tables import table

_CHARSETS: dict[str, str] = table("charsets")["msh18"]
_DEFAULT_CHARSET: str = table("charsets")["default"]
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_NEWLINES = re.compile(r"\r\n|\n|\r")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
# bytes no Latin-1 text holds: a C1 control, or four non-ASCII bytes in a row (two Chinese
# characters side by side; Latin text puts ASCII letters between its accented ones)
_NOT_LATIN = re.compile(rb"[\x80-\x9f]|[\x80-\xff]{4}")
_SINGLE_BYTE = frozenset({"latin-1", "iso8859-15"})
# what Chinese text decoded from GB18030 is made of: CJK ideographs, CJK and full-width punctuation
_CJK_TEXT = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef\u2000-\u206f\u00b7]")
# a declared codec that fails on the bytes, or that decodes anything: which codecs to try instead
_ALTERNATIVES = {"ascii": ("utf-8", "gb18030"), "utf-8": ("gb18030",), "latin-1": ("utf-8",),
                 "iso8859-15": ("utf-8",), "gb18030": ("utf-8",)}


def _reject(reason: str, rule: str, location: str | None = None) -> MappingError:
    return MappingError(reason, code="AR", rule=rule, location=location)


def charset_of(payload: bytes) -> tuple[str, str]:
    """(MSH-18 as sent, Python codec) for a payload whose BOM is already stripped."""
    if len(payload) < 8 or not payload.startswith(b"MSH"):
        head = payload[:3].decode("ascii", "replace")
        raise _reject(f"the payload does not start with an MSH segment (starts with {head!r})",
                      "v2.msh.missing", "MSH")
    sep = payload[3:4]
    if sep in (b"\r", b"\n", b" ") or sep.isalnum() or sep[0] >= 0x80:
        raise _reject(f"MSH-1 field separator {sep!r} is not usable", "v2.msh.separators", "MSH-1")
    end = min((i for i in (payload.find(b"\r"), payload.find(b"\n")) if i >= 0), default=len(payload))
    fields = payload[:end].split(sep)
    # fields[0] = "MSH", fields[1] = MSH-2, so MSH-n is fields[n - 1]
    # MSH-18 repeats: the first repetition is the message's character set, the others are
    # alternates the sender switches to with escape sequences
    raw = fields[17].split(fields[1][1:2] or b"~")[0].split(fields[1][:1] or b"^")[0] \
        if len(fields) > 17 and fields[1] else b""
    if not raw.strip():
        return "", _DEFAULT_CHARSET
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _reject("MSH-18 (character set) is not ASCII", "v2.msh18.not-ascii", "MSH-18") from None
    codec = _CHARSETS.get(name.upper())
    if codec is None:
        raise _reject(f"MSH-18 character set {name!r} is not supported (supported: "
                      f"{', '.join(sorted(_CHARSETS))})", "v2.msh18.unsupported", "MSH-18")
    return name, codec


def _segment_name(text: str, pos: int) -> str:
    start = text.rfind("\r", 0, pos) + 1
    return text[start:start + 3]


def _control_location(text: str, pos: int) -> str:
    """``SEG-n`` of the character at ``pos`` (text with CR/LF segment separators, field separator at 3)."""
    start = max(text.rfind("\r", 0, pos), text.rfind("\n", 0, pos)) + 1
    seg = text[start:start + 3]
    field = text.count(text[3], start, pos) if len(text) > 3 else 0
    return f"{seg}-{field + 1 if seg == 'MSH' else field}"


def _chinese(text: str) -> bool:
    wide = [c for c in text if ord(c) > 0x7F]
    return sum(1 for c in wide if _CJK_TEXT.match(c)) >= 0.9 * len(wide)


def _ascii_letter(b: int) -> bool:
    return 0x61 <= (b | 0x20) <= 0x7A


def _latin_letter(b: int) -> bool:  # an accented letter in Latin-1 (not × or ÷)
    return b >= 0xC0 and b not in (0xD7, 0xF7)


def _latin_shaped(payload: bytes) -> int | None:
    """Offset of the first GB18030 character (in bytes that GB18030 reads) that Latin-1/cp1252 text
    forms as well, else None. GB18030 pairs a byte >= 0x81 with the next one, ASCII included, so an
    accented letter and its neighbour read as one ideograph (``Müller``: ü and l): a two-byte
    character whose second byte is ASCII with a letter or digit next to it (ü+l in ``Müller``, °+C in
    ``37°C``), whose second byte is ASCII punctuation after ASCII (é+^ in ``José^``), a unit sign ° or
    µ before a letter, or two accented letters between letters (ö+ß in ``Gößmann``). Chinese text has
    such characters among others or between delimiters (镕 is E9 46 in ``朱镕基``, 赟 DA 53 in
    ``王^赟``)."""
    i, n = 0, len(payload)
    while i < n:
        b = payload[i]
        if b < 0x80:
            i += 1
            continue
        t = payload[i + 1] if i + 1 < n else 0
        if 0x30 <= t <= 0x39:  # a four-byte character: no Latin text forms one
            i += 4
            continue
        before = payload[i - 1] if i else 0
        after = payload[i + 2] if i + 2 < n else 0
        if t < 0x80:
            if (_ascii_letter(before) or 0x30 <= before <= 0x39 or _ascii_letter(after)
                    or (not _ascii_letter(t) and before < 0x80) or b in (0xB0, 0xB5)):
                return i
        elif _latin_letter(b) and _latin_letter(t) and _ascii_letter(before) and _ascii_letter(after):
            return i
        i += 2
    return None


def _sensible(payload: bytes, declared: str, declared_failed: bool) -> tuple[str, str] | None:
    """(text, codec) of the first other codec that reads the bytes as text of its kind. When the declared
    codec failed: UTF-8 strictly (other encodings almost never form valid UTF-8 multi-byte sequences), or
    GB18030 when what it decodes to is Chinese text (it accepts most byte pairs). When the declared codec
    read the bytes: only UTF-8 over a single-byte set (latin-1 reads anything), or UTF-8 holding Chinese
    text over GB18030 (short GB18030 text can be valid UTF-8 too: then the declaration wins)."""
    decoded = []
    for codec in _ALTERNATIVES.get(declared, ()):
        try:
            decoded.append((payload.decode(codec), codec))
        except UnicodeDecodeError:
            continue
    chinese = [d for d in decoded if _chinese(d[0])]
    if declared_failed:  # a regional hub: text that reads as Chinese wins, else strict UTF-8
        return next(iter(chinese), None) or next((d for d in decoded if d[1] == "utf-8"), None)
    if declared == "gb18030":
        return next(iter(chinese), None)
    return next((d for d in decoded if d[1] == "utf-8"), None)


def _gb18030_under_latin(payload: bytes, codec: str, declared: str) -> str | None:
    """The text of GB18030 bytes sent under a Latin-1 (8859) declaration, which reads any byte:
    when the bytes read as Chinese text in GB18030 and hold what no Latin text holds (a C1 control
    byte, four non-ASCII bytes in a row). None when they may be the Latin text declared (``Müller``,
    ``José``: the declaration wins). Bytes that hold both, Chinese text and a GB18030 character Latin
    text forms too, are refused as ambiguous (``v2.encoding.ambiguous``), never guessed."""
    if _NOT_LATIN.search(payload) is None:
        return None
    try:
        text = payload.decode("gb18030")
    except UnicodeDecodeError:
        return None
    if not _chinese(text):
        return None
    at = _latin_shaped(payload)
    if at is not None:
        where = _control_location(payload.decode("latin-1"), at)
        raise _reject(
            f"bytes 0x{payload[at]:02X} 0x{payload[at + 1]:02X} at offset {at} ({where}) read as GB18030 "
            f"and as Latin text alike, in a message whose other bytes are GB18030 Chinese text, not the "
            f"{codec} declared ({declared}): refused rather than guessed; declare its character set in "
            "MSH-18", "v2.encoding.ambiguous", where)
    return text


def decode(payload: bytes) -> tuple[str, str, list[Finding]]:
    """The message text with CR segment separators, the codec it was decoded with, and what was wrong
    with the bytes that did not stop the decoding (MSH-18 naming another character set than the bytes
    hold)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise _reject(f"the payload must be bytes, not {type(payload).__name__}", "v2.payload.type")
    payload = bytes(payload)
    if payload[:1] == b"\x0b":  # an MLLP frame left on by the sender's tooling
        payload = payload[1:]
    payload = payload.rstrip(b"\x1c\r\n\t \x00")
    for bom, _codec in _BOMS:
        if payload.startswith(bom):
            if bom != _BOMS[0][0]:
                raise _reject("UTF-16 payloads are not supported; send UTF-8 or GB18030",
                              "v2.encoding.utf16")
            payload = payload[len(bom):]
            break
    payload = payload.lstrip(b"\r\n\t ")
    msh18, codec = charset_of(payload)
    findings: list[Finding] = []
    declared = f"MSH-18 {msh18!r}" if msh18 else f"MSH-18 empty, so {codec}"
    try:
        text = payload.decode(codec)
    except UnicodeDecodeError as e:
        other = _sensible(payload, codec, True)
        if other is None:
            seg_start = payload.rfind(b"\r", 0, e.start) + 1
            seg_start = max(seg_start, payload.rfind(b"\n", 0, e.start) + 1)
            seg = payload[seg_start:seg_start + 3].decode("ascii", "replace")
            raise _reject(
                f"byte 0x{payload[e.start]:02X} at offset {e.start} (segment {seg}) is not valid "
                f"{codec} ({declared} assumed), nor any other character set the hub reads: {e.reason}",
                "v2.encoding.undecodable", seg) from None
        text, actual = other
        at = _latin_shaped(payload) if actual == "gb18030" else None
        if at is not None:  # either reading changes characters of the other: no guess, refused
            where = _control_location(payload.decode("latin-1"), at)
            raise _reject(
                f"bytes 0x{payload[at]:02X} 0x{payload[at + 1]:02X} at offset {at} ({where}) are not valid "
                f"{codec} ({declared} assumed); they read as GB18030 and as Latin text alike, so the "
                "message is refused rather than guessed: declare its character set in MSH-18",
                "v2.encoding.ambiguous", where) from None
        findings.append(Finding("warning", "v2.msh18.mismatch", f"{declared}, but the bytes are not "
                                f"{codec}: read as {actual}, the character set they hold", "MSH-18"))
    else:
        if codec != "utf-8" and _NON_ASCII.search(payload) and codec in _ALTERNATIVES:
            other = _sensible(payload, codec, False)
            if other is not None and other[1] == "utf-8":  # valid UTF-8 with non-ASCII text: UTF-8 it is
                text = other[0]
                findings.append(Finding("warning", "v2.msh18.mismatch", f"{declared}, but the bytes are "
                                        "UTF-8 text: read as utf-8", "MSH-18"))
            elif codec in _SINGLE_BYTE:
                gb = _gb18030_under_latin(payload, codec, declared)
                if gb is not None:
                    text = gb
                    findings.append(Finding("warning", "v2.msh18.mismatch", f"{declared}, but the bytes "
                                            "are GB18030 Chinese text: read as gb18030", "MSH-18"))
    found = _CONTROL.search(text)
    if found is not None:  # a control character in a field value: refused, see README (Choices)
        where = _control_location(text, found.start())
        raise _reject(f"control character U+{ord(found.group()):04X} in {where} (offset {found.start()}): "
                      "control characters have no place in HL7 v2 text nor in FHIR strings",
                      "v2.encoding.control-character", where)
    return _NEWLINES.sub("\r", text), codec, findings


def _plain():
    def make(sequence, esc=None, separators=None, factory=None):  # noqa: ARG001
        return sequence

    return staticmethod(make)  # distinct function per level: python-hl7 compares them


class PlainFactory(hl7.Factory):
    """python-hl7 containers as plain lists: the library's parser (separators from MSH, the
    segment/field/repetition/component/subcomponent split, MSH-1/MSH-2 handling) without a
    container object per node, which costs more than the mapping itself. Unescaping goes
    through a real ``hl7.Message`` carrying the message's separators."""

    create_message = _plain()
    create_segment = _plain()
    create_field = _plain()
    create_repetition = _plain()
    create_component = _plain()


class _Plan(hl7.parser._ParsePlan):
    """python-hl7's parse plan, with each level's next plan made once instead of per node and
    ``applies`` (does the text hold this level's separator or a deeper one?) as one regex search."""

    def next(self):  # noqa: A003 - the library's name
        try:
            return self._next
        except AttributeError:
            self._next = super().next()
            return self._next

    def applies(self, text):
        try:
            search = self._search
        except AttributeError:
            tail = self.separators[self.separators.find(self.separator):]
            search = self._search = re.compile("[" + re.escape(tail) + "]").search
        return search(text) is not None


@lru_cache(maxsize=64)
def _plans(separators: str, esc: str) -> tuple[_Plan, hl7.Message]:
    """The segment-level plan and the unescaping holder for one set of separators (shared by
    every message using them; neither is mutated after its first use)."""
    plan = hl7.parser.create_parse_plan(f"MSH{separators[1]}{separators[3]}{separators[2]}{esc}{separators[4]}",
                                        PlainFactory)
    seg_plan = _Plan(plan.separator, plan.separators, plan.containers, plan.esc, plan.factory).next()
    level = seg_plan
    while level is not None:  # build every level now, not lazily inside a segment's parse
        level = level.next()
    return seg_plan, hl7.Message(sequence=[], esc=esc, separators=separators)


class Parsed:
    """A decoded message, split into segments; ``segment(i)`` parses segment ``i`` with
    python-hl7 on first use (segments the mapping never reads are never parsed)."""

    __slots__ = ("texts", "holder", "codec", "_plan", "findings")

    def __init__(self, texts: list[str], plan: _Plan, holder: hl7.Message, codec: str,
                 findings: list[Finding] | None = None):
        self.texts, self._plan, self.holder, self.codec = texts, plan, holder, codec
        self.findings = findings or []

    def segment(self, i: int) -> list:
        return hl7.parser._split(self.texts[i], self._plan)


def parse(payload: bytes) -> Parsed:
    """Decode ``payload`` and prepare it for python-hl7 parsing, segment by segment."""
    text, codec, findings = decode(payload)
    sep = text[3]
    msh = text.split("\r", 1)[0]
    enc = msh[4:msh.find(sep, 4)] if msh.find(sep, 4) > 0 else ""
    if len(enc) < 2 or len(set(enc + sep)) != len(enc) + 1 or any(c.isalnum() or c in " \r" for c in enc):
        raise _reject(f"MSH-2 encoding characters {enc!r} are missing or clash with the field "
                      f"separator {sep!r}", "v2.msh.separators", "MSH-2")
    if "\rMSH" + sep in text or "\rBHS" in text or "\rFHS" in text:
        raise _reject("the payload holds more than one message (batch); send one message per "
                      "payload", "v2.batch")
    text = text.strip()
    try:
        plan = hl7.parser.create_parse_plan(text, PlainFactory)
        if len(set(plan.separators + plan.esc)) != len(plan.separators) + 1:
            raise _reject(f"MSH-2 encoding characters {enc!r} leave two delimiters the same (component, "
                          "repetition, escape and subcomponent must differ)", "v2.msh.separators", "MSH-2")
        seg_plan, holder = _plans(plan.separators, plan.esc)
    except MappingError:
        raise
    except Exception as e:  # noqa: BLE001 - python-hl7 raises several kinds on malformed input
        raise _reject(f"HL7 v2 parse failed: {type(e).__name__}: {e}", "v2.parse") from None
    return Parsed(text.split(plan.separator), seg_plan, holder, codec, findings)
