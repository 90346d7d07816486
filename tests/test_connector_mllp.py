"""The MLLP listener against malformed, truncated, wrong-encoding and hostile input.

The connector runs in process (real sockets, real spool, the real HL7 v2 mapper); its sink points
at a port nobody listens on, so everything stays spooled: these tests are about answers and
survival. After every attack a well-formed message must still get AA.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import hl7
import pytest
from connectors.base import CannotStart
from connectors.config import ConnectorConfig
from connectors.daemon import Connector
from connectors.mllp_client import MLLPClient, ack_code, ack_segment
from connectors.sources.mllp import build_ack
from connectors.testing import adt_message, adt_stream, region_patients
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port


VT, FS, CR = b"\x0b", b"\x1c", b"\r"
MAX = 64 * 1024


@pytest.fixture(scope="module")
def connector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mllp")
    cfg = ConnectorConfig.from_dict({
        "name": "adt", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp / "state"), "durable": False,
        "retry": {"initial_s": 5, "max_s": 5},
        "sources": [{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": 0,
                     "kind": "hl7v2", "max_message_bytes": MAX, "idle_timeout_s": 1.0}],
        "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}})
    conn = Connector(cfg)
    conn.start()
    assert conn.sources[0].ready.wait(10)
    yield conn
    conn.stop()
    conn.join()


@pytest.fixture(scope="module")
def messages():
    return [m for _, msgs in adt_stream(3, seed=5) for m in msgs]


def client(connector) -> MLLPClient:
    return MLLPClient("127.0.0.1", connector.sources[0].port, timeout=10)


def still_serving(connector, message: bytes) -> None:
    with client(connector) as c:
        assert ack_code(c.send(message)) == "AA"


def test_ack_carries_msh_fields(connector, messages):
    with client(connector) as c:
        ack = c.send(messages[0])
    msg = hl7.parse(ack.decode())
    msh = msg.segment("MSH")
    assert str(msh(9)) == "ACK^A04^ACK"
    assert str(msh(3)) == "HUB" and str(msh(5)) == "HIS"  # sender and receiver swapped
    assert str(msg.segment("MSA")(1)) == "AA"
    assert str(msg.segment("MSA")(2)) == "M0000000A"  # MSA-2 = MSH-10 of the message


def test_unsupported_type_is_rejected_with_err(connector, messages, caplog):
    bad = messages[0].replace(b"ADT^A04^ADT_A01", b"ZZZ^Z99").replace(b"M0000000A", b"BAD1")
    caplog.set_level("WARNING", logger="connectors.mllp")
    with client(connector) as c:
        ack = c.send(bad)
        assert ack_code(ack) == "AR"
        err = ack_segment(ack, "ERR")
        assert err[3].startswith("200^Unsupported message type")
        assert "not supported" in err[8]
        assert ack_segment(ack, "MSA")[2] == "BAD1"
        assert ack_code(c.send(messages[1])) == "AA"  # same connection goes on
    dls = connector.spool.deadletters()
    assert any(d["unit_id"] == "BAD1" and d["stage"] == "convert" for d in dls)
    # the refusal is in the log, naming the message and where it is kept (it left no line)
    dl = next(d["id"] for d in dls if d["unit_id"] == "BAD1")
    assert any("BAD1" in r.getMessage() and "AR" in r.getMessage()
               and f"dead letter {dl}" in r.getMessage() for r in caplog.records), caplog.text


def test_a_type_read_whole_is_named_once_with_the_separator_it_missed(connector, messages):
    """MSH-2 ``#~\\&`` declares ``#`` the component separator: MSH-9 ``ADT^A04^ADT_A01`` is one
    component, and the refusal named the type ``ADT^A04^ADT_A01^A04`` (EVN-1's event appended
    to a type that already held it). It names MSH-9 as written, and the separator it missed."""
    bad = messages[0].replace(b"MSH|^~\\&|", b"MSH|#~\\&|").replace(b"M0000000A", b"SEP1")
    assert b"ADT^A04^ADT_A01|" in bad and b"\rEVN|A04" in bad
    with client(connector) as c:
        ack = c.send(bad)
    assert ack_code(ack) == "AR" and b"A04\\S\\A04" not in ack and b"ADT_A01\\S\\A04" not in ack
    err = ack_segment(ack, "ERR")
    assert err[3].startswith("200^Unsupported message type")
    assert "ADT\\S\\A04\\S\\ADT_A01 is not supported" in str(err[8])
    assert "'#' as the component separator" in str(err[8])


def test_an_unmapped_event_and_a_missing_segment_are_named_in_err(connector, messages):
    """A29 (a type the hub takes, an event it does not) said ERR-3 207 "application internal
    error"; an AE for a missing PID had an empty ERR-2."""
    a29 = messages[0].replace(b"ADT^A04^ADT_A01", b"ADT^A29^ADT_A21").replace(b"M0000000A", b"A29X")
    no_pid = b"\r".join(s for s in messages[1].split(b"\r") if not s.startswith(b"PID"))
    with client(connector) as c:
        ack = c.send(a29)
        assert ack_code(ack) == "AR" and ack_segment(ack, "ERR")[3].startswith("201^")
        assert ack_segment(ack, "ERR")[2].startswith("MSH^1^9")
        ack = c.send(no_pid)
        assert ack_code(ack) == "AE" and ack_segment(ack, "ERR")[2].startswith("PID^1")


def test_content_error_is_ae_with_location(connector, messages):
    no_id = messages[0].replace(b"|M0000000A|", b"||")
    with client(connector) as c:
        ack = c.send(no_id)
    assert ack_code(ack) == "AE"
    assert ack_segment(ack, "ERR")[2].startswith("MSH^1^10")


def test_an_empty_version_is_a_required_field_missing_and_kept_for_replay(connector, messages):
    """MSH-12 left empty was accepted and mapped as if it were 2.x."""
    no_version = messages[0].replace(b"|P|2.5", b"|P|", 1).replace(b"M0000000A", b"NOVER1")
    with client(connector) as c:
        ack = c.send(no_version)
    assert ack_code(ack) == "AE"
    err = ack_segment(ack, "ERR")
    assert err[2].startswith("MSH^1^12") and err[3].startswith("101^Required field missing")
    [kept] = [d for d in connector.spool.deadletters() if d["unit_id"] == "NOVER1"]
    assert kept["stage"] == "convert" and connector.spool.deadletter(kept["id"])["payload"] == no_version


def test_a_result_message_for_two_patients_is_refused_and_kept(connector, messages):
    """An ORU with a second patient's group (PID P002 + OBR/OBX) was answered AA and every result
    written to the first patient."""
    mr = "^^^H0001&2.16.156.10011.99.1.1&ISO^MR"
    two = "\r".join([
        "MSH|^~\\&|LIS|H0001|HUB|REGION|20240315143000+0800||ORU^R01^ORU_R01|TWO1|P|2.5.1",
        f"PID|1||P001{mr}||张^三||19850312|M", "OBR|1|A1|F1|2093-3^总胆固醇^LN",
        "OBX|1|NM|2093-3^总胆固醇^LN||6.20|mmol/L|3.1-5.7|H|||F",
        f"PID|2||P002{mr}||李^四||19900101|F", "OBR|1|A2|F2|2093-3^总胆固醇^LN",
        "OBX|1|NM|2093-3^总胆固醇^LN||3.10|mmol/L|3.1-5.7|N|||F", ""]).encode()
    with client(connector) as c:
        ack = c.send(two)
    assert ack_code(ack) == "AE"
    err = ack_segment(ack, "ERR")
    assert err[2].startswith("PID^2") and "more than one patient" in ack.decode()
    [kept] = [d for d in connector.spool.deadletters() if d["unit_id"] == "TWO1"]
    assert kept["stage"] == "convert" and connector.spool.deadletter(kept["id"])["payload"] == two
    still_serving(connector, messages[0])


def test_wrong_encoding_and_cjk(connector):
    patient = next(region_patients(2, seed=3))
    msg = adt_message(patient, "A04", "ENC1", "202401010930+0800")
    assert any(b >= 0x80 for b in msg)  # the name is in Chinese
    lying = msg.decode("utf-8").encode("gb18030")  # says UTF-8 in MSH-18, is GB18030
    honest = adt_message(patient, "A04", "ENC2", "202401010930+0800", charset="GB 18030-2000")
    with client(connector) as c:
        # read as the GB18030 it is, with a finding (v2.msh18.mismatch), not refused
        assert ack_code(c.send(lying)) == "AA"
        assert ack_code(c.send(honest)) == "AA"
        ack = c.send(lying.replace(b"\rPID|", b"\rPID|\xff\xfe", 1))  # bytes no character set reads
        assert ack_code(ack) == "AR"
        assert "utf-8" in ack_segment(ack, "ERR")[8]


def test_latin1_name_under_utf8_is_refused_and_kept_not_read_as_chinese(connector, messages):
    """Latin-1 ``Müller`` under MSH-18 UTF-8 was answered AA with the name read as GB18030 ``M黮ler``."""
    text = ("MSH|^~\\&|HIS|H0001|HUB|REGION|20240315143000+0800||ADT^A04^ADT_A01|LAT1|P|2.5||||||"
            "UNICODE UTF-8\rEVN|A04|20240315143000\rPID|1||P9^^^H0001&2.16.156.10011.99.1.1&ISO^MR||"
            "Müller^Anna||19850312|F\r")
    latin = text.encode("latin-1")
    with client(connector) as c:
        ack = c.send(latin)
        assert ack_code(ack) == "AR"
        err = ack_segment(ack, "ERR")
        assert err[2].startswith("PID^1^5") and "UNICODE UTF-8" in err[8]
        assert f"offset {latin.index('ü'.encode('latin-1'))}" in err[8]
        assert ack_code(c.send(text.encode("utf-8").replace(b"LAT1", b"LAT2"))) == "AA"
    [kept] = [d for d in connector.spool.deadletters() if d["unit_id"] == "LAT1"]
    assert kept["stage"] == "convert" and connector.spool.deadletter(kept["id"])["payload"] == latin


@pytest.mark.parametrize("payload", [
    b"", b"PID|1||123", b"MSH|", b"MSH|^~\\&", bytes(b for b in range(256) if b not in (11, 28)), b"\x00" * 1000,
    "MSH|^~\\&|宿舍|医院|||||ADT|".encode("gb18030"), b"MSH|^~\\&|" + b"|" * 5000,
    b"MSH^~\\&|A|B", b"\r\r\r\n", b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|X|P|2.5\rPID|" + b"^" * 20000,
], ids=lambda p: repr(p[:20]))
def test_malformed_gets_a_nak(connector, messages, payload):
    with client(connector) as c:
        ack = c.send(payload)
        assert ack_code(ack) in ("AE", "AR")
        assert ack_segment(ack, "ERR") is not None
        assert ack_code(c.send(messages[2])) == "AA"


def test_garbage_before_start_block_is_skipped(connector, messages):
    with client(connector) as c:
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ack_code(c.send(messages[3])) == "AA"


def test_missing_end_block(connector, messages):
    with client(connector) as c:
        c.send_raw(VT + messages[0][:80])  # no FS CR, then the next message starts
        ack1 = c.send(messages[1])
        ack2 = c.read_ack() if ack_code(ack1) == "AR" else None
    assert ack_code(ack1) == "AR" and "end block" in ack_segment(ack1, "MSA")[3]
    assert ack2 is not None and ack_code(ack2) == "AA"
    # what the sender meant as a message is kept, to read and replay
    kept = [d for d in connector.spool.deadletters() if d["stage"] == "receive"]
    assert any(connector.spool.deadletter(d["id"])["payload"] == messages[0][:80]
               and "end block" in d["error"]["reason"] for d in kept)


def test_a_whole_message_refused_for_its_framing_replays(connector, messages):
    """A sender that forgets the end block loses nothing: the block is kept and replays."""
    with client(connector) as c:
        c.send_raw(VT + messages[-1])  # no FS CR
        assert ack_code(c.send(messages[2])) == "AR"
        assert ack_code(c.read_ack()) == "AA"
    [kept] = [d for d in connector.spool.deadletters()
              if d["stage"] == "receive" and connector.spool.deadletter(d["id"])["payload"] == messages[-1]]
    before = connector.spool.counters()["adt"]
    assert connector.spool.replay(kept["id"]).ok
    after = connector.spool.counters()["adt"]
    assert after["deadletters"] == before["deadletters"] - 1
    assert after["received"] == before["received"] and after["failed"] == before["failed"] - 1


def test_a_message_without_its_start_block_is_answered_and_kept(connector, messages):
    """A whole message sent without the start block (an engine not set to wrap in MLLP) got
    no answer and was not kept: "233 bytes outside an MLLP block skipped". It is answered AR,
    saying so, and kept to replay; noise that is no message is still only skipped."""
    def kept_as(payload: bytes) -> list[dict]:
        return [d for d in connector.spool.deadletters() if d["stage"] == "receive"
                and connector.spool.deadletter(d["id"])["payload"] == payload]

    with client(connector) as c:
        c.send_raw(messages[5] + FS + CR)
        nak = c.read_ack()
        assert ack_code(nak) == "AR" and "start block" in ack_segment(nak, "MSA")[3]
        assert str(ack_segment(nak, "MSA")[2]) == str(hl7.parse(messages[5].decode()).segment("MSH")[10])
        # in two pieces, the header split, and a framed message right behind it
        c.send_raw(b"\r\nMS")
        time.sleep(0.2)
        c.send_raw(messages[6][2:] + FS + CR + VT + messages[7] + FS + CR)
        assert ack_code(c.read_ack()) == "AR" and ack_code(c.read_ack()) == "AA"
        # noise is skipped as before: no answer, the next message is the next answer
        c.send_raw(b"GET / HTTP/1.1\r\n\r\n" + FS + CR)
        assert ack_code(c.send(messages[8])) == "AA"
    [kept] = kept_as(messages[5])
    assert "start block" in kept["error"]["reason"] and kept["error"]["rule"] == "mllp.framing"
    assert kept_as(messages[6]) and connector.spool.replay(kept["id"]).ok
    assert not [d for d in connector.spool.deadletters() if b"GET /" in
                connector.spool.deadletter(d["id"])["payload"]]


def test_oversized_message_is_refused_and_connection_closed(connector, messages):
    with client(connector) as c:
        c.send_raw(VT + messages[0] + b"\rNTE|1||" + b"x" * (MAX + 10))
        ack = c.read_ack()
        assert ack_code(ack) == "AR" and "larger than" in ack_segment(ack, "MSA")[3]
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(3):
                c.send(messages[0])
                time.sleep(0.05)
    still_serving(connector, messages[0])
    kept = [connector.spool.deadletter(d["id"]) for d in connector.spool.deadletters()
            if d["stage"] == "receive" and "larger than" in d["error"]["reason"]]
    assert any(d["payload"].startswith(messages[0]) and len(d["payload"]) == MAX for d in kept)
    # over the limit by a little, the whole frame in one write: refused as well
    with client(connector) as c:
        c.send_raw(VT + messages[0] + b"\rNTE|1||" + b"x" * (MAX + 10 - len(messages[0]))
                   + FS + b"\r")
        ack = c.read_ack()
        assert ack_code(ack) == "AR" and "larger than" in ack_segment(ack, "MSA")[3]
    still_serving(connector, messages[0])


def test_truncated_stream_and_idle_connections(connector, messages):
    # half a message then close; connections that never send; one that stalls mid-message
    s = socket.create_connection(("127.0.0.1", connector.sources[0].port))
    s.sendall(VT + messages[0][:100])
    s.close()
    for _ in range(50):  # kept when the listener has read the close
        if any(d["stage"] == "receive" and "truncated" in d["error"]["reason"]
               for d in connector.spool.deadletters()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the cut-off message was not kept")
    idle = [socket.create_connection(("127.0.0.1", connector.sources[0].port)) for _ in range(20)]
    stalled = socket.create_connection(("127.0.0.1", connector.sources[0].port))
    stalled.sendall(VT + messages[0][:50])
    still_serving(connector, messages[4])
    stalled.settimeout(5)
    data = stalled.recv(65536)  # the idle timeout (1 s) closes it, answering the fragment AR
    assert data == b"" or b"MSA|AR" in data
    for s in idle + [stalled]:
        s.close()
    assert connector.sources[0].stats["framing_errors"] >= 1


def test_a_sender_stalled_inside_a_message_is_told_it_idled_not_that_it_closed(connector,
                                                                                  messages):
    """The NAK of a message whose sender stopped mid-frame said "connection closed inside a
    message", as if the sender had closed: it names the idle timeout now; a real close keeps
    its own words."""
    stalled = socket.create_connection(("127.0.0.1", connector.sources[0].port))
    stalled.sendall(VT + messages[3][:80])
    stalled.settimeout(5)
    data = b""
    while FS not in data:  # the idle timeout (1 s) answers the fragment AR
        chunk = stalled.recv(65536)
        assert chunk, data
        data += chunk
    stalled.close()
    nak = data.strip(VT + FS + CR)
    assert ack_code(nak) == "AR"
    for reason in (ack_segment(nak, "MSA")[3], ack_segment(nak, "ERR")[8]):
        assert "idle too long inside a message" in reason and "idle_timeout_s 1 s" in reason
        assert "closed" not in reason
    [kept] = [d for d in connector.spool.deadletters() if d["stage"] == "receive"
              and connector.spool.deadletter(d["id"])["payload"] == messages[3][:80]]
    assert "idle too long" in kept["error"]["reason"]
    still_serving(connector, messages[0])


def _trickled_until_closed(connector, byte: bytes, every: float) -> float:
    """Seconds until the listener closed a connection sent ``byte`` every ``every`` s (at most 5)."""
    s = socket.create_connection(("127.0.0.1", connector.sources[0].port))
    s.settimeout(0.2)
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 5 and not closed:
        try:
            s.sendall(byte)
            if s.recv(1) == b"":
                closed = True
        except TimeoutError:
            pass
        except OSError:
            closed = True
        time.sleep(every)
    s.close()
    assert closed, "the connection stayed open"
    return time.monotonic() - started


def test_a_sender_trickling_bytes_outside_a_message_is_closed_when_idle(connector, messages):
    """A CR every half second kept a connection open for ever (each read restarted the idle
    timer), so 256 such senders locked every real one out."""
    assert _trickled_until_closed(connector, b"\r", 0.3) < 4  # idle_timeout_s is 1
    still_serving(connector, messages[0])


def test_noise_outside_a_message_does_not_extend_the_idle_timeout(connector, messages):
    """A byte of noise every 0.6 s (each a framing error, "1 bytes outside an MLLP block
    skipped") restarted the idle timer at each: the connection stayed open for ever."""
    assert _trickled_until_closed(connector, b"x", 0.4) < 3  # idle_timeout_s is 1
    # a message answered starts the next one's timeout afresh
    with client(connector) as c:
        for m in messages[:2]:
            time.sleep(0.7)
            assert ack_code(c.send(m)) == "AA"
    still_serving(connector, messages[0])


def test_concurrent_senders_and_noise(connector, messages):
    errors = []

    def noisy():
        try:
            with client(connector) as c:
                for _ in range(20):
                    c.send_raw(b"\x00\xff noise")
                    assert ack_code(c.send(b"\x0b\x0b")) in ("AE", "AR")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def good():
        try:
            with client(connector) as c:
                for m in messages:
                    assert ack_code(c.send(m)) == "AA"
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (noisy, good, good, noisy, good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    still_serving(connector, messages[0])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def _unframed(b: bytes) -> bytes:
    return b.replace(VT, b"").replace(FS, b"")


@given(st.one_of(st.binary(max_size=300),
                 st.text(max_size=200).map(lambda t: ("MSH|^~\\&|" + t).encode("utf-8")),
                 st.lists(st.sampled_from(["MSH", "PID", "PV1", "|", "^", "~", "\\", "&", "\r",
                                           "A01", "ADT", "ORU^R01", "2.5", "中", "OBX", "19"]),
                          max_size=60).map(lambda parts: "".join(parts).encode("utf-8")))
       .map(_unframed))
def test_any_frame_gets_an_answer(connector, payload):
    """Property: whatever bytes a frame holds (framing bytes aside: tested above), the sender gets
    one ACK with MSA-1 in AA/AE/AR and the connection stays usable."""
    with client(connector) as c:
        assert ack_code(c.send(payload)) in ("AA", "AE", "AR")


def test_build_ack_without_msh():
    ack = build_ack(b"garbage", "AR", {"reason": "bad | thing ^ here", "code": "AR"})
    assert ack_segment(ack, "MSA")[1] == "AR"
    assert ack_segment(ack, "MSA")[3] == "bad \\F\\ thing \\S\\ here"  # escaped


def test_an_ack_answers_the_control_id_of_headers_senders_write():
    """MSA-2 echoes MSH-10 (else the sender cannot match the answer), and the ACK's MSH holds no
    piece of the next segment, for a header hl7 cannot answer itself (MSH-9 without a trigger)
    and an MSH ended by LF before segments ended by CR (as the shared samples mix them)."""
    for message in (b"MSH|^~\\&|HIS|H1|HUB|HUB|20240115103000||ADT|CTRL8|P|2.5\r"
                    b"EVN|A01|20240115103000\rPID|1||M1^^^H1^MR||LI^SI\r",
                    b"MSH|^~\\&|HIS|H1|HUB|HUB|20240115103000||ADT^A01^ADT_A01|CTRL8|P|2.5\n"
                    b"EVN|A01|20240115103000\rPID|1||M1^^^H1^MR||LI^SI\r"):
        ack = hl7.parse(build_ack(message, "AA").decode())
        assert str(ack.segment("MSA")(2)) == "CTRL8", ack
        msh = ack.segment("MSH")
        assert str(msh(12)) == "2.5" and str(msh(5)) == "HIS" and str(msh(6)) == "H1", ack
        assert "EVN" not in str(ack)


def _bind_config(tmp_path, host: str, port: int) -> ConnectorConfig:
    return ConnectorConfig.from_dict({
        "name": "adt", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "retry": {"initial_s": 0.2, "max_s": 0.2},
        "sources": [{"type": "mllp", "name": "adt", "host": host, "port": port,
                     "kind": "hl7v2"}],
        "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}})


def test_a_listener_that_cannot_bind_at_start_stops_the_daemon(tmp_path):
    """A port in use at start was retried for ever (a line a retry); now the start fails with
    the address and the reason, and the daemon is stopped (its spool closed)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conn = Connector(_bind_config(tmp_path, "127.0.0.1", port))
        with pytest.raises(CannotStart, match=f"127.0.0.1:{port}: Address already in use"):
            conn.start()
    assert conn.stop_event.is_set() and not any(t.is_alive() for t in conn.threads.values())


@pytest.mark.parametrize("host, why", [("127.0.0.1", "Address already in use"),
                                       ("no-such-host.invalid", "")])
def test_connector_run_that_cannot_bind_is_one_line_and_exit_2(tmp_path, host, why):
    """`hub connector run` with its MLLP port in use (or a host that does not resolve) printed
    that it ran, then restarted the source for ever; now it stops at once, as `hub serve`."""
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "d")}
    env.pop("HUB_DATABASE_URL", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "adt.yaml"
        config.write_text(json.dumps({  # YAML's flow style is JSON
            "name": "adt", "institution": {"code": "H0001", "oid": "1.2"}, "state_dir": str(tmp_path / "state"),
            "sources": [{"type": "mllp", "name": "adt", "host": host,
                         "port": taken.getsockname()[1], "kind": "hl7v2"}],
            "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}}))
        proc = subprocess.run([sys.executable, "-m", "hub.cli", "connector", "run", str(config)],
                              env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"hub connector: MLLP source adt: cannot listen on {host}:"), line
    assert why in line and "connector adt:" not in proc.stdout


def test_connector_run_whose_status_port_is_taken_names_the_address(tmp_path):
    """A status port in use said only "[Errno 98] Address already in use"; now the line names
    the address, as a source's does, and the sources started before it are stopped."""
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "d")}
    env.pop("HUB_DATABASE_URL", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "adt.yaml"
        config.write_text(json.dumps({
            "name": "adt", "institution": {"code": "H0001", "oid": "1.2"}, "state_dir": str(tmp_path / "state"),
            "status": {"host": "127.0.0.1", "port": port},
            "sources": [{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": 0,
                         "kind": "hl7v2"}],
            "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}}))
        proc = subprocess.run([sys.executable, "-m", "hub.cli", "connector", "run", str(config)],
                              env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the source's log line
    assert line == (f"hub connector: connector adt: its status page cannot listen on "
                    f"127.0.0.1:{port}: Address already in use"), line


def test_a_block_cut_off_is_kept_to_read_and_never_replayed(connector, messages):
    """A sender that died inside a message left a fragment ("6.8 mmol/L" cut after its "6");
    its replay wrote the fragment as the whole message, a result of 6, over the whole message
    the sender had resent meanwhile."""
    s = socket.create_connection(("127.0.0.1", connector.sources[0].port))
    s.sendall(VT + messages[1][:60])
    s.close()
    for _ in range(50):
        cut = [d for d in connector.spool.deadletters()
               if d["stage"] == "receive" and connector.spool.deadletter(d["id"])["payload"]
               == messages[1][:60]]
        if cut:
            break
        time.sleep(0.1)
    [kept] = cut
    with pytest.raises(ValueError, match="not a whole message"):
        connector.spool.replay(kept["id"])
    assert connector.spool.deadletter(kept["id"])["status"] == "open"  # still there to read


def test_a_spool_that_cannot_store_says_so_in_the_status(connector, messages):
    """With the spool's disk full every message was answered "cannot store" (rightly), but the
    status said healthy and the log blamed "no transaction is active", hiding the full disk."""
    db = connector.spool._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    try:
        with client(connector) as c:
            big = messages[0].replace(b"PID|", b"NTE|1||" + b"x" * 60_000 + b"\rPID|", 1)
            assert ack_code(c.send(big)) == "AR"
        st = connector.status()
        assert not st["healthy"] and "full" in st["spool"]["error"], st.get("spool")
    finally:
        db.execute("PRAGMA max_page_count = 1073741823")
    still_serving(connector, messages[2])
    assert connector.status()["healthy"] and "spool" not in connector.status()


def test_an_ack_names_its_character_set_and_its_own_id():
    """An ACK written in GB 18030 carried no MSH-18 (which then means ASCII); two inbound ids
    alike in their first 17 characters were answered with one ACK id."""
    def msg(ctl: str) -> bytes:
        return (f"MSH|^~\\&|HIS|H1|HUB|R|20240101||ADT^中文|{ctl}|P|2.5||||||GB18030\r"
                "PID|1").encode("gb18030")
    first = hl7.parse(build_ack(msg("20240101093000123456-0001"), "AR",
                                {"reason": "不支持", "code": "AR", "rule": "x"}).decode("gb18030"))
    second = hl7.parse(build_ack(msg("20240101093000123456-0002")).decode("gb18030"))
    assert str(first.segment("MSH")(18)) == "GB18030"
    assert str(first.segment("MSA")(3)) == "不支持"
    ids = {str(a.segment("MSH")(10)) for a in (first, second)}
    assert len(ids) == 2 and all(len(i) <= 20 for i in ids)


def test_a_missing_segment_is_err_100_not_an_internal_error():
    """A message without PID was answered ERR 207 (application internal error): the sender's
    engineers looked for a fault of the hub instead of in their message."""
    from fhir_mapping.base import MappingError, SourceInfo
    from fhir_mapping.hl7v2 import _convert

    m = b"MSH|^~\\&|HIS|H1|HUB|R|20240101||ADT^A04|C1|P|2.5\rEVN|A04|20240101\r"
    with pytest.raises(MappingError) as e:
        _convert(m, SourceInfo())
    ack = hl7.parse(build_ack(m, "AE", e.value.to_dict()).decode())
    assert str(ack.segment("ERR")(3)).startswith("100^Segment sequence error")


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(tmp_path):
    """Two daemons started with one state_dir both ran and drained one spool: every unit was
    sent twice. The second one now stops with one line naming the first one's pid; a daemon
    that died (killed, not stopped) leaves no lock behind."""
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "d")}
    env.pop("HUB_DATABASE_URL", None)
    config = tmp_path / "adt.yaml"
    config.write_text(json.dumps({
        "name": "adt", "institution": {"code": "H0001", "oid": "1.2"}, "state_dir": "state",
        "sources": [{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": 0,
                     "kind": "hl7v2"}],
        "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}}))
    command = [sys.executable, "-m", "hub.cli", "connector", "run", str(config)]

    def started() -> subprocess.Popen:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("connector adt:"), line
        return proc

    first = started()
    try:
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        [line] = second.stderr.strip().splitlines()
        assert line == (f"hub connector: state_dir {tmp_path / 'state'} is in use by pid "
                        f"{first.pid} (another connector daemon)"), line
        assert "connector adt:" not in second.stdout
    finally:
        first.kill()  # a crash: no clean stop
        first.wait(30)
    third = started()  # the lock died with the process
    third.terminate()
    assert third.wait(30) == 0


def test_a_connector_in_process_holds_its_state_dir_until_joined(tmp_path):
    cfg = _bind_config(tmp_path, "127.0.0.1", 0)
    first = Connector(cfg)
    with pytest.raises(CannotStart, match=f"is in use by pid {os.getpid()}"):
        Connector(_bind_config(tmp_path, "127.0.0.1", 0))
    first.start()
    first.stop()
    first.join()
    again = Connector(_bind_config(tmp_path, "127.0.0.1", 0))  # a restart
    again.start()
    again.stop()
    again.join()
