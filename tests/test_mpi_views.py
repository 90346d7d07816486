"""The Person view, $everything, $timeline, identifier resolution, the review queue and the access
audit over real HTTP against ``hub serve`` (SQLite and PostgreSQL).

One server per backend; each test makes its own Patients (ids carry a per-test prefix), so the
tests do not depend on each other's order.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import httpx
import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent as AuditEventModel
from fhir.resources.R4B.bundle import Bundle as BundleModel
from fhir.resources.R4B.person import Person as PersonModel

from hub.core import httpclient
from hub.mpi.identity import IdentityService

from .conftest import matching_server

FHIR = {"content-type": "application/fhir+json"}
USER = {"X-Hub-User": "steward-li"}
CARD = "urn:oid:2.16.156.10011.1.19"
RESIDENT = "urn:oid:2.16.156.10011.1.3"
YEARS = {"a": 2019, "b": 2021, "c": 2023, "z": 2020}  # when each Patient's visits happened


def records(pid: str, year: int) -> list[dict]:
    """A Patient's visit: Encounter, Condition, Observation, MedicationRequest, Procedure."""
    subj = {"reference": f"Patient/{pid}"}
    t = f"{year}-05-0{{}}T09:00:00+08:00"
    return [
        {"resourceType": "Encounter", "id": f"{pid}-enc", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": subj, "period": {"start": t.format(1)}},
        {"resourceType": "Condition", "id": f"{pid}-dx", "subject": subj,
         "code": {"text": "hypertension"}, "onsetDateTime": t.format(2)},
        {"resourceType": "Observation", "id": f"{pid}-obs", "status": "final",
         "code": {"text": "blood pressure"}, "subject": subj, "effectiveDateTime": t.format(3)},
        {"resourceType": "MedicationRequest", "id": f"{pid}-rx", "status": "active",
         "intent": "order", "medicationCodeableConcept": {"text": "amlodipine"},
         "subject": subj, "authoredOn": t.format(4)},
        {"resourceType": "Procedure", "id": f"{pid}-proc", "status": "completed",
         "code": {"text": "ECG"}, "subject": subj, "performedDateTime": t.format(5)},
    ]


def put_person_data(c: httpx.Client, prefix: str, who: str, institution: str,
                    identifiers: list[dict]) -> str:
    pid = f"{prefix}-{who}"
    patient = {"resourceType": "Patient", "id": pid, "identifier": identifiers,
               "name": [{"family": "李", "given": ["四"]}], "gender": "female",
               "birthDate": "1975-03-04"}
    entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in [patient, *records(pid, YEARS[who])]]
    r = c.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
               headers={**FHIR, "X-Hub-Source-Institution": institution})
    assert r.status_code == 200, r.text
    return pid


@pytest.fixture
def data(client) -> dict:
    """Four Patients: a (H1), b (H2), c (H3) are one woman; z (H1) is someone else."""
    prefix = uuid.uuid4().hex[:8]
    card = f"HC{prefix}"
    out = {"prefix": prefix, "card": card}
    out["a"] = put_person_data(client, prefix, "a", "H1",
                               [{"system": "urn:oid:1.2.3.1", "value": f"MR-{prefix}-a"},
                                {"system": RESIDENT, "value": f"R{prefix}"}])
    out["b"] = put_person_data(client, prefix, "b", "H2",
                               [{"system": "urn:oid:1.2.3.2", "value": f"MR-{prefix}-b"},
                                {"system": CARD, "value": card}])
    out["c"] = put_person_data(client, prefix, "c", "H3",
                               [{"system": "urn:oid:1.2.3.3", "value": f"MR-{prefix}-c"}])
    out["z"] = put_person_data(client, prefix, "z", "H1",
                               [{"system": "urn:oid:1.2.3.1", "value": f"MR-{prefix}-z"}])
    return out


def params(**values) -> dict:
    out = []
    for name, v in values.items():
        if v is None:
            continue
        key = "valueReference" if isinstance(v, str) and "/" in v else "valueString"
        out.append({"name": name, key: {"reference": v} if key == "valueReference" else v})
    return {"resourceType": "Parameters", "parameter": out}


def op(c: httpx.Client, name: str, expect: int = 200, **values) -> dict:
    r = c.post(f"/Person/${name}", json=params(**values), headers={**FHIR, **USER})
    assert r.status_code == expect, r.text
    return r.json()


def ids(bundle: dict) -> list[str]:
    return [e["fullUrl"].split("/fhir/", 1)[1] for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") != "outcome"]


def everything(c: httpx.Client, path: str, **q) -> list[str]:
    r = c.get(f"{path}/$everything", params=q)
    assert r.status_code == 200, r.text
    BundleModel.model_validate_json(r.content)
    return sorted(ids(r.json()))


def timeline(c: httpx.Client, path: str, **q) -> list[str]:
    r = c.get(f"{path}/$timeline", params=q)
    assert r.status_code == 200, r.text
    return ids(r.json())


def record_of(*pids: str) -> list[str]:
    out = []
    for pid in pids:
        out.append(f"Patient/{pid}")
        out += [f"{r['resourceType']}/{r['id']}" for r in records(pid, 2000)]
    return sorted(out)


def timeline_of(*pids: str) -> list[str]:
    """In time order: the Patients' visits are in different years (YEARS)."""
    who = sorted(pids, key=lambda p: YEARS[p.rsplit("-", 1)[1]])
    return [f"{r['resourceType']}/{r['id']}" for p in who for r in records(p, 2000)]


def links(person: dict) -> list[str]:
    return sorted(x["target"]["reference"] for x in person.get("link", []))


def test_link_merge_unmerge_relink_keep_every_view_consistent(client, data):
    a, b, c, z = data["a"], data["b"], data["c"], data["z"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    pb = op(client, "link", patient=f"Patient/{b}")["id"]
    person = op(client, "link", patient=f"Patient/{c}", person=f"Person/{pa}")
    assert person["id"] == pa and links(person) == [f"Patient/{a}", f"Patient/{c}"]
    assert {x["assurance"] for x in person["link"]} == {"level4"}

    def check(pid: str, members: list[str]) -> None:
        r = client.get(f"/Person/{pid}")
        assert r.status_code == 200
        PersonModel.model_validate_json(r.content)
        assert links(r.json()) == [f"Patient/{m}" for m in sorted(members)]
        assert everything(client, f"/Person/{pid}") == record_of(*members)
        for m in members:  # from any of its Patients, the same shared record
            assert everything(client, f"/Patient/{m}") == record_of(*members)
        assert timeline(client, f"/Person/{pid}") == timeline_of(*members)
        assert timeline(client, f"/Patient/{members[0]}") == timeline_of(*members)

    check(pa, [a, c])
    check(pb, [b])
    assert everything(client, f"/Patient/{z}") == record_of(z)  # not in the index: itself

    merged = op(client, "merge", source=f"Person/{pb}", target=f"Person/{pa}")
    assert merged["id"] == pa
    check(pa, [a, b, c])
    gone = client.get(f"/Person/{pb}").json()
    assert gone["active"] is False and links(gone) == [f"Person/{pa}"]
    # the merged person's views answer for the survivor
    assert everything(client, f"/Person/{pb}") == record_of(a, b, c)

    op(client, "unmerge", source=f"Person/{pb}")
    check(pa, [a, c])
    check(pb, [b])

    op(client, "link", patient=f"Patient/{c}", person=f"Person/{pb}")  # relink
    check(pa, [a])
    check(pb, [b, c])
    own = op(client, "unlink", patient=f"Patient/{c}")
    assert own["id"] not in (pa, pb) and links(own) == [f"Patient/{c}"]
    check(pb, [b])
    check(own["id"], [c])
    # search answers from the same projection
    found = client.get("/Person", params={"link": f"Patient/{b}"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [pb]
    found = client.get("/Person", params={"identifier": f"urn:oid:1.2.3.1|MR-{data['prefix']}-a"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [pa]
    # a resident ID number failing its check is shown by no Person, and finds none
    found = client.get("/Person", params={"identifier": f"{RESIDENT}|R{data['prefix']}"}).json()
    assert found["total"] == 0
    assert client.get("/Person", params={"_id": pa}).json()["total"] == 1


def test_everything_parameters_and_paging(client, data):
    a, b, c = data["a"], data["b"], data["c"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    for p in (b, c):
        op(client, "link", patient=f"Patient/{p}", person=f"Person/{pa}")
    full = everything(client, f"/Person/{pa}")
    assert len(full) == 18
    assert everything(client, f"/Person/{pa}", _type="Observation,Patient") == sorted(
        [f"Patient/{p}" for p in (a, b, c)] + [f"Observation/{p}-obs" for p in (a, b, c)])
    # one institution's view (an operator's): only H2's Patient and its records
    assert everything(client, f"/Person/{pa}", institution="H2") == record_of(b)
    assert everything(client, f"/Person/{pa}", institution="H9") == []
    # _since: only what changed after the moment
    time.sleep(0.01)
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.01)
    obs = records(b, YEARS["b"])[2]
    obs["status"] = "amended"
    assert client.put(f"/Observation/{obs['id']}", json=obs, headers=FHIR).status_code == 200
    assert everything(client, f"/Person/{pa}", _since=since) == [f"Observation/{b}-obs"]
    # paging: next links until done give every resource once
    seen, url, pages = [], f"/Person/{pa}/$everything?_count=5", 0
    while url:
        page = client.get(url).json()
        assert page["total"] == 18
        seen += ids(page)
        nxt = [x["url"] for x in page["link"] if x["relation"] == "next"]
        url = nxt[0].split("/fhir", 1)[1] if nxt else None
        pages += 1
    assert pages == 4 and sorted(seen) == full and len(set(seen)) == 18
    # the page cursor is sealed, as every page link's: one a client edits is refused (it was
    # the index's row number, open to any position)
    r = client.get(f"/Person/{pa}/$everything", params={"_count": "5", "_cursor": "1"})
    assert r.status_code == 400, r.text


def test_everything_start_and_end_are_care_dates(client, data):
    """R4 Patient-everything's start and end select by when the care happened (each type's care
    date), not by when the record was written; what has no care date is always in."""
    a, b, c = data["a"], data["b"], data["c"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    for p in (b, c):
        op(client, "link", patient=f"Patient/{p}", person=f"Person/{pa}")
    undated = {"resourceType": "Observation", "id": f"{b}-undated", "status": "final",
               "code": {"text": "note"}, "subject": {"reference": f"Patient/{b}"}}
    assert client.put(f"/Observation/{b}-undated", json=undated, headers=FHIR).status_code == 201
    patients = [f"Patient/{p}" for p in (a, b, c)]
    records_b = [x for x in record_of(b) if not x.startswith("Patient/")]
    # a's Encounter of 2019 has a start and no end: still going (R4 Period), so in the window
    assert everything(client, f"/Person/{pa}", start="2021", end="2021") == sorted(
        patients + records_b + [f"Observation/{b}-undated", f"Encounter/{a}-enc"])
    # a day's window: the Condition (onset 2021-05-02) and the Observation (effective 05-03)
    assert everything(client, f"/Patient/{b}", start="2021-05-02", end="2021-05-03",
                      _type="Condition,Observation") == sorted(
        [f"Condition/{b}-dx", f"Observation/{b}-obs", f"Observation/{b}-undated"])
    # either end open; written today, cared for years ago: not in a window from 2024
    assert len(everything(client, f"/Person/{pa}", end="2019")) == 3 + 5 + 1
    assert everything(client, f"/Person/{pa}", start="2024", _type="Condition") == []
    assert len(everything(client, f"/Person/{pa}", start="2021")) == 3 + 10 + 1 + 1
    r = client.get(f"/Person/{pa}/$everything", params={"start": "last year"})
    assert r.status_code == 400 and "start" in r.text
    # the same by POST (a Parameters body), its next page a GET carrying the parameters
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "start", "valueDate": "2021"}, {"name": "end", "valueDate": "2021"},
        {"name": "_count", "valueInteger": 4}]}
    r = client.post(f"/Person/{pa}/$everything", json=body, headers=FHIR)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 3 + 5 + 1 + 1 and len(ids(page)) == 4
    [nxt] = [x["url"] for x in page["link"] if x["relation"] == "next"]
    assert "start=2021" in nxt and "end=2021" in nxt
    assert client.get(nxt.split("/fhir", 1)[1]).json()["total"] == 10
    for bad in ({"name": "since", "valueInstant": "2024-01-01T00:00:00Z"},
                {"name": "start", "valueBoolean": True}):
        r = client.post(f"/Person/{pa}/$everything", headers=FHIR,
                        json={"resourceType": "Parameters", "parameter": [bad]})
        assert r.status_code == 400, r.text


def test_timeline_window_kinds_and_paging(client, data):
    a, b = data["a"], data["b"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{b}", person=f"Person/{pa}")
    assert timeline(client, f"/Person/{pa}", start="2021", end="2021") == timeline_of(b)
    assert timeline(client, f"/Person/{pa}", start="2019-05-02", end="2019-05-03") == [
        f"Condition/{a}-dx", f"Observation/{a}-obs"]
    assert timeline(client, f"/Person/{pa}", kind="medication,procedure") == [
        f"MedicationRequest/{a}-rx", f"Procedure/{a}-proc",
        f"MedicationRequest/{b}-rx", f"Procedure/{b}-proc"]
    assert timeline(client, f"/Person/{pa}", kind=["encounter", "result"]) == [
        f"Encounter/{a}-enc", f"Observation/{a}-obs", f"Encounter/{b}-enc",
        f"Observation/{b}-obs"]
    seen, url = [], f"/Person/{pa}/$timeline?_count=3"
    while url:
        page = client.get(url).json()
        seen += ids(page)
        nxt = [x["url"] for x in page["link"] if x["relation"] == "next"]
        url = nxt[0].split("/fhir", 1)[1] if nxt else None
    assert seen == timeline_of(a, b)


def test_identifier_resolution(client, data):
    a, b, c = data["a"], data["b"], data["c"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{b}", person=f"Person/{pa}")
    want = [f"Person/{pa}", f"Patient/{a}", f"Patient/{b}"]
    for q in ({"identifier": f"urn:oid:1.2.3.1|MR-{data['prefix']}-a"},
              {"identifier": f"MR-{data['prefix']}-b"},
              {"qr": f"{data['card']}:1"},
              {"qr": f"{data['card']}:0:{int(time.time()) + 120}"},
              {"qr": f"{data['card']}:0:20991231235959"}):
        r = client.get("/$resolve-identifier", params=q)
        assert r.status_code == 200, r.text
        assert ids(r.json()) == want
    # a Patient outside the index resolves to itself; an unknown identifier to nothing
    assert ids(client.get("/$resolve-identifier",
                          params={"identifier": f"MR-{data['prefix']}-c"}).json()) == [
        f"Patient/{c}"]
    assert client.get("/$resolve-identifier", params={"identifier": "nobody"}).json()[
        "total"] == 0
    for q in ({"qr": f"{data['card']}:0:{int(time.time()) - 5}"}, {"qr": "x:9"}, {"qr": ""},
              {"qr": "a b:1"}, {}, {"identifier": "x", "qr": "y:1"}, {"identifier": "|"},
              {"foo": "bar"}):
        r = client.get("/$resolve-identifier", params=q)
        assert r.status_code == 400, (q, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"


def test_a_filler_resolves_to_nobody_and_a_shared_number_marked_apart_is_no_merge_hint(client):
    """`000000` on two strangers' records listed both, with "they may need a merge"; a number two
    people share (a parent's card) kept that hint after a steward said they are two people."""
    p = uuid.uuid4().hex[:8]
    for who in ("x", "y"):
        put_all(client, [{"resourceType": "Patient", "id": f"{p}-{who}", "name": [{"text": who}],
                          "identifier": [{"system": CARD, "value": "000000"},
                                         {"system": CARD + ".9", "value": f"SHARED-{p}"}]}])
    for who in ("x", "y"):
        op(client, "link", patient=f"Patient/{p}-{who}")
    for q in ({"identifier": f"{CARD}|000000"}, {"identifier": "无"}, {"identifier": f"{CARD}|無"},
              {"identifier": "ー"}):
        body = client.get("/$resolve-identifier", params=q).json()
        assert body["total"] == 0 and ids(body) == [], body
        assert "filler" in body["entry"][-1]["resource"]["issue"][0]["diagnostics"]
    assert client.get("/Person", params={"identifier": f"{CARD}|000000"}).json()["total"] == 0
    shared = {"identifier": f"{CARD}.9|SHARED-{p}"}
    outcome = client.get("/$resolve-identifier", params=shared).json()["entry"][-1]["resource"]
    assert "may need a merge" in outcome["issue"][0]["diagnostics"]
    op(client, "not-duplicate", patient=f"Patient/{p}-x", other=f"Patient/{p}-y", reason="twins")
    outcome = client.get("/$resolve-identifier", params=shared).json()["entry"][-1]["resource"]
    assert "different people" in outcome["issue"][0]["diagnostics"]


def test_a_person_shows_no_number_that_is_someone_elses(client):
    """A son's record carrying his father's resident ID number (its birth date decades off the
    son's): the son's Person listed the father's number as its own, and a filler too."""
    p = uuid.uuid4().hex[:8]
    father_id = "410102196002020315"
    put_all(client, [{"resourceType": "Patient", "id": f"{p}-son", "gender": "male",
                      "birthDate": "1988-07-07", "name": [{"family": "刘", "given": ["建华"]}],
                      "identifier": [{"system": RESIDENT, "value": father_id},
                                     {"system": CARD, "value": "无"},
                                     {"system": "urn:oid:1.2.3.1", "value": f"MR-{p}"}]}])
    person = op(client, "link", patient=f"Patient/{p}-son")
    assert [i["value"] for i in client.get(f"/Person/{person['id']}").json()["identifier"]] == [
        f"MR-{p}"]


def test_every_shared_record_read_is_audited(live, client, data):
    a, b = data["a"], data["b"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{b}", person=f"Person/{pa}")
    # the Person each decision answers with is a read of it, audited as one
    decided = client.get("/AuditEvent", params={"entity": f"Person/{pa}", "_count": 50}).json()
    assert [e["resource"]["subtype"][0]["code"] for e in decided["entry"]] == ["person-read"] * 2
    before = {e["resource"]["id"] for e in decided["entry"]}
    h = {"X-Hub-User": "dr-zhang", "X-Purpose-Of-Use": "TREAT"}
    assert client.get(f"/Person/{pa}/$everything", headers=h).status_code == 200
    assert client.get(f"/Patient/{a}/$timeline", headers=h).status_code == 200
    assert client.get(f"/Person/{pa}", headers={"X-Hub-User": "dr-zhang"}).status_code == 200
    assert client.get("/$resolve-identifier", params={"qr": f"{data['card']}:1"},
                      headers=h).status_code == 200
    assert client.get("/Person", params={"link": f"Patient/{b}"}, headers=h).status_code == 200
    r = client.get("/AuditEvent", params={"entity": f"Person/{pa}", "_count": 50})
    events = [e["resource"] for e in r.json()["entry"] if e["resource"]["id"] not in before]
    assert sorted(e["subtype"][0]["code"] for e in events) == [
        "everything", "person-read", "person-search", "resolve-identifier", "timeline"]
    for e in events:
        AuditEventModel.model_validate_json(orjson.dumps(e))
        # the token's subject, whatever X-Hub-User says
        assert e["agent"][0]["who"]["identifier"]["value"] == live.auth.client_id
        assert e["outcome"] == "0"
        whats = sorted(x["what"]["reference"] for x in e["entity"] if "what" in x)
        assert whats == sorted([f"Patient/{a}", f"Patient/{b}", f"Person/{pa}"])
    assert {e["purposeOfEvent"][0]["coding"][0]["code"] for e in events
            if e["subtype"][0]["code"] != "person-read"} == {"TREAT"}
    # a refused read is audited too; a malformed purpose is refused before reading anything
    assert client.get("/Person/nobody-here/$everything").status_code == 404
    r = client.get("/AuditEvent", params={"entity": "Person/nobody-here"}).json()
    assert [e["resource"]["outcome"] for e in r["entry"]] == ["4"]
    assert client.get(f"/Person/{pa}/$everything",
                      headers={"X-Purpose-Of-Use": "CURIOUS"}).status_code == 400
    # AuditEvents are in the Patient compartment but not part of the shared record
    assert not any(x.startswith("AuditEvent/") for x in everything(client, f"/Person/{pa}"))


def test_review_queue_from_the_matcher_to_the_steward(live, client, data):
    a, b, c = data["a"], data["b"], data["c"]
    store = live.settings.open_store()
    # the matcher runs in another process (an ingest worker): its decisions reach the server
    # through the event log
    matcher = IdentityService.open(store, live.settings.data_dir / f"matcher-{data['prefix']}")
    try:
        matcher.auto_decide(f"Patient/{a}", "new", [], 1.0, {}, "r1")
        matcher.auto_decide(f"Patient/{b}", "review", [f"Patient/{a}"], 0.64,
                            {"name": 0.9, "resident_id": -4.0}, "r1")
        matcher.auto_decide(f"Patient/{c}", "review", [f"Patient/{a}"], 0.55, {}, "r1")
    finally:
        matcher.close()
        store.close()
    queue = client.get("/$mpi-review", params={"_count": 1000}).json()["reviews"]
    mine = {r["patient"]: r for r in queue if r["patient"] in (f"Patient/{b}", f"Patient/{c}")}
    assert mine[f"Patient/{b}"]["score"] == 0.64
    assert mine[f"Patient/{b}"]["evidence"] == {"name": 0.9, "resident_id": -4.0}
    assert mine[f"Patient/{b}"]["candidates"] == [f"Patient/{a}"]
    rb, rc = mine[f"Patient/{b}"]["id"], mine[f"Patient/{c}"]["id"]
    person = client.post(f"/$mpi-review/{rb}/$accept", headers=USER)
    assert person.status_code == 200, person.text
    assert links(person.json()) == [f"Patient/{a}", f"Patient/{b}"]
    r = client.post(f"/$mpi-review/{rc}/$reject", headers={**USER, **FHIR},
                    content=orjson.dumps(params(reason="different people")))
    assert r.status_code == 200, r.text
    assert client.post(f"/$mpi-review/{rb}/$accept", headers=USER).status_code == 409
    open_ids = {r["id"] for r in client.get("/$mpi-review").json()["reviews"]}
    assert rb not in open_ids and rc not in open_ids
    # the rejected pair is a not-duplicate pair now: a steward cannot link them either
    pa = client.get("/Person", params={"link": f"Patient/{a}"}).json()["entry"][0]["resource"]
    op(client, "link", 409, patient=f"Patient/{c}", person=f"Person/{pa['id']}")


def test_hostile_input_gets_operation_outcomes(client, data):
    a = data["a"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    cases = [
        ("PUT", f"/Person/{pa}", {"resourceType": "Person", "id": pa}, 405),
        ("POST", "/Person", {"resourceType": "Person"}, 405),
        ("DELETE", f"/Person/{pa}", None, 405),
        ("GET", "/Person/unknown-person", None, 404),
        ("GET", "/Person/bad id!", None, 400),
        ("GET", "/Person?_cursor=bad id!", None, 400),
        ("GET", "/Person?_lastUpdated=yesterday", None, 400),
        ("GET", "/Person?_count=1001", None, 400),
        ("GET", "/Person?name=x", None, 400),
        ("GET", "/Patient/nobody/$everything", None, 404),
        ("GET", f"/Person/{pa}/$everything?_count=0", None, 400),
        ("GET", f"/Person/{pa}/$everything?_count=99999", None, 400),
        ("GET", f"/Person/{pa}/$everything?_type=Organization", None, 400),
        # in the audit log, not the record: it answered an empty page as if there were none
        ("GET", f"/Person/{pa}/$everything?_type=AuditEvent", None, 400),
        ("GET", f"/Person/{pa}/$everything?_since=yesterday", None, 400),
        ("GET", f"/Person/{pa}/$everything?_cursor=abc", None, 400),
        ("GET", f"/Person/{pa}/$everything?bogus=1", None, 400),
        ("GET", f"/Person/{pa}/$timeline?kind=gossip", None, 400),
        ("GET", f"/Person/{pa}/$timeline?start=2020-13", None, 400),
        ("GET", f"/Person/{pa}/$timeline?_cursor=%%%", None, 400),
        ("POST", "/Person/$link", params(patient="Patient/nobody"), 404),
        ("POST", "/Person/$link", params(patient=f"Patient/{a}", person="Person/nobody"), 404),
        ("POST", "/Person/$link", params(person=f"Person/{pa}"), 400),
        ("POST", "/Person/$link", params(patient=f"Patient/{a}", colour="blue"), 400),
        ("POST", "/Person/$link", params(patient="Observation/1"), 400),
        ("POST", "/Person/$link", {"resourceType": "Patient"}, 400),
        ("POST", "/Person/$link", {"resourceType": "Parameters", "parameter": [{"name": 1}]},
         422),
        # not a valid Parameters: 422 as any resource; a valid one the operation cannot use: 400
        ("POST", "/Person/$link", {"resourceType": "Parameters", "parameter": {"name": "x"}},
         422),
        ("POST", "/Person/$link", {**params(patient=f"Patient/{a}"), "colour": "blue"}, 422),
        ("POST", "/Person/$link", {"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueInteger": 1}]}, 400),
        ("POST", "/Person/$merge", params(source=f"Person/{pa}", target=f"Person/{pa}"), 409),
        ("POST", "/Person/$unmerge", params(source=f"Person/{pa}"), 409),
        ("POST", "/Person/$unlink", params(patient=f"Patient/{a}"), 409),
        ("POST", "/Person/$not-duplicate", params(patient=f"Patient/{a}",
                                                  other=f"Patient/{a}"), 400),
        ("POST", "/$mpi-review/nope/$accept", None, 404),
        ("GET", "/$mpi-review?status=maybe", None, 400),
    ]
    for method, path, body, status in cases:
        kw = {"headers": {**FHIR, **USER}}
        if body is not None:
            kw["content"] = orjson.dumps(body)
        r = client.request(method, path, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        assert r.json()["resourceType"] == "OperationOutcome", (method, path)
    # not JSON, no user, the wrong content type, a huge body
    r = client.post("/Person/$link", content=b"{nope", headers={**FHIR, **USER})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    # (no user: with access control on, the token names who decides; tests/test_security.py)
    r = client.post("/Person/$link", content=orjson.dumps(params(patient=f"Patient/{a}")),
                    headers={"content-type": "text/plain", **USER})
    assert r.status_code == 415
    huge = params(patient=f"Patient/{a}", reason="x" * 200_000)
    r = client.post("/Person/$link", content=orjson.dumps(huge), headers={**FHIR, **USER})
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    # nothing of it changed the person
    assert links(client.get(f"/Person/{pa}").json()) == [f"Patient/{a}"]


def test_capability_statement_lists_the_mpi(client):
    rest = client.get("/metadata").json()["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert [i["code"] for i in by_type["Person"]["interaction"]] == ["read", "search-type"]
    assert {o["name"] for o in by_type["Person"]["operation"]} >= {
        "everything", "timeline", "link", "unlink", "merge", "unmerge", "not-duplicate"}
    assert {o["name"] for o in by_type["Patient"]["operation"]} >= {"everything", "timeline"}
    assert {o["name"] for o in rest["operation"]} >= {"mpi-review", "resolve-identifier"}


def put_all(client: httpx.Client, entries: list[dict]) -> None:
    """Store resources with their ids in one transaction."""
    r = client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": e, "request": {"method": "PUT", "url": f"{e['resourceType']}/{e['id']}"}}
        for e in entries]}, headers=FHIR)
    assert r.status_code == 200, r.text


def test_everything_adds_what_the_records_refer_to_outside_the_compartment(client):
    """R4 Patient-everything: the compartment plus the resources referenced from it (here the
    practitioner and the hospital), as search.mode=include; never another patient's records."""
    p = uuid.uuid4().hex[:8]
    subj = {"reference": f"Patient/{p}-x"}
    entries = [
        {"resourceType": "Patient", "id": f"{p}-x", "name": [{"family": "周"}]},
        {"resourceType": "Patient", "id": f"{p}-other", "name": [{"family": "吴"}]},
        {"resourceType": "Practitioner", "id": f"{p}-dr", "name": [{"family": "钱"}]},
        {"resourceType": "Organization", "id": f"{p}-h", "name": "Hospital"},
        {"resourceType": "Encounter", "id": f"{p}-enc", "status": "finished", "subject": subj,
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "serviceProvider": {"reference": f"Organization/{p}-h"}},
        {"resourceType": "Observation", "id": f"{p}-obs", "status": "final", "code": {"text": "x"},
         "subject": subj, "performer": [{"reference": f"Practitioner/{p}-dr"}],
         "hasMember": [{"reference": f"Observation/{p}-theirs"}]},
        {"resourceType": "Observation", "id": f"{p}-theirs", "status": "final", "code": {"text": "y"},
         "subject": {"reference": f"Patient/{p}-other"}},
    ]
    put_all(client, entries)
    b = client.get(f"/Patient/{p}-x/$everything").json()
    got = {(e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
           for e in b["entry"]}
    assert got == {("Patient", f"{p}-x", "match"), ("Encounter", f"{p}-enc", "match"),
                   ("Observation", f"{p}-obs", "match"),
                   ("Practitioner", f"{p}-dr", "include"), ("Organization", f"{p}-h", "include")}
    assert b["total"] == 3  # the matches; included resources are not counted


def test_a_reference_absolute_on_this_server_is_local_and_on_another_is_not(client):
    """A record may name its Patient by this server's absolute URL: it is in that Patient's
    compartment, $everything and chains like one naming Patient/id. One naming another server's
    Patient of the same id is not this Patient's record, in any view."""
    p = uuid.uuid4().hex[:8]
    own = str(client.base_url).rstrip("/")
    entries = [
        {"resourceType": "Patient", "id": f"{p}-x", "name": [{"family": "郑"}]},
        {"resourceType": "Practitioner", "id": f"{p}-dr", "name": [{"family": "冯"}]},
        {"resourceType": "Encounter", "id": f"{p}-mine", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": f"{own}/Patient/{p}-x"},
         "participant": [{"individual": {"reference": f"{own}/Practitioner/{p}-dr"}}],
         "period": {"start": "2024-01-15T09:00:00+08:00"}},
        {"resourceType": "Encounter", "id": f"{p}-theirs", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": f"http://elsewhere.example/fhir/Patient/{p}-x"},
         "period": {"start": "2024-01-16T09:00:00+08:00"}},
    ]
    put_all(client, entries)
    b = client.get(f"/Patient/{p}-x/$everything").json()
    got = {(e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
           for e in b["entry"]}
    assert got == {("Patient", f"{p}-x", "match"), ("Encounter", f"{p}-mine", "match"),
                   ("Practitioner", f"{p}-dr", "include")}
    ids = [e["resource"]["id"] for e in client.get(f"/Patient/{p}-x/Encounter").json()["entry"]]
    assert ids == [f"{p}-mine"]
    ids = [e["resource"]["id"] for e in client.get(
        "/Encounter", params={"subject:Patient.name": "郑", "_id": f"{p}-mine,{p}-theirs"}
    ).json()["entry"]]
    assert ids == [f"{p}-mine"]
    b = client.get("/Patient", params={"_has:Encounter:subject:_id": f"{p}-mine"}).json()
    assert [e["resource"]["id"] for e in b["entry"]] == [f"{p}-x"]
    assert "entry" not in client.get(
        "/Patient", params={"_has:Encounter:subject:_id": f"{p}-theirs"}).json()
    b = client.get(f"/Patient/{p}-x/$timeline").json()
    assert f"{p}-theirs" not in {e["resource"]["id"] for e in b.get("entry", [])}


def pages(c: httpx.Client, path: str, **q) -> list[dict]:
    """Every entry of a paged search, following its next links."""
    out: list[dict] = []
    r = c.get(path, params=q)
    while True:
        assert r.status_code == 200, r.text
        BundleModel.model_validate_json(r.content)
        body = r.json()
        out += body.get("entry", [])
        nxt = [x["url"] for x in body["link"] if x["relation"] == "next"]
        if not nxt:
            return out
        r = c.get(nxt[0])


def test_stewards_list_the_whole_index_page_by_page(live, client, data):
    a, b, c, z = data["a"], data["b"], data["c"], data["z"]
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{c}", person=f"Person/{pa}")
    pb = op(client, "link", patient=f"Patient/{b}")["id"]
    pz = op(client, "link", patient=f"Patient/{z}")["id"]
    everyone = pages(client, "/Person", _count=2)
    ids_seen = [e["resource"]["id"] for e in everyone]
    assert len(ids_seen) == len(set(ids_seen)) and ids_seen == sorted(ids_seen)
    assert {pa, pb, pz} <= set(ids_seen)
    by_id = {e["resource"]["id"]: e["resource"] for e in everyone}
    assert {(x["target"]["reference"], x["assurance"]) for x in by_id[pa]["link"]} == {
        (f"Patient/{a}", "level4"), (f"Patient/{c}", "level4")}
    # only what changed since a moment: these four Patients' persons
    recent = pages(client, "/Person", _lastUpdated=f"ge{since}", _count=1)
    assert {e["resource"]["id"] for e in recent} == {pa, pb, pz}
    assert pages(client, "/Person", _lastUpdated=["ge2000-01-01", "lt2000-01-02"]) == []
    counted = client.get("/Person", params={"_lastUpdated": f"ge{since}", "_total": "accurate",
                                            "_count": 1}).json()
    assert counted["total"] == 3 and len(counted["entry"]) == 1
    assert "total" not in client.get("/Person", params={"_count": 1}).json()
    assert client.get("/Person", params={"_total": "maybe"}).status_code == 400
    # criteria page the same way
    found = pages(client, "/Person", _id=f"{pa},{pb},{pz}", _count=1)
    assert [e["resource"]["id"] for e in found] == sorted([pa, pb, pz])
    first = client.get("/Person", params={"_id": f"{pa},{pb}", "_count": 1}).json()
    assert first["total"] == 2 and len(first["entry"]) == 1
    # a listing is a read of everyone on the page: audited like a search
    time.sleep(0.2)
    audit = client.get("/AuditEvent", params={"entity": f"Person/{pz}", "_count": 100}).json()
    assert audit.get("total", len(audit.get("entry", []))) >= 1


def test_a_stewards_merge_leaves_every_patient_at_the_highest_assurance(live, client, data):
    a, b, c = data["a"], data["b"], data["c"]
    store = live.settings.open_store()
    matcher = IdentityService.open(store, live.settings.data_dir / f"m-{data['prefix']}")
    try:
        matcher.auto_decide(f"Patient/{a}", "new", [], 1.0, {}, "r1")
        matcher.auto_decide(f"Patient/{b}", "link", [f"Patient/{a}"], 0.999999, {}, "r1")
        matcher.auto_decide(f"Patient/{c}", "new", [], 1.0, {}, "r1")
    finally:
        matcher.close()
        store.close()
    pa = client.get("/Person", params={"link": f"Patient/{a}"}).json()["entry"][0]["resource"]
    pc = client.get("/Person", params={"link": f"Patient/{c}"}).json()["entry"][0]["resource"]
    assert {x["assurance"] for x in pa["link"]} == {"level3"}  # the matcher's
    merged = op(client, "merge", source=f"Person/{pc['id']}", target=f"Person/{pa['id']}")
    assert {(x["target"]["reference"], x["assurance"]) for x in merged["link"]} == {
        (f"Patient/{a}", "level4"), (f"Patient/{b}", "level4"), (f"Patient/{c}", "level4")}


def test_read_models_and_the_policy_take_an_absolute_reference_as_local_only_on_the_base_url(
        monkeypatch):
    """They know no request's base URL: HUB_BASE_URL says which absolute references are this
    server's; without it only Patient/id is."""
    from hub.core import access
    from hub.core.access import names_patient
    from projections.timeline import patient_of

    def about(ref: str) -> dict:
        return {"resourceType": "Encounter", "subject": {"reference": ref}}

    def body(ref: str) -> bytes:
        return orjson.dumps(about(ref))

    try:
        for base in ("", "https://hub.example/fhir/"):
            monkeypatch.setenv("HUB_BASE_URL", base)
            access.own_base.cache_clear()
            assert patient_of(about("Patient/p1")) == "p1"
            assert patient_of(about("Patient/p1/_history/2")) == "p1"
            assert patient_of(about("http://elsewhere.example/fhir/Patient/p1")) is None
            assert patient_of(about("Group/p1")) is None
            assert names_patient(body("Patient/p1"), "p1")
            assert not names_patient(body("Patient/p10"), "p1")
            assert not names_patient(body("http://elsewhere.example/fhir/Patient/p1"), "p1")
            on_base = "https://hub.example/fhir/Patient/p1"
            assert (patient_of(about(on_base)) == "p1") is bool(base)
            assert names_patient(body(on_base), "p1") is bool(base)
    finally:
        monkeypatch.undo()
        access.own_base.cache_clear()


def test_a_deleted_patient_records_stay_in_the_persons_shared_record(client, data):
    """Deleting one hospital's Patient took its still-current records (its visit, diagnosis,
    results) out of the person's $everything and $timeline, while a search still found them:
    a delete of the Patient is no delete of its clinical facts."""
    a, c = data["a"], data["c"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{c}", person=f"Person/{pa}")
    before = everything(client, f"/Person/{pa}")
    assert client.delete(f"/Patient/{a}").status_code in (200, 204)
    kept = [r for r in record_of(a) if r != f"Patient/{a}"]
    after = everything(client, f"/Person/{pa}")
    assert set(kept) <= set(after) and f"Patient/{a}" not in after, sorted(set(before) - set(after))
    assert set(kept) <= set(timeline(client, f"/Person/{pa}"))


def test_a_deleted_patient_linked_wrongly_can_be_unlinked(client, data):
    """A deleted Patient's records stay in its person's shared record, so a steward who finds
    it linked to the wrong person must be able to take it out: $unlink answered 404 and the
    other woman's records stayed in this one's $everything for good."""
    a, z = data["a"], data["z"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{z}", person=f"Person/{pa}")  # the wrong link
    assert client.delete(f"/Patient/{z}").status_code in (200, 204)
    kept = [r for r in record_of(z) if r != f"Patient/{z}"]
    assert set(kept) <= set(everything(client, f"/Person/{pa}"))
    op(client, "unlink", patient=f"Patient/{z}")
    after = everything(client, f"/Person/{pa}")
    assert not set(kept) & set(after) and set(record_of(a)) <= set(after)


def test_a_visit_going_on_is_in_every_timeline_window_it_overlaps(client, data):
    """A stay begun before a window and not ended by it (in progress, or ending inside or after
    the window) was placed at its start only: $timeline missed it while $everything found it."""
    pid = data["a"]
    cls = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}

    def visit(name: str, status: str, **period) -> str:
        enc = {"resourceType": "Encounter", "id": f"{pid}-{name}", "status": status,
               "class": cls, "subject": {"reference": f"Patient/{pid}"},
               "period": period}
        assert client.put(f"/Encounter/{enc['id']}", json=enc, headers=FHIR).status_code == 201
        return f"Encounter/{enc['id']}"

    staying = visit("stay", "in-progress", start="2030-01-10T08:00:00+08:00")
    long = visit("long", "finished", start="2030-01-01", end="2030-03-01")
    done = visit("done", "finished", start="2030-01-05")  # no end recorded: not ongoing
    february = timeline(client, f"/Patient/{pid}", start="2030-02", end="2030-02")
    assert february[:2] == [long, staying], february
    assert done not in february
    april = timeline(client, f"/Patient/{pid}", start="2030-04-01", kind="encounter")
    assert april == [staying]
    assert timeline(client, f"/Patient/{pid}", start="2030-04-01", kind="result") == []
    # paged one by one, each visit once
    paged, nxt = [], f"/Patient/{pid}/$timeline?start=2030-02&_count=1"
    while nxt:
        r = client.get(nxt.split("/fhir", 1)[-1])
        assert r.status_code == 200, r.text
        paged += ids(r.json())
        nxt = next((x["url"] for x in r.json().get("link", []) if x["relation"] == "next"), None)
    assert paged[:2] == [long, staying] and len(paged) == len(set(paged))


def test_person_search_by_post_is_the_same_search(client, data):
    """R4: a server that searches by GET searches by POST too; POST Person/_search was a 405."""
    a, b = data["a"], data["b"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{b}", person=f"Person/{pa}")
    got = client.get("/Person", params={"patient": f"Patient/{b}"}).json()
    posted = client.post("/Person/_search", content=f"patient=Patient/{b}",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert posted.status_code == 200, posted.text
    assert ids(posted.json()) == ids(got) == [f"Person/{pa}"]
    assert client.post("/Person/_search", json={"patient": "x"}).status_code == 415
    bad = client.post("/Person/_search", content="name=x",
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert bad.status_code == 400


def test_a_person_read_is_conditional_as_any_read(client, data):
    """The capability statement claims conditional reads for every type: a Person answered
    200 to its own ETag, and gave no Last-Modified."""
    pa = op(client, "link", patient=f"Patient/{data['a']}")["id"]
    r = client.get(f"/Person/{pa}", headers=USER)
    assert r.status_code == 200 and r.headers.get("last-modified"), r.headers
    again = client.get(f"/Person/{pa}", headers={**USER, "if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    later = client.get(f"/Person/{pa}", headers={**USER, "if-modified-since":
                                                 r.headers["last-modified"]})
    assert later.status_code == 304
    other = client.get(f"/Person/{pa}", headers={**USER, "if-none-match": 'W/"999999"'})
    assert other.status_code == 200


def test_a_timeline_row_without_a_clinical_time_says_so(client, data):
    """A visit with no time of its own sits where it was written, and nothing in the answer
    said so: a reader took the load day for when it happened."""
    pid = data["a"]
    enc = {"resourceType": "Encounter", "id": f"{pid}-undated", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": f"Patient/{pid}"}}
    assert client.put(f"/Encounter/{enc['id']}", json=enc, headers=FHIR).status_code == 201
    r = client.get(f"/Patient/{pid}/$timeline", params={"_count": 100})
    assert r.status_code == 200, r.text
    flags = {e["fullUrl"].split("/fhir/", 1)[1]: e.get("extension") for e in r.json()["entry"]}
    assert flags[f"Encounter/{enc['id']}"] == [{
        "url": "https://fhir-region-hub.example/StructureDefinition/timeline-undated",
        "valueBoolean": True}]
    assert flags[f"Encounter/{pid}-enc"] is None  # a visit with its own time carries none


def test_a_person_whose_patients_were_all_deleted_is_gone_not_hidden(client, data):
    """Its only Patient deleted, a Person answered 403 "not shown to this caller" even to an
    administrator."""
    z = data["z"]
    pz = op(client, "link", patient=f"Patient/{z}")["id"]
    assert client.delete(f"/Patient/{z}").status_code in (200, 204)
    r = client.get(f"/Person/{pz}", headers=USER)
    assert r.status_code == 410 and r.json()["resourceType"] == "OperationOutcome", r.text


def _store_person_directly(live, rid: str, patient: str) -> None:
    """A Person stored as the REST API let a transaction store one before it was refused."""
    from hub.core.ingest import Context, Hub, Op, Result

    store = live.settings.open_store()
    try:
        [done] = Hub(store).execute([Op("PUT", "Person", rid=rid, d={
            "resourceType": "Person", "id": rid, "name": [{"family": "Stored"}],
            "link": [{"target": {"reference": f"Patient/{patient}"}}]})], Context(), atomic=True)
        assert isinstance(done, Result), done
    finally:
        store.close()


def test_a_person_is_written_by_no_bundle_and_a_stored_one_is_served_by_no_generic_path(
        live, client, data):
    a, prefix = data["a"], data["prefix"]
    person = {"resourceType": "Person", "id": f"{prefix}-p", "name": [{"family": "Other"}],
              "link": [{"target": {"reference": f"Patient/{a}"}}]}
    # a transaction holding a Person write fails whole, naming the entry
    other = {"resourceType": "Patient", "id": f"{prefix}-t"}
    r = client.post("", headers=FHIR, json={"resourceType": "Bundle", "type": "transaction",
                                            "entry": [
        {"resource": other, "request": {"method": "PUT", "url": f"Patient/{prefix}-t"}},
        {"resource": person, "request": {"method": "PUT", "url": f"Person/{prefix}-p"}}]})
    assert r.status_code == 405, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "not-supported" and "Bundle.entry[1]" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[1].request.url"]
    assert client.get(f"/Patient/{prefix}-t").status_code == 404
    # in a batch, that entry alone fails (also a DELETE); the others are written
    r = client.post("", headers=FHIR, json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": person, "request": {"method": "PUT", "url": f"Person/{prefix}-p"}},
        {"request": {"method": "DELETE", "url": f"Person/{prefix}-p"}},
        {"resource": other, "request": {"method": "PUT", "url": f"Patient/{prefix}-t"}}]})
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("405") and statuses[1].startswith("405"), statuses
    assert statuses[2].startswith("201"), statuses
    assert client.get(f"/Person/{prefix}-p").status_code == 404

    # a Person stored before: never served beside the MPI's own
    stored = f"{prefix}-stored"
    _store_person_directly(live, stored, a)
    for q in ("_revinclude=Person:patient", "_revinclude=Person:link",
              "_revinclude:iterate=Person:patient", "_has:Person:patient:name=Stored"):
        r = client.get(f"/Patient?_id={a}&{q}")
        assert r.status_code == 400 and "master patient index" in r.text, (q, r.text)
    for q in ("_revinclude=*", "_revinclude=*:*", "_revinclude:iterate=*",
              "_include=*&_revinclude=*"):
        r = client.get(f"/Patient?_id={a}&{q}")
        assert r.status_code == 200, (q, r.text)
        assert not [u for u in ids(r.json()) if u.startswith("Person/")], (q, ids(r.json()))
    r = client.get("", params={"_type": "Person", "name": "Stored"})
    assert r.status_code == 400 and "GET /fhir/Person?" in r.text, r.text
    r = client.get("", params={"name": "Stored", "_count": "1000"})
    assert r.status_code == 200 and not [u for u in ids(r.json()) if u.startswith("Person/")]
    for path in (f"/Person/{stored}/_history", f"/Person/{stored}/_history/1",
                 f"/Patient/{a}/Person"):
        r = client.get(path)
        assert r.status_code == 405, (path, r.text)
    r = client.get("/_history", params={"_count": "1000"})
    assert r.status_code == 200
    assert not [u for u in ids(r.json()) if u.startswith("Person/")]
    # a GET of it in a Bundle: refused before anything is written
    r = client.post("", headers=FHIR, json={"resourceType": "Bundle", "type": "transaction",
                                            "entry": [
        {"resource": {**other, "id": f"{prefix}-u"},
         "request": {"method": "PUT", "url": f"Patient/{prefix}-u"}},
        {"request": {"method": "GET", "url": f"Person/{stored}"}}]})
    assert r.status_code == 404, r.text  # a GET Person entry reads the index: no such person
    assert client.get(f"/Patient/{prefix}-u").status_code == 404
    # the MPI's Person is still read and searched, in a Bundle too
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    r = client.post("", headers=FHIR, json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Person/{pa}"}},
        {"request": {"method": "GET", "url": f"Person?patient=Patient/{a}"}}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    assert first["response"]["status"].startswith("200"), first
    assert first["resource"]["id"] == pa and links(first["resource"]) == [f"Patient/{a}"]
    assert second["response"]["status"].startswith("200"), second
    assert second["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in second["resource"]["entry"]] == [pa]
    r = client.post("", headers=FHIR, json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Person?bogus=1"}}]})
    assert r.json()["entry"][0]["response"]["status"].startswith("400"), r.text
    r = client.get("/Person", params={"patient": f"Patient/{a}"})
    assert r.status_code == 200 and [e["resource"]["id"] for e in r.json()["entry"]] == [pa]
    assert client.get(f"/Person/{pa}").status_code == 200
    assert client.get(f"/Person/{stored}").status_code == 404


def test_a_person_gone_with_its_patients_is_left_out_of_every_search(client, data):
    """One Person whose Patients were all deleted made every listing, count and `_id` search
    (and a batch's GET Person? entry) answer 410 for everyone; so did a deleted Patient taken
    out of its person by $unlink, which the README allows."""
    a, b, c, z = data["a"], data["b"], data["c"], data["z"]
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    pz = op(client, "link", patient=f"Patient/{z}")["id"]
    pb = op(client, "link", patient=f"Patient/{b}")["id"]
    op(client, "link", patient=f"Patient/{c}", person=f"Person/{pb}")
    for gone in (z, c):
        assert client.delete(f"/Patient/{gone}").status_code in (200, 204)
    pc = op(client, "unlink", patient=f"Patient/{c}")["id"]  # a person of a deleted Patient
    for p in (pz, pc):
        assert client.get(f"/Person/{p}", headers=USER).status_code == 410  # read: gone
    for q in ({"_count": 1000}, {"_total": "accurate", "_count": 1000},
              {"_lastUpdated": "gt2020"}, {"_id": f"{pa},{pz},{pc}"}):
        r = client.get("/Person", params=q)
        assert r.status_code == 200, (q, r.text)
        found = {e["resource"]["id"] for e in r.json().get("entry", [])}
        assert pz not in found and pc not in found, q
    assert client.get("/Person", params={"_id": f"{pa},{pz},{pc}"}).json()["total"] == 1
    # the count and the pages agree, page by page
    recent = pages(client, "/Person", _lastUpdated=f"ge{since}", _count=1)
    assert sorted(e["resource"]["id"] for e in recent) == sorted([pa, pb])
    counted = client.get("/Person", params={"_lastUpdated": f"ge{since}", "_total": "accurate",
                                            "_count": 1}).json()
    assert counted["total"] == 2
    everyone = client.get("/Person", params={"_total": "accurate", "_count": 1000}).json()
    assert everyone["total"] == len(pages(client, "/Person", _count=1000))
    batch = client.post("", headers=FHIR, json={"resourceType": "Bundle", "type": "batch",
                                                "entry": [{"request": {
                                                    "method": "GET",
                                                    "url": f"Person?_id={pa},{pz}"}}]})
    assert batch.status_code == 200, batch.text
    [entry] = batch.json()["entry"]
    assert entry["response"]["status"].startswith("200"), entry
    assert [e["resource"]["id"] for e in entry["resource"]["entry"]] == [pa]


def test_a_person_read_is_not_modified_only_while_its_patients_are_not(client, data):
    """A Person shows its Patients' identifiers and demographics, but its ETag and Last-Modified
    followed identity events only: after a Patient's name changed, a conditional read answered
    304 and a client kept the old name; `_lastUpdated` missed the change."""
    a = data["a"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    first = client.get(f"/Person/{pa}", headers=USER)
    assert first.status_code == 200
    time.sleep(1.1)  # Last-Modified is to the second
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert client.get("/Person", params={"_id": pa, "_lastUpdated": f"ge{since}"}).json()[
        "total"] == 0
    patient = client.get(f"/Patient/{a}").json()
    patient["name"] = [{"family": "李", "given": ["新"]}]
    assert client.put(f"/Patient/{a}", json=patient, headers=FHIR).status_code == 200
    again = client.get(f"/Person/{pa}", headers={**USER, "if-none-match": first.headers["etag"]})
    assert again.status_code == 200 and again.json()["name"][0]["given"] == ["新"]
    assert again.json()["meta"]["versionId"] == first.json()["meta"]["versionId"]  # events
    assert again.headers["etag"] != first.headers["etag"]
    assert again.json()["meta"]["lastUpdated"] > first.json()["meta"]["lastUpdated"]
    later = client.get(f"/Person/{pa}", headers={
        **USER, "if-modified-since": first.headers["last-modified"]})
    assert later.status_code == 200
    same = client.get(f"/Person/{pa}", headers={**USER, "if-none-match": again.headers["etag"]})
    assert same.status_code == 304
    # a batch's GET entry answers as the read does
    entries = client.post("", headers={**USER, **FHIR}, json={
        "resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Person/{pa}",
                         "ifNoneMatch": tag}} for tag in (first.headers["etag"],
                                                          again.headers["etag"])]}).json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["200", "304"]
    assert entries[0]["response"]["etag"] == again.headers["etag"]
    assert entries[0]["resource"]["name"][0]["given"] == ["新"]
    # the search finds it changed since, the listing too
    _found_changed_since(client, pa, since, again.json())


def _found_changed_since(client, pa: str, since: str, person: dict) -> None:
    """Person ``pa`` (read as ``person``) is what a search and the listing find changed since
    ``since``, at its lastUpdated, and not before it."""
    for q in ({"_id": pa, "_lastUpdated": f"ge{since}"}, {"_lastUpdated": f"ge{since}"}):
        found = [e["resource"] for e in pages(client, "/Person", **q)]
        assert [p["id"] for p in found] == [pa], q
        assert found[0]["meta"]["lastUpdated"] == person["meta"]["lastUpdated"]
    assert client.get("/Person", params={"_id": pa, "_lastUpdated": f"lt{since}"}).json()[
        "total"] == 0


def test_one_pair_marked_apart_leaves_the_other_persons_a_possible_merge(client):
    """Three persons share a number; a steward marked two of them different people: the
    resolution said all were "marked as different people" and hid the merge hint."""
    p = uuid.uuid4().hex[:8]
    for who in ("n1", "n2", "n3"):
        put_all(client, [{"resourceType": "Patient", "id": f"{p}-{who}", "name": [{"text": who}],
                          "identifier": [{"system": CARD + ".9", "value": f"SHARED-{p}"}]}])
    persons = {who: op(client, "link", patient=f"Patient/{p}-{who}")["id"]
               for who in ("n1", "n2", "n3")}
    op(client, "not-duplicate", patient=f"Patient/{p}-n1", other=f"Patient/{p}-n2")
    shared = {"identifier": f"{CARD}.9|SHARED-{p}"}
    issue = client.get("/$resolve-identifier", params=shared).json()["entry"][-1]["resource"][
        "issue"][0]
    assert issue["severity"] == "warning" and "may need a merge" in issue["diagnostics"]
    assert f"Person/{persons['n3']}" in issue["diagnostics"]
    for who in ("n1", "n2"):
        op(client, "not-duplicate", patient=f"Patient/{p}-{who}", other=f"Patient/{p}-n3")
    issue = client.get("/$resolve-identifier", params=shared).json()["entry"][-1]["resource"][
        "issue"][0]
    assert "different people" in issue["diagnostics"]


def test_person_identifier_search_tells_no_system_from_any_system(client):
    """`identifier=|value` matched identifiers with a system too, and `identifier=system|` was a
    400 on Person while a Patient search took both (R4 search token)."""
    p = uuid.uuid4().hex[:8]
    system = f"urn:oid:1.2.3.{int(p, 16) % 100000}"
    put_all(client, [{"resourceType": "Patient", "id": f"{p}-s", "name": [{"text": "s"}],
                      "identifier": [{"system": system, "value": f"V{p}"}]},
                     {"resourceType": "Patient", "id": f"{p}-n", "name": [{"text": "n"}],
                      "identifier": [{"value": f"V{p}"}]}])
    ps = op(client, "link", patient=f"Patient/{p}-s")["id"]
    pn = op(client, "link", patient=f"Patient/{p}-n")["id"]

    def found(q: str) -> list[str]:
        r = client.get("/Person", params={"identifier": q})
        assert r.status_code == 200, (q, r.text)
        return sorted(e["resource"]["id"] for e in r.json().get("entry", []))

    assert found(f"|V{p}") == [pn]
    assert found(f"{system}|V{p}") == [ps]
    assert found(f"V{p}") == sorted([ps, pn])
    assert found(f"{system}|") == [ps]
    assert client.get("/Person", params={"identifier": "|"}).status_code == 400
    patients = client.get("/Patient", params={"identifier": f"|V{p}"}).json()
    assert [e["resource"]["id"] for e in patients["entry"]] == [f"{p}-n"]


def test_a_review_closed_by_a_steward_waits_no_more(live, client, data):
    """A Patient the matcher sent to review kept level2 ("waits for a review in its own
    person") after a steward rejected the pair or linked it: the steward decided, level4."""
    a, b, c = data["a"], data["b"], data["c"]
    store = live.settings.open_store()
    matcher = IdentityService.open(store, live.settings.data_dir / f"mr-{data['prefix']}")
    try:
        matcher.auto_decide(f"Patient/{a}", "new", [], 1.0, {}, "r1")
        matcher.auto_decide(f"Patient/{b}", "review", [f"Patient/{a}"], 0.6, {}, "r1")
        matcher.auto_decide(f"Patient/{c}", "review", [f"Patient/{a}"], 0.6, {}, "r1")
    finally:
        matcher.close()
        store.close()

    def assurance(p: str) -> str:
        [e] = client.get("/Person", params={"link": f"Patient/{p}"}).json()["entry"]
        return {x["target"]["reference"]: x["assurance"] for x in e["resource"]["link"]}[
            f"Patient/{p}"]

    assert assurance(b) == "level2" and assurance(c) == "level2"
    op(client, "not-duplicate", patient=f"Patient/{b}", other=f"Patient/{a}")
    assert assurance(b) == "level4"
    pc = client.get("/Person", params={"link": f"Patient/{c}"}).json()["entry"][0]["resource"]
    op(client, "link", patient=f"Patient/{a}", person=f"Person/{pc['id']}")
    assert assurance(c) == "level4"


def test_a_person_read_changes_when_one_of_its_patients_is_deleted(client, data):
    """A Patient deleted takes its link and identifiers out of its person's view, but the
    view's Last-Modified and `meta.lastUpdated` stayed as they were: a conditional read by
    If-Modified-Since answered 304 with the old view kept, and `_lastUpdated` missed it."""
    a, b = data["a"], data["b"]
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    op(client, "link", patient=f"Patient/{b}", person=f"Person/{pa}")
    first = client.get(f"/Person/{pa}", headers=USER)
    assert first.status_code == 200 and len(links(first.json())) == 2
    time.sleep(1.1)  # Last-Modified is to the second
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert client.delete(f"/Patient/{b}").status_code in (200, 204)
    after = client.get(f"/Person/{pa}", headers=USER)
    assert after.status_code == 200 and links(after.json()) == [f"Patient/{a}"]
    assert after.json()["meta"]["lastUpdated"] > since
    assert after.headers["last-modified"] != first.headers["last-modified"]
    later = client.get(f"/Person/{pa}", headers={
        **USER, "if-modified-since": first.headers["last-modified"]})
    assert later.status_code == 200 and links(later.json()) == [f"Patient/{a}"]
    _found_changed_since(client, pa, since, after.json())


def test_everything_leaves_out_a_stored_person(live, client, data):
    """A Person stored before such writes were refused is served by no generic path, but
    $everything listed it in the Patient's record and the person's, and took `_type=Person`."""
    a, prefix = data["a"], data["prefix"]
    stored = f"{prefix}-stored"
    _store_person_directly(live, stored, a)
    pa = op(client, "link", patient=f"Patient/{a}")["id"]
    for path in (f"/Patient/{a}", f"/Person/{pa}"):
        found = everything(client, path, _count=1000)
        assert set(record_of(a)) <= set(found), path
        assert not [u for u in found if u.startswith("Person/")], (path, found)
        for q in ({"_type": "Person"}, {"_type": "Observation,Person"}):
            r = client.get(f"{path}/$everything", params=q)
            assert r.status_code == 400 and "master patient index" in r.text, (path, q, r.text)
    # as a compartment search answers it
    r = client.get(f"/Patient/{a}/*", params={"_type": "Person"})
    assert r.status_code == 400 and "master patient index" in r.text, r.text


def test_a_person_gone_with_its_patients_has_no_shared_record_either(client, data):
    """Its only Patient deleted, a Person read answered 410 and searches left it out, yet its
    $everything and $timeline answered 200 with the deleted Patient's records."""
    z = data["z"]
    pz = op(client, "link", patient=f"Patient/{z}")["id"]
    assert client.delete(f"/Patient/{z}").status_code in (200, 204)
    assert client.get(f"/Person/{pz}", headers=USER).status_code == 410
    for op_name in ("$everything", "$timeline"):
        r = client.get(f"/Person/{pz}/{op_name}")
        assert r.status_code == 410 and r.json()["resourceType"] == "OperationOutcome", r.text
        assert f"Patient/{z}" not in r.text and f"{z}-obs" not in r.text


def test_a_timeline_row_of_a_period_with_only_an_end_is_placed_at_its_end(client, data):
    """An Observation (or Procedure, MedicationStatement…) whose period gives only its end sat
    where it was written, flagged undated, while an Encounter's such period placed it."""
    pid = data["a"]
    subj = {"reference": f"Patient/{pid}"}
    end = "2031-03-04T10:00:00+08:00"
    rows = [
        {"resourceType": "Observation", "id": f"{pid}-pend", "status": "final",
         "code": {"text": "24h urine"}, "subject": subj, "effectivePeriod": {"end": end}},
        {"resourceType": "Procedure", "id": f"{pid}-ppend", "status": "completed",
         "code": {"text": "dialysis"}, "subject": subj, "performedPeriod": {"end": end}},
        {"resourceType": "MedicationStatement", "id": f"{pid}-msend", "status": "completed",
         "medicationCodeableConcept": {"text": "amlodipine"}, "subject": subj,
         "effectivePeriod": {"end": end}},
        {"resourceType": "MedicationAdministration", "id": f"{pid}-maend",
         "status": "completed", "medicationCodeableConcept": {"text": "heparin"},
         "subject": subj, "effectivePeriod": {"end": end}},
    ]
    put_all(client, rows)
    r = client.get(f"/Patient/{pid}/$timeline", params={"start": "2031-03-04",
                                                       "end": "2031-03-04", "_count": 100})
    assert r.status_code == 200, r.text
    entries = {e["fullUrl"].split("/fhir/", 1)[1]: e for e in r.json().get("entry", [])}
    want = {f"{x['resourceType']}/{x['id']}" for x in rows}
    assert set(entries) == want, sorted(entries)
    assert not [u for u, e in entries.items() if e.get("extension")], entries


def test_a_person_listing_names_a_last_updated_prefix_it_does_not_take(client):
    """`_lastUpdated=ne…` said the value "is not a FHIR date"."""
    for prefix in ("ne", "sa", "eb", "ap"):
        r = client.get("/Person", params={"_lastUpdated": f"{prefix}2024-01-01"})
        assert r.status_code == 400, r.text
        text = r.json()["issue"][0]["diagnostics"]
        assert repr(prefix) in text and "not a FHIR date" not in text, text


def test_a_number_finds_only_the_persons_that_show_it(client):
    """A mother's resident ID number on her three newborns' records (their Persons rightly show
    none): resolving it listed four persons, "they may need a merge", and a Person search found
    four; a number failing its check (shown by nobody) found its records' persons, and a
    system-only search (`system|`) found persons by fillers they do not show."""
    p = uuid.uuid4().hex[:8]
    mother_id = "11010519920214244X"
    mom = {"resourceType": "Patient", "id": f"{p}-mom", "gender": "female",
           "birthDate": "1992-02-14", "name": [{"text": "慕容丽"}],
           "identifier": [{"system": RESIDENT, "value": mother_id}]}
    babies = [{"resourceType": "Patient", "id": f"{p}-{who}", "birthDate": "2024-03-01",
               "gender": "male" if who == "nb1" else "female", "name": [{"text": name}],
               "identifier": [{"system": RESIDENT, "value": mother_id}]}
              for who, name in (("nb1", "慕容丽之子"), ("nbt-a", "慕容丽之大女"),
                                ("nbt-b", "慕容丽之小女"))]
    typo = {"resourceType": "Patient", "id": f"{p}-typo", "gender": "female",
            "birthDate": "1992-02-14", "name": [{"text": "慕容丽"}],
            "identifier": [{"system": RESIDENT, "value": "110105199202142441"},
                           {"system": CARD, "value": "-"}]}
    card = {"resourceType": "Patient", "id": f"{p}-card", "name": [{"text": "卡"}],
            "identifier": [{"system": CARD, "value": f"HC{p}"}]}
    put_all(client, [mom, *babies, typo, card])
    persons = {r["id"]: op(client, "link", patient=f"Patient/{r['id']}")["id"]
               for r in [mom, *babies, typo, card]}

    def person_ids(q: str) -> list[str]:
        r = client.get("/Person", params={"identifier": q})
        assert r.status_code == 200, r.text
        return sorted(e["resource"]["id"] for e in r.json().get("entry", []))

    body = client.get("/$resolve-identifier",
                      params={"identifier": f"{RESIDENT}|{mother_id}"}).json()
    assert ids(body) == [f"Person/{persons[mom['id']]}", f"Patient/{mom['id']}"]
    assert body["total"] == 1
    said = [e["resource"]["issue"][0] for e in body["entry"]
            if e["search"]["mode"] == "outcome"]
    assert len(said) == 1 and said[0]["severity"] == "information", said
    assert "3 other person(s) as someone else's number" in said[0]["diagnostics"]
    assert "merge" not in said[0]["diagnostics"].replace("no merge", "")
    assert person_ids(f"{RESIDENT}|{mother_id}") == [persons[mom["id"]]]
    assert person_ids(mother_id) == [persons[mom["id"]]]
    # a number failing its check identifies nobody, as a filler does
    body = client.get("/$resolve-identifier",
                      params={"identifier": f"{RESIDENT}|110105199202142441"}).json()
    assert body["total"] == 0 and ids(body) == [], body
    assert "fails the resident ID number's check" in \
        body["entry"][-1]["resource"]["issue"][0]["diagnostics"]
    assert person_ids(f"{RESIDENT}|110105199202142441") == []
    # any health card: persons showing one, not one registered with a filler
    found = person_ids(f"{CARD}|")
    assert persons[card["id"]] in found and persons[typo["id"]] not in found


def test_a_patient_just_written_has_its_person_at_once(request, tmp_path_factory):
    """Right after a Patient's PUT (201), with the index matching as Patients arrive: a Person
    search by it found nobody and its identifier resolved to the Patient without a person, the
    matcher not having decided yet; seconds later, its Person."""
    with matching_server(request, tmp_path_factory, "ryw") as live, \
            httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        for i in range(4):  # the search first, then the resolution first
            rid = f"ryw{i}"
            number = f"MR-{uuid.uuid4().hex[:8]}"
            r = c.put(f"/Patient/{rid}", json={
                "resourceType": "Patient", "id": rid, "name": [{"text": f"读{i}"}],
                "identifier": [{"system": "urn:oid:1.2.3.1", "value": number}]}, headers=FHIR)
            assert r.status_code == 201, r.text
            for step in ((0, 1) if i % 2 else (1, 0)):
                if step:
                    found = c.get("/Person", params={"patient": f"Patient/{rid}"}).json()
                    assert found["total"] == 1, (i, found)
                    assert f"Patient/{rid}" in links(found["entry"][0]["resource"])
                else:
                    resolved = ids(c.get("/$resolve-identifier", params={
                        "identifier": f"urn:oid:1.2.3.1|{number}"}).json())
                    assert resolved[0].startswith("Person/") and f"Patient/{rid}" in resolved, \
                        (i, resolved)
