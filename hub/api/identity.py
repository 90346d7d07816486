"""The master patient index over FHIR: the golden ``Person``, identity operations, the review queue,
identifier resolution.

Routes (included before the generic ``/fhir/{type}…`` routes, so these answer for Person):

==============================================  ===================================================
``GET /fhir/Person/{id}``                       the golden person (a projection; audited read)
``GET /fhir/Person?identifier=|link=|patient=|_id=``  search (``system|value`` or ``value``)
``GET /fhir/Person[?_lastUpdated=…]``          every person, paged (``_count``, ``next`` links,
                                                ``_total=accurate`` counts them): the steward's
                                                listing of the whole index
``PUT/POST/DELETE/PATCH /fhir/Person[/{id}]``   405: a Person is rebuilt from identity events only
                                                (a Bundle entry writing one too: hub.api.bundles)
``POST /fhir/Person/$link``                     Parameters ``patient``, ``person`` (absent or
                                                ``none``: a new person), ``reason``
``POST /fhir/Person/$unlink``                   ``patient`` (into a new person of its own), ``reason``
``POST /fhir/Person/$merge``                    ``source``, ``target`` persons, ``reason``
``POST /fhir/Person/$unmerge``                  ``source`` (the merged person), ``reason``
``POST /fhir/Person/$not-duplicate``            ``patient``, ``other``, ``reason``
``GET /fhir/$mpi-review``                       open reviews with score and evidence
                                                (``status=open|closed|all``, ``_count``)
``POST /fhir/$mpi-review/{id}/$accept``         optional ``candidate``, ``reason``
``POST /fhir/$mpi-review/{id}/$reject``         ``reason``
``GET /fhir/$resolve-identifier``               ``identifier=system|value`` or ``qr=<payload>``:
                                                the person(s) and all their Patients (audited)
==============================================  ===================================================

Who decided is the ``X-Hub-User`` header (a named user is required for every decision; a token
takes its place once the hub has authentication), or the ``by`` parameter without the header.
Parameter values may be ``valueReference``, ``valueString`` or ``valueId``. Errors are
OperationOutcomes: 422 a body that does not validate as a ``Parameters``, 400 one of another type
or a ``Parameters`` the operation cannot use (unknown, missing or repeated parameters, a value of
another type), 404 unknown ids, 409 a decision that contradicts another (a
not-duplicate pair, a merge that stands) or would give a person two valid numbers of a unique
identifier system or two sexes (the diagnostics name the Patients and the system, never the
values; to a caller who may not see one of them, only that a record it may not see
conflicts), 413 bodies over 64 KiB, 415 other content types.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.access.audit import AuditWriter
from hub.api import paging
from hub.api.caller import (
    actor_of,
    authenticated,
    context_of,
    purpose_of,
    repository,
    user_of,
)
from hub.api.everything import audit_event, audited
from hub.api.methods import refuses
from hub.api.opparams import MAX_OP_BODY, form_params, read_parameters
from hub.api.responses import (
    base_url,
    check_format,
    client_holds,
    fhir_response,
    view_etag,
    view_tag_matches,
)
from hub.core.access import Action
from hub.core.config import Settings
from hub.core.errors import (
    FhirError,
    Issue,
    bad_request,
    conflict,
    forbidden,
    not_found,
    operation_outcome,
)
from hub.core.fhirtime import http_date
from hub.core.ingest import Context
from hub.core.store import ResourceStore
from hub.mpi import listing
from hub.mpi.conflicts import PatientsConflict
from hub.mpi.everything import SharedRecord, carries, person_view
from hub.mpi.identifiers import is_filler
from hub.mpi.identity import IdentityService, patient_ref, person_id
from hub.mpi.qr import QrError
from hub.mpi.qr import parse as parse_qr
from hub.readmodels import open_as
from hub.repository import VISIBLE_TOTAL_UP_TO, Repository
from projections.person import PersonProjection
from projections.runner import Runner
from projections.timeline import TimelineProjection

router = APIRouter()
T = TypeVar("T")
MAX_SEARCH = 100


# -- wiring -----------------------------------------------------------------------------------------

def attach(app: FastAPI, settings: Settings, repo: Repository, audit: AuditWriter,
           follow_store: ResourceStore, person: PersonProjection | None = None,
           timeline: TimelineProjection | None = None) -> None:
    """Follow the log with the person and timeline projections (given, or opened from the
    registry); shared-record reads are audited through ``audit``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if person is None:
        person = open_as(PersonProjection, "person", settings.data_dir)
    if timeline is None:
        timeline = open_as(TimelineProjection, "timeline", settings.data_dir)
    person_runner = Runner(follow_store, person)
    timeline_runner = Runner(follow_store, timeline)
    # decisions are taken with the requests' store; the follower keeps the projection current
    identity = IdentityService(repo.store, person, Runner(repo.store, person))
    app.state.identity = identity
    app.state.shared_record = SharedRecord(repo.store, identity, app.state.search, timeline,
                                           Runner(repo.store, timeline))
    app.state.audit = audit
    app.state.mpi_runners = [person_runner, timeline_runner]
    app.state.mpi_models = [person, timeline]
    if settings.follows_here:
        person_runner.start()
        timeline_runner.start()


def detach(app: FastAPI) -> None:
    for r in getattr(app.state, "mpi_runners", None) or ():
        r.stop()
    for m in getattr(app.state, "mpi_models", None) or ():
        m.close()
    app.state.mpi_runners = app.state.mpi_models = None
    app.state.identity = app.state.shared_record = app.state.audit = None


def _identity(request: Request, action: Action | None) -> IdentityService:
    """The identity service, once the access policy allowed ``action`` (None: a read of the
    shared record, whose ``audited`` checks its action within the audit)."""
    if action is not None:
        repository(request).authorize(context_of(request), action)
    identity = getattr(request.app.state, "identity", None)
    if identity is None:
        raise FhirError(503, "transient", "The master patient index is not running")
    return identity


def _base(request: Request) -> str:
    return base_url(request, request.app.state.settings.base_url)


# -- Parameters -------------------------------------------------------------------------------------

async def _parameters(request: Request) -> dict[str, Any]:
    """name -> value of an identity operation's Parameters (references as their strings)."""
    return await read_parameters(
        request, ("valueReference", "valueString", "valueId", "valueCode", "valueBoolean"),
        "An identity operation's", MAX_OP_BODY)


def _known(params: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(params) - allowed - {"by"})
    if unknown:
        raise bad_request(f"Unknown parameter {unknown[0][:40]!r}; use "
                          + ", ".join(sorted(allowed)))
    missing = sorted(required - set(params))
    if missing:
        raise bad_request(f"Parameter {missing[0]!r} is required")


def _decider(request: Request, params: dict[str, Any]) -> str:
    if authenticated(request):  # the token's subject, never a header or a parameter; an
        # external provider's with that provider (a subject is one person only with its issuer)
        return actor_of(request).named
    u = user_of(request)
    if u != "anonymous":
        return u
    by = params.get("by")
    if isinstance(by, str) and by.strip():
        return by
    raise FhirError(400, "security", "A manual identity decision needs a named user "
                    "(X-Hub-User header)")


async def _person_response(request: Request, identity: IdentityService, pid: str,
                           status: int = 200) -> Response:
    """The Person a decision left, as a read of it shows it to this caller (only the Patients it
    may see; its id alone when it sees none of them), and audited as that read."""
    seen = seen_by(request)

    def answer(_purpose: str | None) -> dict:
        return person_view(identity, identity.store, pid, seen, bare=True)

    def scope(body: dict) -> tuple[str, list[str]]:
        return pid, _linked_patients(body)

    body = await audited(request, "person-read", answer, scope, (pid, []))
    return fhir_response(body, status, request=request, headers={"ETag": view_etag(body)})


def _linked_patients(person: dict) -> list[str]:
    """The ``Patient/id`` a Person view links to: what a read of it hands out, audited."""
    return [x["target"]["reference"] for x in person.get("link") or ()
            if x["target"]["reference"].startswith("Patient/")]


def seen_by(request: Request) -> Callable[[str, str, bytes], bool]:
    """Whether the caller may see a resource (a Person shows only the Patients it may)."""
    repo, ctx = repository(request), context_of(request)
    return lambda rtype, rid, body: bool(repo.shown(ctx, [(rtype, rid, body)]))


def _seen_patients(repo: Repository, ctx: Context, rids: list[str]) -> list[str]:
    """The Patient ids among ``rids`` that the caller may see (a Person found through a hidden
    one would tell what it holds)."""
    seen = repo.latest_many(ctx, "Patient", rids) if rids else {}
    return [r for r in rids if r in seen]


def hidden_patients(repo: Repository, ctx: Context, refs: list[str]) -> list[str]:
    """Of ``Patient/id`` references, those that exist but the caller may not see."""
    rids = [r.split("/", 1)[1] for r in refs if r.startswith("Patient/")]
    current = set(repo.store.current_ids("Patient", rids)) if rids else set()
    seen = set(_seen_patients(repo, ctx, sorted(current)))
    return [f"Patient/{r}" for r in rids if r in current and r not in seen]


def require_shown(request: Request, refs: list[str]) -> None:
    """A review is decided only by a steward who may see its Patients, as only such a steward
    is shown it in the queue (a consent hiding one hides the review). ``$link`` and ``$unlink``
    name their Patient themselves and answer with what the decider may see."""
    if hidden_patients(repository(request), context_of(request), refs):
        raise forbidden("The decision concerns a Patient not shown to this caller")


def told_as_seen(repo: Repository, ctx: Context, decide: Callable[[], T]) -> T:
    """A steward's decision; refused because of Patients it names (a not-duplicate mark, two
    sexes, two numbers of a unique system: ``conflicts.PatientsConflict``), it says which only
    to a caller who may see them all; to another, that a record it may not see conflicts (the
    refusal stands: never two people in one person)."""
    try:
        return decide()
    except PatientsConflict as e:
        if hidden_patients(repo, ctx, list(e.patients)):
            raise conflict(e.veiled) from None
        raise


def _linked_person(identity: IdentityService, patient: str) -> str:
    with identity.person.read() as c:
        pid = identity.person.person_of(c, patient)
    if pid is None:
        raise not_found(f"{patient} is not linked to any person")
    return pid


def _event_person(events, key: str) -> str | None:
    for ev in reversed(events):
        if key in ev.data:
            return ev.data[key]
    return None


# -- Person: read, search, not writable ---------------------------------------------------------

@router.api_route("/fhir/Person", methods=["POST", "PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
@router.api_route("/fhir/Person/{rid}", methods=["PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
@refuses
async def person_not_writable(request: Request, rid: str | None = None) -> Response:
    raise FhirError(405, "not-supported", "Person is the master patient index's view, rebuilt "
                    "from identity events; use $link, $unlink, $merge, $unmerge or "
                    "$not-duplicate")


@router.get("/fhir/Person", name="person-search")
async def person_search(request: Request) -> Response:
    """Search by ``_id``, ``identifier``, ``link``, ``patient``, ``_lastUpdated``; without any of
    them, the steward's listing of the whole index. Either way paged in person id order (keyset:
    ``_cursor`` is the last id of the page before), ``_count`` per page."""
    return await _person_search(request, list(request.query_params.multi_items()))


@router.post("/fhir/Person/_search", name="person-search-post")
async def person_search_post(request: Request) -> Response:
    """The same search with its parameters in a form body too (R4: search by GET and POST)."""
    return await _person_search(request, await form_params(request))


async def _person_search(request: Request, given: list[tuple[str, str]]) -> Response:
    check_format(request)
    answer, scope = _person_searcher(request, given)
    # a search or listing answers with persons' demographics and links: a read of their
    # records, audited like any other, a refused one too (access control attaches here)
    out = await audited(request, "person-search", answer, scope, (None, []), PERSON_SEARCH)
    return fhir_response(out, request=request)


def person_search_entry(request: Request, query: str, check: bool) -> tuple[int, dict | None]:
    """A ``GET Person?…`` entry of a batch or transaction: the search ``GET /fhir/Person?…``
    answers, audited alike (``check``: only whether it would fail, as ``person_entry``)."""
    answer, scope = _person_searcher(request, parse_qsl(query, keep_blank_values=True))
    writer, purpose = request.app.state.audit, purpose_of(request)
    try:
        repository(request).authorize(context_of(request), PERSON_SEARCH)
        out = answer(purpose)
    except FhirError as e:
        if not check:
            writer.write(audit_event(request, "person-search", None, [], "4",
                                     e.issues[0].diagnostics if e.issues else None, purpose))
        raise
    if check:
        return 200, None
    persons, patients = scope(out)
    writer.write(audit_event(request, "person-search", persons, patients, "0", purpose=purpose))
    return 200, out


def _person_searcher(request: Request, given: list[tuple[str, str]]) -> tuple[
        Callable[[Any], dict], Callable[[dict], tuple[list[str], list[str]]]]:
    """The search's parameters checked: what answers it, and what of it the audit names (its
    access, ``PERSON_SEARCH``, is checked by whoever runs it, within its audit)."""
    identity = _identity(request, None)
    allowed = {"_id", "identifier", "link", "patient", "_lastUpdated", "_count", "_cursor",
               "_total", "_format", "_pretty"}
    crit: dict[str, str] = {}
    updated_values: list[str] = []
    for k, v in given:
        if k not in allowed:
            raise bad_request(f"Unknown parameter {k[:40]!r} for Person; use "
                              + ", ".join(sorted(allowed)))
        if len(v) > 1024:
            raise bad_request(f"{k} is too long")
        if k == "_lastUpdated":  # repeated: a range (ge… and lt…)
            updated_values.append(v)
            continue
        if k in crit:
            raise bad_request(f"{k} is given more than once")
        crit[k] = v
    count = crit.get("_count", "50")
    if not (count.isascii() and count.isdigit()) or not 0 <= int(count) <= 1000:
        raise bad_request("_count must be a whole number from 0 to 1000")
    after = crit.get("_cursor", "")
    if after and not _PERSON_CURSOR.match(after):
        raise bad_request("_cursor is not one this server gave")
    try:
        updated = listing.updated_bounds(updated_values)
    except ValueError as e:
        raise bad_request(f"_lastUpdated: {e}") from None
    if crit.get("_total", "none") not in ("none", "estimate", "accurate"):
        raise bad_request("_total must be none, estimate or accurate")
    base = _base(request)
    limit = int(count)

    def answer(_purpose) -> dict:
        identity.sync()
        P = identity.person
        sets = _criteria_sets(identity, crit, base, repository(request), context_of(request))
        matched: list[str] | None = None
        if sets is None:  # the whole index, page by page
            # persons gone with their Patients (every one deleted) are left out, as from a count
            page = listing.live_person_ids(P, identity.store, after, limit + 1, updated)
            # counting a whole region costs a scan: only when asked for
            total = listing.count_persons(P, updated, identity.store) \
                if crit.get("_total") == "accurate" else None
        else:
            found = set.intersection(*sets)
            found -= listing.gone(P, identity.store, sorted(found))
            if updated:  # as a read says: its identity events' time or its Patients' newer one
                when = listing.updated_of(P, identity.store, sorted(found))
                found = {p for p in found if listing.within(when.get(p), updated)}
            matched = sorted(found)
            total = len(matched)
            page = [p for p in matched if p > after][:limit + 1]
        more, page = len(page) > limit, page[:limit]
        seen = seen_by(request)
        entries = []
        for pid in page:
            view = _view_seen(identity, pid, seen)
            if view is not None:  # else it links to no Patient this caller sees
                entries.append({"fullUrl": f"{base}/Person/{pid}", "resource": view,
                                "search": {"mode": "match"}})
        if total is not None and repository(request).may_hide(context_of(request), "Person"):
            # a count of all would tell how many are hidden: those this caller sees are counted
            # one by one, up to VISIBLE_TOTAL_UP_TO (as a type search counts), else no total
            total = sum(_view_seen(identity, pid, seen) is not None for pid in (
                matched if matched is not None else
                listing.live_person_ids(P, identity.store, "", total, updated))) \
                if total <= VISIBLE_TOTAL_UP_TO else None
        params = [(k, v) for k, v in given if k != "_cursor"]
        out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                               "link": [{"relation": "self", "url": paging.link(
                                   f"{base}/Person", [(k, v) for k, v in given])}]}
        if total is not None:
            out["total"] = total
        if more and page:
            out["link"].append({"relation": "next", "url": paging.link(
                f"{base}/Person", params, _cursor=page[-1])})
        if entries:
            out["entry"] = entries
        return out

    def scope(out: dict) -> tuple[list[str], list[str]]:
        persons = [e["resource"]["id"] for e in out.get("entry", [])]
        patients = [p for e in out.get("entry", []) for p in _linked_patients(e["resource"])]
        return persons, patients

    return answer, scope


PERSON_SEARCH = Action("search-type", "Person")
_PERSON_CURSOR = re.compile(r"^[A-Za-z0-9.\-]{1,64}$")


def _view_seen(identity: Any, pid: str, seen: Any) -> dict | None:
    """The Person as this caller sees it, or None when it links to no Patient it may read (or
    every Patient of it was deleted since it was listed: a read of it answers 410)."""
    try:
        return person_view(identity, identity.store, pid, seen)
    except FhirError as e:
        if e.status not in (403, 410):
            raise
        return None


def _criteria_sets(identity: IdentityService, crit: dict[str, str], base: str,
                   repo: Repository, ctx: Context) -> list[set[str]] | None:
    """The persons each search criterion allows, or None when none is given (a listing)."""
    sets: list[set[str]] = []
    P = identity.person
    # the Patients each criterion names, as the caller may see them (a Person found through a
    # hidden one would tell what it holds)
    named: dict[str, list[str]] = {}
    for key in ("link", "patient"):
        if key in crit:
            refs = [patient_ref(x.strip().removeprefix(base + "/"), key)
                    for x in crit[key].split(",")]
            seen = set(_seen_patients(repo, ctx, [r.split("/", 1)[1] for r in refs]))
            named[key] = [r for r in refs if r.split("/", 1)[1] in seen]
    if "identifier" in crit:
        named["identifier"] = []
        for one in crit["identifier"].split(","):
            system, value = _any_token(one)
            if value is not None and is_filler(value):
                continue  # 无, -, 000000 identify nobody: never everyone registered with them
            # a person is found by exactly the identifiers it shows (not a filler, nor a
            # parent's resident ID number on a newborn's record, nor one failing its check)
            named["identifier"] += [f"Patient/{rid}" for rid, how in
                                    _carriers(repo, ctx, system, value).items() if how == "own"]
    identity.await_decided([r for refs in named.values() for r in refs])
    with P.read() as c:
        if "_id" in crit:
            ids = {x.strip() for x in crit["_id"].split(",")}
            sets.append({x for x in ids if P.person_row(c, x)})
        for key in ("link", "patient", "identifier"):
            if key in named:
                sets.append({p for p in (P.person_of(c, r) for r in named[key]) if p})
    return sets or None


def _token(one: str) -> tuple[str | None, str]:
    """An identifier token with its value: ``system|value``, ``|value`` (system "": an
    identifier without one) or ``value`` (system None: in any system)."""
    system, value = _any_token(one)
    if value is None:
        raise bad_request("identifier needs a value (system|value or value)")
    return system, value


def _any_token(one: str) -> tuple[str | None, str | None]:
    """As ``_token``, and ``system|`` too (value None: any identifier of that system)."""
    one = one.strip()
    system: str | None
    if "|" in one:
        system, value = one.split("|", 1)
    else:
        system, value = None, one
    if not value and not system:
        raise bad_request("identifier needs a value or a system (system|value, |value, "
                          "system| or value)")
    return system, value or None


@router.get("/fhir/Person/{rid}", name="person-read")
async def person_read(request: Request, rid: str) -> Response:
    check_format(request)
    identity = _identity(request, None)
    if rid in ("_history", "_search"):
        raise FhirError(405, "not-supported", f"Person/{rid} is not supported: a Person is a "
                        "projection without history; search with GET /fhir/Person?…")
    pid = person_id(rid, "id")

    def answer(_purpose):
        identity.sync()
        return person_view(identity, identity.store, pid, seen_by(request))

    def scope(body):
        return pid, _linked_patients(body)

    body = await audited(request, "person-read", answer, scope, (pid, []),
                         Action("read", "Person", rid))
    meta = body.get("meta") or {}
    tag = view_etag(body)
    headers = {"ETag": tag}
    if meta.get("lastUpdated"):
        headers["Last-Modified"] = http_date(meta["lastUpdated"])
    # a conditional read as of any other type (the capability statement claims it for all): a
    # Person is unchanged only while its identity events and its Patients are
    if_none_match = request.headers.get("if-none-match")
    if (if_none_match and view_tag_matches(if_none_match, tag)) or (
            not if_none_match and meta.get("lastUpdated")
            and client_holds(None, request.headers.get("if-modified-since"), 0,
                             meta["lastUpdated"])):
        return Response(status_code=304, headers=headers)
    return fhir_response(body, request=request, headers=headers)


def person_entry(request: Request, rid: str, check: bool) -> tuple[int, dict | None]:
    """A ``GET Person/{id}`` entry of a batch or transaction: the golden Person, as ``GET
    /fhir/Person/{id}`` answers it and audited alike (``check``: only whether it would fail,
    neither answered nor audited, as the Bundle's other GET entries are checked)."""
    identity = _identity(request, None)
    pid = person_id(rid, "id")
    identity.sync()
    writer, purpose = request.app.state.audit, purpose_of(request)
    try:
        repository(request).authorize(context_of(request), Action("read", "Person", rid))
        body = person_view(identity, identity.store, pid, seen_by(request))
    except FhirError as e:
        if not check:
            writer.write(audit_event(request, "person-read", pid, [], "4",
                                     e.issues[0].diagnostics if e.issues else None, purpose))
        raise
    if check:
        return 200, None
    writer.write(audit_event(request, "person-read", pid, _linked_patients(body), "0",
                             purpose=purpose))
    return 200, body


# -- identity operations ------------------------------------------------------------------------

@router.post("/fhir/Person/$link", name="person-link")
async def op_link(request: Request) -> Response:
    # the log as this decision arrives: a steward moving the Patient meanwhile makes it a 409
    service = getattr(request.app.state, "identity", None)
    seen = await run_in_threadpool(service.decision_point) if service is not None else None
    params = await _parameters(request)
    _known(params, {"patient", "person", "reason"}, {"patient"})
    identity = _identity(request, Action("operation", "Person", None, "$link"))
    user = _decider(request, params)
    person = params.get("person")
    if isinstance(person, str) and person.strip().lower() in ("none", "new", ""):
        person = None
    p = patient_ref(params["patient"])

    repo, ctx = repository(request), context_of(request)

    def run() -> str:
        events = told_as_seen(repo, ctx, lambda: identity.link(
            p, person, user, params.get("reason"), seen))
        return _event_person(events, "person") or _linked_person(identity, p)

    pid = await run_in_threadpool(run)
    return await _person_response(request, identity, _survivor(identity, pid))


def _survivor(identity: IdentityService, pid: str) -> str:
    with identity.person.read() as c:
        return identity.person.survivor(c, pid)


@router.post("/fhir/Person/$unlink", name="person-unlink")
async def op_unlink(request: Request) -> Response:
    service = getattr(request.app.state, "identity", None)  # as $link: the log as it arrives
    seen = await run_in_threadpool(service.decision_point) if service is not None else None
    params = await _parameters(request)
    _known(params, {"patient", "reason"}, {"patient"})
    identity = _identity(request, Action("operation", "Person", None, "$unlink"))
    user = _decider(request, params)
    p = patient_ref(params["patient"])

    def run() -> str:
        events = identity.unlink(p, user, params.get("reason"), seen)
        return _event_person(events, "new_person") or _linked_person(identity, p)

    return await _person_response(request, identity, await run_in_threadpool(run))


@router.post("/fhir/Person/$merge", name="person-merge")
async def op_merge(request: Request) -> Response:
    params = await _parameters(request)
    _known(params, {"source", "target", "reason"}, {"source", "target"})
    identity = _identity(request, Action("operation", "Person", None, "$merge"))
    user = _decider(request, params)

    repo, ctx = repository(request), context_of(request)

    def run() -> str:
        events = told_as_seen(repo, ctx, lambda: identity.merge(
            params["source"], params["target"], user, params.get("reason")))
        return events[0].data["target"]

    return await _person_response(request, identity, await run_in_threadpool(run))


@router.post("/fhir/Person/$unmerge", name="person-unmerge")
async def op_unmerge(request: Request) -> Response:
    params = await _parameters(request)
    _known(params, {"source", "reason"}, {"source"})
    identity = _identity(request, Action("operation", "Person", None, "$unmerge"))
    user = _decider(request, params)
    source = person_id(params["source"], "source")

    def run() -> str:
        identity.unmerge(source, user, params.get("reason"))
        return source

    return await _person_response(request, identity, await run_in_threadpool(run))


@router.post("/fhir/Person/$not-duplicate", name="person-not-duplicate")
async def op_not_duplicate(request: Request) -> Response:
    params = await _parameters(request)
    _known(params, {"patient", "other", "reason"}, {"patient", "other"})
    identity = _identity(request, Action("operation", "Person", None, "$not-duplicate"))
    user = _decider(request, params)
    a, b = patient_ref(params["patient"]), patient_ref(params["other"], "other")
    events = await run_in_threadpool(identity.not_duplicate, a, b, user, params.get("reason"))
    text = f"{a} and {b} are marked as not the same person" if events else \
        f"{a} and {b} were already marked as not the same person"
    return fhir_response(operation_outcome([Issue("informational", text, "information")]),
                         request=request)


# -- the review queue ---------------------------------------------------------------------------

def _review_json(r: dict, base: str) -> dict:
    return {"id": r["id"], "status": r["status"], "patient": r["patient"],
            "candidates": r["candidates"], "score": r["score"], "evidence": r["evidence"],
            "ruleset": r["ruleset"], "opened": r["opened"], "closed": r["closed"],
            "outcome": r["outcome"], "decidedBy": r["decided_by"],
            "accept": f"{base}/$mpi-review/{r['id']}/$accept",
            "reject": f"{base}/$mpi-review/{r['id']}/$reject"}


@router.get("/fhir/$mpi-review", name="mpi-review")
async def review_list(request: Request) -> Response:
    """The queue as a plain JSON table (like $quality-report): a steward's worklist."""
    identity = _identity(request, Action("operation", None, None, "$mpi-review"))
    allowed = {"status", "_count", "_cursor", "_pretty", "_format"}
    params = {}
    for k, v in request.query_params.multi_items():
        if k not in allowed:
            raise bad_request(f"Unknown parameter {k[:40]!r}; use " + ", ".join(sorted(allowed)))
        params[k] = v
    status = params.get("status", "open")
    if status not in ("open", "closed", "all"):
        raise bad_request("status must be open, closed or all")
    count = params.get("_count", "100")
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= 1000:
        raise bad_request("_count must be a whole number from 1 to 1000")
    after = params.get("_cursor", "0")
    if not (after.isascii() and after.isdigit()) or len(after) > 18:
        raise bad_request("_cursor is not one this server gave")
    base = _base(request)
    repo, ctx = repository(request), context_of(request)

    def answer() -> dict:
        identity.sync()
        rows = identity.person.reviews(None if status == "all" else status, int(count) + 1,
                                       int(after))
        more = len(rows) > int(count)
        rows = rows[:int(count)]
        # a review about a Patient hidden from this caller (a consent) is not shown: it told
        # that the Patient exists and whom it resembles
        hidden = set(hidden_patients(repo, ctx, sorted({p for r in rows
                                                 for p in [r["patient"], *r["candidates"]]})))
        shown = [r for r in rows if not hidden & {r["patient"], *r["candidates"]}]
        out: dict[str, Any] = {"reviews": [_review_json(r, base) for r in shown]}
        if more:
            out["next"] = f"{base}/$mpi-review?status={status}&_count={count}" \
                          f"&_cursor={rows[-1]['seq']}"
        return out

    out = await run_in_threadpool(answer)
    return Response(orjson.dumps(out, option=orjson.OPT_INDENT_2
                                 if params.get("_pretty") == "true" else 0),
                    media_type="application/json")


@router.post("/fhir/$mpi-review/{rid}/$accept", name="mpi-review-accept")
async def review_accept(request: Request, rid: str) -> Response:
    params = await _parameters(request) if await request.body() else {}
    _known(params, {"candidate", "reason"}, set())
    identity = _identity(request, Action("operation", None, rid, "$mpi-review-accept"))
    user = _decider(request, params)
    _review_id(rid)

    repo, ctx = repository(request), context_of(request)

    def run() -> str:
        require_shown(request, review_patients(identity, rid))
        events = told_as_seen(repo, ctx, lambda: identity.accept_review(
            rid, user, params.get("candidate"), params.get("reason")))
        person = _event_person([e for e in events if e.event == "Linked"], "person")
        if person is None:  # an accepted review links: the service says to which person
            raise FhirError(500, "exception", "The accepted review linked no person")
        return person

    return await _person_response(request, identity, _survivor(identity, await run_in_threadpool(run)))


@router.post("/fhir/$mpi-review/{rid}/$reject", name="mpi-review-reject")
async def review_reject(request: Request, rid: str) -> Response:
    params = await _parameters(request) if await request.body() else {}
    _known(params, {"reason"}, set())
    identity = _identity(request, Action("operation", None, rid, "$mpi-review-reject"))
    user = _decider(request, params)
    _review_id(rid)

    def run() -> None:
        require_shown(request, review_patients(identity, rid))
        identity.reject_review(rid, user, params.get("reason"))
    await run_in_threadpool(run)
    return fhir_response(operation_outcome([Issue(
        "informational", f"Review {rid} rejected: the pair(s) are marked as not the same person",
        "information")]), request=request)


def review_patients(identity: IdentityService, rid: str) -> list[str]:
    identity.sync()
    with identity.person.read() as c:
        r = identity.person.review(c, rid)
    return [r["patient"], *r["candidates"]] if r else []


def _review_id(rid: str) -> None:
    if not (1 <= len(rid) <= 64 and rid.isalnum()):
        raise not_found(f"Review {rid[:40]!r} is not known")


# -- identifier resolution ----------------------------------------------------------------------

@router.get("/fhir/$resolve-identifier", name="resolve-identifier")
async def resolve_identifier(request: Request) -> Response:
    check_format(request)
    identity = _identity(request, None)
    params: dict[str, str] = {}
    for k, v in request.query_params.multi_items():
        if k not in ("identifier", "qr", "_format", "_pretty"):
            raise bad_request(f"Unknown parameter {k[:40]!r}; use identifier or qr")
        if k in params or len(v) > 1024:
            raise bad_request(f"{k} is given more than once or is too long")
        params[k] = v
    if ("identifier" in params) == ("qr" in params):
        raise bad_request("Give exactly one of identifier=system|value and qr=<payload>")
    system: str | None
    if "qr" in params:
        try:
            system, value = parse_qr(params["qr"]).identifier
        except QrError as e:
            raise bad_request(f"qr: {e}") from None
    else:
        system, value = _token(params["identifier"])
    base = _base(request)
    purpose_of(request)  # a malformed purpose is refused before anything is read
    repo, ctx = repository(request), context_of(request)

    filler = is_filler(value)
    unresolved: list[str] = []  # persons found that a steward did not mark apart from another
    # records carrying the number but not as their person's (a parent's on a newborn's record,
    # or one failing its check): how many persons, and whether it fails its check everywhere
    elsewhere: dict[str, Any] = {"persons": 0, "invalid": False}

    def answer(_purpose) -> tuple[list[str], list[str], dict]:
        identity.sync()
        # a filler (无, -, 000000) identifies nobody: it would list everyone registered with it
        found = {} if filler else _carriers(repo, ctx, system, value)
        rids = [r for r, how in found.items() if how == "own"]  # found by what a person shows
        identity.await_decided([f"Patient/{r}" for r in found])
        P = identity.person
        persons: list[str] = []
        patients: list[str] = []
        of_person: dict[str, list[str]] = {}
        with P.read() as c:
            others = {P.person_of(c, f"Patient/{r}") or f"Patient/{r}"
                      for r, how in found.items() if how != "own"}
            for rid in rids:
                ref = f"Patient/{rid}"
                person = P.person_of(c, ref)
                if person is None:
                    if ref not in patients:
                        patients.append(ref)
                    continue
                if person not in persons:
                    persons.append(person)
                    of_person[person] = P.patients(c, person)
                    patients += [x for x in of_person[person] if x not in patients]
            # "different people" only when a steward said so of every pair found: one pair
            # marked apart leaves the others a possible merge
            unresolved.extend(dict.fromkeys(
                p for i, x in enumerate(persons) for y in persons[i + 1:]
                if not P.blocked_across(c, of_person[x], of_person[y]) for p in (x, y)))
        elsewhere["persons"] = len(others - set(persons))
        elsewhere["invalid"] = not rids and bool(found) and \
            all(how == "invalid" for how in found.values())
        seen = seen_by(request)
        entries = []
        for pid in persons:
            # found through a Patient the caller sees: shown with those it sees
            entries.append({"fullUrl": f"{base}/Person/{pid}",
                            "resource": person_view(identity, identity.store, pid, seen),
                            "search": {"mode": "match"}})
        bodies = repo.latest_many(ctx, "Patient", [p.split("/", 1)[1] for p in patients])
        patients = [p for p in patients if p.split("/", 1)[1] in bodies]
        for p in patients:
            stored = bodies[p.split("/", 1)[1]]
            entries.append({"fullUrl": f"{base}/{p}",
                            "resource": orjson.Fragment(stored[1].partition(b"\n")[2]),
                            "search": {"mode": "include"}})
        out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                               "total": len(persons) or len(patients),
                               "link": [{"relation": "self", "url": f"{base}/$resolve-identifier"}]}
        if entries:
            out["entry"] = entries
        return persons, patients, out

    persons, patients, out = await audited(
        request, "resolve-identifier", answer,
        lambda r: (r[0], r[1]), (None, []),
        Action("operation", "Patient", None, "$resolve-identifier"))
    if filler:
        out.setdefault("entry", []).append({"resource": operation_outcome([Issue(
            "not-found", f"{value[:40]!r} is a filler, not an identifier: it identifies nobody",
            "warning")]), "search": {"mode": "outcome"}})
    elif elsewhere["invalid"]:
        out.setdefault("entry", []).append({"resource": operation_outcome([Issue(
            "not-found", f"{value[:40]!r} fails the resident ID number's check: it identifies "
            "nobody", "warning")]), "search": {"mode": "outcome"}})
    elif not persons and not patients and elsewhere["persons"]:
        out.setdefault("entry", []).append({"resource": operation_outcome([Issue(
            "not-found", f"The identifier is carried by the records of {elsewhere['persons']} "
            "person(s) as someone else's number (a parent's on a newborn's record): no person "
            "shows it", "warning")]), "search": {"mode": "outcome"}})
    elif len(persons) > 1 and not unresolved:
        # a steward said these are different people: the number is shared (a parent's, a card)
        out.setdefault("entry", []).append({"resource": operation_outcome([Issue(
            "multiple-matches", f"The identifier is on the records of {len(persons)} persons "
            "a steward marked as different people", "information")]),
            "search": {"mode": "outcome"}})
    elif len(persons) > 1:  # one identifier, several persons: say so (and audit them all above)
        named = ", ".join(f"Person/{p}" for p in sorted(set(unresolved)))
        out.setdefault("entry", []).append({"resource": operation_outcome([Issue(
            "multiple-matches", f"The identifier belongs to {len(persons)} persons; they may "
            f"need a merge ({named} not marked as different people)", "warning")]),
            "search": {"mode": "outcome"}})
    if (persons or patients) and elsewhere["persons"]:
        out.setdefault("entry", []).append({"resource": operation_outcome([Issue(
            "informational", "The identifier is also carried by the records of "
            f"{elsewhere['persons']} other person(s) as someone else's number (a parent's on a "
            "newborn's record): not theirs, no merge", "information")]),
            "search": {"mode": "outcome"}})
    return fhir_response(out, request=request)


def _carriers(repo: Repository, ctx: Context, system: str | None,
              value: str | None) -> dict[str, str]:
    """The Patients the caller may see that carry ``system|value`` (ids, in order), each with
    how (``hub.mpi.everything.carries``: ``own`` when its person shows it)."""
    rids = repo.find_by_identifier(ctx, "Patient", system, value)
    bodies = repo.latest_many(ctx, "Patient", rids) if rids else {}
    out: dict[str, str] = {}
    for rid in rids:
        if rid in bodies:
            how = carries(orjson.loads(bodies[rid][1].partition(b"\n")[2]), system, value)
            if how is not None:
                out[rid] = how
    return out


__all__ = ["router", "attach", "detach"]
