"""MLLP connector end to end: latency at a sustained rate, and the listener's memory over a long run.

Starts ``hub serve`` (embedded SQLite) and ``hub connector run`` (MLLP source, HTTP sink, spool
with fsync per message) in their own processes, then:

1. latency: senders over ``--connections`` connections at ``--rate`` messages per second in total
   for ``--latency-messages`` messages; per message the time from send to ACK, and for every
   ``--sample``-th message the time from send until its Provenance (one per message) is readable
   through the FHIR API;
2. memory: ``--messages`` more messages as fast as the senders get ACKs; the connector's RSS at
   start and every 10 % of the way (it must stay flat: the spool is on disk, delivered units are
   deleted).

Messages are ADT A04/A08 built from the synthetic region's patients (``connectors.testing``), each
with its own control id. Results: bench/results/mllp.json.

    .venv/bin/python -m bench.mllp --rate 100 --latency-messages 2000 --messages 100000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import record, rss_now_mb
from bench.server import percentile, start_server
from connectors.kinds import converter
from connectors.mllp_client import MLLPClient, ack_code
from connectors.testing import (
    ConnectorProcess,
    adt_message,
    region_patients,
    wait_until,
    write_config,
)
from fhir_mapping.base import SourceInfo
from tests.conftest import free_port

INFO = SourceInfo(institution="H0001", oid="2.16.156.10011.99.1.1", name="基准医院", feed="adt")


class Messages:
    """An endless, deterministic stream of distinct ADT messages over a pool of patients."""

    def __init__(self, people: int = 300):
        self.patients = list(region_patients(people, seed=99))

    def get(self, k: int) -> bytes:
        p = self.patients[k % len(self.patients)]
        event = "A04" if k < len(self.patients) else "A08"
        day = 1 + (k // len(self.patients)) % 28
        return adt_message(p, event, f"B{k:09d}", f"202405{day:02d}0800+0800",
                           phone=f"139{k:08d}")


def provenance_ref(msg: bytes) -> str:
    [c] = converter("hl7v2")(msg, INFO)
    return next(f"Provenance/{r['id']}" for r in c.resources if r["resourceType"] == "Provenance")


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-mllp-"))
    hub_port, mllp_port, status_port = free_port(), free_port(), free_port()
    hub = start_server(str(work / "hub"), hub_port)
    base = f"http://127.0.0.1:{hub_port}/fhir"
    cfg = write_config(work / "connector.yaml", name="bench", state_dir=str(work / "state"),
                       institution={"code": INFO.institution, "oid": INFO.oid},
                       durable=not args.no_fsync, status={"port": status_port},
                       retry={"initial_s": 0.1, "max_s": 2},
                       sources=[{"type": "mllp", "name": "adt", "host": "127.0.0.1",
                                 "port": mllp_port, "kind": "hl7v2"}],
                       sink={"type": "http", "url": base, "batch_size": args.batch_size})
    conn = ConnectorProcess(cfg, status_port, log=work / "connector.log").start()
    msgs = Messages(args.people)
    pid = conn.proc.pid
    result: dict = {"config": {k: v for k, v in vars(args).items()}}
    try:
        # warm up: mapper tables, hub models, connections
        with MLLPClient("127.0.0.1", mllp_port) as c:
            for k in range(50):
                assert ack_code(c.send(msgs.get(k))) == "AA"
        wait_until(lambda: conn.status()["sources"]["adt"]["lag"] == 0, 60)
        rss_start = rss_now_mb(pid)
        n0 = 50

        # 1. latency at a sustained rate
        n = args.latency_messages
        ack_ms: list[float] = []
        readable_ms: list[float] = []
        pending: list[tuple[float, str]] = []
        lock = threading.Lock()
        start = time.perf_counter() + 0.2
        interval = args.connections / args.rate

        def sender(j: int) -> None:
            with MLLPClient("127.0.0.1", mllp_port) as c:
                for i in range(j, n, args.connections):
                    due = start + i / args.rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    msg = msgs.get(n0 + i)
                    ref = provenance_ref(msg) if i % args.sample == 0 else None
                    t = time.perf_counter()
                    assert ack_code(c.send(msg)) == "AA"
                    dt = time.perf_counter() - t
                    with lock:
                        ack_ms.append(dt * 1000)
                        if ref:
                            pending.append((t, ref))

        done = threading.Event()

        def reader() -> None:
            with httpx.Client(base_url=base, timeout=10) as h:
                while not done.is_set() or pending:
                    with lock:
                        todo = list(pending)
                    if not todo:
                        time.sleep(0.002)
                        continue
                    for t, ref in todo:
                        if h.get(ref).status_code == 200:
                            with lock:
                                readable_ms.append((time.perf_counter() - t) * 1000)
                                pending.remove((t, ref))
                    time.sleep(0.002)

        threads = [threading.Thread(target=sender, args=(j,)) for j in range(args.connections)]
        rt = threading.Thread(target=reader)
        rt.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        done.set()
        rt.join(120)
        del interval
        result["latency"] = {
            "messages": n, "target_rate_per_s": args.rate,
            "achieved_rate_per_s": round(n / elapsed, 1), "connections": args.connections,
            "ack_ms": {"p50": round(statistics.median(ack_ms), 2),
                       "p95": round(percentile(ack_ms, 95), 2),
                       "p99": round(percentile(ack_ms, 99), 2), "max": round(max(ack_ms), 2)},
            "readable_ms": {"samples": len(readable_ms),
                            "p50": round(statistics.median(readable_ms), 2),
                            "p95": round(percentile(readable_ms, 95), 2),
                            "p99": round(percentile(readable_ms, 99), 2),
                            "max": round(max(readable_ms), 2)},
        }
        print("latency:", result["latency"], flush=True)
        wait_until(lambda: conn.status()["sources"]["adt"]["lag"] == 0, 300)

        # 2. memory over many messages, as fast as ACKs come
        total = args.messages
        base_k = n0 + n
        rss = [(0, round(rss_now_mb(pid), 1))]
        sent = [0]
        t0 = time.perf_counter()

        def blast(j: int) -> None:
            with MLLPClient("127.0.0.1", mllp_port) as c:
                for i in range(j, total, args.connections):
                    assert ack_code(c.send(msgs.get(base_k + i))) == "AA"
                    with lock:
                        sent[0] += 1

        threads = [threading.Thread(target=blast, args=(j,)) for j in range(args.connections)]
        for t in threads:
            t.start()
        step = max(1, total // 10)
        next_mark = step
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            if sent[0] >= next_mark:
                rss.append((sent[0], round(rss_now_mb(pid), 1)))
                print(f"  {sent[0]} messages, connector RSS {rss[-1][1]} MB, lag "
                      f"{conn.status()['sources']['adt']['lag']}", flush=True)
                next_mark += step
        ack_elapsed = time.perf_counter() - t0
        rss.append((total, round(rss_now_mb(pid), 1)))
        wait_until(lambda: conn.status()["sources"]["adt"]["lag"] == 0, 1800, every=1)
        all_elapsed = time.perf_counter() - t0
        st = conn.status()["sources"]["adt"]
        result["memory"] = {
            "messages": total, "connector_rss_mb_at_start": round(rss_start, 1),
            "connector_rss_mb_after": rss[-1][1], "rss_mb_by_messages": rss,
            "acked_per_s": round(total / ack_elapsed, 1),
            "delivered_per_s": round(total / all_elapsed, 1),
            "counters": {k: st[k] for k in ("received", "converted", "delivered", "failed")},
            "spool_file_mb": round((work / "state" / "spool.sqlite").stat().st_size / 2**20, 2),
        }
        print("memory:", result["memory"], flush=True)
    finally:
        conn.stop()
        hub.terminate()
        hub.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second, phase 1")
    ap.add_argument("--latency-messages", type=int, default=2000)
    ap.add_argument("--messages", type=int, default=100_000, help="phase 2 (memory)")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--sample", type=int, default=5, help="check readability of every N-th")
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--no-fsync", action="store_true", help="spool without fsync per commit")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    result = run(args)
    path = record("mllp", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
