"""The HL7 v3 bus (``hub v3 route``): messages delivered per second to an HTTP subscriber, and what
a SIGKILL of the router in the middle costs (lost: must be 0; repeated: at most the one in flight).

The messages are the synthetic region's v3 feed (``hub.synth.hl7v3``), accepted into the routes
file as ``POST /v3`` does, for one subscriber taking every interaction (a local HTTP receiver
that answers at once). The router runs as its own process (``hub v3 route``); it is killed with
SIGKILL once it has delivered about a third, then started again until nothing is pending. The
baseline is the same messages POSTed to the same receiver by one plain ``httpx`` client loop in
this process: the ratio says what the bus's bookkeeping (a durable state change per delivery)
costs next to the bare HTTP exchange.

    python -m bench.v3_routing --people 300
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bench.common import record
from hub.synth import Region
from hub.synth.hl7v3 import iter_messages
from hub.v3routing import Routes, patient_of


class _Receiver:
    def __init__(self):
        self.got: list[str] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["content-length"]))
                got.append(self.headers.get("x-hub-message-id", ""))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(people: int) -> dict:
    from fhir_mapping import hl7v3

    msgs = []
    for interaction, payload, source in iter_messages(Region(seed=7, people=people)):
        conv = hl7v3.convert(payload, source)
        msgs.append((source.institution, interaction, conv.unit_id, patient_of(conv.resources),
                     payload))
    receiver = _Receiver()
    out: dict = {"people": people, "messages": len(msgs),
                 "load_average_at_start": os.getloadavg()[0]}
    try:
        # baseline: the bare HTTP exchange, one client, same receiver
        with httpx.Client() as client:
            t = time.perf_counter()
            for _, _, mid, _, payload in msgs:
                client.post(receiver.url, content=payload, headers={
                    "content-type": "application/xml", "x-hub-message-id": f"b-{mid}"})
            out["baseline_messages_per_s"] = round(len(msgs) / (time.perf_counter() - t))
        receiver.got.clear()
        with tempfile.TemporaryDirectory() as tmp:
            routes = Routes(Path(tmp) / "v3routes.sqlite")
            routes.subscribe("ALL", ["*"], {"type": "http", "url": receiver.url})
            for inst, interaction, mid, patient, payload in msgs:
                routes.accept(inst, interaction, mid, patient, [], payload)
            routes.close()
            cmd = [sys.executable, "-m", "hub.cli", "v3", "route", "--interval", "0.05",
                   "--data-dir", tmp]
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while len(receiver.got) < len(msgs) // 3:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = len(receiver.got)
            subprocess.run([*cmd, "--once"], check=True)
            seconds = time.perf_counter() - t
        got = receiver.got
        sent = {m[2]: m for m in msgs}
        lost = len(set(sent) - set(got))
        by_patient = defaultdict(list)
        for mid in dict.fromkeys(got):
            by_patient[sent[mid][3]].append(mid)
        order = defaultdict(list)
        for m in msgs:
            order[m[3]].append(m[2])
        out.update({
            "killed_after": killed_at, "delivered": len(got), "lost": lost,
            "repeated": len(got) - len(set(got)),
            "patients_out_of_order": sum(1 for p, ids in by_patient.items() if ids != order[p]),
            # the two router runs and the kill between them, start to finish
            "messages_per_s": round(len(msgs) / seconds),
        })
        out["ratio"] = round(out["messages_per_s"] / out["baseline_messages_per_s"], 2)
    finally:
        receiver.close()
    print(out, flush=True)
    return out


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    return [(f"HL7 v3 bus: {r['messages']} messages to an HTTP subscriber with the router "
             "SIGKILLed after a third: messages per s (ratio to bare HTTP POSTs); lost, "
             "repeated, patients out of order",
             f"{r['messages_per_s']} ({r['ratio']}); {r['lost']}, {r['repeated']}, "
             f"{r['patients_out_of_order']}", "lost 0, repeated <= 1, out of order 0")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--people", type=int, default=300)
    args = p.parse_args(argv)
    result = run(args.people)
    print("wrote", record("v3_routing", result))
    return result


if __name__ == "__main__":
    main()
