"""A payload kept aside for the operators (a quarantine entry, a connector's dead letter) is an
institution's, and a patient's data as sent: it is shown to that institution's people and the
region's (``hub.access.policy.bound_to``; another's is answered as an unknown one), and only to
a reader of the Patient it is about, when the hub holds that Patient; each showing is audited
under that Patient, so an AuditEvent search by patient finds it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fastapi import Request

from fhir_mapping import cda
from fhir_mapping.base import SourceInfo
from hub import v3intake
from hub.access.policy import bound_to
from hub.api.caller import repository
from hub.core.access import Action
from hub.core.errors import FhirError, forbidden
from hub.core.ingest import Context

_SOURCE = {f.name for f in fields(SourceInfo)}


def require_own(ctx: Context, institution: str, what: str) -> None:
    """Another institution's is not found, as an unknown one would not be."""
    bound = bound_to(ctx.actor)
    if bound is not None and bound != institution:
        raise FhirError(404, "not-found", f"No {what}")


def patient_of(kind: str, payload: bytes, source: dict[str, Any]) -> str | None:
    """``Patient/<id>`` a kept payload is about, keyed as its mapping keys it; None when that
    cannot be told (a kind the hub does not map itself, or a payload naming no usable patient)."""
    if kind == "cda":
        return cda.patient_of(payload, SourceInfo(**{k: v for k, v in source.items()
                                                     if k in _SOURCE}))
    if kind == v3intake.KIND:
        return v3intake.patient_of(payload, source)
    return None


def judge(request: Request, ctx: Context, action: Action, what: str, institution: str,
          patient: str | None) -> list[str]:
    """Refuse what the caller may not have (another institution's: 404; about a Patient hidden
    from it: 403, audited under that Patient); the Patients to name in the audit (the one the
    payload is about, when the hub holds it)."""
    require_own(ctx, institution, what)
    if not patient or not patient.startswith("Patient/"):
        return []
    repo = repository(request)
    rid = patient.split("/", 1)[1]
    if not repo.store.current_ids("Patient", [rid]):
        return []  # a Patient the hub does not hold (yet): nothing of it to disclose
    if not repo.latest_many(ctx, "Patient", [rid]):
        audited(request, ctx, action, "4", [patient], f"{what} withheld: its Patient is not "
                "shown to this caller")
        raise forbidden(f"The {what} is about a Patient not shown to this caller")
    return [patient]


def audited(request: Request, ctx: Context, action: Action, outcome: str,
            patients: list[str], detail: str) -> None:
    audit = getattr(request.app.state.repo, "audit", None)
    if audit is not None:
        audit.record(ctx, action, outcome, patients, [], detail)
