"""Terminology: loading a large code system and concept map, and operation latency.

A generated code system of 100,000 concepts in a hierarchy (ten children per concept, five levels,
every 50th inactive) and a concept map of 100,000 elements (local code -> that code system) are
written as CSV and loaded through the real path: `hub terminology load` in its own process
(validation, events, the terminology projection brought up to date), timed. A value set of one
branch (``is-a``) comes along as FHIR JSON. Then `hub serve` answers `CodeSystem/$validate-code`,
`ValueSet/$validate-code` and `ConceptMap/$translate` for random codes over HTTP, one at a time
in turn with a read of a small resource as the baseline of the same server, in three rounds
(medians of the rounds' p50/p95; goal p95 < 2 ms);
and the same operations in process, over the read model, without HTTP.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.common import record
from bench.server import percentile, start_server

SYSTEM = "http://example.org/fhir/CodeSystem/bench"
LOCAL = "urn:oid:2.16.156.10011.99.1.1.1"
VALUE_SET = "http://example.org/fhir/ValueSet/bench-branch"
MAP = "http://example.org/fhir/ConceptMap/bench"


def code(i: int) -> str:
    return f"C{i:06d}"


def parent(i: int) -> int | None:
    """Ten roots, then ten children per concept."""
    return i // 10 - 1 if i >= 10 else None


def write_inputs(folder: Path, n: int) -> None:
    from terminology.csvformat import write_code_system

    concepts = [{"code": code(i), "display": f"概念 {i} concept",
                 "parents": [code(parent(i))] if parent(i) is not None else [],
                 "inactive": i % 50 == 49} for i in range(n)]
    (folder / "codesystem.csv").write_text(
        write_code_system(concepts, {"url": SYSTEM, "name": "Bench", "version": "1",
                                     "oid": "2.16.156.10011.99.9.1"}), encoding="utf-8")
    with (folder / "conceptmap.csv").open("w", newline="", encoding="utf-8") as f:
        f.write(f"# url: {MAP}\n# source_system: {LOCAL}\n# target_system: {SYSTEM}\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["source_code", "source_display", "target_code", "equivalence"])
        for i in range(n):
            w.writerow([f"L{i}", f"本地 {i}", code(i), "equivalent" if i % 7 else "wider"])
    vs = {"resourceType": "ValueSet", "id": "bench-branch", "url": VALUE_SET, "status": "active",
          "compose": {"include": [{"system": SYSTEM, "filter": [
              {"property": "concept", "op": "is-a", "value": code(1)}]}]}}
    (folder / "valueset.json").write_bytes(orjson.dumps(vs))


def load(data_dir: str, folder: Path) -> dict:
    env = {**os.environ, "HUB_DATA_DIR": data_dir}
    env.pop("HUB_DATABASE_URL", None)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench.peak", "hub.cli", "terminology", "load",
                          "--quiet", str(folder)], env=env, capture_output=True, text=True,
                         check=True).stdout
    seconds = time.perf_counter() - t
    peak = [float(x.split("=")[1]) for x in out.splitlines() if x.startswith("PEAK_RSS_MB=")]
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak[-1]) if peak else None,
            "summary": [x for x in out.splitlines() if x and not x.startswith("PEAK_RSS")]}


def queries(n: int, count: int, seed: int = 11) -> dict[str, list[dict]]:
    rnd = random.Random(seed)
    picks = [rnd.randrange(n) for _ in range(count)]
    return {
        "CodeSystem/$validate-code": [{"url": SYSTEM, "code": code(i)} for i in picks],
        "ValueSet/$validate-code": [{"url": VALUE_SET, "system": SYSTEM, "code": code(i)}
                                    for i in picks],
        "ConceptMap/$translate": [{"url": MAP, "system": LOCAL, "code": f"L{i}"} for i in picks],
    }


def stats(lat: list[float]) -> dict:
    return {"p50": round(sorted(lat)[len(lat) // 2], 3), "p95": round(percentile(lat, 95), 3)}


def over_http(port: int, mix: dict[str, list[dict]], rounds: int = 3) -> dict:
    """Each operation and the baseline read taken in turn, request by request (the machine's
    noise falls on all alike), in ``rounds`` rounds; the medians of the rounds' p50 and p95."""
    mix = {"baseline: read ValueSet": [{}] * len(next(iter(mix.values()))), **mix}
    lat: dict[str, list[list[float]]] = {k: [] for k in mix}
    valid = dict.fromkeys(mix, 0)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir", timeout=60) as c:

        def get(path: str, params: dict) -> httpx.Response:
            if path.startswith("baseline"):
                return c.get("/ValueSet/bench-branch")
            return c.get(f"/{path}", params=params)

        for path, params in mix.items():  # warm up: connections, caches, the index pages
            for p in params[:200]:
                get(path, p)
        for r in range(rounds):
            for path in mix:
                lat[path].append([])
            for i in range(len(mix["baseline: read ValueSet"])):
                for path, params in mix.items():
                    t = time.perf_counter()
                    resp = get(path, params[i])
                    lat[path][r].append((time.perf_counter() - t) * 1000)
                    assert resp.status_code == 200, resp.text[:300]
                    if r == 0:
                        valid[path] += b'"valueBoolean":true' in resp.content
    out = {}
    for path, runs in lat.items():
        per_round = [stats(run) for run in runs]
        out[path] = {"p50": sorted(x["p50"] for x in per_round)[rounds // 2],
                     "p95": sorted(x["p95"] for x in per_round)[rounds // 2],
                     "rounds_p95": [x["p95"] for x in per_round]}
        if not path.startswith("baseline"):
            out[path].update({"true": valid[path], "of": len(runs[0])})
    return out


def in_process(data_dir: str, mix: dict[str, list[dict]]) -> dict:
    from terminology import operations as O
    from terminology.params import from_query
    from terminology.service import TerminologyService

    svc = TerminologyService(f"{data_dir}/terminology.sqlite")
    keys = {"CodeSystem/$validate-code": ("CodeSystem", "validate-code"),
            "ValueSet/$validate-code": ("ValueSet", "validate-code"),
            "ConceptMap/$translate": ("ConceptMap", "translate")}
    out = {}
    try:
        for path, params in mix.items():
            name, fn = O.OPERATIONS[keys[path]]
            spec = O.SPECS[name]
            for p in params[:200]:
                fn(svc, from_query(name, spec, list(p.items())))
            lat = []
            for p in params:
                t = time.perf_counter()
                fn(svc, from_query(name, spec, list(p.items())))
                lat.append((time.perf_counter() - t) * 1000)
            out[path] = stats(lat)
        for label, call in (("descendants of a top-level code (11,111 codes; cached)",
                              lambda: svc.descendants(SYSTEM, code(3))),
                             ("expand_codes (cached)", lambda: svc.expand_codes(VALUE_SET))):
            call()
            lat = []
            for _ in range(200):
                t = time.perf_counter()
                call()
                lat.append((time.perf_counter() - t) * 1000)
            out[label] = stats(lat)
        out["expand_codes size"] = len(svc.expand_codes(VALUE_SET))
    finally:
        svc.close()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=1000, help="per operation and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, default=18082)
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="hub-bench-terminology-")
    try:
        folder = Path(tmp) / "in"
        folder.mkdir()
        write_inputs(folder, args.concepts)
        data = f"{tmp}/data"
        loaded = load(data, folder)
        print("load", loaded, flush=True)
        mix = queries(args.concepts, args.requests)
        proc = start_server(data, args.port)
        try:
            http = over_http(args.port, mix, args.rounds)
        finally:
            proc.terminate()
            proc.wait(10)
        print("http", http, flush=True)
        local = in_process(data, mix)
        print("in process", local, flush=True)
        disk = sum(f.stat().st_size for f in Path(data).glob("terminology.sqlite*")) / 1e6
        result = {"concepts": args.concepts, "map_elements": args.concepts,
                  "requests_per_operation": args.requests * args.rounds, "load": loaded,
                  "read_model_mb": round(disk, 1), "http_ms": http, "in_process_ms": local,
                  "goal": "p95 < 2 ms over HTTP"}
    finally:
        shutil.rmtree(tmp)
    print("wrote", record("terminology", result))
    return result


if __name__ == "__main__":
    main()
