"""``hub mpi train``: estimate weights from the platform's own Patients (no truth needed).

A random sample of indexed Patients gives two sets of comparison levels: each sampled Patient against
its blocked candidates, pass by pass (``blocking.passes``: the candidates met through the ID keys,
the phone, the name keys ...; mostly the same person: EM separates them), and against other random
sampled Patients (nearly always different people: the ``u`` probabilities). ``hub.mpi.weights.train``
does the estimation.

A trained model is activated (saved as the next version, which ``weights.load`` takes) only if it
does at least as well as the active one on the decisions data stewards made (``steward_decisions``:
reviews accepted or rejected, pairs marked not-duplicate): no more of their different-people pairs
linked automatically, no more of their same-person pairs left below review. Otherwise it is kept
aside in ``mpi/rejected/`` with the comparison, and the active model stays.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hub.mpi import blocking, weights
from hub.mpi.compare import compare, count_terms


def pairs(index: Any, sample: int, seed: int = 1,
          progress: Callable[[int], object] | None = None) -> tuple[dict[str, tuple], list[dict]]:
    """({pass: (excluded fields, [levels of its blocked pairs])}, [levels of random pairs]) over a
    sample of the index."""
    chosen = index.sample(sample, seed)
    by_pass: dict[str, tuple[tuple[str, ...], list[dict]]] = {
        name: (excluded, []) for name, (_, excluded) in blocking.passes().items()}
    for f in chosen:
        hashed = blocking.hashed(f)
        for name, (kinds, _) in blocking.passes().items():
            keys = [k for k in hashed if k[0] in kinds]
            if not keys:
                continue
            found, _, _ = index.lookup(keys)
            by_pass[name][1].extend(compare(f, g)[0] for _, g in found if g["ref"] != f["ref"])
        if progress is not None:
            progress(1)
    rng = random.Random(seed)
    rand: list[dict] = []
    for _ in range(20):
        other = chosen[:]
        rng.shuffle(other)
        rand.extend(compare(a, b)[0] for a, b in zip(chosen, other) if a["ref"] != b["ref"])
    return {k: v for k, v in by_pass.items() if v[1]}, rand


def steward_decisions(person: Any) -> list[tuple[str, str, bool]]:
    """(Patient, Patient, same person?) of the decisions stewards made: pairs marked
    not-duplicate, candidates of rejected reviews (different), and of accepted reviews the candidate
    the Patient was linked with (same)."""
    out = [(*sorted(p), False) for p in person.blocked_pairs()]
    after = 0
    while True:
        rows = person.reviews(status="closed", limit=1000, after_seq=after)
        if not rows:
            return out
        for r in rows:
            after = r["seq"]
            if r["outcome"] == "rejected":
                out.extend((r["patient"], c, False) for c in r["candidates"])
            elif r["outcome"] == "accepted":
                persons = person.persons_of([r["patient"], *r["candidates"]])
                out.extend((r["patient"], c, True) for c in r["candidates"]
                           if persons.get(c) is not None and persons.get(c) == persons.get(r["patient"]))


def judge(index: Any, w: weights.Weights, decisions: Iterable[tuple[str, str, bool]]) -> dict[str, int]:
    """How a model does on stewards' decisions: different people it would link automatically
    (``wrong_links``), the same person it would leave below review (``missed``)."""
    from hub.mpi.matcher import Matcher

    m = Matcher(index, w)
    total = index.size()
    out = {"decisions": 0, "wrong_links": 0, "missed": 0}
    for a, b, same in decisions:
        fa, fb = index.features_of(a), index.features_of(b)
        if fa is None or fb is None:
            continue
        counts = {n: index.name_count(n) for n in count_terms(fa)}
        c = m.score(fa, fb, counts, total, counted=index.counts_complete())
        out["decisions"] += 1
        if not same and c.grade == "certain":
            out["wrong_links"] += 1
        elif same and c.grade not in ("certain", "probable"):
            out["missed"] += 1
    return out


def run(index: Any, data_dir: Path, sample: int = 20000, base: weights.Weights | None = None,
        progress: Callable[[int], object] | None = None,
        decisions: Iterable[tuple[str, str, bool]] = ()) -> tuple[weights.Weights, Path]:
    """Train from the index; activate the result only if it does at least as well as ``base`` (the
    active model) on ``decisions`` (``steward_decisions``). (The active weights, the file
    written: the new version, or the rejected one.)"""
    base = base or weights.load(data_dir)
    by_pass, rand = pairs(index, sample, progress=progress)
    if not by_pass or not rand:
        raise ValueError("too few indexed Patients to estimate weights from")
    config = weights.train(by_pass, rand, base)
    decisions = list(decisions)
    old, new = judge(index, base, decisions), judge(index, weights.Weights({**config, "version": "new"}), decisions)
    config["trained"]["stewards"] = {"active": old, "trained": new}
    if new["wrong_links"] > old["wrong_links"] or new["missed"] > old["missed"]:
        folder = Path(data_dir) / "mpi" / "rejected"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"weights-{config['trained']['at'].replace(':', '')}.json"
        path.write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return base, path
    path = weights.save(config, data_dir)
    return weights.load(data_dir, version=config_version(path)), path


def config_version(path: Path) -> str:
    return path.stem.split("-", 1)[1]
