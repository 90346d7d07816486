"""What the token code shares about JSON Web Tokens: the algorithms accepted (asymmetric only:
never ``none``, never an HMAC, whose "secret" an attacker could set to a published public key),
the algorithms a given public JWK can verify, and a plain sentence for each PyJWT failure."""

from __future__ import annotations

from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["ASSERTION_ALGORITHMS", "ASYMMETRIC", "CLOCK_SKEW_S", "algorithms_for", "algorithms_for_key",
           "describe", "header_of"]

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
# what the token endpoint takes a client assertion signed with: every curve a client key may be
# registered on (hub.auth.keys), and RSA; the client side signs with one of these
ASSERTION_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256", "ES512")
CLOCK_SKEW_S = 30  # the clocks of the hub, its clients and identity providers disagree this much
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def algorithms_for(jwk: dict) -> set[str]:
    """The accepted algorithms a public JWK verifies: its ``alg`` when it names one, else those of
    its key type (an EC key only the one of its curve)."""
    if jwk.get("alg"):
        return {jwk["alg"]} & ASYMMETRIC
    kty = jwk.get("kty")
    if kty == "RSA":
        return {a for a in ASYMMETRIC if a[:2] in ("RS", "PS")}
    if kty == "EC" and jwk.get("crv") in _EC_ALG:
        return {_EC_ALG[jwk["crv"]]}
    return set()


def algorithms_for_key(key: Any) -> set[str]:
    """The accepted algorithms a ``cryptography`` public key verifies (none for an HMAC secret)."""
    if isinstance(key, rsa.RSAPublicKey):
        return algorithms_for({"kty": "RSA"})
    if isinstance(key, ec.EllipticCurvePublicKey):
        return algorithms_for({"kty": "EC", "crv": {"secp256r1": "P-256", "secp384r1": "P-384",
                                                     "secp521r1": "P-521"}.get(key.curve.name)})
    return set()


def header_of(token: str) -> dict:
    """The token's unverified JOSE header; ``jwt.DecodeError`` when it is not a JWS."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise jwt.DecodeError("not a JWT (three base64url parts separated by dots)")
    return jwt.get_unverified_header(token)


def peek(token: str) -> tuple[dict, dict]:
    """A token's header and claims, unverified: what to verify it with (raises PyJWTError)."""
    return header_of(token), jwt.decode(token, options={"verify_signature": False})


# why PyJWT refused a token, most specific first (several are subclasses of DecodeError)
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "{what} has expired"),
    (jwt.ImmatureSignatureError, "{what} is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "{what} is not meant for this server (wrong audience: {e})"),
    (jwt.InvalidIssuerError, "{what} has the wrong issuer ({e})"),
    (jwt.MissingRequiredClaimError, "{what} lacks the {claim!r} claim"),
    (jwt.InvalidSignatureError, "{what}'s signature does not verify"),
    (jwt.InvalidAlgorithmError, "{what} is signed with an algorithm not accepted here"),
    (jwt.DecodeError, "{what} is malformed: {e}"),
)


def describe(e: jwt.PyJWTError, what: str = "The token") -> str:
    """A sentence saying why PyJWT refused ``what``."""
    for kind, text in _REASONS:
        if isinstance(e, kind):
            return text.format(what=what, e=e, claim=getattr(e, "claim", ""))
    return f"{what} is not valid: {e}"
