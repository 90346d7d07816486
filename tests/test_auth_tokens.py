"""The token side of access control: the SMART Backend Services token endpoint over real HTTP
(client assertions signed with RSA and EC keys; every way an assertion can be wrong is refused with
the right OAuth error), scope narrowing, the hub's signing key and its rotation, and the Verifier of
the hub's own tokens and of an external issuer whose key set a local HTTP server publishes."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from hub.api import auth as auth_api
from hub.auth.clients import ClientRegistry, open_registry
from hub.auth.keys import jwks_from_bytes, public_jwk
from hub.auth.tokens import (
    ASSERTION_TYPE,
    ExternalIssuer,
    OAuthError,
    Signer,
    Verifier,
    access_claims,
    issue_for_client,
)
from hub.core import httpclient
from hub.core.config import Settings
from hub.core.errors import FhirError
from tests.conftest import app_server, free_port

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


# -- a minimal application with the router, served over HTTP ---------------------------------------

class Hub:
    """The served app's data directory, registry, signer and URLs."""

    def __init__(self, data_dir: Path, port: int):
        self.data_dir = data_dir
        self.origin = f"http://127.0.0.1:{port}"
        self.token_url = f"{self.origin}/auth/token"
        self.issuer = f"{self.origin}/auth"
        self.audience = f"{self.origin}/fhir"
        self.registry = open_registry(data_dir)
        self.signer = Signer(data_dir)
        self.http = httpx.Client(base_url=self.origin, timeout=30, verify=httpclient.verify())
        self.rsa = self.registry.add("RSA lab feed", jwks_from_bytes(pem(RSA_KEY), "rsa.pem"),
                                     institution="H1", roles=["connector"],
                                     scopes="system/*.rs system/Observation.cruds")
        self.ec = self.registry.add("EC steward tool", jwks_from_bytes(json.dumps(
            {"keys": [public_jwk(EC_KEY.public_key())]}).encode(), "ec.jwks"),
            roles=["steward", "auditor"], scopes="system/Patient.rs")

    def assertion(self, client_id: str, key=RSA_KEY, alg: str = "RS384", headers: dict | None = None,
                  **claims) -> str:
        body = {"iss": client_id, "sub": client_id, "aud": self.token_url,
                "exp": int(time.time()) + 120, "jti": str(uuid.uuid4()), **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg,
                          headers=headers)

    def form(self, assertion: str, scope: str = "system/Patient.rs", **more) -> dict:
        return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion, "scope": scope, **more}

    def token(self, form: dict) -> httpx.Response:
        return self.http.post("/auth/token", data=form)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("auth") / "data"
    settings = Settings(data_dir=data_dir)
    settings.base_url = None
    app = FastAPI()
    app.include_router(auth_api.router)
    auth_api.attach(app, settings)
    with app_server(app) as port:
        h = Hub(data_dir, port)
        yield h
        h.http.close()
    auth_api.detach(app)


def refused(r: httpx.Response, status: int, error: str, words: str = "") -> str:
    assert r.status_code == status, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["error"] == error, body
    assert words.lower() in body["error_description"].lower(), body
    return body["error_description"]


# -- the token endpoint --------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS384", "RS256"])
def test_rsa_client_gets_a_token(hub, alg):
    r = hub.token(hub.form(hub.assertion(hub.rsa.client_id, alg=alg),
                           scope="system/Patient.rs system/Observation.cruds"))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == "system/Patient.rs system/Observation.cruds"
    claims = Verifier(hub.audience, hub.signer, issuer=hub.issuer).verify(body["access_token"])
    assert claims["iss"] == hub.issuer and claims["aud"] == hub.audience
    assert claims["sub"] == claims["client_id"] == hub.rsa.client_id
    assert claims["scope"] == body["scope"]
    assert claims["hub_roles"] == ["connector"] and claims["hub_institution"] == "H1"
    assert claims["exp"] - claims["iat"] == 300 and claims["jti"]
    assert jwt.get_unverified_header(body["access_token"])["kid"] == hub.signer.kid


def test_ec_client_gets_a_token_without_an_institution(hub):
    r = hub.token(hub.form(hub.assertion(hub.ec.client_id, EC_KEY, "ES384")))
    assert r.status_code == 200, r.text
    claims = Verifier(hub.audience, hub.signer).verify(r.json()["access_token"])
    assert claims["hub_roles"] == ["steward", "auditor"] and "hub_institution" not in claims


@pytest.mark.parametrize("make, alg", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    (lambda: ec.generate_private_key(ec.SECP521R1()), "ES512"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS384"),
], ids=["P-256", "P-384", "P-521", "RSA"])
def test_the_client_side_signs_for_every_key_a_client_may_register(hub, make, alg, tmp_path, capsys):
    """A P-256 key was registered, then signed with ES384 (a traceback in ``hub auth token``, a
    connector retrying for ever); a P-521 one was registered and refused at the token endpoint."""
    from hub.auth.backend_client import assertion, fetch_token, private_pem
    from hub.cli import main

    key = make()
    client = hub.registry.add(f"{alg} tool", jwks_from_bytes(pem(key), "k.pem"), roles=["steward"],
                              scopes="system/Patient.rs")
    assert jwt.get_unverified_header(assertion(key, client.client_id, hub.token_url))["alg"] == alg
    answer = fetch_token(hub.token_url, client.client_id, key, "system/Patient.rs")
    assert Verifier(hub.audience, hub.signer).verify(answer["access_token"])["sub"] == client.client_id
    private = tmp_path / "client.pem"
    private.write_bytes(private_pem(key))
    assert main(["auth", "token", "--client-id", client.client_id, "--key", str(private),
                 "--scope", "system/Patient.rs", "--url", hub.audience]) == 0
    token = capsys.readouterr().out.strip()
    assert Verifier(hub.audience, hub.signer).verify(token)["sub"] == client.client_id


def test_scopes_are_narrowed_to_what_the_client_is_allowed(hub):
    r = hub.token(hub.form(hub.assertion(hub.rsa.client_id),
                           scope="system/Patient.cruds system/Encounter.read user/Patient.rs openid"))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/Patient.rs system/Encounter.read"


def test_nothing_grantable_is_invalid_scope(hub):
    refused(hub.token(hub.form(hub.assertion(hub.ec.client_id, EC_KEY, "ES384"), scope="system/Observation.rs")),
            400, "invalid_scope", "none of the scopes")
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id), scope="system/Patient.xyz")),
            400, "invalid_scope", "cruds")
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id), scope="")), 400, "invalid_scope", "missing")


def test_a_refused_scope_does_not_spend_the_assertion(hub):
    assertion = hub.assertion(hub.rsa.client_id)
    refused(hub.token(hub.form(assertion, scope="user/Patient.rs")), 400, "invalid_scope")
    assert hub.token(hub.form(assertion)).status_code == 200


def test_expired_assertion(hub):
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id, exp=int(time.time()) - 120))),
            401, "invalid_client", "expired")


def test_assertion_expiring_too_far_ahead(hub):
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id, exp=int(time.time()) + 3600))),
            401, "invalid_client", "5 minutes")


def test_assertion_times_that_are_not_numbers(hub):
    """A NumericDate written as a string was a 500 (PyJWT takes it, the lifetime check did not)."""
    for claim in ("exp", "iat", "nbf"):
        when = int(time.time()) + (60 if claim == "exp" else 0)
        extra = {"exp": str(when)} if claim == "exp" else {claim: str(when)}
        refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id, **extra))),
                401, "invalid_client", f"{claim} must be a number")


def test_assertion_without_exp_or_jti(hub):
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id, exp=None))), 401, "invalid_client", "'exp'")
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id, jti=None))), 401, "invalid_client", "'jti'")


def test_wrong_audience(hub):
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id, aud=hub.audience))),
            401, "invalid_client", "audience")


def test_wrong_issuer(hub):
    cid = hub.rsa.client_id
    refused(hub.token(hub.form(hub.assertion(cid, iss=hub.ec.client_id))), 401, "invalid_client", "iss and sub")
    refused(hub.token(hub.form(hub.assertion(cid, iss="someone-else", sub="someone-else"))),
            401, "invalid_client", "no active client")


def test_replayed_jti(hub):
    assertion = hub.assertion(hub.rsa.client_id)
    assert hub.token(hub.form(assertion)).status_code == 200
    refused(hub.token(hub.form(assertion)), 401, "invalid_client", "used before")
    # the same jti in a freshly signed assertion is a replay too
    jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    refused(hub.token(hub.form(hub.assertion(hub.rsa.client_id, jti=jti))), 401, "invalid_client", "used before")


def test_revoked_client(hub):
    client = hub.registry.add("soon revoked", jwks_from_bytes(pem(RSA_KEY), "k.pem"), scopes="system/*.rs")
    assert hub.token(hub.form(hub.assertion(client.client_id))).status_code == 200
    hub.registry.revoke(client.client_id)
    refused(hub.token(hub.form(hub.assertion(client.client_id))), 401, "invalid_client", "no active client")


def test_unknown_client(hub):
    refused(hub.token(hub.form(hub.assertion("nobody"))), 401, "invalid_client", "does not verify")


def test_wrong_key(hub):
    """An unknown client, a key it has not registered, a kid not its own and a bad signature
    get one answer: they told an attacker which client ids are registered, and their keys."""
    cid = hub.rsa.client_id
    answers = [hub.token(hub.form(a)).json()["error_description"] for a in (
        hub.assertion(cid, OTHER_KEY),                       # a signature of another key
        hub.assertion("nobody", OTHER_KEY),                  # no such client
        hub.assertion(cid, EC_KEY, "ES384"),                 # a key type it did not register
        hub.assertion(cid, headers={"kid": "nope"}))]        # a kid not its own
    assert all("does not verify" in a for a in answers), answers
    assert answers[0].replace(repr(cid), "X") == answers[1].replace("'nobody'", "X")
    refused(hub.token(hub.form(hub.assertion(cid, OTHER_KEY))), 401, "invalid_client",
            "does not verify")


def test_alg_none(hub):
    cid = hub.rsa.client_id
    unsigned = jwt.encode({"iss": cid, "sub": cid, "aud": hub.token_url, "exp": int(time.time()) + 60,
                           "jti": str(uuid.uuid4())}, None, algorithm="none")
    refused(hub.token(hub.form(unsigned)), 401, "invalid_client", "'none'")


def test_hs256_with_the_public_key_as_secret(hub):
    import base64
    import hashlib
    import hmac
    cid = hub.rsa.client_id
    # PyJWT itself refuses to HMAC with a PEM key, so the forgery is built by hand
    part = [base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=") for d in (
        {"alg": "HS256", "typ": "JWT"},
        {"iss": cid, "sub": cid, "aud": hub.token_url, "exp": int(time.time()) + 60, "jti": str(uuid.uuid4())})]
    signing_input = part[0] + b"." + part[1]
    sig = base64.urlsafe_b64encode(hmac.new(pem(RSA_KEY), signing_input, hashlib.sha256).digest()).rstrip(b"=")
    refused(hub.token(hub.form((signing_input + b"." + sig).decode())), 401, "invalid_client", "'HS256'")


def test_malformed_requests(hub):
    assertion = hub.assertion(hub.rsa.client_id)
    refused(hub.token(hub.form(assertion, grant_type="authorization_code")), 400, "unsupported_grant_type")
    refused(hub.token({**hub.form(assertion), "grant_type": ""}), 400, "invalid_request", "grant_type")
    refused(hub.token(hub.form(assertion, client_assertion_type="urn:other")), 401, "invalid_client",
            "client_assertion_type")
    refused(hub.token(hub.form("")), 401, "invalid_client", "missing")
    refused(hub.token(hub.form("not.a.jwt")), 401, "invalid_client", "malformed")
    refused(hub.http.post("/auth/token", json=hub.form(assertion)), 400, "invalid_request",
            "x-www-form-urlencoded")
    refused(hub.http.post("/auth/token", content=b"grant_type=a&grant_type=b",
                          headers={"content-type": "application/x-www-form-urlencoded"}),
            400, "invalid_request", "more than once")


def test_issue_for_client_raises_oauth_errors(hub):
    """The grant itself (without HTTP): what the endpoint answers is the exception's."""
    with pytest.raises(OAuthError) as e:
        issue_for_client({"grant_type": "password"}, hub.registry, hub.signer, hub.token_url,
                         hub.issuer, hub.audience)
    assert (e.value.status, e.value.error) == (400, "unsupported_grant_type")
    assert isinstance(e.value, FhirError) and e.value.issues[0].code == "invalid"
    with pytest.raises(OAuthError) as e:
        issue_for_client(hub.form(hub.assertion("nobody")), hub.registry, hub.signer, hub.token_url,
                         hub.issuer, hub.audience)
    assert (e.value.status, e.value.error, e.value.issues[0].code) == (401, "invalid_client", "login")
    answer = issue_for_client(hub.form(hub.assertion(hub.rsa.client_id)), hub.registry, hub.signer,
                              hub.token_url, hub.issuer, hub.audience, ttl_s=60)
    assert answer["expires_in"] == 60 and answer["scope"] == "system/Patient.rs"


# -- discovery and keys ----------------------------------------------------------------------------

def test_smart_configuration_and_jwks(hub):
    r = hub.http.get("/fhir/.well-known/smart-configuration")
    assert r.status_code == 200
    conf = r.json()
    assert conf["token_endpoint"] == hub.token_url
    assert conf["jwks_uri"] == f"{hub.origin}/auth/jwks"
    assert conf["grant_types_supported"] == ["client_credentials"]
    assert conf["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert {"RS384", "ES384"} <= set(conf["token_endpoint_auth_signing_alg_values_supported"])
    assert set(conf["capabilities"]) == {"client-confidential-asymmetric", "permission-v2"}
    assert "system/*.rs" in conf["scopes_supported"]
    keys = hub.http.get("/auth/jwks").json()["keys"]
    assert [k["kid"] for k in keys] == [hub.signer.kid]
    assert {"d"} & keys[0].keys() == set() and keys[0]["alg"] == "ES256" and keys[0]["crv"] == "P-256"


def test_configured_base_url_decides_the_urls(tmp_path):
    app = FastAPI()
    app.include_router(auth_api.router)
    settings = Settings(data_dir=tmp_path)
    settings.base_url = "https://hub.example.org/region/fhir"
    auth_api.attach(app, settings)
    from starlette.requests import Request
    request = Request({"type": "http", "app": app, "scheme": "http", "server": ("127.0.0.1", 80),
                       "path": "/auth/token", "root_path": "", "headers": [], "query_string": b""})
    assert auth_api.endpoints(request) == {
        "audience": "https://hub.example.org/region/fhir",
        "token_url": "https://hub.example.org/region/auth/token",
        "issuer": "https://hub.example.org/region/auth",
        "jwks_uri": "https://hub.example.org/region/auth/jwks"}
    assert app.state.auth_registry.path == tmp_path / "auth.sqlite"


# -- the signer ------------------------------------------------------------------------------------

def test_signing_key_file_and_kid(tmp_path):
    signer = Signer(tmp_path)
    kid = signer.kid
    path = tmp_path / "auth" / "signing-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "auth").stat().st_mode & 0o777 == 0o700
    assert Signer(tmp_path).kid == kid  # the same key from the file
    [jwk] = signer.jwks()["keys"]
    assert jwk["kid"] == kid == jwt.PyJWK(jwk).key_id and "d" not in jwk


def test_rotation_keeps_the_previous_keys_until_five_more(tmp_path, monkeypatch):
    monkeypatch.setattr("hub.auth.signer.RECHECK_S", 0.2)
    signer = Signer(tmp_path)
    verifier = Verifier("aud", signer)
    claims = {"iss": "me", "aud": "aud", "sub": "c"}
    first = signer.issue(claims, 60)
    old = signer.kid
    other_process = Signer(tmp_path)
    assert other_process.kid == old
    new = signer.rotate()
    assert new != old
    assert [k["kid"] for k in signer.jwks()["keys"]] == [new, old]
    assert other_process.kid == old  # the files are looked at again only after a while
    time.sleep(0.25)
    assert other_process.kid == new  # then it sees them change
    assert (tmp_path / "auth" / "signing-key.previous.pem").stat().st_mode & 0o777 == 0o600
    assert verifier.verify(first)["sub"] == "c"
    assert jwt.get_unverified_header(signer.issue(claims, 60))["kid"] == new
    # rotated again (an operator running it twice): the first key's tokens still verify until
    # they expire (only one previous key was kept: every client was logged out)
    signer.rotate()
    assert verifier.verify(first)["sub"] == "c"
    for _ in range(4):  # five keys after it, it is dropped
        signer.rotate()
    with pytest.raises(FhirError) as e:
        verifier.verify(first)
    assert e.value.status == 401 and "kid unknown" in str(e.value)
    assert len(signer.jwks()["keys"]) == 6


# -- the verifier ----------------------------------------------------------------------------------

def own_key(signer: Signer):
    signer.kid  # noqa: B018  (makes the key)
    return serialization.load_pem_private_key(signer.path.read_bytes(), None)


def refused_token(verifier: Verifier, token: str, words: str) -> None:
    with pytest.raises(FhirError) as e:
        verifier.verify(token)
    assert e.value.status == 401 and e.value.issues[0].code == "login"
    assert words.lower() in str(e.value).lower(), str(e.value)


@pytest.fixture
def own(tmp_path):
    signer = Signer(tmp_path)
    return signer, Verifier("https://hub/fhir", signer, issuer="https://hub/auth")


def sign_own(signer: Signer, key=None, alg="ES256", **claims) -> str:
    now = int(time.time())
    body = {"iss": "https://hub/auth", "aud": "https://hub/fhir", "sub": "c", "iat": now, "exp": now + 60,
            **claims}
    return jwt.encode(body, key or own_key(signer), algorithm=alg, headers={"kid": signer.kid})


def test_verifier_accepts_own_token(own):
    signer, verifier = own
    token = signer.issue({"iss": "https://hub/auth", "aud": "https://hub/fhir", "sub": "c", "scope": "system/*.rs",
                          "hub_roles": ["admin"]}, 60)
    assert verifier.verify(token)["hub_roles"] == ["admin"]
    assert verifier.verify(sign_own(signer, exp=int(time.time()) - 10))["sub"] == "c"  # within the skew


def test_verifier_refuses(own):
    signer, verifier = own
    refused_token(verifier, sign_own(signer, exp=int(time.time()) - 120), "expired")
    refused_token(verifier, sign_own(signer, nbf=int(time.time()) + 600), "not valid yet")
    refused_token(verifier, sign_own(signer, ec.generate_private_key(ec.SECP256R1())), "signature")
    refused_token(verifier, sign_own(signer, aud="https://elsewhere/fhir"), "audience")
    refused_token(verifier, sign_own(signer, iss="https://stranger/auth"), "not trusted")
    refused_token(verifier, "garbage", "malformed")
    refused_token(verifier, "a.b.c", "malformed")
    refused_token(verifier, jwt.encode({"iss": "https://hub/auth", "aud": "https://hub/fhir", "exp": 2**40},
                                       None, algorithm="none"), "'none'")
    refused_token(verifier, jwt.encode({"iss": "https://hub/auth", "aud": "https://hub/fhir", "exp": 2**40},
                                       "secret" * 6, algorithm="HS256"), "'HS256'")
    # a token whose payload was changed after signing
    head, _, sig = sign_own(signer).split(".")
    forged = jwt.utils.base64url_encode(json.dumps({"iss": "https://hub/auth", "aud": "https://hub/fhir",
                                                    "sub": "admin", "exp": 2**40}).encode()).decode()
    refused_token(verifier, f"{head}.{forged}.{sig}", "signature")


def test_verifier_refuses_a_kept_token_once_its_client_is_revoked(tmp_path):
    """A verified token is kept until it expires; its client's registration is asked on every
    use, and a revocation through another connection to the registry (another process) counts
    at the next one."""
    registry, signer = open_registry(tmp_path), Signer(tmp_path)
    verifier = Verifier("https://hub/fhir", signer, issuer="https://hub/auth", clients=registry)
    keep, lose = (registry.add(n, jwks_from_bytes(pem(RSA_KEY), "k.pem"), scopes="system/*.rs")
                  for n in ("kept", "revoked"))
    tokens = {c.client_id: signer.issue(access_claims(c, "system/*.rs", "https://hub/auth",
                                                      "https://hub/fhir"), 300)
              for c in (keep, lose)}
    for token in tokens.values():
        assert verifier.verify(token)["scope"] == "system/*.rs"
    ClientRegistry(registry.path).revoke(lose.client_id)
    refused_token(verifier, tokens[lose.client_id], "revoked")
    assert verifier.verify(tokens[keep.client_id])["client_id"] == keep.client_id


def test_verifier_without_own_signer_trusts_nobody(own):
    signer, _ = own
    refused_token(Verifier("https://hub/fhir", None), sign_own(signer), "not trusted")


# -- an external issuer ----------------------------------------------------------------------------

class JwksServer:
    """A tiny identity provider's JWKS endpoint; ``keys`` can change (a rotation). Its discovery
    document (``{issuer}/.well-known/openid-configuration``) names ``discovered_issuer``."""

    def __init__(self):
        self.keys: list[dict] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = json.dumps({"issuer": outer.discovered_issuer, "jwks_uri": outer.url,
                                       "token_endpoint": outer.issuer + "/token"}).encode()
                else:
                    outer.fetches += 1
                    body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}/realms/region"
        self.discovered_issuer = self.issuer
        self.url = f"{self.issuer}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, key, kid: str) -> None:
        self.keys.append({**public_jwk(key.public_key()), "kid": kid, "use": "sig"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp():
    server = JwksServer()
    yield server
    server.close()


IDP = "https://sso.region.example/realms/region"


def idp_token(key, kid: str, alg: str = "RS256", **claims) -> str:
    now = int(time.time())
    body = {"iss": IDP, "aud": "https://hub/fhir", "sub": "user-1", "iat": now, "exp": now + 60,
            "azp": "portal", **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def test_external_issuer_claims_are_normalised(idp):
    idp.publish(RSA_KEY, "k1")
    verifier = Verifier("https://hub/fhir", None, [ExternalIssuer(
        IDP, idp.url, roles_claim="realm_access.roles", institution_claim="hub.institution")])
    claims = verifier.verify(idp_token(RSA_KEY, "k1", scp=["system/*.rs", "openid"],
                                       realm_access={"roles": ["clinician", "offline_access", "admin"]},
                                       hub={"institution": "H7"}, hub_roles=["steward"]))
    assert claims["scope"] == "system/*.rs openid"
    assert claims["hub_roles"] == ["clinician", "admin"]  # the hub's roles only, from the claim named
    assert claims["hub_institution"] == "H7" and claims["sub"] == "user-1"
    plain = Verifier("https://hub/fhir", None, [ExternalIssuer(IDP, idp.url)]).verify(
        idp_token(RSA_KEY, "k1", scope="user/Patient.rs", roles="auditor"))
    assert plain["scope"] == "user/Patient.rs" and plain["hub_roles"] == ["auditor"]
    assert "hub_institution" not in plain


def test_external_issuer_key_rotation_is_picked_up(idp):
    idp.publish(RSA_KEY, "k1")
    verifier = Verifier("https://hub/fhir", None, [ExternalIssuer(IDP, idp.url, refetch_cooldown_s=0)])
    assert verifier.verify(idp_token(RSA_KEY, "k1"))["sub"] == "user-1"
    assert verifier.verify(idp_token(RSA_KEY, "k1"))["sub"] == "user-1"
    assert idp.fetches == 1  # the key set is cached
    idp.keys = []
    idp.publish(EC_KEY, "k2")  # the provider rotates to a new key
    assert verifier.verify(idp_token(EC_KEY, "k2", alg="ES384"))["sub"] == "user-1"
    assert idp.fetches == 2
    refused_token(verifier, idp_token(OTHER_KEY, "k3"), "publishes no key 'k3'")
    refused_token(verifier, idp_token(OTHER_KEY, "k2", alg="RS256"), "RS256")  # not what k2 verifies
    refused_token(verifier, idp_token(EC_KEY, "k2", alg="ES384", aud="https://other/fhir"), "audience")


def test_external_issuer_refetches_are_rate_limited(idp):
    idp.publish(RSA_KEY, "k1")
    verifier = Verifier("https://hub/fhir", None, [ExternalIssuer(IDP, idp.url, refetch_cooldown_s=60)])
    verifier.verify(idp_token(RSA_KEY, "k1"))
    for i in range(5):
        refused_token(verifier, idp_token(OTHER_KEY, f"random-{i}"), "publishes no key")
    assert idp.fetches == 1


def test_unreachable_key_set_is_unavailable_not_unauthenticated():
    port = free_port()  # nothing listens there
    verifier = Verifier("https://hub/fhir", None, [ExternalIssuer(IDP, f"http://127.0.0.1:{port}/certs")])
    with pytest.raises(FhirError) as e:
        verifier.verify(idp_token(RSA_KEY, "k1"))
    assert e.value.status == 503


def test_external_issuer_without_a_jwks_url_finds_it_by_discovery(idp):
    idp.publish(RSA_KEY, "k1")
    verifier = Verifier("https://hub/fhir", None, [ExternalIssuer(idp.issuer)])
    assert verifier.verify(idp_token(RSA_KEY, "k1", iss=idp.issuer))["sub"] == "user-1"
    idp.discovered_issuer = "https://someone.else/realms/region"  # not the provider configured
    other = Verifier("https://hub/fhir", None, [ExternalIssuer(idp.issuer)])
    with pytest.raises(FhirError) as e:
        other.verify(idp_token(RSA_KEY, "k1", iss=idp.issuer))
    assert e.value.status == 503 and "another issuer" in str(e.value)


def test_hub_serve_with_an_issuer_and_no_jwks_url_takes_its_tokens(idp, tmp_path, request):
    """HUB_AUTH_ISSUER without HUB_AUTH_JWKS_URL was ignored: a valid token of that provider got
    401 "kid unknown". Its key set is now found through its discovery document."""
    from tests.conftest import LiveServer, make_settings

    idp.publish(RSA_KEY, "k1")
    settings = make_settings("sqlite", tmp_path, request)
    settings.auth_issuer, settings.auth_jwks_url = idp.issuer, None
    with LiveServer(settings) as live:
        token = idp_token(RSA_KEY, "k1", iss=idp.issuer, aud=live.base, scope="user/Patient.rs",
                          roles=["clinician"])
        r = httpx.get(live.base + "/Patient", headers={"authorization": f"Bearer {token}"},
                      timeout=30, verify=httpclient.verify())
        assert r.status_code == 200, r.text


def test_hub_serve_refuses_a_jwks_url_without_an_issuer(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path), "HUB_AUTH_JWKS_URL": "http://127.0.0.1:1/certs"}
    env.pop("HUB_AUTH_ISSUER", None)
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "HUB_AUTH_ISSUER" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_registry_remembers_jtis_until_they_expire(tmp_path):
    registry = ClientRegistry(tmp_path / "auth.sqlite")
    now = time.time()
    assert registry.use_jti("c", "j1", now + 60)
    assert not registry.use_jti("c", "j1", now + 60)
    assert registry.use_jti("other", "j1", now + 60)  # per client
    assert registry.use_jti("c", "old", now - 1)
    assert registry.purge_jtis(now + 1) == 1  # the expired one only
    assert registry.purge_jtis(now + 120) == 2
    assert registry.use_jti("c", "j1", now + 60)  # forgotten once expired


def test_a_provider_that_does_not_answer_holds_no_other_request(tmp_path, request):
    """With the identity provider accepting connections but never answering, each token naming
    it (a forged one too) fetched its keys on the event loop: /health took 29 s behind six of
    them. Now the fetch runs beside the loop, and a provider found away answers 503 at once
    for a while."""
    import socket
    import threading

    from tests.conftest import LiveServer, make_settings

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nothing is ever read or answered
    issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
    settings = make_settings("sqlite", tmp_path, request)
    settings.auth_issuer, settings.auth_jwks_url = issuer, None
    try:
        with LiveServer(settings) as live:
            forged = idp_token(RSA_KEY, "k1", iss=issuer, aud=live.base, scope="user/Patient.rs",
                               roles=["clinician"])
            answers: list[httpx.Response] = []

            def ask() -> None:
                answers.append(httpx.get(live.base + "/Patient", timeout=60,
                                         headers={"authorization": f"Bearer {forged}"}, verify=httpclient.verify()))
            waiting = threading.Thread(target=ask)
            waiting.start()
            time.sleep(0.5)  # the first token's fetch is under way
            t = time.monotonic()
            health = httpx.get(live.base.rsplit("/fhir", 1)[0] + "/health", timeout=60, verify=httpclient.verify())
            assert health.status_code == 200 and time.monotonic() - t < 2, time.monotonic() - t
            waiting.join(60)
            assert answers[0].status_code == 503, answers[0].text
            t = time.monotonic()  # the provider was found away: the next token is told at once
            again = httpx.get(live.base + "/Patient", timeout=60,
                              headers={"authorization": f"Bearer {forged}"}, verify=httpclient.verify())
            assert again.status_code == 503 and time.monotonic() - t < 1, again.text
    finally:
        silent.close()
