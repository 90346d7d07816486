"""The MLLP listener inside TLS (``tls: {cert, key, client_ca}``) and the MLLP client's ``tls``.

Real sockets, the connector in process (its sink points nowhere: messages stay spooled). A sender
that fails the handshake (plaintext, no client certificate, one from another CA) gets no ACK and
the listener goes on: the next good sender still gets AA.
"""

from __future__ import annotations

import socket
import ssl

import pytest
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
    with pytest.raises(OSError):
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
