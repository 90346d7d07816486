"""Deliver units to a Kafka topic read by ``hub ingest-worker`` (a consumer group).

One record per unit, keyed by ``Conversion.patient_key`` (so one patient's units stay in one
partition, in order), value = the unit as JSON (see ``unit_record``). ``acks=all`` and the
idempotent producer (kafka-python's ``enable_idempotence``): a retried send is not written twice by
the broker. A unit is marked delivered only after the broker acknowledged it; a batch sent again
after a crash holds no two different writes of one resource (``take_batch``), so the worker's
idempotent writes turn the repeats into no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from connectors.sinks.base import Unavailable
from connectors.spool import Unit
from fhir_mapping.base import SourceInfo

RECORD_VERSION = 1


def unit_record(u: Unit, connector: str, info: SourceInfo) -> bytes:
    return orjson.dumps({
        "v": RECORD_VERSION, "connector": connector, "source": u.source,
        "institution": info.institution, "unit_id": u.unit_id, "kind": u.kind,
        "patient_key": u.patient_key, "seq": u.seq, **u.conversion().unit()})


class KafkaSink:
    def __init__(self, bootstrap_servers: str, topic: str, connector: str = "",
                 source_info: SourceInfo | None = None, timeout_s: float = 30.0,
                 producer: dict | None = None, **_: Any):
        self.topic = topic
        self.connector = connector
        self.info = source_info or SourceInfo()
        self.timeout = float(timeout_s)
        self.cfg = {"bootstrap_servers": bootstrap_servers, "acks": "all",
                    "enable_idempotence": True, "linger_ms": 5, "retries": 2**31 - 1,
                    "max_in_flight_requests_per_connection": 5, "request_timeout_ms": 10000,
                    "delivery_timeout_ms": int(self.timeout * 1000),
                    "reconnect_backoff_max_ms": 2000, **(producer or {})}
        # the largest record the producer sends (its own limit; a broker's may be lower)
        self.max_record = int(self.cfg.get("max_request_size", 1048576))
        self._producer: Any = None

    @property
    def producer(self) -> Any:
        """Made on first use, not at start: a connector starts, takes and spools messages
        while its broker is away (making it at start failed the whole daemon: the MLLP port
        refused senders), and the sink retries until the broker answers."""
        if self._producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            try:
                self._producer = KafkaProducer(**self.cfg)
            except KafkaError as e:
                raise Unavailable(f"Kafka is not reachable: {type(e).__name__}: {e}") from None
        return self._producer

    def close(self) -> None:
        if self._producer is None:
            return
        try:
            self._producer.close(timeout=5)
        except Exception:  # noqa: BLE001
            pass

    def deliver(self, units: Sequence[Unit]) -> list[dict[str, Any] | None]:
        from kafka.errors import KafkaError

        records = [unit_record(u, self.connector, self.info) for u in units]
        out: list[dict[str, Any] | None] = [None] * len(units)
        # a record over the producer's limit is refused here, alone: a dead letter, and the
        # others of the batch go on (the whole batch was retried for ever)
        sending = []
        for i, rec in enumerate(records):
            if len(rec) + 512 > self.max_record:
                out[i] = {"reason": f"the unit is {len(rec)} bytes as a Kafka record, over the "
                          f"producer's max_request_size ({self.max_record})", "code": "AE",
                          "rule": "kafka.too-large"}
            else:
                sending.append(i)
        if not sending:
            return out
        try:
            futures = [(i, self.producer.send(
                self.topic, key=(units[i].patient_key or units[i].unit_id or str(units[i].seq))
                .encode(), value=records[i])) for i in sending]
            self.producer.flush(timeout=self.timeout)
            for _, f in futures:
                f.get(timeout=self.timeout)  # raises what the broker said
            return out
        except KafkaError as e:
            too_large = "MessageSizeTooLarge" in type(e).__name__ or \
                "RecordTooLarge" in type(e).__name__
            if too_large and len(sending) == 1:
                out[sending[0]] = {"reason": f"the broker refused the record: {e}", "code": "AE",
                                   "rule": "kafka.too-large"}
                return out
            if too_large:  # the broker's limit is lower than ours: find the culprit one by one
                for i in sending:
                    out[i] = self.deliver([units[i]])[0]
                return out
            raise Unavailable(f"{type(e).__name__}: {e}") from None
