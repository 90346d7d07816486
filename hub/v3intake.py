"""HL7 v3 registrations into the hub: convert, normalise, store; refusals kept for replay.

``POST /v3`` (``hub.api.v3``) answers with the acknowledgement; this module does the work it shares
with ``hub quarantine replay``: a registration the mapper refuses (AE/AR) or whose resources the
hub refuses is kept in the quarantine (kind ``v3``) with its acknowledgement code and reason, as a
refused CDA document is, and can be replayed after a fix (of the mapping tables, say). A message
that came in a SOAP envelope is kept as that envelope.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from fhir_mapping import hl7v3, quality
from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.documents import is_quality_report, quality_report
from fhir_mapping.hl7v3.common import Ctx, parse
from fhir_mapping.hl7v3.common import table as hl7v3_table
from hub import v3routing
from hub.api import bundles, soap
from hub.core import jsontext
from hub.core.access import SYSTEM
from hub.core.errors import FhirError
from hub.core.events import resource_bytes
from hub.core.fhirtime import local_zone
from hub.core.ingest import Context, Op, Result
from hub.quarantine import Quarantine
from hub.repository import Repository

KIND = "v3"


def register(repo: Repository, raw: bytes, source: SourceInfo, ctx: Context,
             normaliser: Any = None, now: datetime | None = None
             ) -> tuple[Conversion, list[Result | FhirError]]:
    """Convert and store one registration in one transaction. Raises MappingError (the mapper
    refuses: its AE/AR) or FhirError (the hub refuses the mapped resources, or is busy).

    The mapper's findings are written with the resources as a quality report (the OperationOutcome
    the data-quality projection counts, as for documents), keyed by the institution, interaction
    and message id: a replay rewrites the same report, a no-op."""
    conv: Conversion = hl7v3.convert(raw, source)
    if conv.kind in CHANGES:
        _keep_what_it_had(repo, ctx, conv, CHANGES[conv.kind])
    if normaliser is not None:
        normaliser.apply(conv)  # local codes: the standard coding beside them
    if conv.findings:
        institution = ctx.source.get("institution") or ""
        if institution in ("", "unknown"):
            institution = institution_of(raw, source)
        conv.resources.append(findings_report(conv, source, institution, now or datetime.now(local_zone())))
    ops = [bundles.parse_entry(i, entry, "") for i, entry in enumerate(conv.entries())]
    for op in ops:
        if isinstance(op, Op) and is_quality_report(op.d):
            op.own = True  # the hub's report of the message, not the sender's record
    return conv, repo.execute(ops, ctx, atomic=True)  # type: ignore[arg-type]


# messages after the first of a visit or an order: they may carry only what changed (a
# discharge: its end, a transfer: the new ward, a stop: the order's status), and a resource
# written from them alone would lose the rest. The resource types each one changes.
_VISIT = ("Encounter",)
_ORDER = ("MedicationRequest", "ServiceRequest", "NutritionOrder", "Specimen",
          "BiologicallyDerivedProduct")
_APPOINTMENT = ("Appointment",)
_DICTIONARY = ("CodeSystem",)
CHANGES = {"PRPA_IN400002UV": _VISIT, "PRPA_IN400003UV": _VISIT, "PRPA_IN302011UV": _VISIT,
           "PRPA_IN302012UV": _VISIT, "POOR_IN200902UV": _ORDER,
           "PRPA_IN410002UV": _APPOINTMENT, "PRSC_IN010201UV01": _APPOINTMENT,
           "PRVS_IN000002UV01": _DICTIONARY, "PRSC_IN030102UV": ("Schedule",)}


def _keep_what_it_had(repo: Repository, ctx: Context, conv: Conversion,
                      types: tuple[str, ...]) -> None:
    """Fill in each resource of ``types`` in ``conv`` with what its stored version holds and the
    message does not say (a visit's admitting doctor, department, reason and start; an order's
    drug, dose and status), so that no fact is dropped by a message that names only its change.
    An element the mapper gave a default (``Conversion.unsaid``: an update without a status)
    takes the stored value."""
    for res in conv.resources:
        if res.get("resourceType") not in types:
            continue
        old = _fill_from_stored(repo, ctx, res)
        # what the mapper defaulted because the message did not say: the stored value stands
        for element in conv.unsaid.get(f"{res['resourceType']}/{res['id']}", ()):
            if old is not None and element in old:
                res[element] = old[element]


def _fill_from_stored(repo: Repository, ctx: Context, res: dict[str, Any]) -> dict[str, Any] | None:
    """Each key the message left out, from the stored version (a period merged, the places
    a visit was at before those the message names); the stored version, if any."""
    try:
        stored = repo.latest(ctx, res["resourceType"], res["id"])
    except FhirError:
        return None  # the sender may not read it: written as the message says
    body = resource_bytes(stored) if stored is not None else b""
    if not body:
        return None
    old = jsontext.loads_exact(body)  # what it keeps: decimals as written
    for key in ("meta", "text", "id"):
        old.pop(key, None)
    had_concepts = old.get("concept")
    _fill(res, old)
    if isinstance(had_concepts, list) and res.get("concept") is not had_concepts:
        # a dictionary's update adds or changes the items it names; the others stay
        named = {c.get("code") for c in res["concept"]}
        res["concept"] = res["concept"] + [c for c in had_concepts if c.get("code") not in named]
        res["count"] = len(res["concept"])
    if isinstance(old.get("location"), list) and "location" in res:
        # the places it was at before, then those the message names
        now = {orjson.dumps(loc.get("location")) for loc in res["location"]}
        res["location"] = [{**loc, "status": "completed"} for loc in old["location"]
                           if orjson.dumps(loc.get("location")) not in now] + res["location"]
    return old


def _fill(new: dict[str, Any], old: dict[str, Any]) -> None:
    """What ``old`` has and ``new`` leaves out, into ``new``, element by element (a period's
    start, an order's dispense quantity); lists are the message's as it sent them."""
    for key, value in old.items():
        if key not in new:
            new[key] = value
        elif isinstance(value, dict) and isinstance(new[key], dict):
            _fill(new[key], value)


def _order_categories() -> dict[str, str]:
    return {kind: spec["code"] for kind, spec in hl7v3_table("orders")["categories"].items()}


def known_kinds() -> list[str]:
    """Every kind ``route_keys`` can find: what a subscription's kinds may name (an unknown one
    never matches, its subscription waits for nothing)."""
    return ["drug", *sorted(_order_categories())]


def route_keys(conv: Conversion) -> tuple[str, list[str]]:
    """(patient, kinds) of an accepted message, for the bus (``hub.v3routing``): the unit its
    deliveries keep in order, and what it is about (``drug``, a request's kind)."""
    return v3routing.patient_of(conv.resources), v3routing.kinds_of(conv.resources,
                                                                    _order_categories())


def institution_of(raw: bytes, source: SourceInfo) -> str:
    """The institution the mapper decides on: the connector's, else the message's own."""
    try:
        msg = parse(raw)
        return Ctx(msg, source, hl7v3._org_code(msg)).inst
    except MappingError:
        return source.institution


def findings_report(conv: Conversion, source: SourceInfo, institution: str, now: datetime) -> dict:
    """The registration's findings as a stored quality report (``document-quality`` tag)."""
    checked = quality.report(conv.findings)
    who = replace(source, institution=institution or source.institution)
    system = "urn:oid:" + hl7v3_table("interactions")["interaction_id_root"]
    return quality_report(checked["outcome"], checked["decision"], who, conv.unit_id, conv.kind,
                          now, type_system=system)


def keep(quarantine: Quarantine, raw: bytes, source: SourceInfo, code: str, reason: str,
         rule: str | None, interaction: str | None = None) -> int:
    """Quarantine a refused message (a registration, or one the hub could not read or does not
    support: ``interaction`` names what its root element says it is); its id."""
    report = {"ack": code, "rule": rule, "reason": reason[:2000]}
    if interaction:
        report["interaction"] = interaction[:80]
    src = {k: v for k, v in (("institution", source.institution), ("oid", source.oid),
                             ("feed", source.feed)) if v}
    return quarantine.put(KIND, raw, src, report, reason)


def replay(repo: Repository, quarantine: Quarantine, qid: int,
           normaliser: Any = None) -> tuple[bool, str]:
    """Register a quarantined message again: (stored, what happened). Stored marks the entry
    replayed; refused again leaves it open with the new reason in its last result. An entry kept
    as the SOAP envelope it came in is read as ``POST /v3`` reads it (its header blocks too)."""
    entry = quarantine.get(qid)
    if entry is None:
        raise KeyError(qid)
    payload = entry["payload"]
    try:
        env = soap.unwrap(payload)
    except soap.NotAMessage as e:
        quarantine.mark(qid, "open", {"ack": "AR", "reason": e.text[:300]})
        return False, f"AR: {e.text}"
    source = _source(entry["source"])
    ctx = Context(source={"institution": source.institution or "unknown",
                          "feed": "quarantine-replay"}, actor=SYSTEM)
    try:
        _, results = register(repo, env.message if env is not None else payload, source, ctx,
                              normaliser)
    except MappingError as e:
        quarantine.mark(qid, "open", {"ack": e.code, "reason": e.reason[:300]})
        return False, f"{e.code}: {e.reason}"
    except FhirError as e:
        text = "; ".join(i.diagnostics for i in e.issues)[:300]
        quarantine.mark(qid, "open", {"status": e.status, "reason": text})
        return False, text
    written = [f"{r.rtype}/{r.rid}/_history/{r.version}" for r in results
               if isinstance(r, Result) and r.version is not None]
    quarantine.mark(qid, "replayed", {"ack": "AA", "resources": len(written)})
    return True, ", ".join(written)


def patient_of(payload: bytes, source: dict[str, Any]) -> str | None:
    """``Patient/<id>`` a kept message is about, keyed as its mapping keys it; None when the
    mapper refuses it (it then names no patient it would write)."""
    try:
        env = soap.unwrap(payload)
        conv = hl7v3.convert(env.message if env is not None else payload, _source(source))
    except (soap.NotAMessage, MappingError):
        return None
    return conv.patient_key


def _source(kept: dict[str, Any]) -> SourceInfo:
    """The sender of a kept message, as its entry records it."""
    return SourceInfo(**{k: v for k, v in kept.items() if k in ("institution", "oid", "feed")})
