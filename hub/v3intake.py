"""HL7 v3 registrations into the hub: convert, normalise, store; refusals kept for replay.

``POST /v3`` (``hub.api.v3``) answers with the acknowledgement; this module does the work it shares
with ``hub quarantine replay``: a registration the mapper refuses (AE/AR) or whose resources the
hub refuses is kept in the quarantine (kind ``v3``) with its acknowledgement code and reason, as a
refused CDA document is, and can be replayed after a fix (of the mapping tables, say).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from fhir_mapping import hl7v3, quality
from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.documents import quality_report
from fhir_mapping.hl7v3.common import Ctx, parse
from fhir_mapping.hl7v3.common import table as hl7v3_table
from hub.api import bundles
from hub.core.access import SYSTEM
from hub.core.errors import FhirError
from hub.core.events import resource_bytes
from hub.core.ingest import Context, Result
from hub.quarantine import Quarantine
from hub.repository import Repository

KIND = "v3"
CHINA = timezone(timedelta(hours=8))


def register(repo: Repository, raw: bytes, source: SourceInfo, ctx: Context,
             normaliser: Any = None, now: datetime | None = None
             ) -> tuple[Conversion, list[Result | FhirError]]:
    """Convert and store one registration in one transaction. Raises MappingError (the mapper
    refuses: its AE/AR) or FhirError (the hub refuses the mapped resources, or is busy).

    The mapper's findings are written with the resources as a quality report (the OperationOutcome
    the data-quality projection counts, as for documents), keyed by the institution, interaction
    and message id: a replay rewrites the same report, a no-op."""
    conv: Conversion = hl7v3.convert(raw, source)
    if conv.kind in VISIT_CHANGES:
        _keep_what_the_visit_had(repo, ctx, conv)
    if normaliser is not None:
        normaliser.apply(conv)  # local codes: the standard coding beside them
    if conv.findings:
        institution = ctx.source.get("institution") or ""
        if institution in ("", "unknown"):
            institution = institution_of(raw, source)
        conv.resources.append(findings_report(conv, source, institution, now or datetime.now(CHINA)))
    ops = [bundles.parse_entry(i, entry, "") for i, entry in enumerate(conv.entries())]
    return conv, repo.execute(ops, ctx, atomic=True)  # type: ignore[arg-type]


# visit messages after the first: they may carry only what changed (a discharge: its end, a
# transfer: the new ward), and an Encounter written from them alone would lose the rest
VISIT_CHANGES = ("PRPA_IN400002UV", "PRPA_IN400003UV", "PRPA_IN302011UV", "PRPA_IN302012UV")


def _keep_what_the_visit_had(repo: Repository, ctx: Context, conv: Conversion) -> None:
    """Fill in each Encounter of ``conv`` with what its stored version holds and the message does
    not say (the admitting doctor, the department, the reason, the start), so that no fact of
    the visit is dropped by a message that names only its change."""
    for res in conv.resources:
        if res.get("resourceType") != "Encounter":
            continue
        try:
            stored = repo.latest(ctx, "Encounter", res["id"])
        except FhirError:
            continue  # the sender may not read it: written as the message says
        body = resource_bytes(stored) if stored is not None else b""
        if not body:
            continue
        old = orjson.loads(body)
        for key, value in old.items():
            if key in ("meta", "text", "id"):
                continue
            if key not in res:
                res[key] = value
            elif key == "period" and isinstance(value, dict):
                res[key] = {**value, **res[key]}
            elif key == "location" and isinstance(value, list):
                # the places it was at before, then those the message names
                now = {orjson.dumps(loc.get("location")) for loc in res[key]}
                res[key] = [{**loc, "status": "completed"} for loc in value
                            if orjson.dumps(loc.get("location")) not in now] + res[key]


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
    replayed; refused again leaves it open with the new reason in its last result."""
    entry = quarantine.get(qid)
    if entry is None:
        raise KeyError(qid)
    source = SourceInfo(**{k: v for k, v in entry["source"].items()
                           if k in ("institution", "oid", "feed")})
    ctx = Context(source={"institution": source.institution or "unknown",
                          "feed": "quarantine-replay"}, actor=SYSTEM)
    try:
        _, results = register(repo, entry["payload"], source, ctx, normaliser)
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
