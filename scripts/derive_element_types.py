"""Derive, from the fhir.resources R4B models, the JSON type of every element: fhir_mapping/tables/element_types.json,
which string elements are of type uri, url, oid or uuid: fhir_mapping/tables/uri_elements.json, and which are
base64Binary: fhir_mapping/tables/base64_elements.json.

The models coerce JSON primitives ("true" for a boolean, "5" for an integer) and the hub stores what
was sent, so hub.core.jsontypes checks the JSON types itself, and the codes of required bindings the models
declare (``enum_values``) where they equal a complete official CodeSystem of
../shared/fhir-r4/valuesets.json. Run after upgrading fhir.resources:

    .venv/bin/python scripts/derive_element_types.py
"""

from __future__ import annotations

import datetime
import decimal
import json
import pathlib
import types
import typing
import uuid

from fhir.resources.R4B import get_fhir_model_class
from fhir_defs import complete_code_systems

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESOURCES = json.loads((ROOT / "fhir_mapping" / "tables" / "resource_types.json").read_text())


# The models' enum_values are parsed from element descriptions and can be partial or wrong
# ("xml | json | ttl | mime type"); only a list equal to a whole official CodeSystem is kept.
COMPLETE = set(complete_code_systems())


# R4 transaction processing replaces a fullUrl wherever it appears "in resource references,
# elements of type uri, url, oid, uuid, and the narrative": these are the uri-typed elements
# (canonical is left out: it names a resource by its canonical URL, never by a local reference)
URI_TYPES = {"Uri", "Url", "Oid", "Uuid"}


def is_base64(ann) -> bool:
    """Whether an element's annotation declares the base64Binary primitive (bytes, which the
    models decode leniently: hub.core.jsontypes checks the text itself)."""
    return "Base64Binary()" in repr(ann)


def primitive_name(ann) -> str | None:
    """The fhir_core primitive an element's annotation declares (``Annotated[str, Uri()]``)."""
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            meta = [type(m).__name__ for m in ann.__metadata__]
            return meta[0] if meta else None
        if origin in (typing.Union, types.UnionType, list, typing.List):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if not args:
                return None
            ann = args[0]
        else:
            return None


def unwrap(ann) -> tuple[object, bool]:
    """(base type, is a list) of a field annotation."""
    is_list = False
    while True:
        origin = typing.get_origin(ann)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            ann = str if str in args else args[0]  # url elements are Union[AnyUrl, str]
        elif origin in (list, typing.List):
            is_list = True
            ann = typing.get_args(ann)[0]
        elif origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
        else:
            return ann, is_list


def kind(base) -> str | None:
    if base is bool:
        return "b"
    if base is int:
        return "i"
    if base is decimal.Decimal:
        return "d"
    if base in (str, datetime.date, datetime.datetime, datetime.time, bytes):
        return "s"
    name = getattr(base, "__name__", "")
    if name.endswith("Type"):
        return name[: -len("Type")]  # a complex type, a backbone element or Resource
    return None


def describe(cls_name: str, table: dict, uris: dict, b64s: dict) -> None:
    if cls_name in table or cls_name in ("Resource", "FHIRPrimitiveExtension"):
        return
    cls = get_fhir_model_class(cls_name)
    fields: dict[str, list] = {}
    table[cls_name] = fields
    for name, field in cls.model_fields.items():
        alias = field.alias or name
        if name == "fhir_comments" or alias.startswith("_"):
            continue
        base, is_list = unwrap(field.annotation)
        k = kind(base)
        if base is uuid.UUID:  # valueUuid: a uuid, though the models type it apart from str
            uris.setdefault(cls_name, []).append(alias)
        if k is None:
            continue
        if is_base64(field.annotation):
            b64s.setdefault(cls_name, []).append(alias)
        entry: list = [k, int(is_list)]
        extra = field.json_schema_extra or {}
        if isinstance(extra, dict) and frozenset(extra.get("enum_values") or ()) in COMPLETE:
            entry.append(sorted(extra["enum_values"]))
        fields[alias] = entry
        # a resource's own ``url`` is its canonical identity (ValueSet.url, typed uri), not a
        # link to an entry: a conformance Bundle whose fullUrl is each resource's canonical had
        # every canonical replaced by a local path
        own_url = alias == "url" and cls_name in RESOURCES
        if k == "s" and primitive_name(field.annotation) in URI_TYPES and not own_url:
            uris.setdefault(cls_name, []).append(alias)
        if k not in ("b", "i", "d", "s"):
            describe(k, table, uris, b64s)


def main() -> None:
    table: dict = {}
    uris: dict = {}
    b64s: dict = {}
    for rtype in RESOURCES:
        describe(rtype, table, uris, b64s)
    out = ROOT / "fhir_mapping" / "tables" / "element_types.json"
    out.write_text(json.dumps(table, separators=(",", ":"), sort_keys=True, ensure_ascii=False))
    print(f"{len(table)} types -> {out} ({out.stat().st_size // 1024} KiB)")
    out = ROOT / "fhir_mapping" / "tables" / "uri_elements.json"
    out.write_text(json.dumps({t: sorted(e) for t, e in uris.items()}, separators=(",", ":"),
                              sort_keys=True))
    print(f"uri-typed elements of {len(uris)} types -> {out}")
    out = ROOT / "fhir_mapping" / "tables" / "base64_elements.json"
    out.write_text(json.dumps({t: sorted(e) for t, e in b64s.items()}, separators=(",", ":"),
                              sort_keys=True))
    print(f"base64Binary elements of {len(b64s)} types -> {out}")


if __name__ == "__main__":
    main()
