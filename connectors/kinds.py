"""Payload kinds a connector understands: the mapping registry plus ``fhir``.

The registry's tabular mappings (``row:``/``csv:``) are handed the hub's resource validation
(``hub.core.resource.validate``) for the self-test of their mapping file: the row of column examples
must make resources the hub accepts, or the mapping is refused when loaded.

``fhir``: the payload is FHIR JSON already (a resource, or a Bundle whose entries carry resources
with ids); it becomes one unit written with PUTs. Used by feeds that already speak FHIR and by tests
that need no HL7 v2 mapper.
"""

from __future__ import annotations

from typing import Any

import orjson

from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.registry import Converter
from fhir_mapping.registry import converter as registry_converter


def convert_fhir(payload: bytes, source: SourceInfo) -> list[Conversion]:
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise MappingError(f"not JSON: {e}", code="AR", rule="fhir.json") from None
    if not isinstance(d, dict) or not isinstance(d.get("resourceType"), str):
        raise MappingError("not a FHIR resource (no resourceType)", code="AR", rule="fhir.type")
    if d["resourceType"] == "Bundle":
        resources: list[Any] = [e.get("resource") for e in d.get("entry") or [] if isinstance(e, dict)]
        unit_id = d.get("id") or ""
    else:
        resources = [d]
        unit_id = ""
    patient_key = None
    for i, r in enumerate(resources):
        if not isinstance(r, dict) or not r.get("resourceType") or not r.get("id"):
            raise MappingError("every resource needs resourceType and id", code="AE",
                               location=f"entry[{i}]", rule="fhir.id")
        if patient_key is None:
            if r["resourceType"] == "Patient":
                patient_key = f"Patient/{r['id']}"
            else:
                ref = (r.get("subject") or r.get("patient") or {}).get("reference") \
                    if isinstance(r.get("subject") or r.get("patient"), dict) else None
                if isinstance(ref, str) and ref.startswith("Patient/"):
                    patient_key = ref
    if not resources:
        raise MappingError("the Bundle has no resources", code="AE", rule="fhir.empty")
    clash = two_under_one_id(resources)
    if clash is not None:
        first, second = clash
        raise MappingError(f"entry[{first}] and entry[{second}] are two different "
                           f"{resources[second]['resourceType']}/{resources[second]['id']}",
                           code="AE", location=f"entry[{second}]", rule="fhir.duplicate-id")
    unit_id = unit_id or f"{resources[0]['resourceType']}/{resources[0]['id']}"
    return [Conversion(resources=resources, unit_id=unit_id, patient_key=patient_key,
                       kind="fhir")]


def two_under_one_id(resources: list[Any]) -> tuple[int, int] | None:
    """The places of two different resources under one type and id, or None. Which one is meant
    cannot be told, and storing either drops the other's facts (a critical potassium kept as the
    glucose before it): such a message or unit is refused whole, kept for a person to decide."""
    seen: dict[tuple[str, str], int] = {}
    for i, r in enumerate(resources):
        key = (str(r.get("resourceType")), str(r.get("id")))
        if key in seen and resources[seen[key]] != r:
            return seen[key], i
        seen.setdefault(key, i)
    return None


def converter(kind: str) -> Converter:
    if kind == "fhir":
        return convert_fhir
    if kind.startswith(("row:", "csv:")):
        from hub.core.resource import validate

        return registry_converter(kind, validate)
    if kind == "hl7v2":
        return _production_only(registry_converter(kind))
    return registry_converter(kind)


def _production_only(convert: Converter) -> Converter:
    """HL7 v2 messages of production (MSH-11 ``P``, or left empty) and of version 2.x (MSH-12):
    a training (``T``) or debugging (``D``) message was written to the regional record, and a
    message of another version mapped as if it were 2.x. Refused with ERR 202 / 203."""
    def checked(payload: bytes, source: SourceInfo) -> list[Conversion]:
        processing, version = _msh_11_12(payload)
        if processing not in ("", "P"):
            raise MappingError(f"MSH-11 processing id {processing!r}: only production messages "
                               "(P) are written to the regional record", code="AR",
                               location="MSH-11", rule="v2.msh11.processing")
        if version and not version.startswith("2."):
            raise MappingError(f"MSH-12 version {version!r} is not an HL7 v2 version", code="AR",
                               location="MSH-12", rule="v2.msh12.version")
        return convert(payload, source)
    return checked


def _msh_11_12(payload: bytes) -> tuple[str, str]:
    """MSH-11.1 and MSH-12.1 as written (empty when absent or unreadable)."""
    start = payload.find(b"MSH")
    if start < 0 or len(payload) < start + 8:
        return "", ""
    end = min((i for i in (payload.find(b"\r", start), payload.find(b"\n", start)) if i >= 0),
              default=len(payload))
    msh = payload[start:end].decode("latin-1")
    fields = msh.split(msh[3])
    comp = msh[4:5] or "^"
    def first(n: int) -> str:  # MSH-n is fields[n - 1]: the separator is MSH-1
        return fields[n - 1].split(comp)[0].strip().upper() if len(fields) >= n else ""
    return first(11), first(12)
