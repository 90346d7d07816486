"""The token side of access control over HTTP (SMART Backend Services).

=============================================  =================================================
``POST /auth/token``                           client credentials with a signed JWT assertion ->
                                               an access token (OAuth JSON, ``no-store``)
``GET /auth/jwks``                             the public keys that sign the hub's access tokens
``GET /fhir/.well-known/smart-configuration``  SMART discovery: where the above are, what is
                                               supported
=============================================  =================================================

The URLs follow the FHIR base URL (``settings.base_url``, or the request's own ``…/fhir``): the
token endpoint and issuer live beside it (``{origin}/auth/token``, ``{origin}/auth``, where the
origin is the base URL without its ``/fhir``), and the base URL is the access tokens' audience.
Refusals of the token endpoint are OAuth error JSON (RFC 6749 section 5.2), not OperationOutcomes.

``attach`` puts the client registry (``auth.sqlite`` in the data directory) and the signer on
``app.state``; the router must be included before the FHIR routes, which would otherwise read
``/fhir/.well-known/…`` as a resource type and id.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api.responses import base_url
from hub.auth.clients import open_registry
from hub.auth.tokens import ASSERTION_ALGORITHMS, OAuthError, Signer, issue_for_client
from hub.core.config import Settings

__all__ = ["MAX_FORM_BYTES", "SCOPES_SUPPORTED", "TOKEN_TTL_S", "attach", "detach", "endpoints", "router"]

router = APIRouter()
TOKEN_TTL_S = 300
MAX_FORM_BYTES = 64 * 1024  # a token request is a few kilobytes
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM = "application/x-www-form-urlencoded"
# what a client may ask for; each is granted within what its registration allows
SCOPES_SUPPORTED = ["system/*.cruds", "system/*.rs", "user/*.cruds", "user/*.rs", "patient/*.cruds",
                    "patient/*.rs"]


def attach(app: FastAPI, settings: Settings) -> None:
    """The client registry and the hub's signer on ``app.state`` (and the settings, when the
    application has none yet)."""
    app.state.auth_registry = open_registry(settings.data_dir)
    app.state.auth_signer = Signer(settings.data_dir)
    if getattr(app.state, "settings", None) is None:
        app.state.settings = settings


def detach(app: FastAPI) -> None:
    app.state.auth_registry = app.state.auth_signer = None


def endpoints(request: Request) -> dict[str, str]:
    """The FHIR base URL (``audience``), ``token_url``, ``issuer`` and ``jwks_uri`` as the caller
    reaches them."""
    fhir_base = base_url(request, request.app.state.settings.base_url)
    origin = fhir_base.removesuffix("/fhir") if fhir_base.endswith("/fhir") else _origin(fhir_base)
    return {"audience": fhir_base, "token_url": f"{origin}/auth/token", "issuer": f"{origin}/auth",
            "jwks_uri": f"{origin}/auth/jwks"}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


@router.post("/auth/token", name="auth-token")
async def token(request: Request) -> Response:
    try:
        form = await _read_form(request)
        where = endpoints(request)
        state = request.app.state
        answer = await run_in_threadpool(
            issue_for_client, form, state.auth_registry, state.auth_signer, where["token_url"],
            where["issuer"], where["audience"], TOKEN_TTL_S)
    except OAuthError as e:
        return _json(e.to_json(), e.status, _NO_STORE)
    return _json(answer, 200, _NO_STORE)


async def _read_form(request: Request) -> dict[str, str]:
    """The form parameters of a token request; each at most once (RFC 6749 section 3.2)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != _FORM:
        raise OAuthError(400, "invalid_request", f"The token request must be {_FORM}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError(400, "invalid_request", f"The token request is over {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise OAuthError(400, "invalid_request", "The token request is not UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError(400, "invalid_request", f"Parameter {name} is given more than once")
        form[name] = value
    return form


@router.get("/auth/jwks", name="auth-jwks")
async def jwks(request: Request) -> Response:
    keys = await run_in_threadpool(request.app.state.auth_signer.jwks)
    return _json(keys, headers={"Cache-Control": "public, max-age=300"})


@router.get("/fhir/.well-known/smart-configuration", name="smart-configuration")
async def smart_configuration(request: Request) -> Response:
    where = endpoints(request)
    return _json({
        "token_endpoint": where["token_url"],
        "jwks_uri": where["jwks_uri"],
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    })
