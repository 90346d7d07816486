"""One person, one Person, whatever the load order: the same Patients loaded three ways, as a user
would, on the second noise model (``bench.foreign``: data the weights were not tuned on).

- ``http``: ``hub serve`` on an empty data directory, the Patients POSTed as batch Bundles of 100
  in generation order; the server's incremental matcher links them as they arrive; the links read
  with ``hub mpi export`` once every Patient has its decision;
- ``rematch``: ``hub ingest`` of an NDJSON file in generation order, then one ``hub mpi rematch``,
  then ``hub mpi export``;
- ``shuffled``: the same with the file shuffled.

For each: Persons, pair precision and recall of the links against the generator's truth. Between
each two: the share of Patient pairs put together by one and not the other (of the pairs either puts
together; the goal: within 0.2 %), and whether the partitions are the same. Patients the hub refuses
(impossible birth dates the generator writes) are left out of all three.

    python -m bench.mpi_orders --people 3000
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson

from bench.common import record
from bench.foreign import ForeignRegion
from bench.mpi_cluster import pairs_in
from bench.server import start_server
from hub.core.resource import model_class


def _hub(data_dir: Path, *args: str, out: Path | None = None) -> None:
    env = {**os.environ, "HUB_DATA_DIR": str(data_dir)}
    env.pop("HUB_DATABASE_URL", None)
    with open(out, "wb") if out else open(os.devnull, "wb") as sink:
        subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, check=True, stdout=sink,
                       stderr=subprocess.DEVNULL)


def _export(data_dir: Path, *flags: str) -> dict[str, str]:
    path = data_dir / "export.ndjson"
    _hub(data_dir, "mpi", "export", "--format", "ndjson", "--out", str(path), *flags)
    return {r["patient"]: r["person"] for r in map(orjson.loads, path.read_bytes().splitlines())}


def load_http(patients: list[dict], work: Path, port: int) -> tuple[dict[str, str], float]:
    t = time.perf_counter()
    proc = start_server(str(work), port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir", timeout=120) as c:
            for i in range(0, len(patients), 100):
                bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
                    {"resource": p, "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}
                    for p in patients[i:i + 100]]}
                r = c.post("", content=orjson.dumps(bundle),
                           headers={"content-type": "application/fhir+json"})
                assert r.status_code == 200, r.text[:500]
                bad = [e for e in r.json()["entry"] if not e["response"]["status"].startswith("20")]
                assert not bad, bad[:1]
        # the server decides in the background: wait until every Patient has its decision
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if len(_export(work, "--no-sync")) >= len(patients):
                break
            time.sleep(2)
        else:
            raise RuntimeError("the server's matcher did not decide every Patient in time")
    finally:
        proc.terminate()
        proc.wait(30)
    return _export(work), time.perf_counter() - t


def load_rematch(patients: list[dict], work: Path) -> tuple[dict[str, str], float]:
    t = time.perf_counter()
    src = work / "patients.ndjson"
    src.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    _hub(work, "ingest", str(src))
    _hub(work, "mpi", "rematch")
    return _export(work), time.perf_counter() - t


def partition(state: dict[str, str]) -> list[list[str]]:
    g = defaultdict(list)
    for p, x in state.items():
        g[x].append(p)
    return sorted(sorted(v) for v in g.values())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--port", type=int, default=18093)
    ap.add_argument("--name", default="mpi_orders")
    args = ap.parse_args(argv)
    patients, truth = [], {}
    refused = 0
    for p, key, _ in ForeignRegion(seed=args.seed, people=args.people).records():
        try:  # the generator writes some impossible dates (a lunar 30th): the hub refuses those
            model_class("Patient").model_validate(p)
        except ValueError:
            refused += 1
            continue
        patients.append(p)
        truth[f"Patient/{p['id']}"] = key
    by_truth = defaultdict(list)
    for p, k in truth.items():
        by_truth[k].append(p)
    true = pairs_in(by_truth.values())
    out: dict = {"people": args.people, "patients": len(patients), "true_pairs": len(true),
                 "refused_by_validation": refused}
    states: dict[str, dict[str, str]] = {}
    runs = (("http", lambda w: load_http(patients, w, args.port)),
            ("rematch", lambda w: load_rematch(patients, w)),
            ("shuffled", lambda w: load_rematch(random.Random(7).sample(patients, len(patients)), w)))
    for name, load in runs:
        with tempfile.TemporaryDirectory(prefix=f"bench-mpi-{name}-") as tmp:
            state, wall = load(Path(tmp))
        assert len(state) == len(patients), (name, len(state))
        found = pairs_in(partition(state))
        tp = len(found & true)
        states[name] = state
        out[name] = {"persons": len(set(state.values())), "links": len(found),
                     "precision": round(tp / len(found), 5) if found else None,
                     "recall": round(tp / len(true), 5), "wall_s": round(wall, 1)}
        print(name, out[name], flush=True)
    names = [n for n, _ in runs]
    out["differences"] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = pairs_in(partition(states[a])), pairs_in(partition(states[b]))
            either = pa | pb
            out["differences"][f"{a}|{b}"] = {
                "pairs_in_one_only": len(pa ^ pb),
                "share": round(len(pa ^ pb) / len(either), 5) if either else 0.0,
                "same_partition": partition(states[a]) == partition(states[b])}
    worst = max(d["share"] for d in out["differences"].values())
    out["summary_rows"] = [
        (f"Persons loaded three ways (HTTP with automatic matching; hub ingest + rematch; shuffled), "
         f"{len(patients):,} Patients of the second noise model: largest share of pairs linked by "
         "one and not another", f"{worst:.4%}", "<= 0.2 %"),
        ("... precision / recall of each (http; rematch; shuffled)",
         "; ".join(f"{out[n]['precision']} / {out[n]['recall']}" for n in names), ">= 0.999 / >= 0.98")]
    print(orjson.dumps(out["differences"], option=orjson.OPT_INDENT_2).decode())
    print("written", record(args.name, out))
    return out


if __name__ == "__main__":
    main()
