"""Logging in to the console with an external OpenID Connect provider: the authorization code
flow with PKCE (RFC 7636, S256), for a region whose staff already have an identity provider.

Configured by ``HUB_CONSOLE_OIDC_ISSUER`` (the provider, found by its discovery document),
``HUB_CONSOLE_OIDC_CLIENT_ID`` and, for a confidential client, ``HUB_CONSOLE_OIDC_CLIENT_SECRET``;
the hub's roles are read from the ID token's ``HUB_AUTH_ROLES_CLAIM`` and the person's institution
from its ``HUB_AUTH_INSTITUTION_CLAIM`` (dotted paths, as for API tokens). The redirect URI to
register with the provider is ``<hub>/console/oidc/callback`` (on ``HUB_BASE_URL`` when set).

``/console/oidc/start`` keeps the flow's state, nonce and code verifier in a short-lived,
hub-signed, HttpOnly cookie (SameSite=Lax: the provider's redirect back is a cross-site
navigation) and sends the browser to the provider; ``/console/oidc/callback`` checks the state,
redeems the code with the verifier, verifies the ID token (signature by the provider's key set,
issuer, audience, expiry, nonce) and opens a console session like a local login. A person whose
token carries none of the hub's roles a console page is for is refused: the provider says who they are, the roles say
what they may do.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
import jwt
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.auth.clients import ROLES
from hub.auth.discovery import provider_metadata
from hub.auth.sessions import ISSUER
from hub.auth.verifier import Verifier, claim_at, institution_at
from hub.console.common import CONSOLE_ROLES, NO_CONSOLE_ROLE, page, public_url, router, safe_next, secure_cookies, start_session
from hub.core import httpclient
from hub.core.errors import FhirError

FLOW_COOKIE = "hub_console_oidc"
FLOW_AUDIENCE = "hub-console-oidc"
FLOW_S = 600  # the time a person has at the provider
TIMEOUT_S = 10.0


def configured(request: Request) -> bool:
    return bool(request.app.state.settings.console_oidc_issuer)


def _redirect_uri(request: Request) -> str:
    """``<hub>/console/oidc/callback``, as registered with the provider: built from the hub's
    public base URL (behind a proxy that ends TLS, the request itself is http)."""
    return public_url(request, "/console/oidc/callback")


def _discovery(request: Request) -> dict[str, Any]:
    """The provider's metadata (fetched once per process) and a client for its key set."""
    state = request.app.state
    found = getattr(state, "console_oidc", None)
    if found is None:
        meta = provider_metadata(state.settings.console_oidc_issuer, timeout_s=TIMEOUT_S, needs=(
            "authorization_endpoint", "token_endpoint", "jwks_uri", "issuer"))
        found = state.console_oidc = {**meta, "keys": jwt.PyJWKClient(meta["jwks_uri"],
                                                                      timeout=int(TIMEOUT_S))}
    return found


def _flow_verifier(request: Request) -> Verifier:
    state = request.app.state
    if getattr(state, "console_oidc_flow", None) is None:
        state.console_oidc_flow = Verifier(FLOW_AUDIENCE, own=state.auth_signer, issuer=ISSUER)
    return state.console_oidc_flow


@router.get("/console/oidc/start", name="console-oidc-start", include_in_schema=False)
async def start(request: Request) -> Response:
    if not configured(request):
        raise FhirError(404, "not-found", "No identity provider is configured for the console")
    meta = await run_in_threadpool(_discovery, request)
    settings = request.app.state.settings
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()
    flow = {"iss": ISSUER, "aud": FLOW_AUDIENCE, "state": secrets.token_urlsafe(24),
            "nonce": secrets.token_urlsafe(24), "verifier": verifier,
            "next": safe_next(request.query_params.get("next", ""))}
    query = urlencode({"response_type": "code", "client_id": settings.console_oidc_client_id,
                       "redirect_uri": _redirect_uri(request), "scope": "openid profile",
                       "state": flow["state"], "nonce": flow["nonce"],
                       "code_challenge": challenge, "code_challenge_method": "S256"})
    response = RedirectResponse(f"{meta['authorization_endpoint']}?{query}", 303)
    response.set_cookie(FLOW_COOKIE, request.app.state.auth_signer.issue(flow, FLOW_S),
                        max_age=FLOW_S, httponly=True, samesite="lax",
                        secure=secure_cookies(request), path="/console/oidc")
    return response


def _refused(request: Request, why: str) -> Response:
    response = page(request, "login.html", "login", failed=False, oidc=configured(request),
                    oidc_error=why, next="/console/overview")
    response.status_code = 403
    response.delete_cookie(FLOW_COOKIE, path="/console/oidc")
    return response


@router.get("/console/oidc/callback", name="console-oidc-callback", include_in_schema=False)
async def callback(request: Request) -> Response:
    if not configured(request):
        raise FhirError(404, "not-found", "No identity provider is configured for the console")
    q = request.query_params
    try:
        flow = _flow_verifier(request).verify(request.cookies.get(FLOW_COOKIE) or "")
    except FhirError:
        return _refused(request, "the login took too long or did not start here; try again")
    if not secrets.compare_digest(str(q.get("state") or ""), str(flow.get("state") or "")):
        return _refused(request, "the answer is not for this login (state)")
    if q.get("error"):
        return _refused(request, f"the identity provider refused: {str(q['error'])[:100]}")
    code = str(q.get("code") or "")
    if not code:
        return _refused(request, "the identity provider sent no code")
    try:
        claims = await run_in_threadpool(_redeem, request, code, flow)
    except FhirError as e:
        return _refused(request, e.issues[0].diagnostics if e.issues else "login failed")
    settings = request.app.state.settings
    roles = claim_at(claims, settings.auth_roles_claim)
    roles = [r for r in (roles if isinstance(roles, list) else [roles]) if r in ROLES]
    if not CONSOLE_ROLES.intersection(roles):
        return _refused(request, NO_CONSOLE_ROLE)
    # the institution is read from the claim the API's tokens carry it in, alike
    institution = institution_at(claims, settings.auth_institution_claim)
    # the person is the provider's subject with that provider (its issuer), as an API token of
    # it is: a subject equal to a hub user's is someone else
    issuer = str(claims["iss"])
    subject = str(claims["sub"])[:128]
    issuer_host = urlparse(issuer).netloc or issuer
    fhir_user = f"oidc:{issuer_host}:{subject}"[:200]
    name = str(claims.get("name") or claims.get("preferred_username") or claims["sub"])[:200]
    # not a redirect: the navigation the provider started is cross-site, and a browser sends no
    # SameSite=Strict cookie (the session's) anywhere along it; this page's own step is same-site
    response = page(request, "signed_in.html", "login", next=safe_next(str(flow.get("next") or "")))
    await run_in_threadpool(start_session, request, response, subject, name, roles, None,
                            fhir_user, institution, issuer)
    response.delete_cookie(FLOW_COOKIE, path="/console/oidc")
    return response


def _signing_key(keys: jwt.PyJWKClient, token: str) -> Any:
    """The provider's key for ``token``: by its ``kid``, or the one signing key of a provider
    that names none (its key set then holds one)."""
    kid = jwt.get_unverified_header(token).get("kid")
    if kid:
        return keys.get_signing_key(kid).key
    found = keys.get_signing_keys()
    if len(found) != 1:
        raise jwt.InvalidTokenError("the ID token names no key and the provider has several")
    return found[0].key


def _redeem(request: Request, code: str, flow: dict[str, Any]) -> dict[str, Any]:
    """The ID token's claims for ``code``, verified."""
    settings = request.app.state.settings
    meta = _discovery(request)
    form = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": _redirect_uri(request), "client_id": settings.console_oidc_client_id,
            "code_verifier": flow["verifier"]}
    auth = (settings.console_oidc_client_id, settings.console_oidc_client_secret) \
        if settings.console_oidc_client_secret else None
    try:
        r = httpclient.post(meta["token_endpoint"], data=form, auth=auth, timeout=TIMEOUT_S)
    except httpx.HTTPError as e:
        raise FhirError(502, "transient", f"The identity provider did not answer: {e}") from None
    if r.status_code != 200:
        raise FhirError(403, "forbidden", f"The identity provider refused the code "
                                          f"({r.status_code}: {r.text[:200]})")
    id_token = (r.json() or {}).get("id_token")
    if not isinstance(id_token, str):
        raise FhirError(403, "forbidden", "The identity provider sent no ID token")
    try:
        claims = jwt.decode(id_token, _signing_key(meta["keys"], id_token), algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                            audience=settings.console_oidc_client_id, issuer=meta["issuer"],
                            options={"require": ["exp", "iat", "sub", "iss", "aud"]})
    except jwt.PyJWTError as e:
        raise FhirError(403, "forbidden", f"The ID token is not valid: {e}") from None
    if not secrets.compare_digest(str(claims.get("nonce") or ""), str(flow["nonce"])):
        raise FhirError(403, "forbidden", "The ID token is not for this login (nonce)")
    return claims
