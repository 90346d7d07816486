"""``POST /fhir/Patient/$match``: the R4 operation, answered by the master patient index's matcher.

The body is a ``Parameters`` resource with ``resource`` (the Patient to match, required, once),
``onlyCertainMatches`` (boolean: only ``certain`` candidates) and ``count`` (the most results,
1..``HUB_MAX_COUNT``). The answer is a ``searchset`` Bundle, best first, each entry the stored
Patient with ``search.mode = match``, ``search.score`` (the posterior probability, 0..1) and the
``match-grade`` extension (``certain`` | ``probable`` | ``possible``). Candidates come from the
identity-candidates read model (``hub.mpi.candidates``), brought up to the log's end
as of the request (read-your-writes, bounded at 5 s). Bad input is a 400 OperationOutcome. The
operation only answers: it decides and records nothing. Unless ``HUB_MPI_AUTOMATCH=0``, the
server also runs the incremental matcher (``hub.mpi.incremental``), whose decisions go to the identity
service (``IdentityService.auto_decide_many``, a batch at a time) as they arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api import fhirxml
from hub.api.caller import context_of, repository
from hub.api.responses import base_url, check_content_type, check_format, fhir_response
from hub.core import resource as res
from hub.core.access import Action
from hub.core.config import Settings
from hub.core.errors import FhirError, bad_request
from hub.core.events import resource_bytes
from hub.core.store import ResourceStore
from hub.mpi import weights as W
from hub.mpi.candidates import IdentityCandidates
from hub.mpi.incremental import NAME as INCREMENTAL
from hub.mpi.incremental import IncrementalMatcher
from hub.mpi.matcher import Matcher
from hub.mpi.normalise import features
from hub.readmodels import open_as
from projections.runner import Runner

router = APIRouter()
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
RYW_TIMEOUT = 5.0
_PARAMS = {"resource", "onlyCertainMatches", "count"}


def attach(app: FastAPI, settings: Settings, store: ResourceStore,
           index: IdentityCandidates | None = None) -> None:
    """Follow the log with the candidate index (``index``, or opened from the registry) in the
    background."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if index is None:
        index = open_as(IdentityCandidates, "identity-candidates", settings.data_dir)
    runner = Runner(store, index)
    app.state.mpi_candidates = index
    app.state.mpi_candidates_runner = runner
    app.state.mpi_matcher = Matcher(index, W.load(settings.data_dir))
    if settings.follows_here:
        runner.start()
    identity = getattr(app.state, "identity", None)  # hub.api.identity's IdentityService
    app.state.mpi_incremental_runner = None
    if identity is not None:
        identity.roles = index.stored_roles  # the unique systems stored NamingSystems declare
    if identity is not None and settings.mpi_automatch and settings.follows_here:
        # New and updated Patients matched as they arrive; the matcher's decisions ("link":
        # linked automatically, "review": the review queue, "new") are recorded by the identity
        # service as identity events (IdentityService.auto_decide_many: a batch of the log's
        # Patients, one commit). With followers in another process, that process matches.
        follower = IncrementalMatcher.recording_with(index, app.state.mpi_matcher, identity)
        app.state.mpi_incremental_runner = Runner(store, follower)
        app.state.mpi_incremental_runner.start()
    if identity is not None and settings.mpi_automatch:
        # read-your-writes of the index's views for a Patient just written (its person)
        identity.matched_up_to = matched_up_to(index, app.state.mpi_incremental_runner)


def detach(app: FastAPI) -> None:
    runner = getattr(app.state, "mpi_candidates_runner", None)
    index = getattr(app.state, "mpi_candidates", None)
    follower = getattr(app.state, "mpi_incremental_runner", None)
    if follower is not None:
        follower.stop()
    if runner is not None:
        runner.stop()
    if index is not None:
        index.close()
    app.state.mpi_candidates_runner = app.state.mpi_candidates = app.state.mpi_matcher = None


def matched_up_to(index: IdentityCandidates, runner: Runner | None) -> Callable[[int], int]:
    """The log position automatic matching has decided up to; with the matcher in this process
    (``runner``), after it took a step towards the position wanted (its background loop may be
    waiting out its poll); in another process (``hub projections follow``), as it recorded."""
    def position(wanted: int) -> int:
        if runner is not None and runner.model.position() < wanted:
            runner.step()
        return index.tracking.max_tracking_id(INCREMENTAL) or 0
    return position


def sync(index: IdentityCandidates, runner: Runner, timeout: float = RYW_TIMEOUT) -> bool:
    if not runner.sync(timeout):
        return False
    if index.bulk:  # a rebuild was interrupted: candidates need the key index
        index.caught_up()
    return True


def parse(body: Any, max_count: int) -> tuple[dict, bool, int | None]:
    """(the Patient, onlyCertainMatches, count) of a $match Parameters body; 400 for mistakes."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("$match takes a Parameters resource")
    params = body.get("parameter")
    if not isinstance(params, list) or not params:
        raise bad_request("Parameters.parameter is missing", "Parameters.parameter")
    patient, only, count = None, False, None
    seen: set[str] = set()
    for i, p in enumerate(params):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise bad_request("each parameter needs a name", where)
        name = p["name"]
        if name not in _PARAMS:
            raise bad_request(f"unknown parameter {name[:40]!r} for $match; use resource, "
                              "onlyCertainMatches, count", where)
        if name in seen:
            raise bad_request(f"{name} is given more than once", where)
        seen.add(name)
        if name == "resource":
            r = p.get("resource")
            if not isinstance(r, dict) or r.get("resourceType") != "Patient":
                raise bad_request("resource must be a Patient", where + ".resource")
            patient = r
        elif name == "onlyCertainMatches":
            if not isinstance(p.get("valueBoolean"), bool):
                raise bad_request("onlyCertainMatches needs a valueBoolean", where)
            only = p["valueBoolean"]
        else:
            v = p.get("valueInteger", p.get("valuePositiveInt"))
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= max_count:
                raise bad_request(f"count must be an integer from 1 to {max_count}", where)
            count = v
    if patient is None:
        raise bad_request("the resource parameter (a Patient) is required", "Parameters.parameter")
    _check_patient(patient)
    return patient, only, count


def _check_patient(p: dict) -> None:
    """The parts the matcher reads must have their FHIR JSON types (the rest is not read)."""
    for key, kind in (("name", list), ("identifier", list), ("telecom", list), ("address", list),
                      ("gender", str), ("birthDate", str)):
        if key in p and not isinstance(p[key], kind):
            raise bad_request(f"Patient.{key} must be a{'n array' if kind is list else ' string'}",
                              f"Parameters.parameter.resource.{key}")
    if "gender" in p and p["gender"] not in ("male", "female", "other", "unknown"):
        raise bad_request("Patient.gender must be male, female, other or unknown",
                          "Parameters.parameter.resource.gender")
    if not any(p.get(k) for k in ("name", "identifier", "telecom", "birthDate")):
        raise bad_request("the Patient has nothing to match on (name, identifier, telecom, birthDate)",
                          "Parameters.parameter.resource")


@router.post("/fhir/Patient/$match", name="patient-match")
async def patient_match(request: Request) -> Response:
    check_format(request)
    check_content_type(request)
    settings: Settings = request.app.state.settings
    raw = await request.body()
    if not raw.strip():
        raise bad_request("The request body is empty")
    raw = fhirxml.json_body(request, raw)
    body = res.parse_json(raw, max_string=settings.max_string)
    patient, only_certain, count = parse(body, settings.max_count)
    # the Patient is a resource as any other: an impossible birth date is an error, never an
    # empty answer that says nobody matched
    try:
        res.validate("Parameters", raw, body)
    except FhirError as e:  # a parameter in error, as the others are: 400
        raise FhirError(400, "invalid", str(e), issues=e.issues) from None
    index: IdentityCandidates | None = getattr(request.app.state, "mpi_candidates", None)
    runner: Runner | None = getattr(request.app.state, "mpi_candidates_runner", None)
    matcher: Matcher | None = getattr(request.app.state, "mpi_matcher", None)
    if index is None or runner is None or matcher is None:
        raise FhirError(503, "transient", "The master patient index is not running")
    repo, ctx = repository(request), context_of(request)
    action = Action("operation", "Patient", None, "$match")

    def answer() -> list[tuple[Any, Any]]:
        repo.authorize(ctx, action)  # within the audit: a refused $match is recorded too
        sync(index, runner)
        # the query is no indexed Patient; read with the identifier systems the index knows
        f = features({**patient, "id": "$match"}, index.stored_roles())
        ranked = matcher.match(f)
        if only_certain:
            ranked = [c for c in ranked if c.grade == "certain"]
        out: list[tuple[Any, bytes]] = []
        for c in ranked:
            if count is not None and len(out) >= count:
                break
            rtype, _, rid = c.ref.partition("/")
            stored = repo.latest(ctx, rtype, rid)
            if stored is None or stored.topic.endswith("Deleted"):
                continue  # deleted since the index read
            out.append((c, resource_bytes(stored)))
        return out

    def audited() -> list[tuple[Any, Any]]:
        # the Patients handed out are an access to their data, audited like a search
        def handed(out: list[tuple[Any, Any]]) -> list[tuple[str, str, bytes]]:
            return [(*c.ref.split("/", 1), body_bytes) for c, body_bytes in out]
        return repo.audited(ctx, action, answer, handed)

    found = await run_in_threadpool(audited)
    base = base_url(request, settings.base_url)
    entries = [{
        "fullUrl": f"{base}/{c.ref}",
        "resource": orjson.Fragment(body_bytes),
        "search": {"extension": [{"url": MATCH_GRADE, "valueCode": c.grade}],
                   "mode": "match", "score": round(c.score, 6)},
    } for c, body_bytes in found]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                              "link": [{"relation": "self", "url": f"{base}/Patient/$match"}]}
    if entries:  # no empty array (json.html): no candidate, no entry
        bundle["entry"] = entries
    return fhir_response(bundle, request=request)
