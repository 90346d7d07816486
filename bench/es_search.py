"""Search on Elasticsearch against the SQLite index, on one generated region.

The region is ingested in process (not timed; ``--keep`` reuses it), then both indexes are built
from the log by ``hub projections rebuild search`` and ``rebuild search-es`` (each its own
process; the Elasticsearch-compatible server of the ``noida-db`` wheel runs beside it on a free
port, and its CPU is counted too). Reported: each build's resources per second as a ratio to raw
``model_validate_json`` measured in this run (wall, and per CPU second of the builder and the
server together). Then ``hub serve`` answers the same query mix of ``bench.search`` once with
``HUB_SEARCH=sqlite`` and once with ``elasticsearch``, rounds interleaved: p50/p95 per query and the
ratio of the Elasticsearch p95 to the SQLite one, and whether both returned the same ids.
Goals: build >= 1x validation; token and date p95 within 2x the SQLite backend's at 1 M resources.

    .venv/bin/python -m bench.es_search [--people 39000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

from bench.common import generated, record, validation_rate
from bench.noida import SearchServer
from bench.search import ingest, query_mix
from bench.server import percentile
from hub.core.store import ResourceStore

REPEATS = 10
ROUNDS = 3


def _env(data_dir: str, es_url: str, prefix: str, search: str) -> dict[str, str]:
    env = {**os.environ, "HUB_DATA_DIR": data_dir, "HUB_ES_URL": es_url, "HUB_ES_PREFIX": prefix,
           "HUB_SEARCH": search, "HUB_MPI_AUTOMATCH": "0", "HUB_AUTH": "0", "HUB_WORKERS": "1"}
    env.pop("HUB_DATABASE_URL", None)
    return env


def build(env: dict[str, str], name: str, server: SearchServer | None) -> dict:
    """``hub projections rebuild NAME``: wall seconds, CPU seconds of it (and of the server)."""
    es = psutil.Process(server.proc.pid) if server and server.proc else None
    es_cpu = sum(es.cpu_times()[:2]) if es else 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hub.cli", "projections", "rebuild", name], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_cpu = (sum(es.cpu_times()[:2]) - es_cpu) if es else 0.0
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "server_cpu_seconds": round(server_cpu, 1)}


def _serve(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port),
                             "--followers", "none"], env=env, stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("hub serve did not start")


def _ids(c: httpx.Client, query: str) -> list[str]:
    r = c.get("/" + query)
    assert r.status_code == 200, r.text[:300]
    # without the base (each server has its own port)
    return [e["fullUrl"].split("/fhir/", 1)[1] for e in r.json().get("entry", [])]


def _timed(c: httpx.Client, query: str) -> float:
    t = time.perf_counter()
    r = c.get("/" + query)
    assert r.status_code == 200, r.text[:300]
    return (time.perf_counter() - t) * 1000


def run(people: int, port: int, keep: str | None) -> dict:
    tmp = tempfile.mkdtemp(prefix="hub-bench-es-")
    data = keep or tmp
    os.makedirs(data, exist_ok=True)
    server = SearchServer(Path(tmp) / "noida").start()
    prefix = "bench" + uuid.uuid4().hex[:6]
    try:
        if os.path.exists(f"{data}/events.sqlite"):
            n = ResourceStore.sqlite(f"{data}/events.sqlite").max_notification_id()
        else:
            n = ingest(data, people)
        sample = generated(400)
        base = validation_rate(sample)
        base_cpu = validation_rate(sample, clock=time.process_time)
        sqlite_build = build(_env(data, server.url, prefix, "sqlite"), "search", None)
        # the builder's own CPU per resource, apart from the engine's (extraction, documents,
        # bulk requests): what this project's code costs whatever the engine
        es_build = build(_env(data, server.url, prefix, "elasticsearch"), "search-es", server)
        base = (base + validation_rate(sample)) / 2
        base_cpu = (base_cpu + validation_rate(sample, clock=time.process_time)) / 2
        es_cpu = es_build["cpu_seconds"] + es_build["server_cpu_seconds"]
        out: dict = {
            "resources": n, "validate_per_s": round(base), "validate_per_cpu_s": round(base_cpu),
            "sqlite_build": {**sqlite_build, "ratio": round(n / sqlite_build["seconds"] / base, 2)},
            "es_build": {**es_build, "ratio": round(n / es_build["seconds"] / base, 2),
                         "cpu_ratio": round(n / es_cpu / base_cpu, 2),
                         "builder_cpu_ratio": round(n / es_build["cpu_seconds"] / base_cpu, 2)},
            "queries_ms": {}}
        servers = {"sqlite": _serve(_env(data, server.url, prefix, "sqlite"), port),
                   "elasticsearch": _serve(_env(data, server.url, prefix, "elasticsearch"),
                                           port + 1)}
        try:
            clients = {k: httpx.Client(base_url=f"http://127.0.0.1:{port + i}/fhir", timeout=120)
                       for i, k in enumerate(servers)}
            mix = query_mix(clients["sqlite"])
            mix.pop("_sort + 3 pages", None)
            mix["_sort"] = "Patient?_sort=-birthdate,family&_count=20"
            lat: dict[str, dict[str, list[list[float]]]] = {k: {q: [] for q in mix} for k in clients}
            same = {}
            for name, query in mix.items():
                same[name] = _ids(clients["sqlite"], query) == _ids(clients["elasticsearch"], query)
                for c in clients.values():
                    for _ in range(3):
                        _timed(c, query)
            for _ in range(ROUNDS):  # interleaved: a burst of other work spoils both alike
                for name, query in mix.items():
                    for k, c in clients.items():
                        lat[k][name].append([_timed(c, query) for _ in range(REPEATS)])
            for name in mix:
                row: dict = {"same_ids": same[name]}
                for k in clients:
                    p95s = [percentile(x, 95) for x in lat[k][name]]
                    p50s = [sorted(x)[len(x) // 2] for x in lat[k][name]]
                    row[k] = {"p50": round(sorted(p50s)[1], 1), "p95": round(sorted(p95s)[1], 1)}
                row["p95_ratio"] = round(row["elasticsearch"]["p95"] / row["sqlite"]["p95"], 2)
                out["queries_ms"][name] = row
            for c in clients.values():
                c.close()
        finally:
            for p in servers.values():
                p.terminate()
                p.wait(10)
        return out
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for x in r.values():
        if not isinstance(x, dict) or "es_build" not in x:
            continue
        n = f"{x['resources']:,}"
        rows.append((f"Elasticsearch search index build ({n} resources; the noida-db server): "
                     "resources/s (ratio to validation per s); ratio per CPU s of builder and "
                     "server; of the builder alone; SQLite index build ratio",
                     f"{round(x['resources'] / x['es_build']['seconds'])} "
                     f"({x['es_build']['ratio']}); {x['es_build']['cpu_ratio']}; "
                     f"{x['es_build']['builder_cpu_ratio']}; {x['sqlite_build']['ratio']}",
                     ">= 1 at 1 M on a real cluster"))
        q = x["queries_ms"]
        rows.append((f"Elasticsearch search p95 ms over HTTP ({n} resources), as a ratio to the "
                     "SQLite backend's: token; date range",
                     f"{q['token']['elasticsearch']['p95']} ({q['token']['p95_ratio']}); "
                     f"{q['date range (one month)']['elasticsearch']['p95']} "
                     f"({q['date range (one month)']['p95_ratio']})",
                     "<= 2 at 1 M on a real cluster"))
        rows.append((f"Elasticsearch search ({n} resources): queries of the mix returning the "
                     "same page as SQLite", f"{sum(v['same_ids'] for v in q.values())} of {len(q)}",
                     "all"))
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # the noida-db server scans every document of an index per query (5 s at 50,000 documents):
    # a region of 400 people (~10,000 resources) keeps a run to minutes; with a real cluster
    # (HUB_ES_URL) the goals' 39,000 (~1 M)
    p.add_argument("--people", type=int, default=400, help="about 26 resources per person")
    p.add_argument("--port", type=int, default=18091)
    p.add_argument("--keep", metavar="DIR", help="keep the region's event store and reuse it")
    args = p.parse_args(argv)
    result = {str(args.people): run(args.people, args.port, args.keep)}
    print(result, flush=True)
    print("wrote", record("es_search", result))
    return result


if __name__ == "__main__":
    main()
