"""Code mapping (unmapped local codes, mapped into a ConceptMap) and the terminology browser."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.api.bundles import parse_entry
from hub.api.caller import actor_of, authorize, context_of, repository
from hub.console.common import check_csrf, notice_of, page, router, say, with_notice
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.events import resource_bytes
from hub.core.jobs import Job, Jobs
from terminology.normalise import Normaliser
from terminology.renormalise import mapped_codes, outcome, renormalise
from terminology.service import TerminologyError, TerminologyNotFound
from terminology.valueset import expand_stored

# -- code mapping -----------------------------------------------------------------------------

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
    q = request.query_params
    institution = q.get("institution", "").strip()[:200]
    runner.sync(5.0)
    rows = model.worklist(institution or None, None, 200)
    # looking a standard code up, and the one chosen (filled into every row's form)
    find_system = q.get("find_system", "http://loinc.org").strip()[:300]
    find = q.get("find", "").strip()[:100]
    found: list[Any] = []
    unloaded = False  # the system looked in is not loaded: said in the page, the page stands
    if find:
        service = request.app.state.terminology
        ref = service.code_system(find_system)
        unloaded = ref is None
        found = service.find(ref, find, 20) if ref is not None else []
    use = {k: q.get(f"use_{k}", "").strip()[:300] for k in ("system", "code", "display")}
    running = [j for j in Jobs(request.app.state.settings.data_dir).list(20)
               if j["kind"] == "renormalise"][:1]
    return page(request, "mapping.html", "mapping", rows=rows, institution=institution,
                find_system=find_system, find=find, found=found, unloaded=unloaded, use=use,
                last_run=running,
                notice=notice_of(request))


@router.post("/console/mapping", name="console-mapping-post", include_in_schema=False)
async def mapping_post(request: Request) -> Response:
    """Map one local code: its element in the console's ConceptMap from that local system to the
    target system (made on first use), written through the repository as the logged-in person."""
    form = await request.form()
    authorize(request, Action("operation", None, None, "$console-mapping"))
    check_csrf(request, form)
    values = {k: str(form.get(k) or "").strip()[:300] for k in
              ("system", "code", "display", "target_system", "target_code", "target_display")}
    if not all(values[k] for k in ("system", "code", "target_system", "target_code")):
        raise FhirError(400, "invalid", "system, code, target system and target code are needed")
    await run_in_threadpool(_map_code, request, values)
    notice = f"{values['code']} → {values['target_code']}: " + say(request, "mapped")
    return RedirectResponse(with_notice(request, "/console/mapping", notice), 303)


@router.post("/console/mapping/renormalise", name="console-mapping-renormalise",
             include_in_schema=False)
async def renormalise_post(request: Request) -> Response:
    """Start a renormalisation (the ConceptMaps applied again to the resources the worklist
    lists, new versions written) in the background; its progress is on the jobs page."""
    form = await request.form()
    authorize(request, Action("operation", None, None, "$console-mapping"))
    check_csrf(request, form)
    institution = str(form.get("institution") or "").strip()[:200] or None
    jobs = Jobs(request.app.state.settings.data_dir)
    if any(j["kind"] == "renormalise" and j["status"] == "running" for j in jobs.list(50)):
        notice = say(request, "already_running")
        return RedirectResponse(with_notice(request, "/console/jobs", notice), 303)
    job = jobs.start("renormalise", f"renormalisation{f' of {institution}' if institution else ''}"
                     f" by {actor_of(request).named}")
    app = request.app
    threading.Thread(target=_renormalise, args=(app, institution, job), daemon=True,
                     name=f"renormalise-{job.id}").start()
    return RedirectResponse(with_notice(request, "/console/jobs", say(request, "started")), 303)


def _renormalise(app: Any, institution: str | None, job: Job) -> None:
    """What ``hub terminology renormalise`` does, in the server, recorded as ``job``."""
    with job:
        model, runner, hub = app.state.unmapped, app.state.unmapped_runner, app.state.hub
        # the hub's own normaliser: the maps' current versions, code systems' OIDs and URLs alike
        normaliser = app.state.normaliser() or Normaliser.from_concept_maps([])
        runner.sync(60.0)
        job.set_total(len(model.streams(institution, mapped_codes(model, normaliser,
                                                                 institution))))
        counts = renormalise(hub, model, normaliser, institution, job.advance)
        job.finish(outcome(counts))


@router.api_route("/console/jobs", methods=["GET", "HEAD"], name="console-jobs",
                  include_in_schema=False)
def jobs_page(request: Request) -> Response:
    """Long work and its progress: index rebuilds, re-matching, renormalisation, bulk replays,
    whether a CLI command or the console started them (the page reloads while one runs)."""
    authorize(request, Action("operation", None, None, "$console-overview"))
    jobs = Jobs(request.app.state.settings.data_dir).list(50)
    return page(request, "jobs.html", "jobs", jobs=jobs,
                running=any(j["status"] == "running" for j in jobs),
                notice=notice_of(request))


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


# -- terminology ------------------------------------------------------------------------------

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
    value_sets = service.value_sets(text)
    vs_url = request.query_params.get("vs", "")[:300]
    expansion: dict[str, Any] | None = None
    if vs_url:
        try:
            entries = expand_stored(service, vs_url)
        except TerminologyNotFound:
            raise FhirError(404, "not-found", f"No value set {vs_url}") from None
        except TerminologyError as e:
            raise FhirError(400, "invalid", f"The value set {vs_url} cannot be expanded: {e}") \
                from None
        expansion = {"url": vs_url, "total": len(entries), "entries": entries[:500]}
    found = None
    if system and code:
        ref = service.code_system(system)
        concept = service.concept(ref, code) if ref is not None else None
        found = {"system": system, "code": code, "known": concept is not None}
        if concept is not None:
            found.update(display=concept.display or "", active=concept.active,
                         parents=service.parents(ref, concept.code),
                         children=service.children(ref, concept.code))
    return page(request, "terminology.html", "terminology", systems=systems, q=text,
                value_sets=value_sets, expansion=expansion,
                 system=system, code=code, found=found)
