"""``hub serve`` with TLS (HUB_TLS_CERT/KEY) and mutual TLS (HUB_TLS_CLIENT_CA), over real sockets;
and a connector whose HTTP sink presents a client certificate to such a hub.

Certificates come from a test CA (trustme, tests/tls_certs.py). With a client CA a client without
a certificate (or with one from another CA) is refused in the TLS handshake, before any HTTP; one
with a certificate the CA signed gets through, and still needs a bearer token.
"""

from __future__ import annotations

import ssl

import httpx
import pytest

from connectors.config import ConnectorConfig
from connectors.daemon import Connector
from connectors.kinds import converter
from connectors.mllp_client import MLLPClient, ack_code
from connectors.testing import adt_stream, wait_until
from fhir_mapping.base import SourceInfo
from hub.core import httpclient
from hub.core.config import Settings
from tests.conftest import FHIR_JSON, LiveServer, make_settings
from tests.tls_certs import Pki

PATIENT = {"resourceType": "Patient", "name": [{"family": "Tls", "given": ["Test"]}]}


def tls_settings(tmp, request, pki: Pki, client_ca: bool) -> Settings:
    settings = make_settings("sqlite", tmp, request)
    settings.tls_cert, settings.tls_key = pki.server_cert, pki.server_key
    settings.tls_client_ca = pki.ca_pem if client_ca else None
    return settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_hub(tmp_path_factory, request, pki):
    settings = tls_settings(tmp_path_factory.mktemp("https"), request, pki, client_ca=False)
    with LiveServer(settings, verify=pki.client_context(with_cert=False)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_hub(tmp_path_factory, request, pki):
    settings = tls_settings(tmp_path_factory.mktemp("mtls"), request, pki, client_ca=True)
    with LiveServer(settings, verify=pki.client_context()) as server:
        yield server


def test_https_answers_a_client_trusting_the_ca(https_hub, pki):
    assert https_hub.base.startswith("https://127.0.0.1:")
    with httpx.Client(verify=pki.client_context(with_cert=False), auth=https_hub.auth,
                      timeout=30) as c:
        r = c.get(https_hub.base + "/metadata")
        assert r.status_code == 200
        r = c.post(https_hub.base + "/Patient", json=PATIENT, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        # the default base URL follows the scheme: links and Location say https
        assert r.headers["location"].startswith(https_hub.base + "/Patient/")


def test_https_refuses_an_untrusting_client_and_plain_http(https_hub):
    with pytest.raises(httpx.ConnectError):  # the system's CAs did not sign the test server
        httpx.get(https_hub.base + "/metadata", timeout=10, verify=httpclient.verify())
    plain = https_hub.base.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(plain + "/metadata", timeout=10, verify=httpclient.verify())
    with httpx.Client(verify=https_hub.verify) as c:  # still serving
        assert c.get(https_hub.base + "/metadata").status_code == 200


def test_mtls_refuses_a_client_without_a_certificate(mtls_hub, pki):
    for ctx in (pki.client_context(with_cert=False), pki.client_context(stranger=True)):
        with pytest.raises(httpx.TransportError):
            httpx.get(mtls_hub.base + "/metadata", verify=ctx, timeout=10)
    # at the TLS layer itself: the handshake (or, with TLS 1.3, the first read) fails
    import socket

    with socket.create_connection(("127.0.0.1", mtls_hub.port), timeout=10) as raw:
        ctx = pki.client_context(with_cert=False)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /fhir/metadata HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                if not s.recv(1024):  # TLS 1.3: the refusal comes with the first read
                    raise ConnectionError("closed without an answer")


def test_mtls_lets_a_client_certificate_through_and_still_wants_a_token(mtls_hub, pki):
    with httpx.Client(verify=pki.client_context(), timeout=30) as c:
        assert c.get(mtls_hub.base + "/metadata").status_code == 200
        assert c.get(mtls_hub.base + "/Patient").status_code == 401  # no bearer token
        r = c.post(mtls_hub.base + "/Patient", json=PATIENT, headers=FHIR_JSON,
                   auth=mtls_hub.auth)
        assert r.status_code == 201, r.text
        assert c.get(r.headers["location"], auth=mtls_hub.auth).status_code == 200


def test_hub_auth_token_with_a_client_certificate(mtls_hub, pki, tmp_path, capsys):
    """``hub auth token`` had no way to name the CA nor a client certificate: a hub with mutual
    TLS gave it no token."""
    from hub.auth.backend_client import new_key, private_pem, public_jwks
    from hub.auth.clients import open_registry
    from hub.cli import main

    key = new_key()
    client = open_registry(mtls_hub.settings.data_dir).add(
        "cli", public_jwks(key), roles=("steward",), scopes="system/Patient.rs")
    pem = tmp_path / "client.pem"
    pem.write_bytes(private_pem(key))
    argv = ["auth", "token", "--client-id", client.client_id, "--key", str(pem),
            "--scope", "system/Patient.rs", "--url", mtls_hub.base, "--tls-ca", pki.ca_pem]
    assert main([*argv, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key]) == 0
    token = capsys.readouterr().out.strip()
    with httpx.Client(verify=pki.client_context(), timeout=30) as c:
        r = c.get(mtls_hub.base + "/Patient", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    # without its certificate the handshake fails: one line, exit 2
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hub auth: cannot reach the hub") and len(err.strip().splitlines()) == 1
    # it said "Server disconnected without sending a response." and no more
    assert err.strip().endswith("(the hub may require a client certificate: --tls-cert/--tls-key)")
    assert main([*argv, "--tls-key", pki.client_key]) == 2
    assert "--tls-key without --tls-cert" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "nope.pem")]) == 2
    assert "--tls-ca" in capsys.readouterr().err


def test_connector_delivers_with_mtls_to_the_hub(mtls_hub, pki, tmp_path):
    """MLLP over TLS into the connector, its HTTP sink with a client certificate to the hub."""
    info = SourceInfo(institution="H0001", oid="2.16.156.10011.99.1.1", name="测试医院", feed="adt")
    msgs = adt_stream(1, seed=23)[0][1]
    refs = {f"{r['resourceType']}/{r['id']}" for m in msgs for c in converter("hl7v2")(m, info)
            for r in c.resources if r["resourceType"] == "Patient"}
    assert refs
    cfg = ConnectorConfig.from_dict({
        "name": "adt", "institution": {"code": info.institution, "oid": info.oid, "name": info.name},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "retry": {"initial_s": 0.05, "max_s": 0.5},
        "sources": [{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": 0, "kind": "hl7v2",
                     "tls": {"cert": pki.server_cert, "key": pki.server_key,
                             "client_ca": pki.ca_pem}}],
        "sink": {"type": "http", "url": mtls_hub.base, "timeout_s": 10, "tls": pki.client_tls(),
                 **mtls_hub.sink_credentials(info.institution, tmp_path / "keys")}})
    conn = Connector(cfg)
    conn.start()
    try:
        assert conn.sources[0].ready.wait(10)
        with MLLPClient("127.0.0.1", conn.sources[0].port, timeout=10, tls=pki.client_tls()) as c:
            for m in msgs:
                assert ack_code(c.send(m)) == "AA"
        with httpx.Client(verify=pki.client_context(), auth=mtls_hub.auth, timeout=30) as c:
            for ref in refs:
                wait_until(lambda ref=ref: c.get(f"{mtls_hub.base}/{ref}").status_code == 200,
                           30, what=f"{ref} delivered")
    finally:
        conn.stop()
        conn.join()


def test_a_sink_without_its_certificate_does_not_deliver(mtls_hub, pki, tmp_path):
    """The same sink without a client certificate: the hub refuses it at the handshake, which
    the sink reports as the hub being unavailable (the unit stays spooled, retried)."""
    from connectors.sinks.base import Unavailable
    from connectors.sinks.http import HttpSink

    sink = HttpSink(mtls_hub.base, timeout_s=10, tls=pki.client_tls(with_cert=False))
    try:
        with pytest.raises(Unavailable):
            sink.deliver([_FakeUnit()])
    finally:
        sink.close()


class _FakeUnit:
    def entries(self) -> list[dict]:
        return [{"resource": {**PATIENT, "id": "tls-fake"},
                 "request": {"method": "PUT", "url": "Patient/tls-fake"}}]


def test_serve_refuses_a_key_or_client_ca_without_a_certificate(tmp_path, pki):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "data"), "HUB_TLS_CLIENT_CA": pki.ca_pem}
    for name in ("HUB_TLS_CERT", "HUB_TLS_KEY", "HUB_DATABASE_URL"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "HUB_TLS_CERT" in proc.stderr and "Traceback" not in proc.stderr
