"""Public keys as JSON Web Keys: reading a client's key from a PEM file or a JWK Set, checking that
a JWK Set holds only public signing keys the token endpoint can verify, and the RFC 7638 thumbprint
that names a key.

Conversions go through PyJWT's algorithms (``to_jwk``, ``from_jwk``), which use ``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWTError
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hub.core.errors import bad_request

__all__ = ["MIN_RSA_BITS", "check_jwks", "jwks_from_bytes", "public_jwk", "thumbprint"]

MIN_RSA_BITS = 2048
_CURVES = {"P-256", "P-384", "P-521"}
_PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "k"}  # members only a private or secret key has
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def public_jwk(key: Any) -> dict:
    """The JWK (a dict) of a ``cryptography`` RSA or EC public key, ``kid`` its thumbprint."""
    if isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        raise bad_request(f"Only RSA and EC public keys are accepted, not {type(key).__name__}")
    return {**jwk, "kid": thumbprint(jwk)}


def thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 of the key's required members as compact JSON in sorted order, base64url."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None:
        raise bad_request(f"No thumbprint for a key of type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def jwks_from_bytes(data: bytes, name: str = "key") -> dict:
    """A checked JWK Set from a PEM public key or a JSON JWK Set (or one JWK); ``name`` (a file
    name) says which it is when it ends in .pem, .jwks or .json, else the content does."""
    lower = name.lower()
    is_pem = lower.endswith(".pem") or (not lower.endswith((".jwks", ".json"))
                                        and data.lstrip().startswith(b"-----BEGIN"))
    if is_pem:
        if b"PRIVATE KEY" in data:
            raise bad_request(f"{name} is a private key; give the client's public key only")
        try:
            key = load_pem_public_key(data)
        except ValueError as e:
            raise bad_request(f"{name} is not a PEM public key: {e}") from None
        return check_jwks({"keys": [public_jwk(key)]})
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"{name} is not JSON: {e}") from None
    if isinstance(doc, dict) and "keys" not in doc and "kty" in doc:
        doc = {"keys": [doc]}
    return check_jwks(doc)


def check_jwks(doc: Any) -> dict:
    """``doc`` as a JWK Set of public RSA (at least 2048 bits) and EC (P-256/384/521) signing keys,
    each with a ``kid`` (its thumbprint when it had none); anything else is a bad request."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise bad_request('A JWK Set is a JSON object {"keys": [...]} with at least one key')
    keys = []
    for i, jwk in enumerate(doc["keys"]):
        where = f"key {i + 1} of the JWK Set"
        if not isinstance(jwk, dict):
            raise bad_request(f"{where} is not a JSON object")
        if _PRIVATE & jwk.keys():
            raise bad_request(f"{where} holds private or secret key material; give public keys only")
        if jwk.get("use", "sig") != "sig":
            raise bad_request(f"{where} is not a signing key (use={jwk.get('use')!r})")
        kty = jwk.get("kty")
        try:
            if kty == "RSA":
                key = RSAAlgorithm.from_jwk(jwk)
                if key.key_size < MIN_RSA_BITS:
                    raise bad_request(f"{where}: an RSA key of {key.key_size} bits is too short "
                                      f"(at least {MIN_RSA_BITS})")
            elif kty == "EC":
                if jwk.get("crv") not in _CURVES:
                    raise bad_request(f"{where}: curve {jwk.get('crv')!r} is not P-256, P-384 or P-521")
                ECAlgorithm.from_jwk(jwk)
            else:
                raise bad_request(f"{where}: key type {kty!r} is not RSA or EC")
        except (PyJWTError, ValueError, TypeError, KeyError) as e:
            raise bad_request(f"{where} is not a usable {kty} public key: {e}") from None
        keys.append({**jwk, "kid": str(jwk.get("kid") or thumbprint(jwk))})
    kids = [k["kid"] for k in keys]
    if len(set(kids)) != len(kids):
        raise bad_request("Two keys of the JWK Set have the same kid")
    return {"keys": keys}
