"""The operator console's pages: p50 / p95 ms per page on a synthetic region, logged in as the
demo user, one client after the other (a person at a browser).

A fresh data directory gets ``hub demo --people N`` (about 25 resources per person: 40,000 people
make the million resources the console's goal is set at); ``hub serve`` serves it with its
followers. Each page is asked ``--n`` times after a warm-up; the baseline is ``/fhir/metadata``
(the capability statement, served from memory) asked the same way in the same run, so the ratio
says what a page costs over the bare HTTP round trip on this machine.

    python -m bench.console --people 4000 --n 50
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import record

PAGES = ["/console/overview", "/console/quarantine", "/console/identity",
         "/console/terminology?q=gb", "/console/audit"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _times(client: httpx.Client, path: str, n: int) -> list[float]:
    client.get(path)  # warm
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200 and 'name="password"' not in r.text, (path, r.status_code)
    return out


def _p(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q) - 1], 1) if len(values) > 1 else values[0]


def run(people: int, n: int) -> dict:
    hub = str(Path(sys.executable).parent / "hub")
    with tempfile.TemporaryDirectory() as tmp:
        port = _port()
        env = {**os.environ, "HUB_DATA_DIR": tmp, "HUB_PORT": str(port), "HUB_AUDIT": "1"}
        t = time.perf_counter()
        subprocess.run([hub, "demo", "--people", str(people)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        load_s = round(time.perf_counter() - t, 1)
        out = subprocess.run([hub, "auth", "demo-client"], env=env, check=True,
                             capture_output=True, text=True).stdout
        password = next(line.split("password ")[1].split()[0] for line in out.splitlines()
                        if line.startswith("console:"))
        server = subprocess.Popen([hub, "serve"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            with httpx.Client(base_url=base, timeout=60) as client:
                r = client.post("/console/login", data={"name": "demo", "password": password})
                assert r.status_code in (200, 303), r.text[:200]
                resources = int(client.get("/ready").json()["checks"]["event-store"]["position"])
                baseline = _times(client, "/fhir/metadata", n)
                pages = {p: _times(client, p, n) for p in PAGES}
        finally:
            server.terminate()
            server.wait(30)
    base_p95 = _p(baseline, 95)
    result = {"people": people, "events": resources, "load_s": load_s, "n": n,
              "load_average_at_start": os.getloadavg()[0],
              "baseline_metadata_ms": {"p50": _p(baseline, 50), "p95": base_p95},
              "pages": {p: {"p50": _p(v, 50), "p95": _p(v, 95),
                            "p95_ratio_to_metadata": round(_p(v, 95) / max(base_p95, 0.1), 1)}
                        for p, v in pages.items()}}
    print(result, flush=True)
    return result


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    worst = max(v["p95"] for v in r["pages"].values())
    return [(f"Console pages on {r['events']:,} events ({r['people']} people), logged in, one "
             "client: p95 ms per page (overview, quarantine, identity, terminology, audit)",
             "; ".join(f"{v['p95']}" for v in r["pages"].values()) + f" (worst {worst})",
             "< 500 at 1 M")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--people", type=int, default=40000)
    p.add_argument("--n", type=int, default=50)
    args = p.parse_args(argv)
    result = run(args.people, args.n)
    print("wrote", record("console", result))
    return result


if __name__ == "__main__":
    main()
