"""Access tokens for backend clients: the SMART Backend Services grant (client credentials with a
signed JWT assertion, RFC 7523) and, re-exported here, the signer and the verifier.

``issue_for_client`` is the token endpoint's logic. The client proves who it is with a short-lived
JWT signed by a key it registered (``hub auth client add``): ``iss`` and ``sub`` its client_id,
``aud`` the token URL, ``exp`` at most five minutes ahead, a ``jti`` it never used before. It is
granted what it asks for within what it is allowed (``scopes.narrow``), in an access token the
hub signs (``Signer``) that carries its roles and institution. A refusal is an ``OAuthError``,
answered as OAuth error JSON (RFC 6749 section 5.2): authentication failures of any kind are
``invalid_client`` (401), as the SMART specification asks, so that they tell an attacker nothing.
"""

from __future__ import annotations

import logging
import time

import jwt

from hub.auth.clients import Client, ClientRegistry
from hub.auth.jose import ASSERTION_ALGORITHMS, CLOCK_SKEW_S, algorithms_for, describe, peek
from hub.auth.scopes import format_scopes, narrow, parse_scopes
from hub.auth.signer import Signer
from hub.auth.verifier import ExternalIssuer, Verifier
from hub.core.errors import FhirError

log = logging.getLogger("hub.auth")

__all__ = ["ASSERTION_ALGORITHMS", "ASSERTION_TYPE", "MAX_ASSERTION_LIFETIME_S", "ExternalIssuer",
           "OAuthError", "Signer", "Verifier", "access_claims", "issue_for_client"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300
_ISSUE_CODE = {400: "invalid", 401: "login", 403: "forbidden"}


class OAuthError(FhirError):
    """A refusal of the token endpoint: ``error`` is the OAuth error code (``invalid_request``,
    ``invalid_client``, ``invalid_grant``, ``invalid_scope``, ``unsupported_grant_type``),
    ``description`` says why, ``status`` is the HTTP status (400, or 401 for ``invalid_client``).
    A FhirError too, so that anywhere else it still answers as an OperationOutcome."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(status, _ISSUE_CODE.get(status, "invalid"), description)
        self.error = error
        self.description = description

    def to_json(self) -> dict:
        return {"error": self.error, "error_description": self.description}


def _invalid_client(description: str) -> OAuthError:
    return OAuthError(401, "invalid_client", description)


def issue_for_client(form: dict[str, str], registry: ClientRegistry, signer: Signer, token_url: str,
                     issuer: str, audience: str, ttl_s: int = 300) -> dict:
    """Answer a token request (its form parameters): the OAuth token response, or OAuthError.

    ``token_url`` is the endpoint's own URL (the assertion's audience), ``issuer`` and ``audience``
    go into the access token (the hub's token issuer and its FHIR base URL)."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError(400, "invalid_request", "grant_type is missing")
    if grant_type != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type",
                         f"grant_type {grant_type!r} is not supported; use client_credentials")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise _invalid_client(f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion")
    if not assertion:
        raise _invalid_client("client_assertion is missing")
    client, claims = _authenticate(assertion, registry, token_url)
    requested_text = form.get("scope", "").strip()
    if not requested_text:
        raise OAuthError(400, "invalid_scope", "scope is missing: say which scopes the client asks for")
    try:
        requested = parse_scopes(requested_text)
    except FhirError as e:
        raise OAuthError(400, "invalid_scope", str(e)) from None
    # a backend service has no patient in context: a patient/ scope would name no one
    granted = [s for s in narrow(requested, parse_scopes(client.scopes)) if s.context != "patient"]
    if not any(s.is_resource for s in granted):
        raise OAuthError(400, "invalid_scope",
                         f"None of the scopes asked for ({requested_text}) is allowed to this client"
                         + ("; patient/ scopes need a patient in context, which a backend "
                            "service token has not" if "patient/" in requested_text else ""))
    # the assertion is spent only once everything else is settled: a refusal can be retried
    if not registry.use_jti(client.client_id, claims["jti"], float(claims["exp"]) + CLOCK_SKEW_S):
        raise _invalid_client("This client assertion (its jti) was used before; sign a new one")
    scope = format_scopes(granted)
    token = signer.issue(access_claims(client, scope, issuer, audience), ttl_s)
    return {"access_token": token, "token_type": "bearer", "expires_in": int(ttl_s), "scope": scope}


def access_claims(client: Client, scope: str, issuer: str, audience: str) -> dict:
    """The claims of an access token for ``client`` granted ``scope``."""
    claims = {"iss": issuer, "aud": audience, "sub": client.client_id, "client_id": client.client_id,
              "scope": scope, "hub_roles": list(client.roles)}
    if client.institution:
        claims["hub_institution"] = client.institution
        if client.oid:  # the arc of its local code systems (hub.access.terminology)
            claims["hub_institution_oid"] = client.oid
    return claims


def _authenticate(assertion: str, registry: ClientRegistry, token_url: str) -> tuple[Client, dict]:
    """The active client that signed ``assertion`` and the assertion's verified claims."""
    try:
        header, unverified = peek(assertion)
    except jwt.PyJWTError as e:
        raise _invalid_client(describe(e, "The client assertion")) from None
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise _invalid_client(f"The client assertion is signed with {alg!r}; accepted are "
                              + ", ".join(ASSERTION_ALGORITHMS))
    client_id = unverified.get("iss")
    if not isinstance(client_id, str) or not client_id or unverified.get("sub") != client_id:
        raise _invalid_client("The client assertion's iss and sub must both be the client_id")
    # an unknown client, one without such a key and a bad signature are told apart in the log
    # only: the answer told an attacker which client ids are registered, and their key types
    unverified_answer = _invalid_client(
        f"The client assertion does not verify: no active client {client_id!r} has a "
        f"registered {alg} key" + (f" of kid {header['kid']!r}" if header.get("kid") else "")
        + " that signed it")
    client = registry.get(client_id)
    if client is None or not client.active:
        log.info("token request refused: no active client %r", client_id[:64])
        raise unverified_answer
    keys = [k for k in client.jwks["keys"] if alg in algorithms_for(k)
            and (header.get("kid") is None or k.get("kid") == header["kid"])]
    if not keys:
        log.info("token request refused: client %r has no %s key%s", client_id[:64], alg,
                 f" of kid {str(header['kid'])[:64]!r}" if header.get("kid") else "")
        raise unverified_answer
    failure: jwt.PyJWTError | None = None
    for jwk in keys:
        try:
            claims = jwt.decode(assertion, jwt.PyJWK(jwk, alg).key, algorithms=[alg], audience=token_url,
                                issuer=client_id, leeway=CLOCK_SKEW_S,
                                options={"require": ["iss", "sub", "aud", "exp", "jti"]})
            break
        except jwt.InvalidSignatureError as e:
            failure = e  # another of its keys may have signed it
        except jwt.PyJWTError as e:
            raise _invalid_client(describe(e, "The client assertion")) from None
    else:
        log.info("token request refused: client %r: %s", client_id[:64],
                 describe(failure or jwt.InvalidSignatureError(), "the assertion"))
        raise unverified_answer
    for name in ("exp", "iat", "nbf"):
        # a NumericDate is a JSON number; PyJWT takes "1796573000" too, which then failed the
        # comparison below as a 500
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _invalid_client(f"The client assertion's {name} must be a number of seconds")
    if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
        raise _invalid_client(f"The client assertion expires more than {MAX_ASSERTION_LIFETIME_S // 60}"
                              " minutes from now; make it short-lived")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise _invalid_client("The client assertion's jti must be a non-empty string")
    return client, claims
