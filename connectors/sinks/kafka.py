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
        "patient_key": u.patient_key, "seq": u.seq, "resources": u.resources,
        "deletes": u.deletes})


class KafkaSink:
    def __init__(self, bootstrap_servers: str, topic: str, connector: str = "",
                 source_info: SourceInfo | None = None, timeout_s: float = 30.0,
                 producer: dict | None = None, **_: Any):
        from kafka import KafkaProducer

        self.topic = topic
        self.connector = connector
        self.info = source_info or SourceInfo()
        self.timeout = float(timeout_s)
        cfg = {"bootstrap_servers": bootstrap_servers, "acks": "all",
               "enable_idempotence": True, "linger_ms": 5, "retries": 2**31 - 1,
               "max_in_flight_requests_per_connection": 5, "request_timeout_ms": 10000,
               "delivery_timeout_ms": int(self.timeout * 1000), "reconnect_backoff_max_ms": 2000,
               **(producer or {})}
        self.producer = KafkaProducer(**cfg)

    def close(self) -> None:
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001
            pass

    def deliver(self, units: Sequence[Unit]) -> list[dict[str, Any] | None]:
        from kafka.errors import KafkaError

        try:
            futures = [self.producer.send(
                self.topic, key=(u.patient_key or u.unit_id or str(u.seq)).encode(),
                value=unit_record(u, self.connector, self.info)) for u in units]
            self.producer.flush(timeout=self.timeout)
            out: list[dict[str, Any] | None] = []
            for f in futures:
                f.get(timeout=self.timeout)  # raises what the broker said
                out.append(None)
            return out
        except KafkaError as e:
            if getattr(e, "retriable", True) or "Timeout" in type(e).__name__:
                raise Unavailable(f"{type(e).__name__}: {e}") from None
            if "MessageSizeTooLarge" in type(e).__name__ or "RecordTooLarge" in type(e).__name__:
                if len(units) == 1:
                    return [{"reason": f"the broker refused the record: {e}", "code": "AE",
                             "rule": "kafka.too-large"}]
            raise Unavailable(f"{type(e).__name__}: {e}") from None
