"""Validation of what callers write, with lenient intake for those whose policy says repair.

A caller's policy is decided on the server, never by a header: ``repair`` for callers with the
``connector`` role (hospital feeds) and for institutions listed in ``HUB_INTAKE_REPAIR`` (``*``:
every caller), ``strict`` for the rest and for institutions listed in ``HUB_INTAKE_STRICT``.
Under ``repair`` a resource refused only for a zone-less time or a single value where R4 has an
array is repaired (``hub.core.repair``), validated again and stored; the repairs come back as
warnings, and a quality report per write (an OperationOutcome the data-quality projection counts,
document type ``fhir-rest``) records them under the caller's institution.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from hub.core import jsontext
from hub.core import resource as res
from hub.core.config import Settings
from hub.core.errors import FhirError, Issue, relocate
from hub.core.fhirtime import ZONE
from hub.core.ingest import Context, Op, Result
from hub.core.repair import Repair, repair
from hub.repository import Repository

log = logging.getLogger("hub.api.intake")
INTAKE_TYPES = "https://fhir-region-hub.example/CodeSystem/intake"


def _institution(ctx: Context) -> str | None:
    """The institution a write is recorded under: the token's, else the connector's source."""
    return (ctx.actor.institution if ctx.actor is not None else None) or \
        (ctx.source or {}).get("institution")


def repairs_allowed(ctx: Context, settings: Settings) -> bool:
    actor = ctx.actor
    institution = _institution(ctx)
    if institution and institution in settings.intake_strict:
        return False
    if "*" in settings.intake_repair or (institution and institution in settings.intake_repair):
        return True
    return actor is not None and "connector" in actor.roles


def validate(ctx: Context, settings: Settings, rtype: str, raw: bytes, d: dict,
             where: str = "") -> tuple[dict, list[Issue]]:
    """(the resource to store, the repairs made): ``d`` as it is when it validates; repaired when
    it does not, the caller may be repaired for, and only repairable defects stand in the way;
    else the validation error."""
    try:
        res.validate(rtype, raw, d, where or rtype)
        return d, []
    except FhirError as e:
        if e.status != 422 or not repairs_allowed(ctx, settings):
            raise
        if not ZONE.match(settings.timezone):
            log.warning("HUB_TIMEZONE %r is not an offset like +08:00: nothing is repaired",
                        settings.timezone)
            raise
        fixed = repair(rtype, d, settings.timezone)
        if fixed is None:
            raise
    repaired, issues = fixed
    res.validate(rtype, jsontext.dumps(repaired, where or rtype), repaired, where or rtype)
    return repaired, relocate(issues, rtype, where)


def finish(repo: Repository, ctx: Context, result: Result, warnings: list[Issue]) -> None:
    """After a write is stored: its warnings (repairs, profiles) in its answer, and the report
    of the repairs made to it, which the data-quality projection counts."""
    if not warnings or result.rid is None or (result.version is None and not result.hidden):
        return
    repairs = [i for i in warnings if isinstance(i, Repair)]
    if repairs:
        repo.record_own([_report(ctx, result, repairs)], ctx)
    result.issues = [*warnings, *result.issues]


def _report(ctx: Context, result: Result, repairs: Sequence[Issue]) -> Op:
    from fhir_mapping.base import SourceInfo
    from fhir_mapping.documents import quality_report

    d = quality_report({"issue": [i.to_json() for i in repairs]}, "accept-with-warnings",
                       SourceInfo(institution=_institution(ctx) or "unknown"),
                       # one report per repaired write (per version): one per resource was
                       # replaced by each later repaired write, and its repairs went uncounted
                       f"{result.rtype}/{result.rid}/_history/{result.version}" if not result.hidden
                       # a version of a record the caller may not read is not named: the request
                       else f"{result.rtype}/{result.rid} ({ctx.request_id})", "fhir-rest",
                       datetime.now(UTC),
                       document_ref=f"{result.rtype}/{result.rid}", type_system=INTAKE_TYPES)
    return Op("PUT", "OperationOutcome", d["id"], d, url=f"OperationOutcome/{d['id']}")
