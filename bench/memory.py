"""Bounded memory: `hub generate` and `hub ingest` of a million resources, peak RSS per process.

Goal: peak RSS under 1 GB and not growing with the input, so the same commands run at a small
and a large size and the two peaks are compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import record, rss_now_mb

PER_PERSON = 25.7  # resources per person from the generator, on average


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run a command; its peak RSS (from wait4) and RSS samples over time."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    samples: list[int] = []
    while True:
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)  # reaps only when it has ended
        if pid:
            break
        try:
            samples.append(round(rss_now_mb(proc.pid)))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.5)
    out = proc.stdout.read().decode(errors="replace").strip().splitlines()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out[-5:]}")
    peaks = [float(line.split("=", 1)[1]) for line in out if line.startswith("PEAK_RSS_MB=")]
    out = [line for line in out if line and not line.startswith("PEAK_RSS_MB=")]
    peak = peaks[-1] if peaks else float("nan")
    n = len(samples)
    return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(peak),
            "rss_at_25pct_mb": samples[n // 4] if n else None,
            "rss_at_end_mb": samples[-1] if n else None, "last_line": out[-1] if out else ""}


def measure(resources: int) -> dict:
    people = max(10, int(resources / PER_PERSON))
    tmp = tempfile.mkdtemp(prefix="hub-bench-mem-")
    env = {**os.environ, "HUB_DATA_DIR": f"{tmp}/var"}
    env.pop("HUB_DATABASE_URL", None)
    hub = [sys.executable, "-m", "bench.peak", "hub.cli"]
    try:
        gen = run_measured(hub + ["generate", f"{tmp}/region", "--people", str(people)], env)
        ing = run_measured(hub + ["ingest", f"{tmp}/region", "--quiet", "--batch-size", "500"], env)
    finally:
        shutil.rmtree(tmp)
    return {"people": people, "generate": gen, "ingest": ing}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--large", type=int, default=1_000_000)
    args = p.parse_args(argv)
    result = {}
    for label, n in (("small", args.small), ("large", args.large)):
        result[label] = {"target_resources": n, **measure(n)}
        print(label, result[label], flush=True)
    result["ingest_peak_growth"] = round(
        result["large"]["ingest"]["peak_rss_mb"] / result["small"]["ingest"]["peak_rss_mb"], 2)
    print("wrote", record("memory", result))
    return result


if __name__ == "__main__":
    main()
