"""The access audit: who read whose record, when and why (a search of the audit log, itself
read through the repository: checked and audited); the break-the-glass accesses, each to be
reviewed by an auditor (the review written to the append-only audit log as an AuditEvent)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.access.audit import REVIEW, USER_SYSTEM, agent_who, review_event
from hub.access.chain import emergency_accesses
from hub.access.policy import EMERGENCY
from hub.api.caller import actor_of, authorize, context_of, repository
from hub.console.common import check_csrf, notice_of, page, router, say, with_notice
from hub.core.access import Action
from hub.core.errors import FhirError

WINDOW_DAYS = 90  # the break-the-glass accesses listed: the last ninety days'
PAGE = 200  # accesses a page lists; the older ones of the window on the next pages
FINDINGS = ("justified", "unjustified")


def _log(request: Request) -> Any:
    return getattr(request.app.state, "audit_log", None)


@router.api_route("/console/audit", methods=["GET", "HEAD"], name="console-audit",
                  include_in_schema=False)
def audit_page(request: Request) -> Response:
    ctx = authorize(request, Action("operation", None, None, "$console-audit"))
    log = _log(request)
    since = int((datetime.now(UTC) - timedelta(days=WINDOW_DAYS)).timestamp() * 1_000_000)
    older = request.query_params.get("older", "")  # the position the page's accesses are before
    before = int(older) if older.isascii() and older.isdigit() and len(older) < 19 else None
    found = emergency_accesses(log, since, PAGE, before) if log is not None else []
    # how many older ones the window holds (none unreviewed is out of sight: a link to them)
    more = log.count_values("purpose", sorted(EMERGENCY), since, found[0]["pos"]) if found else 0
    reviews: dict[str, list[dict[str, Any]]] = {}
    if found:
        for row in reversed(log.with_values("entity", [f"AuditEvent/{a['id']}" for a in found])):
            d = orjson.loads(row.body)
            if (d.get("type") or {}).get("code") != REVIEW["code"]:
                continue
            target = d["entity"][0]["what"]["reference"].split("/", 1)[1]
            who = d["agent"][0]["who"]
            reviews.setdefault(target, []).append({  # every review, the oldest first
                "by": who["display"], "agent": _agent(who.get("identifier") or {}),
                "when": d.get("recorded", ""), "finding": d["entity"][0].get("description", ""),
                "note": str(d.get("outcomeDesc", "")).partition(": ")[2]})
    me = _agent(agent_who(actor_of(request))["identifier"])
    emergency = []
    for a in reversed(found):
        said = reviews.get(a["id"], [])
        maker = _agent({"system": a["system"], "value": a["who"]})
        for r in said:
            r["own"] = r["agent"] == maker
        # reviewed once someone other than who broke the glass reviewed it (a review by that
        # person, recorded before such reviews were refused, is shown and counts for nothing);
        # a person is a subject of an issuer: an external provider's user of a hub user's
        # subject is someone else
        emergency.append({"id": a["id"], "time": a["recorded"],
                          "who": a["who"] if maker[0] == USER_SYSTEM
                          else f"{a['who']} ({maker[0]})",
                          "whose": ", ".join(a["what"][:3]), "what": "/".join(a["access"]),
                          "why": a["purpose"], "outcome": a["outcome"], "reviews": said,
                          "pending": all(r["own"] for r in said), "own": maker == me})
    q = {k: request.query_params.get(k, "").strip()[:200] for k in ("patient", "who", "since")}
    accesses = _search(request, ctx, q) if any(q.values()) else None
    return page(request, "audit.html", "audit", emergency=emergency, q=q, accesses=accesses,
                findings=FINDINGS, notice=notice_of(request), more=more,
                older=found[0]["pos"] if more else None, paged=before is not None)


def _search(request: Request, ctx: Any, q: dict[str, str]) -> list[dict[str, str]]:
    """Who read whose record, when and why: AuditEvents by patient, by the person (the name the
    log records) and from a day on, the newest first."""
    params = [("_sort", "-date"), ("_count", "100")]
    if q["patient"]:
        ref = q["patient"] if "/" in q["patient"] else f"Patient/{q['patient']}"
        params.append(("patient", ref))
    if q["who"]:
        params.append(("agent-name", q["who"]))
    if q["since"]:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", q["since"]):
            raise FhirError(400, "invalid", "since is a date (YYYY-MM-DD)")
        params.append(("date", f"ge{q['since']}"))
    repo = repository(request)
    base = request.app.state.settings.fhir_base
    plan = repo.plan(ctx, "AuditEvent", params, True, base)
    found = repo.search(ctx, plan, 100, "none", base, includes=False)
    out = []
    for row in found.page.rows:
        body = found.bodies.get((row.rtype, row.rid))
        if body is None:
            continue
        d = orjson.loads(body[1].partition(b"\n")[2])  # header line, resource JSON
        agent = (d.get("agent") or [{}])[0]
        out.append({
            "time": d.get("recorded", ""),
            "who": (agent.get("who") or {}).get("display", ""),
            "what": ", ".join(s.get("display") or s.get("code", "")
                              for s in d.get("subtype") or []),
            "whose": ", ".join(e["what"]["reference"] for e in d.get("entity") or []
                               if (e.get("what") or {}).get("reference", "").startswith(
                                   "Patient/"))[:300],
            "why": ", ".join(c.get("code", "") for p in d.get("purposeOfEvent") or []
                             for c in p.get("coding") or []),
            "outcome": d.get("outcome", ""), "address": (agent.get("network") or {}).get(
                "address", "")})
    return out


@router.post("/console/audit/{event_id}/review", name="console-audit-review",
             include_in_schema=False)
async def review(request: Request, event_id: str) -> Response:
    """An auditor's review of one break-the-glass access: justified or not, with a note."""
    form = await request.form()
    authorize(request, Action("operation", None, None, "$console-audit-review"))
    check_csrf(request, form)
    finding = str(form.get("finding") or "")
    note = str(form.get("note") or "").strip()[:400]
    if finding not in FINDINGS:
        raise FhirError(400, "invalid", "the finding is justified or unjustified")
    if finding == "unjustified" and not note:
        raise FhirError(400, "invalid", "say why the access was not justified")
    log = _log(request)
    found = log.get_many([event_id]) if log is not None and \
        re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", event_id) else {}
    access = orjson.loads(found[event_id].body) if event_id in found else None
    if access is None or not _emergency(access):
        raise FhirError(404, "not-found", f"No break-the-glass access {event_id}")
    ctx = context_of(request, feed="console")
    agent = ((access.get("agent") or [{}])[0].get("who") or {}).get("identifier") or {}
    if _agent(agent) == _agent(agent_who(ctx.actor)["identifier"]):  # separation of duties
        raise FhirError(403, "forbidden", "A break-the-glass access is reviewed by an auditor "
                                          "other than the person who made it")
    await run_in_threadpool(request.app.state.audit.write,
                            review_event(ctx, event_id, finding, note))
    notice = f"{event_id}: {say(request, 'reviewed')} ({say(request, 'finding_' + finding)})"
    return RedirectResponse(with_notice(request, "/console/audit", notice), 303)


def _agent(identifier: dict[str, Any]) -> tuple[str, str]:
    """Who an audit agent is: the system of its identifier (the hub's users', an external
    provider's issuer) and its subject there."""
    return (str(identifier.get("system") or USER_SYSTEM), str(identifier.get("value") or ""))


def _emergency(event: dict[str, Any]) -> bool:
    """Is this AuditEvent a break-the-glass access (what a review may be of)?"""
    if (event.get("type") or {}).get("code") == REVIEW["code"]:
        return False
    return any(c.get("code") in EMERGENCY for p in event.get("purposeOfEvent") or ()
               for c in p.get("coding") or ())
