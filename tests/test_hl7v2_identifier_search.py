"""Over MLLP into the hub: a record number and another type's patient id of the same digits, both
under the institution's own assigning authority, are two people, and an identifier search finds
each alone (they were one system|value, so a search, a conditional reference, found both)."""

from __future__ import annotations

import time

import httpx
import pytest

from connectors.config import ConnectorConfig
from connectors.daemon import Connector
from connectors.mllp_client import MLLPClient, ack_code
from hub.core import httpclient
from tests.conftest import BACKENDS, live_server

OID = "2.16.156.10011.99.1.1"


@pytest.fixture(scope="module", params=BACKENDS)
def hub(request, tmp_path_factory):
    with live_server(request, tmp_path_factory, request.param) as live:
        yield live


def adt(control: str, pid3: str, name: str, born: str) -> bytes:
    return "\r".join([
        f"MSH|^~\\&|HIS|CQSRMYY^{OID}^ISO|HUB|REGION|20240315143000+0800||ADT^A04^ADT_A01|{control}|P|2.5.1"
        "||||||UNICODE UTF-8",
        "EVN|A04|20240315143000+0800", f"PID|1||{pid3}||{name}||{born}|M", ""]).encode()


def test_a_record_number_and_a_patient_id_of_the_same_digits_are_found_apart(hub, tmp_path):
    conn = Connector(ConnectorConfig.from_dict({
        "name": "adt", "institution": {"code": "CQSRMYY", "oid": OID},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "retry": {"initial_s": 0.1, "max_s": 0.5},
        "sources": [{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": 0, "kind": "hl7v2"}],
        "sink": {"type": "http", "url": hub.base, **hub.sink_credentials("CQSRMYY", tmp_path / "keys")}}))
    conn.start()
    try:
        assert conn.sources[0].ready.wait(10)
        with MLLPClient("127.0.0.1", conn.sources[0].port, timeout=10) as c:
            assert ack_code(c.send(adt("K1", f"4242^^^CQSRMYY&{OID}&ISO^MR", "冯^一", "19600101"))) == "AA"
            assert ack_code(c.send(adt("K2", f"4242^^^CQSRMYY&{OID}&ISO^PI", "陈^二", "19950101"))) == "AA"
        found: dict[str, list[str]] = {}
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=hub.base, timeout=10, auth=hub.auth, verify=httpclient.verify()) as client:
            while True:
                for system in (f"urn:oid:{OID}.1", f"urn:oid:{OID}.19", f"urn:oid:{OID}"):
                    bundle = client.get("/Patient", params={"identifier": f"{system}|4242"}).json()
                    found[system] = [e["resource"]["name"][0]["text"] for e in bundle.get("entry", [])]
                if found[f"urn:oid:{OID}.1"] and found[f"urn:oid:{OID}.19"]:
                    break
                assert time.monotonic() < deadline, (found, conn.status()["sink"])
                time.sleep(0.2)
        assert found == {f"urn:oid:{OID}.1": ["冯一"], f"urn:oid:{OID}.19": ["陈二"], f"urn:oid:{OID}": []}
    finally:
        conn.stop()
        conn.join()
