"""The overview (intake per day and type drawn with ECharts, each read model's lag, open
quarantine entries) and the quarantine (an entry's findings marked in its payload; replay)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub import v3intake
from hub.api.caller import authorize, repository
from hub.api.health import runners
from hub.console.common import check_csrf, page, router, say
from hub.core.access import Action
from hub.core.errors import FhirError

# -- overview ---------------------------------------------------------------------------------

@router.api_route("/console/overview", methods=["GET", "HEAD"], name="console-overview",
                  include_in_schema=False)
def overview(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-overview"))
    store = request.app.state.repo.store
    days = 14
    today = int(time.time() // 86400)
    rows = store.daily_versions((today - days + 1) * 86400 * 1_000_000)
    labels = [datetime.fromtimestamp((today - days + 1 + i) * 86400, UTC).strftime("%m-%d")
              for i in range(days)]
    per_type: dict[str, list[int]] = {}
    for day, rtype, n in rows:
        per_type.setdefault(rtype, [0] * days)[day - (today - days + 1)] += n
    totals = sorted(((t, sum(v)) for t, v in per_type.items()), key=lambda x: -x[1])
    top = [t for t, _ in totals[:8]]
    chart = {"days": labels, "series": [{"name": t, "data": per_type[t]} for t in top]}
    head = store.max_notification_id()
    lags = [(name, max(0, head - runner.model.position()),
             "fail" if runner.error is not None else "pass")
            for name, runner in runners(request).items()]
    quarantine = request.app.state.documents.quarantine
    open_entries = quarantine.count("open")
    return page(request, "overview.html", "overview", chart=chart, totals=totals, lags=lags,
                 open_quarantine=open_entries)


# -- quarantine -------------------------------------------------------------------------------

@router.api_route("/console/quarantine", methods=["GET", "HEAD"], name="console-quarantine",
                  include_in_schema=False)
def quarantine_list(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-quarantine"))
    entries = request.app.state.documents.quarantine.list(status=None, limit=500)
    entries.reverse()  # the newest first
    return page(request, "quarantine.html", "quarantine", entries=entries,
                 notice=request.query_params.get("notice"))


@router.api_route("/console/quarantine/{qid}", methods=["GET", "HEAD"],
                  name="console-quarantine-entry", include_in_schema=False)
def quarantine_entry(request: Request, qid: int) -> Response:
    action = Action("operation", None, None, "$console-quarantine")
    ctx = authorize(request, action)
    entry = request.app.state.documents.quarantine.get(qid)
    if entry is None:
        raise FhirError(404, "not-found", f"No quarantine entry {qid}")
    # the payload is a patient's data as sent: its showing is audited like a read
    audit = getattr(request.app.state.repo, "audit", None)
    if audit is not None:
        audit.record(ctx, action, "0", [], [], f"quarantine entry {qid} shown")
    findings = _findings(entry.get("report") or {})
    text = bytes(entry["payload"]).decode("utf-8", errors="replace")
    marked = _marked_lines(text, findings)
    return page(request, "entry.html", "quarantine", entry=entry, findings=findings,
                 lines=marked)


def _findings(report: dict) -> list[dict[str, str]]:
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


def _marked_lines(text: str, findings: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The payload's lines, those holding the element a finding's XPath ends at marked."""
    names = {m.group(1) for f in findings
             for m in [re.search(r"(?:hl7:|cda:|/)([A-Za-z][\w.-]*)(?:\[\d+\])?(?:/@[\w:]+)?$",
                                 f["where"] or "")] if m}
    lines = text.splitlines()[:5000]
    return [(line, any(f"<{n}" in line for n in names)) for line in lines]


@router.post("/console/quarantine/{qid}/replay", name="console-quarantine-replay",
             include_in_schema=False)
async def quarantine_replay(request: Request, qid: int) -> Response:
    authorize(request, Action("operation", None, None, "$console-quarantine-replay"))
    check_csrf(request, await request.form())
    ok, what = await run_in_threadpool(_replay, request, qid)
    notice = f"#{qid}: " + say(request, "replayed" if ok else "refused_again") \
        + f" ({what[:200]})"
    return RedirectResponse(f"/console/quarantine?notice={quote(notice)}", 303)


def _replay(request: Request, qid: int) -> tuple[bool, str]:
    """The replay ``hub quarantine replay`` does, by the logged-in person (audited as theirs)."""
    documents = request.app.state.documents
    entry = documents.quarantine.get(qid)
    if entry is None:
        raise FhirError(404, "not-found", f"No quarantine entry {qid}")
    if entry["kind"] == v3intake.KIND:
        return v3intake.replay(repository(request), documents.quarantine, qid)
    result = documents.replay(qid)
    return result.status != 422, result.document_ref or result.decision or ""
