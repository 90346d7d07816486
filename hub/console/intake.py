"""The overview (intake per day and type drawn with ECharts, each read model's lag, open
quarantine entries) and the quarantine (an entry's findings marked in its payload; replay)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub import v3intake
from hub.access.policy import bound_to
from hub.api.caller import authorize, repository
from hub.api.health import runners
from hub.console import kept
from hub.console.common import check_csrf, notice_of, page, router, say, with_notice
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.ingest import Context
from projections.intake import BY, UNNAMED, day_of

# -- overview ---------------------------------------------------------------------------------

DAYS = 14
TOP = 8  # series drawn by name; the rest are summed as one


@router.api_route("/console/overview", methods=["GET", "HEAD"], name="console-overview",
                  include_in_schema=False)
def overview(request: Request) -> Response:
    """Intake per day over two weeks by institution, feed or type (one institution's alone
    when chosen), from the intake counts; quarantine entries per day by kind; each read model's
    lag; the open quarantine entries. Every figure is read from a small table: the page costs
    the same whatever the log's size."""
    ctx = authorize(request, Action("operation", None, None, "$console-overview"))
    mine = bound_to(ctx.actor)  # an institution's people count their own quarantine entries
    by = request.query_params.get("by", "institution")
    by = by if by in BY else "institution"
    intake = request.app.state.intake
    institutions = intake.institutions()
    institution = request.query_params.get("institution", "")
    institution = institution if institution in institutions else ""
    today = day_of(datetime.now(UTC).isoformat())
    first = today - DAYS + 1
    labels = [(date(1970, 1, 1) + timedelta(days=first + i)).strftime("%m-%d")
              for i in range(DAYS)]
    per: dict[str, list[int]] = {}
    for day, key, n in intake.per_day(first, by, institution or None):
        per.setdefault(key, [0] * DAYS)[day - first] += n
    if UNNAMED in per:  # what a source did not say: shown as such, not as a dash
        per[say(request, "unnamed")] = per.pop(UNNAMED)
    totals = sorted(((k, sum(v)) for k, v in per.items()), key=lambda x: (-x[1], x[0]))
    series = [{"name": k, "data": per[k]} for k, _ in totals[:TOP]]
    if len(totals) > TOP:
        series.append({"name": say(request, "others"), "data": [
            sum(per[k][i] for k, _ in totals[TOP:]) for i in range(DAYS)]})
    quarantine = request.app.state.documents.quarantine
    since = (datetime.now(UTC) - timedelta(days=DAYS + 1)).isoformat().replace("+00:00", "Z")
    days = {(date(1970, 1, 1) + timedelta(days=first + i)).isoformat(): i for i in range(DAYS)}
    kept: dict[str, list[int]] = {}
    for d, kind, n in quarantine.daily(since, mine):
        if d in days:
            kept.setdefault(kind, [0] * DAYS)[days[d]] += n
    head = request.app.state.repo.store.max_notification_id()
    lags = [(name, max(0, head - runner.model.position()),
             "fail" if runner.error is not None else "pass")
            for name, runner in runners(request).items()]
    return page(request, "overview.html", "overview", by=by, bys=list(BY),
                institution=institution, institutions=institutions, totals=totals, lags=lags,
                chart={"days": labels, "series": series},
                kept={"days": labels, "series": [{"name": k, "data": v}
                                                 for k, v in sorted(kept.items())]},
                open_quarantine=quarantine.count("open", mine))


# -- quarantine -------------------------------------------------------------------------------

QUARANTINE_PAGE = 200

@router.api_route("/console/quarantine", methods=["GET", "HEAD"], name="console-quarantine",
                  include_in_schema=False)
def quarantine_list(request: Request) -> Response:
    """The entries, newest first, a page at a time: the next page is those older than the
    last shown (by id, so entries kept meanwhile shift nothing); an institution's people, its
    own alone."""
    ctx = authorize(request, Action("operation", None, None, "$console-quarantine"))
    mine = bound_to(ctx.actor)
    raw = request.query_params.get("before", "")
    before = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None
    quarantine = request.app.state.documents.quarantine
    entries = quarantine.list(status=None, limit=QUARANTINE_PAGE + 1, newest_first=True,
                              before=before, institution=mine)
    older = entries[QUARANTINE_PAGE]["id"] + 1 if len(entries) > QUARANTINE_PAGE else None
    entries = entries[:QUARANTINE_PAGE]
    return page(request, "quarantine.html", "quarantine", entries=entries,
                total=quarantine.count(None, mine), older=older, paged=before is not None,
                notice=notice_of(request))


@router.api_route("/console/quarantine/{qid}", methods=["GET", "HEAD"],
                  name="console-quarantine-entry", include_in_schema=False)
def quarantine_entry(request: Request, qid: int) -> Response:
    action = Action("operation", None, None, "$console-quarantine")
    ctx = authorize(request, action)
    entry = _entry(request, ctx, action, qid)
    # the payload is a patient's data as sent: its showing is audited like a read of it
    kept.audited(request, ctx, action, "0", entry["patients"], f"quarantine entry {qid} shown")
    findings = findings_of(entry.get("report") or {})
    text = bytes(entry["payload"]).decode("utf-8", errors="replace")
    marked = marked_lines(text, findings)
    return page(request, "entry.html", "quarantine", entry=entry, findings=findings,
                 lines=marked)


def _entry(request: Request, ctx: Context, action: Action, qid: int) -> dict[str, Any]:
    """The entry, if the caller may open it (``hub.console.kept``), with the Patients its
    audit names."""
    entry = request.app.state.documents.quarantine.get(qid)
    what = f"quarantine entry {qid}"
    if entry is None:
        raise FhirError(404, "not-found", f"No {what}")
    patient = kept.patient_of(entry["kind"], bytes(entry["payload"]), entry["source"])
    return {**entry, "patients": kept.judge(request, ctx, action, what, entry["institution"],
                                            patient)}


def findings_of(report: dict) -> list[dict[str, str]]:
    out = []
    if "ack" in report:  # an HL7 v3 refusal: the element at fault closes its reason
        reason = str(report.get("reason") or "")
        where = re.search(r"\((/\*/[^()\s]+)\)", reason)
        out.append({"severity": report["ack"], "rule": report.get("rule") or "",
                    "text": reason, "where": where.group(1) if where else ""})
    for issue in report.get("issue") or ():
        details = issue.get("details") or {}
        rule = next((c.get("code") for c in details.get("coding") or () if c.get("code")), "")
        where = (issue.get("location") or issue.get("expression") or [""])[0]
        out.append({"severity": issue.get("severity", ""), "rule": rule,
                    "text": details.get("text") or issue.get("diagnostics") or "", "where": where})
    return out


def marked_lines(text: str, findings: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The payload's lines, those holding the element a finding's XPath ends at marked."""
    names = {m.group(1) for f in findings
             for m in [re.search(r"(?:hl7:|cda:|/)([A-Za-z][\w.-]*)(?:\[\d+\])?(?:/@[\w:]+)?$",
                                 f["where"] or "")] if m}
    lines = text.splitlines()[:5000]
    return [(line, any(f"<{n}" in line for n in names)) for line in lines]


@router.post("/console/quarantine/{qid}/replay", name="console-quarantine-replay",
             include_in_schema=False)
async def quarantine_replay(request: Request, qid: int) -> Response:
    action = Action("operation", None, None, "$console-quarantine-replay")
    ctx = authorize(request, action)
    check_csrf(request, await request.form())
    ok, what = await run_in_threadpool(_replay, request, ctx, action, qid)
    notice = f"#{qid}: " + say(request, "replayed" if ok else "refused_again") \
        + f" ({what[:200]})"
    return RedirectResponse(with_notice(request, "/console/quarantine", notice), 303)


def _replay(request: Request, ctx: Context, action: Action, qid: int) -> tuple[bool, str]:
    """The replay ``hub quarantine replay`` does, by the logged-in person (audited as theirs),
    of an entry the person may open."""
    documents = request.app.state.documents
    entry = _entry(request, ctx, action, qid)
    if entry["kind"] == v3intake.KIND:
        return v3intake.replay(repository(request), documents.quarantine, qid)
    result = documents.replay(qid)
    return result.status != 422, result.document_ref or result.decision or ""
