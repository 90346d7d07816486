"""The HL7 v3 bus (``hub.v3routing``, ``hub v3 …``): accepted messages forwarded to the systems
that subscribe to them, over real HTTP receivers and a real Kafka broker; in order per patient,
retried while a subscriber is down, refusals dead-lettered, nothing lost when the router is
killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.sinks.base import Unavailable
from connectors.sinks.messages import HttpMessageSink, KafkaMessageSink
from hub.v3routing import Routes, route_once
from tests.kafka_broker import broker  # noqa: F401 - fixture

FIX = Path(__file__).parent / "fixtures" / "hl7v3"
INST, OID = "H0001", "1.2.156.112604.1.2.1"
DECLARED = {"content-type": "application/xml", "x-hub-source-institution": INST,
            "x-hub-source-oid": OID}
AE = (b'<MCCI_IN000002UV01 xmlns="urn:hl7-org:v3"><acknowledgement typeCode="AE">'
      b'<acknowledgementDetail><text value="unknown test code"/></acknowledgementDetail>'
      b"</acknowledgement></MCCI_IN000002UV01>")


class Receiver:
    """A subscriber's HTTP endpoint: records what it is sent (message id, body); can be down
    (503), slow, or refuse one message id with an AE acknowledgement."""

    def __init__(self, delay: float = 0.0):
        self.got: list[tuple[str, bytes]] = []
        self.down = False
        self.refuse: set[str] = set()
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                mid = self.headers["x-hub-message-id"]
                time.sleep(receiver.delay)
                if receiver.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                answer = AE if mid in receiver.refuse else b"<ok/>"
                if mid not in receiver.refuse:
                    receiver.got.append((mid, body))
                self.send_response(200)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        return [m for m, _ in self.got]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def accept(routes: Routes, patient: str, n: int, interaction: str = "POOR_IN200901UV",
           kinds: tuple[str, ...] = ("lab",)) -> list[str]:
    mids = []
    for i in range(n):
        mid = f"{patient}-{i}-{uuid.uuid4().hex[:6]}"
        routes.accept(INST, interaction, mid, f"Patient/{patient}", kinds,
                      f"<m id='{mid}'/>".encode())
        mids.append(mid)
    return mids


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_subscriptions_take_their_interactions_kinds_and_institutions(tmp_path, receiver):
    routes = Routes(tmp_path / "v3routes.sqlite")
    lab = routes.subscribe("LIS", ["POOR_IN200901UV", "POOR_IN200902UV"],
                           {"type": "http", "url": receiver.url}, kinds=["lab"])
    his = routes.subscribe("HIS", ["*"], {"type": "http", "url": receiver.url},
                           institution="H0002")
    # the same subscription again is the one there: a second would send every message twice
    assert routes.subscribe("HIS", ["*"], {"type": "http", "url": receiver.url},
                            institution="H0002") == his
    assert routes.accept(INST, "POOR_IN200901UV", "m1", "Patient/a", ["lab"], b"<a/>") == 1
    assert routes.accept(INST, "POOR_IN200901UV", "m2", "Patient/a", ["drug"], b"<b/>") == 0
    assert routes.accept("H0002", "PRPA_IN201311UV02", "m3", "Patient/b", [], b"<c/>") == 1
    # the sender sends m1 again (no AA reached it): not routed twice
    assert routes.accept(INST, "POOR_IN200901UV", "m1", "Patient/a", ["lab"], b"<a/>") == 0
    assert [p.message_id for p in routes.pending(lab)] == ["m1"]
    assert [p.message_id for p in routes.pending(his)] == ["m3"]
    assert routes.unsubscribe(his) and not routes.unsubscribe(his)
    assert [s.id for s in routes.subscriptions()] == [lab]
    routes.close()


def test_a_patients_messages_keep_their_order_while_others_pass(tmp_path, receiver):
    routes = Routes(tmp_path / "v3routes.sqlite")
    sid = routes.subscribe("LIS", ["POOR_IN200901UV"], {"type": "http", "url": receiver.url})
    a = accept(routes, "a", 3)
    b = accept(routes, "b", 2)
    sinks = {sid: HttpMessageSink(receiver.url, timeout_s=5)}
    clock = Clock()
    # a's first message is refused for now (the subscriber answers 503 to it alone)
    first = a[0]

    class Flaky:
        def send(self, p):
            if p.message_id == first and clock.t < 1_000_010:
                raise Unavailable("503")
            sinks[sid].send(p)

    done = route_once(routes, {sid: Flaky()}, Unavailable, now=clock)
    assert done["delivered"] == 2 and done["retried"] == 1
    assert receiver.ids() == b  # b's pass; a's later messages wait behind its first
    clock.t += 1  # before the retry is due: still held
    assert route_once(routes, {sid: Flaky()}, Unavailable, now=clock)["delivered"] == 0
    clock.t += 60
    assert route_once(routes, {sid: Flaky()}, Unavailable, now=clock)["delivered"] == 3
    assert receiver.ids() == b + a
    assert routes.stats()[0]["delivered"] == 5 and routes.stats()[0]["pending"] == 0
    sinks[sid].close()
    routes.close()


def test_a_subscriber_down_is_retried_and_a_refusal_is_dead_lettered(tmp_path, receiver):
    routes = Routes(tmp_path / "v3routes.sqlite")
    sid = routes.subscribe("LIS", ["POOR_IN200901UV"], {"type": "http", "url": receiver.url})
    mids = accept(routes, "a", 2) + accept(routes, "b", 1)
    sink = HttpMessageSink(receiver.url, timeout_s=5)
    clock = Clock()
    receiver.down = True
    done = route_once(routes, {sid: sink}, Unavailable, now=clock)
    assert done["retried"] == 2 and done["delivered"] == 0  # a held behind its first; b failed
    assert "503" in routes.stats()[0]["last_error"]
    receiver.down = False
    receiver.refuse.add(mids[1])  # the subscriber answers AE to a's second message
    clock.t += 600
    done = route_once(routes, {sid: sink}, Unavailable, now=clock)
    assert (done["delivered"], done["dead"]) == (2, 1)
    (dead,) = routes.dead_letters(sid)
    assert dead["message_id"] == mids[1] and dead["reason"] == "AE: unknown test code"
    # fixed at the subscriber: redelivered
    receiver.refuse.clear()
    assert routes.redeliver(sid) == 1
    assert route_once(routes, {sid: sink}, Unavailable, now=clock)["delivered"] == 1
    assert sorted(receiver.ids()) == sorted(mids)
    sink.close()
    routes.close()


def test_a_kafka_subscriber_gets_each_patients_messages_in_one_partition(tmp_path, broker):  # noqa: F811
    topic = f"v3-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=3)
    routes = Routes(tmp_path / "v3routes.sqlite")
    sid = routes.subscribe("HIS", ["POOR_IN200901UV"], {"type": "kafka", "topic": topic,
                                                       "bootstrap_servers": broker.bootstrap})
    mids = {p: accept(routes, p, 4) for p in ("a", "b", "c")}
    sink = KafkaMessageSink(broker.bootstrap, topic, timeout_s=20)
    assert route_once(routes, {sid: sink}, Unavailable)["delivered"] == 12
    sink.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        deadline = time.monotonic() + 30
        while len(records) < 12 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    by_patient = defaultdict(list)
    partitions = defaultdict(set)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        patient = r.key.decode().split("/")[1]
        by_patient[patient].append(dict(r.headers)["x-hub-message-id"].decode())
        partitions[patient].add(r.partition)
    assert dict(by_patient) == mids
    assert all(len(p) == 1 for p in partitions.values())
    routes.close()


def test_a_message_too_large_for_the_broker_is_set_aside_not_retried_for_ever(broker):  # noqa: F811
    """The broker refuses the same large message on every try: it was retried for ever, ahead
    of that patient's next messages. It is refused (a dead letter of the route) at once."""
    from hub.v3routing import Pending, Refused

    topic = f"v3-large-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=1)
    sink = KafkaMessageSink(broker.bootstrap, topic, timeout_s=20)
    try:
        big = Pending(1, "H1", "POOR_IN200901UV", "m-big", "Patient/p1", b"<x>" + b"a" * 1_500_000
                      + b"</x>", 0, 0.0)
        with pytest.raises(Refused):
            sink.send(big)
        sink.send(Pending(2, "H1", "POOR_IN200901UV", "m-small", "Patient/p1", b"<x/>", 0, 0.0))
    finally:
        sink.close()


def test_accepted_messages_reach_their_subscribers_through_the_api(live, client, receiver):
    """POST /v3 keeps an accepted order for the laboratory system (a lab request) and not for
    the pharmacy (a drug subscriber); `hub v3 route --once` delivers it."""
    data_dir = live.settings.data_dir
    env = {**os.environ, "HUB_DATA_DIR": str(data_dir)}
    if live.settings.database_url:
        env["HUB_DATABASE_URL"] = live.settings.database_url

    def hub(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "hub.cli", *args, "--data-dir", str(data_dir)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    pharmacy = Receiver()
    try:
        lab = int(hub("v3", "subscribe", "--subscriber", f"LIS-{uuid.uuid4().hex[:4]}",
                      "--interaction", "POOR_IN200901UV", "--kind", "lab", "--http", receiver.url))
        drug = int(hub("v3", "subscribe", "--subscriber", "PHARMACY", "--interaction",
                       "POOR_IN200901UV", "--kind", "drug", "--http", pharmacy.url))
        tag = uuid.uuid4().hex[:8].upper()
        body = (FIX / "request-lab.xml").read_text("utf-8")
        for old, new in (("SQ0001", f"SQ{tag}"), ("BC0001", f"BC{tag}"), ("YZ1001", f"Y{tag}1"),
                         ("YZ1002", f"Y{tag}2"), ("R-MSG-0001", f"R-{tag}")):
            body = body.replace(old, new)
        r = client.post(f"http://127.0.0.1:{live.port}/v3", content=body.encode(),
                        headers=DECLARED)
        assert r.status_code == 200 and b'typeCode="AA"' in r.content, r.text
        hub("v3", "route", "--once")
        assert f"R-{tag}" in receiver.ids()
        (sent,) = [b for m, b in receiver.got if m == f"R-{tag}"]
        assert sent == body.encode()  # the message as the sender sent it
        assert f"R-{tag}" not in pharmacy.ids()
        listing = hub("v3", "subscriptions")
        assert "PHARMACY" in listing
        hub("v3", "unsubscribe", str(lab))
        hub("v3", "unsubscribe", str(drug))
    finally:
        pharmacy.close()
    # the subscription commands refuse what they cannot do
    bad = subprocess.run([sys.executable, "-m", "hub.cli", "v3", "subscribe", "--subscriber", "X",
                          "--interaction", "POOR_IN200901UV", "--kafka", "127.0.0.1:1",
                          "--data-dir", str(data_dir)], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--topic" in bad.stderr
    # and what could never be delivered: a timeout of -5 or nan, a URL of another scheme
    for extra in (["--http", "http://127.0.0.1:1/x", "--timeout", "-5"],
                  ["--http", "http://127.0.0.1:1/x", "--timeout", "nan"],
                  ["--http", "ftp://x/y"], ["--http", "notaurl"],
                  ["--http", "http://127.0.0.1:1/x", "--interaction", "NO_SUCH_IN000000UV"]):
        bad = subprocess.run([sys.executable, "-m", "hub.cli", "v3", "subscribe", "--subscriber",
                              "X", "--interaction", "POOR_IN200901UV", *extra, "--data-dir",
                              str(data_dir)], env=env, capture_output=True, text=True)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, (extra, bad.stderr)


@pytest.mark.parametrize("kinds", [["bogus"], ["lab", "Lab"], ["drugs"]])
def test_a_kind_no_message_is_about_is_refused_naming_the_kinds(tmp_path, kinds):
    """Kinds match exactly (a set intersection): `--kind bogus` was accepted (exit 0) and its
    subscription never got a message."""
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "data")}
    env.pop("HUB_DATABASE_URL", None)
    extra = [a for k in kinds for a in ("--kind", k)]
    bad = subprocess.run([sys.executable, "-m", "hub.cli", "v3", "subscribe", "--subscriber", "X",
                          "--interaction", "POOR_IN200901UV", *extra, "--http",
                          "http://127.0.0.1:1/x"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    [line] = bad.stderr.strip().splitlines()
    odd = kinds[-1]
    assert line == (f"hub v3: --kind {odd!r} is no kind of message: one of drug, exam, lab, "
                    f"pathology, surgery, transfusion"), line
    if (tmp_path / "data" / "v3routes.sqlite").exists():  # nothing was subscribed
        routes = Routes(tmp_path / "data" / "v3routes.sqlite")
        try:
            assert routes.subscriptions() == []
        finally:
            routes.close()


def test_a_router_killed_mid_delivery_loses_nothing(tmp_path):
    """SIGKILL the router while it delivers to a slow subscriber; started again, it delivers the
    rest: every message arrives (a repeat at most of the one in flight), each patient's in order."""
    receiver = Receiver(delay=0.01)
    routes = Routes(tmp_path / "v3routes.sqlite")
    routes.subscribe("LIS", ["POOR_IN200901UV"], {"type": "http", "url": receiver.url})
    mids = {p: accept(routes, p, 40) for p in ("a", "b", "c", "d", "e")}
    routes.close()
    cmd = [sys.executable, "-m", "hub.cli", "v3", "route", "--interval", "0.05", "--data-dir",
           str(tmp_path)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(receiver.got) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert 0 < len(receiver.got) < 200  # killed in the middle
        subprocess.run([*cmd, "--once"], check=True, timeout=120)
        got = receiver.ids()
        assert set(got) == {m for ms in mids.values() for m in ms}
        assert len(got) - len(set(got)) <= 1  # the one in flight when killed, at most
        for patient, sent in mids.items():
            firsts = list(dict.fromkeys(m for m in got if m.startswith(f"{patient}-")))
            assert firsts == sent
    finally:
        receiver.close()
    routes = Routes(tmp_path / "v3routes.sqlite")
    assert routes.stats()[0]["pending"] == 0
    routes.close()


def test_the_message_sinks_refuse_and_retry_as_their_subscribers_answer(tmp_path, receiver):
    """HTTP: a 4xx is a refusal, a 5xx or an unreachable subscriber is worth retrying."""
    from hub.v3routing import Pending, Refused

    p = Pending(1, INST, "POOR_IN200901UV", "m1", "Patient/a", b"<m/>", 0, 0.0)
    with pytest.raises(Unavailable):
        HttpMessageSink("http://127.0.0.1:1/v3", timeout_s=2).send(p)
    gone = httpx.URL(receiver.url).copy_with(path="/nowhere")

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(Refused):
            HttpMessageSink(f"http://127.0.0.1:{server.server_address[1]}{gone.path}").send(p)
    finally:
        server.shutdown()
        server.server_close()


def test_a_broken_sink_fails_its_own_subscription_not_the_others(tmp_path, receiver):
    """A sink failing in a way of its own (a timeout of -5: ValueError) ended `hub v3 route`
    on every start: no subscriber got anything until the subscription was removed."""
    routes = Routes(tmp_path / "v3routes.sqlite")
    bad = routes.subscribe("BAD", ["*"], {"type": "http", "url": receiver.url})
    good = routes.subscribe("LIS", ["*"], {"type": "http", "url": receiver.url})
    mids = accept(routes, "a", 2)

    class Broken:
        def send(self, p):
            raise ValueError("Timeout value out of range")

    sink = HttpMessageSink(receiver.url, timeout_s=5)
    done = route_once(routes, {bad: Broken(), good: sink}, Unavailable, now=Clock())
    assert done["delivered"] == 2 and receiver.ids() == mids
    assert [p.message_id for p in routes.pending(bad)] == mids  # kept for a retry
    sink.close()
    routes.close()
