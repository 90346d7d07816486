"""Fellegi-Sunter weights: m and u per comparison level, as versioned JSON configuration.

For a field at level ``l``, ``m`` = P(level l | same person) and ``u`` = P(level l | different people);
the level's weight is ``log2(m / u)`` and a pair's match weight is the sum over the fields both sides
have, plus the prior ``log2(λ / (1 - λ))`` (λ: the share of true matches among blocked pairs). The
score is the posterior probability ``1 / (1 + 2^-weight)``, and the grade comes from ``thresholds``
on it. The exact-name level is term-frequency adjusted: its ``u`` is the share of indexed Patients
carrying that very name (never below ``floor``), so a common name counts less than a rare one;
the share is estimated with the trained ``u`` as prior (``name_share``). An agreeing phone and
address lines are adjusted the same way (``value_share``): a clinic's switchboard or a nursing
home's address that hundreds of records carry weighs by its share of the indexed Patients (the two
compared left out), capped at the level's own weight for a value few carry.
``dependent`` silences a field when another already said the same (the district when the phone
agrees: both point to a household, not to a person). ``combined`` bounds what fields say together:
a name and a birth date, however rare each, are shared by strangers in a region of tens of millions
(in the same district too), so name, birth date and sex, whichever are known, never weigh
more than ``max_weight`` bits together with the prior and a link needs one more agreement (an ID number, a phone, an address,
a district); with the district the same bound holds unless the name is rare (``unless_name_share_below``: its
share of the indexed Patients), since a common name is shared by many in one district. ``twin`` is
the pattern of twins (same birth date and surname, another given name,
one of the ``household`` fields in common: a phone, an address, a district): the ``silenced``
fields then say nothing and the pattern weighs ``weight``. A postal code is no household field: it
is shared by too many.

A configuration is a file ``weights-<version>.json``: shipped in ``hub/mpi/data/``, and written by
``hub mpi train`` into ``$HUB_DATA_DIR/mpi/``; ``load`` takes the highest version found. ``train``
estimates it from the platform's own data without any truth: ``u`` from random pairs of Patients
(nearly all different people), and ``m`` and λ by expectation-maximisation per blocking pass with
the pass's own fields left out, bounded.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hub.mpi.compare import FIELDS, LEVELS
from hub.mpi.normalise import DATA

_FILE = re.compile(r"^weights-(\d+)\.json$")
# fields whose agreeing value is weighed by how many indexed Patients carry it: {field: level}
TF_VALUES = {"phone": "same", "addr": "exact"}
OWN_MAX = 20  # more Patients sharing a phone or address than a household has: an institution's
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
        # the given name alone (Latin script: the surname differs): how common that given name is
        given = config.get("tf", {}).get("given", {})
        self.tf_given_floor = float(given.get("floor", 1e-4))
        self.tf_given = bool(given) and "given" in config["fields"].get("name", {})
        self.m_name_given = config["fields"]["name"]["given"]["m"] if self.tf_given else 1.0
        # the field says nothing more when another is at the given level (an address shared with
        # the phone: both name a household, not a person)
        # {field: ((other field, level), ...)}; a single pair is the older form
        self.dependent = {f: ((tuple(v),) if isinstance(v[0], str) else tuple(tuple(x) for x in v))
                          for f, v in config.get("dependent", {}).items()}
        self.combined = [(tuple(c["fields"]), float(c["max_weight"]),
                          float(c.get("unless_name_share_below", 0.0))) for c in config.get("combined", [])]
        twin = config.get("twin") or {}
        self.twin_weight = float(twin.get("weight", 0.0))
        self.twin_household = tuple(twin.get("household", ()))
        self.twin_silenced = tuple(twin.get("silenced", self.twin_household))
        self.m_name_exact = config["fields"]["name"]["exact"]["m"] if self.tf_on else 1.0
        # a name's share is estimated with the level's trained u as prior: ``prior_count``
        # pseudo-Patients of that name among ``prior_count / u`` pseudo-Patients, so a young index
        # (a few thousand Patients, where any name's raw share is at least 1/total) does not
        # judge every name common, and decisions depend less on how far the index had filled
        self.tf_prior = {lv: (float(t.get("prior_count", 1.0)),
                              float(t.get("prior_count", 1.0))
                              / config["fields"]["name"][lv]["u"] if lv in config["fields"].get(
                                  "name", {}) else 0.0)
                         for lv, t in (("exact", tf), ("given", given))}
        # a phone or address lines many Patients share (a clinic's switchboard, a nursing home):
        # on by default (``"tf": {"phone": false}`` turns it off), so a configuration trained
        # before it existed adjusts too
        self.tf_values: dict[str, tuple[str, float, float, float, int]] = {}
        for fld, level in TF_VALUES.items():
            t = config.get("tf", {}).get(fld, {})
            p = config["fields"].get(fld, {}).get(level)
            if t is False or not p:
                continue
            k = float(t.get("prior_count", 1.0))
            self.tf_values[fld] = (level, k, k / p["u"], p["m"], int(t.get("own_max", OWN_MAX)))

    def name_share(self, level: str, count: int, total: int) -> float:
        """The estimated share of Patients with a name (``exact``) or Latin given name (``given``)
        of which the index holds ``count`` among ``total``."""
        k, population = self.tf_prior[level]
        return (count + k) / (total + population) if total + population else 0.0

    def value_share(self, field: str, others: int, total: int) -> float | None:
        """The estimated share of Patients carrying a phone (``phone``) or address lines
        (``addr``) that ``others`` indexed Patients besides the two compared carry, among
        ``total``; None when the field is not adjusted. The level's trained ``u`` is the prior
        (``prior_count`` pseudo-Patients): a value no one else carries gets the level's own
        weight, whatever the index's size."""
        if field not in self.tf_values:
            return None
        _, k, population = self.tf_values[field][:3]
        return (max(others, 0) + k) / (total + population)

    def own_evidence(self, field: str, others: int) -> bool:
        """Whether a phone or address that ``others`` Patients also carry can still be the
        person's own (a household's): not when more carry it than ``own_max``."""
        t = self.tf_values.get(field)
        return t is None or others <= t[4]

    def weight(self, field: str, level: str, name_share: float | None = None) -> float:
        t = self.tf_values.get(field)
        if t is not None and name_share is not None and level == t[0]:
            # lowered for a common value, never raised above the level's weight for a rare one
            plain = self.table[field][level]
            return min(plain, math.log2(t[3] / name_share)) if name_share > 0 else plain
        if field == "name" and name_share is not None:
            if level == "exact" and self.tf_on:
                return math.log2(self.m_name_exact / max(name_share, self.tf_floor))
            if level == "given" and self.tf_given:
                return math.log2(self.m_name_given / max(name_share, self.tf_given_floor))
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


M_BOUNDS = (1e-5, 0.999)  # no level is impossible, nor certain, for the same person
PRIOR_BOUNDS = (0.01, 0.95)


def _em_pass(patterns: Counter, fields: tuple[str, ...], m0: dict, u: dict, lam: float,
             iterations: int) -> tuple[dict, float, dict[str, float]]:
    """EM for m and λ over one pass's patterns (u fixed): (m, λ, expected matches per field)."""
    idx = [FIELDS.index(f) for f in fields]
    m = {f: dict(m0[f]) for f in fields}
    weight_of = {f: 0.0 for f in fields}
    for _ in range(iterations):
        num: dict[str, defaultdict[str, float]] = {f: defaultdict(float) for f in fields}
        total_p = 0.0
        n = 0
        for pattern, count in patterns.items():
            lm, lu = math.log(lam), math.log(1 - lam)
            for f, i in zip(fields, idx):
                lv = pattern[i]
                if lv is not None:
                    lm += math.log(m[f][lv])
                    lu += math.log(u[f][lv])
            p = 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, lu - lm))))
            total_p += p * count
            n += count
            for f, i in zip(fields, idx):
                if pattern[i] is not None:
                    num[f][pattern[i]] += p * count
        lam = min(max(total_p / max(n, 1), PRIOR_BOUNDS[0]), PRIOR_BOUNDS[1])
        for f in fields:
            d = sum(num[f].values())
            weight_of[f] = d
            if d > 0:
                m[f] = _bounded({lv: num[f][lv] / d for lv in LEVELS[f]})
    return m, lam, weight_of


def _bounded(p: dict[str, float]) -> dict[str, float]:
    lo, hi = M_BOUNDS
    raised = {k: min(max(v, lo), hi) for k, v in p.items()}
    total = sum(raised.values())
    return {k: v / total for k, v in raised.items()}


def train(blocked: dict[str, tuple[Iterable[str], Iterable[dict[str, str]]]] | Iterable[dict[str, str]],
          random_pairs: Iterable[dict[str, str]], base: Weights, iterations: int = 40,
          smoothing: float = 0.5) -> dict[str, Any]:
    """A new configuration (without its version) from comparison levels, as the established record
    linkage tools estimate: ``u`` from random pairs (different people but for a negligible share),
    fixed; ``m`` and λ by EM per blocking pass over the pass's pairs, the fields its keys are made of
    left out (they agree by construction), each field's ``m`` then the average over the passes that
    kept it, weighted by their expected matches; ``m`` and λ bounded (``M_BOUNDS``,
    ``PRIOR_BOUNDS``). ``blocked``: ``{pass: (excluded fields, [levels])}``, or one list of levels
    (one pass, nothing left out). ``base`` gives the starting ``m``, the thresholds and the
    settings kept."""
    passes: dict[str, tuple[Iterable[str], Iterable[dict[str, str]]]] = \
        blocked if isinstance(blocked, dict) else {"all": ((), blocked)}
    u_counts: dict[str, Counter[str]] = {f: Counter() for f in FIELDS}
    n_random = 0
    for pair in random_pairs:
        n_random += 1
        for f, lv in pair.items():
            u_counts[f][lv] += 1
    u = {f: {lv: (u_counts[f][lv] + smoothing) / (sum(u_counts[f].values()) + smoothing * len(LEVELS[f]))
             for lv in LEVELS[f]} for f in FIELDS}
    base_fields = base.config["fields"]
    m0 = {f: _bounded({lv: base_fields.get(f, {}).get(lv, {}).get("m", 1.0 / len(LEVELS[f]))
                       for lv in LEVELS[f]}) for f in FIELDS}
    sums: dict[str, defaultdict[str, float]] = {f: defaultdict(float) for f in FIELDS}
    mass: defaultdict[str, float] = defaultdict(float)
    matches = n_pairs = 0.0
    per_pass = {}
    for name, (excluded, pairs) in passes.items():
        patterns = Counter(_pattern(lv) for lv in pairs)
        kept = tuple(f for f in FIELDS if f not in set(excluded))
        m, lam, weight_of = _em_pass(patterns, kept, m0, u, base.prior, iterations)
        n = sum(patterns.values())
        matches += lam * n
        n_pairs += n
        per_pass[name] = {"pairs": n, "prior": round(lam, 6)}
        for f in kept:
            for lv in LEVELS[f]:
                sums[f][lv] += m[f][lv] * weight_of[f]
            mass[f] += weight_of[f]
    m = {f: _bounded({lv: sums[f][lv] / mass[f] for lv in LEVELS[f]}) if mass[f] else m0[f]
         for f in FIELDS}
    lam = min(max(matches / max(n_pairs, 1), PRIOR_BOUNDS[0]), PRIOR_BOUNDS[1])
    # Strangers sharing a blocking key grow with the square of the indexed Patients, a person's
    # own records only in proportion: the share of matches among blocked pairs falls as a region
    # fills. A share above the base configuration's is the mark of a young or small index, and
    # weights that trust it would link on less evidence than the region will hold: kept at most
    # the base's.
    lam = min(lam, base.prior)
    fields = {f: {lv: {"m": round(m[f][lv], 8), "u": round(u[f][lv], 10)} for lv in LEVELS[f]} for f in FIELDS}
    return {
        "ruleset": base.config.get("ruleset", "fs"),
        "trained": {"at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "blocked_pairs": int(n_pairs), "random_pairs": n_random, "passes": per_pass,
                    "iterations": iterations, "from_version": base.version},
        "prior": round(lam, 6),
        "thresholds": base.config["thresholds"],
        "tf": base.config.get("tf", {}),
        "dependent": base.config.get("dependent", {}),
        "combined": base.config.get("combined", []),
        "twin": base.config.get("twin", {}),
        "fields": fields,
    }
