"""Master patient index matching: accuracy against the generator's truth, and speed.

Accuracy: a synthetic region's Patients (``hub.synth.Region``, with its identity noise) are indexed in
the real SQLite candidate index (``hub.mpi.candidates``, fed directly, no event store),
then every Patient is matched against those indexed before it (each pair once, as a full re-match
does). Pairs graded ``certain`` are the automatic links; ``probable`` ones go to the review queue.
Against the truth's person keys:

- precision and recall of automatic links, pairwise, both of the links themselves (``direct``) and of
  the persons they form (``clustered``: links closed transitively, what the Person projection shows);
- the review queue: probable pairs, Patients with one, and how many of those pairs are true;
- the same per noise kind (a pair counts under every kind either of its Patients carries);
- all of it again with the resident ID number withheld (every ``urn:oid:2.16.156.10011.1.3`` dropped).

Speed: incremental match of one new Patient (its features, blocking lookups, scoring) p50/p95 with
the region indexed; the full re-match's wall and CPU time; peak RSS of this process.

    python -m bench.mpi --people 5000              # ~10,000 Patients
    python -m bench.mpi --people 500000 --speed-only
    python -m bench.mpi --people 50000 --speed-only --record   # + the re-match recorded
    python -m bench.mpi --speed-people 500000 --record-only --name mpi-record-1m

``--record``: the region's Patients are ingested into a real SQLite event store (``Hub.ingest``,
not timed in the re-match), the candidate index is built from the log, then what ``hub mpi
rematch`` does runs: every Patient matched, every decision recorded as identity events through
``IdentityService.auto_decide_many`` (person projection synced); wall and CPU time, peak RSS.
Runs named ``mpi-record-*`` are added to ``summary_rows`` of ``mpi.json`` when it is written.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.common import record, rss_peak_mb
from hub.mpi import weights as W
from hub.mpi.incremental import blocked_from_pairs, rematch_all
from hub.mpi.matcher import Matcher
from hub.mpi.normalise import RESIDENT_ID, features
from hub.synth import NOISE_KINDS, Region
from hub.mpi.candidates import IdentityCandidates


def region_patients(people: int, seed: int, withhold_id: bool = False):
    """[(features, person key, noise kinds)] of a region's Patients, in generation order."""
    out = []
    for resources, truth in Region(seed=seed, people=people).iter_people():
        patients = [r for r in resources if r["resourceType"] == "Patient"]
        for p, t in zip(patients, truth):
            if withhold_id:
                p["identifier"] = [i for i in p["identifier"] if i.get("system") != RESIDENT_ID]
            out.append((features(p), t.person_key, t.noise_kinds))
    return out


def build_index(path: Path, feats: list[dict], batch: int = 20000) -> IdentityCandidates:
    index = IdentityCandidates(path)
    index.reset()
    for i in range(0, len(feats), batch):
        index.put(feats[i:i + batch])
    index.caught_up()
    return index


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        p = self.parent.setdefault(x, x)
        while p != self.parent.get(p, p):
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        return p

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def rematch(index: IdentityCandidates, matcher: Matcher) -> tuple[list[tuple[str, str]], list[tuple[str, str]], float, float]:
    """Every pair once: (certain pairs, probable pairs, wall s, CPU s)."""
    links, review = [], []
    t, cpu = time.perf_counter(), time.process_time()
    for pk, f in index.iter_all():
        for c in matcher.match(f, min_pk=pk):
            (links if c.grade == "certain" else review if c.grade == "probable" else []).append((f["ref"], c.ref))
    return links, review, time.perf_counter() - t, time.process_time() - cpu


def _pairs_of_groups(groups: dict[str, list[str]]) -> set[frozenset[str]]:
    out = set()
    for members in groups.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                out.add(frozenset((a, b)))
    return out


def pr(found: set, true: set) -> dict:
    """Precision and recall of ``found`` pairs against the ``true`` ones."""
    tp = len(found & true)
    return {"links": len(found), "true_pairs": len(true), "correct": tp,
            "precision": round(tp / len(found), 5) if found else None,
            "recall": round(tp / len(true), 5) if true else None}


def linkage(rows, links):
    """(noise by ref, Patients by true person, true pairs, clusters the links make, their pairs,
    union-find) of ``rows`` (features, person key, noise kinds) and the matcher's ``links``."""
    noise = {f["ref"]: kinds for f, _, kinds in rows}
    by_person = defaultdict(list)
    for f, key, _ in rows:
        by_person[key].append(f["ref"])
    uf = _Union()
    for a, b in links:
        uf.union(a, b)
    clusters = defaultdict(list)
    for f, _, _ in rows:
        clusters[uf.find(f["ref"])].append(f["ref"])
    return noise, by_person, _pairs_of_groups(by_person), clusters, _pairs_of_groups(clusters), uf


def evaluate(rows, links, review) -> dict:
    noise, by_person, truth, _, clustered, _ = linkage(rows, links)
    direct = {frozenset(p) for p in links}
    review_pairs = {frozenset(p) for p in review} - clustered

    out = {"patients": len(rows), "persons": len(by_person), "true_pairs": len(truth),
           "direct": pr(direct, truth), "clustered": pr(clustered, truth),
           "review_queue": {"pairs": len(review_pairs),
                            "patients": len({r for p in review_pairs for r in p}),
                            "true": len(review_pairs & truth),
                            "true_missed_by_links": len((review_pairs & truth) - clustered)}}
    per = {}
    for kind in NOISE_KINDS:
        def has(p, kind=kind):
            a, b = tuple(p)
            return kind in noise[a] or kind in noise[b]
        t_k = {p for p in truth if has(p)}
        if not t_k:
            continue
        c_k = {p for p in clustered if has(p)}
        r_k = {p for p in review_pairs if has(p)}
        per[kind] = {**pr(c_k, t_k), "review_pairs": len(r_k), "review_true": len(r_k & t_k)}
    out["per_noise_kind"] = per
    false_links = [tuple(p) for p in clustered - truth][:20]
    out["false_link_examples"] = [[a, noise[a], b, noise[b]] for a, b in false_links]
    return out


def accuracy(people: int, seed: int, weights: W.Weights, workdir: Path, withhold_id: bool) -> dict:
    rows = region_patients(people, seed, withhold_id)
    index = build_index(workdir / f"acc-{int(withhold_id)}.sqlite", [f for f, _, _ in rows])
    try:
        links, review, wall, cpu = rematch(index, Matcher(index, weights))
        res = evaluate(rows, links, review)
        res["rematch_wall_s"], res["rematch_cpu_s"] = round(wall, 2), round(cpu, 2)
        res["blocks_over_cap"] = dict(index.alerts.counts)
        return res
    finally:
        index.close()


def speed(people: int, seed: int, weights: W.Weights, workdir: Path, probes: int = 1000,
          full_rematch: bool = True) -> dict:
    """Index a region streaming (constant memory), holding ``probes`` Patients back; then time each
    held-back Patient's incremental match: normalisation, indexing it (one transaction) and matching
    it against everything indexed. Then the full re-match."""
    out: dict = {"people": people}
    rng = random.Random(seed)
    rate = probes / max(1.0, people * 2.1)
    held: list[dict] = []
    index = IdentityCandidates(workdir / "speed.sqlite")
    index.reset()
    batch: list[dict] = []
    n = 0
    t = time.perf_counter()
    for resources, _ in Region(seed=seed, people=people).iter_people():
        for p in resources:
            if p["resourceType"] != "Patient":
                break
            if len(held) < probes and rng.random() < rate:
                held.append(p)
                continue
            batch.append(features(p))
            n += 1
        if len(batch) >= 20000:
            index.put(batch)
            batch = []
    index.put(batch)
    index.caught_up()
    out["generate_and_index_s"] = round(time.perf_counter() - t, 1)
    out["patients_indexed"] = n
    matcher = Matcher(index, weights)
    times = []
    for p in held:
        t = time.perf_counter()
        f = features(p)
        index.put([f])
        matcher.match(f)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    out["incremental_probes"] = len(times)
    out["incremental_ms"] = {"p50": round(times[len(times) // 2], 2),
                             "p95": round(times[int(len(times) * 0.95)], 2),
                             "p99": round(times[int(len(times) * 0.99)], 2)}
    print("incremental:", out["incremental_ms"], "with", n, "Patients indexed", flush=True)
    if full_rematch:
        # what ``hub mpi rematch`` does: every Patient matched against all, a decision each
        total = index.size()
        t, cpu = time.perf_counter(), time.process_time()
        counts = rematch_all(index, matcher, lambda *a: None)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        out["rematch"] = {"patients": total, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                          "decisions": counts, "per_patient_ms": round(wall / total * 1000, 3),
                          "peak_rss_mb_after": round(rss_peak_mb(), 1)}
    out["db_mb"] = round(os.path.getsize(workdir / "speed.sqlite") / 2**20, 1)
    out["blocks_over_cap"] = dict(index.alerts.counts)
    index.close()
    out["peak_rss_mb"] = round(rss_peak_mb(), 1)
    return out


def recorded_rematch(people: int, seed: int, weights: W.Weights, workdir: Path) -> dict:
    """Ingest the region's Patients into a SQLite event store, build the candidate index from
    the log, then ``hub mpi rematch``: match every Patient and record each decision through
    ``IdentityService.auto_decide_many``."""
    import orjson

    from hub.core.errors import FhirError
    from hub.core.ingest import Context, Hub
    from hub.mpi.identity import IdentityService
    from hub.core.store import ResourceStore
    from projections.person import PersonProjection
    from projections.runner import Runner

    out: dict = {"people": people}
    store = ResourceStore.sqlite(str(workdir / "events.sqlite"))
    try:
        def patients():
            for resources, _ in Region(seed=seed, people=people).iter_people():
                for d in resources:
                    if d["resourceType"] != "Patient":
                        break
                    yield orjson.dumps(d), d

        t = time.perf_counter()
        n = sum(1 for r in Hub(store).ingest(patients(), Context())
                if not isinstance(r, FhirError))
        out["ingest_s"], out["patients"] = round(time.perf_counter() - t, 1), n
        print("ingested", n, "Patients in", out["ingest_s"], "s", flush=True)
        t, cpu = time.perf_counter(), time.process_time()
        index = IdentityCandidates(workdir / "identity-candidates.sqlite")
        index.reset()  # a bulk load, as ``hub projections rebuild`` builds it
        Runner(store, index).catch_up()
        if index.bulk:
            index.caught_up()
        out["index_from_log_s"] = round(time.perf_counter() - t, 1)
        out["index_from_log_cpu_s"] = round(time.process_time() - cpu, 1)
        print("candidate index from the log in", out["index_from_log_s"], "s", flush=True)
        person = PersonProjection(workdir / "person.sqlite")
        service = IdentityService(store, person, Runner(store, person))
        try:
            matcher = Matcher(index, weights)
            t, cpu = time.perf_counter(), time.process_time()
            counts = rematch_all(index, matcher, None, blocked_from_pairs(service.blocked_pairs),
                                 decide_many=service.auto_decide_many)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            stats = person.stats()
            events = person.stream_version()
        finally:
            person.close()
            index.close()
        total = sum(counts.values())
        out["rematch_recorded"] = {
            "patients": total, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "decisions": counts, "identity_events": events, "persons": stats["p_person"],
            "open_reviews": stats["p_review"], "per_patient_ms": round(wall / total * 1000, 3),
            "decisions_per_s": round(total / wall), "peak_rss_mb_after": round(rss_peak_mb(), 1)}
        print("recorded re-match:", out["rematch_recorded"], flush=True)
    finally:
        store.close()
    out["event_store_mb"] = round(sum(os.path.getsize(p) for p in workdir.glob("events.sqlite*"))
                                  / 2**20, 1)
    out["person_mb"] = round(sum(os.path.getsize(p) for p in workdir.glob("person.sqlite*"))
                             / 2**20, 1)
    return out


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(measure, result, goal) rows for bench/results/summary.md (``bench.__main__._mpi_rows``).
    Accuracy runs recorded in ``mpi-accuracy-*.json`` and recorded re-matches in
    ``mpi-record-*.json`` beside this result are added."""
    import json

    from bench.common import RESULTS

    rows = []
    runs = [result] + [json.loads(p.read_text()) for p in sorted(RESULTS.glob("mpi-accuracy-*.json"))]
    for run in runs:
        for label, note in (("accuracy", ""), ("accuracy_id_withheld", ", ID number withheld")):
            a = run.get(label)
            if not a:
                continue
            c, q = a["clustered"], a["review_queue"]
            rows.append((f"automatic links, {a['patients']:,} Patients{note}: precision / recall; "
                         "review queue Patients",
                         f"{c['precision']} / {c['recall']}; {q['patients']:,}", ">= 0.999 / >= 0.98"))
    sp = result.get("speed")
    if sp:
        m = sp["incremental_ms"]
        rows.append((f"incremental match p50 / p95 ms, {sp['patients_indexed']:,} Patients indexed",
                     f"{m['p50']} / {m['p95']}", "p95 < 50"))
        if "rematch" in sp:
            r = sp["rematch"]
            rows.append((f"full re-match of {r['patients']:,} Patients: wall s (CPU s); peak RSS MB",
                         f"{r['wall_s']} ({r['cpu_s']}); {r['peak_rss_mb_after']}", "< 900; < 4096"))
    recs = [(result.get("record") or {}).get("rematch_recorded")]
    recs += [json.loads(p.read_text()).get("record", {}).get("rematch_recorded")
             for p in sorted(RESULTS.glob("mpi-record-*.json"))]
    for rec in filter(None, recs):
        rows.append((f"full re-match of {rec['patients']:,} Patients, decisions recorded "
                     "(SQLite event store, auto_decide_many): wall s (CPU s); peak RSS MB",
                     f"{rec['wall_s']} ({rec['cpu_s']}); {rec['peak_rss_mb_after']}",
                     "< 900 at 1M; < 4096"))
    return rows


def train_shipped(people: int = 20000, seed: int = 3) -> Path:
    """Re-estimate the shipped weights (``hub/mpi/data/weights-1.json``) on a generated region, as
    ``hub mpi train`` does on a platform's data; thresholds and settings kept."""
    import json

    from hub.mpi import train
    from hub.mpi.normalise import DATA

    shipped = DATA / "weights-1.json"
    old = json.loads(shipped.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="bench-mpi-train-") as tmp:
        rows = region_patients(people, seed)
        index = build_index(Path(tmp) / "ic.sqlite", [f for f, _, _ in rows])
        _, path = train.run(index, Path(tmp), sample=people, base=W.Weights(old))
        index.close()
        new = json.loads(path.read_text(encoding="utf-8"))
    new.update(version="1", thresholds=old["thresholds"], dependent=old.get("dependent", {}),
               combined=old.get("combined", []), twin=old.get("twin", {}))
    new["trained"]["source"] = (f"synthetic region seed {seed}, {people:,} people (hub.synth): "
                                "python -m bench.mpi --train-shipped")
    shipped.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return shipped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--speed-people", type=int, default=None, help="region size of the speed part")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--accuracy-only", action="store_true")
    ap.add_argument("--no-rematch", action="store_true", help="speed: skip the full re-match")
    ap.add_argument("--record", action="store_true",
                    help="speed: also re-match through a SQLite event store, recording decisions")
    ap.add_argument("--record-only", action="store_true",
                    help="only the recorded re-match (--record), at --speed-people or --people")
    ap.add_argument("--name", default="mpi")
    ap.add_argument("--train-shipped", action="store_true",
                    help="re-estimate hub/mpi/data/weights-1.json on a generated region, then stop")
    args = ap.parse_args(argv)
    if args.train_shipped:
        print("written", train_shipped())
        return
    weights = W.load()
    result: dict = {"weights_version": weights.version, "thresholds": weights.thresholds,
                    "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-mpi-") as tmp:
        work = Path(tmp)
        if args.record_only:
            args.speed_only = args.accuracy_only = args.record = True
            rec = work / "record"
            rec.mkdir()
            result["record"] = recorded_rematch(args.speed_people or args.people, args.seed,
                                                weights, rec)
        if not args.speed_only:
            result["accuracy"] = accuracy(args.people, args.seed, weights, work, False)
            result["accuracy_id_withheld"] = accuracy(args.people, args.seed, weights, work, True)
            for label in ("accuracy", "accuracy_id_withheld"):
                a = result[label]
                print(f"{label}: {a['patients']} Patients, clustered {a['clustered']}, direct {a['direct']}, "
                      f"review {a['review_queue']}")
                for kind, v in a["per_noise_kind"].items():
                    print(f"   {kind:30} P={v['precision']} R={v['recall']} true={v['true_pairs']} "
                          f"review={v['review_pairs']}")
        if not args.accuracy_only:
            result["speed"] = speed(args.speed_people or args.people, args.seed, weights, work,
                                    full_rematch=not args.no_rematch)
            print("speed:", result["speed"])
            if args.record:
                rec = work / "record"
                rec.mkdir()
                result["record"] = recorded_rematch(args.speed_people or args.people, args.seed,
                                                    weights, rec)
    result["peak_rss_mb"] = round(rss_peak_mb(), 1)
    if args.name == "mpi":
        result["summary_rows"] = summary_rows(result)
    print("written", record(args.name, result))


if __name__ == "__main__":
    main()
