"""Single-resource create latency through HTTP, and the server's memory while serving.

Starts `hub serve` in its own process (embedded SQLite default), sends creates one at a time
from this process, then reads and history pages. Goals: create p95 < 10 ms; server RSS < 500 MB.
The baseline ratio is the p95 against one raw model_validate_json of the same resources.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import orjson

from bench.common import generated, record, rss_now_mb, rss_peak_mb
from hub.core.resource import model_class


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def start_server(data_dir: str, port: int, workers: int = 1) -> subprocess.Popen:
    """``hub serve`` as ``make run`` serves, but with ``workers`` API processes (one by default,
    so that figures compare across machines with other core counts)."""
    env = {**os.environ, "HUB_DATA_DIR": data_dir, "HUB_WORKERS": str(workers)}
    env.pop("HUB_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("server did not start")
    _caught_up(port)
    return proc


def _caught_up(port: int, seconds: float = 600) -> None:
    """Wait until every read model has taken in the log (``/ready``: each one's lag), so that a
    measurement does not share the machine with a projection still catching up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            checks = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).json().get("checks", {})
            if checks and all(c.get("lag", 0) == 0 for c in checks.values()):
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError("the server's read models did not catch up")


def run(n: int, port: int) -> dict:
    items = [d for d in (orjson.loads(r) for r in generated(max(40, n // 20)))][:n]
    for d in items:
        d.pop("id", None)  # POST create: the server assigns ids
    bodies = [(d["resourceType"], orjson.dumps(d)) for d in items]
    # baseline: one validation each, same resources
    t_val = []
    for rtype, raw in bodies[:2000]:
        t = time.perf_counter()
        model_class(rtype).model_validate_json(raw)
        t_val.append((time.perf_counter() - t) * 1000)
    tmp = tempfile.mkdtemp(prefix="hub-bench-http-")
    proc = start_server(tmp, port)
    try:
        lat, locations = [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir", timeout=30) as c:
            for rtype, raw in bodies[:50]:  # warm up
                c.post(f"/{rtype}", content=raw, headers={"content-type": "application/fhir+json"})
            for rtype, raw in bodies:
                t = time.perf_counter()
                r = c.post(f"/{rtype}", content=raw,
                           headers={"content-type": "application/fhir+json",
                                    "prefer": "return=minimal"})
                lat.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 201, r.text
                locations.append(r.headers["location"].split("/_history")[0])
            rlat = []
            for loc in locations:
                t = time.perf_counter()
                c.get(loc)
                rlat.append((time.perf_counter() - t) * 1000)
            for _ in range(20):
                c.get("/_history", params={"_count": "200"})
        rss = rss_now_mb(proc.pid)
        peak = rss_peak_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp)
    return {
        "creates": len(lat),
        "create_ms": {"p50": round(statistics.median(lat), 2), "p95": round(percentile(lat, 95), 2),
                      "p99": round(percentile(lat, 99), 2)},
        "read_ms": {"p50": round(statistics.median(rlat), 2), "p95": round(percentile(rlat, 95), 2)},
        "validate_ms_p95": round(percentile(t_val, 95), 3),
        "create_p95_over_validate_p95": round(percentile(lat, 95) / percentile(t_val, 95), 1),
        "server_rss_mb": round(rss), "server_peak_rss_mb": round(peak),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--port", type=int, default=18080)
    args = p.parse_args(argv)
    result = run(args.n, args.port)
    print(result)
    print("wrote", record("http", result))
    return result


if __name__ == "__main__":
    main()
