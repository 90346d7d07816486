"""The operator console at ``/console``: pages a regional information centre's staff work in, in
Chinese first (English by ``?lang=en``), served by the hub itself.

People log in with a local user (``hub auth user add``, ``hub.auth.users``); the session is a
hub-signed token in an HttpOnly, SameSite=Strict cookie whose audience is the console only (it is
no API bearer token), turned into the caller by ``hub.api.caller`` like any token, so each page
and action is checked by the access policy (``$console-*`` operations: roles) and audited like the
API. Forms carry the session's CSRF value besides.

Pages: the overview (intake per day and type over two weeks, drawn with Apache ECharts;
resources per type; each read model's lag; open quarantine entries), the quarantine (entries
with their reason, one entry with its findings and its payload, the lines the findings point at
marked; replay), the identity review (the matcher's review queue, each pair side by side with
its evidence; same person / not the same person), the access audit (break-the-glass accesses to
review). Templates are Jinja2 (``templates/``), the words ``i18n.yaml``, ECharts is fetched by
``make console-assets``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from hub import v3intake
from hub.access.chain import emergency_accesses
from hub.api.bundles import parse_entry
from hub.api.caller import PURPOSES, actor_of, authorize, context_of, repository
from hub.api.everything import audit_event
from hub.api.health import runners
from hub.auth.clients import REGISTRY_FILE
from hub.auth.sessions import AUDIENCE, COOKIE, ISSUER, SESSION_S
from hub.auth.users import UserRegistry
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.events import resource_bytes
from projections.timeline import KINDS

router = APIRouter()

LANG_COOKIE = "hub_console_lang"
STATIC = Path(str(resources.files("hub.console").joinpath("static")))
LANGS = ("zh", "en")


@lru_cache(maxsize=1)
def _words() -> dict[str, dict[str, str]]:
    return yaml.safe_load(resources.files("hub.console").joinpath("i18n.yaml").read_text("utf-8"))


_env = Environment(loader=PackageLoader("hub.console", "templates"),
                   autoescape=select_autoescape(["html"]))


def _lang(request: Request) -> str:
    asked = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "zh"
    return asked if asked in LANGS else "zh"


def _page(request: Request, template: str, page: str, **values: Any) -> HTMLResponse:
    lang = _lang(request)
    words = _words()
    claims = getattr(request.state, "console_claims", None) or {}
    html = _env.get_template(template).render(
        t=lambda key: words.get(key, {}).get(lang, key), lang=lang, page=page,
        user=claims.get("name"), csrf=claims.get("csrf", ""), **values)
    response = HTMLResponse(html, headers={"cache-control": "no-store",
                                           "content-security-policy": _CSP})
    if request.query_params.get("lang") in LANGS:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="strict")
    return response


# the pages' own scripts and the vendored ECharts only; no frames, no other origin
_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")


def error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    """A refusal on a console page, as a page (the API answers an OperationOutcome)."""
    key = {403: "forbidden", 404: "not_found"}.get(status, "failed")
    response = _page(request, "error.html", "error", status=status, key=key, detail=detail)
    response.status_code = status
    return response


def _check_csrf(request: Request, form: Any) -> None:
    claims = getattr(request.state, "console_claims", None) or {}
    sent = form.get("csrf") or ""
    if not claims.get("csrf") or not secrets.compare_digest(str(sent), claims["csrf"]):
        raise FhirError(403, "forbidden", "The form is not from this session (CSRF check)")


def _safe_next(value: str) -> str:
    return value if re.fullmatch(r"/console/[A-Za-z0-9/_-]*", value or "") else "/console/overview"


# -- login ------------------------------------------------------------------------------------------

@router.get("/console", name="console", include_in_schema=False)
def console_root(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-overview"))
    return RedirectResponse("/console/overview", 303)


@router.api_route("/console/login", methods=["GET", "HEAD"], name="console-login",
                  include_in_schema=False)
def login_form(request: Request) -> Response:
    return _page(request, "login.html", "login", failed=False,
                 next=_safe_next(request.query_params.get("next", "")))


@router.post("/console/login", name="console-login-post", include_in_schema=False)
async def login(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("name") or ""), str(form.get("password") or "")
    settings = request.app.state.settings
    users = UserRegistry(settings.data_dir / REGISTRY_FILE)
    user = await run_in_threadpool(users.check, name, password) if name and password else None
    if user is None:
        refused = _page(request, "login.html", "login", failed=True,
                        next=_safe_next(str(form.get("next") or "")))
        refused.status_code = 401
        return refused
    token = request.app.state.auth_signer.issue(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": f"console:{user.name}", "name": user.display,
         "fhirUser": f"Practitioner/console-{quote(user.name, safe='')}",
         "hub_roles": list(user.roles), "scope": "user/*.cruds", "csrf": secrets.token_urlsafe(24)},
        SESSION_S)
    response = RedirectResponse(_safe_next(str(form.get("next") or "")), 303)
    response.set_cookie(COOKIE, token, max_age=SESSION_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/console")
    return response


@router.post("/console/logout", name="console-logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-overview"))
    _check_csrf(request, await request.form())
    response = RedirectResponse("/console/login", 303)
    response.delete_cookie(COOKIE, path="/console")
    return response


# -- overview ---------------------------------------------------------------------------------------

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
    return _page(request, "overview.html", "overview", chart=chart, totals=totals, lags=lags,
                 open_quarantine=open_entries)


# -- quarantine -------------------------------------------------------------------------------------

@router.api_route("/console/quarantine", methods=["GET", "HEAD"], name="console-quarantine",
                  include_in_schema=False)
def quarantine_list(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-quarantine"))
    entries = request.app.state.documents.quarantine.list(status=None, limit=500)
    entries.reverse()  # the newest first
    return _page(request, "quarantine.html", "quarantine", entries=entries,
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
    return _page(request, "entry.html", "quarantine", entry=entry, findings=findings,
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
    _check_csrf(request, await request.form())
    ok, what = await run_in_threadpool(_replay, request, qid)
    words = _words()
    lang = _lang(request)
    notice = f"#{qid}: " + (words["replayed"][lang] if ok else words["refused_again"][lang]) \
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


# -- identity review --------------------------------------------------------------------------------

PAIR_FIELDS = ("name", "gender", "birthDate", "identifiers", "telecom", "address", "organization")


@router.api_route("/console/identity", methods=["GET", "HEAD"], name="console-identity",
                  include_in_schema=False)
def identity_page(request: Request) -> Response:
    """The review queue: each pair side by side (each Patient read through the repository, so
    audited as the steward's read) with the matcher's evidence, field by field."""
    ctx = authorize(request, Action("operation", None, None, "$mpi-review"))
    identity = request.app.state.identity
    if identity is None:
        raise FhirError(503, "transient", "The master patient index is not running")
    identity.sync()
    reviews = []
    for r in identity.person.reviews("open", 50):
        people = [_person_view(request, ctx, ref) for ref in [r["patient"], *r["candidates"]]]
        evidence = []
        for name, e in sorted((r.get("evidence") or {}).items()):
            level, weight = (e.get("level", ""), e.get("weight", "")) if isinstance(e, dict) \
                else ("", e)
            evidence.append((name, level, weight))
        reviews.append({"id": r["id"], "score": r["score"], "people": people,
                        "evidence": evidence})
    return _page(request, "identity.html", "identity", reviews=reviews, fields=PAIR_FIELDS,
                 notice=request.query_params.get("notice"))


def _person_view(request: Request, ctx: Any, ref: str) -> dict[str, str]:
    view = {"ref": ref}
    rtype, _, rid = ref.partition("/")
    try:
        stored = repository(request).read(ctx, rtype, rid)
    except FhirError:
        return {**view, **{f: "" for f in PAIR_FIELDS}, "name": _words()["hidden"][_lang(request)]}
    p = orjson.loads(resource_bytes(stored))
    name = (p.get("name") or [{}])[0]
    view["name"] = name.get("text") or "".join([name.get("family", ""), *name.get("given", [])])
    view["gender"] = p.get("gender", "")
    view["birthDate"] = p.get("birthDate", "")
    view["identifiers"] = "; ".join(str(i.get("value", "")) for i in p.get("identifier") or [])
    view["telecom"] = "; ".join(str(t.get("value", "")) for t in p.get("telecom") or [])
    view["address"] = "; ".join(a.get("text") or " ".join(a.get("line") or []) for a in
                                p.get("address") or [])
    view["organization"] = (p.get("managingOrganization") or {}).get("display") or \
        (p.get("managingOrganization") or {}).get("reference", "")
    return view


@router.post("/console/identity/{rid}/decide", name="console-identity-decide",
             include_in_schema=False)
async def identity_decide(request: Request, rid: str) -> Response:
    form = await request.form()
    decision = str(form.get("decision") or "")
    operation = {"accept": "$mpi-review-accept", "reject": "$mpi-review-reject"}.get(decision)
    if operation is None:
        raise FhirError(400, "invalid", "decision is accept or reject")
    authorize(request, Action("operation", None, rid, operation))
    _check_csrf(request, form)
    identity = request.app.state.identity
    claims = getattr(request.state, "console_claims", None) or {}
    user = str(claims.get("sub") or "console")
    reason = str(form.get("reason") or "")[:500] or None
    if decision == "accept":
        await run_in_threadpool(identity.accept_review, rid, user, None, reason)
    else:
        await run_in_threadpool(identity.reject_review, rid, user, reason)
    words, lang = _words(), _lang(request)
    notice = f"{rid}: " + words["accepted" if decision == "accept" else "rejected"][lang]
    return RedirectResponse(f"/console/identity?notice={quote(notice)}", 303)


# -- shared record ----------------------------------------------------------------------------------

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
    return _page(request, "record.html", "record", q=q, patients=patients)


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
        return _page(request, "timeline.html", "record", who=f"Patient/{rid}", purpose="")
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
    return _page(request, "timeline.html", "record", who=f"Patient/{rid}", purpose=purpose,
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


# -- code mapping -----------------------------------------------------------------------------------

@router.api_route("/console/mapping", methods=["GET", "HEAD"], name="console-mapping",
                  include_in_schema=False)
def mapping_page(request: Request) -> Response:
    """Each institution's local codes without a standard code, most frequent first, each with
    a form to map it (a ConceptMap change)."""
    authorize(request, Action("operation", None, None, "$unmapped-codes"))
    model = request.app.state.unmapped
    runner = request.app.state.unmapped_runner
    if model is None or runner is None:
        raise FhirError(503, "transient", "The unmapped-codes projection is not running")
    institution = request.query_params.get("institution", "").strip()[:200]
    runner.sync(5.0)
    rows = model.worklist(institution or None, None, 200)
    return _page(request, "mapping.html", "mapping", rows=rows, institution=institution,
                 notice=request.query_params.get("notice"))


@router.post("/console/mapping", name="console-mapping-post", include_in_schema=False)
async def mapping_post(request: Request) -> Response:
    """Map one local code: its element in the console's ConceptMap from that local system to the
    target system (made on first use), written through the repository as the logged-in person."""
    form = await request.form()
    authorize(request, Action("operation", None, None, "$console-mapping"))
    _check_csrf(request, form)
    values = {k: str(form.get(k) or "").strip()[:300] for k in
              ("system", "code", "display", "target_system", "target_code", "target_display")}
    if not all(values[k] for k in ("system", "code", "target_system", "target_code")):
        raise FhirError(400, "invalid", "system, code, target system and target code are needed")
    await run_in_threadpool(_map_code, request, values)
    notice = f"{values['code']} → {values['target_code']}: " + _words()["mapped"][_lang(request)]
    return RedirectResponse(f"/console/mapping?notice={quote(notice)}", 303)


def _map_code(request: Request, v: dict[str, str]) -> None:
    repo, ctx = repository(request), context_of(request, feed="console")
    rid = "console-" + hashlib.sha256(f"{v['system']}|{v['target_system']}".encode()).hexdigest()[:20]
    try:
        cm = orjson.loads(resource_bytes(repo.read(ctx, "ConceptMap", rid)))
    except FhirError as e:
        if e.status != 404:
            raise
        cm = {"resourceType": "ConceptMap", "id": rid, "status": "active",
              "title": f"{v['system']} → {v['target_system']}",
              "group": [{"source": v["system"], "target": v["target_system"], "element": []}]}
    group = cm["group"][0]
    element: dict[str, Any] = {"code": v["code"], "target": [
        {"code": v["target_code"], "equivalence": "equivalent",
         **({"display": v["target_display"]} if v["target_display"] else {})}]}
    if v["display"]:
        element["display"] = v["display"]
    group["element"] = [e for e in group.get("element", []) if e.get("code") != v["code"]] + [element]
    cm.pop("meta", None)
    op = parse_entry(0, {"resource": cm, "request": {"method": "PUT", "url": f"ConceptMap/{rid}"}}, "")
    for result in repo.execute([op], ctx, atomic=True):  # type: ignore[list-item]
        if isinstance(result, FhirError):
            raise result


# -- terminology ------------------------------------------------------------------------------------

@router.api_route("/console/terminology", methods=["GET", "HEAD"], name="console-terminology",
                  include_in_schema=False)
def terminology_page(request: Request) -> Response:
    """The code systems the terminology service holds (by URL or title), and one code looked up:
    its display, whether active, its parents and children."""
    authorize(request, Action("operation", None, None, "$console-terminology"))
    service = request.app.state.terminology
    text = request.query_params.get("q", "")[:100]
    system = request.query_params.get("system", "")[:300]
    code = request.query_params.get("code", "")[:100]
    systems = service.systems(text)
    found = None
    if system and code:
        ref = service.code_system(system)
        concept = service.concept(ref, code) if ref is not None else None
        found = {"system": system, "code": code, "known": concept is not None}
        if concept is not None:
            found.update(display=concept.display or "", active=concept.active,
                         parents=service.parents(ref, code), children=service.children(ref, code))
    return _page(request, "terminology.html", "terminology", systems=systems, q=text,
                 system=system, code=code, found=found)


# -- audit ------------------------------------------------------------------------------------------

@router.api_route("/console/audit", methods=["GET", "HEAD"], name="console-audit",
                  include_in_schema=False)
def audit_page(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-audit"))
    log = getattr(request.app.state.repo, "audit_records", None)
    found = emergency_accesses(log) if log is not None else []
    rows = [{"time": a["recorded"], "who": a["who"], "whose": ", ".join(a["what"][:3]),
             "what": "/".join(a["access"]), "why": a["purpose"], "outcome": a["outcome"]}
            for a in reversed(found[-200:])]
    return _page(request, "audit.html", "audit", emergency=rows)
