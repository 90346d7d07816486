"""System-level search (R4 search.html#all): GET [base]?_type=…, POST [base]/_search, paging
across types, the parameters common to all types, strict and lenient handling."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from hub.core import httpclient
from tests.api_helpers import FHIR_JSON, create, observation, patient, unique
from tests.conftest import BACKENDS, live_server
from tests.es_server import es_server  # noqa: F401 - fixture

TAG = "urn:test:sys"


@pytest.fixture(scope="module", params=[*BACKENDS, "elasticsearch"])
def live(request, tmp_path_factory):
    """Each event store with the SQLite index, and searches answered by Elasticsearch."""
    with live_server(request, tmp_path_factory, request.param) as server:
        yield server


@pytest.fixture(scope="module")
def world(live):
    import httpx

    code = unique()[:12]
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        pids = []
        for _ in range(3):
            d = patient(meta={"tag": [{"system": TAG, "code": code}]})
            pids.append(create(c, d).json()["id"])
        oids = []
        for pid in pids[:2]:
            d = observation(f"Patient/{pid}") | {"meta": {"tag": [{"system": TAG, "code": code}]}}
            oids.append(create(c, d).json()["id"])
    return code, pids, oids


def _ids(bundle: dict) -> list[str]:
    return [e["fullUrl"].split("/fhir/")[1] for e in bundle.get("entry", [])
            if e["search"]["mode"] == "match"]


def _all_pages(client, params: dict) -> list[str]:
    out, r = [], client.get("", params=params)
    while True:
        assert r.status_code == 200, r.text
        b = r.json()
        out += _ids(b)
        nxt = [lk["url"] for lk in b["link"] if lk["relation"] == "next"]
        if not nxt:
            return out
        r = client.get("", params=dict(parse_qsl(urlsplit(nxt[0]).query)))


def test_types_and_common_parameters(client, world):
    code, pids, oids = world
    b = client.get("", params={"_type": "Patient,Observation", "_tag": f"{TAG}|{code}"}).json()
    assert sorted(_ids(b)) == sorted([f"Patient/{p}" for p in pids] + [f"Observation/{o}" for o in oids])
    b = client.get("", params={"_type": "Observation", "_tag": f"{TAG}|{code}"}).json()
    assert sorted(_ids(b)) == sorted(f"Observation/{o}" for o in oids)
    b = client.get("", params={"_id": pids[0], "_type": "Patient,Observation"}).json()
    assert _ids(b) == [f"Patient/{pids[0]}"]


def test_without_type_every_type_is_searched(client, world):
    code, pids, oids = world
    b = client.get("", params={"_tag": f"{TAG}|{code}", "_count": "100"}).json()
    assert len(_ids(b)) == 5


@pytest.mark.parametrize("count", ["1", "2", "4"])
def test_paging_across_types_returns_each_once(client, world, count):
    code, pids, oids = world
    got = _all_pages(client, {"_type": "Observation,Patient", "_tag": f"{TAG}|{code}", "_count": count})
    assert sorted(got) == sorted([f"Patient/{p}" for p in pids] + [f"Observation/{o}" for o in oids])
    assert len(got) == len(set(got))


def test_totals_and_post(client, world):
    code, pids, oids = world
    q = {"_type": "Patient,Observation", "_tag": f"{TAG}|{code}"}
    b = client.get("", params={**q, "_summary": "count"}).json()
    assert b["total"] == 5 and "entry" not in b
    assert client.get("", params={**q, "_total": "accurate"}).json()["total"] == 5
    r = client.post("/_search", content=f"_type=Patient&_tag={TAG}|{code}",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and len(_ids(r.json())) == 3
    assert client.post("/_search", json={}, headers=FHIR_JSON).status_code == 415
    # an empty body with no type: the parameters are in the URL (was 415)
    r = client.post(f"/_search?_type=Patient&_tag={TAG}|{code}", content=b"")
    assert r.status_code == 200 and len(_ids(r.json())) == 3
    r = client.post(f"/Patient/_search?_tag={TAG}|{code}", content=b"")
    assert r.status_code == 200 and len(_ids(r.json())) == 3


def test_one_type_sorts_and_each_include_goes_to_its_own_type(client, world):
    """`_type=Patient&_sort=` was refused as "across types"; with two types every _include was
    refused ("the source type must be Patient")."""
    code, pids, oids = world
    b = client.get("", params={"_type": "Patient", "_tag": f"{TAG}|{code}", "_sort": "-_id"})
    assert b.status_code == 200, b.text
    assert _ids(b.json()) == sorted((f"Patient/{p}" for p in pids), reverse=True)
    r = client.get("", params={"_type": "Patient,Observation", "_id": f"{oids[0]},{pids[2]}",
                               "_include": "Observation:subject"})
    assert r.status_code == 200, r.text
    got = {(e["fullUrl"].split("/fhir/")[1], e["search"]["mode"]) for e in r.json()["entry"]}
    assert got == {(f"Observation/{oids[0]}", "match"), (f"Patient/{pids[2]}", "match"),
                   (f"Patient/{pids[0]}", "include")}


@pytest.mark.parametrize("types", ["Patient,Observation", "Observation,Patient"])
@pytest.mark.parametrize("includes", [{"_include": "Observation:subject"}, {"_include": "*"},
                                      {"_revinclude": "Observation:subject"},
                                      {"_include": "*", "_revinclude": "Observation:subject"}])
def test_a_match_is_never_also_an_include(client, world, types, includes):
    """bdl-7: each resource once in a page. A Patient matched and included by a matched
    Observation (or an Observation matched and revincluded by a matched Patient) was listed
    twice, as a match and as an include, whichever type came first."""
    code, pids, oids = world
    r = client.get("", params={"_type": types, "_id": f"{pids[0]},{oids[0]},{pids[1]}",
                               **includes})
    assert r.status_code == 200, r.text
    got = [(e["fullUrl"].split("/fhir/")[1], e["search"]["mode"]) for e in r.json()["entry"]
           if e["search"]["mode"] != "outcome"]
    assert sorted(got) == sorted([(f"Patient/{pids[0]}", "match"), (f"Patient/{pids[1]}", "match"),
                                  (f"Observation/{oids[0]}", "match")]
                                 + ([(f"Observation/{oids[1]}", "include")]
                                    if "_revinclude" in includes else []))


def test_mistakes(client, world):
    assert client.get("", params={"_type": "Nope"}).status_code == 400
    assert client.get("", params={"_type": "Patient,Observation",
                                  "_sort": "_lastUpdated"}).status_code == 400
    assert client.get("", params={"_type": "Patient", "_cursor": "99.x"}).status_code == 400
    strict = client.get("", params={"_type": "Patient,Observation", "family": "Wang"},
                        headers={"prefer": "handling=strict"})
    assert strict.status_code == 400  # family is no Observation parameter
    lenient = client.get("", params={"_type": "Patient", "bogus": "1"}).json()
    assert [e for e in lenient.get("entry", []) if e["search"]["mode"] == "outcome"]


def test_a_type_without_the_parameter_contributes_nothing(client, world):
    """family is no Observation parameter: ignored there, the search handed out every
    Observation besides the Wangs; now the Observations contribute none, an informational issue
    saying why. A parameter no type searched knows is still ignored with a warning."""
    code, pids, oids = world
    tag = f"{TAG}|{code}"
    wangs = sorted(f"Patient/{p}" for p in pids)
    for types in ("Patient,Observation", "Observation,Patient"):
        b = client.get("", params={"_type": types, "_tag": tag, "family": "Wang"})
        assert b.status_code == 200, b.text
        assert sorted(_ids(b.json())) == wangs
        issues = [i for e in b.json()["entry"] if e["search"]["mode"] == "outcome"
                  for i in e["resource"]["issue"]]
        assert any(i["severity"] == "information" and "Observation" in i["diagnostics"]
                   and "family" in i["diagnostics"] for i in issues), issues
        got = _all_pages(client, {"_type": types, "_tag": tag, "family": "Wang", "_count": "1"})
        assert sorted(got) == wangs
    b = client.get("", params={"_type": "Patient,Observation", "_tag": tag, "family": "Wang",
                               "_summary": "count"}).json()
    assert b["total"] == 3
    # no _type: every type without family contributes nothing
    assert sorted(_ids(client.get("", params={"_tag": tag, "family": "Wang",
                                               "_count": "100"}).json())) == wangs
    b = client.get("", params={"_type": "Patient,Observation", "_tag": tag, "bogus": "1"}).json()
    assert len(_ids(b)) == 5  # unknown to both: ignored with a warning, as in a type search


def test_a_scoped_caller_searches_only_what_it_may(live, world):
    import httpx

    code, pids, oids = world
    auth = live.client_auth(roles=("clinician",), scope="system/Patient.rs")
    with httpx.Client(base_url=live.base, timeout=30, auth=auth, verify=httpclient.verify()) as c:
        b = c.get("", params={"_tag": f"{TAG}|{code}", "_count": "100"})
        assert b.status_code == 200, b.text
        assert sorted(_ids(b.json())) == sorted(f"Patient/{p}" for p in pids)
        assert c.get("", params={"_type": "Observation", "_tag": f"{TAG}|{code}"}).status_code == 403


def test_strict_refuses_a_parameter_a_later_type_lacks_on_every_page(client, world):
    """Strict handling: family is no Observation parameter. With the Patients first and a page
    they filled, page 1 answered 200 (with a next link) and page 2 was the 400; now the whole
    query is checked against every listed type first: the same 400 on any page, GET or POST."""
    code, pids, oids = world
    strict = {"prefer": "handling=strict"}
    q = {"_type": "Patient,Observation", "_tag": f"{TAG}|{code}", "family": "Wang", "_count": "2"}
    first = client.get("", params=q, headers=strict)
    assert first.status_code == 400, first.text
    diagnostics = first.json()["issue"][0]["diagnostics"]
    assert "family" in diagnostics and "Observation" in diagnostics
    # page 2, its cursor from the lenient search (where the Observations contribute no match)
    lenient = client.get("", params=q)
    assert lenient.status_code == 200 and len(_ids(lenient.json())) == 2
    nxt = [lk["url"] for lk in lenient.json()["link"] if lk["relation"] == "next"]
    assert nxt
    second = client.get("", params=dict(parse_qsl(urlsplit(nxt[0]).query)), headers=strict)
    assert second.status_code == 400 and second.json() == first.json()
    # lenient unchanged: the three Wangs, the Observations contributing none
    assert sorted(_all_pages(client, q)) == sorted(f"Patient/{p}" for p in pids)
    posted = client.post("/_search", content="&".join(f"{k}={v}" for k, v in q.items()),
                         headers={"content-type": "application/x-www-form-urlencoded", **strict})
    assert posted.status_code == 400 and posted.json() == first.json()
    # an _elements name the later type lacks, likewise (gender is no Observation element)
    r = client.get("", params={"_type": "Patient,Observation", "_tag": f"{TAG}|{code}",
                               "_elements": "gender", "_count": "2"}, headers=strict)
    assert r.status_code == 400, r.text


def test_a_type_named_but_not_the_callers_is_refused_on_the_first_page(live, world):
    """A caller may search Patients only and names Observation second: the Patients filled page
    1 (200, with a next link) and the 403 came with page 2. The whole query is planned for every
    type before any page: the 403 comes at once."""
    import httpx

    code, pids, _ = world
    auth = live.client_auth(roles=("clinician",), scope="system/Patient.rs")
    with httpx.Client(base_url=live.base, auth=auth, timeout=30, verify=httpclient.verify()) as c:
        r = c.get("", params={"_type": "Patient,Observation", "_tag": f"{TAG}|{code}",
                              "_count": "1"})
        assert r.status_code == 403, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
