"""Through Kafka: MLLP -> connector (Kafka sink) -> topic -> ``hub ingest-worker`` -> store -> FHIR.

A real Kafka-protocol broker (Tansu), a real ``hub serve`` reading what the worker wrote, the worker
and the connector in their own processes. Mid-stream the worker and the connector are SIGKILLed
and restarted and the broker is frozen (SIGSTOP) for a while; afterwards every resource has
exactly its expected versions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaProducer

from connectors.testing import ConnectorProcess, adt_stream, wait_until, write_config
from hub.core import httpclient
from tests.conftest import LiveServer, free_port
from tests.kafka_broker import FAST_GROUP, broker  # noqa: F401 - fixture
from tests.test_connector_e2e import (
    INFO,
    _strip,
    check_hub,
    expected_state,
    hub_settings,
    needs_v2,
    send_group,
)


class WorkerProcess:
    def __init__(self, settings, bootstrap: str, topic: str, log):
        self.args = [sys.executable, "-m", "hub.cli", "ingest-worker", "--data-dir",
                     str(settings.data_dir), "--bootstrap-servers", bootstrap, "--topic", topic,
                     "--group", "hub-test", "--session-timeout-ms",
                     str(FAST_GROUP["session_timeout_ms"])]
        self.log = log
        self.proc = None

    def start(self):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("HUB_DATABASE_URL", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kafka_connector_config(tmp_path, bootstrap, topic, mllp_port, status_port):
    return write_config(
        tmp_path / "connector.yaml", name="adt",
        institution={"code": INFO.institution, "oid": INFO.oid, "name": INFO.name},
        state_dir=str(tmp_path / "state"), status={"host": "127.0.0.1", "port": status_port},
        retry={"initial_s": 0.05, "max_s": 0.5},
        sources=[{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": mllp_port,
                  "kind": "hl7v2"}],
        sink={"type": "kafka", "bootstrap_servers": bootstrap, "topic": topic, "batch_size": 50,
              "timeout_s": 15,
              "producer": {"request_timeout_ms": 3000, "reconnect_backoff_max_ms": 300}})


def all_there(base: str, expected: dict, auth=None) -> bool:
    with httpx.Client(base_url=base, timeout=10, auth=auth, verify=httpclient.verify()) as c:
        for ref, (content, _) in expected.items():
            r = c.get(ref)
            if r.status_code != 200 or _strip(r.json()) != content:
                return False
    return True


# kafka-python's own I/O loop, closing: a socket closed under a pending read is logged with its
# traceback by the library (a race in its transport, seen on a worker stopped mid-fetch); it is
# no failure of the worker, which has left its group by then. Every other traceback is one.
_LIBRARY_CLOSE_RACE = re.compile(r"^\S+ \S+ ERROR kafka\.net\.transport: .*Error receiving network "
                                 r"data closing socket")


def _tracebacks(log: str) -> list[str]:
    """The log records (a record: a timestamped line and the lines under it) holding a traceback."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log)
    return [r for r in records if "Traceback" in r and not _LIBRARY_CLOSE_RACE.match(r)]


@needs_v2
def test_mllp_through_kafka_with_kills_and_a_frozen_broker(tmp_path, broker):  # noqa: F811
    topic = "hub.adt.h0001"
    broker.create_topic(topic, partitions=3)
    groups = adt_stream(20, seed=31)
    expected = expected_state(groups)
    total = sum(len(m) for _, m in groups)
    settings = hub_settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    with LiveServer(settings) as hub:
        worker = WorkerProcess(settings, broker.bootstrap, topic, tmp_path / "worker.log").start()
        mllp_port, status_port = free_port(), free_port()
        cfg = kafka_connector_config(tmp_path, broker.bootstrap, topic, mllp_port, status_port)
        conn = ConnectorProcess(cfg, status_port).start()
        try:
            acks: list[str] = []

            def sender(part):
                for _, msgs in part:
                    send_group(mllp_port, msgs, acks, retry=True)
                    time.sleep(0.02)

            threads = [threading.Thread(target=sender, args=(groups[i::2],)) for i in range(2)]
            for t in threads:
                t.start()
            wait_until(lambda: len(acks) >= total // 4, 30, what="first quarter")
            worker.kill()
            worker.start()
            wait_until(lambda: len(acks) >= total // 2, 30, what="half")
            broker.pause()  # the broker stops answering: the connector spools and retries
            before = len(acks)
            time.sleep(2.5)
            assert len(acks) > before  # senders are answered while the broker is frozen
            broker.resume()
            conn.kill()
            conn.start()
            for t in threads:
                t.join(60)
            assert len(acks) == total and set(acks) == {"AA"}
            wait_until(lambda: conn.status()["sources"]["adt"]["lag"] == 0, 60,
                       what="connector delivery")
            wait_until(lambda: all_there(hub.base, expected, hub.auth), 60, every=0.5,
                       what="worker ingest")
            time.sleep(0.5)  # anything still in flight would add versions
            check_hub(hub.base, expected, hub.auth)
        finally:
            conn.stop()
            worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert not _tracebacks(log), log[-3000:]


def _worked_through(settings, broker, topic: str, group: str, values: list) -> Any:  # noqa: F811
    """An ingest worker (in a thread of this process) run until it has written or refused every
    one of ``values``, sent to ``topic`` in order; it has stopped when this returns."""
    from hub.worker import IngestWorker

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for value in values:
        producer.send(topic, key=b"k", value=value)
    producer.flush()
    producer.close()
    worker = IngestWorker(settings, broker.bootstrap, [topic], group=group, consumer=FAST_GROUP)
    t = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    t.start()
    try:
        wait_until(lambda: worker.stats["written"] + worker.stats["failed"] >= len(values), 30,
                   what=f"{len(values)} records")
    finally:
        worker.stop()
        t.join(20)
    assert not t.is_alive()
    return worker


def test_worker_dead_letters(tmp_path, broker, capsys, settings):  # noqa: F811
    """Records the hub refuses are dead-lettered with the record; the others are written.
    On both event stores (SQLite, PostgreSQL); the dead letters live in the data directory."""
    from hub.cli import main

    topic = f"hub.bad.{settings.database_url and 'pg' or 'sqlite'}"
    broker.create_topic(topic, partitions=1)
    good = {"v": 1, "connector": "t", "unit_id": "u1", "kind": "fhir",
            "patient_key": "Patient/w1",
            "resources": [{"resourceType": "Patient", "id": "w1", "gender": "female"}],
            "deletes": []}
    invalid = {**good, "unit_id": "u2",
               "resources": [{"resourceType": "Patient", "id": "w2", "gender": "sometimes"}]}
    worker = _worked_through(settings, broker, topic, f"dl-{topic}",
                             [orjson.dumps(good), b"not json at all", orjson.dumps(invalid)])
    assert worker.stats["written"] == 1 and worker.stats["failed"] == 2

    args = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        args += ["--database-url", settings.database_url]
    assert main(["deadletter", "list", "--worker", "--json", *args]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["ingest", "ingest"]
    # the unreadable record is dead-lettered once its batch is written, after the refused unit
    rows.sort(key=lambda r: "not JSON" not in r["error"]["reason"])
    assert "not JSON" in rows[0]["error"]["reason"]
    assert "sometimes" in rows[1]["error"]["reason"] and rows[1]["unit_id"] == "u2"
    assert "gender" in rows[1]["error"]["reason"]  # where: the expression
    assert main(["deadletter", "show", str(rows[1]["id"]), "--worker", *args]) == 0
    assert "sometimes" in capsys.readouterr().out
    assert main(["deadletter", "replay", str(rows[1]["id"]), "--worker", *args]) == 1
    assert "failed again" in capsys.readouterr().out
    assert main(["show", "Patient/w1", *args]) == 0


def test_worker_goes_on_past_poison_and_writes_each_unit_as_its_institution(tmp_path, broker,  # noqa: F811
                                                                             settings):
    """A tombstone (no value), a deletion that is no reference and JSON nested 600 deep each
    stopped the worker, and stopped it again on every restart; they are dead letters now. Units
    of two hospitals in one poll are each stored as their own institution's (they were stored
    as no one's, which any hospital could then overwrite), and a unit claiming another
    hospital's record is refused as a REST write of it is."""
    from hub.core.ingest import Hub

    topic = f"hub.poison.{settings.database_url and 'pg' or 'sqlite'}"
    broker.create_topic(topic, partitions=1)

    def unit(uid: str, inst: str, rid: str, **extra) -> bytes:
        return orjson.dumps({"v": 1, "connector": f"c-{inst}", "institution": inst,
                             "unit_id": uid, "kind": "fhir", "patient_key": f"Patient/{rid}",
                             "resources": [{"resourceType": "Patient", "id": rid, **extra}],
                             "deletes": []})

    records = [unit("a1", "H0001", "own1", gender="female"),
               None,  # a tombstone
               orjson.dumps({"v": 1, "resources": [], "deletes": [{"a": 1}]}),
               b"[" * 600 + b"]" * 600,
               unit("b1", "H0002", "theirs1", gender="male"),  # another hospital, same poll
               unit("b2", "H0002", "own1", gender="male"),  # H0002 claims H0001's record
               # a key given twice: one of its values was dropped unsaid (the API refuses it)
               unit("d1", "H0001", "dup1", gender="male").replace(
                   b'"gender":"male"', b'"gender":"male","gender":"female"')]
    worker = _worked_through(settings, broker, topic, f"p-{topic}", records)
    assert worker.stats["written"] == 2 and worker.stats["failed"] == 5
    # an operator's replay of the refused claim writes as H0002 again: refused again (it was
    # written as the hub itself, H0001's record overwritten)
    from connectors.spool import Spool
    from hub.worker import deadletter_path, replay_deadletters

    letters = Spool(deadletter_path(settings))
    try:
        claim = next(d["id"] for d in letters.deadletters() if d.get("unit_id") == "b2")
        [(_, ok, err, _)] = replay_deadletters(letters, [claim], settings)
    finally:
        letters.close()
    assert not ok and "institution" in str(err), err
    hub = Hub(settings.open_store())
    try:
        for rid, inst, gender in (("own1", "H0001", "female"), ("theirs1", "H0002", "male")):
            stored = hub.store.latest_many("Patient", [rid])[rid][1]
            head, _, body = stored.partition(b"\n")
            assert orjson.loads(head)["source"]["institution"] == inst
            assert orjson.loads(body)["gender"] == gender
    finally:
        hub.store.close()


def test_a_unit_that_fails_its_conversion_is_a_dead_letter_and_its_batch_goes_on(broker,  # noqa: F811
                                                                                 settings):
    """A unit whose order held a part list of another shape (``"extension": 5``) stopped the
    worker with a TypeError, and again at every restart: the good unit before it in the poll was
    never written, the tombstone and the broken JSON after it never dead-lettered, the offset
    never committed. Such a unit, one whose conversion fails some other way (the exception's
    text its reason) and one whose meta is no object (the batch's check crashed on it, retried
    without end) are dead letters now; the rest of the poll is written, and the offset is
    committed past them all."""
    from kafka import KafkaConsumer, TopicPartition

    from connectors.spool import Spool
    from fhir_mapping.source_order import URL
    from hub.core.ingest import Hub
    from hub.worker import deadletter_path

    topic = f"hub.shape.{settings.database_url and 'pg' or 'sqlite'}"
    broker.create_topic(topic, partitions=1)

    def unit(uid: str, resources: list, deletes: list = (), **extra) -> bytes:  # type: ignore[assignment]
        return orjson.dumps({"v": 1, "connector": "c", "unit_id": uid, "kind": "fhir",
                             "resources": resources, "deletes": list(deletes), **extra})

    records = [unit("good1", [{"resourceType": "Patient", "id": "shape1", "gender": "female"}]),
               unit("order5", [], ["Patient/gone1"], order={"url": URL, "extension": 5}),
               None,  # a tombstone
               b'{"v": 1, "resources": [',
               # nesting orjson reads but will not write: the unit's write keys failed
               unit("deep", [{"resourceType": "Patient", "id": "shape2"}]).replace(
                   b'"shape2"', b'"shape2","x":' + b"[" * 300 + b"]" * 300),
               # a meta of another shape failed the batch's envelope check, retried forever
               unit("meta5", [{"resourceType": "Patient", "id": "shape4", "meta": 5}]),
               unit("good2", [{"resourceType": "Patient", "id": "shape3", "gender": "male"}])]
    group = f"s-{topic}"
    worker = _worked_through(settings, broker, topic, group, records)
    assert worker.stats["written"] == 2 and worker.stats["failed"] == 5

    letters = Spool(deadletter_path(settings))
    try:
        reasons = {letters.deadletter(d["id"])["meta"]["offset"]: d["error"]["reason"]
                   for d in letters.deadletters()}
    finally:
        letters.close()
    assert sorted(reasons) == [1, 2, 3, 4, 5], reasons
    assert "source-order" in reasons[1] and "tombstone" in reasons[2]
    assert "not JSON" in reasons[3] and "Recursion limit" in reasons[4]
    assert "Meta" in reasons[5], reasons[5]
    hub = Hub(settings.open_store())
    try:
        stored = hub.store.latest_many("Patient", ["shape1", "shape2", "shape3", "shape4"])
        assert set(stored) == {"shape1", "shape3"}
    finally:
        hub.store.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, **FAST_GROUP)
    try:
        assert consumer.committed(TopicPartition(topic, 0)) == len(records)
    finally:
        consumer.close()


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch):
    monkeypatch.delenv("HUB_DATABASE_URL", raising=False)


def test_an_unreadable_record_is_dead_lettered_once_however_often_its_batch_is_retried(settings):
    """While the store was away, each retry of a poll dead-lettered its unreadable record again
    (one duplicate every few seconds of an outage): now only once the batch is written."""
    from types import SimpleNamespace

    from kafka import TopicPartition

    from hub.worker import IngestWorker, Transient

    worker = IngestWorker(settings, "127.0.0.1:1", ["t"])
    tp = TopicPartition("t", 0)
    good = {"v": 1, "connector": "c", "unit_id": "u1", "kind": "fhir", "patient_key": "Patient/o1",
            "resources": [{"resourceType": "Patient", "id": "o1"}], "deletes": []}
    sub = [(tp, SimpleNamespace(offset=1, value=b"{broken"), {"error": "not JSON"}),
           (tp, SimpleNamespace(offset=2, value=orjson.dumps(good)), good)]
    try:
        worker.hub.store.close()  # the store is away
        for _ in range(3):
            with pytest.raises(Transient):
                worker._write(sub)
        assert worker.deadletters.deadletters() == []
    finally:
        worker.deadletters.close()


def _refuse_at_write(url: str, ref: str) -> None:
    """The PostgreSQL store refuses to store ``ref`` (a data exception, SQLSTATE 22023), as it
    would a value it cannot take: the same unit fails the same way at every attempt."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse_unit() RETURNS trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN RAISE EXCEPTION 'refused by the store' USING ERRCODE = '22023'; "
                     "END $$")
        conn.execute("CREATE TRIGGER refuse_unit BEFORE INSERT ON stored_events FOR EACH ROW "
                     f"WHEN (NEW.originator_id = '{ref}') EXECUTE FUNCTION refuse_unit()")


def _patient_unit(rid: str) -> bytes:
    return orjson.dumps({"v": 1, "connector": "c", "unit_id": rid, "kind": "fhir",
                         "patient_key": f"Patient/{rid}",
                         "resources": [{"resourceType": "Patient", "id": rid}], "deletes": []})


@pytest.mark.postgres
def test_a_unit_the_store_refuses_at_write_is_a_dead_letter_and_its_partition_goes_on(
        broker, tmp_path, request):  # noqa: F811
    """A unit whose write failed in a way that was no outage (here the store refusing its row)
    was retried as an unavailable store is, for ever: its partition held, nothing after it
    written. It is a dead letter now, with the error; the others of its poll are written, the
    offset committed past it, and the worker goes on with what comes next."""
    from kafka import KafkaConsumer, TopicPartition

    from connectors.spool import Spool
    from hub.core.ingest import Hub
    from hub.worker import IngestWorker, deadletter_path, replay_deadletters
    from tests.conftest import make_settings

    settings = make_settings("postgres", tmp_path, request)
    Hub(settings.open_store()).store.close()  # the store's tables, for the trigger
    _refuse_at_write(settings.database_url, "Patient/bad1")
    topic = "hub.refused.pg"
    broker.create_topic(topic, partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for rid in ("good1", "bad1", "good2"):
        producer.send(topic, key=b"k", value=_patient_unit(rid))
    producer.flush()
    group = f"r-{topic}"
    worker = IngestWorker(settings, broker.bootstrap, [topic], group=group, consumer=FAST_GROUP)
    t = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    t.start()
    try:
        wait_until(lambda: worker.stats["written"] + worker.stats["failed"] >= 3, 60,
                   what="3 records")
        producer.send(topic, key=b"k", value=_patient_unit("good3"))  # what comes next
        producer.flush()
        wait_until(lambda: worker.stats["written"] >= 3, 30, what="the record after")
    finally:
        producer.close()
        worker.stop()
        t.join(20)
    assert not t.is_alive()
    assert worker.stats["written"] == 3 and worker.stats["failed"] == 1, worker.stats

    letters = Spool(deadletter_path(settings))
    try:
        [letter] = letters.deadletters()
        assert letter["unit_id"] == "bad1" and letter["status"] == "open"
        assert "refused by the store" in letter["error"]["reason"], letter["error"]
        assert orjson.loads(letters.deadletter(letter["id"])["payload"])["unit_id"] == "bad1"
        # replayed while the store still refuses it: failed again, said so
        [(_, ok, err, _)] = replay_deadletters(letters, [letter["id"]], settings)
        assert not ok and "refused by the store" in err["reason"], err
    finally:
        letters.close()
    hub = Hub(settings.open_store())
    try:
        assert set(hub.store.latest_many("Patient", ["good1", "bad1", "good2", "good3"])) == \
            {"good1", "good2", "good3"}
    finally:
        hub.store.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, **FAST_GROUP)
    try:
        assert consumer.committed(TopicPartition(topic, 0)) == 4
    finally:
        consumer.close()


@pytest.mark.postgres
def test_while_the_store_is_away_no_unit_is_a_dead_letter(tmp_path, request):
    """The batch holding a unit the store refuses is tried again while PostgreSQL takes no
    connections, and nothing of it is dead-lettered (an outage is no unit's failure); once the
    store is back, the unit that still fails is, and the others are written."""
    from types import SimpleNamespace

    import psycopg
    from kafka import TopicPartition

    from hub.worker import IngestWorker, Transient, _read
    from tests.conftest import PG_ADMIN, make_settings

    settings = make_settings("postgres", tmp_path, request)
    worker = IngestWorker(settings, "127.0.0.1:1", ["t"])
    _refuse_at_write(settings.database_url, "Patient/bad1")
    tp = TopicPartition("t", 0)
    sub = [(tp, SimpleNamespace(offset=n, value=_patient_unit(rid)), _read(_patient_unit(rid))[0])
           for n, rid in enumerate(("good1", "bad1"))]
    name = settings.database_url.rsplit("/", 1)[1]

    def allow(yes: bool) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(yes).lower()}')
            if not yes:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s", (name,))
    try:
        allow(False)
        try:
            with pytest.raises(Transient):
                worker._write(sub)
            assert worker.deadletters.deadletters() == []
        finally:
            allow(True)
        worker._write(sub)
        assert worker.stats["written"] == 1 and worker.stats["failed"] == 1
        assert [d["unit_id"] for d in worker.deadletters.deadletters()] == ["bad1"]
    finally:
        worker.hub.store.close()
        worker.deadletters.close()


def test_an_institutions_concept_map_through_a_feed_is_a_dead_letter(broker, tmp_path,  # noqa: F811
                                                                   request):
    """The FHIR API lets an institution write only its own terminology; through Kafka a
    connector's ConceptMap was stored unchecked, re-pointing every institution's codes. The
    worker, which has no terminology read model to judge it against, refuses it: a dead letter
    naming why; the Patient beside it is written."""
    from connectors.spool import Spool
    from hub.core.ingest import Hub
    from hub.worker import IngestWorker, deadletter_path
    from tests.conftest import make_settings

    settings = make_settings("sqlite", tmp_path, request)
    topic = "hub.terminology.feed"
    broker.create_topic(topic, partitions=1)
    cmap = {"resourceType": "ConceptMap", "id": "evil", "status": "active",
            "url": "http://b.example/cm/lab", "version": "2",
            "group": [{"source": "urn:oid:1.2.3.4.5.7", "target": "http://loinc.org",
                       "element": [{"code": "GLU", "target": [
                           {"code": "2160-0", "equivalence": "equivalent"}]}]}]}
    unit = {"v": 1, "connector": "a", "institution": "H_A", "unit_id": "cm1", "kind": "fhir",
            "resources": [cmap], "deletes": []}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    producer.send(topic, key=b"k", value=orjson.dumps(unit))
    producer.send(topic, key=b"k", value=_patient_unit("after1"))
    producer.flush()
    producer.close()
    worker = IngestWorker(settings, broker.bootstrap, [topic], group=f"g-{topic}",
                          consumer=FAST_GROUP)
    t = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    t.start()
    try:
        wait_until(lambda: worker.stats["written"] + worker.stats["failed"] >= 2, 60,
                   what="2 records")
    finally:
        worker.stop()
        t.join(20)
    assert worker.stats["written"] == 1 and worker.stats["failed"] == 1, worker.stats
    letters = Spool(deadletter_path(settings))
    try:
        [letter] = letters.deadletters()
        assert letter["unit_id"] == "cm1" and "through a feed" in str(letter["error"])
    finally:
        letters.close()
    hub = Hub(settings.open_store())
    try:
        assert hub.store.latest("ConceptMap", "evil") is None
        assert hub.store.latest("Patient", "after1") is not None
    finally:
        hub.store.close()
