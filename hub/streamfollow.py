"""Read models fed by the change stream instead of the event store.

A search node (or any node holding read models) needs no connection to the event store: it reads
the Kafka topic ``hub stream relay`` writes (``hub.changestream``) and hands the events to its read
models exactly as a ``Runner`` hands them from the log, so every model's tracking, exactly-once
and rebuild behaviour is unchanged.

The topic's partitions each hold their keys' events in log order (a record that landed after one
the broker refused, which the relay sends again after it, is skipped by its ``prev``); the models need the whole log
in order (their position is one notification id). ``StreamFollower`` merges the partitions back:
an event is handed on once every other partition has shown all its events before it: an event or a
watermark at or after the one before it (the relay writes a watermark to every partition after
each acknowledged batch, so a partition with nothing new is known not to be merely late). Offsets are
committed to the consumer group after the models applied a batch (a ``moved`` record, for
consumers per key, is skipped: its event comes under the new key); on a restart the group resumes
there, and what a model already holds is skipped by its position. A model starting from nothing
(position 0) reads the topic from its beginning, which the topic's retention must then still
hold; otherwise rebuild it from the event store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import IntegrityError, Notification

from hub.changestream import DEFAULT_TOPIC, MOVED, WATERMARK, part_of
from hub.core.events import TOPICS
from projections.contract import ReadModel

log = logging.getLogger("hub.streamfollow")


def _headers(record: Any) -> dict[str, bytes]:
    return dict(record.headers or ())


@dataclass
class Joined:
    """An event sent in parts, joined: the first part's headers and offset, every part's value."""

    headers: list[tuple[str, bytes]]
    value: bytes
    offset: int


def notification(record: Any) -> Notification:
    """The log's notification a change-stream record carries."""
    h = _headers(record)
    event = h["event"].decode()
    return Notification(id=int(h["nid"]), originator_id=h["stream"].decode(),
                        originator_version=int(h["version"]), topic=TOPICS.get(event, event),
                        state=record.value)


class StreamFollower:
    """Feeds ``models`` from the change stream ``topic`` on the brokers ``bootstrap``, as the
    consumer group ``group`` (one per node: each node's models read the whole stream)."""

    def __init__(self, bootstrap: str, models: Sequence[ReadModel], group: str,
                 topic: str = DEFAULT_TOPIC, consumer: dict[str, Any] | None = None,
                 batch: int = 1000):
        self.bootstrap, self.topic, self.group, self.batch = bootstrap, topic, group, batch
        self.models = list(models)
        self.consumer_config = {"bootstrap_servers": bootstrap, "group_id": group,
                                "enable_auto_commit": False, "auto_offset_reset": "earliest",
                                "request_timeout_ms": 10000, "fetch_max_wait_ms": 100,
                                "reconnect_backoff_max_ms": 2000, **(consumer or {})}
        self._consumer: Any = None
        self._tps: list[Any] = []
        self._buffers: dict[int, deque] = {}
        self._parts: dict[int, list[Any]] = {}  # partition -> the parts read of an event
        self._marks: dict[int, int] = {}  # partition -> the highest nid read there
        self._held: dict[int, int] = {}  # partition -> the last event (or watermark) taken there
        self._committed: dict[Any, int] = {}  # the offsets last committed
        self.applied = 0
        self.skipped = 0  # records on the topic that are no events of the log

    def connect(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.close()
        consumer = KafkaConsumer(**self.consumer_config)
        deadline = time.monotonic() + 30
        parts = consumer.partitions_for_topic(self.topic)
        while not parts:
            if time.monotonic() > deadline:
                consumer.close()
                raise RuntimeError(f"topic {self.topic!r} has no partitions")
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(self.topic)
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(self._tps)
        if min(m.position() for m in self.models) == 0:
            consumer.seek_to_beginning(*self._tps)  # a model starts from nothing
        else:
            for tp in self._tps:
                committed = consumer.committed(tp)
                if committed is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
        self._consumer = consumer
        self._buffers = {tp.partition: deque() for tp in self._tps}
        self._parts = {}
        self._committed = {}
        self._marks = {tp.partition: 0 for tp in self._tps}
        self._held = {}

    def _ready(self) -> list[tuple[int, Any]]:
        """Pop the buffered events that are next in log order: (partition, record) each."""
        out: list[tuple[int, Any]] = []
        heads = self._buffers
        while True:
            best, nid = None, None
            for p, buf in heads.items():
                if buf and (nid is None or buf[0][0] < nid):
                    best, nid = p, buf[0][0]
            if best is None or nid is None:
                return out
            # every other partition must have shown all its events before it (it cannot hold
            # this one): an event or a watermark at or after the one before
            for p in heads:
                if p != best and self._marks[p] < nid - 1:
                    return out
            out.append((best, heads[best].popleft()[1]))

    def step(self, timeout_ms: int = 200) -> int:
        """Read what the brokers have, apply every event that is next in log order to each
        model, commit; how many events were applied."""
        if self._consumer is None:
            self.connect()
        for tp, records in self._consumer.poll(timeout_ms=timeout_ms,
                                               max_records=self.batch * 5).items():
            for r in records:
                try:
                    h = _headers(r)
                    nid = int(h["nid"])
                    int(h.get("version") or b"0")
                    if h.get("event") != WATERMARK.encode():
                        h["stream"].decode(), h["event"].decode()
                except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError):
                    # no event of the hub's log (another producer's record on the topic, or a
                    # broken one): nothing to apply, and no reason to stop every model here
                    self.skipped += 1
                    log.warning("change stream %s: record %s@%s is no event of the log; "
                                "skipped", self.topic, tp.partition, r.offset)
                    continue
                if nid == 0 and h.get("event") == WATERMARK.encode():
                    continue  # a relay's start mark: it says nothing of what the partition holds
                if h.get("event") == MOVED.encode():
                    continue  # for consumers per key: the event itself comes under its new key
                p, held = tp.partition, self._held.get(tp.partition)
                if h.get("event") != WATERMARK.encode():
                    # an event follows on from what the partition gave when its ``prev`` was
                    # read (after a (re)connect, the first is taken as it comes); one that
                    # landed after a record the broker refused comes again after it, in order
                    prev = int(h["prev"]) if "prev" in h else held
                    if held is not None and prev is not None and (prev > held or nid <= held):
                        continue
                    r = self._joined(p, nid, h, r)
                    if r is None:  # a part of an event not read whole yet
                        nid -= 1
                    else:
                        self._buffers[p].append((nid, r))
                        self._held[p] = nid
                else:
                    self._held[p] = max(held or 0, nid)
                # a partition holds its events in log order: having read ``nid`` there (an
                # event, or a watermark), nothing before it is still to come from it
                self._marks[p] = max(self._marks[p], nid)
        ready = self._ready()
        if not ready:
            self._commit()
            return 0
        notes = [notification(r) for _, r in ready]
        for i in range(0, len(notes), self.batch):
            chunk = notes[i:i + self.batch]
            for model in self.models:
                self._apply(model, chunk)
        self._commit()
        self.applied += len(notes)
        return len(notes)

    def _joined(self, partition: int, nid: int, h: dict[str, bytes], record: Any) -> Any:
        """The record of a whole event: ``record`` itself, or once its last part is read, the
        parts joined; None before that. A part 1 begins the event again."""
        i, k = part_of(h)
        if k == 1:
            return record
        parts = self._parts.get(partition, [])
        if i == 1:
            parts = [record]
        elif parts and int(_headers(parts[0])["nid"]) == nid and len(parts) == i - 1:
            parts.append(record)
        else:  # not the next part of the event begun (the relay sends it again from part 1)
            parts = []
        if len(parts) == k:
            self._parts.pop(partition, None)
            return Joined(list(parts[0].headers), b"".join(p.value for p in parts),
                          parts[0].offset)
        self._parts[partition] = parts
        return None

    @staticmethod
    def _apply(model: ReadModel, notes: list[Notification]) -> None:
        last, position = notes[-1].id, model.position()
        if position >= last:
            return  # held already (a restart re-read what it had applied)
        notes = [n for n in notes if n.id > position]
        if model.types:  # a model of some types (or stream kinds) takes theirs, and records
            # the batch's end
            notes = [n for n in notes if str(n.originator_id).split("/", 1)[0] in model.types]
        try:
            model.apply(notes, up_to=last)
        except IntegrityError:
            pass  # another follower of the model's file applied it meanwhile

    def _commit(self) -> None:
        """Commit, per partition, the offset of its first event not applied yet (or all it
        read: watermarks included)."""
        from kafka.structs import OffsetAndMetadata

        offsets = {}
        for tp in self._tps:
            buf, parts = self._buffers[tp.partition], self._parts.get(tp.partition)
            offsets[tp] = buf[0][1].offset if buf else \
                parts[0].offset if parts else self._consumer.position(tp)
        if offsets == self._committed:
            return  # nothing new (an idle poll): no round trip to the coordinator
        self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        self._committed = offsets

    def catch_up(self, until: int, timeout: float = 60.0) -> None:
        """Follow until every model holds the log up to ``until`` (tests, scripts)."""
        deadline = time.monotonic() + timeout
        while min(m.position() for m in self.models) < until:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the models did not reach {until} from the stream")
            self.step()

    def run_until(self, stop: threading.Event) -> None:
        """Follow until ``stop``; a failure (broker unreachable) reconnects after a pause that
        grows to 10 s, resuming from the committed offsets."""
        pause = 0.5
        while not stop.is_set():
            try:
                self.step()
                pause = 0.5
            except Exception as e:  # noqa: BLE001 - kafka-python's errors have no common root
                log.warning("stream follower: %s: %s; reconnecting in %.1f s",
                            type(e).__name__, e, pause)
                self.close()
                stop.wait(pause)
                pause = min(pause * 2, 10.0)

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # noqa: BLE001 - closing after a failure
                pass
            self._consumer = None
