"""Kafka topic as a connector source: records spooled with their offsets, the spool's checkpoint
wins over the group's committed offsets (a crash between the spool commit and the offset commit
takes nothing twice)."""

from __future__ import annotations

import threading

from connectors.sources.kafka import KafkaSource
from connectors.spool import Spool
from connectors.testing import adt_stream, wait_until
from fhir_mapping.base import SourceInfo
from kafka import KafkaProducer

from tests.kafka_broker import FAST_GROUP, broker  # noqa: F401 - fixture



def run(src, spool):
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(spool, stop), daemon=True)
    t.start()
    return stop, t


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
    stop, t = run(src, spool)
    try:
        wait_until(lambda: spool.counters().get("feed", {}).get("converted") == 5, 30,
                   what="five records")
        assert src.stats["records"] == 5
    finally:
        stop.set()
        t.join(10)
    # another group (no committed offsets: it would start at the beginning) over the same spool
    for i, m in enumerate(msgs[5:7]):
        producer.send(topic, key=str(i % 2).encode(), value=m)
    producer.flush()
    producer.close()
    src2 = KafkaSource("feed", broker.bootstrap, topic, "conn-b", kind="hl7v2",
                       consumer=FAST_GROUP)
    stop, t = run(src2, spool)
    try:
        wait_until(lambda: spool.counters()["feed"]["converted"] == 7, 30, what="two more")
    finally:
        stop.set()
        t.join(10)
    assert spool.counters()["feed"]["received"] == 7
    assert sorted(u.unit_id for u in spool.pending()) == sorted(
        m.split(b"|")[9].decode() for m in msgs[:7])
    spool.close()
