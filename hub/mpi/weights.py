"""Fellegi-Sunter weights: m and u per comparison level, as versioned JSON configuration.

For a field at level ``l``, ``m`` = P(level l | same person) and ``u`` = P(level l | different people);
the level's weight is ``log2(m / u)`` and a pair's match weight is the sum over the fields both sides
have, plus the prior ``log2(λ / (1 - λ))`` (λ: the share of true matches among blocked pairs). The
score is the posterior probability ``1 / (1 + 2^-weight)``, and the grade comes from ``thresholds``
on it. The exact-name level is term-frequency adjusted: its ``u`` is the share of indexed Patients
carrying that very name (never below ``floor``), so a common name counts less than a rare one.
``dependent`` silences a field when another already said the same (the district when the phone
agrees: both point to a household, not to a person). ``combined`` bounds what fields say together:
a name and a birth date, however rare each, are shared by strangers in a region of tens of millions
(in the same district too), so name, birth date, sex and district, whichever are known, never weigh
more than ``max_weight`` bits together and a link needs one more agreement (an ID number, a phone, an address). ``twin`` is the pattern of twins (same birth date and surname, another given name,
the same household): the ``household`` fields then say nothing and the pattern weighs ``weight``.

A configuration is a file ``weights-<version>.json``: shipped in ``hub/mpi/data/``, and written by
``hub mpi train`` into ``$HUB_DATA_DIR/mpi/``; ``load`` takes the highest version found. ``train``
estimates it from the platform's own data without any truth: ``u`` from random pairs of Patients
(nearly all different people), and ``m`` and λ by expectation-maximisation over the blocked pairs
(which estimates their own ``u`` on the way, used only to tell the two classes apart).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hub.mpi.compare import FIELDS, LEVELS
from hub.mpi.normalise import DATA

_FILE = re.compile(r"^weights-(\d+)\.json$")
GRADES = ("certain", "probable", "possible")


class Weights:
    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.version = str(config["version"])
        self.ruleset = f"{config.get('ruleset', 'fs')}-v{self.version}"
        self.prior = float(config["prior"])
        self.prior_weight = math.log2(self.prior / (1 - self.prior))
        self.thresholds = {g: float(config["thresholds"][g]) for g in GRADES}
        self.table = {f: {lv: math.log2(p["m"] / p["u"]) for lv, p in levels.items()}
                      for f, levels in config["fields"].items()}
        tf = config.get("tf", {}).get("name", {})
        self.tf_floor = float(tf.get("floor", 1e-7))
        self.tf_on = bool(tf) and "exact" in config["fields"].get("name", {})
        # the field says nothing more when another is at the given level (an address shared with
        # the phone: both name a household, not a person)
        # {field: ((other field, level), ...)}; a single pair is the older form
        self.dependent = {f: ((tuple(v),) if isinstance(v[0], str) else tuple(tuple(x) for x in v))
                          for f, v in config.get("dependent", {}).items()}
        self.combined = [(tuple(c["fields"]), float(c["max_weight"])) for c in config.get("combined", [])]
        twin = config.get("twin") or {}
        self.twin_weight = float(twin.get("weight", 0.0))
        self.twin_household = tuple(twin.get("household", ()))
        self.m_name_exact = config["fields"]["name"]["exact"]["m"] if self.tf_on else 1.0

    def weight(self, field: str, level: str, name_share: float | None = None) -> float:
        if field == "name" and level == "exact" and self.tf_on and name_share is not None:
            return math.log2(self.m_name_exact / max(name_share, self.tf_floor))
        # a level this configuration doesn't know (trained before it existed) says nothing
        return self.table[field].get(level, 0.0)

    @staticmethod
    def probability(match_weight: float) -> float:
        return 1.0 / (1.0 + 2.0 ** (-max(-60.0, min(60.0, match_weight))))

    def grade(self, probability: float) -> str | None:
        for g in GRADES:
            if probability >= self.thresholds[g]:
                return g
        return None

    def table_text(self) -> str:
        """The m/u table as text (``hub mpi train`` prints it)."""
        lines = [f"weights version {self.version} (prior λ={self.prior:.4f})",
                 f"{'field':8} {'level':10} {'m':>9} {'u':>11} {'log2(m/u)':>10}"]
        for f, levels in self.config["fields"].items():
            for lv, p in levels.items():
                lines.append(f"{f:8} {lv:10} {p['m']:9.5f} {p['u']:11.7f} {self.table[f][lv]:10.2f}")
        return "\n".join(lines)


# -- files ---------------------------------------------------------------------------------------


def _versions(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _FILE.match(p.name)))


def load(data_dir: Path | None = None, version: str | None = None) -> Weights:
    """The configuration of ``version``, else the highest version (trained ones in
    ``data_dir/mpi`` and the shipped ones)."""
    found = _versions(DATA) + (_versions(Path(data_dir) / "mpi") if data_dir else [])
    if version is not None:
        found = [(v, p) for v, p in found if str(v) == str(version)]
        if not found:
            raise ValueError(f"no weights of version {version}")
    v, path = max(found)
    return Weights(json.loads(path.read_text(encoding="utf-8")))


def save(config: dict[str, Any], data_dir: Path) -> Path:
    """Write a configuration as the next version in ``data_dir/mpi``; its path."""
    folder = Path(data_dir) / "mpi"
    folder.mkdir(parents=True, exist_ok=True)
    top = max([v for v, _ in _versions(DATA) + _versions(folder)] or [0])
    config = {**config, "version": str(top + 1)}
    path = folder / f"weights-{top + 1}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# -- estimation ----------------------------------------------------------------------------------


def _pattern(levels: dict[str, str]) -> tuple:
    return tuple(levels.get(f) for f in FIELDS)


def _floored(p: dict[str, float], floor: float) -> dict[str, float]:
    raised = {k: max(v, floor) for k, v in p.items()}
    total = sum(raised.values())
    return {k: v / total for k, v in raised.items()}


def train(blocked: Iterable[dict[str, str]], random_pairs: Iterable[dict[str, str]],
          base: Weights, iterations: int = 40, smoothing: float = 0.5) -> dict[str, Any]:
    """A new configuration (without its version) from the comparison levels of blocked pairs and of
    random pairs. ``base`` gives the starting ``m``, the thresholds and the term-frequency settings."""
    # u: random pairs are different people but for a negligible share
    u_counts = {f: Counter() for f in FIELDS}
    n_random = 0
    for levels in random_pairs:
        n_random += 1
        for f, lv in levels.items():
            u_counts[f][lv] += 1
    u = {f: {lv: (u_counts[f][lv] + smoothing) / (sum(u_counts[f].values()) + smoothing * len(LEVELS[f]))
             for lv in LEVELS[f]} for f in FIELDS}
    # m, u and λ: EM over the blocked pairs' distinct patterns, from the base m and the random u
    patterns = Counter(_pattern(levels) for levels in blocked)
    base_fields = base.config["fields"]
    m = {f: {lv: base_fields[f][lv]["m"] for lv in LEVELS[f]} for f in FIELDS}
    ub = {f: dict(u[f]) for f in FIELDS}
    lam = base.prior
    eps = smoothing * 1e-3
    for _ in range(iterations):
        m_num = {f: Counter() for f in FIELDS}
        u_num = {f: Counter() for f in FIELDS}
        total_p = 0.0
        n = 0
        for pattern, count in patterns.items():
            lm = math.log(lam)
            lu = math.log(1 - lam)
            for f, lv in zip(FIELDS, pattern):
                if lv is not None:
                    lm += math.log(m[f][lv])
                    lu += math.log(ub[f][lv])
            p = 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, lu - lm))))
            total_p += p * count
            n += count
            for f, lv in zip(FIELDS, pattern):
                if lv is not None:
                    m_num[f][lv] += p * count
                    u_num[f][lv] += (1 - p) * count
        lam = min(max(total_p / max(n, 1), 1e-6), 1 - 1e-6)
        for f in FIELDS:
            dm = sum(m_num[f].values()) + eps * len(LEVELS[f])
            du = sum(u_num[f].values()) + eps * len(LEVELS[f])
            m[f] = {lv: (m_num[f][lv] + eps) / dm for lv in LEVELS[f]}
            ub[f] = {lv: (u_num[f][lv] + eps) / du for lv in LEVELS[f]}
    # Final: EM's m (floored: no level is impossible for the same person) and λ, with the
    # population u of the random pairs (the EM's u is that of blocked non-matches: household members
    # sharing a phone, which says nothing of how rare agreement is among strangers).
    m = {f: _floored(m[f], floor=1e-5) for f in FIELDS}
    fields = {f: {lv: {"m": round(m[f][lv], 8), "u": round(u[f][lv], 10)} for lv in LEVELS[f]} for f in FIELDS}
    return {
        "ruleset": base.config.get("ruleset", "fs"),
        "trained": {"at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "blocked_pairs": sum(patterns.values()), "random_pairs": n_random,
                    "iterations": iterations, "from_version": base.version},
        "prior": round(lam, 6),
        "thresholds": base.config["thresholds"],
        "tf": base.config.get("tf", {}),
        "dependent": base.config.get("dependent", {}),
        "combined": base.config.get("combined", []),
        "twin": base.config.get("twin", {}),
        "fields": fields,
    }
