"""Kafka topic as a connector source: records spooled with their offsets, the spool's checkpoint
wins over the group's committed offsets (a crash between the spool commit and the offset commit
takes nothing twice)."""

from __future__ import annotations

from connectors.sources.kafka import KafkaSource
from connectors.spool import Spool
from connectors.testing import adt_stream, running, wait_until
from fhir_mapping.base import SourceInfo
from kafka import KafkaProducer

from tests.kafka_broker import FAST_GROUP, broker  # noqa: F401 - fixture




def test_kafka_source_checkpoint(tmp_path, broker):  # noqa: F811
    topic = "his.h0001.hl7v2"
    broker.create_topic(topic, partitions=2)
    msgs = [m for _, ms in adt_stream(3, seed=51) for m in ms]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i, m in enumerate(msgs[:5]):
        producer.send(topic, key=str(i % 2).encode(), value=m)
    producer.flush()
    spool = Spool(tmp_path / "spool.sqlite", SourceInfo(institution="H0001"), durable=False)
    src = KafkaSource("feed", broker.bootstrap, topic, "conn-a", kind="hl7v2",
                      consumer=FAST_GROUP)
    with running(src, spool):
        wait_until(lambda: spool.counters().get("feed", {}).get("converted") == 5, 30,
                   what="five records")
        assert src.stats["records"] == 5
    # another group (no committed offsets: it would start at the beginning) over the same spool
    for i, m in enumerate(msgs[5:7]):
        producer.send(topic, key=str(i % 2).encode(), value=m)
    producer.flush()
    producer.close()
    src2 = KafkaSource("feed", broker.bootstrap, topic, "conn-b", kind="hl7v2",
                       consumer=FAST_GROUP)
    with running(src2, spool):
        wait_until(lambda: spool.counters()["feed"]["converted"] == 7, 30, what="two more")
    assert spool.counters()["feed"]["received"] == 7
    assert sorted(u.unit_id for u in spool.pending()) == sorted(
        m.split(b"|")[9].decode() for m in msgs[:7])
    spool.close()


def test_a_tombstone_is_a_dead_letter_and_the_source_goes_on(tmp_path, broker):  # noqa: F811
    """A record with no value (a tombstone) stopped the source: the spool refused a null
    payload, and the source read the same poll again for ever while /health said ok."""
    topic = "his.h0001.tombstone"
    broker.create_topic(topic, partitions=1)
    msgs = [m for _, ms in adt_stream(2, seed=52) for m in ms][:2]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for value in (msgs[0], None, msgs[1]):
        producer.send(topic, key=b"k", value=value)
    producer.flush()
    producer.close()
    spool = Spool(tmp_path / "spool.sqlite", SourceInfo(institution="H0001"), durable=False)
    src = KafkaSource("feed", broker.bootstrap, topic, "conn-t", kind="hl7v2",
                      consumer=FAST_GROUP)
    with running(src, spool):
        wait_until(lambda: spool.counters().get("feed", {}).get("received") == 3, 30,
                   what="three records")
    assert spool.counters()["feed"]["converted"] == 2
    assert len(spool.deadletters()) == 1
    spool.close()


def test_the_kafka_sink_starts_without_its_broker_and_sets_aside_only_a_too_large_unit(
        tmp_path, broker):  # noqa: F811
    """Made at start, the producer failed the whole connector while its broker was away (its
    MLLP port refused senders); a unit over the producer's record limit stalled every unit
    batched with it, retried for ever. Now the sink waits for the broker, and the large unit
    alone is a dead letter."""
    import time

    import pytest
    from kafka import KafkaConsumer

    from connectors.sinks.base import Unavailable
    from connectors.sinks.kafka import KafkaSink
    from connectors.spool import Unit
    from tests.conftest import free_port

    away = KafkaSink(f"127.0.0.1:{free_port()}", "nowhere", "c", timeout_s=11,
                     producer={"request_timeout_ms": 1000, "bootstrap_timeout_ms": 1000})
    with pytest.raises(Unavailable):
        away.deliver([Unit(0, "adt", "u0", "fhir", "Patient/p0", [], [], time.time())])
    away.close()

    topic = "hub.sink.large"
    broker.create_topic(topic, partitions=1)
    sink = KafkaSink(broker.bootstrap, topic, "c", producer={"request_timeout_ms": 5000})

    def unit(i: int, size: int = 0) -> Unit:
        r = {"resourceType": "Binary", "id": f"b{i}", "contentType": "text/plain",
             "data": "QUFB" * (size // 4)} if size else {"resourceType": "Patient", "id": f"p{i}"}
        return Unit(i, "adt", f"u{i}", "fhir", f"Patient/p{i}", [r], [], time.time())

    out = sink.deliver([unit(1), unit(2, 2_000_000), unit(3)])
    sink.close()
    assert out[0] is None and out[2] is None
    assert out[1] is not None and out[1]["rule"] == "kafka.too-large"
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    got = [r.value for r in consumer]
    consumer.close()
    assert len(got) == 2 and all(b'"Patient"' in v for v in got)


def test_a_sources_checkpoint_is_of_its_topic_on_its_cluster():
    """Keyed by the topic alone, two sources reading same-named topics of two clusters (or one
    source moved to a new cluster) shared one checkpoint and skipped records."""
    a = KafkaSource("adt", "kafka-a:9092", "his.adt", "g")
    b = KafkaSource("adt", "kafka-b:9092", "his.adt", "g")
    other = KafkaSource("lab", "kafka-a:9092", "his.adt", "g")
    assert len({a.key, b.key, other.key}) == 3
    assert a.key == KafkaSource("adt", "kafka-a:9092", "his.adt", "another-group").key


def test_a_kafka_source_that_keeps_failing_is_not_healthy(tmp_path, broker):  # noqa: F811
    """A source naming a topic Kafka refuses restarted again and again (a traceback each time)
    while /health answered ok: its thread was alive. It is degraded while it keeps failing."""
    import time

    from connectors.config import ConnectorConfig
    from connectors.daemon import Connector
    from tests.conftest import free_port

    cfg = ConnectorConfig.from_dict({
        "name": "lab", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "retry": {"initial_s": 0.1, "max_s": 0.2},
        "sources": [{"type": "kafka", "name": "lab", "bootstrap_servers": broker.bootstrap,
                     "topic": "his lab!", "group_id": "g", "kind": "hl7v2"}],
        "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}})
    conn = Connector(cfg)
    conn.start()
    try:
        deadline = time.monotonic() + 20
        while "error" not in conn.status()["sources"]["lab"] and time.monotonic() < deadline:
            time.sleep(0.1)
        st = conn.status()
        assert st["healthy"] is False and st["sources"]["lab"]["failing"] is True, st
    finally:
        conn.stop()
        conn.join()
