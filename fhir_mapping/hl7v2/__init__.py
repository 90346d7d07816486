"""HL7 v2 -> FHIR R4: ``convert(payload, source) -> Conversion``, pure and deterministic.

Decoding (BOM, CR/LF/CRLF, MSH-18 charset) in ``decoding``; field access in ``message``; v2 data
types in ``datatypes``; segments to resources in ``people``, ``encounter``, ``clinical``,
``results``, ``orders``, ``scheduling``, ``documents``, ``financial``; per message structure in
``builders``; the Provenance in ``provenance``; all code maps as data in ``tables/*.json``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.local_codes import NAMED_SYSTEM, named_system

from .builders import BUILDERS
from .context import Ctx
from .datatypes import TABLE_0396
from .datatypes import datetime as v2_datetime
from .decoding import parse
from .message import Msg
from .provenance import provenance
from .tables import table

__all__ = ["convert", "message_kind", "supported_kinds"]

_MSG = table("messages")
_CODE = re.compile(r"[A-Z0-9]{3}")  # a message type (HL7 table 0076)
_TYPES: dict[str, dict] = _MSG["types"]
_REFUSED: dict[str, str] = _MSG["refused"]


def supported_kinds() -> list[str]:
    return sorted(_TYPES)


def message_kind(msg: Msg) -> tuple[str, str]:
    msh = msg.msh
    mtype, trigger = msh.get(9, 1).upper(), msh.get(9, 2).upper()
    # a message that leaves MSH-9.2 empty names its event in EVN-1; a type that is no code (MSH-9
    # read whole, its components separated by another character than MSH-2 declares) has no
    # event to add: "ADT^A04^ADT_A01^A04" named the event twice
    if not trigger and _CODE.fullmatch(mtype):
        evn = msg.first("EVN")
        trigger = evn.get(1).upper() if evn is not None else ""
    return mtype, trigger


def convert(payload: bytes, source: SourceInfo) -> Conversion:
    """One HL7 v2 message -> its FHIR resources. Raises ``MappingError`` (AR: the bytes or the
    message type are unacceptable; AE: the content cannot be mapped) and nothing else."""
    try:
        return _convert(payload, source)
    except MappingError:
        raise
    except RecursionError:
        raise MappingError("message nesting too deep to map", code="AR", rule="v2.internal") from None
    except Exception as e:  # noqa: BLE001 - last line of defence: a mapper bug must not kill a connector
        raise MappingError(f"internal mapping failure ({type(e).__name__}: {e}); the message is kept "
                           "for replay after a fix", code="AE", rule="v2.internal") from e


def _convert(payload: bytes, source: SourceInfo) -> Conversion:
    """``convert`` without the last-line catch-all (the tests call this to see real bugs)."""
    msg = Msg(parse(payload))
    mtype, trigger = message_kind(msg)
    if not mtype:
        raise MappingError("MSH-9 (message type) is empty", code="AR", location="MSH-9", rule="v2.msh9.missing")
    kind = f"{mtype}^{trigger}" if trigger else mtype
    spec = _TYPES.get(kind)
    if spec is None:
        reason = _REFUSED.get(kind) or _REFUSED.get(mtype) or (
            f"message type {kind} is not supported (supported: ADT, BAR, DFT, ORU, OUL, ORM, OML, OMG, "
            "REF, RDE, RDS, VXU, SIU, MDM, PPR triggers listed in fhir_mapping/hl7v2/tables/messages.json)")
        comp = msg.parsed.holder.separators[3]
        if not _CODE.fullmatch(mtype) and any(c in mtype for c in "^~\\&#" if c != comp):
            reason = (f"message type {mtype} is not supported: MSH-2 declares {comp!r} as the "
                      "component separator, which MSH-9 does not use")
        # a type the mapper takes with an event it does not (A29): the event is what is refused
        known_type = trigger and any(k.startswith(f"{mtype}^") for k in _TYPES)
        raise MappingError(reason, code="AR", location="MSH-9.2" if known_type else "MSH-9",
                           rule="v2.msh9.unsupported")
    control_id = msg.msh.get(10)
    if not control_id:
        raise MappingError("MSH-10 (message control id) is empty", code="AE", location="MSH-10",
                           rule="v2.msh10.missing")
    if not msg.msh.get(12):
        # a required field, like MSH-10: which version's structures the message follows is unknown,
        # and mapping it as 2.x would be a guess (connectors.kinds refuses a version other than 2.x)
        raise MappingError("MSH-12 (version id) is empty", code="AE", location="MSH-12",
                           rule="v2.msh12.missing")
    ctx = Ctx(msg, source, kind, trigger, spec)
    BUILDERS[spec["builder"]](ctx)
    provenance(ctx, spec["activity"])
    _unknown_coding_systems(ctx)
    return Conversion(resources=ctx.resources(), unit_id=control_id,
                      patient_key=ctx.patient_ref["reference"] if ctx.patient_ref else None,
                      kind=kind, findings=ctx.findings, source_time=_source_time(msg))


def _unknown_coding_systems(ctx: Ctx) -> None:
    """One finding per coding-system name (CWE-3/6/12) outside HL7 table 0396 that is not local
    (``L``, ``99zzz``): its codes are kept under the name (``fhir_mapping.local_codes``), not taken
    for the institution's local codes, and no map applies to them until someone says what it is."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if type(node) is dict:
            system = node.get("system")
            if type(system) is str and system.startswith(NAMED_SYSTEM):
                name = unquote(system[len(NAMED_SYSTEM):])
                if name.upper() not in TABLE_0396:
                    names.add(name)
            for v in node.values():
                if type(v) in (dict, list):
                    walk(v)
        elif type(node) is list:
            for v in node:
                walk(v)

    for r in ctx.resources():
        walk(r)
    for name in sorted(names):
        ctx.find("warning", "v2.coding-system.unknown",
                 f"coding system {name!r} (CWE-3) is neither in HL7 table 0396 nor local (L, 99zzz): "
                 f"its codes are kept under {named_system(name)}, not as the institution's local codes")


def _source_time(msg: Msg) -> str | None:
    """When the change happened at the source (EVN-2 recorded date/time, else MSH-7): the hub
    keeps a newer stored state when an older message arrives late (fhir_mapping.source_order)."""
    evn = msg.first("EVN")
    return (v2_datetime(evn.get(2)) if evn is not None else None) or v2_datetime(msg.msh.get(7))
