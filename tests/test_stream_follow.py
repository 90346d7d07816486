"""Read models fed by the change stream: a node without the event store, following the Kafka
topic the relay writes (several partitions), ends with exactly the state that following the log
gives, resumes where it stopped after a restart, and takes the CLI's ``--from-stream``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hub.changestream import Relay
from hub.core.ingest import Hub
from hub.streamfollow import StreamFollower
from projections.runner import Runner
from projections.search.sqlite_index import SQLiteSearchIndex
from projections.timeline import TimelineProjection
from tests.kafka_broker import broker  # noqa: F401 - fixture
from tests.test_changestream import _settings, _write
from tests.test_search_projection import dump


def _models(folder: Path) -> tuple[SQLiteSearchIndex, TimelineProjection]:
    folder.mkdir(parents=True, exist_ok=True)
    return SQLiteSearchIndex(folder / "search.sqlite"), TimelineProjection(folder / "timeline.sqlite")


def _state(models) -> tuple:
    search, timeline = models
    return dump(search), timeline.dump(), search.position(), timeline.position()


def _relay_all(relay: Relay) -> None:
    while relay.step():
        pass


def test_a_node_follows_the_stream_to_the_state_the_log_gives(broker, tmp_path):  # noqa: F811
    settings = _settings(tmp_path)
    hub = Hub(settings.open_store())
    topic = f"events-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=3)
    relay = Relay(hub.store, broker.bootstrap, topic, batch=50)
    node = _models(tmp_path / "node")  # no store: only the stream
    reference = _models(tmp_path / "reference")
    group = f"node-{uuid.uuid4().hex[:6]}"
    try:
        _write(hub, patients=12, observations=4, tag="a", moves=True)
        _relay_all(relay)
        follower = StreamFollower(broker.bootstrap, node, group, topic=topic, batch=40)
        end = hub.store.max_notification_id()
        follower.catch_up(end)
        for m in reference:
            Runner(hub.store, m).catch_up()
        assert _state(node) == _state(reference)
        assert node[0].position() == end and dump(node[0])["sp_res"]

        # more, with updates and deletes: followed on
        _write(hub, patients=5, observations=3, tag="b", moves=True)
        _relay_all(relay)
        end = hub.store.max_notification_id()
        follower.catch_up(end)
        for m in reference:
            Runner(hub.store, m).catch_up()
        assert _state(node) == _state(reference)
        follower.close()

        # a restart resumes from the group's offsets: nothing applied twice, nothing missed;
        # the relay restarted too (its start marks, nid 0, are the first records it reads)
        relay.connect()
        _write(hub, patients=3, observations=2, tag="c")
        _relay_all(relay)
        end = hub.store.max_notification_id()
        again = StreamFollower(broker.bootstrap, node, group, topic=topic)
        again.catch_up(end)
        assert again.applied < follower.applied  # did not reread the topic from the start
        for m in reference:
            Runner(hub.store, m).catch_up()
        assert _state(node) == _state(reference)
        again.close()
    finally:
        relay.close()
        for m in (*node, *reference):
            m.close()
        hub.store.close()


def test_a_record_that_is_no_event_is_skipped_not_a_stop(broker, tmp_path):  # noqa: F811
    """Another producer's record on the topic (no headers), or one with a header that is no
    number, stopped every model of the node for good (KeyError: 'nid', reconnecting for ever,
    even the events before it not applied). It is skipped, counted, and the node follows on."""
    from kafka import KafkaProducer

    settings = _settings(tmp_path)
    hub = Hub(settings.open_store())
    topic = f"events-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=1)
    relay = Relay(hub.store, broker.bootstrap, topic, batch=50)
    node = _models(tmp_path / "node")
    reference = _models(tmp_path / "reference")
    try:
        _write(hub, patients=3, observations=2, tag="a")
        _relay_all(relay)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send(topic, value=b"not an event")
        producer.send(topic, value=b"{}", headers=[("nid", b"twelve")])
        producer.flush()
        producer.close()
        _write(hub, patients=2, observations=1, tag="b")
        _relay_all(relay)
        follower = StreamFollower(broker.bootstrap, node, f"g-{uuid.uuid4().hex[:6]}",
                                  topic=topic)
        end = hub.store.max_notification_id()
        follower.catch_up(end)
        for m in reference:
            Runner(hub.store, m).catch_up()
        assert _state(node) == _state(reference)
        assert follower.skipped == 2
        follower.close()
    finally:
        relay.close()
        for m in (*node, *reference):
            m.close()
        hub.store.close()


def test_the_cli_follows_the_stream_without_the_store(broker, tmp_path):  # noqa: F811
    settings = _settings(tmp_path)
    hub = Hub(settings.open_store())
    topic = f"events-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=2)
    relay = Relay(hub.store, broker.bootstrap, topic)
    node = tmp_path / "node"
    try:
        _write(hub, patients=4, observations=2, tag="a")
        _relay_all(relay)
        # the node's environment names no event store at all
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env["HUB_DATA_DIR"] = str(node)
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "projections", "follow",
                                 "search", "--from-stream", broker.bootstrap, "--topic", topic],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = hub.store.max_notification_id()
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            if (node / "search.sqlite").exists():
                index = SQLiteSearchIndex(node / "search.sqlite")
                try:
                    if index.position() >= end:
                        break
                finally:
                    index.close()
            assert time.monotonic() < deadline, "the stream follower did not catch up"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not (node / "events.sqlite").exists()  # it never opened a store
        reference = SQLiteSearchIndex(tmp_path / "reference.sqlite")
        index = SQLiteSearchIndex(node / "search.sqlite")
        try:
            Runner(hub.store, reference).catch_up()
            assert dump(index) == dump(reference)
        finally:
            index.close()
            reference.close()
    finally:
        relay.close()
        hub.store.close()


def test_partitions_are_merged_back_into_log_order_only_when_it_is_known():
    """An event is handed on once every other partition has shown all its events before it (an
    event or a watermark at or after the one before): a partition with nothing new may be late."""
    from collections import deque

    f = StreamFollower("unused:9092", [], "g")
    # read so far: events 1 and 4 from partition 0, 3 from partition 2, nothing from 1
    f._buffers = {0: deque([(1, "e1"), (4, "e4")]), 1: deque(), 2: deque([(3, "e3")])}
    f._marks = {0: 4, 1: 0, 2: 3}
    assert f._ready() == [(0, "e1")]  # nothing comes before 1; 3 waits: 2 may be in partition 1
    f._buffers[1].append((2, "e2"))
    f._marks[1] = 2
    assert f._ready() == [(1, "e2"), (2, "e3")]  # 4 waits: partition 1 showed nothing after 2
    f._marks[1] = 9  # its watermark: it holds everything up to 9
    assert f._ready() == [(0, "e4")]
    assert f._ready() == []
