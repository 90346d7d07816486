"""What the text of a JSON body may not carry although the parsers accept it.

- **Duplicate keys.** ``{"gender": "male", "gender": "female"}`` is valid JSON to orjson, pydantic
  and the ``json`` module alike, and each keeps the last value without a word: the hub would store
  a resource that is not what one reader of the same bytes sees.
- **Control characters, lone surrogates and U+FFFE/U+FFFF in strings.** FHIR R4 strings match
  ``[ \\r\\n\\t\\S]+`` and may not hold code points below U+0020 other than tab, CR and LF; JSON
  escapes (``\\u0000``) carry them past the parser, and a lone surrogate (``\\ud800``, or a str a
  mapper built) is no Unicode text at all. NUL in particular breaks PostgreSQL text columns and
  every C consumer downstream. U+FFFE and U+FFFF are noncharacters no XML document may hold.

Both are checked on the bytes first, where nearly every body is ruled out in a few microseconds
(the write path validates 5-8 thousand resources a second per core, so a check may cost little);
only a body the byte test cannot clear is walked (or parsed a second time) to name the element.
"""

from __future__ import annotations

import decimal
import json
import re
from typing import Any

import orjson

from hub.core.errors import FhirError, Issue

MAX_ISSUES = 20

# -- control characters and lone surrogates ------------------------------------------------------

# In JSON text a control character inside a string can only be an escape (raw ones are a syntax
# error): \b, \f or \u0000-\u001f; a surrogate is \ud800-\udfff (a valid pair matches too, and the
# walk then finds nothing). An escaped backslash before "u0000" matches as well: the walk decides.
_SUSPECT_ESCAPE = re.compile(rb"\\(?:[bf]|u(?:00[01]|[dD][89a-fA-F]|[fF]{3}[eEfF]))")
# U+FFFE and U+FFFF written as UTF-8 (EF BF BE, EF BF BF): noncharacters no XML document may
# hold (the hub's XML answers then failed, for every page holding the resource). Their two-byte
# lead, U+FFC0-U+FFFF, is rare in real text: one scan of the body rules nearly all out.
_NONCHARACTER_LEAD = b"\xef\xbf"
_NONCHARACTER = re.compile(rb"\xef\xbf[\xbe\xbf]")
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def text_may_be_bad(raw: bytes) -> bool:
    """False when the JSON text ``raw`` surely holds no forbidden character in any string."""
    return (b"\\" in raw and _SUSPECT_ESCAPE.search(raw) is not None) or (
        _NONCHARACTER_LEAD in raw and _NONCHARACTER.search(raw) is not None)


def bad_text(node: Any, path: str, issues: list[Issue]) -> None:
    """Append an issue per string (value or key) of ``node`` holding a forbidden character."""
    if isinstance(node, str):
        # isprintable is one C loop; only strings it flags (tab, newline, CJK is printable) are
        # searched
        if not node.isprintable() and (m := _FORBIDDEN.search(node)) is not None:
            issues.append(Issue(
                "invalid", f"The string holds U+{ord(m.group()):04X}: FHIR strings may not contain "
                "control characters other than tab, CR and LF, lone surrogates, nor U+FFFE/U+FFFF",
                expression=path))
    elif isinstance(node, dict):
        for k, v in node.items():
            if len(issues) >= MAX_ISSUES:
                return
            if not k.isprintable() and (m := _FORBIDDEN.search(k)) is not None:
                issues.append(Issue("invalid", f"The key {k!r} holds U+{ord(m.group()):04X}, "
                                    "which no FHIR element name contains", expression=path))
                continue
            bad_text(v, f"{path}.{k}", issues)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if len(issues) >= MAX_ISSUES:
                return
            bad_text(v, f"{path}[{i}]", issues)


def refuse_bad_text(d: Any, path: str, raw: bytes | None = None) -> None:
    """400 naming each element whose string holds a forbidden character. With ``raw`` (the JSON
    text of ``d``) the walk runs only where the bytes cannot rule them out."""
    if raw is not None and not text_may_be_bad(raw):
        return
    issues: list[Issue] = []
    try:
        bad_text(d, path, issues)
    except RecursionError:  # only a hostile body nests this deep; the parser took it
        raise FhirError(400, "too-costly", "The JSON nests too deep to check", path) from None
    if issues:
        raise FhirError(400, "invalid", issues[0].diagnostics, issues=issues)


def escaped(text: str) -> str:
    """``text`` with each forbidden character written as ``\\uXXXX``: safe to store."""
    return _FORBIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def replaced(text: str) -> str:
    """``text`` with each forbidden character, none of which XML 1.0 can hold either, written as
    U+FFFD (an answer echoing a caller's query, or a resource stored before intake refused them,
    is still XML)."""
    return text if text.isprintable() or _FORBIDDEN.search(text) is None else \
        _FORBIDDEN.sub("\ufffd", text)


# A number orjson would not write back as sent: a fraction ending in 0 other than a lone ".0" (FHIR
# decimals keep their precision: 1.50 is not 1.5; 39.0 comes back as 39.0), a fraction starting
# with five zeros (0.000001 would come back as 1e-6), an exponent, or more digits than a double
# holds. Only a whole number token counts: after ':', '[' or ',' and before ',', ']' or '}'
# (whitespace aside), so that digits inside strings (OIDs such as 2.16.156.10011.99, UUIDs such as
# ...8e-5...) do not send every body down the slow parse; a string that looks like a token only
# costs the slow parse.
INEXACT_NUMBER = re.compile(
    rb"[:\[,][ \t\r\n]*+-?(?:[0-9]+\.(?:[0-9]+0|0{5}[0-9]*)|[0-9.]*[eE][+-]?[0-9]+|[0-9.]{17,})"
    rb"(?=[ \t\r\n]*[,\]}])")


def loads_exact(raw: bytes) -> Any:
    """JSON the hub wrote (a stored resource, an answer) parsed to be changed and written again:
    with orjson, but where a decimal would lose its written form (``1.50``, ``0.0000010``), with
    each such number kept as written (an ``orjson.Fragment``, which orjson writes back as is)."""
    d = orjson.loads(raw)
    # what the hub wrote is orjson's compact text: written again alike, no number changed (a
    # third of the cost of searching the text for one)
    if orjson.dumps(d) == raw or INEXACT_NUMBER.search(raw) is None:
        return d
    return json.loads(raw, parse_float=orjson.Fragment, parse_int=_exact_int)


def _exact_int(text: str) -> int | orjson.Fragment:
    """An integer as written: beyond 64 bits (which orjson reads as a float, and cannot write
    as an int) kept as its text."""
    n = int(text)
    return n if -(1 << 63) <= n < (1 << 63) else orjson.Fragment(text.encode())


def copy_json(o: Any) -> Any:
    """A deep copy of parsed JSON: what ``loads_exact`` and ``resource.parse_json`` keep as
    written (``orjson.Fragment``, immutable, which ``copy.deepcopy`` cannot copy) is shared."""
    if isinstance(o, dict):
        return {k: copy_json(v) for k, v in o.items()}
    if isinstance(o, list):
        return [copy_json(v) for v in o]
    return o


class WrittenDecimal(decimal.Decimal):
    """A decimal kept as written, as a number (``WrittenDecimal("1.50") == 1.5``) that remembers
    its text (``1e2`` stays ``1e2``, where ``str`` says ``1E+2``), copies included."""

    text: str

    def __new__(cls, text: str) -> WrittenDecimal:
        d = super().__new__(cls, text)
        d.text = text
        return d

    def __reduce__(self):  # copy.deepcopy (JSON Patch's copy and move) keeps the text
        return (type(self), (self.text,))


def as_numbers(o: Any) -> Any:
    """A copy of parsed JSON in which each decimal kept as written is a ``WrittenDecimal``: a
    number FHIRPath and comparisons take. ``as_written`` turns it back."""
    if isinstance(o, dict):
        return {k: as_numbers(v) for k, v in o.items()}
    if isinstance(o, list):
        return [as_numbers(v) for v in o]
    if isinstance(o, orjson.Fragment):
        return WrittenDecimal(orjson.dumps(o).decode())
    return o


def as_written(o: Any) -> Any:
    """``o`` with each ``decimal.Decimal`` as its text again (an ``orjson.Fragment``): a
    ``WrittenDecimal`` as written, another (a result of arithmetic) as Python writes it."""
    if isinstance(o, dict):
        return {k: as_written(v) for k, v in o.items()}
    if isinstance(o, list):
        return [as_written(v) for v in o]
    if isinstance(o, decimal.Decimal):
        return orjson.Fragment((getattr(o, "text", None) or str(o)).encode())
    return o


def dumps(d: Any, path: str) -> bytes:
    """``orjson.dumps(d)`` for a dict built in memory (a mapper's output, a Bundle entry): what
    orjson cannot write (a lone surrogate, an integer beyond 64 bits) is a 400 naming the
    element where it can, not a crash."""
    try:
        return orjson.dumps(d)
    except orjson.JSONEncodeError as e:
        refuse_bad_text(d, path)
        raise FhirError(400, "value", f"The content cannot be written as JSON: {e}", path) from None


# -- duplicate keys ------------------------------------------------------------------------------

# A key ends with a quote followed (after optional whitespace) by a colon. Counting that pattern in
# the text counts every key once, plus any string whose content has '":' written with \" (it can
# only count more, never fewer). orjson writes the parsed object compactly with '":' after every
# key and '\\":' for such content: so if the text counts no more than the re-written parse, no key
# was dropped, i.e. none was duplicated. Only \u0022 and \u003a (a quote or colon spelled as an
# escape) could make the text count fewer; such a body takes the slow path.
_KEY_END_SPACED = re.compile(rb'"[ \t\r\n]+:')
_KEY_END = re.compile(rb'"[ \t\r\n]*:')
_QUOTE_OR_COLON_ESCAPE = re.compile(rb"\\u00(?:22|3[aA])")


def keys_may_repeat(raw: bytes, d: Any, dumped: bytes | None = None) -> bool:
    """False when the JSON text ``raw``, parsed as ``d``, surely has no duplicate key
    (``dumped``: ``orjson.dumps(d)`` when the caller has it already)."""
    if b"\\" in raw and _QUOTE_OR_COLON_ESCAPE.search(raw):
        return True
    try:
        written = (dumped if dumped is not None else orjson.dumps(d)).count(b'":')
    except orjson.JSONEncodeError:  # integers beyond 64 bits, nesting orjson will not write
        return True
    if _KEY_END_SPACED.search(raw) is None:
        return raw.count(b'":') != written
    return len(_KEY_END.findall(raw)) != written


class _Repeats(dict):
    """An object of the slow parse that had repeated keys (the last value kept, like orjson)."""

    repeated: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    out = _Repeats(d)
    seen: set[str] = set()
    out.repeated = []
    for k, _ in pairs:
        if k in seen:
            out.repeated.append(k)
        else:
            seen.add(k)
    return out


def duplicate_keys(raw: bytes, root: str) -> list[Issue]:
    """The repeated keys of the JSON text ``raw``, each with its path (the slow, exact check)."""
    issues: list[Issue] = []

    def walk(node: Any, path: str) -> None:
        if len(issues) >= MAX_ISSUES:
            return
        if isinstance(node, dict):
            for k in dict.fromkeys(getattr(node, "repeated", ())):
                issues.append(Issue(
                    "structure", f"The key {k!r} appears more than once in one object; parsers "
                    "would keep only one of its values", expression=f"{path}.{k}"))
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    try:
        tree = json.loads(raw, object_pairs_hook=_pairs)
        if isinstance(tree, dict) and isinstance(tree.get("resourceType"), str):
            root = tree["resourceType"]
        walk(tree, root)
    except RecursionError:  # orjson took it (1024 levels), Python's stack does not
        return [Issue("too-costly", "The JSON nests too deep to check", expression=root)]
    return issues


def refuse_duplicate_keys(raw: bytes, d: Any, root: str = "$",
                          dumped: bytes | None = None) -> None:
    """400 naming each repeated key of the JSON text ``raw`` (already parsed as ``d``)."""
    if keys_may_repeat(raw, d, dumped):
        issues = duplicate_keys(raw, root)
        if issues:
            raise FhirError(400, issues[0].code, issues[0].diagnostics, issues=issues)


# -- overlong strings ----------------------------------------------------------------------------

# Keys whose values may be longer than the limit: "data" holds base64 (Attachment.data, Binary.data,
# Signature.data), bounded by the body limit only. Any key of that name, at any depth: simple to
# state, and no element named "data" holds free text.
LONG_VALUE_KEYS = frozenset({"data"})


def long_string(d: Any, limit: int, root: str) -> tuple[str, int] | None:
    """(the path, the length) of the first string of ``d`` (a value, or a key) longer than
    ``limit`` characters, values of keys in LONG_VALUE_KEYS aside; None when there is none.
    Iterative: a deeply nested body cannot exhaust the stack here."""
    stack: list[tuple[Any, str]] = [(d, root)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if len(node) > limit:
                return path, len(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                if len(k) > limit:
                    return path, len(k)
                if k in LONG_VALUE_KEYS or isinstance(v, (int, float, bool)) or v is None:
                    continue
                stack.append((v, f"{path}.{k}"))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                stack.append((v, f"{path}[{i}]"))
    return None


def refuse_long_strings(raw: bytes, d: Any, limit: int, root: str) -> None:
    """413 naming the element whose string is longer than ``limit`` characters. A body no longer
    than ``limit`` bytes cannot hold one (a character takes at least a byte): not walked."""
    if len(raw) <= limit:
        return
    if isinstance(d, dict) and isinstance(d.get("resourceType"), str):
        root = d["resourceType"]
    found = long_string(d, limit, root)
    if found is not None:
        path, length = found
        raise FhirError(413, "too-costly", f"A string of {length} characters exceeds the limit of "
                        f"{limit} (HUB_MAX_STRING; only elements named 'data' may be longer)", path)
