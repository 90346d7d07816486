"""The connector's delivery thread outlives a failing spool: a SQLite error there (a lock held
over the busy timeout, a full disk) ended the thread, and nothing was delivered again until the
connector restarted, while its status still said "retrying"."""

from __future__ import annotations

import sqlite3
import time

import httpx
import orjson
import pytest

from connectors.base import Envelope
from connectors.config import ConnectorConfig
from connectors.daemon import Connector
from hub.core import httpclient
from tests.conftest import live_server


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory):
    with live_server(request, tmp_path_factory, "sqlite") as live:
        yield live


def test_delivery_goes_on_after_the_spool_failed(hub, tmp_path):
    cfg = ConnectorConfig.from_dict({
        "name": "lab", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "retry": {"initial_s": 0.1, "max_s": 0.2},
        "sources": [{"type": "folder", "name": "in", "path": str(tmp_path / "in"),
                     "kind": "fhir"}],
        "sink": {"type": "http", "url": hub.base,
                 **hub.sink_credentials("H0001", tmp_path / "keys")}})
    conn = Connector(cfg, sources=[])
    rid = "spool-locked-1"
    conn.spool.accept([Envelope(orjson.dumps({"resourceType": "Patient", "id": rid}), "fhir",
                                "in")])
    conn.spool._db.execute("PRAGMA busy_timeout = 100")  # fail fast while the file is locked
    other = sqlite3.connect(str(cfg.spool_path), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    conn.start()
    try:
        time.sleep(1.0)  # the delivery thread meets "database is locked", more than once
        other.execute("ROLLBACK")
        other.close()
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=hub.base, timeout=10, auth=hub.auth, verify=httpclient.verify()) as c:
            while c.get(f"/Patient/{rid}").status_code != 200:
                assert time.monotonic() < deadline, conn.status()["sink"]
                time.sleep(0.2)
        assert conn.threads["<delivery>"].is_alive()
    finally:
        conn.stop()
        conn.join()


def test_a_message_with_one_refused_resource_writes_nothing_of_it(hub, tmp_path):
    """The sink sent a batch Bundle: a message holding an Observation and a Patient the hub
    refused was dead-lettered while its Observation was stored, referring to no one. As a
    transaction, the refused message writes nothing; the good one beside it is written."""
    cfg = ConnectorConfig.from_dict({
        "name": "lab2", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "sources": [{"type": "folder", "name": "in", "path": str(tmp_path / "in"),
                     "kind": "fhir"}],
        "sink": {"type": "http", "url": hub.base,
                 **hub.sink_credentials("H0001", tmp_path / "keys")}})
    conn = Connector(cfg, sources=[])

    def message(n: int, gender: str) -> bytes:
        return orjson.dumps({"resourceType": "Bundle", "id": f"msg-{n}", "type": "collection",
                             "entry": [{"resource": {
                                 "resourceType": "Observation", "id": f"obs-{n}",
                                 "status": "final", "code": {"text": "K"},
                                 "subject": {"reference": f"Patient/pat-{n}"}}},
                                 {"resource": {"resourceType": "Patient", "id": f"pat-{n}",
                                               "gender": gender}}]})

    conn.spool.accept([Envelope(message(1, "maybe"), "fhir", "in"),
                       Envelope(message(2, "female"), "fhir", "in")])
    units = conn.spool.pending()
    errors = conn.sink.deliver(units)
    assert errors[0] is not None and errors[1] is None, errors
    with httpx.Client(base_url=hub.base, timeout=10, auth=hub.auth, verify=httpclient.verify()) as c:
        assert c.get("/Observation/obs-1").status_code == 404
        assert c.get("/Observation/obs-2").status_code == 200
    conn.spool.close()


def test_a_message_touching_another_institutions_record_is_refused_alone(hub, tmp_path):
    """In a transaction, one message's write to a record of another institution (403) refused
    the whole Bundle; that status must refuse that message alone, not hold the feed for ever."""
    def connector(name: str, code: str) -> Connector:
        return Connector(ConnectorConfig.from_dict({
            "name": name, "institution": {"code": code, "oid": "2.16.156.10011.99.1.1"},
            "state_dir": str(tmp_path / name), "durable": False,
            "sources": [{"type": "folder", "name": "in", "path": str(tmp_path / "in"),
                         "kind": "fhir"}],
            "sink": {"type": "http", "url": hub.base,
                     **hub.sink_credentials(code, tmp_path / f"keys-{name}")}}), sources=[])

    def patient(rid: str) -> bytes:
        return orjson.dumps({"resourceType": "Patient", "id": rid, "gender": "female"})

    first, second = connector("first", "H0101"), connector("second", "H0202")
    first.spool.accept([Envelope(patient("owned-by-first"), "fhir", "in")])
    assert first.sink.deliver(first.spool.pending()) == [None]
    second.spool.accept([Envelope(patient("owned-by-first"), "fhir", "in"),
                         Envelope(patient("new-of-second"), "fhir", "in")])
    errors = second.sink.deliver(second.spool.pending())
    if not hub.settings.auth:
        pytest.skip("without access control no institution owns a record")
    assert errors[0] is not None and errors[0]["status"] == 403 and errors[1] is None, errors
    with httpx.Client(base_url=hub.base, timeout=10, auth=hub.auth, verify=httpclient.verify()) as c:
        assert c.get("/Patient/new-of-second").status_code == 200
    first.spool.close()
    second.spool.close()


def _lab(tmp_path, sink: dict) -> ConnectorConfig:
    return ConnectorConfig.from_dict({
        "name": "lab", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "retry": {"initial_s": 0.1, "max_s": 0.2},
        "sources": [{"type": "folder", "name": "in", "path": str(tmp_path / "in"), "kind": "fhir"}],
        "sink": {"type": "http", "url": sink.pop("url"), **sink}})


def test_a_sink_with_a_p256_key_delivers(hub, tmp_path):
    """Its assertions were signed ES384 whatever the key: a P-256 key's sink retried for ever."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    conn = Connector(_lab(tmp_path, {"url": hub.base, **hub.sink_credentials(
        "H0001", tmp_path / "keys", key)}), sources=[])
    rid = "p256-sink-1"
    conn.spool.accept([Envelope(orjson.dumps({"resourceType": "Patient", "id": rid}), "fhir", "in")])
    conn.start()
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=hub.base, timeout=10, auth=hub.auth, verify=httpclient.verify()) as c:
            while c.get(f"/Patient/{rid}").status_code != 200:
                assert time.monotonic() < deadline, conn.status()["sink"]
                time.sleep(0.2)
    finally:
        conn.stop()
        conn.join()


def test_a_sink_whose_key_cannot_sign_does_not_start(hub, tmp_path):
    """A key no token endpoint takes is the configuration's mistake, said once at start (it was
    a delivery error retried for ever)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from connectors.config import ConfigError
    from hub.auth.backend_client import private_pem

    pem = tmp_path / "ed.pem"
    pem.write_bytes(private_pem(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(ConfigError) as e:
        Connector(_lab(tmp_path, {"url": hub.base, "client_id": "c", "private_key": str(pem)}),
                  sources=[])
    assert str(e.value).startswith("sink: private_key ") and "Ed25519" in str(e.value)
