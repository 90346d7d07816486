"""Verifying the bearer tokens callers present: the hub's own access tokens and those of the
external identity providers (a regional Keycloak, a hospital's IdP) configured to be trusted.

A token is accepted when an asymmetric algorithm (never ``none``, never HMAC) verifies its
signature with a key of its issuer, its issuer is the hub's own or a configured one, its audience is
the hub's FHIR base URL, and it has not expired nor is used before its time (30 s of clock skew);
a token of the hub's own, moreover, only while its client is active in the registry (a revocation
holds from the next request). Anything else is a 401 ``login`` OperationOutcome that says what was wrong.

An external issuer's keys come from its JWKS URL through ``jwt.PyJWKClient``, which caches the set
and fetches it again when a token names a key id it does not know: a key rotation at the provider
needs no restart. Without a JWKS URL, the provider's discovery document names it (fetched when the
first of its tokens comes, again after a failure; its ``issuer`` must be the one configured).
Its claims are brought to the shape of the hub's own tokens: ``scope`` (from ``scope`` or
``scp``), ``hub_roles`` (from its roles claim, a dotted path such as ``realm_access.roles``,
keeping the hub's roles only) and ``hub_institution``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from hub.auth.clients import ROLES, ClientRegistry
from hub.auth.discovery import provider_metadata
from hub.auth.jose import ASYMMETRIC, CLOCK_SKEW_S, algorithms_for_key, describe, peek
from hub.auth.signer import ALGORITHM, Signer
from hub.core.errors import FhirError, unauthenticated

__all__ = ["ExternalIssuer", "RevokedClient", "Verifier", "unauthenticated"]


@dataclass
class ExternalIssuer:
    """An identity provider whose tokens the hub accepts. ``roles_claim`` and ``institution_claim``
    name the claims (dotted paths into nested objects) holding the hub roles and the institution;
    ``cache_s`` is how long its key set is kept, ``refetch_cooldown_s`` the least time between two
    fetches caused by unknown key ids (so random kids cannot make the hub hammer the provider)."""

    issuer: str
    jwks_url: str = ""  # empty: the discovery document's jwks_uri
    roles_claim: str = "roles"
    institution_claim: str = "institution"
    cache_s: float = 300
    refetch_cooldown_s: float = 30
    # after the provider could not be reached, its tokens are 503 at once for this long: each
    # token (a forged one too) fetched again and waited out the timeout, one request after another
    failure_cooldown_s: float = 10
    fetch_timeout_s: float = 5
    _client: jwt.PyJWKClient | None = field(default=None, init=False, repr=False, compare=False)
    _fetching: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                      compare=False)
    _down: tuple[float, str] = field(default=(0.0, ""), init=False, repr=False, compare=False)

    @property
    def keys(self) -> jwt.PyJWKClient:
        if self._client is None:
            if not self.jwks_url:
                self.jwks_url = _discovered_jwks_url(self.issuer, self.fetch_timeout_s)
            self._client = jwt.PyJWKClient(self.jwks_url, cache_jwk_set=True, lifespan=self.cache_s,
                                           cooldown_duration=self.refetch_cooldown_s,
                                           timeout=self.fetch_timeout_s)
        return self._client

    def signing_key(self, kid: str) -> Any:
        """The key ``kid`` of this provider; a 503 at once while it was found unreachable lately,
        and one fetch at a time (the others wait for it, at most its timeout)."""
        until, why = self._down
        if time.monotonic() < until:
            raise FhirError(503, "transient", f"The keys of issuer {self.issuer} cannot be "
                                              f"fetched now ({why}); retry later")
        if not self._fetching.acquire(timeout=self.fetch_timeout_s):
            raise FhirError(503, "transient", f"The keys of issuer {self.issuer} are being "
                                              "fetched; retry later")
        try:
            return self.keys.get_signing_key(kid)
        except (FhirError, jwt.PyJWKClientConnectionError) as e:
            self._down = (time.monotonic() + self.failure_cooldown_s, str(e)[:200])
            raise
        finally:
            self._fetching.release()


def _discovered_jwks_url(issuer: str, timeout: float) -> str:
    meta = provider_metadata(issuer, timeout_s=timeout)
    if meta["issuer"].rstrip("/") != issuer.rstrip("/"):  # OpenID Connect Discovery 4.3
        raise FhirError(502, "transient", f"The discovery document of {issuer} names another "
                                          f"issuer, {meta['issuer'][:200]!r}")
    return meta["jwks_uri"]


VERIFIED_CACHE = 10_000  # tokens whose claims are kept verified until they expire


class RevokedClient(FhirError):
    """401 for a token of the hub's whose signature verified but whose client was revoked:
    who sent it is known (``client_id``), so its refused requests are audited as that client's."""

    def __init__(self, client_id: str):
        super().__init__(401, "login", f"The access token's client {client_id[:64]!r} is revoked")
        self.client_id = client_id


class Verifier:
    def __init__(self, audience: str, own: Signer | None = None,
                 external: Iterable[ExternalIssuer] = (), *, issuer: str | None = None,
                 clients: ClientRegistry | None = None):
        """``audience``: the FHIR base URL tokens must be for; ``own``: the hub's signer, whose
        tokens are accepted (from ``issuer`` only, when given); ``external``: trusted providers;
        ``clients``: the registry whose client (the token's ``client_id``) must still be active
        for a token of the hub's to be."""
        self.audience = audience
        self.own = own
        self.clients = clients
        self.issuer = issuer
        self.external = {e.issuer: e for e in external}
        if issuer is not None and issuer in self.external:
            raise ValueError(f"{issuer} is both the hub's own issuer and an external one")
        # A client sends the same token with every request until it expires: its verified claims
        # are kept until then (a signature check per request was most of the cost of access
        # control), as long as the hub still holds the key that signed it (a rotation away from
        # a compromised key ends them at once). Bounded; the oldest entries go first.
        self._verified: OrderedDict[str, tuple[dict, float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> dict:
        """The claims of a valid token (normalised for external ones), else a 401 FhirError."""
        claims, own = self._claims(token)
        # a token of the hub's is as good as its client's registration now, not when it was
        # issued: a revoked client's tokens are refused from the next request on (kept verified
        # claims included). An external issuer's tokens are its to revoke.
        client_id = claims.get("client_id")
        if own and self.clients is not None and isinstance(client_id, str) \
                and not self.clients.active_now(client_id):
            raise RevokedClient(client_id[:128])
        return claims

    def external_issuer(self, claims: dict) -> str | None:
        """The issuer of verified ``claims`` when it is an external provider, None for the
        hub's own."""
        iss = claims.get("iss")
        return iss if isinstance(iss, str) and iss in self.external else None

    def _claims(self, token: str) -> tuple[dict, bool]:
        """The verified claims of ``token`` (kept until it expires) and whether the hub signed it."""
        now = time.time()
        with self._lock:
            known = self._verified.get(token)
        if known is not None and now < known[1] and (
                known[2] is None or (self.own is not None and self.own.public_key(known[2]))):
            return known[0], known[2] is not None
        claims = self._verify(token)
        own = claims.get("iss") not in self.external
        exp = claims.get("exp")
        if isinstance(exp, (int, float)):
            own_kid = str(jwt.get_unverified_header(token).get("kid")) if own else None
            with self._lock:
                self._verified[token] = (claims, float(exp), own_kid)
                while len(self._verified) > VERIFIED_CACHE:
                    self._verified.popitem(last=False)
        return claims, own

    def _verify(self, token: str) -> dict:
        """Check the signature, issuer, audience and times of ``token``; its claims."""
        try:
            header, unverified = peek(token)
        except jwt.PyJWTError as e:
            raise unauthenticated(describe(e, "The access token")) from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC:
            raise unauthenticated(f"The access token is signed with {alg!r}; only asymmetric "
                                  "signatures (RS*, PS*, ES*) are accepted")
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise unauthenticated("The access token has no issuer (iss)")
        external = self.external.get(iss)
        if external is not None:
            key, algorithms = self._external_key(external, header)
        elif self.own is not None and (self.issuer is None or iss == self.issuer):
            key = self.own.public_key(str(header.get("kid")))
            if key is None:
                raise unauthenticated("The access token's signature does not verify (it names no "
                                      "current signing key of this hub: kid unknown)")
            algorithms = {ALGORITHM}
        else:
            raise unauthenticated(f"The access token's issuer {iss!r} is not trusted here")
        if alg not in algorithms:
            raise unauthenticated(f"The access token is signed with {alg}, which its key does not use")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience, issuer=iss,
                                leeway=CLOCK_SKEW_S, options={"require": ["iss", "aud", "exp"]})
        except jwt.PyJWTError as e:
            raise unauthenticated(describe(e, "The access token")) from None
        return normalise(claims, external) if external is not None else claims

    def may_fetch(self, token: str) -> bool:
        """Whether verifying ``token`` may fetch its issuer's keys over the network (an
        external issuer's, not verified before): then it is verified off the event loop."""
        if not self.external:
            return False
        with self._lock:
            if token in self._verified:
                return False
        try:
            return peek(token)[1].get("iss") in self.external
        except jwt.PyJWTError:
            return False

    def _external_key(self, external: ExternalIssuer, header: dict) -> tuple[Any, set[str]]:
        kid = header.get("kid")
        if not kid:
            raise unauthenticated("The access token names no key (kid) of its issuer")
        try:
            jwk = external.signing_key(kid)
        except FhirError as e:  # its discovery document, or a provider found away lately
            if e.status == 503:
                raise
            raise FhirError(503, "transient", f"The keys of issuer {external.issuer} cannot be "
                                              f"found now ({e}); retry later") from None
        except jwt.PyJWKClientConnectionError as e:
            raise FhirError(503, "transient", f"The keys of issuer {external.issuer} cannot be "
                                              f"fetched now ({e}); retry later") from None
        except jwt.PyJWKClientError:
            raise unauthenticated(f"The access token's signature does not verify: issuer "
                                  f"{external.issuer} publishes no key {kid!r}") from None
        except jwt.PyJWTError as e:
            raise FhirError(503, "transient", f"The key set of issuer {external.issuer} is "
                                              f"unusable: {e}") from None
        return jwk.key, algorithms_for_key(jwk.key)


def normalise(claims: dict, issuer: ExternalIssuer) -> dict:
    """An external token's claims with ``scope``, ``hub_roles`` and ``hub_institution`` as the
    hub's own tokens carry them (whatever claims of those names the provider sent are replaced;
    ``hub_institution_oid`` only the hub's client registry gives)."""
    out = {k: v for k, v in claims.items()
           if k not in ("hub_roles", "hub_institution", "hub_institution_oid")}
    scope = claims.get("scope", claims.get("scp"))
    out["scope"] = " ".join(str(s) for s in scope) if isinstance(scope, list) else str(scope or "")
    roles = claim_at(claims, issuer.roles_claim)
    roles = [roles] if isinstance(roles, str) else roles if isinstance(roles, list) else []
    out["hub_roles"] = [r for r in ROLES if r in roles]
    institution = institution_at(claims, issuer.institution_claim)
    if institution:
        out["hub_institution"] = institution
    return out


def institution_at(claims: dict, path: str) -> str | None:
    """The institution a provider's token names at ``path`` (a string, or a list of one), or
    None: the API's tokens and the console's ID tokens are read alike."""
    institution = claim_at(claims, path)
    if isinstance(institution, list) and len(institution) == 1:
        institution = institution[0]
    return institution if isinstance(institution, str) and institution else None


def claim_at(claims: dict, path: str) -> Any:
    """The claim at a dotted path into nested objects (``realm_access.roles``), or None."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
