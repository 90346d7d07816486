"""The change stream: every committed event of the log, published to one Kafka topic.

``hub stream relay`` follows the notification log (the same log the read models follow) and
produces one record per event:

- **topic**: one topic for the whole log (``hub.events`` by default);
- **key**: the patient the event is about (``Patient/<id>``: a Patient's own events, and those
  of resources whose ``subject`` or ``patient`` is a Patient; a deletion is keyed like the
  version it deletes), otherwise the resource itself (``Organization/<id>``), and
  ``Identity/mpi`` for the identity decisions. One key is one partition, so a consumer reads one
  patient's events in log order;
- **value**: the stored event as it is (one line of JSON header with type, id, versionId,
  lastUpdated, source and request, a newline, then the resource's canonical JSON; nothing after
  the newline for a deletion);
- **headers**: ``nid`` (the event's position in the log), ``stream`` (``Type/id``), ``version``,
  ``event`` (``created``, ``updated``, ``deleted`` or the identity decision's topic), ``prev``
  (the event sent before it to its partition, or where the partition was known to hold its
  events up to when the relay began sending: no event of the partition lies between the two);
- **moved**: an event whose key is another than its version before's (a result misfiled under
  one patient, moved to another) is preceded, under the old key, by a record with the same
  ``nid``, ``stream``, ``version`` and ``prev`` as an event's, ``event: moved``, ``moved-to`` (the
  new key) and the event's header line alone as its value: a consumer building a patient's
  record from its key learns that the resource left it. It is no event of the log: no ``prev``
  names it (its event may follow in the same partition), read models skip it, and the relay
  reading a partition back counts it held when its ``prev`` is, so it is not sent again;
- **parts**: an event longer than ``part_bytes`` (512 KiB: a Binary or a document with its
  attachment; a broker takes 1 MB by default and refuses more) comes as consecutive records of one
  partition, each with the headers above and ``part: i/k``; its value is the parts' values joined
  in order. A part 1 begins the event again (after a relay stopped in the middle of one, it sends
  the whole event again). Without parts, one such event would be refused for ever and hold back
  every event after it.

After each batch the broker acknowledged, the relay writes a **watermark** to every partition: a
record with key ``~watermark``, an empty value and the headers ``nid`` (the batch's last event) and
``event: watermark``, saying that the partition holds every event of its keys up to ``nid``.
Consumers of the events skip it; a reader that merges the partitions back into log order
(``hub.streamfollow``: read models fed by the stream) needs it to know when a partition that
has nothing new is not merely late. A relay starting writes one of ``nid`` 0 to every partition
(a **start mark**, saying nothing of what it holds) before it reads them back: what the broker
took from a relay that died is then in the partition when read (see ``Relay._mark_start``).

At least once, in order per key, exactly once while nothing is refused. On every start, and after
every failed send, the relay reads each partition back from its last watermark and finds how far
it holds its events without a gap: a whole event extends what it holds only if its ``prev`` is
already held (a watermark says all up to its ``nid`` are). Whatever was sent before a kill or a
broker outage is then neither lost nor sent again. A record the broker refused can have later
ones of its partition land after it (once a batch failed for good, a producer sends the next:
kafka-python's idempotent one after a send ran out of time, or after it took a new epoch because
the broker lost a batch; one without idempotence after any error): those do not extend what
the partition holds, so the refused event and every one after it are sent again, and the
partition holds them twice. A consumer that keeps the log's order follows the same rule
(``hub.streamfollow``): it skips a record whose ``prev`` it has not read, and one it
has. Its own position (a file in the data directory, written after the broker acknowledged a
batch) only saves rereading the log from the start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from eventsourcing.persistence import Notification, StoredEvent

from hub.core.events import KIND_OF_TOPIC, resource_bytes
from hub.core.store import ResourceStore
from projections.timeline import patient_of

log = logging.getLogger("hub.changestream")

DEFAULT_TOPIC = "hub.events"
WATERMARK = "watermark"  # the event header of a partition's watermark record
WATERMARK_KEY = b"~watermark"
MOVED = "moved"  # the event header of a record saying a resource left its key (``moved-to``)
PART_BYTES = 512 * 1024  # the largest value of one record; a longer event is sent in parts
# the largest record the producer sends (kafka-python's max_request_size; a broker's default
# message.max.bytes is about the same): a part, its key, headers and batch framing fit in it
RECORD_BYTES = 1024 * 1024
FRAMING_BYTES = 16 * 1024  # a part's key, headers and batch framing, at most
MAX_PART_BYTES = RECORD_BYTES - FRAMING_BYTES
TAKEOVER_GRACE = 2.0  # seconds a standby relay waits after taking the lease


def event_key(store: ResourceStore, n: StoredEvent) -> str:
    """The record key of notification ``n`` (see the module docstring)."""
    stream = n.originator_id
    rtype, _, rid = str(stream).partition("/")
    if n.topic not in KIND_OF_TOPIC:  # identity decisions and other non-resource streams
        return str(stream)
    if rtype == "Patient":
        return str(stream)
    body = resource_bytes(n)
    if not body:  # a deletion: the patient of the version it deletes
        previous = store.version(rtype, rid, n.originator_version - 1)
        body = resource_bytes(previous) if previous is not None else b""
    patient = patient_of(orjson.loads(body)) if body else None
    return f"Patient/{patient}" if patient else str(stream)


def moved_from(store: ResourceStore, n: Notification, key: str,
               known: dict[str, tuple[int, str | None]] | None = None) -> str | None:
    """The key the version before ``n`` had, when it was another than ``key`` (``n``'s): a
    result moved to another patient (a misfiled one corrected). None for a creation, a deletion
    (keyed like the version it deletes), one after a deletion (that said the resource left), and
    for streams that are no resource's. ``known``: stream -> (version, key, None after a
    deletion) of the notifications seen before, sparing the store a read."""
    stream = str(n.originator_id)
    rtype, _, rid = stream.partition("/")
    if n.topic not in KIND_OF_TOPIC or rtype == "Patient" or n.originator_version <= 1 \
            or not resource_bytes(n):
        return None
    seen = (known or {}).get(stream)
    if seen is not None and seen[0] == n.originator_version - 1:
        old = seen[1]
    else:
        previous = store.version(rtype, rid, n.originator_version - 1)
        old = event_key(store, previous) \
            if previous is not None and resource_bytes(previous) else None
    return old if old is not None and old != key else None


class Relay:
    """Follows the log of ``store`` into ``topic`` on the brokers ``bootstrap``."""

    def __init__(self, store: ResourceStore, bootstrap: str, topic: str = DEFAULT_TOPIC,
                 position_file: Path | None = None, batch: int = 2000,
                 producer: dict[str, Any] | None = None, timeout_s: float = 30.0,
                 lease: Any = None, part_bytes: int = PART_BYTES):
        self.store = store
        # with a lease (``hub.core.lease.PgLease``), relays of one topic stand by until they
        # hold it: one sends at a time, another takes over when its connection ends
        self.lease = lease
        self.bootstrap = bootstrap
        self.topic = topic
        self.position_file = position_file
        self.batch = batch
        self.part_bytes = part_bytes
        self.timeout = timeout_s
        self.producer_config = {
            "bootstrap_servers": bootstrap, "acks": "all", "enable_idempotence": True,
            "retries": 2**31 - 1, "max_in_flight_requests_per_connection": 5, "linger_ms": 20,
            "batch_size": 512 * 1024, "max_request_size": RECORD_BYTES,
            "request_timeout_ms": 10000, "delivery_timeout_ms": int(timeout_s * 1000),
            "reconnect_backoff_max_ms": 2000, "compression_type": None, **(producer or {})}
        limit = self.producer_config["max_request_size"] - FRAMING_BYTES
        if part_bytes > limit:  # a part the producer would refuse, for ever, holding back the rest
            raise ValueError(f"part_bytes {part_bytes} is more than {limit} (max_request_size "
                             f"less {FRAMING_BYTES} for a record's key and headers)")
        self._producer: Any = None
        self._partitions: list[int] = []
        self._last: dict[int, int] = {}  # partition -> the highest nid it holds
        # partition -> the nids of the moved records it holds past ``_last`` (read back)
        self._moved: dict[int, set[int]] = {}
        self.position = 0
        self.published = 0  # events the broker acknowledged whole, a failed batch's included
        self.failure: str | None = None  # what the last attempt failed on, until one succeeds

    # -- the broker's side of the position ----------------------------------------------------

    def connect(self) -> None:
        """(Re)connect, and learn what each partition already holds."""
        from kafka import KafkaProducer

        self.close()
        self._producer = KafkaProducer(**self.producer_config)
        parts = self._producer.partitions_for(self.topic)  # waits for metadata; may create it
        if not parts:
            raise RuntimeError(f"topic {self.topic!r} has no partitions")
        self._partitions = sorted(parts)
        self._mark_start()
        self._last, self._moved = self._last_published()
        saved = self._saved_position()
        held = [self._last.get(p, 0) for p in self._partitions]
        # everything up to the saved position was acknowledged; a partition holding more than
        # that got part of the next batch before the relay stopped, and skips it below. A topic
        # holding nothing at all is new (another cluster, or recreated): the saved position is
        # of some other topic, and the log is published from its start (trusting it, the relay
        # published nothing before it, and a model fed from the stream missed that history)
        if not any(held):
            self.position = 0
        else:
            self.position = max(saved, min(held)) if all(held) else saved
        log.info("change stream %s: resuming after %d (partitions hold up to %s)", self.topic,
                 self.position, self._last)

    def _mark_start(self) -> None:
        """Write a start mark to every partition, before reading what they hold: a watermark of
        nid 0 (it says nothing held; readers take it as no watermark). What the broker took before
        it from a relay that died, and had not yet shown, is then in the partition when it is read
        back (Tansu shows a killed producer's last batch only after the partition's next write;
        the next relay sent its events again)."""
        marks = [self._producer.send(self.topic, key=WATERMARK_KEY, value=b"", partition=p,
                                     headers=[("nid", b"0"), ("event", WATERMARK.encode())])
                 for p in self._partitions]
        self._producer.flush(timeout=self.timeout)
        for f in marks:
            f.get(timeout=self.timeout)

    def _last_published(self) -> tuple[dict[int, int], dict[int, set[int]]]:
        """Per partition, the nid up to which it holds its events without a gap, and the moved
        records it holds after that: read back from its last watermark (a window from its end,
        widened until one is in it)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                 group_id=None, request_timeout_ms=10000,
                                 consumer_timeout_ms=int(self.timeout * 1000))
        try:
            tps = [TopicPartition(self.topic, p) for p in self._partitions]
            starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
            last: dict[int, int] = {}
            moved: dict[int, set[int]] = {}
            for tp in tps:
                window = 256
                while True:
                    start = max(starts[tp], ends[tp] - window)
                    records = self._read(consumer, tp, start, ends[tp])
                    marks = [i for i, r in enumerate(records) if _watermark(r) > 0]
                    if marks or start <= starts[tp]:
                        break
                    window *= 8
                held, moves = read_back(records[marks[-1]:] if marks else records)
                if held:
                    last[tp.partition] = held
                moved[tp.partition] = {m for m in moves if m > held}
            return last, moved
        finally:
            consumer.close()

    def _read(self, consumer: Any, tp: Any, start: int, end: int) -> list[Any]:
        """The records of ``tp`` from offset ``start`` to ``end``."""
        if end <= start:
            return []
        consumer.assign([tp])
        consumer.seek(tp, start)
        records: list[Any] = []
        deadline = time.monotonic() + self.timeout
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read the records of {tp} from {start} to {end}")
            for got in consumer.poll(timeout_ms=500).values():
                records.extend(r for r in got if r.offset < end)
        return records

    def _saved_position(self) -> int:
        if self.position_file is None or not self.position_file.exists():
            return 0
        try:
            return int(orjson.loads(self.position_file.read_bytes())["position"])
        except (ValueError, KeyError, orjson.JSONDecodeError):
            return 0

    def _save_position(self) -> None:
        if self.position_file is None:
            return
        tmp = self.position_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"topic": self.topic, "position": self.position}))
        os.replace(tmp, self.position_file)

    # -- relaying -------------------------------------------------------------------------------

    def step(self) -> int:
        """Publish the next batch of the log; how many notifications it covered."""
        if self._producer is None:
            self.connect()
        notes = self.store.notifications(self.position + 1, self.batch)
        if not notes:
            return 0
        self._send(notes)
        self.position = notes[-1].id
        self._save_position()
        return len(notes)

    def _send(self, notes: Sequence[Notification]) -> None:
        from kafka.partitioner.default import murmur2

        futures = []
        n_parts = len(self._partitions)
        # per partition, the event sent before the next one (or where it holds its events up to)
        tip = dict(self._last)
        known: dict[str, tuple[int, str | None]] = {}  # stream -> (version, key) in this batch
        try:
            for n in notes:
                key_s = event_key(self.store, n)
                old = moved_from(self.store, n, key_s, known)
                known[str(n.originator_id)] = (n.originator_version,
                                               key_s if resource_bytes(n) else None)
                key = key_s.encode()
                partition = self._partitions[(murmur2(key) & 0x7FFFFFFF) % n_parts]
                if old is not None:
                    # the resource left the old key's patient: a per-key consumer of it reads so
                    # there, before anything of the new key. Outside the ``prev`` chain (no
                    # record names it; the event itself may follow in the same partition)
                    was = self._partitions[(murmur2(old.encode()) & 0x7FFFFFFF) % n_parts]
                    if n.id > self._last.get(was, 0) and n.id not in self._moved.get(was, ()):
                        futures.append((was, -n.id, self._producer.send(
                            self.topic, key=old.encode(),
                            value=n.state.partition(b"\n")[0] + b"\n", partition=was,
                            headers=[("nid", str(n.id).encode()),
                                     ("stream", str(n.originator_id).encode()),
                                     ("version", str(n.originator_version).encode()),
                                     ("event", MOVED.encode()), ("moved-to", key),
                                     ("prev", str(tip.get(was, 0)).encode())])))
                if n.id <= self._last.get(partition, 0):
                    continue  # the partition holds it already (sent before a stop)
                event = KIND_OF_TOPIC.get(n.topic, n.topic)
                headers = [("nid", str(n.id).encode()), ("stream", str(n.originator_id).encode()),
                           ("version", str(n.originator_version).encode()),
                           ("event", event.encode()),
                           ("prev", str(tip.get(partition, 0)).encode())]
                tip[partition] = n.id
                value, size = n.state, self.part_bytes
                parts = [value] if len(value) <= size else \
                    [value[i:i + size] for i in range(0, len(value), size)]
                for i, part in enumerate(parts, 1):
                    futures.append((partition, n.id, self._producer.send(
                        self.topic, key=key, value=part, partition=partition,
                        headers=headers if len(parts) == 1 else
                        [*headers, ("part", f"{i}/{len(parts)}".encode())])))
            self._producer.flush(timeout=self.timeout)
            for partition, nid, f in futures:
                f.get(timeout=self.timeout)  # raises what the broker said
                if nid > 0:  # a moved record (-nid) extends no chain
                    self._last[partition] = nid
        finally:
            # the events whose every record the broker acknowledged, a failed batch's too
            whole: dict[int, bool] = {}
            for _, nid, f in futures:
                if nid > 0:  # an event's records (not a moved record, which is none of them)
                    whole[nid] = whole.get(nid, True) and f.is_done and f.succeeded()
            self.published += sum(whole.values())
        # every partition holds its events up to the batch's end: say so in each
        last = notes[-1].id
        marks = [self._producer.send(self.topic, key=WATERMARK_KEY, value=b"", partition=p,
                                     headers=[("nid", str(last).encode()),
                                              ("event", WATERMARK.encode())])
                 for p in self._partitions]
        self._producer.flush(timeout=self.timeout)
        for p, f in zip(self._partitions, marks):
            f.get(timeout=self.timeout)
            self._last[p] = max(self._last.get(p, 0), last)
        self._moved = {}  # all up to ``last`` is held: the watermarks say so

    def run_until(self, stop: threading.Event, idle: float = 0.2) -> None:
        """Relay until ``stop``; a failure (broker unreachable) reconnects and goes on from what
        the broker holds, after a pause that grows to 10 s."""
        pause = 0.5
        while not stop.is_set():
            try:
                if self.lease is not None and not self.lease.held():
                    if self._producer is not None:
                        log.warning("change stream %s: lost the lease; standing by", self.topic)
                        self.close()
                    stop.wait(idle)
                    continue
                if self._producer is None and self.lease is not None:
                    # just took over: what a relay that died was sending settles in the broker
                    # first, then connect() reads what each partition holds
                    stop.wait(TAKEOVER_GRACE)
                if self.step() == 0:
                    stop.wait(idle)
                pause, self.failure = 0.5, None
            except Exception as e:  # noqa: BLE001 - kafka-python's errors have no common root here
                self.failure = f"{type(e).__name__}: {e}"
                log.warning("change stream: %s: %s; reconnecting in %.1f s", type(e).__name__, e,
                            pause)
                self.close()
                stop.wait(pause)
                pause = min(pause * 2, 10.0)

    def close(self) -> None:
        """Close the producer (the lease, if any, is the caller's to release)."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:  # noqa: BLE001 - closing after a failure
                pass
            self._producer = None


def _watermark(record: Any) -> int:
    """The nid of a watermark record (0 for a start mark), -1 for any other record."""
    h = dict(record.headers or ())
    if h.get("event") != WATERMARK.encode():
        return -1
    try:
        return int(h.get("nid", b"0"))
    except ValueError:
        return -1


def part_of(headers: dict[str, bytes]) -> tuple[int, int]:
    """(i, k) of a record holding part i of an event sent in k parts; (1, 1) for a whole one."""
    part = headers.get("part")
    if part is None:
        return 1, 1
    i, _, k = part.decode().partition("/")
    return int(i), int(k)


def read_back(records: Sequence[Any]) -> tuple[int, set[int]]:
    """How far a partition holds its events without a gap, reading ``records`` (from a watermark,
    or its start) in order: a watermark holds all up to its ``nid``; a whole event (its parts
    consecutive) extends it when its ``prev`` is held (a record of a relay before ``prev``:
    taken as following on). A record that landed after a refused one before it extends nothing,
    nor does an event of which some parts are missing. With it, the nids of the moved records
    held (their ``prev`` held when read): they extend nothing, and are not sent again."""
    held, part = 0, (0, 0)  # part: (nid, i) of the last part read of an event in parts
    moved: set[int] = set()
    for r in records:
        h = dict(r.headers or ())
        if "nid" not in h:
            continue
        nid = int(h["nid"])
        if h.get("event") == WATERMARK.encode():
            held, part = max(held, nid), (0, 0)
            continue
        if h.get("event") == MOVED.encode():
            if int(h.get("prev", b"0")) <= held < nid:
                moved.add(nid)
            continue
        i, k = part_of(h)
        if i > 1 and part != (nid, i - 1):
            part = (0, 0)  # not the next part of the event begun: it is sent again from part 1
            continue
        part = (nid, i)
        if i < k:
            continue
        prev = int(h["prev"]) if "prev" in h else held
        if prev <= held < nid:
            held = nid
    return held, moved
