"""End to end: MLLP senders -> connector daemon (own process) -> hub serve (own process) -> FHIR reads.

Nothing is mocked: real sockets, the real spool, the real HL7 v2 mapper, a real ``hub serve``.
The crash test kills the connector with SIGKILL and the hub with SIGKILL mid-stream, restarts both,
and then checks every resource's version count: nothing lost, nothing written twice.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson
import pytest

from connectors.kinds import converter
from connectors.mllp_client import MLLPClient, ack_code
from connectors.testing import ConnectorProcess, adt_stream, wait_until, write_config
from fhir_mapping.base import SourceInfo
from hub.core import httpclient
from hub.core.config import Settings
from tests.conftest import LiveServer, free_port

try:
    import fhir_mapping.hl7v2 as _v2  # noqa: F401

    HAVE_V2 = hasattr(_v2, "convert")
except ImportError:
    HAVE_V2 = False

needs_v2 = pytest.mark.skipif(not HAVE_V2, reason="the HL7 v2 mapper is not there yet")
INFO = SourceInfo(institution="H0001", oid="2.16.156.10011.99.1.1", name="测试医院", feed="adt")


def hub_settings(tmp_path: Path, **kw) -> Settings:
    s = Settings(data_dir=tmp_path / "hubdata")
    s.database_url = None
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def connector_config(tmp_path: Path, hub_base: str, mllp_port: int, status_port: int,
                     **sink) -> Path:
    return write_config(
        tmp_path / "connector.yaml", name="adt",
        institution={"code": INFO.institution, "oid": INFO.oid, "name": INFO.name},
        state_dir=str(tmp_path / "state"), durable=True,
        status={"host": "127.0.0.1", "port": status_port},
        retry={"initial_s": 0.05, "max_s": 0.5},
        sources=[{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": mllp_port,
                  "kind": "hl7v2", "idle_timeout_s": 30}],
        sink={"type": "http", "url": hub_base, "batch_size": 20, "timeout_s": 10, **sink})


def expected_state(groups: list[tuple[str, list[bytes]]]):
    """Per resource: (final content without meta, number of versions) as the hub must hold them,
    computed with the same mapper in process; shared resources must not change between groups."""
    conv = converter("hl7v2")
    seq: dict[str, list[bytes]] = defaultdict(list)
    owners: dict[str, set[str]] = defaultdict(set)
    final: dict[str, dict] = {}
    for key, msgs in groups:
        for m in msgs:
            for c in conv(m, INFO):
                for r in c.resources:
                    ref = f"{r['resourceType']}/{r['id']}"
                    body = orjson.dumps(_strip(r), option=orjson.OPT_SORT_KEYS)
                    owners[ref].add(key)
                    if not seq[ref] or seq[ref][-1] != body:
                        seq[ref].append(body)
                    final[ref] = _strip(r)
    out = {}
    for ref, bodies in seq.items():
        if len(owners[ref]) > 1:  # written by several patients' streams: order not defined
            assert len(set(bodies)) == 1, f"{ref} differs between patients"
        out[ref] = (final[ref], len(bodies))
    return out


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "meta"}


def check_hub(base: str, expected: dict, auth=None) -> None:
    with httpx.Client(base_url=base, timeout=30, auth=auth, verify=httpclient.verify()) as c:
        for ref, (content, versions) in expected.items():
            r = c.get(ref)
            assert r.status_code == 200, f"{ref} missing: {r.status_code}"
            assert _strip(r.json()) == content, f"{ref} is not the last version sent"
            h = c.get(f"{ref}/_history").json()
            assert h["total"] == versions, (f"{ref} has {h['total']} versions, {versions} expected")


def send_group(port: int, msgs: list[bytes], acks: list, retry: bool = False) -> None:
    """Send in order over one connection; with ``retry`` reconnect and resend the message whose
    ACK did not come (as a real sender does while the listener is down)."""
    client = None
    for m in msgs:
        while True:
            try:
                if client is None:
                    client = MLLPClient("127.0.0.1", port, timeout=10)
                acks.append(ack_code(client.send(m)))
                break
            except (OSError, ConnectionError):
                if client is not None:
                    client.close()
                client = None
                if not retry:
                    raise
                time.sleep(0.05)
    if client is not None:
        client.close()


def lag_zero(conn: ConnectorProcess, delivered: int):
    def check():
        st = conn.status()["sources"]["adt"]
        return st["lag"] == 0 and st["delivered"] >= delivered and st
    return check


@needs_v2
def test_mllp_to_hub_concurrent_senders(tmp_path, settings):
    """On both event stores (the ``settings`` fixture: SQLite, PostgreSQL)."""
    groups = adt_stream(16, seed=11)
    expected = expected_state(groups)
    total = sum(len(m) for _, m in groups)
    with LiveServer(settings) as hub:
        cfg = connector_config(tmp_path, hub.base, free_port(), free_port(),
                               **hub.sink_credentials(INFO.institution, tmp_path / "keys"))
        mllp_port = _port(cfg)
        with ConnectorProcess(cfg, _status_port(cfg)) as conn:
            acks: list[str] = []
            threads = [threading.Thread(target=lambda g=g: [send_group(mllp_port, msgs, acks)
                                                            for _, msgs in g])
                       for g in (groups[0::4], groups[1::4], groups[2::4], groups[3::4])]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert acks == ["AA"] * total
            st = wait_until(lag_zero(conn, total), 60, what="delivery")
            assert st["received"] == st["converted"] == total and st["failed"] == 0
            assert conn.stop() == 0  # SIGTERM: a clean stop
        check_hub(hub.base, expected, hub.auth)


@needs_v2
def test_sigkill_connector_and_hub_mid_stream(tmp_path):
    """Senders keep sending while the connector is SIGKILLed and restarted, and while the hub is
    SIGKILLed and restarted; afterwards every resource has exactly its expected versions."""
    groups = adt_stream(25, seed=12)
    expected = expected_state(groups)
    total = sum(len(m) for _, m in groups)
    hub = LiveServer(hub_settings(tmp_path)).__enter__()
    try:
        cfg = connector_config(tmp_path, hub.base, free_port(), free_port(),
                               **hub.sink_credentials(INFO.institution, tmp_path / "keys"))
        mllp_port = _port(cfg)
        conn = ConnectorProcess(cfg, _status_port(cfg)).start()
        acks: list[str] = []
        slow = [(k, msgs) for k, msgs in groups]
        threads = [threading.Thread(target=_send_slowly, args=(mllp_port, slow[i::2], acks))
                   for i in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acks) >= total // 4, 30, what="first quarter")
        conn.kill()  # SIGKILL mid-stream: the senders see the connection drop
        time.sleep(0.3)
        conn.start()
        wait_until(lambda: len(acks) >= total // 2, 30, what="half")
        hub.proc.kill()  # the hub disappears: the connector keeps ACKing, spools and retries
        hub.proc.wait()
        wait_until(lambda: len(acks) >= 3 * total // 4, 30, what="three quarters")
        assert conn.status()["sink"]["state"] == "retrying"
        hub.__enter__()  # same data directory, same port
        for t in threads:
            t.join(60)
        assert len(acks) == total and set(acks) == {"AA"}
        wait_until(lambda: conn.status()["sources"]["adt"]["lag"] == 0, 60, what="delivery")
        conn.kill()  # and once more after everything was delivered: a restart resends nothing
        conn.start()
        st = conn.status()["sources"]["adt"]
        assert st["lag"] == 0 and st["failed"] == 0
        assert st["converted"] >= total  # messages resent after the kill are converted twice
        conn.stop()
        check_hub(hub.base, expected, hub.auth)
    finally:
        hub.__exit__(None, None, None)


def _send_slowly(port: int, groups, acks) -> None:
    for _, msgs in groups:
        send_group(port, msgs, acks, retry=True)
        time.sleep(0.01)


def _port(cfg: Path) -> int:
    import yaml

    return yaml.safe_load(cfg.read_text())["sources"][0]["port"]


def _status_port(cfg: Path) -> int:
    import yaml

    return yaml.safe_load(cfg.read_text())["status"]["port"]


