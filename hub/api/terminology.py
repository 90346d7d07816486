"""The terminology operations over HTTP (R4 terminology module).

====================================================  ============================================
``GET|POST /fhir/CodeSystem/$lookup``                 ``…/CodeSystem/{id}/$lookup``
``GET|POST /fhir/CodeSystem/$validate-code``          ``…/CodeSystem/{id}/$validate-code``
``GET|POST /fhir/CodeSystem/$subsumes``               ``…/CodeSystem/{id}/$subsumes``
``GET|POST /fhir/ValueSet/$expand``                   ``…/ValueSet/{id}/$expand``
``GET|POST /fhir/ValueSet/$validate-code``            ``…/ValueSet/{id}/$validate-code``
``GET|POST /fhir/ConceptMap/$translate``              ``…/ConceptMap/{id}/$translate``
====================================================  ============================================

GET takes the parameters in the query string (a Coding as ``system|code``); POST takes a
``Parameters`` resource (inline ``valueSet`` / ``conceptMap`` too). Answers are ``Parameters`` or,
for ``$expand``, a ``ValueSet`` with its expansion (``terminology.operations``). Mistakes are 400
OperationOutcomes, unknown code systems, value sets, maps and instances 404.

The operations read the terminology projection (``projections.terminology``), which follows the
log in the background; before answering it is brought up to the log's end as of the request
(read-your-writes, bounded at 5 s like search). The router is included before the FHIR routes,
which would otherwise take ``/fhir/CodeSystem/$lookup`` for a read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api import fhirxml
from hub.api.caller import authorize
from hub.api.responses import ID_RE, check_content_type, check_format, fhir_response
from hub.core import resource as res
from hub.core.access import Action
from hub.core.config import Settings
from hub.core.errors import FhirError, bad_request, not_found
from hub.core.store import ResourceStore
from hub.readmodels import BY_NAME, open_as
from projections.runner import Runner
from projections.terminology import TerminologyProjection
from terminology.operations import OPERATIONS, SPECS
from terminology.params import from_parameters, from_query
from terminology.service import TerminologyError, TerminologyNotFound, TerminologyService

log = logging.getLogger("hub.api.terminology")
router = APIRouter()
_INLINE = {"lookup", "validate-code", "subsumes", "translate"}  # cheap: answered on the loop


def attach(app: FastAPI, settings: Settings, store: ResourceStore,
           model: TerminologyProjection | None = None) -> None:
    """Follow the log with the projection (``model``, or opened from the registry) in the
    background (``store``: the follower's); the service reads its file."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = BY_NAME["terminology"].path(settings.data_dir)
    if model is None:
        model = open_as(TerminologyProjection, "terminology", settings.data_dir)
    runner = Runner(store, model)
    app.state.terminology = TerminologyService(path)
    app.state.terminology_model = model
    app.state.terminology_runner = runner
    if settings.follows_here:
        runner.start()


def detach(app: FastAPI) -> None:
    runner = getattr(app.state, "terminology_runner", None)
    if runner is not None:
        runner.stop()
    for name in ("terminology", "terminology_model"):
        obj = getattr(app.state, name, None)
        if obj is not None:
            obj.close()
    app.state.terminology = app.state.terminology_model = app.state.terminology_runner = None


def _instance(svc: TerminologyService, rtype: str, rid: str):
    if not ID_RE.match(rid):
        raise bad_request(f"{rid[:80]!r} is not a valid FHIR id")
    find = {"CodeSystem": svc.code_system_by_id, "ValueSet": svc.value_set_by_id,
            "ConceptMap": svc.concept_map_by_id}[rtype]
    found = find(rid)
    if found is None:
        raise not_found(f"{rtype}/{rid} is not known to the terminology service (never stored, "
                        "or deleted)")
    return found


async def _operate(request: Request, rtype: str, op: str, rid: str | None = None) -> Response:
    check_format(request)
    authorize(request, Action("operation", rtype, rid, f"${op}"))
    svc: TerminologyService | None = getattr(request.app.state, "terminology", None)
    runner: Runner | None = getattr(request.app.state, "terminology_runner", None)
    if svc is None or runner is None:
        raise FhirError(503, "transient", "The terminology service is not running")
    spec_name, fn = cast(tuple[str, Callable[..., dict]], OPERATIONS[(rtype, op)])
    spec = SPECS[spec_name]
    query = list(request.query_params.multi_items())
    try:
        if request.method == "POST":
            check_content_type(request)
            raw = await request.body()
            if not raw.strip():
                raise bad_request(f"POST ${op} takes a Parameters resource; the body is empty")
            params = from_parameters(op, spec, res.parse_json(
                fhirxml.json_body(request, raw), max_string=request.app.state.settings.max_string),
                query)
        else:
            params = from_query(op, spec, query)
    except TerminologyError as e:
        raise FhirError(400, e.code, str(e)) from None
    model = runner.model

    fresh = model.position() >= runner.store.max_notification_id()

    def answer() -> dict:
        if not fresh:
            runner.sync()
        try:
            instance = _instance(svc, rtype, rid) if rid is not None else None
            return fn(svc, params, instance)
        except TerminologyNotFound as e:
            raise FhirError(404, "not-found", str(e)) from None
        except TerminologyError as e:
            raise FhirError(400, e.code, str(e)) from None

    inline = fresh and op in _INLINE and request.method == "GET"
    # the cheap lookups of an up-to-date model answer here (a thread hop costs more than they);
    # expansions, inline resources and catching up go to a worker thread
    out = answer() if inline else await run_in_threadpool(answer)
    return fhir_response(out, request=request)


def _route(rtype: str, op: str) -> None:
    path = f"/fhir/{rtype}/${op}"
    name = f"{rtype}-{op}"  # the OperationDefinition id (CapabilityStatement)

    async def type_level(request: Request) -> Response:
        return await _operate(request, rtype, op)

    async def instance_level(request: Request, rid: str) -> Response:
        return await _operate(request, rtype, op, rid)

    router.add_api_route(path, type_level, methods=["GET", "POST"], name=name)
    router.add_api_route(f"/fhir/{rtype}/{{rid}}/${op}", instance_level, methods=["GET", "POST"],
                         name=f"{name}-instance", include_in_schema=False)


for _rtype, _op in OPERATIONS:
    _route(_rtype, _op)

OPERATION_NAMES = {f"{rtype}-{op}": (rtype, op) for rtype, op in OPERATIONS}
