"""Sinks of whole messages: the platform bus's deliveries to subscribers (``hub.v3routing``).

``send(pending)`` returns when the subscriber has the message; raises ``Unavailable`` when it
cannot take it now (connection refused, timeout, 5xx, throttling: sent again later) and
``hub.v3routing.Refused`` when it never will (4xx, or an HL7 v3 acknowledgement AE/AR: the
message is dead-lettered with that reason).

- ``http``: ``POST url`` with the message as ``application/xml`` (the headers name the
  interaction, the message id and the institution, so a receiver can drop a repeat);
- ``kafka``: one record on ``topic`` keyed by the patient (one partition: in order), the message
  as its value, the same names as record headers.
"""

from __future__ import annotations

from typing import Any

import httpx

from connectors.sinks.base import RETRY_STATUS, Unavailable
from connectors.tls import http_verify
from fhir_mapping.xmlsafe import parse_xml
from hub.core.errors import HubError
from hub.v3routing import Pending, Refused


def _names(p: Pending) -> dict[str, str]:
    return {"x-hub-interaction": p.interaction, "x-hub-message-id": p.message_id,
            "x-hub-source-institution": p.institution}


def _refusal_in(body: bytes) -> str | None:
    """The AE/AR an HL7 v3 receiver answered with (its text), if the answer is one."""
    if b"acknowledgement" not in body[:4000]:
        return None
    try:
        root = parse_xml(body)
    except HubError:
        return None
    ack = root.find("{urn:hl7-org:v3}acknowledgement")
    if ack is None or ack.get("typeCode") in (None, "AA", "CA"):
        return None
    text = ack.find("{urn:hl7-org:v3}acknowledgementDetail/{urn:hl7-org:v3}text")
    return f"{ack.get('typeCode')}: " + (text.get("value") if text is not None else "")


class HttpMessageSink:
    def __init__(self, url: str, timeout_s: float = 30.0, headers: dict | None = None,
                 tls: dict | None = None, **_: Any):
        self.url = url
        verify: Any = http_verify(url, tls, "message sink")
        self.client = httpx.Client(timeout=float(timeout_s), verify=verify,
                                   headers={"content-type": "application/xml", **(headers or {})})

    def close(self) -> None:
        self.client.close()

    def send(self, p: Pending) -> None:
        try:
            r = self.client.post(self.url, content=p.payload, headers=_names(p))
        except httpx.HTTPError as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from None
        if r.status_code >= 500 or r.status_code in RETRY_STATUS:
            raise Unavailable(f"HTTP {r.status_code} from {self.url}")
        if r.status_code >= 300:
            raise Refused(f"HTTP {r.status_code}: {r.text[:300]}")
        refusal = _refusal_in(r.content)
        if refusal:
            raise Refused(refusal)


class KafkaMessageSink:
    def __init__(self, bootstrap_servers: str, topic: str, timeout_s: float = 30.0,
                 producer: dict | None = None, **_: Any):
        from kafka import KafkaProducer

        self.topic = topic
        self.timeout = float(timeout_s)
        self.producer = KafkaProducer(**{
            "bootstrap_servers": bootstrap_servers, "acks": "all", "enable_idempotence": True,
            "request_timeout_ms": 10000, "delivery_timeout_ms": int(self.timeout * 1000),
            "reconnect_backoff_max_ms": 2000, **(producer or {})})

    def close(self) -> None:
        self.producer.close(timeout=5)

    def send(self, p: Pending) -> None:
        from kafka.errors import KafkaError

        try:
            self.producer.send(self.topic, key=(p.patient or p.message_id).encode(),
                               value=p.payload,
                               headers=[(k, v.encode()) for k, v in _names(p).items()]
                               ).get(timeout=self.timeout)
        except KafkaError as e:
            if "MessageSizeTooLarge" in type(e).__name__ or "RecordTooLarge" in type(e).__name__:
                # the same message is refused again on every try: set aside, never retried for
                # ever ahead of the subscriber's next messages
                raise Refused(f"the broker refuses a message this large: {e}") from None
            raise Unavailable(f"{type(e).__name__}: {e}") from None


def build(sink: dict[str, Any]) -> Any:
    kind = sink.get("type")
    args = {k: v for k, v in sink.items() if k != "type"}
    if kind == "http":
        return HttpMessageSink(**args)
    if kind == "kafka":
        return KafkaMessageSink(**args)
    raise ValueError(f"unknown message sink type {kind!r} (http, kafka)")
