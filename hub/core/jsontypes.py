"""What the fhir.resources models let through but FHIR JSON forbids, checked in one walk.

The hub stores the JSON as sent, so it must be valid FHIR JSON, not merely coercible into a model:

- no nulls, empty objects or empty arrays;
- primitives of the right JSON type: booleans are ``true``/``false`` (not ``"true"``), integers and
  decimals are numbers (not strings), everything else is a string; arrays only where the element
  repeats;
- codes of required bindings that the models declare completely (``male | female | other |
  unknown``; lists the specification marks as open, with ``+``, are not checked);
- a Binary's ``contentType`` without control characters (a line break);
- base64Binary values (``Binary.data``, ``Attachment.data``, …) that are base64 (RFC 4648: its
  alphabet, whole groups of four, padding only at the end; whitespace between, as R4's regex
  lets through), which the models decode leniently (``!!!`` passed, and its content could not
  be read).

The table of element types comes from the models (``scripts/derive_element_types.py``); it lives in
the leaf module ``fhir_mapping.fhir_types``, below the core, because the tabular mappers check their
mapping files against it too. ``TYPES`` here is that table.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from fhir_mapping.fhir_types import BASE64_ELEMENTS, TYPES
from hub.core.errors import Issue

# (type, element) -> (kind, repeats, the codes of its required binding or None), one lookup a
# value; a base64Binary string's kind is "64"
_SPECS: dict[str, dict[str, tuple[str, bool, frozenset[str] | None]]] = {
    t: {name: ("64" if name in BASE64_ELEMENTS.get(t, ()) else spec[0], bool(spec[1]),
               frozenset(spec[2]) if len(spec) > 2 else None)
        for name, spec in fields.items()}
    for t, fields in TYPES.items()
}
_PRIMITIVE = {"b": "a JSON boolean", "i": "a JSON integer", "d": "a JSON number", "s": "a JSON string",
              "64": "a JSON string"}
_XML_SPACE = re.compile(r"[ \t\r\n]+")
_NO_FIELDS: dict[str, tuple[str, bool, frozenset[str] | None]] = {}


# A path is built only when an issue needs it: (parent, key or index) pairs, rendered on demand
# (the walk runs on every resource written; almost all of them have no issue).
Path = Any


def _render(path: Path) -> str:
    parts: list[str] = []
    while isinstance(path, tuple):
        path, part = path
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return path + "".join(reversed(parts))


def check(d: dict, rtype: str, path: str, issues: list[Issue]) -> None:
    _object(d, rtype, path, issues)
    ctype = d.get("contentType") if rtype == "Binary" else None
    if isinstance(ctype, str) and not ctype.isprintable():
        # a media type, sent as a header when the content is read: a line break there would
        # end the header (the models let any string through)
        issues.append(Issue("value", "A media type holds no line break or other control "
                            "character", expression=_render((path, "contentType"))))


def _object(d: dict, tname: str, path: Path, issues: list[Issue]) -> None:
    if not d:
        issues.append(Issue("invalid", "Empty objects are not allowed in FHIR JSON",
                            expression=_render(path)))
        return
    fields = _SPECS.get(tname, _NO_FIELDS)
    for k, v in d.items():
        if v is None or (not v and isinstance(v, (list, dict))):
            what = "null" if v is None else "an empty array" if isinstance(v, list) \
                else "an empty object"
            issues.append(Issue("invalid", f"{k} is {what}, which FHIR JSON forbids",
                                expression=_render((path, k))))
            continue
        spec = fields.get(k)
        if spec is None:  # resourceType, _primitive extensions, or unknown (the model said so)
            if isinstance(v, (dict, list)):
                _untyped(v, (path, k), issues)
            if isinstance(v, list) and k.startswith("_"):
                _aligned(d, k, path, issues)
            continue
        kind, repeats, codes = spec
        if repeats:
            if not isinstance(v, list):
                issues.append(Issue("structure", f"{k} repeats, so it must be an array",
                                    expression=_render((path, k))))
                continue
            where = (path, k)
            for i, item in enumerate(v):
                if kind == "s" and type(item) is str and (codes is None or item in codes):
                    continue  # the common case, without a call
                if item is None and kind in _PRIMITIVE and _extended(d, k, i):
                    continue  # a value absent, its extensions in _k[i] (R4 JSON pads so)
                _value(item, kind, codes, (where, i), issues)
        elif isinstance(v, list):
            issues.append(Issue("structure", f"{k} does not repeat; it must not be an array",
                                expression=_render((path, k))))
        elif kind == "s" and type(v) is str and (codes is None or v in codes):
            continue
        else:
            _value(v, kind, codes, (path, k), issues)


def _extended(d: dict, k: str, i: int) -> bool:
    """Does ``_k[i]`` hold the extensions of the value absent at ``k[i]``?"""
    ext = d.get("_" + k)
    return isinstance(ext, list) and i < len(ext) and isinstance(ext[i], dict)


def _aligned(d: dict, k: str, path: Path, issues: list[Issue]) -> None:
    """A repeating primitive and its ``_`` array line up item by item (R4 JSON): as many items,
    and no place null in both. Misaligned, JSON and XML gave the extensions to other values."""
    values, ext = d.get(k[1:]), d[k]
    if not isinstance(values, list):
        return
    if len(values) != len(ext):
        issues.append(Issue("structure", f"{k} must have as many items as {k[1:]} (null where "
                            "one has none)", expression=_render((path, k))))
        return
    for i, (value, x) in enumerate(zip(values, ext)):
        if value is None and x is None:
            issues.append(Issue("invalid", f"{k[1:]}[{i}] has neither a value nor extensions",
                                expression=_render(((path, k[1:]), i))))


def _value(v: Any, kind: str, codes: frozenset[str] | None, where: Path,
           issues: list[Issue]) -> None:
    if v is None:
        issues.append(Issue("invalid", "null inside an array", expression=_render(where)))
    elif kind == "s":
        if not isinstance(v, str):
            issues.append(Issue("value", f"must be {_PRIMITIVE[kind]}", expression=_render(where)))
        elif codes is not None and v not in codes:
            issues.append(Issue("code-invalid", f"{v!r} is not one of "
                                f"{', '.join(sorted(codes))}", expression=_render(where)))
    elif kind == "64":
        if not isinstance(v, str):
            issues.append(Issue("value", f"must be {_PRIMITIVE[kind]}", expression=_render(where)))
        elif not is_base64(v):
            issues.append(Issue("value", "must be base64 (RFC 4648: A-Z, a-z, 0-9, + and / in "
                                "groups of four, = only as the last group's padding)",
                                expression=_render(where)))
    elif kind == "b":
        if type(v) is not bool:
            issues.append(Issue("value", f"must be {_PRIMITIVE[kind]}", expression=_render(where)))
    elif kind == "i":
        if type(v) is not int:
            issues.append(Issue("value", f"must be {_PRIMITIVE[kind]}", expression=_render(where)))
    elif kind == "d":
        if type(v) is bool or not isinstance(v, (int, float, orjson.Fragment)):
            issues.append(Issue("value", f"must be {_PRIMITIVE[kind]}", expression=_render(where)))
    elif not isinstance(v, dict):
        issues.append(Issue("structure", "must be a JSON object", expression=_render(where)))
    elif kind == "Resource":
        rtype = v.get("resourceType")
        _object(v, rtype if isinstance(rtype, str) else "", where, issues)
    else:
        _object(v, kind, where, issues)


def is_base64(text: str) -> bool:
    """Whether ``text`` is a base64Binary value: base64 of RFC 4648, whitespace aside."""
    compact = compact_base64(text)
    try:
        return bool(compact) and base64.b64decode(compact, validate=True) is not None
    except (binascii.Error, ValueError):  # not the alphabet, bad padding, not ASCII
        return False


def compact_base64(text: str) -> str:
    """A base64Binary value without the whitespace R4 lets it hold (what a decoder takes)."""
    return _XML_SPACE.sub("", text)


def _untyped(v: Any, where: Path, issues: list[Issue]) -> None:
    """Only the no-empties rule for parts without a known type (``_given`` arrays may hold nulls)."""
    if isinstance(v, dict):
        for k, item in v.items():
            if item is None or item == [] or item == {}:
                issues.append(Issue("invalid", f"{k} is empty or null, which FHIR JSON forbids",
                                    expression=_render((where, k))))
            else:
                _untyped(item, (where, k), issues)
    elif isinstance(v, list):
        for i, item in enumerate(v):
            if item is not None:
                _untyped(item, (where, i), issues)
