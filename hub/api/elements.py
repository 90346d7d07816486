"""The names ``_elements`` may give, read as the top-level JSON keys of a resource they select.

R4 (search.html#elements) names elements, not JSON keys: a choice element by its base name
(``value``, or ``value[x]`` as the definitions write it) selects whichever ``value<Type>`` the
resource holds. A leading ``Type.`` is the resource's own; a dotted path reaches below the top
level, which R4 does not ask of _elements, and keeps its whole top element (the lenient answer).
The element tables (these, ``_summary``'s, the mandatory ones every subset keeps) are the
fhir.resources models'.

``_summary=true`` keeps the summary elements whole but for what R4 (ElementDefinition.isSummary)
leaves out and puts in besides: "Other than Attachment.data, all data type properties are
included" (a photo or a document's content, base64, is no summary), and a modifier is a summary
element (a ``modifierExtension`` left out would change what the rest means).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir_mapping.fhir_types import TYPES

ALWAYS = ("resourceType", "id", "meta")
# a primitive's id and extensions (``_birthDate``), which the element table does not list
_PRIMITIVE_ELEMENT: dict[str, list] = {"id": ["s", 0], "extension": ["Extension", 1]}


def _fields(rtype: str) -> list[tuple[str, Any, dict]]:
    """(JSON key, model field, its element properties) of each top-level element of ``rtype``."""
    from fhir.resources.R4B import get_fhir_model_class

    out = []
    for name, f in get_fhir_model_class(rtype).model_fields.items():
        extra = f.json_schema_extra
        out.append((f.alias or name, f, extra if isinstance(extra, dict) else {}))
    return out


@lru_cache(maxsize=None)
def summary_elements(rtype: str) -> frozenset[str]:
    """The elements ``_summary=true`` keeps of ``rtype``."""
    return frozenset({*ALWAYS, *(key for key, _, extra in _fields(rtype)
                                 if extra.get("summary_element_property")
                                 or key == "modifierExtension")})


def without_attachment_data(value: Any, type_name: str) -> Any:
    """``value``, of FHIR type ``type_name``, without the ``data`` of any Attachment in it (a
    copy; the element table says where Attachments are). What holds nothing else is left out
    with it, as FHIR JSON has no empty object."""
    if isinstance(value, list):
        items = (without_attachment_data(v, type_name) for v in value)
        return [v for v in items if v != {}]
    if not isinstance(value, dict):
        return value
    if type_name == "Resource":
        rtype = value.get("resourceType")
        type_name = rtype if isinstance(rtype, str) else ""
    fields = _PRIMITIVE_ELEMENT if type_name == "Element" else TYPES.get(type_name, {})
    out: dict[str, Any] = {}
    for k, v in value.items():
        if type_name == "Attachment" and k in ("data", "_data"):
            continue
        spec = fields.get(k)
        kind: str | None = spec[0] if spec else "Element" if k.startswith("_") else None
        if kind is not None and kind not in ("b", "i", "d", "s") and isinstance(v, (dict, list)):
            v = without_attachment_data(v, kind)
            if not v:
                continue
        out[k] = v
    return out


@lru_cache(maxsize=None)
def mandatory_elements(rtype: str) -> frozenset[str]:
    """The top-level elements of ``rtype`` with a minimum cardinality of one: kept in every
    subset (_summary=text, _elements), as R4 asks, so a subset still reads as the resource."""
    return frozenset({*ALWAYS, *(key for key, f, extra in _fields(rtype)
                                 if f.is_required() or extra.get("element_required"))})


@lru_cache(maxsize=None)
def element_keys(rtype: str) -> dict[str, frozenset[str]]:
    """Element name -> the JSON keys of ``rtype`` it selects: its own and its primitive
    extension's (``_gender``); a choice element's base name those of every type it may take."""
    out: dict[str, set[str]] = {}
    for key, _, extra in _fields(rtype):
        if not extra.get("element_property"):
            continue
        keys = {key, f"_{key}"}
        out.setdefault(key, set()).update(keys)
        base = extra.get("one_of_many")
        if isinstance(base, str):
            for choice in (base, f"{base}[x]"):
                out.setdefault(choice, set()).update(keys)
    return {k: frozenset(v) for k, v in out.items()}


def _top(rtype: str, name: str) -> str:
    if name.startswith(f"{rtype}."):
        name = name[len(rtype) + 1:]
    return name.partition(".")[0]


def selected_keys(rtype: str, names: list[str]) -> frozenset[str]:
    """The top-level JSON keys ``names`` select of a ``rtype`` resource (unknown ones none)."""
    table = element_keys(rtype)
    out: set[str] = set()
    for name in names:
        top = _top(rtype, name)
        out |= table.get(top, frozenset({top} if top in ALWAYS else ()))
    return frozenset(out)


def unknown_elements(rtype: str, names: list[str]) -> list[str]:
    """The names in ``names`` that are no element of ``rtype``."""
    table = element_keys(rtype)
    return [n for n in names if _top(rtype, n) not in table and _top(rtype, n) not in ALWAYS]


def below_top(rtype: str, names: list[str]) -> list[str]:
    """The known names in ``names`` that reach below the top level (their top element is kept)."""
    return [n for n in names if "." in n.removeprefix(f"{rtype}.")
            and n not in unknown_elements(rtype, [n])]
