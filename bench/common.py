"""Helpers shared by the benchmarks: generated data, timing, RSS, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import orjson

RESULTS = Path(__file__).resolve().parent / "results"

# The benchmarks measure the hub's own work: the servers they start run without access control
# and without the access audit (on loopback), so the figures stay comparable with earlier runs.
# bench/access.py measures what the two add.
os.environ.setdefault("HUB_AUTH", "0")
os.environ.setdefault("HUB_AUDIT", "0")


def generated(people: int, seed: int = 7) -> list[bytes]:
    """Resources of a synthetic region, as the JSON bytes a feed would send."""
    from hub.synth import Region

    return [orjson.dumps(d) for d in Region(seed=seed, people=people).iter_resources()]


def rate(n: int, fn, clock=time.perf_counter) -> float:
    t = clock()
    fn()
    return n / (clock() - t)


def validation_rate(items: list[bytes], clock=time.perf_counter) -> float:
    """Baseline: raw fhir.resources R4B model_validate_json, resources per second.

    ``clock=time.process_time`` gives the rate per CPU second of this process: on a shared,
    loaded machine that is the fairer baseline for figures taken in CPU time too.
    """
    from hub.core.resource import model_class

    parsed = [(raw, orjson.loads(raw)["resourceType"]) for raw in items]
    for raw, rtype in parsed[:200]:  # import the models first
        model_class(rtype).model_validate_json(raw)
    def validate_all() -> None:
        # each result dropped as it is made, as a server drops it: a list holding them all
        # would make the collector walk a growing heap and flatter every ratio to this rate
        # (by about a third at 8,000 resources)
        for r, t in parsed:
            model_class(t).model_validate_json(r)
    return rate(len(parsed), validate_all, clock)


def rss_peak_mb(pid: int | None = None) -> float:
    """Peak resident set size (VmHWM) of a process, in MB."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_now_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def record(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
              **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path
