"""The shared record: find a person, read their timeline across institutions with a purpose."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api.caller import PURPOSES, actor_of, authorize, context_of, repository
from hub.api.everything import audit_event
from hub.console.common import page, router
from hub.core.access import Action
from hub.core.errors import FhirError
from projections.timeline import KINDS

# -- shared record ----------------------------------------------------------------------------

def _looks_like_identifier(q: str) -> bool:
    return bool(re.fullmatch(r"[\w.:|/-]+", q)) and any(ch.isdigit() for ch in q)


@router.api_route("/console/record", methods=["GET", "HEAD"], name="console-record",
                  include_in_schema=False)
def record_page(request: Request) -> Response:
    """Find a person by name or any identifier: the Patients the search finds (a search of
    Patients by the logged-in person: audited like the API's)."""
    ctx = authorize(request, Action("operation", None, None, "$console-record"))
    q = request.query_params.get("q", "").strip()[:100]
    patients = []
    if q:
        repo = repository(request)
        params = [("identifier" if _looks_like_identifier(q) else "name", q), ("_count", "20")]
        base = request.app.state.settings.fhir_base
        plan = repo.plan(ctx, "Patient", params, True, base)
        found = repo.search(ctx, plan, 20, "accurate", base, includes=False)
        for row in found.page.rows:
            body = found.bodies.get((row.rtype, row.rid))
            if body is None:
                continue  # not shown to this reader
            p: dict[str, Any] = orjson.loads(body[1].partition(b"\n")[2])  # header, JSON
            name: dict[str, Any] = (p.get("name") or [{}])[0]
            org: dict[str, Any] = p.get("managingOrganization") or {}
            patients.append({
                "id": row.rid, "gender": p.get("gender", ""), "birthDate": p.get("birthDate", ""),
                "name": name.get("text") or "".join([name.get("family", ""),
                                                     *name.get("given", [])]) or row.rid,
                "organization": org.get("display") or org.get("reference", "")})
    return page(request, "record.html", "record", q=q, patients=patients)


@router.api_route("/console/record/Patient/{rid}", methods=["GET", "HEAD"],
                  name="console-record-timeline", include_in_schema=False)
async def record_timeline(request: Request, rid: str) -> Response:
    """A person's timeline across institutions, once the reader gave a purpose of use (asked
    first; break the glass is one); the read is audited as the API's $timeline is."""
    authorize(request, Action("operation", None, None, "$console-record"))
    purpose = request.query_params.get("purpose", "").upper()
    if purpose and purpose not in PURPOSES:
        raise FhirError(400, "invalid", "purpose is a v3 PurposeOfUse code (TREAT, ETREAT)")
    if not purpose:
        return page(request, "timeline.html", "record", who=f"Patient/{rid}", purpose="")
    request.state.actor = replace(actor_of(request), purpose=purpose)
    ctx = context_of(request)
    kind = request.query_params.get("kind", "")
    kind = kind if kind in KINDS else ""
    since = request.query_params.get("since", "")[:10]
    start = None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", since):
        start = int(datetime.fromisoformat(since).replace(tzinfo=UTC).timestamp() * 1_000_000)
    shared = request.app.state.shared_record
    repo = repository(request)

    def answer() -> tuple[Any, list]:
        repo.authorize(ctx, Action("operation", "Patient", rid, "$timeline"))
        scope = shared.scope_of_patient(rid, None)
        entries, _ = shared.timeline(scope, start, None, [kind] if kind else None, 200, None)
        return scope, repo.shown(ctx, entries)

    writer = request.app.state.audit
    try:
        scope, entries = await run_in_threadpool(answer)
    except FhirError as e:
        await run_in_threadpool(writer.write, audit_event(
            request, "timeline", None, [f"Patient/{rid}"], "4",
            e.issues[0].diagnostics if e.issues else None, purpose))
        raise
    await run_in_threadpool(writer.write, audit_event(
        request, "timeline", scope.person, scope.patients, "0", purpose=purpose))
    return page(request, "timeline.html", "record", who=f"Patient/{rid}", purpose=purpose,
                 patients=scope.patients, kinds=KINDS, kind=kind, since=since,
                 entries=[_timeline_row(e) for e in entries])


_WHEN = ("effectiveDateTime", "authoredOn", "recordedDate", "onsetDateTime", "performedDateTime",
         "issued", "date", "occurrenceDateTime")


def _timeline_row(entry: tuple[str, str, bytes]) -> dict[str, str]:
    rtype, _, body = entry
    d = orjson.loads(body)
    when = next((d[k] for k in _WHEN if isinstance(d.get(k), str)), "") or \
        (d.get("period") or d.get("effectivePeriod") or {}).get("start", "")
    concept = d.get("code") or d.get("medicationCodeableConcept") or d.get("type") or {}
    if isinstance(concept, list):
        concept = concept[0] if concept else {}
    label = concept.get("text") or next((c.get("display") or c.get("code", "")
                                         for c in concept.get("coding") or []), "")
    if rtype == "Encounter":
        label = (d.get("class") or {}).get("display") or (d.get("class") or {}).get("code", "")
    patient = (d.get("subject") or d.get("patient") or {}).get("reference", "")
    return {"rtype": rtype, "when": str(when)[:16].replace("T", " "), "label": label,
            "patient": patient}
