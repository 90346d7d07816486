"""Concurrent writers: optimistic concurrency must neither lose updates nor let two writers win.

Each scenario runs through the service (``hub`` fixture, threads calling ``Hub.execute``) and
through HTTP (threads with their own clients against the live server), on both backends.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson

from hub.core import httpclient
from hub.core import resource as res
from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub, Op
from tests.api_helpers import FHIR_JSON, if_none_exist, observation, patient, token, unique

THREADS = 8


def run_together(n: int, fn: Callable[[int], object]) -> list:
    """Run fn(0..n-1) in n threads released at the same moment; results in order."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


# -- through the service -----------------------------------------------------------------------


def put_op(d: dict, if_match: int | None = None) -> Op:
    res.validate(d["resourceType"], orjson.dumps(d), d)
    return Op("PUT", d["resourceType"], d["id"], d, if_match=if_match,
              url=f"{d['resourceType']}/{d['id']}")


def status_of(hub: Hub, op: Op) -> int:
    try:
        return hub.execute([op], Context(), atomic=True)[0].status
    except FhirError as e:
        return e.status


def versions_in_log(hub: Hub, rtype: str, rid: str) -> list[int]:
    return sorted(s.originator_version for s in hub.store.versions(rtype, rid))


def test_service_same_if_match_exactly_one_wins(hub):
    d = patient(rid=unique())
    hub.execute([put_op(dict(d))], Context(), atomic=True)
    for round_ in range(1, 6):  # each round races on the version the previous one made
        codes = run_together(2, lambda i: status_of(
            hub, put_op(dict(d, gender=["male", "female"][i], birthDate=f"19{round_}0-01-0{i + 1}"),
                        if_match=round_)))
        assert sorted(codes) == [200, 412], codes
        assert versions_in_log(hub, "Patient", d["id"]) == list(range(1, round_ + 2))


def test_service_unconditional_updates_lose_nothing(hub):
    rid = unique()
    hub.execute([put_op(patient(rid=rid))], Context(), atomic=True)
    per_thread = 4

    def writer(i):
        out = []
        for k in range(per_thread):
            op = put_op(patient(rid=rid, family=f"T{i}-{k}"))
            r = hub.execute([op], Context(), atomic=True)[0]
            out.append((r.version, f"T{i}-{k}"))
        return out

    results = [x for xs in run_together(THREADS, writer) for x in xs]
    total = 1 + THREADS * per_thread
    assert sorted(v for v, _ in results) == list(range(2, total + 1))  # distinct, no gaps
    assert versions_in_log(hub, "Patient", rid) == list(range(1, total + 1))
    for version, family in results:  # each write is exactly the version it was told it is
        stored = orjson.loads(hub.vread("Patient", rid, version).state.partition(b"\n")[2])
        assert stored["name"][0]["family"] == family


def test_service_concurrent_conditional_creates_make_one_resource(hub):
    for _ in range(4):
        d = patient()
        query = [("identifier", token(d))]

        def create(i):
            op = Op("POST", "Patient", d=dict(d, gender=["male", "female", "other", "unknown"][i]),
                    if_none_exist=query, url="Patient")
            r = hub.execute([op], Context(), atomic=True)[0]
            return r.status, r.rid

        results = run_together(4, create)
        assert sorted(s for s, _ in results) == [200, 200, 200, 201], results
        assert len({rid for _, rid in results}) == 1
        assert hub.resolver.match("Patient", query) == [results[0][1]]


def test_service_transactions_retried_keep_their_references(hub):
    """Transactions racing on one shared resource get re-planned; urn:uuid references must follow
    the re-planned ids, never point at an id of an abandoned attempt."""
    shared = unique()
    hub.execute([put_op(patient(rid=shared))], Context(), atomic=True)

    def tx(i):
        pu = f"urn:uuid:{unique()}"
        p, o = patient(), observation(pu)
        ops = [Op("POST", "Patient", d=p, full_url=pu, url="Patient"),
               Op("POST", "Observation", d=o, url="Observation"),
               put_op(patient(rid=shared, family=f"T{i}"))]
        results = hub.execute(ops, Context(), atomic=True)
        return p, results

    for p, (rp, ro, _) in run_together(THREADS, tx):
        obs = orjson.loads(hub.read("Observation", ro.rid).state.partition(b"\n")[2])
        assert obs["subject"]["reference"] == f"Patient/{rp.rid}"
        stored = orjson.loads(hub.read("Patient", rp.rid).state.partition(b"\n")[2])
        assert stored["identifier"] == p["identifier"]
    assert versions_in_log(hub, "Patient", shared) == list(range(1, THREADS + 2))


# -- through HTTP ------------------------------------------------------------------------------


def with_client(live, fn):
    def call(i):
        with httpx.Client(base_url=live.base, timeout=60, auth=live.auth, verify=httpclient.verify()) as c:
            return fn(c, i)
    return call


def test_http_same_if_match_exactly_one_wins(client, live):
    d = patient(rid=unique())
    assert client.put(f"/Patient/{d['id']}", json=d, headers=FHIR_JSON).status_code == 201
    for round_ in range(1, 4):
        def put(c, i):
            body = dict(d, gender=["male", "female"][i], birthDate=f"19{round_}0-01-0{i + 1}")
            return c.put(f"/Patient/{d['id']}", json=body,
                         headers={**FHIR_JSON, "if-match": f'W/"{round_}"'})
        rs = run_together(2, with_client(live, put))
        assert sorted(r.status_code for r in rs) == [200, 412], [r.text for r in rs]
        loser = next(r for r in rs if r.status_code == 412)
        assert loser.json()["resourceType"] == "OperationOutcome"
    hist = client.get(f"/Patient/{d['id']}/_history").json()
    assert hist["total"] == 4


def test_http_unconditional_updates_lose_nothing(client, live):
    rid = unique()
    client.put(f"/Patient/{rid}", json=patient(rid=rid), headers=FHIR_JSON)
    per_thread = 3

    def writer(c, i):
        out = []
        for k in range(per_thread):
            r = c.put(f"/Patient/{rid}", json=patient(rid=rid, family=f"T{i}-{k}"),
                      headers=FHIR_JSON)
            assert r.status_code == 200, r.text
            out.append((int(r.json()["meta"]["versionId"]), f"T{i}-{k}"))
        return out

    results = [x for xs in run_together(THREADS, with_client(live, writer)) for x in xs]
    total = 1 + THREADS * per_thread
    assert sorted(v for v, _ in results) == list(range(2, total + 1))
    hist = client.get(f"/Patient/{rid}/_history", params={"_count": "100"}).json()
    assert [int(e["resource"]["meta"]["versionId"]) for e in hist["entry"]] == \
        list(range(total, 0, -1))
    by_version = {int(e["resource"]["meta"]["versionId"]): e["resource"]["name"][0]["family"]
                  for e in hist["entry"]}
    assert all(by_version[v] == family for v, family in results)


def test_http_concurrent_conditional_creates_make_one_resource(client, live):
    for _ in range(3):
        d = patient()

        def create(c, i):
            body = dict(d, gender=["male", "female", "other", "unknown"][i])
            return c.post("/Patient", json=body, headers=if_none_exist(d))

        rs = run_together(4, with_client(live, create))
        assert Counter(r.status_code for r in rs) == {201: 1, 200: 3}, [r.text for r in rs]
        assert all("id" in r.json() for r in rs), [r.text for r in rs]
        assert len({r.json()["id"] for r in rs}) == 1
        found = client.get("/Patient", params={"identifier": token(d)}).json()
        assert found["total"] == 1


def test_http_concurrent_conditional_creates_on_any_search_make_one_resource(client, live):
    """Criteria the identifier index cannot answer go through the search index, which lags the
    log: a guard at commit re-plans a create when a Patient was written since it searched."""
    for _ in range(3):  # an Organization: a person is named only by an identifier
        family = f"Q{unique()}"
        query = f"name:exact={family}&active=true"

        def create(c, i):
            body = {"resourceType": "Organization", "name": family, "active": True,
                    "alias": [["one", "two", "three", "four"][i]]}
            return c.post("/Organization", json=body, headers={**FHIR_JSON, "if-none-exist": query})

        rs = run_together(4, with_client(live, create))
        assert Counter(r.status_code for r in rs) == {201: 1, 200: 3}, [r.text for r in rs]
        assert len({r.json()["id"] for r in rs}) == 1
        found = client.get("/Organization", params={"name:exact": family}).json()
        assert found["total"] == 1


def test_http_concurrent_transactions_with_conditional_creates(client, live):
    """Transactions that conditionally create the same Patient and reference it: one Patient,
    every Observation pointing at it."""
    d = patient()

    def tx(c, i):
        pu = f"urn:uuid:{unique()}"
        b = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": pu, "resource": d,
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": f"identifier={token(d)}"}},
            {"resource": observation(pu), "request": {"method": "POST", "url": "Observation"}},
        ]}
        return c.post("", json=b, headers=FHIR_JSON)

    rs = run_together(4, with_client(live, tx))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    pids = {r.json()["entry"][0]["response"]["location"].split("/")[1] for r in rs}
    assert len(pids) == 1
    (pid,) = pids
    for r in rs:
        oid = r.json()["entry"][1]["response"]["location"].split("/")[1]
        assert client.get(f"/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"
    assert client.get("/Patient", params={"identifier": token(d)}).json()["total"] == 1


# -- conditional update, delete and transaction entries: the same guard as conditional create ---


class InterleavingResolver:
    """The hub's own resolver, except that right after the first search it answers, another
    writer (a second Hub on the same store) commits ``racer``: the interleaving two concurrent
    requests produce, made to happen every time."""

    def __init__(self, inner, other: Hub, racer: Op):
        self.inner, self.other, self.racer = inner, other, racer

    def match(self, rtype, query):
        found = self.inner.match(rtype, query)
        if self.racer is not None:
            racer, self.racer = self.racer, None
            assert self.other.execute([racer], Context(), atomic=True)[0].status in (200, 201)
        return found

    def guards(self, rtype, query, searched_at=0):
        return self.inner.guards(rtype, query, searched_at)


def conditional_put(d: dict, query: list[tuple[str, str]]) -> Op:
    res.validate(d["resourceType"], orjson.dumps(d), d)
    return Op("PUT", d["resourceType"], d=d, query=query,
              url=f"{d['resourceType']}?identifier={query[0][1]}")


def test_service_conditional_update_that_lost_a_race_updates_the_winner(hub):
    """Two conditional updates of one absent Patient: the second searched before the first
    committed. It must update the first's Patient, not create a second one (after which every
    conditional update of that identifier would fail with 412)."""
    d = patient()
    query = [("identifier", token(d))]
    other = Hub(hub.store)
    hub.resolver = InterleavingResolver(hub.resolver, other,
                                        conditional_put(dict(d, gender="male"), query))
    r = hub.execute([conditional_put(dict(d, gender="female"), query)], Context(), atomic=True)[0]
    assert (r.status, r.version) == (200, 2)
    assert hub.resolver.inner.match("Patient", query) == [r.rid]
    again = hub.execute([conditional_put(dict(d, gender="other"), query)], Context(),
                        atomic=True)[0]
    assert (again.status, again.rid, again.version) == (200, r.rid, 3)



def test_service_transaction_whose_conditional_create_lost_a_race_references_the_winner(hub):
    """A transaction conditionally creating a Patient and referring to it by the same criteria
    (``Patient?identifier=``): another writer created that Patient between the create's search
    and the reference's. The reference then matched two (the planned and the committed) and the
    transaction failed 412; planned again, its create finds the winner."""
    from hub.core.conditional import parse_query

    d = patient()
    other = Hub(hub.store)
    hub.resolver = InterleavingResolver(hub.resolver, other, put_op(dict(d, id=unique())))
    create = Op("POST", "Patient", d=dict(d), if_none_exist=parse_query(f"identifier={token(d)}"),
                url="Patient", full_url=f"urn:uuid:{unique()}")
    obs = observation(f"Patient?identifier={token(d)}")
    res.validate("Observation", orjson.dumps(obs), obs)
    r = hub.execute([create, Op("POST", "Observation", d=obs, url="Observation")], Context(),
                    atomic=True)
    assert [x.status for x in r] == [200, 201]
    [winner] = hub.resolver.inner.match("Patient", [("identifier", token(d))])
    assert r[0].rid == winner
    stored = orjson.loads(hub.store.latest_many("Observation", [r[1].rid])[r[1].rid][1]
                          .partition(b"\n")[2])
    assert stored["subject"]["reference"] == f"Patient/{winner}"


CLIENTS = 16
IDENTIFIERS = 20


def test_http_concurrent_conditional_updates_make_one_resource_each(client, live):
    """16 clients conditionally update 20 absent Patients, in step: 20 Patients, each with one
    version per client, and a conditional update afterwards updates rather than answers 412."""
    system = f"urn:oid:1.2.156.{int(unique()[:8], 16)}"
    values = [unique() for _ in range(IDENTIFIERS)]

    def put_all(c, i):
        out = []
        for v in values:
            body = patient(v, family=f"C{i}", system=system)
            r = c.put("/Patient", params={"identifier": f"{system}|{v}"}, json=body,
                      headers=FHIR_JSON)
            out.append((r.status_code, r.json().get("id"), r.text[:300]))
        return out

    per_client = run_together(CLIENTS, with_client(live, put_all))
    for k, v in enumerate(values):
        answers = [per_client[i][k] for i in range(CLIENTS)]
        assert Counter(s for s, _, _ in answers) == {201: 1, 200: CLIENTS - 1}, answers
        assert len({rid for _, rid, _ in answers}) == 1, answers
    found = client.get("/Patient", params={"identifier": f"{system}|", "_count": "100",
                                           "_total": "accurate"}).json()
    assert found["total"] == IDENTIFIERS
    rid = per_client[0][0][1]
    assert client.get(f"/Patient/{rid}/_history").json()["total"] == CLIENTS
    after = client.put("/Patient", params={"identifier": f"{system}|{values[0]}"},
                       json=patient(values[0], family="After", system=system), headers=FHIR_JSON)
    assert after.status_code == 200, after.text
    assert after.json()["id"] == rid


def test_http_concurrent_conditional_updates_on_any_search_make_one_resource(client, live):
    """Criteria only the search index answers: the guard re-plans an update that would create
    when a Patient was written since it searched."""
    for _ in range(2):  # an Organization: a person is named only by an identifier
        family = f"U{unique()}"
        query = {"name:exact": family, "active": "true"}

        def put_(c, i):
            body = {"resourceType": "Organization", "name": family, "active": True,
                    "alias": [["one", "two", "three", "four"][i]]}
            return c.put("/Organization", params=query, json=body, headers=FHIR_JSON)

        rs = run_together(4, with_client(live, put_))
        assert Counter(r.status_code for r in rs) == {201: 1, 200: 3}, [r.text for r in rs]
        assert len({r.json()["id"] for r in rs}) == 1
        assert client.get("/Organization", params={"name:exact": family}).json()["total"] == 1


def test_http_concurrent_transactions_with_conditional_updates(client, live):
    """Transactions that conditionally update one absent Patient and add an Observation about
    it (a urn:uuid reference): one Patient, every Observation pointing at it."""
    d = patient()

    def tx(c, i):
        pu = f"urn:uuid:{unique()}"
        b = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": pu, "resource": dict(d, gender=["male", "female"][i % 2]),
             "request": {"method": "PUT", "url": f"Patient?identifier={token(d)}"}},
            {"resource": observation(pu), "request": {"method": "POST", "url": "Observation"}},
        ]}
        return c.post("", json=b, headers=FHIR_JSON)

    rs = run_together(8, with_client(live, tx))
    assert all(r.status_code == 200 for r in rs), [r.text[:300] for r in rs]
    pids = {r.json()["entry"][0]["response"]["location"].split("/")[1] for r in rs}
    assert len(pids) == 1
    (pid,) = pids
    for r in rs:
        oid = r.json()["entry"][1]["response"]["location"].split("/")[1]
        assert client.get(f"/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"
    assert client.get("/Patient", params={"identifier": token(d)}).json()["total"] == 1



def test_http_concurrent_batches_with_conditional_entries(client, live):
    """Batches whose entries conditionally update two absent Patients: one Patient per
    identifier, whatever order the batches commit in."""
    a, b = patient(), patient()

    def batch(c, i):
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": dict(a, gender=["male", "female"][i % 2]),
             "request": {"method": "PUT", "url": f"Patient?identifier={token(a)}"}},
            {"resource": dict(b, gender=["male", "female"][i % 2]),
             "request": {"method": "PUT", "url": f"Patient?identifier={token(b)}"}},
        ]}
        return c.post("", json=bundle, headers=FHIR_JSON)

    rs = run_together(8, with_client(live, batch))
    assert all(r.status_code == 200 for r in rs), [r.text[:300] for r in rs]
    statuses = [e["response"]["status"] for r in rs for e in r.json()["entry"]]
    assert all(s.startswith(("200", "201")) for s in statuses), statuses
    for d in (a, b):
        assert client.get("/Patient", params={"identifier": token(d)}).json()["total"] == 1


def test_http_conditional_delete_in_a_transaction_racing_conditional_updates(client, live):
    """Transactions that conditionally delete one Patient and conditionally update another
    absent one: the first ends deleted (one deletion), the second exists once."""
    gone_, keep = patient(), patient()
    assert client.put("/Patient", params={"identifier": token(gone_)}, json=gone_,
                      headers=FHIR_JSON).status_code == 201

    def tx(c, i):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": f"Patient?identifier={token(gone_)}"}},
            {"resource": dict(keep, gender=["male", "female"][i % 2]),
             "request": {"method": "PUT", "url": f"Patient?identifier={token(keep)}"}},
        ]}
        return c.post("", json=bundle, headers=FHIR_JSON)

    rs = run_together(8, with_client(live, tx))
    assert all(r.status_code == 200 for r in rs), [r.text[:300] for r in rs]
    assert client.get("/Patient", params={"identifier": token(gone_)}).json()["total"] == 0
    assert client.get("/Patient", params={"identifier": token(keep)}).json()["total"] == 1
