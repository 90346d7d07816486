"""History (http.html#history): instance, type and system level, newest first, paging, _since,
_at."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle

from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub, Op, now_instant
from hub.core.pagetokens import page_tokens

from tests.api_helpers import (
    assert_outcome,
    create,
    if_none_exist,
    observation,
    patient,
    put,
    unique,
)

CHINA = timezone(timedelta(hours=8))  # HUB_TIMEZONE's default, which the test servers keep


def pages(client: httpx.Client, path: str, params: dict, between=None) -> list[dict]:
    """Follow next links until exhausted; ``between(page_no)`` runs after every page."""
    out, url, n = [], path, 0
    r = client.get(url, params=params)
    while True:
        assert r.status_code == 200, r.text
        b = r.json()
        assert b["resourceType"] == "Bundle" and b["type"] == "history"
        out.extend(b.get("entry", []))
        n += 1
        if between:
            between(n)
        nxt = [link["url"] for link in b.get("link", []) if link["relation"] == "next"]
        if not nxt:
            return out
        assert nxt[0].startswith("http"), nxt
        r = client.get(nxt[0])
        assert n < 100, "paging does not end"


def versions(entries: list[dict]) -> list[tuple[str, int]]:
    return [(e["fullUrl"].split("/fhir/")[1], int(e["response"]["etag"][3:-1])) for e in entries]


def test_instance_history_newest_first_with_all_details(client, live):
    d = patient(rid=unique())
    rid = d["id"]
    put(client, d)
    for family in ("Li", "Zhao"):
        d["name"][0]["family"] = family
        put(client, d)
    assert client.delete(f"/Patient/{rid}").status_code in (200, 204)

    r = client.get(f"/Patient/{rid}/_history")
    assert r.status_code == 200
    b = r.json()
    assert b["type"] == "history" and b["total"] == 4
    Bundle.model_validate(b)  # a valid R4 Bundle
    entries = b["entry"]
    assert [int(e["response"]["etag"][3:-1]) for e in entries] == [4, 3, 2, 1]
    assert all(e["fullUrl"] == f"{live.base}/Patient/{rid}" for e in entries)
    deleted, *kept = entries
    assert deleted["request"] == {"method": "DELETE", "url": f"Patient/{rid}"}
    assert "resource" not in deleted
    assert [e["resource"]["name"][0]["family"] for e in kept] == ["Zhao", "Li", "Wang"]
    assert [e["resource"]["meta"]["versionId"] for e in kept] == ["3", "2", "1"]
    assert [e["request"]["method"] for e in kept] == ["PUT", "PUT", "PUT"]
    assert kept[-1]["response"]["status"].startswith("201")
    times = [e["response"]["lastModified"] for e in entries]
    assert times == sorted(times, reverse=True)
    for e in kept:  # the history entry is exactly what vread returns
        v = e["resource"]["meta"]["versionId"]
        assert client.get(f"/Patient/{rid}/_history/{v}").json() == e["resource"]


def test_a_re_create_says_201_wherever_its_deletion_is_listed(client):
    """The version written over a deletion created the resource again: 201 on every page,
    also when the deletion is on the next page (it said 200 there) or under a _since that
    leaves it out, at instance, type and system level."""
    d = patient(rid=unique())
    put(client, d)
    assert client.delete(f"/Patient/{d['id']}").status_code in (200, 204)
    assert put(client, d).status_code == 201  # version 3, over the deletion
    since = client.get(f"/Patient/{d['id']}").json()["meta"]["lastUpdated"]
    put(client, d | {"gender": "male"})  # version 4, an update

    def status(entries: list[dict], version: int) -> str:
        (e,) = [e for e in entries if e["fullUrl"].endswith(f"/Patient/{d['id']}")
                and e["response"]["etag"] == f'W/"{version}"']
        return e["response"]["status"]

    def page_of(path: str, params: dict, version: int) -> list[dict]:
        """The entries of the page that lists ``version`` (these are the newest writes)."""
        r = client.get(path, params=params)
        for _ in range(4):
            entries = r.json().get("entry", [])
            if any(e["response"]["etag"] == f'W/"{version}"' for e in entries):
                return entries
            r = client.get(next(link["url"] for link in r.json()["link"]
                                if link["relation"] == "next"))
        raise AssertionError(f"version {version} not listed")

    for path in (f"/Patient/{d['id']}/_history", "/Patient/_history", "/_history"):
        for count in (1, 2, 3):  # the deletion on another page than the re-create, or on its own
            entries = page_of(path, {"_count": str(count)}, 3)
            assert status(entries, 3).startswith("201"), (path, count)
            assert [e for e in entries if e["response"]["etag"] == 'W/"2"'] or count < 3
        entries = page_of(path, {"_count": "1"}, 4)
        assert status(entries, 4).startswith("200"), path
        # the deletion left out by _since
        assert status(page_of(path, {"_since": since}, 3), 3).startswith("201"), path


def test_a_deletion_says_in_history_the_status_its_delete_answered(client):
    d = patient(rid=unique())
    put(client, d)
    deleted = client.delete(f"/Patient/{d['id']}")
    assert deleted.status_code == 200 and deleted.json()["resourceType"] == "OperationOutcome"
    for path in (f"/Patient/{d['id']}/_history", "/Patient/_history", "/_history"):
        (entry,) = [e for e in client.get(path, params={"_count": "5"}).json()["entry"]
                    if e["fullUrl"].endswith(f"/Patient/{d['id']}")
                    and e["request"]["method"] == "DELETE"]
        assert entry["response"]["status"] == "200 OK", path


def test_instance_history_of_created_resource_says_post(client):
    rid = create(client, patient()).json()["id"]
    (entry,) = client.get(f"/Patient/{rid}/_history").json()["entry"]
    assert entry["request"] == {"method": "POST", "url": "Patient"}


def test_history_of_unknown_things(client):
    assert_outcome(client.get(f"/Patient/{unique()}/_history"), 404)
    assert_outcome(client.get("/NoSuchType/_history"), 404)
    assert_outcome(client.get("/Patient/_history", params={"_since": "yesterday"}), 400)
    assert_outcome(client.get("/Patient/_history", params={"_at": "2024-13"}), 400)
    assert_outcome(client.get("/_history", params={"_count": "many"}), 400)
    assert_outcome(client.get("/_history", params={"_cursor": "abc"}), 400)


def test_type_and_system_history(client):
    start = create(client, patient()).json()["meta"]["lastUpdated"]
    p = create(client, patient()).json()
    o = create(client, observation(f"Patient/{p['id']}")).json()

    types = client.get("/Patient/_history", params={"_since": start}).json()
    assert {e["resource"]["resourceType"] for e in types["entry"]} == {"Patient"}
    assert versions(types["entry"])[0] == (f"Patient/{p['id']}", 1)
    assert len(types["entry"]) == 2

    system = client.get("/_history", params={"_since": start}).json()
    assert versions(system["entry"])[:2] == [(f"Observation/{o['id']}", 1),
                                              (f"Patient/{p['id']}", 1)]
    assert len(system["entry"]) == 3
    Bundle.model_validate(system)


def test_count_paging_instance_history_while_writing(client):
    d = patient(rid=unique())
    for i in range(12):
        d["name"][0]["given"] = [f"n{i}"]
        assert put(client, d).status_code in (200, 201)

    def write_more(page_no):  # new versions appear while the client pages
        d["name"][0]["given"] = [f"later{page_no}"]
        put(client, d)

    got = versions(pages(client, f"/Patient/{d['id']}/_history", {"_count": "5"}, write_more))
    assert got == [(f"Patient/{d['id']}", v) for v in range(12, 0, -1)]


def test_count_paging_type_and_system_history_no_duplicates_or_gaps(client):
    first = create(client, patient()).json()
    start, start_id = first["meta"]["lastUpdated"], first["id"]
    written = []
    for i in range(9):
        d = patient(rid=unique()) if i % 3 else observation("Patient/x")
        if i % 3:
            put(client, d)
            written.append(f"Patient/{d['id']}")
        else:
            written.append(f"Observation/{create(client, d).json()['id']}")

    extra = []

    def write_between(_):
        r = create(client, patient())
        extra.append(f"Patient/{r.json()['id']}")

    sys_pages = pages(client, "/_history", {"_since": start, "_count": "4"}, write_between)
    refs = [ref for ref, _ in versions(sys_pages)]
    assert len(refs) == len(set(refs)), "duplicates across pages"
    # everything that existed when paging started, newest first; nothing written after it
    assert refs == written[::-1] + [f"Patient/{start_id}"]
    assert not set(refs) & set(extra)

    existing = extra[::-1] + [w for w in written[::-1] if w.startswith("Patient/")]
    extra.clear()
    type_pages = pages(client, "/Patient/_history", {"_since": start, "_count": "2"},
                       write_between)
    refs = [ref for ref, _ in versions(type_pages)]
    assert len(refs) == len(set(refs))
    assert refs == existing + [f"Patient/{start_id}"]
    assert not set(refs) & set(extra)


def test_count_zero_and_total(client):
    rid = create(client, patient()).json()["id"]
    r = client.get(f"/Patient/{rid}/_history", params={"_count": "0"})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1 and not r.json().get("entry")
    assert not [x for x in r.json()["link"] if x["relation"] == "next"]
    r = client.get("/_history", params={"_count": "0", "_total": "accurate"})
    assert r.status_code == 200, r.text
    assert r.json()["total"] >= 1 and not r.json().get("entry")


def test_since(client):
    d = patient(rid=unique())
    t1 = put(client, d).json()["meta"]["lastUpdated"]
    d["gender"] = "male"
    t2 = put(client, d).json()["meta"]["lastUpdated"]
    ref = f"/Patient/{d['id']}/_history"

    since_t2 = client.get(ref, params={"_since": t2}).json()["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in since_t2] == ["2"]
    assert len(client.get(ref, params={"_since": t1}).json()["entry"]) == 2
    assert client.get(ref, params={"_since": t1}).json()["total"] == 2
    # the same instant written with a +08:00 offset means the same thing
    dt = datetime.fromisoformat(t2.replace("Z", "+00:00")) + timedelta(hours=8)
    local = dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+08:00"
    r = client.get(ref, params={"_since": local})
    assert [e["resource"]["meta"]["versionId"] for e in r.json()["entry"]] == ["2"]
    # partial dates: the start of the period
    assert len(client.get(ref, params={"_since": t1[:4]}).json()["entry"]) == 2
    future = str(int(t1[:4]) + 1)
    assert client.get(ref, params={"_since": future}).json().get("entry", []) == []


def poll(client: httpx.Client, path: str, since: str) -> tuple[list[dict], str]:
    """One round of the documented recipe: the history ``_since`` the last round's time, every
    page followed; its entries and the next round's ``_since`` (the bundles' ``meta.lastUpdated``,
    one time on every page, as ``timestamp``)."""
    entries, times, r = [], set(), client.get(path, params={"_since": since, "_count": "1"})
    while True:
        assert r.status_code == 200, r.text
        b = r.json()
        entries += b.get("entry", [])
        times |= {b["meta"]["lastUpdated"], b["timestamp"]}
        nxt = [link["url"] for link in b["link"] if link["relation"] == "next"]
        if not nxt:
            break
        r = client.get(nxt[0])
    assert len(times) == 1, times
    return entries, times.pop()


def test_polling_since_the_history_time_misses_no_version_committed_late(live, client):
    """A write stamped, then held before it commits while a later-stamped one commits (a
    transaction planned long, against a quick POST): the poll ``_since`` the history's time finds
    it; ``_since`` the largest ``lastModified`` seen would never."""
    _, since = poll(client, "/Patient/_history", now_instant()[0])
    stamped, release = threading.Event(), threading.Event()

    def held_clock() -> tuple[str, int]:
        reading = now_instant()
        stamped.set()
        release.wait(20)
        return reading

    store = live.settings.open_store()
    late = patient(rid=unique())
    answers: list = []
    writer = threading.Thread(target=lambda: answers.extend(Hub(store, clock=held_clock).execute(
        [Op("PUT", "Patient", late["id"], late, url=f"Patient/{late['id']}")], Context(),
        atomic=True)))
    writer.start()
    try:
        assert stamped.wait(20)
        early = create(client, patient()).json()
        first, since = poll(client, "/Patient/_history", since)
    finally:
        release.set()
        writer.join(30)
        store.close()
    assert answers and not isinstance(answers[0], FhirError), answers
    assert answers[0].last_updated < early["meta"]["lastUpdated"]  # stamped first, committed last
    seen = {(e["fullUrl"].rsplit("/", 1)[1]) for e in first}
    assert early["id"] in seen and late["id"] not in seen
    after_max = client.get("/Patient/_history",
                           params={"_since": early["meta"]["lastUpdated"]}).json()
    assert late["id"] not in {e["fullUrl"].rsplit("/", 1)[1] for e in after_max.get("entry", [])}

    second, _ = poll(client, "/Patient/_history", since)
    assert late["id"] in {e["fullUrl"].rsplit("/", 1)[1] for e in second}


def test_a_cursor_sealed_before_pages_on_without_a_time(live, client):
    rid = create(client, patient()).json()["id"]
    tokens = page_tokens(live.settings.data_dir)
    r = client.get("/Patient/_history", params={"_cursor": tokens.seal("999999999999")})
    assert r.status_code == 200, r.text
    assert "meta" not in r.json() and "timestamp" not in r.json()
    assert rid in {e["fullUrl"].rsplit("/", 1)[1] for e in r.json()["entry"]}
    assert_outcome(client.get("/Patient/_history", params={"_cursor": tokens.seal("1:2:3")}), 400)


def test_at_with_full_and_partial_dates(client):
    d = patient(rid=unique())
    t1 = put(client, d).json()["meta"]["lastUpdated"]
    d["gender"] = "male"
    t2 = put(client, d).json()["meta"]["lastUpdated"]
    assert client.delete(f"/Patient/{d['id']}").status_code in (200, 204)
    ref = f"/Patient/{d['id']}/_history"

    def at(value):
        r = client.get(ref, params={"_at": value})
        assert r.status_code == 200, r.text
        return [int(e["response"]["etag"][3:-1]) for e in r.json().get("entry", [])]

    assert at(t1) == [1]  # at the instant of version 1 only version 1 was current
    assert at(t2) == [2]  # version 1 ended exactly when version 2 began
    # a date without a time is a day of the platform's zone (+08:00 by default), not of UTC:
    # from 16:00 UTC on, the UTC date of t1 was a day of +08:00 that had ended before it
    local = datetime.fromisoformat(t1.replace("Z", "+00:00")).astimezone(CHINA).isoformat()
    local2 = datetime.fromisoformat(t2.replace("Z", "+00:00")).astimezone(CHINA).isoformat()
    assert at(local[:10]) == at(local[:7]) == at(local[:4]) == [3, 2, 1] or \
        local[:10] != local2[:10]
    assert 1 in at(local[:10]) and 1 in at(local[:7]) and 1 in at(local[:4])
    assert at("2000") == [] and at("2000-02") == [] and at("2000-02-03") == []

    # type level: only versions current during the period
    r = client.get("/Patient/_history", params={"_at": t1})
    refs = [(e["fullUrl"].rsplit("/", 1)[1], e["response"]["etag"]) for e in r.json()["entry"]]
    assert (d["id"], 'W/"1"') in refs and (d["id"], 'W/"2"') not in refs


def test_history_reflects_conditional_writes(client):
    d = patient()
    r = client.post("/Patient", json=d, headers=if_none_exist(d))
    rid = r.json()["id"]
    assert client.post("/Patient", json=d, headers=if_none_exist(d)).status_code == 200
    assert client.get(f"/Patient/{rid}/_history").json()["total"] == 1


@pytest.mark.parametrize("path,params", [
    ("/Patient/{rid}/_history", {"_count": "0"}),
    ("/Patient/_history", {"_count": "0"}),
    ("/_history", {"_count": "0"}),
    ("/Patient/{rid}/_history", {"_since": "2090-01-01"}),
    ("/Patient/_history", {"_since": "2090-01-01"}),
    ("/_history", {"_since": "2090-01-01"}),
    ("/Patient/{rid}/_history", {"_at": "1999"}),
])
def test_a_history_with_no_versions_has_no_entry(client, path, params):
    """FHIR JSON has no empty array: an empty history answered "entry": [], alone and inside a
    batch's GET entry."""
    rid = put(client, patient(rid=unique())).json()["id"]
    url = path.format(rid=rid)
    b = client.get(url, params=params).json()
    assert b["resourceType"] == "Bundle" and b["type"] == "history" and "entry" not in b, b
    query = "&".join(f"{k}={v}" for k, v in params.items())
    batch = {"resourceType": "Bundle", "type": "batch",
             "entry": [{"request": {"method": "GET", "url": f"{url.lstrip('/')}?{query}"}}]}
    r = client.post("", json=batch, headers={"content-type": "application/fhir+json"})
    [entry] = r.json()["entry"]
    assert entry["response"]["status"].startswith("200"), entry
    assert entry["resource"]["type"] == "history" and "entry" not in entry["resource"]
