"""The client side of SMART Backend Services: how a connector, a script or a test gets and keeps
an access token.

``BackendServicesAuth`` is an ``httpx.Auth``: before a request it makes sure it holds a token that
is valid for at least another half minute, asking the token endpoint with a fresh client
assertion (a JWT signed with the client's private key: iss = sub = client id, aud = the token
URL, a unique jti, five minutes at most) when it does not, and answers a 401 once by fetching a
new token (the hub's key may have been rotated). The assertion's algorithm follows the key:
ES256, ES384 or ES512 by its curve, RS384 for RSA; a key the token endpoint could never verify is
an ``UnusableKey`` when the client is made, not a failure at every request.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.auth.jose import ASSERTION_ALGORITHMS, algorithms_for_key
from hub.auth.keys import MIN_RSA_BITS, public_jwk
from hub.core import httpclient
from hub.core.errors import HubError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REFRESH_MARGIN_S = 30


def new_key(kind: str = "EC") -> Any:
    """A private key for a client: EC P-384 (ES384) or RSA 3072 (RS384)."""
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP384R1())


def private_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_jwks(key: Any) -> dict:
    """The JWK Set to register for ``key`` (its public half)."""
    return {"keys": [public_jwk(key.public_key())]}


class UnusableKey(HubError, ValueError):
    """A private key that cannot sign a client assertion the token endpoint accepts."""

    error_code = "invalid"


def load_private_key(data: bytes, name: str = "the private key") -> Any:
    """The private key of a PEM file's bytes, checked usable (``signing_algorithm``)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        raise UnusableKey(f"{name} is encrypted with a password; give an unencrypted PEM key") from None
    except ValueError as e:
        raise UnusableKey(f"{name} is not a PEM private key ({e})") from None
    signing_algorithm(key, name)
    return key


def signing_algorithm(key: Any, name: str = "the private key") -> str:
    """The algorithm of ``key``'s client assertions: by the curve of an EC key, RS384 (which
    SMART Backend Services asks servers to take) for RSA; ``UnusableKey`` for any other key."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise UnusableKey(f"{name} is an RSA key of {key.key_size} bits; the hub takes "
                              f"{MIN_RSA_BITS} or more")
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = algorithms_for_key(key.public_key()) & set(ASSERTION_ALGORITHMS)
        if not algs:
            raise UnusableKey(f"{name} is an EC key on curve {key.curve.name}; the hub takes "
                              "P-256, P-384 or P-521")
        return algs.pop()  # an EC key verifies one algorithm, that of its curve
    raise UnusableKey(f"{name} is not an EC or RSA key ({type(key).__name__}); the hub takes EC "
                      f"(P-256, P-384, P-521) or RSA ({MIN_RSA_BITS} bits or more) keys")


def assertion(key: Any, client_id: str, token_url: str, lifetime_s: int = 240) -> str:
    alg = signing_algorithm(key)
    now = int(time.time())
    return jwt.encode({"iss": client_id, "sub": client_id, "aud": token_url, "iat": now,
                       "exp": now + lifetime_s, "jti": uuid.uuid4().hex}, key, algorithm=alg,
                      headers={"kid": public_jwk(key.public_key())["kid"]})


def fetch_token(token_url: str, client_id: str, key: Any, scope: str,
                client: httpx.Client | None = None, verify: Any = True) -> dict:
    """The token endpoint's answer (``access_token``, ``expires_in``, ``scope``); raises
    ``httpx.HTTPStatusError`` with the OAuth error when refused. ``verify``: httpx's (an
    ``ssl.SSLContext`` holding the CA to trust and, for mutual TLS, the client certificate)."""
    form = {"grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(key, client_id, token_url)}
    http = client or httpx.Client(timeout=30, verify=httpclient.verify(verify))
    try:
        r = http.post(token_url, data=form)
        r.raise_for_status()
        return r.json()
    finally:
        if client is None:
            http.close()


class BackendServicesAuth(httpx.Auth):
    """Bearer tokens from the hub's (or any SMART) token endpoint, renewed before they expire."""

    def __init__(self, token_url: str, client_id: str, key: Any, scope: str, verify: Any = True):
        if isinstance(key, (bytes, str)):
            key = load_private_key(key.encode() if isinstance(key, str) else key)
        signing_algorithm(key)
        self.token_url, self.client_id, self.key, self.scope = token_url, client_id, key, scope
        self.verify = verify  # the TLS of the token endpoint (fetch_token)
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def token(self, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or time.time() > self._expires - REFRESH_MARGIN_S:
                answer = fetch_token(self.token_url, self.client_id, self.key, self.scope,
                                     verify=self.verify)
                self._token = answer["access_token"]
                self._expires = time.time() + int(answer.get("expires_in", 300))
            return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.token(renew=True)}"
            yield request
