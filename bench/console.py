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
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import record

PAGES = ["/console/overview", "/console/overview?by=feed", "/console/connectors",
         "/console/quarantine", "/console/quality", "/console/identity", "/console/mapping",
         "/console/mapping?find_system=https://fhir-region-hub.example/CodeSystem/icd-10-structure&find=infect", "/console/jobs",
         "/console/terminology?q=gb", "/console/audit"]
# pages of one person, found through the console itself (a name search, then its links)
FOUND = [("record search", "/console/record?q={family}"),
         ("timeline", "/console/record/Patient/{pid}?purpose=TREAT"),
         ("resource", "/console/record/{resource}?purpose=TREAT"),
         ("identity history", "/console/identity/person?ref=Patient/{pid}"),
         ("audit search", "/console/audit?patient=Patient/{pid}")]


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


def _caught_up(client: httpx.Client, limit_s: float = 3600) -> float:
    """Seconds until every read model has the loaded region (a running hub is caught up; a
    page that waits for its model would otherwise measure the catching up)."""
    t = time.perf_counter()
    while time.perf_counter() - t < limit_s:
        checks = client.get("/ready").json().get("checks", {})
        lags = [c.get("lag", 0) for k, c in checks.items() if k.startswith("read-model:")]
        if lags and max(lags) < 50:
            break
        time.sleep(2)
    return round(time.perf_counter() - t, 1)


def _person_pages(client: httpx.Client) -> dict[str, str]:
    """One person's pages, their addresses read off the console's own links."""
    for family in ("王", "李", "张", "刘", "陈"):
        found = re.findall(r'href="/console/record/Patient/([^"?]+)"',
                           client.get(f"/console/record?q={family}").text)
        if found:
            break
    else:
        raise SystemExit("the name search found nobody")
    pid = found[0]
    timeline = client.get(f"/console/record/Patient/{pid}?purpose=TREAT").text
    opened = re.findall(r'href="/console/record/([A-Za-z]+/[^"?]+)\?purpose=TREAT"', timeline)
    values = {"family": family, "pid": pid, "resource": opened[0] if opened else f"Patient/{pid}"}
    return {name: path.format(**values) for name, path in FOUND}


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
        subprocess.run([hub, "terminology", "load", "--builtin"], env=env, check=True,
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
                caught_up_s = _caught_up(client)
                resources = int(client.get("/ready").json()["checks"]["event-store"]["position"])
                baseline = _times(client, "/fhir/metadata", n)
                pages = {p: _times(client, p, n) for p in PAGES}
                for name, path in _person_pages(client).items():
                    pages[name] = _times(client, path, n)
        finally:
            server.terminate()
            server.wait(30)
    base_p95 = _p(baseline, 95)
    result = {"people": people, "events": resources, "load_s": load_s, "n": n,
              "read_models_caught_up_s": caught_up_s,
              "load_average_at_start": os.getloadavg()[0],
              "baseline_metadata_ms": {"p50": _p(baseline, 50), "p95": base_p95},
              "pages": {p: {"p50": _p(v, 50), "p95": _p(v, 95),
                            "p95_ratio_to_metadata": round(_p(v, 95) / max(base_p95, 0.1), 1)}
                        for p, v in pages.items()}}
    print(result, flush=True)
    return result


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    worst = max(v["p95"] for v in r["pages"].values())
    slowest = max(r["pages"], key=lambda k: r["pages"][k]["p95"])
    return [(f"Console pages on {r['events']:,} events ({r['people']} people), logged in, one "
             f"client: p95 ms, the worst of {len(r['pages'])} pages",
             f"{worst} ({slowest}); median page p95 "
             f"{statistics.median(v['p95'] for v in r['pages'].values())}", "< 500 at 1 M")]


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
