"""Persons formed from scratch, in generation order and shuffled: does the load order matter?

    python -m bench.mpi_cluster --people 20000                     # hub ingest, then one re-match
    python -m bench.mpi_cluster --people 20000 --mode incremental  # matched as Patients arrive

Each run ingests the synthetic region's Patients into a fresh SQLite event store (in generation
order, then in a shuffled order), and either builds the candidate index and runs ``rematch_all``
into the identity service (``rematch``) or follows the log with the ``IncrementalMatcher`` while
the Patients arrive in batches of 50 (``incremental``). It prints, per order, the persons formed,
pair precision and recall against the generator's truth, wall and CPU seconds of the matching,
and whether both orders gave the same partition and the same person ids.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson

from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub
from hub.core.store import ResourceStore
from hub.mpi import weights as W
from hub.mpi.candidates import IdentityCandidates
from hub.mpi.identity import IdentityService
from hub.mpi.incremental import IncrementalMatcher, blocked_from_pairs, rematch_all
from hub.mpi.matcher import Matcher
from hub.synth import Region
from projections.person import PersonProjection
from projections.runner import Runner


def pairs_in(groups) -> set[tuple[str, str]]:
    """Every pair of members of each group, each pair sorted."""
    out = set()
    for m in groups:
        m = sorted(m)
        out.update((a, b) for i, a in enumerate(m) for b in m[i + 1:])
    return out


def _ingest(store, patients) -> None:
    bad = [r for r in Hub(store).ingest(((orjson.dumps(d), d) for d in patients), Context())
           if isinstance(r, FhirError)]
    assert not bad, bad[:1]


def run(order: list[dict], work: Path, mode: str) -> tuple[dict[str, str], float, float]:
    """Patient -> person after matching ``order`` from scratch; wall and CPU s of the matching."""
    store = ResourceStore.sqlite(str(work / "events.sqlite"))
    person = PersonProjection(work / "person.sqlite")
    svc = IdentityService(store, person, Runner(store, person))
    index = IdentityCandidates(work / "identity-candidates.sqlite")
    try:
        if mode == "rematch":
            _ingest(store, order)
            index.reset()
            Runner(store, index).catch_up()
            if index.bulk:
                index.caught_up()
            svc.roles = lambda: index.roles
            t, cpu = time.perf_counter(), time.process_time()
            rematch_all(index, Matcher(index, W.load()), None,
                        blocked_from_pairs(svc.blocked_pairs), decide_many=svc.auto_decide_many)
        else:
            svc.roles = lambda: index.roles
            follower = Runner(store, IncrementalMatcher(
                index, Matcher(index, W.load()), svc.auto_decide,
                blocked_from_pairs(svc.blocked_pairs), decide_many=svc.auto_decide_many))
            t, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(order), 50):  # arrivals in small batches, matched as they come
                _ingest(store, order[i:i + 50])
                follower.catch_up()
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        svc.sync()
        with person.read() as c:
            c.execute("SELECT patient FROM p_patient")
            state = {r[0]: person.person_of(c, r[0]) for r in c.fetchall()}
    finally:
        person.close()
        index.close()
        store.close()
    return state, wall, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--mode", choices=("rematch", "incremental"), default="rematch")
    args = ap.parse_args(argv)
    patients, truth = [], {}
    for resources, tr in Region(seed=args.seed, people=args.people).iter_people():
        for p, t in zip([r for r in resources if r["resourceType"] == "Patient"], tr):
            patients.append(p)
            truth[f"Patient/{p['id']}"] = t.person_key
    by_truth = defaultdict(list)
    for p, k in truth.items():
        by_truth[k].append(p)
    true = pairs_in(by_truth.values())
    out: dict = {"mode": args.mode, "people": args.people}
    states = {}
    for name, order in (("generated", patients),
                        ("shuffled", random.Random(5).sample(patients, len(patients)))):
        with tempfile.TemporaryDirectory() as tmp:
            state, wall, cpu = run(order, Path(tmp), args.mode)
        groups = defaultdict(list)
        for p, x in state.items():
            groups[x].append(p)
        found = pairs_in(groups.values())
        tp = len(found & true)
        states[name] = state
        out[name] = {"patients": len(state), "persons": len(groups), "wall_s": round(wall, 1),
                     "cpu_s": round(cpu, 1), "precision": round(tp / len(found), 5),
                     "recall": round(tp / len(true), 5)}

    def partition(s):
        g = defaultdict(list)
        for p, x in s.items():
            g[x].append(p)
        return sorted(sorted(v) for v in g.values())

    out["same_partition"] = partition(states["generated"]) == partition(states["shuffled"])
    out["same_person_ids"] = states["generated"] == states["shuffled"]
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
