"""Mixed CRUD and search throughput of `hub serve --workers 2` against one worker, on SQLite and
PostgreSQL.

Two servers run side by side on copies of the same seeded region (`hub.synth` Synthea-shaped
Bundles): one with one API process, one with two, each with its read-model follower. wrk drives
them in turn (interleaved rounds, the medians compared, so that the shared machine's drift falls
on both) with 16 connections and a mix of 10 % creates (an Observation of a known Patient), 45 %
reads (a Patient or an Observation by id) and 45 % searches (a Patient's Observations; Patients
by family name). Before each run both followers have caught up. Goal: two workers >= 1.7 x one,
with p95 no worse.

    .venv/bin/python -m bench.workers [--people 300] [--seconds 8] [--rounds 3] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import psycopg

from bench.common import record
from bench.server import _caught_up, start_server
from hub.synth import Region
from hub.synth.bundles import hospital_bundle, patient_bundles

CONNECTIONS = 16
PG_ADMIN = os.environ.get("HUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

_LUA = """
local patients = {%(patients)s}
local observations = {%(observations)s}
local families = {%(families)s}
local hdr = {["Content-Type"] = "application/fhir+json", ["Accept"] = "application/fhir+json",
             ["Prefer"] = "return=minimal"}
request = function()
  local r = math.random(100)
  local p = patients[math.random(#patients)]
  if r <= 10 then
    local body = '{"resourceType":"Observation","status":"final","code":{"coding":[{"system":' ..
      '"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/' .. p ..
      '"},"valueQuantity":{"value":72,"unit":"/min"}}'
    return wrk.format("POST", "/fhir/Observation", hdr, body)
  elseif r <= 33 then
    return wrk.format("GET", "/fhir/Patient/" .. p, hdr)
  elseif r <= 55 then
    return wrk.format("GET", "/fhir/Observation/" .. observations[math.random(#observations)], hdr)
  elseif r <= 80 then
    return wrk.format("GET", "/fhir/Observation?subject=Patient/" .. p .. "&_count=10", hdr)
  else
    return wrk.format("GET", "/fhir/Patient?family=" .. families[math.random(#families)], hdr)
  end
end
done = function(summary, latency, requests)
  io.write(string.format("P95 %%d\\n", latency:percentile(95.0)))
  io.write(string.format("ERRORS %%d\\n", summary.errors.status + summary.errors.connect +
    summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def _seed(port: int, region: Region) -> dict[str, list[str]]:
    base = f"http://127.0.0.1:{port}/fhir"
    h = {"content-type": "application/fhir+json"}
    with httpx.Client(base_url=base, timeout=120) as c:
        assert c.post("", content=orjson.dumps(hospital_bundle(region)), headers=h).status_code == 200
        patients, observations, families = [], [], set()
        for b in patient_bundles(region):
            r = c.post("", content=orjson.dumps(b), headers=h)
            assert r.status_code == 200, r.text[:300]
            for e, sent in zip(r.json()["entry"], b["entry"]):
                rtype, rid = e["response"]["location"].split("/")[:2]
                if rtype == "Patient":
                    patients.append(rid)
                    for n in sent["resource"].get("name", []):
                        if n.get("family"):
                            families.add(n["family"])
                elif rtype == "Observation":
                    observations.append(rid)
    return {"patients": patients, "observations": observations, "families": sorted(families)}


def _wrk(port: int, script: Path, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                         check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p95_ms": int(re.search(r"P95 (\d+)", out).group(1)) / 1000,
            "non_2xx": int(bad.group(1)) if bad else 0,
            "errors": int(re.search(r"ERRORS (\d+)", out).group(1))}


def run(backend: str, people: int, seconds: int, rounds: int, ports: tuple[int, int]) -> dict:
    region = Region(seed=17, people=people)
    tmp = Path(tempfile.mkdtemp(prefix="hub-bench-workers-"))
    dbs: list[str] = []
    procs = {}
    try:
        for workers, port in zip((1, 2), ports):
            if backend == "postgres":
                name = f"hub_bench_{uuid.uuid4().hex[:10]}"
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                dbs.append(name)
                os.environ["HUB_DATABASE_URL"] = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
            try:
                procs[workers] = start_server(str(tmp / f"w{workers}"), port, workers=workers)
            finally:
                os.environ.pop("HUB_DATABASE_URL", None)
        scripts = {}
        for workers, port in zip((1, 2), ports):
            known = _seed(port, region)
            script = tmp / f"mix{workers}.lua"
            known["families"] = [quote(f) for f in known["families"]]  # into the URL as is
            script.write_text(_LUA % {k: ",".join(f'"{v}"' for v in vals[:5000])
                                      for k, vals in known.items()})
            scripts[workers] = script
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(rounds):
            for workers, port in zip((1, 2), ports):
                for p in ports:
                    _caught_up(p)
                runs[workers].append(_wrk(port, scripts[workers], seconds))
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
        for name in dbs:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    one = {k: statistics.median(r[k] for r in runs[1]) for k in runs[1][0]}
    two = {k: statistics.median(r[k] for r in runs[2]) for k in runs[2][0]}
    return {"one_worker": one, "two_workers": two, "runs": runs,
            "throughput_ratio": round(two["per_s"] / one["per_s"], 3),
            "p95_ratio": round(two["p95_ms"] / one["p95_ms"], 3) if one["p95_ms"] else None}


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for backend in ("sqlite", "postgres"):
        x = r.get(backend)
        if x:
            rows.append((f"Mixed CRUD and search over HTTP ({CONNECTIONS} connections, wrk, medians of "
                         f"{r['rounds']} interleaved rounds), {backend}: two workers / one, requests "
                         "per s; p95 ms one -> two",
                         f"{x['throughput_ratio']} ({round(x['one_worker']['per_s'])} -> "
                         f"{round(x['two_workers']['per_s'])}); {x['one_worker']['p95_ms']} -> "
                         f"{x['two_workers']['p95_ms']}", ">= 1.7; no worse"))
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("bench.workers needs wrk (apt-get install wrk)")
    result: dict = {"people": args.people, "seconds": args.seconds, "rounds": args.rounds,
                    "cores": os.cpu_count()}
    for backend in ("sqlite", *(() if args.no_postgres else ("postgres",))):
        result[backend] = run(backend, args.people, args.seconds, args.rounds, (18141, 18142))
        print(backend, {k: v for k, v in result[backend].items() if k != "runs"})
    result["summary_rows"] = summary_rows(result)
    print("written", record("workers", result))
    return result


if __name__ == "__main__":
    main()
