"""Date search against an oracle: every prefix, precision, zone, Period and multi-valued element.

The conformance table (tests/test_search_conformance.py) checks cases a person wrote; here
hypothesis writes the queries, and a brute-force reading of R4's date rules decides what each
must find, over resources whose dates come at every precision, with and without a zone, as
Periods open at either end, and several to a resource (Goal's target dates). The index answers
through its optimisations (one-row tests where no resource has two values, the widest span as a
bound, the index on ``hi``): each must find what the rules find. The SQLite index and the
Elasticsearch backend both answer.

The rules (R4 3.1.1.4.2, ranges half-open [lo, hi), a value's range being its precision's period
and a Period's from its start's beginning to its end's end, an open end unbounded):
eq the value's range inside the search's; ne not inside; gt the value's range reaches above the
search's; lt below; ge gt or eq; le lt or eq; sa starts at or after the search's end; eb ends at or
before its start. Criteria (repeated parameters) are ANDed and each may hold through a different
value; a comma's alternatives are ORed.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.api.search import search_bundle
from hub.core.fhirtime import parse_range
from hub.core.ingest import Context
from hub.repository import Repository
from tests.conftest import make_settings
from tests.es_server import es_server  # noqa: F401 - fixture
from tests.test_search_conformance import search_world

ZONES = ("", "Z", "+08:00", "-05:00", "+14:00")
INF = math.inf


def _stamp(rng: random.Random, stored: bool = False) -> str:
    """A FHIR date or dateTime of a random precision around January 2024: as stored (a time has
    seconds and a zone), or as a search value (a time may stop at minutes, and lack a zone)."""
    y = rng.choice((2023, 2024, 2024, 2024, 2025))
    mo, d = rng.choice((1, 1, 1, 2, 12)), rng.choice((1, 14, 15, 15, 16, 28))
    h, mi, s = rng.choice((0, 7, 8, 15, 16, 23)), rng.choice((0, 30, 59)), rng.choice((0, 1, 59))
    kind = rng.choice(("y", "ym", "d", "d", "s", "s", "f") if stored else
                      ("y", "ym", "d", "d", "m", "s", "s", "f"))
    zone = rng.choice(ZONES[1:] if stored else ZONES)
    if kind == "y":
        return f"{y}"
    if kind == "ym":
        return f"{y}-{mo:02d}"
    if kind == "d":
        return f"{y}-{mo:02d}-{d:02d}"
    if kind == "m":
        return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}{zone}"
    if kind == "s":
        return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{zone}"
    return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{rng.randrange(1000):03d}{zone}"


def _stored_stamp(rng: random.Random) -> str:
    return _stamp(rng, stored=True)


def _dataset(seed: int) -> tuple[list[dict], dict[str, list[tuple[float, float]]],
                                 dict[str, list[tuple[float, float]]]]:
    """(resources, Observation id -> ranges of `date`, Goal id -> ranges of `target-date`)."""
    rng = random.Random(seed)
    out, obs, goals = [], {}, {}
    for i in range(90):
        rid = f"o{seed}-{i}"
        d: dict = {"resourceType": "Observation", "id": rid, "status": "final",
                   "code": {"text": "x"}}
        shape = rng.choice(("at", "at", "period", "none"))
        ranges = []
        if shape == "at":
            v = _stored_stamp(rng)
            d["effectiveDateTime"] = v
            ranges.append(tuple(float(x) for x in parse_range(v)))
        elif shape == "period":
            start = _stored_stamp(rng) if rng.random() < 0.8 else None
            end = _stored_stamp(rng) if rng.random() < 0.8 else None
            if start and end and parse_range(end)[1] <= parse_range(start)[0]:
                start, end = end, start
            if start and end and parse_range(end)[0] < parse_range(start)[0]:
                end = None  # R4: the end is not before the start
            period = {k: v for k, v in (("start", start), ("end", end)) if v}
            if period:
                d["effectivePeriod"] = period
                lo = float(parse_range(start)[0]) if start else -INF
                hi = float(parse_range(end)[1]) if end else INF
                ranges.append((lo, hi))
        out.append(d)
        obs[rid] = ranges
    for i in range(40):
        rid = f"g{seed}-{i}"
        dues = [v for v in (_stamp(rng) for _ in range(rng.choice((0, 1, 2, 3)))) if "T" not in v]
        d = {"resourceType": "Goal", "id": rid, "lifecycleStatus": "active",
             "description": {"text": "x"}, "subject": {"reference": "Patient/x"}}
        if dues:
            d["target"] = [{"dueDate": v} for v in dues]
        out.append(d)
        goals[rid] = [tuple(float(x) for x in parse_range(v)) for v in dues]
    return out, obs, goals


def holds(prefix: str, lo: float, hi: float, qlo: float, qhi: float) -> bool:
    inside = lo >= qlo and hi <= qhi
    if prefix == "eq":
        return inside
    if prefix == "ne":
        return not inside
    if prefix == "gt":
        return hi > qhi
    if prefix == "lt":
        return lo < qlo
    if prefix == "ge":
        return hi > qhi or inside
    if prefix == "le":
        return lo < qlo or inside
    if prefix == "sa":
        return lo >= qhi
    if prefix == "eb":
        return hi <= qlo
    raise AssertionError(prefix)


def expected(ranges: dict[str, list[tuple[float, float]]],
             criteria: list[list[tuple[str, str]]]) -> set[str]:
    out = set()
    for rid, values in ranges.items():
        if all(any(holds(p, lo, hi, *map(float, parse_range(v))) for p, v in alternatives
                   for lo, hi in values) for alternatives in criteria):
            out.add(rid)
    return out


SEEDS = (1, 2)


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(request, tmp_path_factory):
    settings_ = make_settings("sqlite", tmp_path_factory.mktemp("dates"), request)
    resources: list[dict] = []
    ranges: dict[str, dict] = {"date": {}, "target-date": {}}  # parameter -> id -> value ranges
    for seed in SEEDS:
        made, obs, goals = _dataset(seed)
        resources += made
        ranges["date"].update(obs)
        ranges["target-date"].update(goals)
    with search_world(request, settings_, resources) as (hub, service):
        repo = Repository(hub, search=service)

        def found(rtype: str, params: list[tuple[str, str]]) -> set[str]:
            bundle = search_bundle(repo, Context(), rtype, [*params, ("_count", "1000")],
                                   "http://test/fhir", settings_, True)
            return {e["fullUrl"].rsplit("/", 1)[1] for e in bundle.get("entry", [])
                    if e["search"]["mode"] == "match"}

        yield found, ranges


PREFIXES = ("", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
values = st.builds(lambda seed, p: p + _stamp(random.Random(seed)),
                   st.integers(0, 10 ** 9), st.sampled_from(PREFIXES))
criteria = st.lists(st.lists(values, min_size=1, max_size=2), min_size=1, max_size=2)


def _as_params(code: str, crit: list[list[str]]) -> tuple[list[tuple[str, str]],
                                                          list[list[tuple[str, str]]]]:
    params, parsed = [], []
    for alternatives in crit:
        params.append((code, ",".join(alternatives)))
        parsed.append([(a[:2], a[2:]) if a[:2] in PREFIXES[1:] else ("eq", a)
                       for a in alternatives])
    return params, parsed


@pytest.mark.parametrize("rtype, code", [
    ("Observation", "date"),  # times and Periods open at either end
    # each criterion may hold through another value of a multi-valued element
    ("Goal", "target-date"),
])
@settings(max_examples=125, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crit=criteria)
def test_a_date_search_finds_what_the_rules_find(world, rtype, code, crit):
    found, ranges = world
    params, parsed = _as_params(code, crit)
    assert found(rtype, params) == expected(ranges[code], parsed), params
