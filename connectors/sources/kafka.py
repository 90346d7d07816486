"""Consume a Kafka topic of raw payloads (HL7 v2 messages, rows, FHIR JSON) as a connector source.

Records of a poll are converted and spooled together with the offsets they reach (the checkpoint
``kafka:<topic>``, in the same spool transaction), and the consumer commits those offsets to the
group only afterwards. When partitions are assigned the consumer seeks past the spool's checkpoint,
so records spooled but not yet committed to the group (a crash between the two) are not taken twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson

from connectors.base import Envelope, Intake

log = logging.getLogger("connectors.kafka")


class KafkaSource:
    def __init__(self, name: str, bootstrap_servers: str, topic: str, group_id: str,
                 kind: str = "hl7v2", max_records: int = 200, consumer: dict | None = None,
                 **_: Any):
        self.name, self.topic, self.kind = name, topic, kind
        self.cfg = {"bootstrap_servers": bootstrap_servers, "group_id": group_id,
                    "enable_auto_commit": False, "auto_offset_reset": "earliest",
                    "max_poll_records": int(max_records), "session_timeout_ms": 10000,
                    "heartbeat_interval_ms": 1000, **(consumer or {})}
        # the spool's checkpoint of this source: of this topic on this cluster (keyed by the
        # topic alone, a same-named topic of another cluster, or the cluster a source was moved
        # to, started at the other one's offsets and skipped its first records)
        self.key = f"kafka:{name}:{bootstrap_servers}:{topic}"
        self.stats: dict[str, Any] = {"records": 0, "topic_lag": None}

    @classmethod
    def from_config(cls, name: str, cfg: dict) -> KafkaSource:
        return cls(name=name, **{k: v for k, v in cfg.items() if k not in ("name", "type")})

    def run(self, intake: Intake, stop: threading.Event) -> None:
        from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        consumer = KafkaConsumer(**self.cfg)
        source = self

        class Seek(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):
                spooled = orjson.loads(intake.checkpoint(source.key) or b"{}")
                for tp in assigned:
                    nxt = spooled.get(str(tp.partition))
                    if nxt is not None:
                        consumer.seek(tp, int(nxt))

        consumer.subscribe([self.topic], listener=Seek())
        lag_at = 0.0
        try:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=500)
                if time.monotonic() - lag_at > 5:
                    lag_at = time.monotonic()
                    self._measure_lag(consumer)
                if not batch:
                    continue
                envs = []
                positions = orjson.loads(intake.checkpoint(self.key) or b"{}")
                commit = {}
                for tp, records in batch.items():
                    for r in records:
                        # a tombstone (no value) is an empty payload: refused by the
                        # converter and kept as a dead letter, never a stop of the source
                        envs.append(Envelope(r.value or b"", self.kind, self.name, {
                            "topic": tp.topic, "partition": tp.partition, "offset": r.offset,
                            "key": r.key.decode("utf-8", "replace") if r.key else None}))
                    positions[str(tp.partition)] = records[-1].offset + 1
                    commit[TopicPartition(tp.topic, tp.partition)] = OffsetAndMetadata(
                        records[-1].offset + 1, "", -1)
                intake.accept(envs, (self.key, orjson.dumps(positions).decode()))
                self.stats["records"] += len(envs)
                try:
                    consumer.commit(commit)
                except Exception as e:  # noqa: BLE001 - the spool checkpoint covers it
                    log.warning("kafka source %s: offset commit failed: %s", self.name, e)
        finally:
            consumer.close()

    def _measure_lag(self, consumer) -> None:
        """Records in the topic not yet taken, over the assigned partitions (status)."""
        try:
            parts = consumer.assignment()
            if parts:
                ends = consumer.end_offsets(list(parts))
                self.stats["topic_lag"] = sum(max(0, ends[tp] - consumer.position(tp))
                                              for tp in parts)
        except Exception:  # noqa: BLE001 - status only
            pass
