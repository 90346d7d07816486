"""A sorted page read from the sort parameter's value index gives exactly the order, pages and
cursors of sorting every match: ties, missing values, several keys, filters, both backends."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl, urlsplit

import pytest

from hub.api.search import SearchService, search_bundle
from hub.core.ingest import Context, Hub, Op
from hub.repository import Repository
from projections.runner import Runner
from projections.search import sqlite_query
from projections.search.sqlite_index import SQLiteSearchIndex
from tests.conftest import BACKENDS, make_settings


def _patients(n: int = 90) -> list[dict]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        d: dict = {"resourceType": "Patient", "id": f"s{i:03d}",
                   "gender": rng.choice(["male", "female", "other"])}
        if rng.random() < .85:  # many ties: a few dozen dates
            d["birthDate"] = f"19{rng.randint(50, 60)}-0{rng.randint(1, 3)}-1{rng.randint(0, 1)}"
        if rng.random() < .8:
            d["name"] = [{"family": rng.choice(["Wang", "Li", "Zhang", "Liu", "Chen"])}]
        out.append(d)
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    settings = make_settings(request.param, tmp_path_factory.mktemp("sortix"), request)
    hub = Hub(settings.open_store())
    hub.execute([Op("PUT", "Patient", d["id"], d, url="x") for d in _patients()], Context(),
                atomic=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = SQLiteSearchIndex(settings.data_dir / "search.sqlite")
    service = SearchService(hub.store, index, Runner(hub.store, index), settings)
    yield hub, service, settings
    index.close()
    hub.store.close()


def _walk(world, query: str) -> list[str]:
    hub, service, settings = world
    repo = Repository(hub, search=service)
    params = parse_qsl(query)
    out = []
    for _ in range(200):
        b = search_bundle(repo, Context(), "Patient", params, "http://t/fhir", settings, True)
        out += [e["fullUrl"].rsplit("/", 1)[1] for e in b.get("entry", [])
                if e["search"]["mode"] == "match"]
        nxt = [lk["url"] for lk in b["link"] if lk["relation"] == "next"]
        if not nxt:
            return out
        params = parse_qsl(urlsplit(nxt[0]).query)
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("sort", ["birthdate", "-birthdate", "-birthdate,family", "family,-birthdate",
                                  "gender,-birthdate,_id", "-family,_id", "birthdate&gender=male",
                                  "-birthdate&family=Wang,Li"])
@pytest.mark.parametrize("count", [1, 4, 11])
def test_index_order_equals_the_full_sort(world, monkeypatch, sort, count):
    query = f"_sort={sort}&_count={count}"
    monkeypatch.setattr(sqlite_query, "INDEX_SORT_FROM", 10 ** 9)
    full = _walk(world, query)
    monkeypatch.setattr(sqlite_query, "INDEX_SORT_FROM", -1)
    walked = _walk(world, query)
    assert walked == full
    assert len(set(full)) == len(full)
    if "&" not in sort:
        assert len(full) == 90  # every Patient once, those without a value last
