"""Who is calling: the one place a request becomes a ``Context`` with its ``Actor``.

Handlers never read identity headers themselves; they take ``context_of(request)`` and hand it to
the repository, which asks the access policy. Without authentication configured the actor is
named by ``X-Hub-User`` (else ``anonymous``) and its purpose by ``X-Purpose-Of-Use``: claims, not
proof, which is why the open policy is the only one that trusts them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from hub.api.limits import REFUSAL
from hub.api.traffic import client_address
from hub.auth.sessions import COOKIE, session_log, session_verifier
from hub.auth.verifier import RevokedClient
from hub.core.access import ANONYMOUS, Action, Actor
from hub.core.errors import LOGIN_REQUIRED, FhirError, bad_request, unauthenticated
from hub.core.ingest import Context
from hub.repository import Repository, patient_data_types

_USER = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")

# the v3 PurposeOfUse codes (http://terminology.hl7.org/CodeSystem/v3-ActReason)
PURPOSES = frozenset({
    "TREAT", "ETREAT", "CAREMGT", "CLINTRL", "COC", "HPAYMT", "CLMATTCH", "COVAUTH", "COVERAGE",
    "HOPERAT", "HSYSADMIN", "HMARKT", "HRESCH", "PATRQT", "FAMRQT", "PWATRNY", "SUPNWK",
    "PUBHLTH", "DISASTER", "THREAT", "HDIRECT", "HLEGAL", "HQUALIMP", "HACCRED", "HCOMPL",
    "HDM", "HOUTCOMS", "HPRGRP", "HTEST", "TRAIN", "BTG", "ERTREAT", "POPHLTH", "PATADMIN",
    "PATSFTY", "DONAT", "METAMGT", "SYSDEV", "RECORDMGT",
})


def user_of(request: Request) -> str:
    u = request.headers.get("x-hub-user")
    if u and _USER.match(u) and u.strip():
        return u.strip()
    return "anonymous"


def purpose_of(request: Request) -> str | None:
    p = request.headers.get("x-purpose-of-use")
    if p is None:
        return None
    p = p.strip().upper()
    if p not in PURPOSES:
        raise bad_request("X-Purpose-Of-Use must be a v3 PurposeOfUse code such as TREAT, "
                          "ETREAT, HPAYMT, HOPERAT, PUBHLTH, HRESCH or PATRQT")
    return p


def actor_of(request: Request) -> Actor:
    """The caller: from its bearer token when access control is on (verified once per request),
    else the claims of the headers."""
    known = getattr(request.state, "actor", None)
    if known is not None:
        return known
    if request.url.path.startswith("/console"):
        actor = _from_console_session(request)
        request.state.actor = actor
        return actor
    verifier = getattr(request.app.state, "auth_verifier", None)
    actor = _from_token(request, verifier) if verifier is not None else _from_headers(request)
    request.state.actor = actor
    return actor


def _from_token(request: Request, verifier: Any) -> Actor:
    header = request.headers.get("authorization")
    if not header:
        return ANONYMOUS  # refused by the policy wherever it reaches data
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("Authorization must be a bearer token")
    claims = verifier.verify(token.strip())
    scope = claims.get("scope")
    roles = claims.get("hub_roles")
    institution = claims.get("hub_institution")
    oid = claims.get("hub_institution_oid")
    patient = claims.get("patient")
    patient = patient if isinstance(patient, str) and patient else None
    fhir_user = claims.get("fhirUser")
    return Actor(subject=str(claims.get("sub") or claims.get("client_id") or "unknown")[:128],
                 kind="user" if claims.get("fhirUser") else "client",
                 roles=frozenset(r for r in roles if isinstance(r, str))
                 if isinstance(roles, list) else frozenset(),
                 scopes=in_context(scope.split() if isinstance(scope, str) else (), patient),
                 institution=institution if isinstance(institution, str) and institution else None,
                 oid=oid if isinstance(oid, str) and oid and isinstance(institution, str)
                 and institution else None,
                 purpose=purpose_of(request), patient=patient,
                 fhir_user=fhir_user if isinstance(fhir_user, str)
                 and 0 < len(fhir_user) <= 1024 else None,
                 issuer=verifier.external_issuer(claims))


def in_context(scopes: Iterable[str], patient: str | None) -> tuple[str, ...]:
    """The scopes a token holds that grant anything: a ``patient/`` scope is about the patient
    in context, so without a ``patient`` claim it grants nothing (it granted the whole region,
    as a ``system/`` scope would)."""
    return tuple(s for s in scopes if patient is not None or not s.startswith("patient/"))


def _from_console_session(request: Request) -> Actor:
    """The person logged in to the console: its session cookie (``hub.console``), a hub-signed
    token for the console's audience alone; the same roles and scopes as any token. Whether or
    not the API's access control is on, the console is for people who logged in."""
    token = request.cookies.get(COOKIE)
    if not token:
        return ANONYMOUS
    try:
        claims = session_verifier(request.app.state).verify(token)
    except FhirError:
        return ANONYMOUS  # expired or from another key: log in again
    sid = claims.get("sid")
    if not isinstance(sid, str) or not session_log(request.app.state).live(sid):
        return ANONYMOUS  # logged out, or its user disabled since: log in again
    request.state.console_claims = claims
    roles = claims.get("hub_roles")
    # the institution as an API token's (``hub_institution``, read as ``_from_token`` reads
    # it): a person without one is judged as a token without one is, by the same policy, so a
    # consent denying an institution holds for them too (they could be of it)
    institution = claims.get("hub_institution")
    # a person an identity provider signed in is that provider's subject (``hub_issuer``)
    issuer = claims.get("hub_issuer")
    return Actor(subject=str(claims.get("sub"))[:128], kind="user",
                 roles=frozenset(r for r in roles if isinstance(r, str))
                 if isinstance(roles, list) else frozenset(),
                 scopes=in_context(str(claims.get("scope") or "").split(), None),
                 institution=institution if isinstance(institution, str) and institution
                 else None, purpose=None,
                 issuer=issuer if isinstance(issuer, str) and issuer else None)


def _from_headers(request: Request) -> Actor:
    user = user_of(request)
    purpose = (request.headers.get("x-purpose-of-use") or "").strip().upper()
    if user == "anonymous" and not purpose:
        return ANONYMOUS
    return Actor(subject=user, kind="anonymous" if user == "anonymous" else "user",
                 purpose=purpose if purpose in PURPOSES else None)


def context_of(request: Request, feed: str = "rest") -> Context:
    """The request's context: its id (``X-Request-Id``), the source its writes are recorded
    under and its actor."""
    rid = request.headers.get("x-request-id")
    ctx = Context(request_id=rid[:64]) if rid and rid.isprintable() else Context()
    ctx.source = {"feed": feed}
    # a connector names its institution and feed (recorded in each event's source, shown by
    # `hub history`); with access control on, the institution is the token's, never a header's
    ctx.actor = actor_of(request)
    for header, key in (("x-hub-source-institution", "institution"), ("x-hub-source-feed", "feed")):
        value = request.headers.get(header)
        if value and value.isprintable():
            ctx.source[key] = value[:128]
    institution = recorded_institution(request, ctx.source.pop("institution", None))
    if institution:
        ctx.source["institution"] = institution
    ctx.address = address_of(request)
    ctx.query = audited_query(request)
    return ctx


# what a request's query holds that the audit must not: the console's break-the-glass value (a
# session's secret, good for that session's emergency reads)
UNAUDITED_PARAMS = frozenset({"btg"})


def audited_query(request: Request) -> str:
    """The path and query a request is audited with: as asked, less ``UNAUDITED_PARAMS``."""
    query = request.url.query
    if query:  # names as the query's parser reads them (``b%74g`` is ``btg``)
        query = "&".join(p for p in query.split("&")
                         if unquote_plus(p.split("=", 1)[0]) not in UNAUDITED_PARAMS)
    return request.url.path + (f"?{query}" if query else "")


def repository(request: Request) -> Repository:
    return request.app.state.repo


# What anyone may call: the capability statement, discovery and the token endpoint, liveness and
# readiness, the API's own description and the v3 service's (WSDL). Every other route needs a valid token (then the policy
# decides what it may do).
PUBLIC_PATHS = frozenset({
    "/fhir/metadata", "/fhir/.well-known/smart-configuration", "/auth/token", "/auth/jwks",
    "/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/v3/wsdl",
    "/console/login",  # the console's login page and form (its pages need a session)
    "/console/oidc/start", "/console/oidc/callback",  # logging in with an identity provider
})


def _wsdl_query(request: Request) -> bool:
    """``GET /v3?wsdl``: the WSDL as SOAP tools fetch it, without credentials (``/v3/wsdl``
    is public); any other request to ``/v3`` needs a token."""
    return request.url.path == "/v3" and request.method in ("GET", "HEAD") \
        and request.url.query == "wsdl"


async def authenticate(request: Request) -> None:
    """Every route's first step: with access control on, no valid token, no answer (401); a
    caller over its rate, 429. The console's pages send a person without a session to its login
    page instead. A request the limits refused for a console page (``hub.api.limits``) is
    refused here, once the page knows who reads it."""
    limiter = getattr(request.app.state, "rate_limiter", None)
    refused = request.scope.get(REFUSAL)
    if request.url.path in PUBLIC_PATHS or _wsdl_query(request):
        if refused is not None:
            raise refused
        if request.url.path == "/auth/token":  # each answer checks a signature: per address
            _throttle(limiter, f"@{address_of(request)}")
        return
    try:
        actor = await _actor_off_loop(request) if _may_fetch(request) else actor_of(request)
    except FhirError as e:
        # a token that does not verify counts against its address: guessing tokens was free
        _throttle(limiter, f"@{address_of(request)}")
        _audit_refused(request, e)
        raise
    if request.url.path.startswith("/console") and actor.kind == "anonymous":
        raise LoginRequired(_return_to(request))
    if refused is not None:
        raise refused
    if authenticated(request) and actor.kind == "anonymous":
        _throttle(limiter, f"@{address_of(request)}")
        err = unauthenticated(LOGIN_REQUIRED)
        _audit_refused(request, err)
        raise err
    # a subject is unique with its issuer: an external provider's user whose ``sub`` equals a
    # hub client's id has a bucket of its own (an address key begins "@", a hub subject never
    # has a NUL)
    _throttle(limiter, f"{actor.issuer or ''}\0{actor.subject}" if actor.kind != "anonymous"
              else f"@{address_of(request)}")


def _may_fetch(request: Request) -> bool:
    """Whether the caller's token may make the hub fetch an identity provider's keys."""
    verifier = getattr(request.app.state, "auth_verifier", None)
    header = request.headers.get("authorization", "")
    return verifier is not None and header[:7].lower() == "bearer " and \
        not request.url.path.startswith("/console") and verifier.may_fetch(header[7:].strip())


async def _actor_off_loop(request: Request) -> Actor:
    # a provider's keys come over the network: fetched on the event loop, they held every
    # other request (health checks too) for as long as the provider took to answer
    return await run_in_threadpool(actor_of, request)


_INTERACTIONS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _audit_refused(request: Request, err: FhirError) -> None:
    """An attempt at patient data without a valid token is audited as refused, as one the
    policy refuses is (it left no trace: the README promises one for refused accesses). Only a
    path of a patient data type is: the audit is of patient data, and a flood at the base or
    elsewhere writes nothing (the address's rate limit holds the rest)."""
    repo = getattr(request.app.state, "repo", None)
    audit = getattr(repo, "audit", None)
    parts = request.url.path.split("/")
    if audit is None or len(parts) < 3 or parts[1] != "fhir" or \
            parts[2] not in patient_data_types():
        return
    rid = parts[3] if len(parts) > 3 and parts[3] and not parts[3].startswith(("$", "_")) \
        else None
    interaction = _INTERACTIONS.get(request.method) or ("read" if rid else "search-type")
    ctx = Context()
    # a revoked client's token verified: the client is known, and is who the audit names (the
    # claims of a token that did not verify are anyone's to write: anonymous)
    ctx.actor = Actor(subject=err.client_id, kind="client") \
        if isinstance(err, RevokedClient) else ANONYMOUS
    ctx.address = address_of(request)
    ctx.query = audited_query(request)
    try:
        audit.record(ctx, Action(interaction, parts[2], rid), "4", [], [],
                     err.issues[0].diagnostics if err.issues else None)
    except FhirError:
        pass  # the audit unavailable: the caller is refused all the same (401)


def _throttle(limiter: Any, key: str) -> None:
    """429 when ``key`` is over its rate (a token bucket per caller: token issuer and subject,
    else address); nothing without a limit."""
    if limiter is not None:
        wait = limiter.wait_for(key)
        if wait > 0:
            raise Throttled(wait)


def _return_to(request: Request) -> str:
    """Where a login should lead back to: the page asked for, or, for a form posted after the
    session ended (its action takes only POST), the page the form was on."""
    if request.method in ("GET", "HEAD"):  # with its query: the person or filter asked for
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    referer = urlsplit(request.headers.get("referer") or "")
    if referer.netloc == request.headers.get("host") and referer.path.startswith("/console"):
        return referer.path + (f"?{referer.query}" if referer.query else "")
    return "/console"


class LoginRequired(FhirError):
    """A console page asked for without a session: answered with its login page."""

    error_code = "refused"

    def __init__(self, path: str):
        super().__init__(401, "login", LOGIN_REQUIRED)
        self.path = path


class Throttled(FhirError):
    error_code = "unavailable"

    def __init__(self, wait: float):
        super().__init__(429, "throttled", "Too many requests from this caller; retry after "
                         f"{max(1, round(wait))} s")
        self.retry_after = max(1, round(wait + 0.5))


def address_of(request: Request) -> str | None:
    """The caller's network address (behind trusted proxies only, ``hub.api.traffic``)."""
    peer = request.client.host if request.client is not None else None
    proxies = getattr(request.app.state, "trusted_proxies", ())
    return client_address(peer, request.headers.get("x-forwarded-for"), proxies)


def recorded_institution(request: Request, claimed: str | None) -> str | None:
    """The institution a write is recorded under, given the one the request claims (its
    ``X-Hub-Source-Institution``, a message's own): the claim stands without access control, and
    for a platform administrator whose token names no institution (an operator loading or
    replaying data on an institution's behalf); otherwise it is the token's institution, never
    a claim (None when the token names none)."""
    if not authenticated(request):
        return claimed
    actor = actor_of(request)
    if "admin" in actor.roles and not actor.institution:
        return claimed
    return actor.institution


def authenticated(request: Request) -> bool:
    """Whether access control is on: callers are who their tokens say."""
    return getattr(request.app.state, "auth_verifier", None) is not None


def authorize(request: Request, action: Action) -> Context:
    """Check an action a route answers from its own service, not the repository; its context."""
    ctx = context_of(request)
    repository(request).authorize(ctx, action)
    return ctx
