"""``hub mpi train``: estimate weights from the platform's own Patients (no truth needed).

A random sample of indexed Patients gives two sets of comparison levels: each sampled Patient against
its blocked candidates (mostly the same person: EM separates them), and against other random sampled
Patients (nearly always different people: the ``u`` probabilities). ``hub.mpi.weights.train`` does
the estimation; the result is saved as the next version.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.mpi import blocking, weights
from hub.mpi.compare import compare


def pairs(index: Any, sample: int, seed: int = 1,
          progress: Callable[[int], object] | None = None) -> tuple[list[dict], list[dict]]:
    """(levels of blocked pairs, levels of random pairs) over a sample of the index."""
    chosen = index.sample(sample, seed)
    blocked, rand = [], []
    for f in chosen:
        found, _, _ = index.lookup(blocking.hashed(f))
        for _, g in found:
            if g["ref"] != f["ref"]:
                blocked.append(compare(f, g)[0])
        if progress is not None:
            progress(1)
    rng = random.Random(seed)
    for _ in range(20):
        other = chosen[:]
        rng.shuffle(other)
        rand.extend(compare(a, b)[0] for a, b in zip(chosen, other) if a["ref"] != b["ref"])
    return blocked, rand


def run(index: Any, data_dir: Path, sample: int = 20000, base: weights.Weights | None = None,
        progress: Callable[[int], object] | None = None) -> tuple[weights.Weights, Path]:
    """Train from the index and save the next version; (the new weights, their file)."""
    base = base or weights.load(data_dir)
    blocked, rand = pairs(index, sample, progress=progress)
    if not blocked or not rand:
        raise ValueError("too few indexed Patients to estimate weights from")
    config = weights.train(blocked, rand, base)
    path = weights.save(config, data_dir)
    return weights.load(data_dir, version=config_version(path)), path


def config_version(path: Path) -> str:
    return path.stem.split("-", 1)[1]
