"""The MLLP listener inside TLS (``tls: {cert, key, client_ca}``) and the MLLP client's ``tls``.

Real sockets, the connector in process (its sink points nowhere: messages stay spooled). A sender
that fails the handshake (plaintext, no client certificate, one from another CA) gets no ACK and
the listener goes on: the next good sender still gets AA.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from connectors.config import ConnectorConfig
from connectors.daemon import Connector
from connectors.mllp_client import MLLPClient, ack_code
from connectors.sources.mllp import MLLPSource
from connectors.testing import adt_stream
from connectors.tls import TlsConfigError, client_context

from tests.conftest import free_port
from tests.tls_certs import Pki

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def start(tmp, tls: dict) -> Connector:
    cfg = ConnectorConfig.from_dict({
        "name": "adt", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp / "state"), "durable": False,
        "retry": {"initial_s": 5, "max_s": 5},
        "sources": [{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": 0,
                     "kind": "hl7v2", "idle_timeout_s": 2.0, "tls": tls}],
        "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}})
    conn = Connector(cfg)
    conn.start()
    assert conn.sources[0].ready.wait(10)
    return conn


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, pki):
    conn = start(tmp_path_factory.mktemp("mtls"),
                 {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca_pem})
    yield conn
    conn.stop()
    conn.join()


@pytest.fixture(scope="module")
def messages():
    return [m for _, msgs in adt_stream(3, seed=9) for m in msgs]


def port(conn: Connector) -> int:
    return conn.sources[0].port


def good_round_trip(conn: Connector, pki: Pki, message: bytes) -> None:
    with MLLPClient("127.0.0.1", port(conn), timeout=10, tls=pki.client_tls()) as c:
        assert ack_code(c.send(message)) == "AA"


def test_tls_round_trip_gets_an_ack(mtls, pki, messages):
    with MLLPClient("127.0.0.1", port(mtls), timeout=10, tls=pki.client_tls()) as c:
        assert isinstance(c.sock, ssl.SSLSocket)
        assert ack_code(c.send(messages[0])) == "AA"
        assert ack_code(c.send(messages[1])) == "AA"  # several messages on one connection


def test_plaintext_sender_is_refused_and_the_listener_goes_on(mtls, pki, messages):
    with MLLPClient("127.0.0.1", port(mtls), timeout=10) as c:
        with pytest.raises(OSError):  # ConnectionError: closed, or reset; never an ACK
            c.send(messages[2])
    good_round_trip(mtls, pki, messages[2])


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_sender_without_a_signed_certificate_is_refused(mtls, pki, messages, who, caplog):
    caplog.set_level("WARNING", logger="connectors.mllp")
    failures = mtls.sources[0].stats["tls_failures"]
    tls = pki.client_tls(with_cert=False)
    if who != "no certificate":
        tls.update(cert=pki.stranger_cert, key=pki.stranger_key)
    with pytest.raises(OSError):  # ssl.SSLError at the handshake, or at the first read (TLS 1.3)
        with MLLPClient("127.0.0.1", port(mtls), timeout=10, tls=tls) as c:
            c.send(messages[3])
    good_round_trip(mtls, pki, messages[3])
    # the operator sees why a hospital's sender fails: a line and a count (there were none)
    assert mtls.sources[0].stats["tls_failures"] == failures + 1
    assert any("TLS handshake" in r.getMessage() for r in caplog.records), caplog.text


def test_client_refuses_a_listener_it_does_not_trust(mtls, pki, messages):
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs: not the test CA
        MLLPClient("127.0.0.1", port(mtls), timeout=10, tls={})
    good_round_trip(mtls, pki, messages[4])


def test_a_silent_or_noisy_peer_does_not_stop_the_listener(mtls, pki, messages):
    with socket.create_connection(("127.0.0.1", port(mtls)), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello" + VT + b"MSH|" + FS + CR)  # a broken handshake
        try:
            assert s.recv(4096) is not None
        except OSError:
            pass
    silent = socket.create_connection(("127.0.0.1", port(mtls)), timeout=10)  # says nothing
    try:
        good_round_trip(mtls, pki, messages[5])
    finally:
        silent.close()


def test_tls_without_client_ca_accepts_any_tls_sender(tmp_path, pki, messages):
    conn = start(tmp_path, {"cert": pki.server_cert, "key": pki.server_key})
    try:
        with MLLPClient("127.0.0.1", port(conn), timeout=10,
                        tls=pki.client_tls(with_cert=False)) as c:
            assert ack_code(c.send(messages[0])) == "AA"
    finally:
        conn.stop()
        conn.join()


def test_tls_settings_are_checked(pki, tmp_path):
    with pytest.raises(TlsConfigError):
        MLLPSource("adt", port=0, tls={"key": pki.server_key})  # no cert
    with pytest.raises(TlsConfigError):
        MLLPSource("adt", port=0, tls={"cert": pki.server_cert, "ca": pki.ca_pem})  # a client key
    with pytest.raises(TlsConfigError):
        client_context({"key": pki.client_key})
    with pytest.raises(TlsConfigError, match="tls.cert .*missing.pem: No such file"):
        MLLPSource("adt", port=0, tls={"cert": str(tmp_path / "missing.pem")})
    # relative paths in a connector file are relative to the file
    (tmp_path / "tls").mkdir()
    cfg = ConnectorConfig.from_dict({
        "name": "adt", "institution": {"code": "H1", "oid": "1.2"},
        "sources": [{"type": "mllp", "tls": {"cert": "tls/a.pem", "key": "tls/a.key"}}],
        "sink": {"type": "http", "url": "https://hub.example/fhir", "tls": {"ca": "tls/ca.pem"}}},
        base=tmp_path)
    assert cfg.sources[0]["tls"]["cert"] == str(tmp_path / "tls" / "a.pem")
    assert cfg.sink["tls"]["ca"] == str(tmp_path / "tls" / "ca.pem")


def hub_connector_run(tmp_path: Path, source_tls: str | None, sink: str,
                      timeout: float = 30) -> subprocess.CompletedProcess:
    """`hub connector run` of a YAML file with this MLLP ``tls`` and sink (YAML flow style);
    a daemon that starts when it should not runs into ``timeout``."""
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "d")}
    env.pop("HUB_DATABASE_URL", None)
    config = tmp_path / "adt.yaml"
    config.write_text(
        "name: adt\ninstitution: {code: H0001, oid: '1.2'}\nstate_dir: state\n"
        "sources:\n  - {type: mllp, name: adt, host: 127.0.0.1, port: 0, kind: hl7v2"
        + (f",\n     tls: {source_tls}" if source_tls is not None else "") + "}\n"
        f"sink: {sink}\n")
    return subprocess.run([sys.executable, "-m", "hub.cli", "connector", "run", str(config)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("hub connector: ") and "connector adt:" not in proc.stdout, line
    return line


def nowhere() -> str:
    return f"{{type: http, url: 'http://127.0.0.1:{free_port()}/fhir'}}"


@pytest.mark.parametrize("tls, key", [
    ("{cert: CERT, key: KEY, client_ca: }", "client_ca"),  # YAML: null
    ("{cert: CERT, key: KEY, client_ca: ''}", "client_ca"),
    ("{cert: CERT, key: , client_ca: CA}", "key"),
    ("{}", None),
])
def test_an_empty_tls_setting_of_a_listener_is_refused(tmp_path, pki, tls, key):
    """`client_ca:` left empty served TLS without asking senders for a certificate (a sender
    without one got AA), and `tls: {}` served plain MLLP: each is a mistake said in one line."""
    tls = tls.replace("CERT", pki.server_cert).replace("KEY", pki.server_key) \
        .replace("CA", pki.ca_pem)
    line = one_line(hub_connector_run(tmp_path, tls, nowhere()))
    assert "sources 'adt'" in line, line
    assert (f"tls.{key} is empty" if key else "tls is empty") in line, line
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("tls, why", [("{ca: CA}", "is not https"),
                                      ("{ca: CA, cert: CERT, key: KEY}", "is not https"),
                                      ("{}", "tls is empty")])
def test_a_sink_with_tls_and_a_plain_http_url_is_refused(tmp_path, pki, tls, why):
    """The tls of a sink with an http:// URL was ignored: the signed client assertion, the
    token and every record went in cleartext."""
    tls = tls.replace("CERT", pki.client_cert).replace("KEY", pki.client_key) \
        .replace("CA", pki.ca_pem)
    sink = f"{{type: http, url: 'http://127.0.0.1:{free_port()}/fhir', tls: {tls}}}"
    line = one_line(hub_connector_run(tmp_path, None, sink))
    assert "sink: " in line and why in line, line
    # nor by a token_url of its own: the signed client assertion goes there
    sink = ("{type: http, url: 'https://127.0.0.1:9/fhir', token_url: 'http://127.0.0.1:9/t', "
            f"tls: {{ca: {pki.ca_pem}}}}}")
    line = one_line(hub_connector_run(tmp_path, None, sink))
    assert "sink: tls is given but token_url http://127.0.0.1:9/t is not https" in line, line


def test_a_tls_file_that_does_not_load_is_named(tmp_path, pki):
    """`[Errno 2] No such file or directory` said neither which key nor which file."""
    (tmp_path / "tls").mkdir()
    missing = str(tmp_path / "tls" / "missing.pem")
    sink = "{type: http, url: 'https://127.0.0.1:9/fhir', tls: {ca: tls/missing.pem}}"
    line = one_line(hub_connector_run(tmp_path, None, sink))
    assert "sink" in line and f"tls.ca {missing}" in line and "No such file" in line, line
    line = one_line(hub_connector_run(tmp_path, "{cert: tls/missing.pem}", nowhere()))
    assert "adt" in line and f"tls.cert {missing}" in line and "No such file" in line, line
    # files that are there but are not what the key names
    for tls, key, path, what in [
            (f"{{cert: {pki.server_key}, key: {pki.server_key}}}", "cert", pki.server_key,
             "no PEM certificate"),
            (f"{{cert: {pki.server_cert}, key: {pki.ca_pem}}}", "key", pki.ca_pem,
             "no PEM private key"),
            (f"{{cert: {pki.server_cert}, key: {pki.client_key}}}", "key", pki.client_key,
             "not the key of"),
            (f"{{cert: {pki.server_cert}, key: {pki.server_key}, client_ca: {pki.server_key}}}",
             "client_ca", pki.server_key, "no PEM certificate")]:
        line = one_line(hub_connector_run(tmp_path, tls, nowhere()))
        assert f"tls.{key} {path}" in line and what in line, line


def test_an_expired_listener_certificate_is_said_at_start(tmp_path, pki, caplog):
    """An expired certificate started silently; senders then failed their handshakes. It is
    said at start (and still served: an operator may be mid-rotation)."""
    caplog.set_level("WARNING")
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = ca.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=30),
                         not_after=now - datetime.timedelta(days=2))
    cert_path, key_path = tmp_path / "old.pem", tmp_path / "old.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    source = MLLPSource("adt", port=0, tls={"cert": str(cert_path), "key": str(key_path)})
    assert source.ssl is not None
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(cert_path) in warning and "expired" in warning, warning
    assert (now - datetime.timedelta(days=2)).strftime("%Y-%m-%d") in warning, warning
    caplog.clear()
    MLLPSource("adt", port=0, tls={"cert": pki.server_cert, "key": pki.server_key})
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
