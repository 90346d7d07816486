"""Identity events: the master patient index's decisions, kept in the hub's one event log.

Linking is event-sourced. Every decision (a Patient linked to a golden person, unlinked, two persons
merged, a merge undone, a pair marked "not the same person", a pair put on the review queue and
the review closed) is one event in the same eventsourcing log as the resource events, so one
notification order holds both: a projection sees a Patient and its link in the order they happened.

Why a stream kind of its own rather than FHIR resources the hub writes itself (``Provenance`` or
``Basic``): an identity decision is not clinical data a client may read, replace or delete through
``/fhir``; as a resource it would appear in search, in ``_history`` and in ``$everything``, and a
client could forge one with a PUT. As its own kind it is invisible to every resource-level index
(``resource_head``, ``resource_identifier``, ``resource_version``, history, the search and quality
projections) without any special cases there but one skip in the search projection; projections
that want it read it by topic (``ResourceStore.notifications_of(["Identity"])``).

A link by the matcher joins two clusters: it is recorded as ``Merged`` with ``by.type`` matcher
(the person with the lesser id is the target), preceded by the founding ``Linked`` of a Patient
that had no person yet; a steward's ``unmerge`` splits such a join like any merge.

Layout: one stream, ``Identity/mpi``; its position is the number of identity events. Every decision
is taken against the person projection at the stream's current version and committed as the next
version(s): eventsourcing's unique (stream, version) key turns two concurrent deciders (two API
processes, the matcher in an ingest worker) into one winner and one retry, so a decision is never
taken against a stale state. Topics are ``hub.identity:<Event>``; the state is the event's compact
orjson, one object::

    {"event": "Linked", "at": "…Z", "by": {"type": "matcher"|"user", "name": "…"},
     "patient": "Patient/…", "person": "…", "previous": "…"|null, "created": true,
     "assurance": "level3", "score": 0.93, "evidence": {...}, "ruleset": "…", "reason": "…"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from eventsourcing.persistence import StoredEvent

STREAM = "Identity/mpi"
STREAM_KIND = "Identity"  # the pseudo-type projections ask ``notifications_of`` for
EVENTS = ("Linked", "Unlinked", "Merged", "Unmerged", "NotDuplicate", "ReviewOpened",
          "ReviewClosed")
TOPIC_PREFIX = "hub.identity:"
TOPICS = tuple(TOPIC_PREFIX + e for e in EVENTS)
MATCHER, USER = "matcher", "user"


@dataclass(slots=True)
class IdentityEvent:
    event: str  # one of EVENTS
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def by_user(self) -> bool:
        return (self.data.get("by") or {}).get("type") == USER

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, **self.data}


def to_stored(ev: IdentityEvent, version: int) -> StoredEvent:
    return StoredEvent(originator_id=STREAM, originator_version=version,
                       topic=TOPIC_PREFIX + ev.event, state=orjson.dumps(ev.to_json()))


def from_state(topic: str, state: bytes) -> IdentityEvent:
    d = orjson.loads(state)
    name = topic[len(TOPIC_PREFIX):]
    d.pop("event", None)
    return IdentityEvent(name, d)


def is_identity_topic(topic: str) -> bool:
    return topic.startswith(TOPIC_PREFIX)
