"""Access control over real HTTP: every route refuses a caller without a valid token, and the
roles, scopes, institutions and patient context of valid tokens are held to.

One ``hub serve`` with access control on; clients registered in its registry get tokens from its
token endpoint (SMART Backend Services); an external OpenID Connect provider is a local JWKS
server whose tokens carry a patient context.
"""

from __future__ import annotations

import base64
import http.server
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.routing import APIRoute

from hub.auth.backend_client import BackendServicesAuth
from hub.auth.keys import public_jwk
from hub.auth.signer import Signer
from hub.core import httpclient
from tests.api_helpers import consent, observation, patient, unique
from tests.conftest import FHIR_JSON, LiveServer, free_port, make_settings

# routes anyone may call (hub.api.caller.PUBLIC_PATHS)
PUBLIC = {"/fhir/metadata", "/fhir/.well-known/smart-configuration", "/auth/token", "/auth/jwks",
          "/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/v3/wsdl",
          "/console/login",
          # logging in with an identity provider (tests/test_console_oidc.py): the way to a session
          "/console/oidc/start", "/console/oidc/callback"}
FILL = {"rtype": "Patient", "rid": "x1", "vid": "1", "ctype": "Patient", "cid": "x1"}
ISSUER = "https://idp.example.test/realms/region"


@dataclass
class World:
    live: LiveServer
    clinician: BackendServicesAuth
    narrow: BackendServicesAuth
    connector_h1: BackendServicesAuth
    connector_h2: BackendServicesAuth
    steward: BackendServicesAuth
    auditor: BackendServicesAuth
    idp_key: ec.EllipticCurvePrivateKey


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self):  # noqa: N802 - the http.server interface
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(request, tmp_path_factory):
    idp_key = ec.generate_private_key(ec.SECP256R1())
    _Jwks.body = orjson.dumps({"keys": [{**public_jwk(idp_key.public_key()), "alg": "ES256"}]})
    port = free_port()
    idp = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Jwks)
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    settings = make_settings("sqlite", tmp_path_factory.mktemp("security"), request)
    settings.auth_issuer, settings.auth_jwks_url = ISSUER, f"http://127.0.0.1:{port}/jwks"
    try:
        with LiveServer(settings) as live:
            yield World(
                live,
                clinician=live.client_auth(roles=("clinician",), scope="user/*.rs",
                                           institution="H1"),
                narrow=live.client_auth(roles=("clinician",), scope="user/Organization.rs",
                                        institution="H1"),
                connector_h1=live.client_auth(roles=("connector",), scope="system/*.cruds",
                                              institution="H1"),
                connector_h2=live.client_auth(roles=("connector",), scope="system/*.cruds",
                                              institution="H2"),
                steward=live.client_auth(roles=("steward",),
                                         scope="system/Patient.rs system/Person.rs"),
                auditor=live.client_auth(roles=("auditor",), scope="system/AuditEvent.rs"),
                idp_key=idp_key,
            )
    finally:
        idp.shutdown()


def _http(world: World, auth=None, headers: dict | None = None) -> httpx.Client:
    return httpx.Client(base_url=world.live.base, timeout=30, auth=auth,
                        headers={"accept": "application/fhir+json", **(headers or {})}, verify=httpclient.verify())


def _routes() -> list[tuple[str, str]]:
    import tempfile
    from pathlib import Path

    from hub.api.app import create_app
    from hub.core.config import Settings

    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="hub-routes-")), auth=False))
    def walk(routes):  # included routers are branches (no prefixes here)
        for route in routes:
            if hasattr(route, "original_router"):
                yield from walk(route.original_router.routes)
            else:
                yield route

    out = []
    for route in walk(app.routes):
        if not isinstance(route, APIRoute) or route.path in PUBLIC:
            continue
        path = route.path
        for name, value in FILL.items():
            path = path.replace("{" + name + "}", value)
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, path))
        if "HEAD" in route.methods:  # a GET that starts work (an export's kick-off) takes none
            out.append(("HEAD", path))
    return out


_ALL = _routes()
ROUTES = [(m, p) for m, p in _ALL if not p.startswith("/console") and m != "HEAD"]
HEAD_ROUTES = [p for m, p in _ALL if not p.startswith("/console") and m == "HEAD"]
# the operator console's pages: a person's session cookie, not a bearer token (tests/test_console.py)
CONSOLE_ROUTES = [(m, p) for m, p in _ALL if p.startswith("/console") and m != "HEAD"]


def _own_token(world: World, **claims) -> str:
    """A token signed with the hub's own key: the claims given, for the audience it serves."""
    signer = Signer(world.live.settings.data_dir)
    base = {"iss": world.live.origin + "/auth", "aud": world.live.base, "sub": "forger",
            "scope": "system/*.cruds", "hub_roles": ["admin"]}
    return signer.issue({**base, **claims}, 300)


def _bad_tokens(world: World) -> dict[str, str]:
    other = ec.generate_private_key(ec.SECP256R1())
    signer = Signer(world.live.settings.data_dir)
    now = int(time.time())
    forged = jwt.encode({"iss": world.live.origin + "/auth", "aud": world.live.base, "sub": "x",
                         "scope": "system/*.cruds", "hub_roles": ["admin"], "iat": now,
                         "exp": now + 300}, other, algorithm="ES256",
                        headers={"kid": signer.kid})
    expired = jwt.encode({"iss": world.live.origin + "/auth", "aud": world.live.base, "sub": "x",
                          "scope": "system/*.cruds", "hub_roles": ["admin"], "iat": now - 900,
                          "exp": now - 600}, signer._load()[0].private, algorithm="ES256",
                         headers={"kid": signer.kid})
    return {"none": "", "malformed": "Bearer not-a-jwt", "expired": f"Bearer {expired}",
            "bad signature": f"Bearer {forged}",
            "wrong audience": "Bearer " + _own_token(world, aud="https://elsewhere.example/fhir"),
            "unknown issuer": "Bearer " + jwt.encode(
                {"iss": "https://evil.example", "aud": world.live.base, "sub": "x",
                 "exp": now + 300}, other, algorithm="ES256", headers={"kid": "k"})}


@pytest.mark.parametrize("method,path", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_refuses_a_caller_without_a_valid_token(world, method, path):
    for case, header in _bad_tokens(world).items():
        headers = {"accept": "application/fhir+json", "content-type": "application/fhir+json"}
        if header:
            headers["authorization"] = header
        r = httpx.request(method, world.live.origin + path, headers=headers, content=b"{}",
                          timeout=30, verify=httpclient.verify())
        assert r.status_code == 401, (case, r.status_code, r.text[:300])
        assert r.json()["resourceType"] == "OperationOutcome", case
        assert r.headers["www-authenticate"].startswith("Bearer"), case
        # RFC 6750 3.1: an error code only when a token was sent
        assert ("error=" in r.headers["www-authenticate"]) == bool(header), case


@pytest.mark.parametrize("path", HEAD_ROUTES)
def test_head_refuses_a_caller_without_a_valid_token(world, path):
    # HEAD is GET without the body: it says whether a record exists and its version
    for case, header in _bad_tokens(world).items():
        headers = {"authorization": header} if header else {}
        r = httpx.head(world.live.origin + path, headers=headers, timeout=30, verify=httpclient.verify())
        assert r.status_code == 401 and r.content == b"", (case, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer"), case


@pytest.mark.parametrize("method,path", CONSOLE_ROUTES, ids=[f"{m} {p}" for m, p in CONSOLE_ROUTES])
def test_every_console_page_sends_a_caller_without_a_session_to_its_login(world, method, path):
    """Without a session cookie, a console page or action answers nothing but the way to its
    login page, whatever bearer token comes (an API token opens no console page)."""
    for case, header in {**_bad_tokens(world),
                         "a valid admin token": "Bearer " + _own_token(world)}.items():
        headers = {"authorization": header} if header else {}
        r = httpx.request(method, world.live.origin + path, headers=headers, content=b"",
                          timeout=30, follow_redirects=False, verify=httpclient.verify())
        assert r.status_code == 303, (case, r.status_code)
        assert r.headers["location"].startswith("/console/login?next="), case
        assert r.content == b"", case


def test_public_routes_answer_without_a_token(world):
    for path in ("/fhir/metadata", "/fhir/.well-known/smart-configuration", "/auth/jwks",
                 "/health", "/ready"):
        assert httpx.get(world.live.origin + path, timeout=30, verify=httpclient.verify()).status_code == 200, path


def _put(client: httpx.Client, d: dict, **headers) -> httpx.Response:
    return client.put(f"/{d['resourceType']}/{d['id']}", json=d, headers={**FHIR_JSON, **headers})


def test_scopes_and_roles(world):
    p = patient(rid=unique()[:16])
    with _http(world, world.connector_h1) as c:
        assert _put(c, p).status_code == 201
    with _http(world, world.narrow) as c:
        r = c.get(f"/Patient/{p['id']}")
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        assert c.get("/Patient", params={"_id": p["id"]}).status_code == 403
        assert c.get("/Organization", params={"name": "x"}).status_code == 200
    with _http(world, world.clinician) as c:
        assert c.get(f"/Patient/{p['id']}").status_code == 200
        assert _put(c, {**p, "gender": "female"}).status_code == 403  # a clinician reads
        assert c.get("/AuditEvent", params={"_count": "1"}).status_code == 403
        assert c.get("/$quality-report").status_code == 403
    with _http(world, world.auditor) as c:
        assert c.get("/AuditEvent", params={"_count": "1"}).status_code == 200
        assert c.get(f"/Patient/{p['id']}").status_code == 403  # no scope on Patient
    with _http(world, world.steward) as c:
        assert c.get("/$quality-report").status_code == 200
    with _http(world, world.live.auth) as c:
        forged = {"resourceType": "AuditEvent", "recorded": "2024-01-01T00:00:00Z",
                  "type": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                           "code": "110110"},
                  "agent": [{"requestor": True}], "source": {"observer": {"display": "x"}}}
        r = c.post("/AuditEvent", json=forged, headers=FHIR_JSON)
        assert r.status_code == 403  # not even an administrator writes the audit


def test_a_connector_writes_as_its_own_institution_only(world):
    p = patient(rid=unique()[:16])
    with _http(world, world.connector_h1) as c:
        # the header claims another institution: the token's wins
        assert _put(c, p, **{"x-hub-source-institution": "H9"}).status_code == 201
    store = world.live.settings.open_store()
    try:
        header = orjson.loads(store.latest("Patient", p["id"]).state.partition(b"\n")[0])
    finally:
        store.close()
    assert header["source"]["institution"] == "H1"
    with _http(world, world.connector_h2) as c:
        assert _put(c, {**p, "gender": "male"}).status_code == 403
        assert c.delete(f"/Patient/{p['id']}").status_code == 403
    with _http(world, world.connector_h1) as c:
        assert _put(c, {**p, "gender": "male"}).status_code == 200


def test_a_deleted_record_stays_its_writers_institutions(world):
    """A deletion carries who deleted it: a record H1 wrote and an admin (of no institution)
    deleted was judged by the deletion, so H2's connector wrote it again as its own."""
    p = patient(rid=unique()[:16])
    with _http(world, world.connector_h1) as c:
        assert _put(c, p).status_code == 201
    with _http(world, world.live.auth) as c:
        assert c.delete(f"/Patient/{p['id']}").status_code in (200, 204)
    with _http(world, world.connector_h2) as c:
        r = _put(c, {**p, "gender": "male"})
        assert r.status_code == 403, r.text
        assert c.delete(f"/Patient/{p['id']}").status_code == 403
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {**p, "gender": "male"},
             "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}]}
        r = c.post("", json=bundle, headers=FHIR_JSON)
        assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"].startswith("403")
    with _http(world, world.live.auth) as c:
        assert c.get(f"/Patient/{p['id']}").status_code == 410
    with _http(world, world.connector_h1) as c:  # its writer's institution writes it again
        assert _put(c, {**p, "gender": "female"}).status_code == 201


def test_a_stewards_edit_leaves_the_record_its_creators(world):
    """The institution that created a record owns it whoever edits it since: a steward's note
    (a steward of another institution, or of none) handed it to the last writer, so H1's own
    correction was refused and H2's connector changed H1's lab value."""
    p = patient(rid=unique()[:16])
    first, second = ({**observation(f"Patient/{p['id']}"), "id": unique()[:16]} for _ in range(2))
    with _http(world, world.connector_h1) as c:
        for d in (p, first, second):
            assert _put(c, d).status_code == 201
    noted = [{"text": "checked by the data steward"}]
    h3 = world.live.client_auth(roles=("steward",), scope="system/Observation.cruds",
                                institution="H3")
    nowhere = world.live.client_auth(roles=("steward",), scope="system/Observation.cruds")
    with _http(world, h3) as c:  # a steward changes any institution's record
        assert _put(c, {**first, "note": noted}).status_code == 200
    with _http(world, nowhere) as c:
        assert _put(c, {**second, "note": noted}).status_code == 200
    corrected = {"value": 61, "unit": "/min"}
    with _http(world, world.connector_h2) as c:  # still H1's, whoever edited them last
        for d in (first, second):
            r = _put(c, {**d, "valueQuantity": {"value": 1, "unit": "/min"}})
            assert r.status_code == 403 and "another institution" in r.text, r.text
            assert c.delete(f"/Observation/{d['id']}").status_code == 403
    with _http(world, world.connector_h1) as c:  # H1 corrects its own
        for d in (first, second):
            r = _put(c, {**d, "note": noted, "valueQuantity": corrected})
            assert r.status_code == 200, r.text
            stored = c.get(f"/Observation/{d['id']}").json()
            assert stored["valueQuantity"] == corrected and stored["meta"]["versionId"] == "3"


def test_a_conditional_write_cannot_reach_another_institutions_record(world):
    """Criteria find the record to change: the one found must be the caller's own, as when it is
    named by id (conditional update and delete, alone and in a transaction)."""
    p = patient(rid=unique()[:16])
    ident = p["identifier"][0]
    criteria = f"identifier={ident['system']}|{ident['value']}"
    with _http(world, world.connector_h1) as c:
        assert _put(c, p).status_code == 201
    changed = {**p, "gender": "male"}
    changed.pop("id")
    with _http(world, world.connector_h2) as c:
        r = c.put(f"/Patient?{criteria}", json=changed, headers=FHIR_JSON)
        assert r.status_code == 403, r.text
        assert c.delete(f"/Patient?{criteria}").status_code == 403
        gender = [{"op": "add", "path": "/gender", "value": "male"}]
        assert c.patch(f"/Patient?{criteria}", json=gender,
                       headers={"content-type": "application/json-patch+json"}).status_code == 403
        assert c.patch(f"/Patient/{p['id']}", json=gender,
                       headers={"content-type": "application/json-patch+json"}).status_code == 403
        patch_entry = {"resource": {"resourceType": "Binary",
                                    "contentType": "application/json-patch+json",
                                    "data": base64.b64encode(orjson.dumps(gender)).decode()},
                       "request": {"method": "PATCH", "url": f"Patient?{criteria}"}}
        assert c.post("", json={"resourceType": "Bundle", "type": "transaction",
                                "entry": [patch_entry]}, headers=FHIR_JSON).status_code == 403
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": changed, "request": {"method": "PUT", "url": f"Patient?{criteria}"}}]}
        assert c.post("", json=bundle, headers=FHIR_JSON).status_code == 403
        bundle["type"] = "batch"
        r = c.post("", json=bundle, headers=FHIR_JSON)
        assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"].startswith("403")
    with _http(world, world.connector_h1) as c:
        stored = c.get(f"/Patient/{p['id']}").json()
        assert "gender" not in stored and stored["meta"]["versionId"] == "1"
        r = c.put(f"/Patient?{criteria}", json=changed, headers=FHIR_JSON)
        assert r.status_code == 200, r.text  # its own institution's record: changed
        assert c.get(f"/Patient/{p['id']}").json()["gender"] == "male"


def test_the_shared_record_needs_a_purpose_and_break_the_glass_a_role(world):
    p = patient(rid=unique()[:16])
    with _http(world, world.connector_h1) as c:
        assert _put(c, p).status_code == 201
        r = c.get(f"/Patient/{p['id']}/$everything", headers={"x-purpose-of-use": "ETREAT"})
        assert r.status_code == 403
    with _http(world, world.clinician) as c:
        assert c.get(f"/Patient/{p['id']}/$everything").status_code == 403
        r = c.get(f"/Patient/{p['id']}/$everything", headers={"x-purpose-of-use": "TREAT"})
        assert r.status_code == 200, r.text
        r = c.get(f"/Patient/{p['id']}/$everything", headers={"x-purpose-of-use": "ETREAT"})
        assert r.status_code == 200, r.text
    # every break-the-glass access is listed for review, the refused one too
    from hub.access.auditlog import open_audit_log
    from hub.access.chain import emergency_accesses

    settings = world.live.settings
    log = open_audit_log(settings.data_dir, settings.database_url)
    deadline = time.monotonic() + 10
    try:  # the server moves its spool into the tables within a fraction of a second
        while True:
            listed = [a for a in emergency_accesses(log) if f"Patient/{p['id']}" in a["what"]]
            if len(listed) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        log.engine.dispose()  # not close(): that would move the server's spool
    assert sorted(a["outcome"] for a in listed) == ["0", "4"], listed
    assert {a["who"] for a in listed} == {world.clinician.client_id, world.connector_h1.client_id}


def test_identity_decisions_are_a_stewards_and_record_the_token_subject(world):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/nobody"}}]}
    with _http(world, world.clinician) as c:
        assert c.post("/Person/$unlink", json=body, headers=FHIR_JSON).status_code == 403
    p = patient(rid=unique()[:16])
    with _http(world, world.connector_h1) as c:
        assert _put(c, p).status_code == 201
    link = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{p['id']}"}}]}
    with _http(world, world.steward, {"x-hub-user": "someone-else"}) as c:
        r = c.post("/Person/$link", json=link, headers=FHIR_JSON)
        assert r.status_code in (200, 201), r.text
    from hub.core.identity_events import STREAM, from_state

    store = world.live.settings.open_store()
    try:
        events = [from_state(e.topic, e.state)
                  for e in store.recorder.select_events(STREAM, desc=True, limit=50)]
    finally:
        store.close()
    mine = [e for e in events if f"Patient/{p['id']}" in orjson.dumps(e.to_json()).decode()]
    assert mine and {e.data["by"]["name"] for e in mine} == {world.steward.client_id}


def _patient_token(world: World, pid: str, scope: str = "patient/*.rs") -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": world.live.base, "sub": f"user-{pid}",
                       "scope": scope, "patient": pid, "roles": ["clinician"],
                       "fhirUser": f"Patient/{pid}", "iat": now, "exp": now + 300,
                       "jti": uuid.uuid4().hex},
                      world.idp_key, algorithm="ES256",
                      headers={"kid": public_jwk(world.idp_key.public_key())["kid"]})


def test_a_patient_context_token_sees_its_own_patient_only(world):
    mine, other = patient(rid=unique()[:16]), patient(rid=unique()[:16])
    mine_obs = {**observation(f"Patient/{mine['id']}"), "id": unique()[:16]}
    other_obs = {**observation(f"Patient/{other['id']}"), "id": unique()[:16]}
    with _http(world, world.connector_h1) as c:
        for d in (mine, other, mine_obs, other_obs):
            assert _put(c, d).status_code == 201
    token = _patient_token(world, mine["id"])
    with _http(world, headers={"authorization": f"Bearer {token}"}) as c:
        assert c.get(f"/Patient/{mine['id']}").status_code == 200
        assert c.get(f"/Patient/{other['id']}").status_code == 403
        assert c.get(f"/Observation/{other_obs['id']}").status_code == 403
        found = c.get("/Observation", params={"_id": f"{mine_obs['id']},{other_obs['id']}"})
        assert found.status_code == 200
        assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [mine_obs["id"]]
        assert _put(c, {**mine, "gender": "female"}).status_code == 403  # read scopes only
    # a record of another server's Patient of the same id is someone else's
    theirs = {**observation(f"http://elsewhere.example/fhir/Patient/{mine['id']}"),
              "id": unique()[:16]}
    versioned = {**observation(f"Patient/{mine['id']}/_history/1"), "id": unique()[:16]}
    with _http(world, world.connector_h1) as c:
        for d in (theirs, versioned):
            assert _put(c, d).status_code == 201
    with _http(world, headers={"authorization": f"Bearer {token}"}) as c:
        assert c.get(f"/Observation/{theirs['id']}").status_code == 403
        assert c.get(f"/Observation/{versioned['id']}").status_code == 200


def test_the_demo_client_gets_a_token_from_the_command_line(world, capsys):
    from hub.cli import main

    data = ["--data-dir", str(world.live.settings.data_dir)]
    assert main(["auth", "demo-client", "--json", *data]) == 0
    demo = orjson.loads(capsys.readouterr().out)
    assert main(["auth", "demo-client", "--json", *data]) == 0  # made once
    assert orjson.loads(capsys.readouterr().out) == demo
    assert main(["auth", "token", "--client-id", demo["client_id"], "--key", demo["key"],
                 "--url", world.live.base, *data]) == 0
    token = capsys.readouterr().out.strip()
    with _http(world, headers={"authorization": f"Bearer {token}"}) as c:
        assert c.get("/Patient", params={"_count": "1"}).status_code == 200
        # system/*.rs by default: no writes
        assert _put(c, patient(rid=unique()[:16])).status_code == 403


def _consent(pid: str, provision: dict, org: str = "H1") -> dict:
    """An opt-out: a Consent whose top-level provision denies."""
    return consent(pid, {"type": "deny", **provision}, org, policyRule={"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]})


def test_consents_are_kept_on_read_search_include_and_everything(world):
    h2 = world.live.client_auth(roles=("clinician",), scope="user/*.rs", institution="H2")
    sensitive, opted_out, excluding = (patient(rid=unique()[:16]) for _ in range(3))
    plain = {**observation(f"Patient/{sensitive['id']}"), "id": unique()[:16]}
    psy = {**observation(f"Patient/{sensitive['id']}"), "id": unique()[:16],
           "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                  "code": "PSY"}]}}
    of_opted_out = {**observation(f"Patient/{opted_out['id']}"), "id": unique()[:16]}
    with _http(world, world.connector_h1) as c:
        for d in (sensitive, opted_out, excluding, plain, psy, of_opted_out):
            assert _put(c, d).status_code == 201
        for consent in (
                _consent(sensitive["id"], {"securityLabel": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                     "code": "PSY"}]}),
                _consent(opted_out["id"], {}),
                _consent(excluding["id"], {"actor": [{
                    "role": {"coding": [{"code": "PRCP"}]},
                    "reference": {"reference": "Organization/H2"}}]})):
            assert _put(c, consent).status_code == 201, consent
    with _http(world, world.clinician) as same:  # the recording institution sees everything
        assert same.get(f"/Observation/{psy['id']}").status_code == 200
        assert same.get(f"/Patient/{opted_out['id']}").status_code == 200
        assert same.get(f"/Patient/{excluding['id']}").status_code == 200
    with _http(world, h2) as other:
        # a sensitive category: hidden from another institution, the rest shown
        assert other.get(f"/Observation/{psy['id']}").status_code == 403
        found = other.get("/Observation", params={"subject": f"Patient/{sensitive['id']}"})
        assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [plain["id"]]
        # opted out of sharing: nothing of the patient beyond the recording institution
        assert other.get(f"/Patient/{opted_out['id']}").status_code == 403
        found = other.get("/Observation", params={"_id": of_opted_out["id"],
                                                  "_include": "Observation:subject"})
        assert not found.json().get("entry")
        r = other.get(f"/Patient/{opted_out['id']}/$everything",
                      headers={"x-purpose-of-use": "TREAT"})
        assert r.status_code in (200, 403) and not r.json().get("entry")
        # an institution named by the consent
        assert other.get(f"/Patient/{excluding['id']}").status_code == 403
        # break the glass sets the consent aside (and is audited, see above)
        r = other.get(f"/Patient/{opted_out['id']}", headers={"x-purpose-of-use": "ETREAT"})
        assert r.status_code == 200, r.text


def test_counts_and_totals_leave_out_what_a_consent_hides(world):
    """A total is a disclosure too: how many results another institution may not see is not
    told to it, as a count, as a search's total, nor through _has."""
    h2 = world.live.client_auth(roles=("clinician",), scope="user/*.rs", institution="H2")
    opted_out = patient(rid=unique()[:16])
    tests = [{**observation(f"Patient/{opted_out['id']}"), "id": unique()[:16]} for _ in range(3)]
    with _http(world, world.connector_h1) as c:
        for d in (opted_out, *tests):
            assert _put(c, d).status_code == 201
        assert _put(c, _consent(opted_out["id"], {})).status_code == 201
    subject = {"subject": f"Patient/{opted_out['id']}"}
    with _http(world, world.clinician) as same:  # the recording institution: all three
        assert same.get("/Observation", params={**subject, "_summary": "count"}).json()["total"] == 3
    with _http(world, h2) as other:
        r = other.get("/Observation", params={**subject, "_summary": "count"})
        assert r.status_code == 200 and r.json()["total"] == 0, r.text
        r = other.get("/Observation", params={**subject, "_total": "accurate"})
        assert r.json()["total"] == 0 and not r.json().get("entry"), r.text
        r = other.get("/Patient", params={"_id": opted_out["id"], "_total": "accurate",
                                          "_has:Observation:subject:status": "final"})
        assert r.json().get("total", 0) == 0 and not r.json().get("entry"), r.text


def test_has_and_chains_hold_only_through_what_the_caller_sees(world):
    """A search by what refers to a resource (_has) or by what it refers to (a chain) must not
    find a resource the caller sees through one it may not see: the answer would tell that the
    hidden one exists and what it holds."""
    h2 = world.live.client_auth(roles=("clinician",), scope="user/*.rs", institution="H2")
    psy_label = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    secret = unique()[:12]
    p = patient(rid=unique()[:16])
    hidden = {**observation(f"Patient/{p['id']}"), "id": unique()[:16],
              "code": {"coding": [{"system": "urn:test:code", "code": secret}]},
              "meta": {"security": [psy_label]}}
    panel = {**observation(f"Patient/{p['id']}"), "id": unique()[:16],
             "hasMember": [{"reference": f"Observation/{hidden['id']}"}]}
    with _http(world, world.connector_h1) as c:
        for d in (p, hidden, panel):
            assert _put(c, d).status_code == 201, d
        assert _put(c, _consent(p["id"], {"securityLabel": [psy_label]})).status_code == 201
    has = {"_has:Observation:subject:code": f"urn:test:code|{secret}"}
    chain = {"has-member:Observation.code": f"urn:test:code|{secret}"}

    def ids(r: httpx.Response) -> list[str]:
        assert r.status_code == 200, r.text
        return [e["resource"]["id"] for e in r.json().get("entry", [])
                if e["search"]["mode"] == "match"]

    with _http(world, world.clinician) as same:  # H1 sees the hidden one: both found
        assert ids(same.get("/Patient", params=has)) == [p["id"]]
        assert ids(same.get("/Observation", params=chain)) == [panel["id"]]
    with _http(world, h2) as other:
        assert other.get(f"/Patient/{p['id']}").status_code == 200  # the patient is shown
        assert other.get(f"/Observation/{panel['id']}").status_code == 200  # and the panel
        assert other.get(f"/Observation/{hidden['id']}").status_code == 403
        for path, params in (("/Patient", has), ("/Observation", chain)):
            assert ids(other.get(path, params=params)) == [], (path, params)
            r = other.get(path, params={**params, "_summary": "count"})
            assert r.json()["total"] == 0, r.text
        # what holds through what it sees is still found
        assert ids(other.get("/Patient", params={
            "_id": p["id"], "_has:Observation:subject:has-member": f"Observation/{hidden['id']}"
        })) == [p["id"]]


def test_everything_and_system_search_count_only_what_the_caller_sees(world):
    h2 = world.live.client_auth(roles=("clinician",), scope="user/*.rs", institution="H2")
    psy_label = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    p = patient(rid=unique()[:16])
    shown = [{**observation(f"Patient/{p['id']}"), "id": unique()[:16]} for _ in range(2)]
    hidden = [{**observation(f"Patient/{p['id']}"), "id": unique()[:16],
               "meta": {"security": [psy_label]}} for _ in range(3)]
    with _http(world, world.connector_h1) as c:
        for d in (p, *shown, *hidden):
            assert _put(c, d).status_code == 201
        assert _put(c, _consent(p["id"], {"securityLabel": [psy_label]})).status_code == 201
    with _http(world, h2, {"x-purpose-of-use": "TREAT"}) as other:
        r = other.get(f"/Patient/{p['id']}/$everything", params={"_type": "Observation"})
        assert r.status_code == 200, r.text
        matches = [e for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]
        assert sorted(e["resource"]["id"] for e in matches) == sorted(d["id"] for d in shown)
        assert r.json().get("total") == 2, r.text
        r = other.get("", params={"_type": "Observation", "subject": f"Patient/{p['id']}",
                                  "_summary": "count"})
        assert r.status_code == 200 and r.json()["total"] == 2, r.text


def test_a_matched_conditional_create_does_not_hand_out_what_the_caller_may_not_read(world):
    """A conditional create that finds the record answers with where it is, and with its content
    only to a caller who may read it: here the patient has opted out of sharing beyond the
    institution that recorded them, so another institution's steward gets no content (its
    connector is refused: it may not take the record as its own)."""
    opted_out = patient(rid=unique()[:16])
    with _http(world, world.connector_h1) as c:
        assert _put(c, opted_out).status_code == 201
        assert _put(c, _consent(opted_out["id"], {})).status_code == 201
    again = {k: v for k, v in opted_out.items() if k != "id"}
    want = {**FHIR_JSON, "prefer": "return=representation"}
    with _http(world, world.connector_h2) as c:
        r = c.post("/Patient", json=again, headers={
            **want, "if-none-exist": f"identifier={again['identifier'][0]['system']}|"
                                     f"{again['identifier'][0]['value']}"})
        assert r.status_code == 412 and opted_out["id"] not in r.text, r.text
    steward = world.live.client_auth(roles=("steward",), scope="system/*.cruds",
                                     institution="H2")
    with _http(world, steward) as c:
        assert c.get(f"/Patient/{opted_out['id']}").status_code == 403
        r = c.post("/Patient", json=again, headers={
            **want, "if-none-exist": f"identifier={again['identifier'][0]['system']}|"
                                     f"{again['identifier'][0]['value']}"})
        assert r.status_code == 200, r.text
        assert r.json()["resourceType"] == "OperationOutcome"  # where it is, not what it says
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": again, "request": {
                "method": "POST", "url": "Patient",
                "ifNoneExist": f"identifier={again['identifier'][0]['system']}|"
                               f"{again['identifier'][0]['value']}"}}]}
        r = c.post("", json=bundle, headers=want)
        assert r.status_code == 200, r.text
        entry = r.json()["entry"][0]
        assert entry["response"]["status"].startswith("200") and "resource" not in entry
    with _http(world, world.connector_h1) as c:  # the institution that recorded it: shown
        r = c.post("/Patient", json=again, headers={
            **want, "if-none-exist": f"identifier={again['identifier'][0]['system']}|"
                                     f"{again['identifier'][0]['value']}"})
        assert r.status_code == 200 and r.json()["id"] == opted_out["id"], r.text


@pytest.mark.parametrize("method,path", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_refuses_a_valid_token_that_grants_nothing(world, method, path):
    """Authenticated but without a scope or role for anything: refused with 403, never answered.
    A request no caller could make (a body the route cannot read, 400; a content type it does not
    take, 415; an interaction it does not have, 405) is refused as such before anything is
    looked up, the same for everyone."""
    token = _own_token(world, scope="openid", hub_roles=[])
    headers = {"accept": "application/fhir+json", "content-type": "application/fhir+json",
               "authorization": f"Bearer {token}"}
    r = httpx.request(method, world.live.origin + path, headers=headers, content=b"{}",
                      timeout=30, verify=httpclient.verify())
    assert r.status_code in (400, 403, 405, 415), (r.status_code, r.text[:300])
    if r.headers.get("content-type", "").startswith("application/fhir+json"):
        assert r.json()["resourceType"] == "OperationOutcome"


def test_a_method_not_allowed_says_which_are(world):
    """RFC 9110 15.5.6: a 405 names the methods the resource takes (it named none)."""
    r = httpx.request("PROPFIND", world.live.base + "/metadata", timeout=30, verify=httpclient.verify())
    assert r.status_code == 405 and "GET" in r.headers.get("allow", ""), (r.status_code,
                                                                          r.headers)
