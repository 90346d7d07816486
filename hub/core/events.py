"""Resource events and their stored form.

One stream per FHIR resource, named ``Type/id`` (eventsourcing's originator id, text type); the
stream position is the FHIR version id. Three event kinds: created, updated, deleted.

Stored state layout (see ``ResourceEventTranscoder``)::

    {"type":..,"id":..,"versionId":..,"lastUpdated":..,"source":{..},"request":{..}}\\n<resource JSON>

The header is compact orjson (which never emits a raw newline), so the first ``\\n`` splits header
from the canonical resource bytes. The read path slices the resource out without parsing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from eventsourcing.persistence import StoredEvent, Transcoder

CREATED, UPDATED, DELETED = "created", "updated", "deleted"
TOPICS = {
    CREATED: "hub.resource:Created",
    UPDATED: "hub.resource:Updated",
    DELETED: "hub.resource:Deleted",
}
KIND_OF_TOPIC = {topic: kind for kind, topic in TOPICS.items()}


@dataclass(frozen=True, slots=True)
class ResourceEvent:
    kind: str  # CREATED | UPDATED | DELETED
    rtype: str
    rid: str
    version: int
    last_updated: str  # FHIR instant, UTC
    resource: bytes  # canonical JSON of the new version; b"" for a delete
    source: dict[str, Any] = field(default_factory=dict)  # institution, feed, messageId
    request: dict[str, Any] = field(default_factory=dict)  # method, url, requestId

    @property
    def stream(self) -> str:
        return f"{self.rtype}/{self.rid}"


class ResourceEventTranscoder(Transcoder):
    """orjson header + raw resource bytes; much cheaper than eventsourcing's JSONTranscoder."""

    def encode(self, obj: ResourceEvent) -> bytes:
        header = orjson.dumps(
            {
                "type": obj.rtype,
                "id": obj.rid,
                "versionId": str(obj.version),
                "lastUpdated": obj.last_updated,
                "source": obj.source,
                "request": obj.request,
            }
        )
        return header + b"\n" + obj.resource

    def decode(self, data: bytes) -> dict[str, Any]:
        header, _, resource = data.partition(b"\n")
        out = orjson.loads(header)
        out["resource"] = resource
        return out


TRANSCODER = ResourceEventTranscoder()


def to_stored(event: ResourceEvent) -> StoredEvent:
    return StoredEvent(
        originator_id=event.stream,
        originator_version=event.version,
        topic=TOPICS[event.kind],
        state=TRANSCODER.encode(event),
    )


def from_stored(stored: StoredEvent) -> ResourceEvent:
    d = TRANSCODER.decode(stored.state)
    return ResourceEvent(
        kind=KIND_OF_TOPIC[stored.topic],
        rtype=d["type"],
        rid=d["id"],
        version=stored.originator_version,
        last_updated=d["lastUpdated"],
        resource=d["resource"],
        source=d.get("source") or {},
        request=d.get("request") or {},
    )


def resource_bytes(stored: StoredEvent) -> bytes:
    """The stored resource JSON, sliced out without parsing (the read path)."""
    return stored.state.partition(b"\n")[2]


def institution_of(state: bytes) -> str | None:
    """The institution a version's write came from (its header's ``source``); None for a
    deletion (whoever deletes a record does not make it theirs) and a write that named none."""
    head, _, body = state.partition(b"\n")
    if not body.strip():
        return None
    try:
        source = orjson.loads(head).get("source")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    institution = source.get("institution") if isinstance(source, dict) else None
    return institution if isinstance(institution, str) and institution else None
