"""The Elasticsearch search backend: its read model keeps the contract (exactly once, resume,
rebuild behind an alias swap, an older version never over a newer), and ``hub serve`` with
``HUB_SEARCH=elasticsearch`` answers searches from it over HTTP with read-your-writes.

The server is the ES-compatible one of the ``noida-db`` wheel (tests/es_server.py); the search
conformance table runs against it too (tests/test_search_conformance.py).
"""

from __future__ import annotations

import httpx
import pytest

from hub.core import httpclient
from hub.core.config import Settings
from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub, Op
from projections.runner import Runner
from projections.search.backends import open_backend, open_es_index
from projections.search.query import parse
from tests.conftest import LiveServer
from tests.es_server import es_server, prefix  # noqa: F401 - fixture

LOINC = "http://loinc.org"


def _obs(rid: str, status: str, subject: str, when: str) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": status,
            "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
            "subject": {"reference": subject}, "effectiveDateTime": when}


def _load(hub: Hub) -> None:
    ops = [Op("PUT", "Patient", f"p{i}", {"resourceType": "Patient", "id": f"p{i}",
                                          "name": [{"family": f"Fam{i}"}]}, url="x")
           for i in range(3)]
    ops += [Op("PUT", "Observation", f"o{i}", _obs(f"o{i}", "final", f"Patient/p{i % 3}",
                                                  f"2024-01-{i + 1:02d}"), url="x")
            for i in range(9)]
    for r in hub.execute(ops, Context(), atomic=True):
        assert not isinstance(r, FhirError), r
    # an update and a delete: only current versions are found
    hub.execute([Op("PUT", "Observation", "o1", _obs("o1", "amended", "Patient/p1", "2024-01-02"),
                    url="x")], Context(), atomic=True)
    hub.execute([Op("DELETE", "Observation", "o2", url="x")], Context(), atomic=True)


def _state(es) -> dict:
    """Every document: id -> (version, pk, status codes)."""
    es.es.indices.refresh(index=f"{es.prefix}-*")
    out = {}
    for rtype in ("Patient", "Observation"):
        hits = es.es.search(index=es.alias(rtype), size=100, ignore_unavailable=True,
                            query={"match_all": {}})["hits"]["hits"]
        for h in hits:
            s = h["_source"]
            out[f"{rtype}/{h['_id']}"] = (s["version"], s["pk"],
                                          sorted(v.get("code") or "" for v in s.get("tok", [])
                                                 if v["p"] == "status"))
    return out


def _ids(backend, rtype: str, query: list[tuple[str, str]]) -> list[str]:
    return [r.rid for r in backend.page(parse(rtype, query), 100, False).rows]


@pytest.fixture
def store_hub(tmp_path):
    hub = Hub(Settings(data_dir=tmp_path, database_url=None).open_store())
    yield hub
    hub.store.close()


def test_read_model_exactly_once_resume_and_an_older_version_never_over_a_newer(
        store_hub, es_server):  # noqa: F811
    _load(store_hub)
    es = open_es_index(es_server.url, prefix())
    try:
        assert es.position() == 0 and not es.bulk
        Runner(store_hub.store, es).catch_up()
        expected = _state(es)
        assert expected["Observation/o1"][0] == 2 and expected["Observation/o1"][2] == ["amended"]
        assert "Observation/o2" not in expected and len(expected) == 11
        position = es.position()
        assert position == store_hub.store.max_notification_id()

        # the same batch again: skipped by the position
        batch = store_hub.store.notifications(1, 10_000)
        es.apply(batch)
        assert _state(es) == expected and es.position() == position

        # the position lost (a crash before it was stored): the replay changes nothing, and
        # the first version of o1 does not overwrite the second, nor o2 come back from its
        # deletion's tombstone
        es._state["position"] = 0
        es.apply(batch[:12])
        assert _state(es) == expected

        # another process resumes where it stopped
        again = open_es_index(es_server.url, es.prefix)
        try:
            assert again.position() == position
            assert Runner(store_hub.store, again).catch_up() == 0
        finally:
            again.close()
    finally:
        es.drop()
        es.close()


def test_rebuild_behind_an_alias_swap(store_hub, es_server):  # noqa: F811
    _load(store_hub)
    es = open_es_index(es_server.url, prefix())
    backend = open_backend(None, es)  # type: ignore[arg-type] - the SQLite index is not read
    try:
        runner = Runner(store_hub.store, es)
        runner.catch_up()
        before = _ids(backend, "Observation", [("_sort", "_id")])
        assert before == ["o0", "o1", "o3", "o4", "o5", "o6", "o7", "o8"]
        old = set(es.es.indices.get(index=f"{es.prefix}-observation-*"))

        es.reset()
        assert es.bulk and es.position() == 0
        es.apply(store_hub.store.notifications(1, 3))  # a rebuild under way
        # searches still read the old generation, whole
        assert _ids(backend, "Observation", [("_sort", "_id")]) == before
        assert _ids(backend, "Observation", [("status", "amended")]) == ["o1"]

        runner.catch_up()  # to the log's end: caught_up moves the aliases
        assert not es.bulk and es.position() == store_hub.store.max_notification_id()
        assert _ids(backend, "Observation", [("_sort", "_id")]) == before
        now = set(es.es.indices.get(index=f"{es.prefix}-observation-*"))
        assert now and not (now & old)  # the old generation is gone
    finally:
        es.drop()
        es.close()


def test_a_document_over_the_engines_limits_is_indexed_reduced_and_the_log_goes_on(
        store_hub, es_server):  # noqa: F811
    """Each value of a parameter is a nested object, and the engine refuses a document holding
    more than its limit: the index takes a Group of 12,000 members whole (its limit is raised to
    50,000), and a Patient with 60,000 identifiers without its values, found by _id, named in
    ``stale`` (a warning on /ready), and the resources after it are indexed as ever."""
    from projections.search.es_index import NESTED_LIMIT

    members = [{"entity": {"reference": f"Patient/m{i}"}} for i in range(12_000)]
    ops = [Op("PUT", "Group", "g", {"resourceType": "Group", "id": "g", "type": "person",
                                    "actual": True, "member": members}, url="x"),
           Op("PUT", "Patient", "many", {"resourceType": "Patient", "id": "many", "identifier": [
               {"system": "urn:x", "value": f"v{i}"} for i in range(NESTED_LIMIT + 10_000)]},
              url="x"),
           Op("PUT", "Patient", "after", {"resourceType": "Patient", "id": "after",
                                          "identifier": [{"system": "urn:x", "value": "v7"}]},
              url="x")]
    for op in ops:
        assert not isinstance(store_hub.execute([op], Context(), atomic=True)[0], FhirError)
    es = open_es_index(es_server.url, prefix())
    backend = open_backend(None, es)  # type: ignore[arg-type] - the SQLite index is not read
    try:
        assert es.stale() is None
        Runner(store_hub.store, es).catch_up()
        assert es.position() == store_hub.store.max_notification_id()
        assert _ids(backend, "Group", [("member", "Patient/m11999")]) == ["g"]
        assert _ids(backend, "Patient", [("identifier", "urn:x|v7")]) == ["after"]
        assert _ids(backend, "Patient", [("_id", "many")]) == ["many"]
        said = es.stale() or ""
        assert "refused 1 resource" in said and "Patient/many" in said and "nested" in said
        # a rebuild meets it again, and says so for the generation it swaps in
        Runner(store_hub.store, es).rebuild()
        assert "refused 1 resource" in (es.stale() or "")
    finally:
        es.drop()
        es.close()


def test_an_index_an_older_hub_made_under_the_engines_default_limits_takes_ours(
        store_hub, es_server):  # noqa: F811
    """An index made before the hub raised the nested-objects limit (or by hand) would refuse a
    12,000-member Group for ever: opening it raises the limit, and the Group is indexed whole."""
    from projections.search.es_index import ENGINE_DEFAULTS, mapping

    members = [{"entity": {"reference": f"Patient/m{i}"}} for i in range(12_000)]
    op = Op("PUT", "Group", "g", {"resourceType": "Group", "id": "g", "type": "person",
                                  "actual": True, "member": members}, url="x")
    assert not isinstance(store_hub.execute([op], Context(), atomic=True)[0], FhirError)
    es = open_es_index(es_server.url, prefix())
    backend = open_backend(None, es)  # type: ignore[arg-type] - the SQLite index is not read
    try:
        name = es._concrete("Group", es.generation)
        es.es.indices.create(index=name, mappings=mapping("Group", es.analyzer),
                             settings={"index": dict(ENGINE_DEFAULTS)},
                             aliases={es.alias("Group"): {}})
        Runner(store_hub.store, es).catch_up()
        assert es.stale() is None
        assert _ids(backend, "Group", [("member", "Patient/m11999")]) == ["g"]
    finally:
        es.drop()
        es.close()


def test_an_index_read_in_another_zone_is_stale_until_its_rebuild_swaps_in(
        store_hub, es_server, monkeypatch):  # noqa: F811
    from hub.core import fhirtime

    _load(store_hub)
    es = open_es_index(es_server.url, prefix())
    try:
        runner = Runner(store_hub.store, es)
        runner.catch_up()
        assert es.stale() is None
        monkeypatch.setenv("HUB_TIMEZONE", "+05:30")
        fhirtime.local_zone.cache_clear()
        again = open_es_index(es_server.url, es.prefix)
        try:
            assert "+08:00" in again.stale() and "rebuild search-es" in again.stale()
            again.reset()
            again.apply(store_hub.store.notifications(1, 3))
            assert again.stale()  # the old generation is still the one searched
            Runner(store_hub.store, again).catch_up()
            assert again.stale() is None
        finally:
            again.close()
        # an index written before the zone was recorded read zone-less values as UTC
        state = es._load()
        del state["zone"]
        es.es.index(index=es.tracking_index, id=es.name, document=state, refresh=True)
        es.position()
        assert "read in +00:00" in es.stale()
    finally:
        monkeypatch.undo()
        fhirtime.local_zone.cache_clear()
        es.drop()
        es.close()


def test_an_index_written_under_older_rules_is_stale_until_its_rebuild_swaps_in(
        store_hub, es_server):  # noqa: F811
    _load(store_hub)
    es = open_es_index(es_server.url, prefix())
    try:
        Runner(store_hub.store, es).catch_up()
        assert es.stale() is None
        # as a release before the rules were recorded left it
        state = es._load()
        del state["rules"]
        es.es.index(index=es.tracking_index, id=es.name, document=state, refresh=True)
        again = open_es_index(es_server.url, es.prefix)
        try:
            said = again.stale() or ""
            assert "older release's rules" in said and "rebuild search-es" in said
            again.reset()
            again.apply(store_hub.store.notifications(1, 3))
            assert again.stale()  # the old generation is still the one searched
            Runner(store_hub.store, again).catch_up()
            assert again.stale() is None
        finally:
            again.close()
    finally:
        es.drop()
        es.close()


def test_unknown_search_backend_is_refused():
    with pytest.raises(ValueError, match="HUB_SEARCH"):
        Settings(search="solr")


@pytest.fixture
def es_live(tmp_path, es_server):  # noqa: F811
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    settings.auth = True
    settings.audit = False
    settings.search, settings.es_url, settings.es_prefix = "elasticsearch", es_server.url, prefix()
    with LiveServer(settings) as server:
        yield server
    es = open_es_index(es_server.url, settings.es_prefix)
    es.drop()
    es.close()


def test_http_search_answered_from_elasticsearch(es_live):
    s = es_live
    with httpx.Client(base_url=s.base, headers={**s.headers, "content-type":
                                                "application/fhir+json"}, timeout=30, verify=httpclient.verify()) as c:
        r = c.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:p", "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "name": [{"family": "王", "given": ["小明"]}],
                          "birthDate": "1980-05-02"}},
            *({"request": {"method": "POST", "url": "Observation"},
               "resource": {k: v for k, v in _obs("x", "final", "urn:uuid:p",
                                                  f"2024-02-{d:02d}").items() if k != "id"}}
              for d in range(1, 8)),
            {"request": {"method": "POST", "url": "DiagnosticReport"},
             "resource": {"resourceType": "DiagnosticReport", "status": "final",
                          "code": {"text": "胸片"}, "subject": {"reference": "urn:uuid:p"},
                          "text": {"status": "generated",
                                   "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">"
                                          "双肺纹理增多，考虑支气管炎</div>"}}}]})
        assert r.status_code == 200, r.text
        pid = r.json()["entry"][0]["response"]["location"].split("/")[1]

        # read-your-writes: found at once, from Elasticsearch
        b = c.get("/Patient", params={"name": "王小"}).json()
        assert [e["resource"]["id"] for e in b["entry"]] == [pid]
        assert b["total"] == 1
        # a chain, _has, _include, the total
        b = c.get("/Observation", params={"subject:Patient.birthdate": "1980-05-02",
                                          "_total": "accurate", "_count": "3"}).json()
        assert b["total"] == 7 and len(b["entry"]) == 3
        b = c.get("/Patient", params={"_has:Observation:subject:date": "2024-02-03"}).json()
        assert [e["resource"]["id"] for e in b["entry"]] == [pid]
        b = c.get("/DiagnosticReport", params={"_include": "DiagnosticReport:subject"}).json()
        assert sorted(e["search"]["mode"] for e in b["entry"]) == ["include", "match"]
        # Chinese full text: the characters in a row, not each anywhere
        assert len(c.get("/DiagnosticReport", params={"_text": "支气管炎"}).json()
                   .get("entry", [])) == 1
        assert not c.get("/DiagnosticReport", params={"_text": "炎管"}).json().get("entry")

        # paging by the sort, forwards and back
        first = c.get("/Observation", params={"_sort": "-date", "_count": "3"}).json()
        dates = [e["resource"]["effectiveDateTime"] for e in first["entry"]]
        assert dates == ["2024-02-07", "2024-02-06", "2024-02-05"]
        nxt = next(x["url"] for x in first["link"] if x["relation"] == "next")
        second = httpx.get(nxt, headers=s.headers, timeout=30, verify=httpclient.verify()).json()
        assert [e["resource"]["effectiveDateTime"] for e in second["entry"]] == \
            ["2024-02-04", "2024-02-03", "2024-02-02"]
        prev = next(x["url"] for x in second["link"] if x["relation"] == "previous")
        back = httpx.get(prev, headers=s.headers, timeout=30, verify=httpclient.verify()).json()
        assert [e["resource"]["effectiveDateTime"] for e in back["entry"]] == dates
        assert not [x for x in back["link"] if x["relation"] == "previous"]

        # a deleted resource is gone from the search at once
        oid = first["entry"][0]["resource"]["id"]
        assert c.delete(f"/Observation/{oid}").status_code in (200, 204)
        b = c.get("/Observation", params={"date": "2024-02-07"}).json()
        assert not b.get("entry")
        # a malformed value is still a 400 OperationOutcome
        r = c.get("/Observation", params={"date": "yesterday"})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
        # /ready lists the Elasticsearch index beside the SQLite one, with its lag
        ready = httpx.get(s.origin + "/ready", timeout=30, verify=httpclient.verify()).json()
        assert ready["checks"]["read-model:search-es"] == {"status": "pass", "lag": 0}


# -- values longer than a keyword Elasticsearch takes ---------------------------------------------

LONG = "v" * 20_000 + "尾" * 10_000  # 50,000 bytes: over Elasticsearch's 32,766 for one term


LONG_FAMILY = "王" + LONG
LONG_RESOURCES = [
    {"resourceType": "Patient", "id": "long", "name": [{"family": LONG_FAMILY}],
     "identifier": [{"system": "urn:x", "value": LONG}]},
    {"resourceType": "Patient", "id": "short", "name": [{"family": "王"}],
     "identifier": [{"system": "urn:x", "value": LONG[:-1] + "x"}]},
    {"resourceType": "Observation", "id": "o", "status": "final",
     "code": {"coding": [{"system": LOINC, "code": LONG}]},
     "subject": {"reference": "Patient/long"}}]


@pytest.fixture(params=["sqlite", "elasticsearch"])
def long_world(request, tmp_path):
    from tests.conftest import make_settings
    from tests.test_search_conformance import search_world

    settings = make_settings("sqlite", tmp_path, request)
    with search_world(request, settings, LONG_RESOURCES) as (hub, service):
        yield hub, service, settings


def test_a_value_longer_than_a_keyword_is_indexed_and_found_by_itself(long_world):
    """Elasticsearch refuses a document holding a keyword over 32,766 bytes, and the index would
    stall on it for ever; the index cuts such values (and what searches compare them with), so
    the resource is indexed and found by its whole value and by no other, as in SQLite."""
    from urllib.parse import quote

    from projections.search.es_index import KEYWORD_CHARS, document, mapping
    from tests.test_search_conformance import ids, run

    # what is sent to Elasticsearch holds no keyword over the cut, and the mapping guards it
    doc = document("Patient", "long", 1, 0, LONG_RESOURCES[0], 1)
    kept = [v for rows in doc.values() if isinstance(rows, list) for row in rows
            for v in row.values() if isinstance(v, str)]
    assert kept and max(map(len, kept)) == KEYWORD_CHARS  # its start and its hash
    keywords = [f for group in mapping("Patient")["properties"].values()
                for f in (group.get("properties") or {}).values() if f.get("type") == "keyword"]
    assert keywords and all(f["ignore_above"] * 4 <= 32766 for f in keywords)

    def found(rtype: str, name: str, value: str) -> list[str]:
        return sorted(ids(run(long_world, rtype, f"{name}={quote(value, safe='')}")))

    assert found("Patient", "identifier", f"urn:x|{LONG}") == ["long"]
    assert found("Patient", "identifier", f"urn:x|{LONG[:-1]}x") == ["short"]
    assert found("Patient", "family:exact", LONG_FAMILY) == ["long"]
    assert found("Patient", "family", LONG_FAMILY[:9000]) == ["long"]
    assert found("Patient", "family:contains", "v" * 9000) == ["long"]
    assert found("Observation", "code", f"{LOINC}|{LONG}") == ["o"]
    assert found("Observation", "code", f"{LOINC}|{LONG[:100]}") == []


def test_an_engine_away_is_told_from_a_refused_request():
    """A search while the cluster cannot answer is a 503 to retry (tests/test_followers.py stops
    the engine under a server); a request it refused as wrong stays the hub's own error."""
    from elastic_transport import ApiResponseMeta, ConnectionError, HttpHeaders, NodeConfig
    from elasticsearch import ApiError, BadRequestError

    from hub.api.app import search_engine_away

    def meta(status: int) -> ApiResponseMeta:
        return ApiResponseMeta(status, "1.1", HttpHeaders(), 0.1, NodeConfig("http", "h", 9200))

    assert search_engine_away(ConnectionError("refused"))
    assert search_engine_away(ApiError("busy", meta(503), {}))
    assert search_engine_away(ApiError("too many", meta(429), {}))
    assert not search_engine_away(BadRequestError("bad", meta(400), {}))
    assert not search_engine_away(ValueError("ours"))
