"""The FHIR REST API: routes for every interaction, errors as OperationOutcome, body size limit.

Each route's ``name`` is the FHIR interaction code it implements; ``/metadata`` is generated from
those names, so the CapabilityStatement lists exactly what is routed.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from hub import console
from hub.access.audit import AccessAudit, AuditWriter
from hub.access.auditlog import open_audit_log
from hub.access.consent import ConsentIndex
from hub.access.policy import AccessPolicy
from hub.access.terminology import TerminologyGuard
from hub.api import (
    auth,
    binary,
    bulkexport,
    bundles,
    capability,
    documents,
    fhirxml,
    health,
    intake,
    operations,
    patching,
    quality,
    termcaps,
    terminology,
    unmapped,
    v3,
)
from hub.api import everything as mpi_everything
from hub.api import identity as mpi_identity
from hub.api import match as mpi_match  # Patient/$match
from hub.api import methods as allow  # the Allow of a 405
from hub.api.caller import LoginRequired, Throttled, authenticate, context_of, repository
from hub.api.history import check_history, history_bundle
from hub.api.limits import BodyLimit
from hub.api.opparams import form_params
from hub.api.profiles import ProfileRegistry, enforce, validate_instance, validate_type
from hub.api.responses import (
    ID_RE,
    base_url,
    check_content_type,
    check_format,
    client_holds,
    create_only,
    fhir_response,
    outcome_response,
    parse_if_match,
    prefer_return,
    prefer_strict,
    version_headers,
)
from hub.api.search import (
    SearchService,
    check_search,
    plan_search,
    read_subset,
    search_bundle,
    subset,
)
from hub.api.systemsearch import check_system_search, system_search
from hub.api.traffic import RateLimiter, networks
from hub.auth.verifier import ExternalIssuer, Verifier
from hub.core import invariants
from hub.core import resource as res
from hub.core.access import OPEN, Action, Policy
from hub.core.conditional import SearchResolver, parse_if_none_exist, parse_query
from hub.core.config import Settings
from hub.core.errors import FhirError, Issue, bad_request, not_found, relocate
from hub.core.events import resource_bytes
from hub.core.gctune import tune_for_serving
from hub.core.ingest import Context, Hub, Op, Result
from hub.core.parentwatch import watch_parent
from hub.core.store import STORE_FULL, storage_failure, too_complex, too_large
from hub.documents import DocumentService
from hub.mpi.candidates import IdentityCandidates
from hub.quarantine import Quarantine
from hub.readmodels import open_models, typed
from hub.repository import APPEND_ONLY, Repository
from hub.v3routing import Routes
from projections.errors import NotThisLog
from projections.intake import IntakeCounts
from projections.person import PersonProjection
from projections.quality import QualityProjection
from projections.runner import Runner
from projections.search.backends import open_backend, open_es_index
from projections.search.sqlite_index import SQLiteSearchIndex
from projections.terminology import TerminologyProjection
from projections.timeline import TimelineProjection
from projections.unmapped import UnmappedProjection
from terminology.normalise import StoredMaps

log = logging.getLogger("hub.api")


def create_worker_app() -> FastAPI:
    """The application of one of `hub serve --workers N`'s processes: its settings from the
    environment the server handed on; it ends with the server, even one killed outright."""
    parent = os.environ.get("HUB_SERVE_PARENT")
    if parent:
        watch_parent(int(parent), lambda: os.kill(os.getpid(), signal.SIGTERM))
    return create_app(serving=True)


def create_app(settings: Settings | None = None, hub: Hub | None = None, *,
               policy: Policy | None = None, serving: bool = False) -> FastAPI:
    """The application; ``policy`` decides what each caller may read and write (every handler
    reaches resources through the repository that asks it): by default the access policy of
    ``hub.access.policy`` with access control on (``settings.auth``), else everything open.
    ``serving``: the application is its process's server (``hub serve``), whose garbage
    collector it tunes once started (``hub.core.gctune``); not for one of many in a process."""
    settings = settings or Settings()
    if settings.auth:
        # tokens are for one audience: the configured base URL, never the request's Host
        settings.base_url = settings.fhir_base

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Every object is built with what it uses (constructors, in dependency order); the read
        # models are those of hub.readmodels, each followed by its own runner.
        given: Hub | None = app.state.hub
        own = given is None
        store = settings.open_store() if given is None else given.store
        # the followers read the log through their own connections: trouble there (a store
        # outage mid-batch) never starves the requests' pool. With the followers in another
        # process (HUB_FOLLOW=none, as `hub serve` runs its API processes) the runners here only
        # catch up within a request, on its behalf: a second pool kept connections for nothing
        follow_store = settings.open_store() if own and settings.follows_here else store
        models = open_models(settings.data_dir)  # the index lives in the data dir on any store
        index = typed(models, "search", SQLiteSearchIndex)
        runner = Runner(follow_store, index)
        terminology.attach(app, settings, follow_store,
                           typed(models, "terminology", TerminologyProjection))
        # HUB_SEARCH=elasticsearch: searches answered from Elasticsearch, fed by its own runner
        es = open_es_index(settings.es_url, settings.es_prefix, settings.es_analyzer) \
            if settings.search == "elasticsearch" else None
        es_runner = Runner(follow_store, es) if es is not None else None
        search = SearchService(store, index, runner, settings,
                               backend=open_backend(index, es), backend_runner=es_runner,
                               terminology=app.state.terminology,  # :in, :not-in, :below, :above
                               terminology_sync=app.state.terminology_runner.sync)
        resolver = SearchResolver(store, search)  # conditional interactions search the index
        if given is None:
            hub = Hub(store, resolver=resolver)
        else:  # a hub the caller built (tests): it takes the API's resolver
            hub = given
            hub.resolver = resolver
        # POST /cda and POST /v3 map in the hub: their local codes normalised here
        normaliser = StoredMaps(app.state.terminology, store, search.terminology_sync)
        quarantine = Quarantine(settings.data_dir / "quarantine.sqlite",
                                quota=settings.quarantine_quota)
        # accepted HL7 v3 messages for the systems that subscribe to them (hub v3 route)
        app.state.routes = Routes(settings.data_dir / "v3routes.sqlite")
        # every read and write of the handlers below passes through the repository, each access
        # to patient data audited: its AuditEvent in the audit log's spool before the answer
        audit_log = open_audit_log(settings.data_dir, settings.database_url)
        audit_log.start()  # spooled events into the tables, in bulk, off the requests' path
        audit = AuditWriter(audit_log)
        app.state.audit_log = audit_log  # the console's audit page reads it
        # the access policy: the one given, else with access control on the roles, scopes and
        # the patients' consents (read from this store)
        active = policy if policy is not None else (
            AccessPolicy(ConsentIndex(store, settings.base_url), settings.base_url)
            if settings.auth else OPEN)
        repo = Repository(hub, search=search, policy=active,
                          audit=AccessAudit(audit) if settings.audit else None,
                          audit_records=audit_log,
                          terminology=TerminologyGuard(app.state.terminology,
                                                       app.state.terminology_runner.sync))
        app.state.hub = hub
        app.state.repo = repo
        # StructureDefinitions stored here, enforced on writes that declare or must meet them
        app.state.profiles = ProfileRegistry(search, repo, app.state.terminology, settings,
                                             app.state.terminology_runner.sync)
        app.state.search = search
        app.state.normaliser = normaliser
        app.state.documents = DocumentService(repo, quarantine, normaliser=normaliser)
        bulkexport.attach(app, settings)  # FHIR Bulk Data $export, run in threads of its own
        if settings.follows_here:
            runner.start()
            if es_runner is not None:
                es_runner.start()
        quality.attach(app, settings, follow_store, typed(models, "quality", QualityProjection))  # data-quality findings
        # Person, timeline, audit
        mpi_identity.attach(app, settings, repo, audit, follow_store,
                            typed(models, "person", PersonProjection),
                            typed(models, "timeline", TimelineProjection))
        # the candidate index of $match
        mpi_match.attach(app, settings, follow_store,
                         typed(models, "identity-candidates", IdentityCandidates))
        unmapped.attach(app, settings, follow_store, typed(models, "unmapped", UnmappedProjection))  # the worklist
        # intake counts per day, institution, feed and type: the console's overview
        app.state.intake = typed(models, "intake", IntakeCounts)
        app.state.intake_runner = Runner(follow_store, app.state.intake)
        if settings.follows_here:
            app.state.intake_runner.start()
        if serving:
            tune_for_serving()
        try:
            yield
        finally:
            bulkexport.detach(app)
            terminology.detach(app)
            unmapped.detach(app)
            app.state.intake_runner.stop()
            app.state.intake.close()
            mpi_match.detach(app)
            mpi_identity.detach(app)
            audit.close()
            audit_log.close()
            quality.detach(app)
            runner.stop()
            index.close()
            if es_runner is not None and es is not None:
                es_runner.stop()
                es.close()
            quarantine.close()
            app.state.routes.close()
            if own:
                if follow_store is not store:
                    follow_store.close()
                store.close()

    # every route authenticates its caller first (hub.api.caller.PUBLIC_PATHS excepted)
    app = FastAPI(title="Regional FHIR hub", lifespan=lifespan, docs_url="/docs",
                  openapi_url="/openapi.json", dependencies=[Depends(authenticate)])
    app.state.hub = hub
    app.state.settings = settings
    auth.attach(app, settings)  # the token endpoint, the client registry, the hub's signing key
    app.state.auth_verifier = _verifier(app, settings) if settings.auth else None
    app.state.trusted_proxies = networks(settings.trusted_proxies)
    app.state.rate_limiter = RateLimiter(settings.rate_limit) if settings.rate_limit > 0 else None
    app.add_middleware(BodyLimit, limit=settings.max_body, answers={"/v3": v3.too_large},
                       max_header=settings.max_header, large=settings.large_body,
                       max_large=settings.max_large, large_wait=settings.large_wait,
                       body_timeout=settings.body_timeout,
                       pages="/console/")  # the console's refusals: its error page
    _install_error_handlers(app)
    # before the FHIR routes: /fhir/{type} would otherwise take /fhir/$quality-report
    app.include_router(health.router)  # GET /health, GET /ready
    # POST /auth/token, GET /auth/jwks, GET /fhir/.well-known/smart-configuration
    app.include_router(auth.router)
    app.include_router(quality.router)  # GET /fhir/$quality-report
    # $export kick-off (system, Patient, Group), its status and its files
    app.include_router(bulkexport.router)
    # Person (read, search, operations), $everything, $timeline, $mpi-review,
    # $resolve-identifier; before /fhir/{type}/{id} and /fhir/{type}/{id}/{compartment type}
    app.include_router(mpi_identity.router)
    app.include_router(mpi_everything.router)
    app.include_router(mpi_match.router)  # POST /fhir/Patient/$match
    # /fhir/CodeSystem/$lookup and the other terminology operations
    app.include_router(terminology.router)
    app.include_router(unmapped.router)  # GET /fhir/$unmapped-codes
    app.include_router(documents.router)  # POST /cda
    app.include_router(v3.router)  # POST /v3
    app.include_router(console.router)  # /console: the operator console's pages
    app.mount("/console/static", console.StaticFiles(directory=console.STATIC),
              name="console-static")
    _install_routes(app)
    allow.install(app)  # a 405 for a method no route of the path takes, before any route
    return app


def _verifier(app: FastAPI, settings: Settings) -> Verifier:
    external = []
    if settings.auth_issuer:  # without a JWKS URL, its discovery document's
        external.append(ExternalIssuer(settings.auth_issuer, settings.auth_jwks_url or "",
                                       roles_claim=settings.auth_roles_claim,
                                       institution_claim=settings.auth_institution_claim))
    return Verifier(settings.fhir_base, own=app.state.auth_signer, external=external,
                    clients=app.state.auth_registry)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, e: FhirError) -> Response:
        if isinstance(e, LoginRequired):  # a console page without a session: its login page
            return RedirectResponse(f"/console/login?next={quote(e.path)}", 303)
        if request.url.path.startswith("/console"):  # the console answers with pages
            page = console.error_page(request, e.status,
                                      e.issues[0].diagnostics if e.issues else "")
            if getattr(e, "retry_after", None):  # a held login, a rate: when to try again
                page.headers["Retry-After"] = str(e.retry_after)  # type: ignore[attr-defined]
            return page
        response = outcome_response(e.issues, e.status, request)
        if e.status == 401:  # RFC 6750: how to authenticate; an error code only when a token
            # was sent (3.1: a request without credentials gets none)
            sent = bool(request.headers.get("authorization"))
            response.headers["WWW-Authenticate"] = 'Bearer realm="fhir"' + (
                ', error="invalid_token"' if sent else "")
        if isinstance(e, Throttled) or getattr(e, "retry_after", None):  # a rate, a busy export
            response.headers["Retry-After"] = str(e.retry_after)  # type: ignore[attr-defined]
        if e.status == 405:  # RFC 9110 15.5.6: what the path takes, but the route that refused
            response.headers["Allow"] = allow.allowed(request.app, request.scope,
                                                        request.scope.get("route"))
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(e.status_code, "processing")
        text = {404: f"No FHIR endpoint at {request.url.path}",
                405: f"{request.method} is not supported on {request.url.path}"}.get(
            e.status_code, str(e.detail))
        if request.url.path.startswith("/console/static/"):  # a file missing: no page, no
            # FHIR JSON, and the console's headers all the same
            return PlainTextResponse(f"No console file at {request.url.path}", e.status_code,
                                     headers={"cache-control": "no-store",
                                              **console.SECURITY_HEADERS})
        if request.url.path.startswith("/console/"):  # the console answers pages
            return console.error_page(request, e.status_code,
                                      text.replace("No FHIR endpoint", "No console page"))
        response = outcome_response([Issue(code, text)], e.status_code, request)
        if e.status_code == 405:  # RFC 9110 15.5.6: what every route of the path takes
            response.headers["Allow"] = allow.allowed(request.app, request.scope)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> Response:
        if request.url.path.startswith("/console/"):
            return console.error_page(request, 400, "Malformed request parameters")
        return outcome_response([Issue("invalid", "Malformed request parameters")], 400, request)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def store_unavailable(request: Request, e: Exception) -> Response:
        if too_complex(e):  # the engine's own limits: the same query fails again; say so
            log.info("query too complex on %s %s: %s", request.method, request.url.path, e)
            return _answer(request, Issue("too-costly", "The query is too complex for the index "
                                          "(too many values, criteria or chained steps); "
                                          "narrow it or split it"), 400)
        if too_large(e):  # content beyond what the engine indexes: a retry fails the same
            log.info("content too large to index on %s %s: %s", request.method, request.url.path, e)
            return _answer(request, Issue("too-long", "A value of this resource is too large "
                                          "for the event store to index"), 422)
        failure = storage_failure(e)
        if failure is not None:  # out of space: no retry helps until someone frees some
            log.error("event store out of space on %s %s: %s", request.method, request.url.path,
                      failure)
            return _answer(request, Issue("exception", STORE_FULL), 507)
        # Store down or its connections exhausted: a client can retry; the server keeps going.
        log.warning("event store unavailable on %s %s: %s: %s", request.method,
                    request.url.path, type(e).__name__, _first_line(e))
        response = _answer(request, Issue("transient", "The event store is unavailable or busy; "
                                          "retry shortly"), 503)
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(NotThisLog)
    async def read_model_not_this_log(request: Request, e: Exception) -> Response:
        # a read model built from another event log (or beyond its end): its answers would not
        # be this log's; /ready fails and names the rebuild too
        log.warning("%s %s: %s", request.method, request.url.path, e)
        return _answer(request, Issue("exception", str(e)), 503)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, e: Exception) -> Response:
        # the client closed its connection before its body was whole: nothing was accepted,
        # nothing failed here, and no one is left to read an answer
        log.info("client disconnected during %s %s; nothing was accepted", request.method,
                 request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> Response:
        if search_engine_away(e):  # Elasticsearch down or overloaded: a client can retry
            log.warning("search engine unavailable on %s %s: %s", request.method,
                        request.url.path, type(e).__name__)
            response = _answer(request, Issue("transient", "The search engine is unavailable or "
                                              "busy; retry shortly"), 503)
            response.headers["Retry-After"] = "1"
            return response
        # No request content in the log: it may hold personal data.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _answer(request, Issue("exception", "Internal server error"), 500)


def _answer(request: Request, issue: Issue, status: int) -> Response:
    """A failure as the caller reads answers: the console's page, else an OperationOutcome."""
    if request.url.path.startswith("/console/") and \
            not request.url.path.startswith("/console/static/"):
        return console.error_page(request, status, issue.diagnostics or "")
    return outcome_response([issue], status, request)


def _first_line(e: Exception) -> str:
    return str(e).strip().partition("\n")[0][:300]


def search_engine_away(e: Exception) -> bool:
    """An Elasticsearch client's error that says the cluster cannot answer now (no connection, a
    timeout, a 5xx or 429), not that the request was wrong. Known by module, so the client is not
    imported where Elasticsearch is not used."""
    module = type(e).__module__
    if module.startswith("elastic_transport"):
        return True
    if not module.startswith("elasticsearch"):
        return False
    status = getattr(getattr(e, "meta", None), "status", None)
    return not isinstance(status, int) or status >= 500 or status == 429


def _type(rtype: str) -> str:
    if rtype not in res.RESOURCE_TYPES:
        _no_operation(rtype)
        raise not_found(f"Unknown resource type {rtype!r}")
    return rtype


def _id(rid: str) -> str:
    if not ID_RE.match(rid):
        _no_operation(rid)
        raise bad_request(f"{rid!r} is not a valid FHIR id")
    return rid


def _no_operation(segment: str) -> None:
    """An operation this server does not have ($export, $meta) is named as such: it was taken
    for a resource type or an id."""
    if segment.startswith("$") and len(segment) > 1:
        raise FhirError(400, "not-supported",
                        f"The operation {segment[:64]!r} is not supported here (GET /fhir/metadata "
                        "lists the operations)")


def _may_send(request: Request, interaction: str, rtype: str, rid: str | None = None) -> None:
    """Refuse, before its body is read, a caller the policy refuses ``interaction`` on the type
    whatever the body holds: reading a large body takes one of a few turns (hub.api.limits), and
    a read-only token's unsent body held one. The check is the policy's own, the one the
    interaction makes again with the body; a refused search is audited as a search's refusal."""
    if rtype not in res.RESOURCE_TYPES or rtype in APPEND_ONLY:
        return  # answered by the route as before (404, or the audit log's own refusal)
    repo, ctx = repository(request), context_of(request)
    action = Action(interaction, rtype, rid)
    if interaction == "search-type":
        repo.audited(ctx, action, lambda: repo.authorize(ctx, action), None)
    else:
        repo.authorize(ctx, action)


async def _body(request: Request, expected: str | None = None, where: str = "",
                rid: str | None = None) -> tuple[bytes, Any]:
    if expected is not None and binary.sends_native(request, expected):
        d = binary.native_resource(request, await request.body(), rid)
        return orjson.dumps(d), d
    check_content_type(request)
    raw = await request.body()
    if not raw.strip():
        raise bad_request("The request body is empty")
    raw = await run_in_threadpool(fhirxml.json_body, request, raw)  # XML, off the event loop
    d = res.parse_json(raw, max_string=_settings(request).max_string)
    res.check_type(d, expected, where)
    return raw, d


# -- the FHIR interactions' handlers (routed by ROUTES below) ------------------------------------


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _base(request: Request) -> str:
    return base_url(request, _settings(request).base_url)


def _write_response(request: Request, result: Result, *, location: bool = True) -> Response:
    headers = {}
    if result.version is not None:
        assert result.rid is not None and result.last_updated is not None  # a stored version
        headers = version_headers(_base(request), result.rtype, result.rid, result.version,
                                  result.last_updated, location=location)
    elif result.place is not None and location:
        headers = {"Location": f"{_base(request)}/{result.place}"}
    mode = prefer_return(request)
    if mode == "minimal":
        return fhir_response(None, result.status, headers=headers)
    if mode == "OperationOutcome" or result.body is None:
        issues = result.issues or [Issue("informational", f"{request.method} succeeded",
                                         "information")]
        return fhir_response({"resourceType": "OperationOutcome",
                              "issue": [i.to_json() for i in issues]},
                             result.status, request=request, headers=headers)
    return fhir_response(result.body, result.status, request=request, headers=headers)


def _checker(request: Request, ctx: Context) -> bundles.Validate:
    """The checks of every resource a request writes (create, update, patch, Bundle entries):
    validation, lenient intake for those whose policy repairs, then the profiles it must meet.
    (type, JSON text, resource, where) -> (the resource to store, the warnings to answer)."""
    settings = _settings(request)
    registry = getattr(request.app.state, "profiles", None)
    strict = prefer_strict(request)

    def check(rtype: str, raw: bytes, d: dict, where: str) -> tuple[dict, list[Issue]]:
        operations.refuse_body(rtype, d, where)  # a patch's result too
        d, repairs = intake.validate(ctx, settings, rtype, raw, d, where)
        broken: list[Issue] = []  # base invariants the model does not evaluate: warnings
        invariants.check(rtype, d, rtype, broken)
        return d, [*repairs, *relocate(broken, rtype, where),
                   *enforce(registry, rtype, d, strict, where)]
    return check


def _checked(request: Request, rtype: str, raw: bytes, d: dict) -> tuple[dict, list[Issue]]:
    return _checker(request, context_of(request))(rtype, raw, d, "")


async def _run(request: Request, op: Op, warnings: list[Issue] | None = None) -> Response:
    operations.refuse_write(op)
    repo, ctx = repository(request), context_of(request)

    def execute() -> Result:
        result = repo.execute([op], ctx, atomic=True)[0]
        assert isinstance(result, Result)  # atomic: a failure is raised, not returned
        intake.finish(repo, ctx, result, warnings or [])
        return repo.complete(result, ctx)

    return _write_response(request, await run_in_threadpool(execute))


def _stored_response(request: Request, stored, status: int = 200) -> Response:
    ev_version = stored.originator_version
    header = orjson.loads(stored.state.partition(b"\n")[0])
    headers = version_headers(_base(request), header["type"], header["id"], ev_version,
                              header["lastUpdated"])
    if client_holds(request.headers.get("if-none-match"),
                    request.headers.get("if-modified-since"), ev_version, header["lastUpdated"]):
        return Response(status_code=304, headers=headers)
    if binary.may_be_native(request, header["type"]):
        d = orjson.loads(resource_bytes(stored))
        if binary.wants_native(request, binary.served_type(d)):
            return binary.native_response(d, headers, status)
    keep = read_subset(header["type"], request.query_params, prefer_strict(request))
    body = resource_bytes(stored) if keep is None else subset(resource_bytes(stored), keep)
    return fhir_response(body, status, request=request, headers=headers)


# -- system level ----------------------------------------------------------------------------


_METADATA_MODES = ("full", "normative", "terminology")


async def metadata(request: Request) -> Response:
    """The CapabilityStatement (``mode`` full, or normative: the hub has no normative subset, so
    the same), or ``mode=terminology``: the terminology service's TerminologyCapabilities."""
    check_format(request)
    mode = request.query_params.get("mode")
    if mode is not None and mode not in _METADATA_MODES:
        raise bad_request(f"mode must be one of {', '.join(_METADATA_MODES)}, not {mode[:40]!r}")
    settings = _settings(request)
    security = capability.security(settings.auth, auth.endpoints(request)["token_url"])
    out = capability.statement(request.app, _base(request), security)
    if mode == "terminology":
        out = await run_in_threadpool(termcaps.capabilities, request, out)
    return fhir_response(out, request=request)


async def transaction(request: Request) -> Response:
    check_format(request)
    raw, d = await _body(request, "Bundle")
    repo, ctx, b = repository(request), context_of(request), _base(request)

    def get(path: str, query: str, check: bool = False):
        # the audit records the entry's own query, not the Bundle's POST to the base
        outer, ctx.query = ctx.query, (f"{request.url.path.rstrip('/')}/{path}"
                                       + (f"?{query}" if query else ""))
        try:
            parts = path.split("/")
            if parts[0] == "Person" and len(parts) == 2 and parts[1] != "_history":
                # the master patient index's view
                return mpi_identity.person_entry(request, parts[1], check)
            if parts[0] == "Person" and len(parts) == 1:
                return mpi_identity.person_search_entry(request, query, check)
            return _get(repo, ctx, path, query, b, _settings(request), check)
        finally:
            ctx.query = outer

    mode = prefer_return(request)
    out = await run_in_threadpool(bundles.process, d, repo, ctx, b,
                                  "outcome" if mode == "OperationOutcome"
                                  else mode == "representation", get, raw,
                                  _checker(request, ctx))
    return fhir_response(out, request=request)


async def history_system(request: Request) -> Response:
    check_format(request)
    out = await run_in_threadpool(history_bundle, repository(request), context_of(request),
                                  list(request.query_params.multi_items()), _base(request), _settings(request))
    return fhir_response(out, request=request)


# -- type level ------------------------------------------------------------------------------


async def history_type(request: Request, rtype: str) -> Response:
    check_format(request)
    out = await run_in_threadpool(history_bundle, repository(request), context_of(request),
                                  list(request.query_params.multi_items()), _base(request), _settings(request), _type(rtype))
    return fhir_response(out, request=request)


async def search(request: Request, rtype: str) -> Response:
    check_format(request)
    shipped = operations.search(request, rtype)
    if shipped is not None:
        return shipped
    return await _search_response(request, rtype, list(request.query_params.multi_items()))


async def _search_response(request: Request, rtype: str, params: list[tuple[str, str]]) -> Response:
    out = await run_in_threadpool(search_bundle, repository(request), context_of(request),
                                  _type(rtype), params, _base(request), _settings(request),
                                  prefer_strict(request))
    return fhir_response(out, request=request)


async def search_system(request: Request) -> Response:
    check_format(request)
    params = list(request.query_params.multi_items())
    return await _system_search_response(request, params)


async def search_system_post(request: Request) -> Response:
    check_format(request)
    return await _system_search_response(request, await form_params(request))


async def _system_search_response(request: Request, params: list[tuple[str, str]]) -> Response:
    out = await run_in_threadpool(system_search, repository(request), context_of(request), params,
                                  _base(request), _settings(request), prefer_strict(request))
    return fhir_response(out, request=request)


async def search_post(request: Request, rtype: str) -> Response:
    check_format(request)
    _may_send(request, "search-type", rtype)
    return await _search_response(request, rtype, await form_params(request))


async def create(request: Request, rtype: str) -> Response:
    check_format(request)
    _may_send(request, "create", rtype)
    raw, d = await _body(request, _type(rtype))
    if "id" in d:  # the server assigns the id of a create; whatever was sent is ignored
        del d["id"]
        raw = orjson.dumps(d)
    d, repairs = _checked(request, rtype, raw, d)
    op = Op("POST", rtype, d=d, url=rtype)
    inx = request.headers.get("if-none-exist")
    if inx is not None:
        op.if_none_exist = parse_if_none_exist(inx)
    return await _run(request, op, repairs)


async def conditional_update(request: Request, rtype: str) -> Response:
    check_format(request)
    _may_send(request, "conditional-update", rtype)
    raw, d = await _body(request, _type(rtype))
    if not request.url.query:
        raise bad_request("PUT on a type needs search criteria (conditional update) or an id")
    d, repairs = _checked(request, rtype, raw, d)
    op = Op("PUT", rtype, d=d, query=parse_query(request.url.query),
            if_match=parse_if_match(request.headers.get("if-match")), url=f"{rtype}?{request.url.query}",
            create_only=create_only(request.headers.get("if-none-match")))
    return await _run(request, op, repairs)


async def conditional_delete(request: Request, rtype: str) -> Response:
    check_format(request)
    _type(rtype)
    if not request.url.query:
        raise FhirError(405, "not-supported", "Deleting a whole type is not supported")
    op = Op("DELETE", rtype, query=parse_query(request.url.query),
            url=f"{rtype}?{request.url.query}")
    return await _run(request, op)


# -- instance level --------------------------------------------------------------------------


async def history_instance(request: Request, rtype: str, rid: str) -> Response:
    check_format(request)
    shipped = operations.history(repository(request), context_of(request), rtype, rid,
                                 _base(request), str(request.url))
    if shipped is not None:  # an operation /metadata names: its one version
        return fhir_response(shipped, request=request)
    out = await run_in_threadpool(history_bundle, repository(request), context_of(request),
                                  list(request.query_params.multi_items()), _base(request), _settings(request), _type(rtype),
                                  _id(rid))
    return fhir_response(out, request=request)


async def search_compartment(request: Request, ctype: str, cid: str, rtype: str) -> Response:
    check_format(request)
    params = list(request.query_params.multi_items())
    out = await run_in_threadpool(search_bundle, repository(request), context_of(request),
                                  _type(rtype), params, _base(request), _settings(request),
                                  prefer_strict(request), (_type(ctype), _id(cid)))
    return fhir_response(out, request=request)


async def search_compartment_post(request: Request, ctype: str, cid: str, rtype: str) -> Response:
    check_format(request)
    out = await run_in_threadpool(search_bundle, repository(request), context_of(request),
                                  _type(rtype), await form_params(request), _base(request),
                                  _settings(request), prefer_strict(request),
                                  (_type(ctype), _id(cid)))
    return fhir_response(out, request=request)


async def search_compartment_all(request: Request, ctype: str, cid: str) -> Response:
    """``Patient/{id}/*``: the compartment search across its types (R4 http.html#search)."""
    check_format(request)
    return await _compartment_all(request, ctype, cid, list(request.query_params.multi_items()))


async def search_compartment_all_post(request: Request, ctype: str, cid: str) -> Response:
    check_format(request)
    return await _compartment_all(request, ctype, cid, await form_params(request))


async def _compartment_all(request: Request, ctype: str, cid: str,
                           params: list[tuple[str, str]]) -> Response:
    out = await run_in_threadpool(system_search, repository(request), context_of(request), params,
                                  _base(request), _settings(request), prefer_strict(request),
                                  (_type(ctype), _id(cid)))
    return fhir_response(out, request=request)


def _check_read_format(request: Request, rtype: str) -> None:
    # a Binary's own content type is one too: whether it is asked for is known once it is read
    if not binary.may_be_native(request, rtype):
        check_format(request)


async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
    _check_read_format(request, rtype)
    if not (vid.isascii() and vid.isdigit()) or len(vid) > 18:  # no version reaches 10**18
        raise not_found(f"{vid!r} is not a version of {rtype}/{rid}")
    shipped = operations.vread(request, rtype, rid, vid)  # an operation /metadata names
    if shipped is not None:
        return shipped
    stored = await run_in_threadpool(repository(request).vread, context_of(request), _type(rtype),
                                     _id(rid), int(vid))
    return _stored_response(request, stored)


async def read(request: Request, rtype: str, rid: str) -> Response:
    _check_read_format(request, rtype)
    shipped = operations.read(request, rtype, rid)  # an operation /metadata names
    if shipped is not None:
        return shipped
    stored = await run_in_threadpool(repository(request).read, context_of(request), _type(rtype),
                                     _id(rid))
    return _stored_response(request, stored)


async def update(request: Request, rtype: str, rid: str) -> Response:
    check_format(request)
    _may_send(request, "update", rtype, rid)
    raw, d = await _body(request, _type(rtype), rid=rid)
    _id(rid)
    if d.get("id") != rid:
        raise bad_request(
            f"The body's id {d.get('id')!r} must equal the id in the URL ({rid!r})",
            f"{rtype}.id",
        )
    d, repairs = _checked(request, rtype, raw, d)
    op = Op("PUT", rtype, rid, d, if_match=parse_if_match(request.headers.get("if-match")),
            url=f"{rtype}/{rid}", create_only=create_only(request.headers.get("if-none-match")))
    return await _run(request, op, repairs)


async def patch(request: Request, rtype: str, rid: str) -> Response:
    """PATCH with a JSON Patch (application/json-patch+json) or a FHIRPath Patch (a Parameters
    body): applied by the hub to the current version, checked, and stored as its update
    (If-Match: only of the version named, else 412)."""
    op = Op("PATCH", _type(rtype), _id(rid), url=f"{rtype}/{rid}")
    return await _patch(request, op)


async def conditional_patch(request: Request, rtype: str) -> Response:
    """PATCH of the one resource the criteria find: none, 404; more than one, 412."""
    if not request.url.query:
        raise bad_request("PATCH on a type needs search criteria (conditional patch) or an id")
    op = Op("PATCH", _type(rtype), query=parse_query(request.url.query),
            url=f"{rtype}?{request.url.query}")
    return await _patch(request, op)


async def _patch(request: Request, op: Op) -> Response:
    check_format(request)
    _may_send(request, "patch" if op.query is None else "conditional-patch", op.rtype, op.rid)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != patching.JSON_PATCH:
        check_content_type(request)
    # a FHIRPath Patch may be a Parameters in XML
    raw = await run_in_threadpool(fhirxml.json_body, request, await request.body())
    apply, document = patching.from_body(media, raw, _settings(request).max_string)
    repo, ctx = repository(request), context_of(request)
    op.if_match = parse_if_match(request.headers.get("if-match"))
    operations.refuse_write(op)
    op.patch = patching.step(op.rtype, apply, document, _checker(request, ctx))

    def execute() -> Result:
        result = repo.execute([op], ctx, atomic=True)[0]
        assert isinstance(result, Result)  # atomic: a failure is raised, not returned
        intake.finish(repo, ctx, result, op.warnings)
        return repo.complete(result, ctx)

    return _write_response(request, await run_in_threadpool(execute), location=False)


async def delete(request: Request, rtype: str, rid: str) -> Response:
    check_format(request)
    op = Op("DELETE", _type(rtype), _id(rid), if_match=parse_if_match(request.headers.get("if-match")),
            url=f"{rtype}/{rid}")
    operations.refuse_write(op)
    result = (await run_in_threadpool(repository(request).execute, [op], context_of(request),
                                      atomic=True))[0]
    assert isinstance(result, Result)  # atomic: a failure is raised, not returned
    headers = {"ETag": f'W/"{result.version}"'} if result.version else None
    if prefer_return(request) == "minimal":  # the version the delete made, as the other answers
        return Response(status_code=204, headers=headers)
    issues = result.issues or [Issue("informational", f"Deleted {rtype}/{rid}", "information")]
    return fhir_response({"resourceType": "OperationOutcome",
                          "issue": [i.to_json() for i in issues]}, 200, request=request,
                         headers=headers)


# The FHIR interactions' route table, in matching order (the first route that matches a request
# takes it: a literal segment such as _history comes before the parameter it would otherwise
# fill): method, path, handler, route name (the FHIR interaction code the CapabilityStatement
# lists; None: the handler's name), listed in the OpenAPI schema.
ROUTES: tuple[tuple[str, str, Any, str | None, bool], ...] = (
    ("GET", "/fhir/metadata", metadata, "capabilities", True),
    ("GET", "/fhir", search_system, "search-system", True),
    ("GET", "/fhir/", search_system, None, False),
    ("POST", "/fhir/_search", search_system_post, None, False),
    ("POST", "/fhir/", transaction, None, False),
    ("POST", "/fhir", transaction, "transaction", True),  # and batch: Bundle.type decides
    ("GET", "/fhir/_history", history_system, "history-system", True),
    ("GET", "/fhir/{rtype}/_history", history_type, "history-type", True),
    ("GET", "/fhir/{rtype}", search, "search-type", True),
    ("POST", "/fhir/{rtype}/_search", search_post, None, False),
    ("POST", "/fhir/{rtype}", create, "create", True),
    ("PUT", "/fhir/{rtype}", conditional_update, "conditional-update", False),
    ("DELETE", "/fhir/{rtype}", conditional_delete, "conditional-delete", False),
    ("PATCH", "/fhir/{rtype}", conditional_patch, "conditional-patch", False),
    ("POST", "/fhir/{rtype}/$validate", validate_type, "validate", False),
    ("POST", "/fhir/{rtype}/{rid}/$validate", validate_instance, None, False),
    ("GET", "/fhir/{rtype}/{rid}/$validate", validate_instance, None, False),
    ("GET", "/fhir/{rtype}/{rid}/_history", history_instance, "history-instance", True),
    ("GET", "/fhir/{ctype}/{cid}/*", search_compartment_all, "search-compartment-all", False),
    ("POST", "/fhir/{ctype}/{cid}/_search", search_compartment_all_post, None, False),
    ("GET", "/fhir/{ctype}/{cid}/{rtype}", search_compartment, "search-compartment", False),
    ("POST", "/fhir/{ctype}/{cid}/{rtype}/_search", search_compartment_post, None, False),
    ("GET", "/fhir/{rtype}/{rid}/_history/{vid}", vread, "vread", True),
    ("GET", "/fhir/{rtype}/{rid}", read, "read", True),
    ("PUT", "/fhir/{rtype}/{rid}", update, "update", True),
    ("PATCH", "/fhir/{rtype}/{rid}", patch, "patch", True),
    ("DELETE", "/fhir/{rtype}/{rid}", delete, "delete", True),
)


def _install_routes(app: FastAPI) -> None:
    for method, path, handler, name, in_schema in ROUTES:
        # HEAD wherever GET: the same status and headers, the server sends no body
        app.add_api_route(path, handler, methods=[method, "HEAD"] if method == "GET" else [method],
                          name=name, include_in_schema=in_schema)


def _get(repo: Repository, ctx: Context, path: str, query: str, base: str,
         settings: Settings, check: bool = False) -> tuple[int, Any]:
    """GET inside a batch or transaction: read, vread, search (of a type, of the system, of a
    compartment) or history, each as over HTTP (the query read as a server reads one: empty
    pairs ignored). ``check``: only whether it would fail (the query parsed and planned, access
    checked, a resource's latest version looked up), nothing read nor audited."""
    parts = path.split("/")
    rtype = parts[0]
    items = parse_qsl(query, keep_blank_values=True)
    if path in ("", "_history"):  # the system's search or history
        if not path:
            if check:
                check_system_search(repo, ctx, items, base, settings, False)
                return 200, None
            return 200, system_search(repo, ctx, items, base, settings, False)
        if check:
            check_history(repo, ctx, items, settings)
            return 200, None
        return 200, history_bundle(repo, ctx, items, base, settings)
    if rtype not in res.RESOURCE_TYPES:
        raise not_found(f"Cannot GET {path!r}")
    self_url = f"{base}/{path}" + (f"?{query}" if query else "")
    if parts[1:] == ["_history"] or (len(parts) == 3 and parts[2] == "_history"):
        rid = _id(parts[1]) if len(parts) == 3 else None
        shipped = operations.history(repo, ctx, rtype, rid, base, self_url) if rid else None
        if shipped is not None:
            return 200, None if check else shipped
        if check:
            check_history(repo, ctx, items, settings, rtype, rid)
            return 200, None
        return 200, history_bundle(repo, ctx, items, base, settings, rtype, rid)
    if len(parts) == 3 and (parts[2] == "*" or parts[2] in res.RESOURCE_TYPES):
        compartment = (rtype, _id(parts[1]))
        if parts[2] == "*":
            if check:
                check_system_search(repo, ctx, items, base, settings, False, compartment)
                return 200, None
            return 200, system_search(repo, ctx, items, base, settings, False, compartment)
        if check:
            check_search(repo, ctx, parts[2], items, base, settings, False, compartment)
            return 200, None
        return 200, search_bundle(repo, ctx, parts[2], items, base, settings, False, compartment)
    if len(parts) == 1:
        shipped = operations.search_as(repo, ctx, rtype, items, base, self_url)
        if shipped is not None:
            return 200, None if check else shipped
        if check:
            plan_search(repo, ctx, rtype, items, base, settings, False)
            return 200, None
        return 200, search_bundle(repo, ctx, rtype, items, base, settings, False)
    # a read or vread: its _summary / _elements as over HTTP (others ignored, as there)
    keep = read_subset(rtype, dict(items))
    version = None
    if len(parts) == 4 and parts[2] == "_history":
        if not (parts[3].isascii() and parts[3].isdigit()) or len(parts[3]) > 18:
            raise not_found(f"{parts[3]!r} is not a version of {rtype}/{parts[1]}")
        version = int(parts[3])
    elif len(parts) != 2:
        raise bad_request(f"GET {path!r} is not supported inside a Bundle")
    shipped = operations.read_as(repo, ctx, rtype, parts[1]) if version is None \
        else operations.vread_as(repo, ctx, rtype, parts[1], parts[3])
    if shipped is not None:  # an operation /metadata names, as over HTTP
        return 200, None if check else shipped
    if check:
        stored = repo.latest(ctx, rtype, _id(parts[1]))
        if stored is None:  # unknown, or not shown to the caller: alike
            raise not_found(f"{rtype}/{parts[1]} is not known")
        if version is None and stored.topic.endswith("Deleted"):
            raise FhirError(410, "deleted", f"{rtype}/{parts[1]} was deleted")
        return 200, None
    stored = repo.read(ctx, rtype, _id(parts[1])) if version is None \
        else repo.vread(ctx, rtype, _id(parts[1]), version)
    body = resource_bytes(stored)
    return 200, body if keep is None else subset(body, keep)
