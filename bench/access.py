"""What access control and the access audit cost, and whether the audit is complete.

One generated region, loaded with ``hub ingest``, is copied and served twice at once: without
access control and audit (``HUB_AUTH=0 HUB_AUDIT=0``, the baseline) and with both (an
administrator client's token from the hub's own token endpoint, every read audited). wrk drives
one server at a time, 4 connections, ``--seconds`` per run, in turn for ``--rounds`` rounds:
reads of Patients by id, then Observation searches by subject, spread over the region. Reported:
the medians' requests/s ratio (with / without) and read p50 difference in ms, each round's
rate (the machine is shared: taking the two in turn puts its drift on both), and the server
process's CPU time per request (its ratio with / without says what the checks and the audit cost
the server, apart from what latency does to 4 connections' rate).

Completeness: against the audited server a Python client makes a known mix of reads, vreads,
searches, history and writes; the AuditEvents the audit log gained must equal the accesses to
patient data exactly (writes are in the event log already and are not counted).

    .venv/bin/python -m bench.access [--people 300] [--seconds 6] [--rounds 3] [--no-audit]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import psutil

from bench.common import generated, record
from bench.server import start_server

CONNECTIONS = 4


def _load(data_dir: str, people: int) -> tuple[list[str], list[str]]:
    """The region in the store; (Patient ids, Observation subjects)."""
    items = generated(people)
    region = Path(data_dir) / "region.ndjson"
    region.write_bytes(b"\n".join(items) + b"\n")
    env = {**os.environ, "HUB_DATA_DIR": data_dir}
    env.pop("HUB_DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "hub.cli", "ingest", str(region), "--quiet"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    patients, subjects = [], set()
    for raw in items:
        d = orjson.loads(raw)
        if d["resourceType"] == "Patient":
            patients.append(d["id"])
        elif d["resourceType"] == "Observation":
            subjects.add(d["subject"]["reference"])
    return patients, sorted(subjects)


def _measured(proc, port: int, paths: list[str], seconds: int, token: str | None,
              work: Path) -> dict:
    """A wrk run, with the server process's CPU time per request (user + system, its threads
    included): what each request cost the server, whatever the latency did to the rate."""
    cpu = psutil.Process(proc.pid)
    before = sum(cpu.cpu_times()[:2])
    out = _wrk(port, paths, seconds, token, work)
    used = sum(cpu.cpu_times()[:2]) - before
    out["cpu_us_per_request"] = round(used / max(1.0, out["per_s"] * seconds) * 1e6, 1)
    return out


def _wrk(port: int, paths: list[str], seconds: int, token: str | None, work: Path) -> dict:
    script = work / "paths.lua"
    listed = ",".join(f'"{p}"' for p in paths)
    script.write_text(f"local paths = {{{listed}}}\n"
                      "request = function()\n"
                      "  return wrk.format('GET', paths[math.random(#paths)])\n"
                      "end\n")
    cmd = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
           "-H", "Accept: application/fhir+json"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                         check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"per_s": rate, "p50_ms": p50, "p99_ms": p99, "non_2xx": int(bad.group(1)) if bad else 0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def _median(runs: list[dict]) -> dict:
    """Per figure, the median over the rounds."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _serve(data_dir: str, port: int, protected: bool, audit: bool = True):
    os.environ["HUB_AUTH"] = "1" if protected else "0"
    os.environ["HUB_AUDIT"] = "1" if protected and audit else "0"
    os.environ["HUB_MPI_AUTOMATCH"] = "0"
    try:
        return start_server(data_dir, port)
    finally:
        os.environ["HUB_AUTH"] = os.environ["HUB_AUDIT"] = "0"


def _stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def _audit_count(data_dir: str) -> int:
    from hub.access.auditlog import open_audit_log

    log = open_audit_log(Path(data_dir), None)
    try:  # stored, and spooled by the server but not yet moved (counted once)
        stored = {r.id for r in log.rows()}
        return len(stored | {e.id for e in log.spool.pending()})
    finally:
        log.engine.dispose()


def _completeness(base: str, auth, patients: list[str], subjects: list[str],
                  data_dir: str) -> dict:
    """A known mix of accesses; the AuditEvents gained must equal the reads of patient data."""
    before = _audit_count(data_dir)
    accesses = writes = 0
    with httpx.Client(base_url=base, auth=auth, timeout=30,
                      headers={"accept": "application/fhir+json"}) as c:
        for i, pid in enumerate(patients[:100]):
            assert c.get(f"/Patient/{pid}").status_code == 200
            assert c.get(f"/Patient/{pid}/_history/1").status_code == 200
            assert c.get("/Observation", params={"subject": subjects[i % len(subjects)],
                                                 "_count": "5"}).status_code == 200
            accesses += 3
            if i % 4 == 0:
                assert c.get(f"/Patient/{pid}/_history").status_code == 200
                accesses += 1
            if i % 5 == 0:
                r = c.get(f"/Patient/missing-{i}")
                assert r.status_code == 404  # a refused or failed access is audited too
                accesses += 1
            if i % 2 == 0:
                r = c.post("/Observation", content=orjson.dumps({
                    "resourceType": "Observation", "status": "final",
                    "code": {"text": "bench"}, "subject": {"reference": f"Patient/{pid}"}}),
                    headers={"content-type": "application/fhir+json"})
                assert r.status_code == 201, r.text
                writes += 1
            assert c.get("/Organization", params={"_count": "1"}).status_code == 200  # not audited
    time.sleep(0.5)
    gained = _audit_count(data_dir) - before
    return {"accesses_to_patient_data": accesses, "writes": writes, "audit_events_gained": gained,
            "exact": gained == accesses}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.access")
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--seconds", type=int, default=6, help="length of one wrk run")
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of each kind on each server, taken in turn; medians compared")
    p.add_argument("--port", type=int, default=18091)
    p.add_argument("--no-audit", action="store_true",
                   help="the protected server without the access audit: what token checking "
                        "alone costs (recorded as access-no-audit)")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("bench.access needs wrk (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="hub-bench-access-"))
    data_dir = str(work / "var")
    Path(data_dir).mkdir()
    patients, subjects = _load(data_dir, args.people)
    open_dir = str(work / "var-open")
    shutil.copytree(data_dir, open_dir)  # the same data, a server of its own
    paths = {"read": [f"/fhir/Patient/{pid}" for pid in patients],
             "search": [f"/fhir/Observation?subject={s}&_count=10" for s in subjects]}
    out: dict = {"people": args.people, "patients": len(patients), "seconds": args.seconds,
                 "rounds": args.rounds, "connections": CONNECTIONS}
    from hub.auth.backend_client import BackendServicesAuth, new_key, public_jwks
    from hub.auth.clients import open_registry

    key = new_key()
    client = open_registry(Path(data_dir)).add("bench", public_jwks(key), roles=("admin",),
                                               scopes="system/*.cruds")
    procs = []
    try:
        # both servers up at once, measured in turn: a drift of the machine's load over the run
        # falls on both alike, and the medians of several short rounds are compared
        open_proc = _serve(open_dir, args.port + 1, protected=False)
        procs.append(open_proc)
        protected_proc = _serve(data_dir, args.port, protected=True, audit=not args.no_audit)
        procs.append(protected_proc)
        auth = BackendServicesAuth(f"http://127.0.0.1:{args.port}/auth/token",
                                   client.client_id, key, "system/*.cruds")
        token = auth.token()
        runs: dict = {"open": {"read": [], "search": []}, "protected": {"read": [], "search": []}}
        for _ in range(args.rounds):
            for kind in ("read", "search"):
                runs["open"][kind].append(_measured(open_proc, args.port + 1, paths[kind],
                                                    args.seconds, None, work))
                runs["protected"][kind].append(_measured(protected_proc, args.port, paths[kind],
                                                         args.seconds, token, work))
        for side, kinds in runs.items():
            out[side] = {kind: _median(rs) for kind, rs in kinds.items()}
        out["rounds_per_s"] = {side: {kind: [r["per_s"] for r in rs] for kind, rs in kinds.items()}
                               for side, kinds in runs.items()}
        if not args.no_audit:
            out["completeness"] = _completeness(f"http://127.0.0.1:{args.port}/fhir", auth,
                                                patients, subjects, data_dir)
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    for kind in ("read", "search"):
        out[f"{kind}_throughput_ratio"] = round(
            out["protected"][kind]["per_s"] / out["open"][kind]["per_s"], 3)
    out["read_p50_added_ms"] = round(out["protected"]["read"]["p50_ms"]
                                     - out["open"]["read"]["p50_ms"], 3)
    for kind in ("read", "search"):  # the server's CPU per request, with / without
        out[f"{kind}_cpu_ratio"] = round(out["protected"][kind]["cpu_us_per_request"]
                                         / out["open"][kind]["cpu_us_per_request"], 3)
    record("access-no-audit" if args.no_audit else "access", out)
    print(out)
    return out


if __name__ == "__main__":
    main()
