"""FHIR R4 REST conformance of the instance and type interactions (http.html), on both backends.

read, vread, create, update (and create-on-update), delete, the conditional variants, If-Match,
If-None-Match, response headers, Prefer, _format/_pretty, and "content unchanged: no new version".
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from email.utils import parsedate_to_datetime

import orjson
import pytest

from tests.api_helpers import (
    FHIR_JSON,
    assert_outcome,
    bundle,
    create,
    etag_version,
    http_date_ok,
    if_none_exist,
    instance_versions,
    observation,
    patient,
    put,
    put_entry,
    resident,
    system_total,
    token,
    unique,
)


@contextmanager
def stores_nothing(client):
    before = system_total(client)
    yield
    assert system_total(client) == before, "a refused request changed the store"


# -- read / vread / create ---------------------------------------------------------------------


def test_create_then_read_and_vread(client, live):
    d = patient(family="Zhang")
    r = create(client, d)
    body = r.json()
    rid = body["id"]
    assert body["resourceType"] == "Patient"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert body["name"] == d["name"] and body["identifier"] == d["identifier"]
    assert r.headers["location"] == f"{live.base}/Patient/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    http_date_ok(r.headers["last-modified"])
    assert r.headers["content-type"].startswith("application/fhir+json")

    got = client.get(f"/Patient/{rid}")
    assert got.status_code == 200
    assert got.json() == body
    assert got.headers["etag"] == 'W/"1"'
    assert got.headers["last-modified"] == r.headers["last-modified"]

    v1 = client.get(f"/Patient/{rid}/_history/1")
    assert v1.status_code == 200 and v1.json() == body
    assert v1.headers["etag"] == 'W/"1"'

    assert_outcome(client.get(f"/Patient/{rid}/_history/2"), 404)
    assert_outcome(client.get(f"/Patient/{rid}/_history/x"), 404)
    assert_outcome(client.get(f"/Patient/{unique()}"), 404)
    assert_outcome(client.get(f"/Patient/{unique()}/_history/1"), 404)


def test_create_ignores_the_id_in_the_body(client):
    sent = patient(rid=f"mine-{unique()[:20]}")
    r = create(client, sent)
    rid = r.json()["id"]
    assert rid != sent["id"]
    assert client.get(f"/Patient/{rid}").status_code == 200
    assert_outcome(client.get(f"/Patient/{sent['id']}"), 404)


def test_the_ids_the_hub_assigns_are_time_ordered_uuids(client):
    """Created resources get UUIDs of version 7: they sort in the order they were created (so a
    commit's keys land together in every index keyed by id), within a transaction too."""
    singly = [create(client, patient()).json()["id"] for _ in range(5)]
    r = client.post("", json=bundle("transaction", *[
        {"fullUrl": f"urn:uuid:{unique()}", "resource": patient(),
         "request": {"method": "POST", "url": "Patient"}} for _ in range(5)]), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    together = [e["response"]["location"].split("/")[1] for e in r.json()["entry"]]
    ids = singly + together
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert sorted(ids) == ids and len(set(ids)) == len(ids)


def test_create_ignores_client_meta_version(client):
    d = patient(meta={"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z",
                      "source": "urn:oid:1.2.3"})
    body = create(client, d).json()
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z"
    assert body["meta"]["source"] == "urn:oid:1.2.3"


# -- update ------------------------------------------------------------------------------------


def test_update_creates_then_versions(client, live):
    rid = unique()
    d = patient(rid=rid)
    r1 = put(client, d)
    assert r1.status_code == 201, r1.text
    assert r1.json()["meta"]["versionId"] == "1"
    assert r1.headers["location"] == f"{live.base}/Patient/{rid}/_history/1"
    assert r1.headers["etag"] == 'W/"1"'

    d["name"][0]["family"] = "Liu"
    r2 = put(client, d)
    assert r2.status_code == 200, r2.text
    assert r2.json()["meta"]["versionId"] == "2"
    assert r2.json()["name"][0]["family"] == "Liu"
    assert r2.headers["etag"] == 'W/"2"'
    http_date_ok(r2.headers["last-modified"])

    assert client.get(f"/Patient/{rid}").json()["name"][0]["family"] == "Liu"
    old = client.get(f"/Patient/{rid}/_history/1").json()
    assert old["name"][0]["family"] == "Wang" and old["meta"]["versionId"] == "1"


# -- delete ------------------------------------------------------------------------------------


def test_delete_then_read_is_gone_and_history_keeps_everything(client):
    rid = unique()
    d = patient(rid=rid)
    assert put(client, d).status_code == 201
    d["gender"] = "female"
    assert put(client, d).status_code == 200

    r = client.delete(f"/Patient/{rid}")
    assert r.status_code in (200, 204), r.text
    if r.status_code == 200 and r.content:
        assert r.json()["resourceType"] == "OperationOutcome"
    assert etag_version(r) == 3

    assert_outcome(client.get(f"/Patient/{rid}"), 410)
    assert_outcome(client.get(f"/Patient/{rid}/_history/3"), 410)
    assert client.get(f"/Patient/{rid}/_history/1").status_code == 200
    assert client.get(f"/Patient/{rid}/_history/2").json()["gender"] == "female"

    entries = instance_versions(client, f"Patient/{rid}")
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "PUT"]
    assert "resource" not in entries[0]

    # deleting again changes nothing; deleting what never existed is fine too
    before = system_total(client)
    assert client.delete(f"/Patient/{rid}").status_code in (200, 204)
    assert client.delete(f"/Patient/{unique()}").status_code in (200, 204)
    assert system_total(client) == before

    # an update after a delete brings it back as a new version (created again: 201)
    r = put(client, d)
    assert r.status_code == 201, r.text
    assert r.json()["meta"]["versionId"] == "4"
    assert client.get(f"/Patient/{rid}").status_code == 200
    # and its history says so (it said 200 for the re-create)
    entries = instance_versions(client, f"Patient/{rid}")
    assert [e["response"]["status"].split()[0] for e in entries] == ["201", "200", "200", "201"]


def test_delete_prefer_minimal_is_204_without_body(client):
    rid = create(client, patient()).json()["id"]
    r = client.delete(f"/Patient/{rid}", headers={"prefer": "return=minimal"})
    assert r.status_code == 204 and r.content == b""
    assert r.headers["etag"] == 'W/"2"'  # the deleted version, as the full answer says
    assert_outcome(client.get(f"/Patient/{rid}"), 410)


# -- conditional create ------------------------------------------------------------------------


def test_conditional_create_no_match_creates(client):
    d = patient()
    r = client.post("/Patient", json=d, headers=if_none_exist(d))
    assert r.status_code == 201, r.text
    assert client.get(f"/Patient/{r.json()['id']}").status_code == 200


def test_conditional_create_one_match_returns_existing(client):
    d = patient()
    first = create(client, d).json()
    before = system_total(client)
    d2 = dict(d, gender="male")
    r = client.post("/Patient", json=d2,
                    headers={**FHIR_JSON, "if-none-exist": f"identifier={token(d)}"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == first["id"]
    assert "gender" not in r.json()  # the existing resource, not the posted one
    assert etag_version(r) == 1
    assert system_total(client) == before
    # the If-None-Exist value may also carry the type and "?"
    r = client.post("/Patient", json=d2,
                    headers={**FHIR_JSON, "if-none-exist": f"Patient?identifier={token(d)}"})
    assert r.status_code == 200 and r.json()["id"] == first["id"]


def test_conditional_create_many_matches_is_412(client):
    value = resident()
    for _ in range(2):
        assert put(client, patient(value, rid=unique())).status_code == 201
    before = system_total(client)
    r = client.post("/Patient", json=patient(value), headers=if_none_exist(patient(value)))
    assert_outcome(r, 412)
    assert system_total(client) == before


def test_a_412_over_the_search_cap_says_at_least_not_a_count(client):
    """The search behind a conditional interaction stops at 1,000 ids: with 1,001 matches the
    412 said "matched 1000 Observation resources", a cap read as a count. Now "at least 1000",
    in a conditional create, update, patch and delete and a conditional reference alike; under
    the cap the count is exact."""
    code = f"urn:test:cap|{unique()}"
    many = [{"resourceType": "Observation", "status": "final",
             "code": {"coding": [{"system": "urn:test:cap", "code": code.split("|")[1]}]}}
            for _ in range(1001)]
    r = client.post("", json=bundle("batch", *({"resource": d, "request": {
        "method": "POST", "url": "Observation"}} for d in many)), headers=FHIR_JSON)
    assert r.status_code == 200 and all(e["response"]["status"].startswith("201")
                                        for e in r.json()["entry"]), r.text[:500]
    query = f"code={code}"
    with stores_nothing(client):
        answers = [
            client.post("/Observation", json=many[0],
                        headers={**FHIR_JSON, "if-none-exist": query}),
            client.put(f"/Observation?{query}", json=many[0], headers=FHIR_JSON),
            client.patch(f"/Observation?{query}", json=[{"op": "add", "path": "/issued",
                                                         "value": "2024-01-01T00:00:00Z"}],
                         headers={"content-type": "application/json-patch+json"}),
            client.delete(f"/Observation?{query}"),
        ]
        obs = dict(many[0], hasMember=[{"reference": f"Observation?{query}"}])
        answers.append(client.post("", json=bundle("transaction", {"resource": obs, "request": {
            "method": "POST", "url": "Observation"}}), headers=FHIR_JSON))
    for r in answers:
        diagnostics = assert_outcome(r, 412)["issue"][0]["diagnostics"]
        assert "matched at least 1000 " in diagnostics, diagnostics
    # two matches, under the cap: counted
    two = f"urn:test:cap|{unique()}"
    for _ in range(2):
        create(client, dict(many[0], code={"coding": [{"system": "urn:test:cap",
                                                        "code": two.split("|")[1]}]}))
    r = client.delete(f"/Observation?code={two}")
    assert "matched 2 Observation resources" in assert_outcome(r, 412)["issue"][0]["diagnostics"]


def test_conditional_writes_on_identifier_alternatives_commit_at_once(client):
    """identifier=a,b has no single index row to guard: its guard is "no Patient written since
    the search". That is the search's log position, not the log's start: with other Patients
    stored, the write commits the first time instead of retrying until it gives up (409)."""
    create(client, patient())  # some other Patient, older than the searches below
    d, other = patient(), patient()
    either = f"{token(d)},{token(other)}"
    r = client.post("/Patient", json=d,
                    headers={**FHIR_JSON, "if-none-exist": f"identifier={either}"})
    assert r.status_code == 201, r.text
    r = client.put("/Patient", params={"identifier": either}, json=dict(d, gender="male"),
                   headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert etag_version(r) == 2


def test_conditional_writes_on_anded_identifiers_commit_when_none_has_them_all(client):
    """identifier=a&identifier=b (or _id=x&identifier=a) finds a resource holding both: one
    holding only ``a`` is no match, and it must not stall the write (it was refused as a
    "concurrent change" after ten seconds of retries, every time, with no concurrency at all)."""
    a = unique()
    b1, b2, b3 = unique(), unique(), unique()

    def org(*second: str) -> dict:
        return {"resourceType": "Organization", "name": "机构", "identifier": [
            {"system": "urn:g1", "value": a}, *({"system": "urn:g2", "value": v} for v in second)]}

    assert client.post("/Organization", json=org(), headers=FHIR_JSON).status_code == 201
    t = time.monotonic()
    criteria = f"identifier=urn:g1|{a}&identifier=urn:g2|{b1}"
    r = client.post("/Organization", json=org(b1), headers={**FHIR_JSON, "if-none-exist": criteria})
    assert r.status_code == 201 and time.monotonic() - t < 5, r.text
    t = time.monotonic()  # (an _id is met only by the body's own: a conditional update's)
    rid = unique()
    r = client.put("/Organization", params={"_id": rid, "identifier": f"urn:g1|{a}"},
                   json={**org(b2), "id": rid}, headers=FHIR_JSON)
    assert r.status_code == 201 and time.monotonic() - t < 5, r.text
    t = time.monotonic()
    r = client.put("/Organization", params=[("identifier", f"urn:g1|{a}"),
                                            ("identifier", f"urn:g2|{b3}")],
                   json=org(b3), headers=FHIR_JSON)
    assert r.status_code == 201 and time.monotonic() - t < 5, r.text
    # the one holding both is found by the ANDed criteria: no second one is made
    r = client.post("/Organization", json=org(b1), headers={
        **FHIR_JSON, "if-none-exist": f"identifier=urn:g1|{a}&identifier=urn:g2|{b1}"})
    assert r.status_code == 200, r.text


def test_an_identifier_too_long_to_be_a_key_is_refused_alike_on_both_stores(client):
    """The store indexes every (system, value) as a key; PostgreSQL refuses an index row over
    2,704 bytes, which failed the write (then a whole batch) as a 503 "retry later" there while
    SQLite stored it. Both now refuse it as the entry's own error, naming the element."""
    long = patient(unique())
    long["identifier"][0]["value"] = "9" * 3000
    r = client.post("/Patient", json=long, headers=FHIR_JSON)
    assert_outcome(r, 422)
    assert "Patient.identifier[0].value" in r.text
    fits = patient(unique())
    fits["identifier"][0]["value"] = "号" * 333  # 999 bytes in UTF-8
    assert client.post("/Patient", json=fits, headers=FHIR_JSON).status_code == 201
    good = [patient(unique()) for _ in range(3)]
    b = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": d, "request": {"method": "POST", "url": "Patient"}} for d in (*good, long)]}
    r = client.post("", json=b, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201"] * 3 + ["422"]


def test_an_if_none_exist_without_criteria_is_refused(client):
    """An empty If-None-Exist (or one of only "?") was taken as no condition at all: the
    create ran unconditionally, and each retry of it made another resource."""
    d = patient()
    with_entry = {"resource": d, "request": {"method": "POST", "url": "Patient"}}
    with stores_nothing(client):
        for criteria in ("", "?", "Patient?"):
            body = assert_outcome(client.post("/Patient", json=d, headers={
                **FHIR_JSON, "if-none-exist": criteria}), 400)
            assert "criteria" in body["issue"][0]["diagnostics"], body
            if not criteria:
                continue  # an empty string is no FHIR string: a Bundle holding it is a 422
            entry = {**with_entry, "request": {**with_entry["request"], "ifNoneExist": criteria}}
            body = assert_outcome(client.post("", json=bundle("transaction", entry),
                                              headers=FHIR_JSON), 400)
            assert "Bundle.entry[0].request.ifNoneExist" in str(body), body
            r = client.post("", json=bundle("batch", entry), headers=FHIR_JSON)
            assert r.json()["entry"][0]["response"]["status"].startswith("400"), r.text


def _org(rid: str | None = None, *idents: tuple[str | None, str], **extra) -> dict:
    d: dict = {"resourceType": "Organization", "name": "机构", **extra}
    if rid:
        d["id"] = rid
    d["identifier"] = [{"value": v} | ({"system": s} if s else {}) for s, v in idents]
    return d


def _conditional_write(client, method: str, criteria: str, d: dict):
    if method == "POST":
        return client.post(f"/{d['resourceType']}", json=d,
                           headers={**FHIR_JSON, "if-none-exist": criteria})
    return client.put(f"/{d['resourceType']}?{criteria}", json=d, headers=FHIR_JSON)


# (method, criteria, the resource written): {v}, {w} are fresh identifier values, {x} a fresh id
_UNMET = [
    ("PUT", "identifier=urn:c|{v}", _org(None, ("urn:c", "N-{v}"))),
    ("POST", "identifier=urn:c|{v}", _org(None, ("urn:c", "N-{v}"))),
    ("POST", "identifier=urn:c|{v}", _org(None, ("urn:other", "{v}"))),
    ("PUT", "identifier=|{v}", _org(None, ("urn:c", "{v}"))),  # |v: no system
    ("POST", "identifier={v}", _org(None, ("urn:c", "{w}"))),
    ("PUT", "identifier=urn:c|{v},urn:c|{w}", _org(None, ("urn:c", "N-{v}"))),
    ("PUT", "identifier=urn:c|{v}&identifier=urn:c|{w}", _org(None, ("urn:c", "{v}"))),
    ("POST", "_id={x}", _org(None, ("urn:c", "{v}"))),  # the server assigns a create's id
    ("PUT", "_id={x}", _org(None, ("urn:c", "{v}"))),
    ("PUT", "_id={x}", _org("other-{x}", ("urn:c", "{v}"))),
    ("PUT", "identifier=urn:c|{v}&active=true", _org(None, ("urn:c", "N-{v}"), active=True)),
    ("PUT", "identifier=urn:oid:2.16.156.10011.1.3|110105198003151234",  # a Patient (a person)
     {"resourceType": "Patient", "identifier": [
         {"system": "urn:oid:2.16.156.10011.1.3", "value": "110101199003077795"}]}),
]
_MET = [
    ("PUT", "identifier=urn:c|{v}", _org(None, ("urn:c", "{v}"))),
    ("POST", "identifier=urn:c|{v}", _org(None, ("urn:d", "{w}"), ("urn:c", "{v}"))),
    ("POST", "identifier={v}", _org(None, ("urn:c", "{v}"))),
    ("PUT", "identifier=|{v}", _org(None, (None, "{v}"))),
    ("PUT", "identifier=urn:c|{v},urn:c|{w}", _org(None, ("urn:c", "{w}"))),
    ("POST", "identifier=urn:c|{v}&identifier=urn:d|{w}",
     _org(None, ("urn:c", "{v}"), ("urn:d", "{w}"))),
    ("PUT", "_id={x}&identifier=urn:c|{v}", _org("{x}", ("urn:c", "{v}"))),
    # what the resource itself cannot answer is left to the search
    ("PUT", "identifier=urn:c|{v}&active=true", _org(None, ("urn:c", "{v}"), active=True)),
    ("POST", "name:exact=Org{v}", _org(None, ("urn:c", "{w}"), name="Org{v}")),
]


def _filled(template, **values):
    return orjson.loads(orjson.dumps(template).decode().replace("{v}", values["v"])
                        .replace("{w}", values["w"]).replace("{x}", values["x"]))


@pytest.mark.parametrize("method, criteria, template", _UNMET)
def test_a_conditional_write_that_would_create_what_its_criteria_miss_is_refused(
        client, method, criteria, template):
    """A conditional create or update that finds nothing, and would create a resource its own
    criteria do not match (PUT ?identifier=urn:c|NEW9 of a Patient carrying urn:c|N-9), made a
    new one each time it was sent: the next try found nothing again. Refused as HAPI does,
    over HTTP, in a transaction and in a batch, each time alike."""
    values = {"v": unique(), "w": unique(), "x": unique()}
    criteria, d = _filled(criteria, **values), _filled(template, **values)
    entry = {"resource": d, "request": {"method": method, "url": d["resourceType"]}}
    if method == "POST":
        entry["request"]["ifNoneExist"] = criteria
    else:
        entry["request"]["url"] += f"?{criteria}"
    with stores_nothing(client):
        for _ in range(2):
            body = assert_outcome(_conditional_write(client, method, criteria, d), 400)
            assert "does not meet" in body["issue"][0]["diagnostics"], body
            assert criteria.split("&")[0].split("=")[0] in body["issue"][0]["diagnostics"]
            body = assert_outcome(client.post("", json=bundle("transaction", entry),
                                              headers=FHIR_JSON), 400)
            assert "does not meet" in str(body), body
            r = client.post("", json=bundle("batch", entry), headers=FHIR_JSON)
            assert r.json()["entry"][0]["response"]["status"].startswith("400"), r.text


@pytest.mark.parametrize("method, criteria, template", _MET)
def test_a_conditional_write_meeting_its_criteria_creates_once(client, method, criteria,
                                                               template):
    values = {"v": unique(), "w": unique(), "x": unique()}
    criteria, d = _filled(criteria, **values), _filled(template, **values)
    r = _conditional_write(client, method, criteria, d)
    assert r.status_code == 201, r.text
    again = _conditional_write(client, method, criteria, d)
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"], again.text


# -- conditional update ------------------------------------------------------------------------


def test_conditional_update_no_match_creates(client):
    d = patient()
    r = client.put("/Patient", params={"identifier": token(d)}, json=d, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert client.get(f"/Patient/{rid}").json()["identifier"] == d["identifier"]


def test_conditional_update_no_match_with_the_id_of_another_record_is_409(client):
    """No match, and the body carries the id of a stored record: 409 (R4B), not an update of
    that record. It replaced another person's Patient (its resident ID and name gone)."""
    other = patient()
    rid = create(client, other).json()["id"]
    d = dict(patient(), id=rid)  # someone else, under the stored record's id
    r = client.put("/Patient", params={"identifier": token(d)}, json=d, headers=FHIR_JSON)
    assert_outcome(r, 409)
    assert client.get(f"/Patient/{rid}").json()["identifier"] == other["identifier"]
    tx = bundle("transaction", {"resource": d, "request": {
        "method": "PUT", "url": f"Patient?identifier={token(d)}"}})
    assert client.post("", json=tx, headers=FHIR_JSON).status_code == 409
    assert etag_version(client.get(f"/Patient/{rid}")) == 1
    # an id that names no stored record: created under it (update as create)
    fresh = dict(patient(), id=unique())
    r = client.put("/Patient", params={"identifier": token(fresh)}, json=fresh, headers=FHIR_JSON)
    assert r.status_code == 201 and r.json()["id"] == fresh["id"], r.text


def test_conditional_update_one_match_updates_it(client):
    d = patient()
    rid = create(client, d).json()["id"]
    d["gender"] = "female"
    r = client.put("/Patient", params={"identifier": token(d)}, json=d, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid and r.json()["meta"]["versionId"] == "2"
    assert client.get(f"/Patient/{rid}").json()["gender"] == "female"

    # a body id that is not the matched resource's id is refused
    wrong = dict(d, id=unique())
    r = client.put("/Patient", params={"identifier": token(d)}, json=wrong, headers=FHIR_JSON)
    assert_outcome(r, 400)
    assert etag_version(client.get(f"/Patient/{rid}")) == 2


def test_conditional_update_many_matches_is_412(client):
    value = resident()
    ids = [unique(), unique()]
    for rid in ids:
        put(client, patient(value, rid=rid))
    before = system_total(client)
    d = patient(value, gender="other")
    r = client.put("/Patient", params={"identifier": token(d)}, json=d, headers=FHIR_JSON)
    assert_outcome(r, 412)
    assert system_total(client) == before
    for rid in ids:
        assert "gender" not in client.get(f"/Patient/{rid}").json()


# -- conditional delete ------------------------------------------------------------------------


def test_conditional_delete_zero_one_many(client):
    before = system_total(client)
    r = client.delete("/Patient", params={"identifier": f"urn:oid:1.2.3|{unique()}"})
    assert r.status_code in (200, 204, 404), r.text
    assert system_total(client) == before

    d = patient()
    rid = create(client, d).json()["id"]
    r = client.delete("/Patient", params={"identifier": token(d)})
    assert r.status_code in (200, 204), r.text
    assert_outcome(client.get(f"/Patient/{rid}"), 410)
    # the deleted resource no longer matches: a conditional create makes a new one
    r = client.post("/Patient", json=d, headers=if_none_exist(d))
    assert r.status_code == 201 and r.json()["id"] != rid

    value = resident()
    ids = [unique(), unique()]
    for x in ids:
        put(client, patient(value, rid=x))
    before = system_total(client)
    r = client.delete("/Patient", params={"identifier": token(patient(value))})
    assert_outcome(r, 412)
    assert system_total(client) == before
    for x in ids:
        assert client.get(f"/Patient/{x}").status_code == 200


# -- If-Match (version-aware updates) ----------------------------------------------------------


def test_if_match_wrong_version_is_412_and_stores_nothing(client):
    d = patient(rid=unique())
    put(client, d)
    d["gender"] = "male"
    before = system_total(client)
    r = put(client, d, **{"if-match": 'W/"2"'})
    assert_outcome(r, 412)
    r = client.delete(f"/Patient/{d['id']}", headers={"if-match": 'W/"5"'})
    assert_outcome(r, 412)
    assert system_total(client) == before
    assert etag_version(client.get(f"/Patient/{d['id']}")) == 1

    # an If-Match on a resource that does not exist cannot match either
    assert_outcome(put(client, patient(rid=unique()), **{"if-match": 'W/"1"'}), 412)


def test_if_match_current_version_succeeds(client):
    d = patient(rid=unique())
    put(client, d)
    d["gender"] = "male"
    r = put(client, d, **{"if-match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert etag_version(r) == 2
    d["gender"] = "female"
    r = put(client, d, **{"if-match": '"2"'})  # strong form accepted too
    assert r.status_code == 200 and etag_version(r) == 3
    r = client.delete(f"/Patient/{d['id']}", headers={"if-match": 'W/"3"'})
    assert r.status_code in (200, 204)
    assert_outcome(client.get(f"/Patient/{d['id']}"), 410)


def _put_if_none_match(client, how: str, d: dict, value: str = "*"):
    """A PUT of ``d`` with If-None-Match ``value``: by id, by its identifier, or as the entry
    of a transaction or of a batch (its ifNoneMatch): (status, the answer's version or None)."""
    if how in ("transaction", "batch"):
        entry = put_entry(d)
        entry["request"]["ifNoneMatch"] = value
        r = client.post("", json=bundle(how, entry), headers=FHIR_JSON)
        if how == "transaction" and r.status_code != 200:
            return r.status_code, None
        response = r.json()["entry"][0]["response"]
        tag = response.get("etag")
        return int(response["status"][:3]), int(tag[3:-1]) if tag else None
    headers = {**FHIR_JSON, "if-none-match": value}
    r = (put(client, d, **headers) if how == "update" else
         client.put("/Patient", params={"identifier": token(d)}, json=d, headers=headers))
    return r.status_code, etag_version(r) if r.status_code < 300 else None


@pytest.mark.parametrize("how", ["update", "conditional update", "transaction", "batch"])
def test_if_none_match_star_puts_only_where_nothing_is(client, how):
    """RFC 9110 13.1.2: If-None-Match: * makes a PUT create-only. It was ignored, and the PUT
    overwrote what was there. Over a current resource: 412, nothing written; where there is
    none, or it is deleted: created. An entity tag there is refused, not ignored."""
    d = patient(rid=unique())
    assert _put_if_none_match(client, how, d) == (201, 1)
    before = system_total(client)
    assert _put_if_none_match(client, how, d | {"gender": "male"}) == (412, None)
    assert system_total(client) == before
    assert "gender" not in client.get(f"/Patient/{d['id']}").json()
    assert client.delete(f"/Patient/{d['id']}").status_code == 200
    assert _put_if_none_match(client, how, d | {"gender": "female"}) == (201, 3)
    assert client.get(f"/Patient/{d['id']}").json()["gender"] == "female"
    assert _put_if_none_match(client, how, d, 'W/"3"')[0] == 400
    assert etag_version(client.get(f"/Patient/{d['id']}")) == 3


def test_if_match_star_writes_only_a_current_resource(client):
    """RFC 9110 13.1.1: If-Match: * holds when the resource exists (it was a 400). Update,
    conditional update, patch, delete and a transaction's ifMatch go ahead on a current
    resource; on one that does not exist or is deleted they are 412 and create nothing."""
    star = {"if-match": "*"}
    missing = patient(rid=unique())
    before = system_total(client)
    assert_outcome(put(client, missing, **star), 412)  # not created
    assert_outcome(client.put("/Patient", params={"identifier": token(missing)}, json=missing,
                              headers={**FHIR_JSON, **star}), 412)
    assert_outcome(client.delete(f"/Patient/{missing['id']}", headers=star), 412)
    assert_outcome(client.post("", json=bundle("transaction", put_entry(missing, if_match="*")),
                               headers=FHIR_JSON), 412)
    assert system_total(client) == before
    assert_outcome(client.get(f"/Patient/{missing['id']}"), 404)

    d = patient(rid=unique())
    put(client, d)
    r = put(client, d | {"gender": "male"}, **star)
    assert r.status_code == 200 and etag_version(r) == 2, r.text
    r = client.put("/Patient", params={"identifier": token(d)}, json=d | {"gender": "female"},
                   headers={**FHIR_JSON, **star})
    assert r.status_code == 200 and etag_version(r) == 3, r.text
    r = client.patch(f"/Patient/{d['id']}", content=b'[{"op": "replace", "path": "/gender", '
                     b'"value": "other"}]',
                     headers={**star, "content-type": "application/json-patch+json"})
    assert r.status_code == 200 and etag_version(r) == 4, r.text
    r = client.post("", json=bundle("transaction", put_entry(d | {"gender": "male"}, if_match="*")),
                    headers=FHIR_JSON)
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["etag"] == 'W/"5"', r.text
    assert client.delete(f"/Patient/{d['id']}", headers=star).status_code in (200, 204)
    # deleted: nothing current to match
    assert_outcome(put(client, d, **star), 412)
    assert_outcome(client.delete(f"/Patient/{d['id']}", headers=star), 412)
    assert_outcome(client.get(f"/Patient/{d['id']}"), 410)
    # a patch of nothing fails as without the condition (RFC 9110 13.2.1)
    for rid, status in ((d["id"], 410), (missing["id"], 404)):
        assert_outcome(client.patch(f"/Patient/{rid}", content=b"[]", headers={
            **star, "content-type": "application/json-patch+json"}), status)


def test_if_match_naming_a_version_writes_only_a_current_resource(client):
    """A version tag held where ``*`` did not: a PUT with If-Match naming the deletion's version
    brought a deleted resource back (201), and one naming W/"0" created a resource never
    written. A tag holds of a current version only: 412, nothing created."""
    missing = patient(rid=unique())
    before = system_total(client)
    assert_outcome(put(client, missing, **{"if-match": 'W/"0"'}), 412)
    assert_outcome(put(client, missing, **{"if-match": 'W/"1"'}), 412)
    assert_outcome(client.post("", json=bundle("transaction", put_entry(missing, if_match='W/"0"')),
                               headers=FHIR_JSON), 412)
    assert system_total(client) == before
    assert_outcome(client.get(f"/Patient/{missing['id']}"), 404)

    d = patient(rid=unique())
    put(client, d)
    assert client.delete(f"/Patient/{d['id']}").status_code in (200, 204)  # version 2
    for tag in ('W/"2"', 'W/"1"', 'W/"1", W/"2"'):
        assert_outcome(put(client, d, **{"if-match": tag}), 412)
    assert_outcome(client.get(f"/Patient/{d['id']}"), 410)
    r = put(client, d)  # without a condition, a deleted resource is created again
    assert r.status_code == 201 and etag_version(r) == 3, r.text


def test_if_match_star_conditional_update_matching_nothing_names_no_id(client):
    """The 412 says nothing matched the criteria, not that an id the hub would mint is missing."""
    d = patient()
    d.pop("id", None)
    r = client.put("/Patient", params={"identifier": token(d)}, json=d,
                   headers={**FHIR_JSON, "if-match": "*"})
    text = assert_outcome(r, 412)["issue"][0]["diagnostics"]
    assert "no Patient matched the criteria" in text and "Patient/" not in text, text


# -- Prefer ------------------------------------------------------------------------------------


def test_prefer_return_minimal(client, live):
    r = client.post("/Patient", json=patient(), headers={**FHIR_JSON, "prefer": "return=minimal"})
    assert r.status_code == 201
    assert r.content == b""
    assert r.headers["location"].startswith(f"{live.base}/Patient/")
    assert r.headers["etag"] == 'W/"1"'
    rid = r.headers["location"].split("/")[-3]
    d = client.get(f"/Patient/{rid}").json()
    d["gender"] = "male"
    r = put(client, d, prefer="return=minimal")
    assert r.status_code == 200 and r.content == b"" and r.headers["etag"] == 'W/"2"'


def test_prefer_with_several_preferences(client):
    """RFC 7240: several preferences in one header, separated by commas."""
    for prefer in ("return=minimal, handling=strict", "handling=lenient,return=minimal",
                   'return="minimal"'):
        r = client.post("/Patient", json=patient(), headers={**FHIR_JSON, "prefer": prefer})
        assert r.status_code == 201 and r.content == b"", (prefer, r.text)
    r = client.post("/Patient", json=patient(),
                    headers={**FHIR_JSON, "prefer": "respond-async, return=OperationOutcome"})
    assert r.json()["resourceType"] == "OperationOutcome"


def test_prefer_in_a_transaction(client):
    b = bundle("transaction", put_entry(patient(rid=unique())))
    r = client.post("", json=b, headers={**FHIR_JSON, "prefer": "return=minimal"})
    assert r.status_code == 200
    (entry,) = r.json()["entry"]
    assert "resource" not in entry and entry["response"]["etag"] == 'W/"1"'
    b["entry"][0]["resource"]["gender"] = "male"
    r = client.post("", json=b, headers={**FHIR_JSON, "prefer": "return=representation"})
    assert r.json()["entry"][0]["resource"]["gender"] == "male"


def test_prefer_return_representation(client):
    d = patient()
    r = client.post("/Patient", json=d, headers={**FHIR_JSON, "prefer": "return=representation"})
    assert r.status_code == 201
    assert r.json()["resourceType"] == "Patient" and r.json()["identifier"] == d["identifier"]


def test_prefer_return_operation_outcome(client):
    r = client.post("/Patient", json=patient(),
                    headers={**FHIR_JSON, "prefer": "return=OperationOutcome"})
    assert r.status_code == 201
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["etag"] == 'W/"1"' and "location" in r.headers


# -- formats -----------------------------------------------------------------------------------


def test_format_json_variants_and_unknown_formats(client):
    rid = create(client, patient()).json()["id"]
    for fmt in ("json", "application/fhir+json", "application/json"):
        r = client.get(f"/Patient/{rid}", params={"_format": fmt})
        assert r.status_code == 200 and r.json()["id"] == rid
    for fmt in ("xml", "application/fhir+xml", "text/xml"):  # tests/test_api_xml.py says more
        r = client.get(f"/Patient/{rid}", params={"_format": fmt})
        # a generic type asked for is the type answered (http.html#mime-type)
        assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == \
            ("text/xml" if fmt == "text/xml" else "application/fhir+xml")
    # a + left unescaped in the query reads as a space: the type meant, as HAPI reads it
    for fmt, xml in (("application/fhir+json", False), ("application/json+fhir", False),
                     ("application/fhir+xml", True)):
        r = client.get(f"/Patient/{rid}?_format={fmt}")
        assert r.status_code == 200, (fmt, r.text[:200])
        assert r.headers["content-type"].startswith(
            "application/fhir+xml" if xml else "application/fhir+json"), fmt
    assert_outcome(client.get(f"/Patient/{rid}", params={"_format": "yaml"}), 406)
    assert_outcome(client.get(f"/Patient/{rid}", headers={"accept": "text/csv"}), 406)
    before = system_total(client)
    r = client.post("/Patient", params={"_format": "turtle"}, json=patient(), headers=FHIR_JSON)
    assert_outcome(r, 406)
    assert system_total(client) == before


def test_pretty(client):
    rid = create(client, patient()).json()["id"]
    plain = client.get(f"/Patient/{rid}")
    nice = client.get(f"/Patient/{rid}", params={"_pretty": "true"})
    assert b"\n" not in plain.content
    assert b"\n  " in nice.content
    assert nice.json() == plain.json()
    assert client.get(f"/Patient/{rid}", params={"_pretty": "false"}).content == plain.content


def test_pretty_indents_the_resources_inside_a_bundle(client):
    """_pretty=true indents a Bundle's resources too (they were left on one line each), and
    keeps each decimal as written."""
    d = patient()
    rid = create(client, d).json()["id"]
    o = observation(f"Patient/{rid}") | {"valueQuantity": {"value": 1.50, "unit": "/min"}}
    raw = orjson.dumps(o).replace(b'"value":1.5,', b'"value":1.50,')
    assert client.post("/Observation", content=raw, headers=FHIR_JSON).status_code == 201
    for path, params in ((f"/Patient/{rid}/_history", {}), ("/Patient", {"identifier": token(d)}),
                         ("/Observation", {"subject": f"Patient/{rid}"}),
                         (f"/Patient/{rid}/$everything", {})):
        plain = client.get(path, params=params)
        nice = client.get(path, params={**params, "_pretty": "true"})
        assert nice.status_code == 200 and nice.json()["entry"], (path, nice.text)
        assert b"\n" not in plain.content  # compact without it
        lines = nice.content.split(b"\n")
        assert all(line.count(b'":') <= 1 for line in lines), (path, nice.text)
        if path == "/Observation":
            assert b'"value": 1.50,' in nice.content, nice.text
    # a transaction's answer too
    b = bundle("transaction", put_entry(patient(rid=unique())))
    r = client.post("", json=b, params={"_pretty": "true"}, headers=FHIR_JSON)
    assert r.status_code == 200 and all(line.count(b'":') <= 1 for line in r.content.split(b"\n"))


# -- If-None-Match (conditional read) ----------------------------------------------------------


def test_if_none_match_gives_304(client):
    d = patient(rid=unique())
    put(client, d)
    r = client.get(f"/Patient/{d['id']}", headers={"if-none-match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == 'W/"1"'
    d["gender"] = "male"
    put(client, d)
    r = client.get(f"/Patient/{d['id']}", headers={"if-none-match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["gender"] == "male"
    r = client.get(f"/Patient/{d['id']}", headers={"if-none-match": 'W/"7", W/"2"'})
    assert r.status_code == 304 and r.headers["etag"] == 'W/"2"'
    r = client.get(f"/Patient/{d['id']}", headers={"if-none-match": "*"})
    assert r.status_code == 304
    # vread honours it too
    r = client.get(f"/Patient/{d['id']}/_history/1", headers={"if-none-match": 'W/"1"'})
    assert r.status_code == 304


def test_if_modified_since_gives_304_when_nothing_changed_after_the_date(client):
    from email.utils import format_datetime

    d = patient(rid=unique())
    put(client, d)
    url = f"/Patient/{d['id']}"
    modified = parsedate_to_datetime(client.get(url).headers["last-modified"])

    def read(since, **more):
        return client.get(url, headers={"if-modified-since": since, **more})

    at = format_datetime(modified, usegmt=True)
    before = format_datetime(modified - timedelta(seconds=1), usegmt=True)
    r = read(at)
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == 'W/"1"' and r.headers["last-modified"] == at
    assert read(before).status_code == 200 and read(before).json()["id"] == d["id"]
    # not a date, or a date ahead of the server's clock: ignored, the full answer
    for since in ("yesterday", "", "Sun, 06 Dec 2099 03:00:00 GMT"):
        assert read(since).status_code == 200, since
    # If-None-Match decides when both are sent (RFC 9110 13.2.2)
    assert read(at, **{"if-none-match": 'W/"9"'}).status_code == 200
    assert read(before, **{"if-none-match": 'W/"1"'}).status_code == 304
    time.sleep(1.05)  # a change in a later second than the one the client holds
    d["gender"] = "male"
    put(client, d)
    r = read(at)
    assert r.status_code == 200 and r.json()["gender"] == "male"


# -- content unchanged: no new version ---------------------------------------------------------


def test_same_put_twice_makes_one_version(client):
    d = patient(rid=unique())
    assert put(client, d).status_code == 201
    before = system_total(client)
    r = put(client, d)
    assert r.status_code == 200, r.text
    assert etag_version(r) == 1 and r.json()["meta"]["versionId"] == "1"
    # the stored meta sent back (versionId, lastUpdated) does not count as a change either
    stored = client.get(f"/Patient/{d['id']}").json()
    assert etag_version(put(client, stored)) == 1
    assert system_total(client) == before
    assert len(instance_versions(client, f"Patient/{d['id']}")) == 1


def test_same_batch_twice_changes_nothing(client):
    ids = [unique() for _ in range(3)]
    b = bundle("batch", *(put_entry(patient(rid=x)) for x in ids))
    r1 = client.post("", json=b, headers=FHIR_JSON)
    assert r1.status_code == 200, r1.text
    assert [e["response"]["status"][:3] for e in r1.json()["entry"]] == ["201"] * 3
    before = system_total(client)
    r2 = client.post("", json=b, headers=FHIR_JSON)
    assert r2.status_code == 200
    assert [e["response"]["status"][:3] for e in r2.json()["entry"]] == ["200"] * 3
    assert [e["response"]["etag"] for e in r2.json()["entry"]] == ['W/"1"'] * 3
    assert system_total(client) == before


def test_stored_bytes_are_served_unchanged(client):
    """Reads return exactly the stored JSON (no re-serialisation drift between reads)."""
    rid = create(client, patient()).json()["id"]
    a = client.get(f"/Patient/{rid}").content
    b = client.get(f"/Patient/{rid}/_history/1").content
    assert a == b
    assert orjson.loads(a)["id"] == rid


def test_decimal_precision_is_kept(client):
    """FHIR decimals keep their precision: 1.50 is not 1.5 (json.html)."""
    raw = (b'{"resourceType":"Observation","status":"final","code":{"text":"glucose"},'
           b'"valueQuantity":{"value":1.50,"unit":"mmol/L"}}')
    r = client.post("/Observation", content=raw, headers=FHIR_JSON)
    assert r.status_code == 201
    assert b'"value":1.50' in client.get(f"/Observation/{r.json()['id']}").content


@pytest.mark.parametrize("rtype", ["Observation", "Organization"])
def test_other_types_round_trip(client, rtype):
    bodies = {
        "Observation": {"resourceType": "Observation", "status": "final",
                        "code": {"text": "heart rate"}},
        "Organization": {"resourceType": "Organization", "name": "Township health centre"},
    }
    r = client.post(f"/{rtype}", json=bodies[rtype], headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    got = client.get(f"/{rtype}/{r.json()['id']}")
    assert got.status_code == 200 and got.json()["resourceType"] == rtype


def test_search_count_zero_gives_total_without_paging(client):
    d = patient()
    create(client, d)
    for params in ({"identifier": token(d), "_count": "0"}, {"_count": "0"}):
        r = client.get("/Patient", params=params)
        assert r.status_code == 200, r.text
        b = r.json()
        assert b["total"] >= 1 and not b.get("entry")
        assert not [x for x in b["link"] if x["relation"] == "next"], b["link"]


def test_a_connector_names_its_institution_and_feed_in_the_event_source(client, live):
    from hub.core.events import from_stored

    r = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"},
                    headers={"content-type": "application/fhir+json",
                             "x-hub-source-institution": "H0001", "x-hub-source-feed": "h0001-adt"})
    assert r.status_code == 201
    plain = client.post("/Patient", json={"resourceType": "Patient"},
                        headers={"content-type": "application/fhir+json"})
    store = live.settings.open_store()
    try:
        [named] = store.versions("Patient", r.json()["id"])
        [anon] = store.versions("Patient", plain.json()["id"])
    finally:
        store.close()
    assert from_stored(named).source == {"feed": "h0001-adt", "institution": "H0001"}
    assert from_stored(anon).source == {"feed": "rest"}


def test_head_answers_like_get_without_a_body(client):
    from tests.api_helpers import create as _create
    from tests.api_helpers import patient as _patient

    loc = _create(client, _patient()).headers["location"].split("/_history")[0]
    rid = loc.rstrip("/").split("/")[-1]
    for path in ("/metadata", f"/Patient/{rid}", f"/Patient/{rid}/_history/1", f"/Patient/{rid}/_history",
                 "/Patient?_count=1", "/Patient/missing-one", "/Patient/x/_history/99"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        for h in ("content-type", "etag", "last-modified", "content-length"):
            if h in got.headers and h != "content-length":
                assert head.headers.get(h) == got.headers[h], (path, h)
    etag = client.get(f"/Patient/{rid}").headers["etag"]
    assert client.head(f"/Patient/{rid}", headers={"if-none-match": etag}).status_code == 304


def test_head_answers_like_get_on_the_operations(client):
    """HEAD wherever GET: the operations registered GET only let a HEAD fall through to a route
    that took the path another way (HEAD Patient/{id}/$everything: the compartment search of
    type "$everything", a 400; HEAD CodeSystem/$lookup: a read of id "$lookup")."""
    from tests.api_helpers import create as _create
    from tests.api_helpers import patient as _patient

    rid = _create(client, _patient()).json()["id"]
    for path in (f"/Patient/{rid}/$everything", f"/Patient/{rid}/$timeline",
                 "/CodeSystem/$lookup?system=http://loinc.org&code=8867-4",
                 "/ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/administrative-gender",
                 "/$unmapped-codes", "/$quality-report", "/$mpi-review",
                 f"/Person?patient=Patient/{rid}", "/.well-known/smart-configuration"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, (path, got.status_code, head.status_code)
        assert head.content == b"", path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path


def test_every_route_that_takes_get_takes_head():
    """Over the route table: no GET route without HEAD (the 405's Allow already said HEAD)."""
    import tempfile
    from pathlib import Path

    from hub.api.app import create_app
    from hub.core.config import Settings

    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="hub-routes-")), auth=False))

    def walk(routes):
        for route in routes:
            if hasattr(route, "original_router"):
                yield from walk(route.original_router.routes)
            else:
                yield route
    gets = [r for r in walk(app.routes) if "GET" in (getattr(r, "methods", None) or ())]
    assert len(gets) > 30
    # but the GETs that start work: a HEAD asks what a GET would answer, and starts nothing
    assert sorted(r.path for r in gets if "HEAD" not in r.methods) == [
        "/fhir/$export", "/fhir/Group/{gid}/$export", "/fhir/Patient/$export"]


def test_a_read_takes_summary_and_elements(client):
    """R4: _summary and _elements can be used when reading a resource, as in a search: the
    mandatory elements, meta and the SUBSETTED tag; a value a read cannot take is a 400."""
    d = patient(gender="female", text={"status": "generated",
                                       "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'})
    rid = create(client, d).json()["id"]
    subsetted = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                 "code": "SUBSETTED"}
    for url in (f"/Patient/{rid}", f"/Patient/{rid}/_history/1"):
        el = client.get(url, params={"_elements": "gender"}).json()
        assert el["gender"] == "female" and "name" not in el and "identifier" not in el
        assert subsetted in el["meta"]["tag"] and el["id"] == rid
        text = client.get(url, params={"_summary": "text"}).json()
        assert "text" in text and "name" not in text and subsetted in text["meta"]["tag"]
        data = client.get(url, params={"_summary": "data"}).json()
        assert "text" not in data and data["name"] == d["name"]
        assert "name" in client.get(url, params={"_summary": "true"}).json()  # a summary element
        whole = client.get(url, params={"_summary": "false"}).json()
        assert "text" in whole and "tag" not in whole["meta"]
    for bad in ("count", "bogus"):
        assert_outcome(client.get(f"/Patient/{rid}", params={"_summary": bad}), 400)


def test_a_conditional_delete_with_an_empty_criterion_says_so(client):
    """DELETE /Flag?status= answered "Unsupported search parameter(s): status", when status is
    supported and only its value is missing."""
    r = client.delete("/Flag", params={"status": ""})
    outcome = assert_outcome(r, 400)
    text = outcome["issue"][0]["diagnostics"]
    assert "without a value: status" in text and "Unsupported" not in text, text


SUMMARY_CASES = [
    # (resource, what _summary=true keeps of it, beside resourceType, id and meta)
    ({"resourceType": "Patient", "name": [{"family": "F"}],
      "photo": [{"contentType": "image/png", "data": "AAAA"}],
      "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": True}]},
     {"name": [{"family": "F"}],
      "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": True}]}),
    ({"resourceType": "DocumentReference", "status": "current",
      "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8=", "size": 5}},
                  {"attachment": {"data": "aGk="}}]},
     {"status": "current", "content": [{"attachment": {"contentType": "text/plain", "size": 5}}]}),
    ({"resourceType": "Patient", "name": [{"family": "F", "extension": [{
        "url": "http://example.org/a", "valueAttachment": {"title": "t", "data": "aGk="}}]}]},
     {"name": [{"family": "F", "extension": [{"url": "http://example.org/a",
                                               "valueAttachment": {"title": "t"}}]}]}),
    ({"resourceType": "Bundle", "type": "collection", "entry": [{
        "fullUrl": "urn:uuid:8f1d4c02-7b1e-4c4e-9a3e-2b8c9f0e6a11",
        "resource": {"resourceType": "Media", "status": "completed",
                     "content": {"contentType": "image/png", "data": "AAAA", "title": "x"}}}]},
     {"type": "collection", "entry": [{
         "fullUrl": "urn:uuid:8f1d4c02-7b1e-4c4e-9a3e-2b8c9f0e6a11",
         "resource": {"resourceType": "Media", "status": "completed",
                      "content": {"contentType": "image/png", "title": "x"}}}]}),
]


@pytest.mark.parametrize("d,summary", SUMMARY_CASES)
def test_a_summary_is_r4s_no_attachment_data_and_every_modifier(client, d, summary):
    """R4 ElementDefinition.isSummary: "Other than Attachment.data, all data type properties are
    included", and modifiers are summary elements: a summary kept a photo's or a document's
    base64 content, and left out modifierExtension (which changes what the rest means)."""
    rtype = d["resourceType"]
    rid = create(client, d).json()["id"]
    for url, params in ((f"/{rtype}/{rid}", {}), (f"/{rtype}", {"_id": rid})):
        r = client.get(url, params={**params, "_summary": "true"})
        assert r.status_code == 200, r.text
        got = r.json() if not params else r.json()["entry"][0]["resource"]
        assert {k: v for k, v in got.items() if k not in ("resourceType", "id", "meta")} \
            == summary, url
