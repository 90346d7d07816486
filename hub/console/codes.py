"""Code mapping (unmapped local codes, mapped into a ConceptMap) and the terminology browser."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.api.bundles import parse_entry
from hub.api.caller import authorize, context_of, repository
from hub.console.common import check_csrf, page, router, say
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.events import resource_bytes

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
    institution = request.query_params.get("institution", "").strip()[:200]
    runner.sync(5.0)
    rows = model.worklist(institution or None, None, 200)
    return page(request, "mapping.html", "mapping", rows=rows, institution=institution,
                 notice=request.query_params.get("notice"))


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
    found = None
    if system and code:
        ref = service.code_system(system)
        concept = service.concept(ref, code) if ref is not None else None
        found = {"system": system, "code": code, "known": concept is not None}
        if concept is not None:
            found.update(display=concept.display or "", active=concept.active,
                         parents=service.parents(ref, code), children=service.children(ref, code))
    return page(request, "terminology.html", "terminology", systems=systems, q=text,
                 system=system, code=code, found=found)
