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
import re
from datetime import UTC, datetime

from hub.core import jsontext
from hub.core import resource as res
from hub.core.config import Settings
from hub.core.errors import FhirError, Issue
from hub.core.ingest import Context, Op, Result
from hub.core.repair import Repair, repair

log = logging.getLogger("hub.api.intake")
_ZONE = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$|^Z$")
INTAKE_TYPES = "https://fhir-region-hub.example/CodeSystem/intake"


def repairs_allowed(ctx: Context, settings: Settings) -> bool:
    actor = ctx.actor
    institution = (actor.institution if actor is not None else None) or \
        (ctx.source or {}).get("institution")
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
        if not _ZONE.match(settings.timezone):
            log.warning("HUB_TIMEZONE %r is not an offset like +08:00: nothing is repaired",
                        settings.timezone)
            raise
        fixed = repair(rtype, d, settings.timezone)
        if fixed is None:
            raise
    repaired, issues = fixed
    res.validate(rtype, jsontext.dumps(repaired, where or rtype), repaired, where or rtype)
    if where:  # inside a Bundle: the entry's path in front of the element's
        issues = [Repair(i.code, i.diagnostics, i.severity,
                         where + (i.expression or "")[len(rtype):], rule=getattr(i, "rule", ""))
                  for i in issues]
    return repaired, issues


def quality_report(ctx: Context, result: Result, issues: list[Issue]) -> Op:
    """The write of the report of the repairs made to one stored resource."""
    from fhir_mapping.base import SourceInfo
    from fhir_mapping.documents import quality_report as report

    institution = (ctx.actor.institution if ctx.actor is not None else None) or \
        (ctx.source or {}).get("institution") or "unknown"
    d = report({"issue": [i.to_json() for i in issues]}, "accept-with-warnings",
               SourceInfo(institution=institution), f"{result.rtype}/{result.rid}", "fhir-rest",
               datetime.now(UTC), document_ref=f"{result.rtype}/{result.rid}",
               type_system=INTAKE_TYPES)
    return Op("PUT", "OperationOutcome", d["id"], d, url=f"OperationOutcome/{d['id']}")
