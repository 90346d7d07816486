"""``POST /v3``: HL7 v3 interaction messages (hospital-platform interaction services, WS/T 846 style).

Registrations, updates and merges (PRPA_IN201311/201314/201304UV02, PRPM_IN401030/403010UV01,
PRPM_IN301010/303010UV01, RCMR_IN000002UV02) are converted by ``fhir_mapping.hl7v3.convert`` and
written as ONE hub transaction (every resource validated at the edge like the REST API), then
acknowledged with MCCI_IN000002UV01. Queries (PRPA_IN201305UV02, PRPM_IN406010UV01,
PRPM_IN306010UV01, RCMR_IN000029UV01 search, RCMR_IN000031UV01 retrieve) become a FHIR search
through the search index (brought up to the log first: read-your-writes) and are answered with the
conformant v3 response (PRPA_IN201306UV02, PRPM_IN406110UV01, PRPM_IN306011UV01, RCMR_IN000030UV01,
RCMR_IN000032UV01 with the document content).

Every answer is v3 XML, never an OperationOutcome. HTTP status:

* ``200`` for every answer decided from the message: AA (accepted / query answered), AE (content that
  cannot be mapped, a resource the hub refuses, unsupported query criteria) and AR (not well-formed,
  hostile XML, not v3, unknown interaction, not of production: ``processingCode`` T or D). v3
  senders (integration engines, SOAP-style services) read the outcome from the acknowledgement
  code; a non-2xx would make most of them retry a message that can never succeed.
* ``413`` AR: the body exceeds the hub's size limit (or the XML parser's, whichever is smaller);
  ``415`` AR: the Content-Type is not application/xml, text/xml or application/hl7-v3+xml. Both are
  refusals of the transport request before any message is read. A SOAP request is answered with
  a SOAP Fault instead where its envelope cannot be read or is too large (``hub.api.soap``).
* ``503`` AE (with ``Retry-After``): the event store is unavailable or too busy; the same message
  will succeed later, so the sender should retry. ``500`` AE: an unexpected failure (logged without
  message content).

The acknowledgement's own id is a fresh UUID and its creationTime the real clock (the endpoint is not
pure; the mappers are). Source metadata: the institution and feed come from the headers
``x-hub-source-institution`` / ``x-hub-source-feed`` / ``x-hub-source-oid`` when given (metadata, not
authorization), else the mapper takes the institution from the message itself. Logs carry the
interaction, message id, outcome and rule id, never message content.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import APIRouter, Request
from fastapi.responses import Response
from lxml import etree
from starlette.concurrency import run_in_threadpool

from fhir_mapping import hl7v3
from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.hl7v3.ack import request_header
from fhir_mapping.hl7v3.common import Ctx, interactions, parse, service_spec
from fhir_mapping.hl7v3.common import table as interactions_tables
from fhir_mapping.xmlsafe import MAX_BYTES, declare_charset, parse_xml
from hub import v3intake
from hub.api import soap
from hub.api.caller import (
    actor_of,
    authorize,
    context_of,
    recorded_institution,
    repository,
)
from hub.api.limits import BodyTooLarge
from hub.core.access import Action
from hub.core.errors import FhirError, HubError
from hub.core.events import resource_bytes
from hub.core.fhirtime import local_zone
from hub.core.ingest import Context, Result
from hub.core.store import STORE_FULL, storage_failure
from hub.quarantine import QuarantineFull
from hub.repository import Repository

log = logging.getLogger("hub.api.v3")
router = APIRouter()

# the last: SOAP 1.2 envelopes (SOAP 1.1 ones come as text/xml); see hub.api.soap
MEDIA_TYPES = ("application/xml", "text/xml", "application/hl7-v3+xml", "application/soap+xml")
TRANSIENT = (OperationalError, InterfaceError)
TRANSIENT_STATUS = {409, 429, 503}  # the hub's own "retry": too many concurrent changes

# FHIR search additions per query handler: what ``respond`` needs beside the matches
INCLUDES: dict[str, list[tuple[str, str]]] = {
    "patient_query": [],
    "organization_query": [("_include", "Organization:partof")],
    "practitioner_query": [("_revinclude", "PractitionerRole:practitioner"),
                           ("_include:iterate", "PractitionerRole:organization")],
    "document_search": [("_include", "DocumentReference:subject"),
                        ("_include", "DocumentReference:author"),
                        ("_include", "DocumentReference:custodian")],
}
INCLUDES["document_retrieve"] = INCLUDES["document_search"]
INCLUDES["visit_query"] = [("_include", "Encounter:practitioner")]  # the admitting doctors
INCLUDES["appointment_query"] = []
INCLUDES["slot_query"] = [("_revinclude", "Slot:schedule"), ("_include", "Schedule:actor")]
INCLUDES["order_query"] = [(inc, f"{t}:{p}") for t in ("MedicationRequest", "ServiceRequest")
                           for inc, p in (("_include", "requester"), ("_include", "encounter"))
                           ] + [("_include", "NutritionOrder:provider"),
                                ("_include", "NutritionOrder:encounter")]


class Refused(HubError):
    """An answer decided before or while handling the message: (HTTP status, ack code, text)."""

    error_code = "refused"

    def __init__(self, status: int, code: str, text: str, rule: str = "", head: bytes = b""):
        super().__init__(text)
        self.status, self.code, self.text, self.rule = status, code, text, rule
        self.head = head  # the body's first bytes, when it was read: SOAP or not


def now() -> datetime:
    """The real clock, in the platform's zone (``HUB_TIMEZONE``)."""
    return datetime.now(local_zone())


def xml_response(body: bytes, status: int = 200, media_type: str = "application/xml",
                 headers: dict | None = None) -> Response:
    return Response(body, status_code=status, media_type=f"{media_type}; charset=utf-8",
                    headers=headers)


def ack_response(payload: bytes | dict | None, code: str, text: str, status: int = 200,
                 media_type: str = "application/xml", headers: dict | None = None,
                 details: Any = ()) -> Response:
    body = hl7v3.acknowledge(payload, code, text, now=now(), message_id=str(uuid.uuid4()),
                             details=details)
    return xml_response(body, status, media_type, headers)


def too_large(limit: int, headers: Any = ()) -> tuple[int, bytes, bytes]:
    """(HTTP status, Content-Type, body) of the refusal of a body over ``limit`` bytes: for the
    size guard in front of the app (``hub.api.limits.BodyLimit``), which refuses a declared
    Content-Length before any route runs. ``headers``: the request's (ASGI: bytes pairs); a SOAP
    request by its headers is answered with a SOAP Fault, any other with the MCCI AR (413)."""
    named = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    text = f"The request body exceeds the limit of {limit} bytes"
    ns = soap.requested(named.get("content-type", ""), named.get("soapaction"))
    if ns is not None:
        status, body = soap.fault(ns, text)
        return status, f"{soap.MEDIA[ns]}; charset=utf-8".encode(), body
    body = hl7v3.acknowledge(None, "AR", text, now=now(), message_id=str(uuid.uuid4()))
    return 413, b"application/xml; charset=utf-8", body


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _source(request: Request) -> SourceInfo:
    values: dict[str, str] = {}
    for header, key in (("x-hub-source-institution", "institution"), ("x-hub-source-feed", "feed"),
                        ("x-hub-source-oid", "oid")):
        v = request.headers.get(header, "").strip()
        if v and v.isprintable():
            values[key] = v[:128]
    institution = recorded_institution(request, values.pop("institution", None))
    if institution:
        values["institution"] = institution
    return SourceInfo(institution=values.get("institution", ""), oid=values.get("oid", ""),
                      feed=values.get("feed", ""))


def _limit(request: Request) -> int:
    return min(request.app.state.settings.max_body, MAX_BYTES)


async def _read(request: Request) -> bytes:
    limit = _limit(request)
    try:
        raw = await request.body()
    except BodyTooLarge:  # chunked upload past the hub's limit (the middleware counts)
        raise Refused(413, "AR", f"The request body exceeds the limit of {limit} bytes", "v3.too-large") from None
    if len(raw) > limit:
        raise Refused(413, "AR", f"The request body exceeds the limit of {limit} bytes", "v3.too-large",
                      raw[:4096])
    return raw


def _log(interaction: str, message_id: str, code: str, rule: str = "", extra: str = "") -> None:
    # interaction, message id, outcome, rule id: no message content (it holds personal data)
    log.info("v3 %s message=%s -> %s%s%s", interaction or "?", message_id[:64] or "?", code,
             f" rule={rule}" if rule else "", f" {extra}" if extra else "")


@router.post("/v3", name="hl7v3-interaction")
async def v3_interaction(request: Request) -> Response:
    media = _media_type(request)
    if media not in MEDIA_TYPES:
        _log("", "", "AR", "v3.content-type")
        return ack_response(None, "AR", f"Content-Type {media or '(none)'!r} is not supported; send "
                            "application/xml, text/xml or application/hl7-v3+xml", 415)
    reply_type = media
    ctype, action = request.headers.get("content-type", ""), request.headers.get("soapaction")
    try:
        raw = await _read(request)
    except Refused as r:
        _log("", "", r.code, r.rule)
        ns = soap.requested(ctype, action, r.head)
        if ns is not None:  # a SOAP sender reads a Fault, not an MCCI
            status, body = soap.fault(ns, r.text)
            return xml_response(body, status, soap.MEDIA[ns])
        return ack_response(None, r.code, r.text, r.status, reply_type)
    raw = declare_charset(raw, ctype)
    try:  # a SOAP envelope: the message inside it, the answer back in one like it
        env = soap.unwrap(raw, soap.requested(ctype, action, raw[:4096]))
    except soap.NotAMessage as e:
        return await run_in_threadpool(_fault, request, raw, e)
    # the service called, where several share an interaction: ?service=…, or the SOAP action
    service = request.query_params.get("service", "")[:200]
    if env is not None:
        request.state.v3_envelope = raw  # what a refusal keeps: the request as it came
        raw, reply_type = env.message, "application/xml"
        service = service or env.action
    try:
        answer = await run_in_threadpool(_handle, request, raw, reply_type, service)
    except TRANSIENT as e:
        if (failure := storage_failure(e)) is not None:  # as the REST API: 507, said so
            log.error("v3: event store out of space: %s", failure)
            answer = ack_response(raw, "AE", STORE_FULL, 507, reply_type)
        else:
            log.warning("v3: event store unavailable: %s: %s", type(e).__name__,
                        str(e).strip().partition("\n")[0][:300])
            answer = ack_response(raw, "AE", "The hub's store is unavailable or busy; retry "
                                  "shortly", 503, reply_type, {"Retry-After": "1"})
    except Exception:
        log.exception("v3: unhandled error")  # as the REST API: the request content is not logged
        # kept like any refusal, to replay once the cause is fixed: a bare 500 made senders
        # resend it for ever, and the hub kept nothing of it
        try:
            answer = await run_in_threadpool(
                _kept, request, raw, _source(request), "AE",
                "the hub failed on this message (an internal error, logged)", "v3.internal",
                reply_type, _root_name(raw))
        except Exception:  # noqa: BLE001 - the quarantine too: the sender keeps it
            log.exception("v3: the failed message could not be kept")
            answer = ack_response(raw, "AE", "Internal server error", 500, reply_type)
    if env is None:
        return answer
    retry = answer.headers.get("retry-after")
    return xml_response(soap.wrap(env, bytes(answer.body)), answer.status_code, env.media_type,
                        {"Retry-After": retry} if retry else None)


@router.api_route("/v3/wsdl", methods=["GET", "HEAD"], name="hl7v3-wsdl")
def v3_wsdl(request: Request) -> Response:
    """The SOAP service description of ``POST /v3`` (also ``GET /v3?wsdl``)."""
    settings = request.app.state.settings
    base = settings.base_url.rsplit("/fhir", 1)[0] if settings.base_url else \
        str(request.base_url).rstrip("/")
    return xml_response(soap.wsdl(base + "/v3"), media_type="text/xml")


@router.api_route("/v3", methods=["GET", "HEAD"], name="hl7v3-wsdl-query")
def v3_wsdl_query(request: Request) -> Response:
    """``GET /v3?wsdl``, as SOAP clients ask for a service's description."""
    if "wsdl" not in request.query_params:
        return xml_response(b"<error>GET /v3?wsdl for the service description; POST v3 messages"
                            b"</error>", 400)
    return v3_wsdl(request)


def _handle(request: Request, raw: bytes, reply_type: str, service: str = "") -> Response:
    try:
        msg = parse(raw)  # well-formed, safe, v3 namespace, a known interaction, has an id
    except MappingError as e:
        _log("", "", e.code, e.rule or "")
        if _refused_writer(request) is not None:  # kept only from a sender that may write
            return ack_response(raw, e.code, e.reason + " (not kept: this caller does not "
                                "write)", 400, reply_type)
        # kept like every refusal: an interaction supported later is replayed then
        return _kept(request, raw, _source(request), e.code, e.reason, e.rule or "", reply_type,
                     _root_name(raw))
    spec = interactions()[msg.interaction]
    if spec["kind"] == "query":
        return _query(request, raw, msg.interaction, reply_type, service)
    return _register(request, raw, msg, reply_type)


def _refused_writer(request: Request) -> FhirError | None:
    """Why the caller may not write a registration (None: it may). Only what a writer sent is
    kept for replay: a replay writes as the hub itself."""
    try:
        authorize(request, Action("create", "Patient"))
    except FhirError as e:
        return e
    return None


def _root_name(raw: bytes) -> str | None:
    """What a message's root element says it is (its local name), if it can be read safely."""
    try:
        root = parse_xml(raw)
    except MappingError:
        return None
    return etree.QName(root).localname[:80]


def _quarantine(request: Request) -> Any:
    documents = getattr(request.app.state, "documents", None)
    return documents.quarantine if documents is not None else None


def _kept(request: Request, raw: bytes, source: SourceInfo, code: str, text: str, rule: str,
          reply_type: str, interaction: str | None = None) -> Response:
    """The AE/AR of a refused message, kept in the quarantine for replay first (the whole SOAP
    envelope it came in, if it came in one: what the sender sent, replayed as such)."""
    quarantine = _quarantine(request)
    if quarantine is not None:
        try:
            qid = v3intake.keep(quarantine, getattr(request.state, "v3_envelope", raw), source,
                                code, text, rule, interaction)
        except QuarantineFull as full:  # not kept: the sender must send it again later
            return ack_response(raw, "AE", f"{text}; {full.issues[0].diagnostics}", 429,
                                reply_type, {"Retry-After": "60"})
        text += f" (kept for replay as quarantine entry {qid})"
    return ack_response(raw, code, text, 200, reply_type)


def _fault(request: Request, raw: bytes, e: soap.NotAMessage) -> Response:
    """The SOAP Fault of a SOAP request without a message the hub can read, the request kept in
    the quarantine first, as an unreadable bare message is (from a sender that may write)."""
    _log("", "", "AR", e.rule)
    text, code = e.text, e.fault
    quarantine = _quarantine(request)
    if _refused_writer(request) is not None:
        text += " (not kept: this caller does not write)"
    elif quarantine is not None:
        try:
            qid = v3intake.keep(quarantine, raw, _source(request), "AR", e.text, e.rule)
            text += f" (kept for replay as quarantine entry {qid})"
        except QuarantineFull as full:  # not kept: the sender must send it again later
            text, code = f"{text}; {full.issues[0].diagnostics}", "Receiver"
    status, body = soap.fault(e.ns, text, code, e.not_understood)
    return xml_response(body, status, soap.MEDIA[e.ns],
                        {"Retry-After": "60"} if code == "Receiver" else None)


@router.api_route("/v3/metadata", methods=["GET", "HEAD"], name="hl7v3-capabilities")
def v3_capabilities(request: Request) -> Response:
    """The v3 interactions: those the hub answers (service, name, kind, response), those it has
    received without supporting them (kept in the quarantine: how many, the latest), and the
    platforms' service catalogue, each service marked supported or not."""
    authorize(request, Action("operation", None, None, "$v3-metadata"))
    supported = [{"interaction": i, "service": spec.get("service"), "name": spec.get("name"),
                  "kind": spec.get("kind"), "response": spec.get("response") or
                  interactions_tables("interactions")["ack"], "supported": True}
                 for i, spec in interactions().items()]
    received = []
    quarantine = _quarantine(request)
    if quarantine is not None:
        known = set(interactions())
        received = [{"interaction": i, "supported": False, "received": n, "latest": t}
                    for i, n, t in quarantine.counts_by(v3intake.KIND, "interaction")
                    if i not in known]
    handlers = {spec.get("handler") for spec in interactions().values()}
    by_service = interactions_tables("interactions").get("service_queries") or {}
    handlers |= set(by_service)
    catalogue = [{"family": family, "family_name": f["name"], "service": svc["name"],
                  "interaction": svc["interaction"],
                  "supported": bool(svc.get("covered")) and svc["covered"] in handlers,
                  # answered only when the sender names the service (POST /v3?service=…)
                  **({"named_by": "service"} if svc.get("covered") in by_service else {})}
                 for family, f in interactions_tables("catalogue")["families"].items()
                 for svc in f["services"]]
    body = {"transport": {"post": "/v3", "media_types": list(MEDIA_TYPES), "wsdl": "/v3/wsdl"},
            "interactions": supported + received, "catalogue": catalogue}
    return Response(orjson.dumps(body), media_type="application/json")


# -- registrations, updates, merges -----------------------------------------------------------------

def _institution(msg: Any, source: SourceInfo) -> str:
    """The institution the mapper decides on (for the events' source metadata)."""
    try:
        return Ctx(msg, source, hl7v3._org_code(msg)).inst
    except MappingError:
        return source.institution


def _register(request: Request, raw: bytes, msg: Any, reply_type: str) -> Response:
    source = _source(request)
    mid = msg.message_id
    repo = repository(request)
    stored_maps = getattr(request.app.state, "normaliser", None)
    rid = request.headers.get("x-request-id")
    ctx = Context(request_id=rid[:64]) if rid and rid.isprintable() else Context()
    ctx.actor = actor_of(request)
    # the message's own institution, unless the token says whose it is
    claimed = _institution(msg, source) or source.institution
    institution = recorded_institution(request, claimed) or claimed
    ctx.source = {"institution": institution, "feed": source.feed or "v3", "messageId": mid[:128]}

    def refuse(code: str, text: str, rule: str) -> Response:
        _log(msg.interaction, mid, code, rule)
        # kept for replay (hub quarantine replay), as documents are
        return _kept(request, raw, source, code, text, rule, reply_type, msg.interaction)

    def forbidden(e: FhirError) -> Response:
        # never kept: a replay writes as the hub itself, which would carry out what this caller
        # may not do (a registration from a reader, a record of another institution)
        _log(msg.interaction, mid, "AR", "v3.forbidden")
        return ack_response(raw, "AR", _issues(e), e.status, reply_type)

    refused = _refused_writer(request)  # a registration writes: checked before anything
    if refused is not None:
        return forbidden(refused)
    try:
        conv, results = v3intake.register(repo, raw, source, ctx,
                                          stored_maps() if stored_maps is not None else None, now())
    except MappingError as e:
        text = e.reason + (f" ({e.location})" if e.location and e.code == "AE" else "")
        return refuse(e.code, text, e.rule or "")
    except FhirError as e:
        if e.status in TRANSIENT_STATUS:
            _log(msg.interaction, mid, "AE", "v3.hub-busy")
            return ack_response(raw, "AE", "The hub is busy: " + _issues(e) + "; retry", 503,
                                reply_type, {"Retry-After": "1"})
        if e.status in (401, 403):
            return forbidden(e)
        return refuse("AE", "The hub refused the message: " + _issues(e), "v3.hub-refused")
    written = [r for r in results if isinstance(r, Result)]
    routes = getattr(request.app.state, "routes", None)
    if routes is not None:  # for the subscribers, before the AA: acknowledged is routed
        patient, kinds = v3intake.route_keys(conv)
        try:
            routes.accept(institution, msg.interaction, mid, patient, kinds, raw)
        except sqlite3.Error as e:
            _log(msg.interaction, mid, "AE", "v3.routing-unavailable")
            return ack_response(raw, "AE", f"The message is stored but could not be kept for its "
                                f"subscribers ({e}); send it again", 503, reply_type,
                                {"Retry-After": "5"})
    _log(msg.interaction, mid, "AA", extra=f"resources={len(written)} findings={len(conv.findings)}")
    return ack_response(raw, "AA", _summary(written, conv), 200, reply_type, details=conv.findings)


def _summary(written: list[Result], conv: Conversion) -> str:
    """The AA detail: what the message became (references and versions, no personal data)."""
    refs = ", ".join(f"{r.rtype}/{r.rid}/_history/{r.version}" for r in written if r.version is not None)
    text = f"accepted {conv.kind} {conv.unit_id}: {refs}"
    warn = sum(1 for f in conv.findings if f.severity in ("error", "warning"))
    if warn:
        text += f"; {warn} data-quality finding(s)"
    return text


def _issues(e: FhirError) -> str:
    return "; ".join(
        (f"{i.expression}: " if i.expression else "") + i.diagnostics for i in e.issues) or str(e)


# -- queries ----------------------------------------------------------------------------------------

def _bare_query(raw: bytes, interaction: str, service: str) -> dict[str, Any]:
    """Enough of a parsed query to answer it with AE when its criteria cannot be read."""
    spec = service_spec(interaction, service)
    types = spec["resource"] if isinstance(spec["resource"], list) else [spec["resource"]]
    return {"interaction": interaction, "response_interaction": spec["response"],
            "handler": spec["handler"], "resource_type": types[0], "resource_types": types,
            "header": request_header(raw), "query_id": {}, "echo": None}


def _query(request: Request, raw: bytes, interaction: str, reply_type: str, service: str
           ) -> Response:
    source = _source(request)
    qsource = SourceInfo(institution=source.institution or "query", oid=source.oid, feed=source.feed)

    def answer(q: dict, resources: list[dict], *, error: str | None = None, total: int | None = None,
               status: int = 200, headers: dict | None = None) -> Response:
        body = hl7v3.respond(q, resources, now=now(), message_id=str(uuid.uuid4()), error=error,
                             total=total)
        return xml_response(body, status, reply_type, headers)

    try:
        q = hl7v3.parse_query(raw, qsource, service)
    except MappingError as e:
        _log(interaction, "", e.code, e.rule or "")
        if e.code == "AR":
            return ack_response(raw, "AR", e.reason, 200, reply_type)
        return answer(_bare_query(raw, interaction, service), [], error=e.reason)
    mid = (q["header"].get("message_id") or {}).get("extension") or \
        (q["header"].get("message_id") or {}).get("root") or ""
    criteria = [(k, v) for k, v in q["params"] if k != "_count"]
    if not criteria:
        _log(interaction, mid, "AE", "v3.query.no-criteria")
        return answer(q, [], error="The query names no criteria: the hub does not list whole registries")
    try:
        resources, total = _search(request, q)
    except FhirError as e:
        if e.status in TRANSIENT_STATUS:
            return answer(q, [], error="The hub is busy; retry", status=503, headers={"Retry-After": "1"})
        _log(interaction, mid, "AE", "v3.query.unsupported")
        return answer(q, [], error="The query cannot be answered: " + _issues(e))
    n = sum(1 for r in resources if r.get("resourceType") in q["resource_types"])
    _log(interaction, mid, "AA", extra=f"matches={n} total={total}")
    return answer(q, resources, total=total)


def _search(request: Request, q: dict[str, Any]) -> tuple[list[dict], int | None]:
    """Run the query's FHIR searches (one per resource type it answers with): (matches + what
    the response needs beside them, total; None when one search's total is unknown)."""
    resources: list[dict] = []
    total: int | None = 0
    for rtype, params in q["searches"]:
        found, n = _search_one(request, q, rtype, params)
        resources += found
        total = None if n is None or total is None else total + n
    return resources, total


def _search_one(request: Request, q: dict[str, Any], rtype: str, params: list
                ) -> tuple[list[dict], int | None]:
    repo, ctx = repository(request), context_of(request, feed="v3")
    settings = request.app.state.settings
    filters = POST_FILTERS.get(rtype, {})
    post = [(k, v) for k, v in params if k in filters]
    others = set(q["resource_types"]) - {rtype}  # includes from the other searched types
    params = [(k, v) for k, v in params if k not in filters] + [
        (k, v) for k, v in INCLUDES.get(q["handler"], []) if v.split(":", 1)[0] not in others]
    base = (settings.base_url or str(request.base_url).rstrip("/") + "/fhir").rstrip("/")
    # strict: an ignored criterion would widen it
    plan = repo.plan(ctx, rtype, params, True, base)
    wanted = min(plan.count if plan.count is not None else settings.default_count, settings.max_count)
    page = repo.search(ctx, plan, settings.max_count if post else wanted, "accurate", base,
                       includes=False).page
    matches = []
    for row in page.rows:
        d = _load(repo, ctx, row.rtype, row.rid)
        if d is not None and all(filters[k](d, v) for k, v in post):
            matches.append(d)
    total = page.total
    if post:  # filtered here: the total is known only when every candidate was seen
        total = len(matches) if page.next_cursor is None else None
        keep = {m["id"] for m in matches[:wanted]}
        rows = [r for r in page.rows if r.rid in keep]
        matches = matches[:wanted]
    else:
        rows = page.rows
    resources = list(matches)
    for row in repo.included(ctx, rows, plan.include, plan.revinclude, base=base):
        d = _load(repo, ctx, row.rtype, row.rid)
        if d is not None:
            resources.append(d)
    if q["handler"] == "document_retrieve":
        resources += _binaries(repo, ctx, resources)
    return resources, total


def _load(repo: Repository, ctx: Context, rtype: str, rid: str) -> dict | None:
    stored = repo.latest(ctx, rtype, rid)
    if stored is None or stored.topic.endswith("Deleted"):
        return None  # changed since the index row was read
    return orjson.loads(resource_bytes(stored))


def _date_filter(element: str):
    """A FHIR date criterion (``ge``/``le``/``gt``/``lt``/``eq`` + date) on ``element``, for a search
    parameter R4 does not define (a partial date is the period it spans)."""
    def match(d: dict, value: str) -> bool:
        have = d.get(element)
        if not isinstance(have, str) or not have:
            return False
        prefix, date = (value[:2], value[2:]) if value[:2] in ("ge", "le", "gt", "lt", "eq") else ("eq", value)
        low, high = _span(have)
        qlow, qhigh = _span(date)
        return {"ge": high >= qlow, "gt": high > qhigh, "le": low <= qhigh, "lt": low < qlow,
                "eq": low <= qhigh and high >= qlow}[prefix]
    return match


def _span(date: str) -> tuple[str, str]:
    date = date[:10]
    return (date + "-01-01"[len(date) - 4:] if len(date) < 10 else date,
            date + "-12-31"[len(date) - 4:] if len(date) < 10 else date)


# v3 criteria that have no R4 search parameter: applied to the candidates the search found
POST_FILTERS: dict[str, dict[str, Any]] = {
    "Practitioner": {"birthdate": _date_filter("birthDate")},  # R4 Practitioner has no birthdate
}


def _binaries(repo: Repository, ctx: Context, resources: list[dict]) -> list[dict]:
    """The Binary each retrieved DocumentReference points to (``content.attachment.url``); its data is
    also put on the attachment, so the response carries the document whatever form the URL has."""
    out = []
    for doc in resources:
        if doc.get("resourceType") != "DocumentReference":
            continue
        for content in doc.get("content") or []:
            att = content.get("attachment") or {}
            url = att.get("url") or ""
            if att.get("data") or "Binary/" not in url:
                continue
            bid = url.rsplit("Binary/", 1)[1].split("/")[0]
            try:
                binary = orjson.loads(resource_bytes(repo.read(ctx, "Binary", bid)))
            except FhirError:
                continue  # unknown or deleted: the response says the content is not available
            if binary.get("data"):
                att["data"] = binary["data"]
            out.append(binary)
    return out


__all__ = ["router", "too_large", "MEDIA_TYPES"]
