"""Synthea-shaped transaction Bundles posted over REST, against raw validation of their resources.

A generated region is written as Synthea writes its patients (``hub.synth.bundles``: one
transaction Bundle per Patient record, ``urn:uuid:`` references, the institutions referenced
conditionally and loaded first from a batch). One client posts the Bundles one after another to
``hub serve`` (the embedded default, automatic matching on, as ``make run`` serves; on loopback
without access control, like the other benchmarks). Reported: resources stored per wall second,
and per CPU second of the server, each as a ratio to raw ``model_validate_json`` of the same
resources in this process (per wall second, and per CPU second), measured before and after the
posting; and the CPU of the API process and its read-model follower process together. Goal: >= 0.6.

    .venv/bin/python -m bench.bundles [--people 400] [--batched 10] [--history 10] [--no-narratives]

Every resource carries a generated narrative (``text.div``), as Synthea's Patients and a server's
narrative generator write them; the runs before 2026-12-07 had none.

A third run writes each person's history ``--history`` times as long (``Region(visit_scale=…)``),
one Patient per Bundle: Synthea writes a patient's whole life, hundreds of entries, where the
region's people have a few visits each.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time

import httpx
import orjson
import psutil

from bench.common import record, rss_peak_mb, validation_rate
from bench.server import start_server
from hub.core.gctune import SERVING_THRESHOLD
from hub.synth import Region
from hub.synth.bundles import hospital_bundle, patient_bundles


def _merge(bundles: list[dict], k: int) -> list[dict]:
    """``k`` Patient Bundles per transaction (a client that batches several patients)."""
    if k <= 1:
        return bundles
    return [{"resourceType": "Bundle", "type": "transaction",
             "entry": [e for b in bundles[i:i + k] for e in b["entry"]]} for i in range(0, len(bundles), k)]


def _narrated(bundles: list[dict]) -> list[dict]:
    """Every resource with a generated narrative, as a client's resources come (Synthea writes
    one on its Patients, a server's narrative generator one on each): the write path checks each
    div, keeps it, and compares narratives when a write repeats a resource."""
    for b in bundles:
        for e in b["entry"]:
            r = e["resource"]
            code = r.get("code") or r.get("type") or {}
            if isinstance(code, list):
                code = code[0] if code else {}
            what = code.get("text") or next((c.get("display") for c in code.get("coding", [])
                                             if c.get("display")), None) or \
                next((n.get("text") or n.get("family") for n in r.get("name", [])), None) or \
                r["resourceType"]
            when = r.get("effectiveDateTime") or r.get("birthDate") or \
                (r.get("period") or {}).get("start") or ""
            what = what.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            r["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
                         f'<p><b>{r["resourceType"]}</b> {when}: {what}</p></div>'}
    return bundles


def _tuned_gc_rate(resources: list[bytes]) -> float:
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_THRESHOLD, *before[1:])
    try:
        return validation_rate(resources)
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def run(people: int, per_bundle: int, port: int, visit_scale: int = 1,
        narratives: bool = True) -> dict:
    region = Region(seed=11, people=people, visit_scale=visit_scale)
    bundles = list(patient_bundles(region))
    bundles = _merge(_narrated(bundles) if narratives else bundles, per_bundle)
    bodies = [orjson.dumps(b) for b in bundles]
    resources = [orjson.dumps(e["resource"]) for b in bundles for e in b["entry"]]
    base_wall = [validation_rate(resources)]
    base_cpu = [validation_rate(resources, time.process_time)]
    tmp = tempfile.mkdtemp(prefix="hub-bench-bundles-")
    proc = start_server(tmp, port)
    try:
        server = psutil.Process(proc.pid)
        headers = {"content-type": "application/fhir+json", "prefer": "return=minimal"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir", timeout=120) as c:
            r = c.post("", content=orjson.dumps(hospital_bundle(region)), headers=headers)
            assert r.status_code == 200, r.text[:500]
            followers = server.children(recursive=True)  # hub projections follow
            # the server's models imported and its caches warm before the clock starts, as the
            # baseline's are (validation_rate validates 200 resources first): people of another
            # seed, so the measured resources are the same
            warming = list(patient_bundles(Region(seed=12, people=3, visit_scale=visit_scale)))
            for warm in _narrated(warming) if narratives else warming:
                r = c.post("", content=orjson.dumps(warm), headers=headers)
                assert r.status_code == 200, r.text[:500]
            warmed = c.get("/Observation", params={"_summary": "count"}).json()["total"]

            def all_cpu() -> float:
                return sum(sum(p.cpu_times()[:2]) for p in (server, *followers))
            cpu0, all0 = sum(server.cpu_times()[:2]), all_cpu()
            t0 = time.perf_counter()
            lat = []
            for body in bodies:
                t = time.perf_counter()
                r = c.post("", content=body, headers=headers)
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text[:500]
            wall = time.perf_counter() - t0
            cpu = sum(server.cpu_times()[:2]) - cpu0
            time.sleep(1.0)  # the follower takes in the last writes
            everything = all_cpu() - all0
            stored = c.get("/Observation", params={"_summary": "count"}).json()["total"] - warmed
        peak = rss_peak_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    base_wall.append(validation_rate(resources))
    base_cpu.append(validation_rate(resources, time.process_time))
    tuned = _tuned_gc_rate(resources)
    n = len(resources)
    per_wall, per_cpu = n / wall, n / cpu
    vw, vc = statistics.mean(base_wall), statistics.mean(base_cpu)
    return {
        "people": people, "visit_scale": visit_scale, "narratives": narratives,
        "bundles": len(bundles), "resources": n,
        "entries_per_bundle": round(n / len(bundles), 1),
        "observations_stored": stored,
        "resources_per_s": round(per_wall), "resources_per_server_cpu_s": round(per_cpu),
        "validation_per_s": [round(x) for x in base_wall],
        "validation_per_cpu_s": [round(x) for x in base_cpu],
        "ratio_wall": round(per_wall / vw, 3), "ratio_server_cpu": round(per_cpu / vc, 3),
        # the same baseline with the collector tuned as `hub serve` tunes its own
        # (hub.core.gctune): what of the ratio the tuning alone gives
        "validation_per_s_serving_gc": round(tuned),
        "ratio_wall_to_serving_gc": round(per_wall / tuned, 3),
        # the API process and its read-model follower together (automatic matching included)
        "ratio_all_cpu": round(n / everything / vc, 3),
        "bundle_ms_p50": round(statistics.median(lat) * 1000, 2),
        "server_peak_rss_mb": round(peak),
    }


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for key, label in (("one", "one Patient per Bundle"), ("batched", "several Patients per Bundle"),
                       ("history", "one Patient with a Synthea-long history per Bundle")):
        x = r.get(key)
        if x:
            rows.append((f"Synthea-shaped transaction Bundles over REST, {label} ({x['entries_per_bundle']} "
                         "entries), one client, automatic matching on: resources/s (ratio to raw "
                         "model_validate_json per s); per CPU s of the API process (ratio per "
                         "CPU s); ratio per CPU s of the API process and its follower together",
                         f"{x['resources_per_s']} ({x['ratio_wall']}); {x['resources_per_server_cpu_s']} "
                         f"({x['ratio_server_cpu']}); {x.get('ratio_all_cpu', '-')}", ">= 0.6"))
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--people", type=int, default=400)
    p.add_argument("--batched", type=int, default=10, help="Patients per Bundle of the second run")
    p.add_argument("--history", type=int, default=10,
                   help="visits times this for the third run: one Patient per Bundle, records as "
                        "long as Synthea's (0: no such run)")
    p.add_argument("--port", type=int, default=18093)
    p.add_argument("--no-narratives", dest="narratives", action="store_false",
                   help="resources without a text.div (the runs before 2026-12-07 had none)")
    args = p.parse_args(argv)
    result = {"one": run(args.people, 1, args.port, narratives=args.narratives)}
    if args.batched > 1:
        result["batched"] = run(args.people, args.batched, args.port, narratives=args.narratives)
    if args.history > 1:
        result["history"] = run(max(1, args.people // args.history), 1, args.port, args.history,
                                narratives=args.narratives)
    result["summary_rows"] = summary_rows(result)
    for k in ("one", "batched", "history"):
        if k in result:
            print(k, result[k])
    print("written", record("bundles", result))
    return result


if __name__ == "__main__":
    main()
