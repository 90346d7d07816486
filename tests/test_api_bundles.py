"""Transaction and batch Bundles (http.html#transaction): atomicity, references, order,
responses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from hub.core import httpclient
from hub.core.fhirtime import parse_range
from tests.api_helpers import (
    FHIR_JSON,
    SYSTEM,
    assert_outcome,
    bundle,
    create,
    delete_entry,
    expressions,
    get_entry,
    observation,
    patient,
    post_entry,
    put,
    put_entry,
    resident,
    system_total,
    token,
    unique,
)


def send(client, b):
    return client.post("", json=b, headers=FHIR_JSON)


def statuses(r) -> list[str]:
    return [e["response"]["status"].split()[0] for e in r.json()["entry"]]


def found(client, d) -> list[dict]:
    """Current resources with the identifier of ``d``."""
    r = client.get(f"/{d['resourceType']}", params={"identifier": token(d)})
    assert r.status_code == 200
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


# -- atomicity ---------------------------------------------------------------------------------


def test_transaction_with_one_invalid_entry_stores_nothing(client):
    p = patient()
    bad = observation("Patient/x")
    del bad["status"]  # required
    before = system_total(client)
    r = send(client, bundle("transaction", post_entry(p), put_entry(patient(rid=unique())),
                            post_entry(bad)))
    body = assert_outcome(r, (400, 422))
    assert any(e.startswith("Bundle.entry[2].resource") for e in expressions(body)), body
    assert system_total(client) == before
    assert found(client, p) == []


def test_transaction_with_failing_if_match_stores_nothing(client):
    a = patient(rid=unique())
    put(client, a)
    a["gender"] = "female"
    fresh = patient()
    before = system_total(client)
    r = send(client, bundle("transaction", post_entry(fresh), delete_entry(f"Patient/{unique()}"),
                            put_entry(a, if_match='W/"3"')))
    body = assert_outcome(r, 412)
    assert any(e.startswith("Bundle.entry[2]") for e in expressions(body)), body
    assert system_total(client) == before
    assert found(client, fresh) == []
    assert "gender" not in client.get(f"/Patient/{a['id']}").json()


def test_transaction_with_failing_conditional_reference_stores_nothing(client):
    p = patient()
    obs = observation(f"Patient?identifier={SYSTEM}|{resident()}")  # matches nothing
    before = system_total(client)
    r = send(client, bundle("transaction", post_entry(p), post_entry(obs)))
    body = assert_outcome(r, (400, 404, 412, 422))
    assert any(e.startswith("Bundle.entry[1]") for e in expressions(body)), body
    assert system_total(client) == before
    assert found(client, p) == []


def test_transaction_with_malformed_get_stores_nothing(client):
    p = patient()
    before = system_total(client)
    r = send(client, bundle("transaction", post_entry(p), get_entry("NoSuchType/1")))
    body = assert_outcome(r, (400, 404))
    assert any(e.startswith("Bundle.entry[1]") for e in expressions(body)), body
    assert system_total(client) == before


def test_transaction_answer_never_contradicts_what_was_stored(client):
    """A GET of a missing resource: either the whole transaction fails and stores nothing, or it
    succeeds and the GET entry carries its own 404."""
    p = patient()
    before = system_total(client)
    r = send(client, bundle("transaction", post_entry(p), get_entry(f"Patient/{unique()}")))
    if r.status_code == 200:
        assert statuses(r) == ["201", "404"]
        assert r.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert len(found(client, p)) == 1
    else:
        assert_outcome(r, (400, 404))
        assert system_total(client) == before


def test_same_resource_twice_in_a_transaction_is_400(client):
    rid = unique()
    before = system_total(client)
    r = send(client, bundle("transaction", put_entry(patient(rid=rid)),
                            put_entry(patient(rid=rid, gender="male"))))
    assert_outcome(r, 400)
    put(client, patient(rid=rid))
    before = system_total(client)
    r = send(client, bundle("transaction", put_entry(patient(rid=rid, gender="male")),
                            delete_entry(f"Patient/{rid}")))
    assert_outcome(r, 400)
    # conditional update resolving to the same resource as a plain PUT
    d = client.get(f"/Patient/{rid}").json()
    r = send(client, bundle("transaction", put_entry(dict(d, gender="male")),
                            put_entry(dict(d, gender="female", id=None) | {"id": rid},
                                      url=f"Patient?identifier={token(d)}")))
    assert_outcome(r, 400)
    assert system_total(client) == before


def test_two_conditional_creates_of_one_identifier_in_a_transaction(client):
    p = patient()
    inx = f"identifier={token(p)}"
    r = send(client, bundle("transaction",
                            post_entry(p, "urn:uuid:" + unique(), if_none_exist=inx),
                            post_entry(p, "urn:uuid:" + unique(), if_none_exist=inx)))
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        locs = {e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]}
        assert len(locs) == 1
    assert len(found(client, p)) == (1 if r.status_code == 200 else 0)


# -- references --------------------------------------------------------------------------------


def test_urn_uuid_references_are_rewritten(client):
    pu, ou = "urn:uuid:" + unique(), "urn:uuid:" + unique()
    p = patient()
    o = observation(pu)
    o["hasMember"] = [{"reference": ou}]  # a self reference, just to see every urn rewritten
    o["focus"] = [{"reference": pu}]
    r = send(client, bundle("transaction", post_entry(o, ou), post_entry(p, pu)))
    assert r.status_code == 200, r.text
    assert statuses(r) == ["201", "201"]
    obs_loc, pat_loc = (e["response"]["location"] for e in r.json()["entry"])
    pid = pat_loc.split("/")[1]
    oid = obs_loc.split("/")[1]
    stored = client.get(f"/Observation/{oid}").json()
    assert stored["subject"]["reference"] == f"Patient/{pid}"
    assert stored["focus"][0]["reference"] == f"Patient/{pid}"
    assert stored["hasMember"][0]["reference"] == f"Observation/{oid}"
    assert "urn:uuid" not in str(stored)
    assert client.get(f"/Patient/{pid}").json()["identifier"] == p["identifier"]


def test_conditional_references_resolve(client):
    existing = patient()
    pid = create(client, existing).json()["id"]
    new = patient()
    o1 = observation(f"Patient?identifier={token(existing)}")
    o2 = observation(f"Patient?identifier={token(new)}")  # created by this same transaction
    r = send(client, bundle("transaction", post_entry(o1), post_entry(o2),
                            post_entry(new, "urn:uuid:" + unique())))
    assert r.status_code == 200, r.text
    new_id = r.json()["entry"][2]["response"]["location"].split("/")[1]
    refs = [client.get("/" + e["response"]["location"].split("/_history")[0]).json()["subject"]
            ["reference"] for e in r.json()["entry"][:2]]
    assert refs == [f"Patient/{pid}", f"Patient/{new_id}"]


def test_conditional_reference_with_many_matches_fails(client):
    value = unique()
    for _ in range(2):
        put(client, patient(value, rid=unique()))
    before = system_total(client)
    obs = observation(f"Patient?identifier={SYSTEM}|{value}")
    r = send(client, bundle("transaction", post_entry(obs)))
    assert_outcome(r, (400, 412, 422))
    assert system_total(client) == before


@pytest.mark.parametrize("ref", ["Patient/p1?purpose=ETREAT&x=", "Patient/p1/_history/1?x=1",
                                 "http://other.example/fhir/Patient?identifier=a|b", "?x"])
def test_a_reference_with_a_query_on_no_type_is_refused(client, ref):
    """Only ``Type?criteria`` is a conditional reference (resolved, then stored as the resource
    found); anything else with a query is no resource's location, and stored it would be a link
    carrying whatever its writer put after the ``?``."""
    before = system_total(client)
    r = client.post("/Observation", json=observation(ref), headers=FHIR_JSON)
    assert_outcome(r, 422)
    r = send(client, bundle("transaction", post_entry(observation(ref))))
    assert_outcome(r, 422)
    assert system_total(client) == before


def test_if_none_exist_inside_a_transaction(client):
    existing = patient()
    pid = create(client, existing).json()["id"]
    pu = "urn:uuid:" + unique()
    again = dict(existing, gender="male")
    fresh = patient()
    r = send(client, bundle("transaction",
                            post_entry(again, pu, if_none_exist=f"identifier={token(existing)}"),
                            post_entry(fresh, if_none_exist=f"identifier={token(fresh)}"),
                            post_entry(observation(pu))))
    assert r.status_code == 200, r.text
    assert statuses(r) == ["200", "201", "201"]
    first = r.json()["entry"][0]
    assert first["response"]["location"].startswith(f"Patient/{pid}/_history/1")
    assert first["response"]["etag"] == 'W/"1"'
    assert "gender" not in client.get(f"/Patient/{pid}").json()  # the match is left alone
    oid = r.json()["entry"][2]["response"]["location"].split("/")[1]
    assert client.get(f"/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"
    assert len(found(client, fresh)) == 1


# -- processing order and the response ---------------------------------------------------------


def test_processing_order_delete_post_put_get(client):
    doomed = patient()
    doomed_id = create(client, doomed).json()["id"]
    kept = patient(rid=unique())
    put(client, kept)
    kept2 = dict(kept, gender="female")
    # request order: GET, PUT, POST, DELETE; processing order: DELETE, POST, PUT, GET
    r = send(client, bundle(
        "transaction",
        get_entry(f"Patient/{kept['id']}"),
        put_entry(kept2),
        # DELETE runs first, so this conditional create no longer matches the deleted resource
        post_entry(patient(doomed["identifier"][0]["value"], family="New"),
                   if_none_exist=f"identifier={token(doomed)}"),
        delete_entry(f"Patient/{doomed_id}"),
    ))
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["type"] == "transaction-response"
    Bundle.model_validate(b)
    get, upd, post, dele = b["entry"]
    # GET ran last: it sees the PUT of the same transaction
    assert get["response"]["status"].startswith("200")
    assert get["resource"]["gender"] == "female" and get["resource"]["meta"]["versionId"] == "2"
    assert upd["response"]["status"].startswith("200")
    assert upd["response"]["location"] == f"Patient/{kept['id']}/_history/2"
    assert upd["response"]["etag"] == 'W/"2"'
    assert upd["response"]["lastModified"] == get["resource"]["meta"]["lastUpdated"]
    assert post["response"]["status"].startswith("201")
    new_id = post["response"]["location"].split("/")[1]
    assert new_id != doomed_id
    assert dele["response"]["status"].split()[0] in ("200", "204")
    assert_outcome(client.get(f"/Patient/{doomed_id}"), 410)
    assert [x["id"] for x in found(client, doomed)] == [new_id]
    # every write of the transaction has the same lastUpdated: one commit
    times = {e["response"]["lastModified"] for e in (upd, post, dele)}
    assert len(times) == 1


def test_prefer_return_shapes_each_entry_of_a_transaction(client):
    """return=representation: the resource; minimal: the response alone; OperationOutcome: an
    OperationOutcome in each entry's response (it was the plain response)."""
    for prefer, resource, outcome in (("representation", True, False), ("minimal", False, False),
                                      ("OperationOutcome", False, True)):
        r = client.post("", json=bundle("transaction", post_entry(patient())),
                        headers={**FHIR_JSON, "prefer": f"return={prefer}"})
        assert r.status_code == 200, r.text
        (entry,) = r.json()["entry"]
        assert ("resource" in entry) is resource, prefer
        assert (entry["response"].get("outcome", {}).get("resourceType") == "OperationOutcome") \
            is outcome, prefer


def test_narrative_links_to_entries_are_rewritten(client):
    """R4: links in the narrative (<a href>, <img src>) naming an entry's fullUrl are replaced
    as references are; one naming no entry is left as it is."""
    org_url, other = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    org = {"resourceType": "Organization", "name": "第一医院"}
    pat = patient(managingOrganization={"reference": org_url}, text={
        "status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{org_url}">'
        f'医院</a><img src="{org_url}"/><a href="{other}">别处</a></div>'})
    r = send(client, bundle("transaction", post_entry(org, org_url), post_entry(pat)))
    assert r.status_code == 200, r.text
    org_ref = r.json()["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    rid = r.json()["entry"][1]["response"]["location"].split("/")[1]
    stored = client.get(f"/Patient/{rid}").json()
    assert stored["managingOrganization"]["reference"] == org_ref
    div = stored["text"]["div"]
    assert f'href="{org_ref}"' in div and f'src="{org_ref}"' in div and org_url not in div
    assert f'href="{other}"' in div
    # an entry named by an absolute fullUrl is replaced in the narrative as in the references
    abs_url = f"http://example.org/fhir/Organization/{unique()}"
    pat = patient(managingOrganization={"reference": abs_url}, text={
        "status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">'
        f'<a href="{abs_url}">医院</a></div>'})
    r = send(client, bundle("transaction", post_entry(org, abs_url), post_entry(pat)))
    org_ref = r.json()["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    rid = r.json()["entry"][1]["response"]["location"].split("/")[1]
    assert f'href="{org_ref}"' in client.get(f"/Patient/{rid}").json()["text"]["div"]


def test_only_links_are_rewritten_never_a_string_that_equals_a_full_url(client):
    """R4 replaces an entry's fullUrl in references, in elements of type uri, url, oid and uuid
    (repeating ones too, and inside extensions, contained resources and a primitive's
    extensions) and in the narrative; an identifier's value, a note's text or a canonical that
    happens to equal it is the sender's data and is kept as sent."""
    org_url = f"urn:uuid:{uuid.uuid4()}"
    org = {"resourceType": "Organization", "name": "第一医院"}
    ext = "https://fhir-region-hub.example/StructureDefinition/test-link"
    pat = patient(managingOrganization={"reference": org_url})
    pat["identifier"] = pat["identifier"] + [{"system": "urn:ietf:rfc:3986", "value": org_url}]
    pat["extension"] = [{"url": ext, "valueUri": org_url},
                        {"url": ext, "valueString": org_url},
                        {"url": ext, "valueReference": {"reference": org_url}}]
    pat["_birthDate"] = {"extension": [{"url": ext, "valueReference": {"reference": org_url}}]}
    pat["birthDate"] = "1980-01-01"
    pat["contained"] = [{"resourceType": "Basic", "id": "c1", "code": {"text": "x"},
                         "author": {"reference": org_url},
                         "identifier": [{"system": org_url, "value": org_url}]}]
    plan = {"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": "urn:uuid:pat"}, "instantiatesUri": [org_url, "http://x"],
            "instantiatesCanonical": [org_url], "note": [{"text": org_url}]}
    pat_url = "urn:uuid:pat"
    r = send(client, bundle("transaction", post_entry(org, org_url), post_entry(pat, pat_url),
                            post_entry(plan)))
    assert r.status_code == 200, r.text
    locs = [e["response"]["location"].rsplit("/_history", 1)[0] for e in r.json()["entry"]]
    org_ref, pat_ref, plan_ref = locs
    stored = client.get(f"/{pat_ref}").json()
    assert stored["managingOrganization"]["reference"] == org_ref
    assert stored["identifier"][-1] == {"system": "urn:ietf:rfc:3986", "value": org_url}
    assert [e.get("valueUri") or e.get("valueString") or e["valueReference"]["reference"]
            for e in stored["extension"]] == [org_ref, org_url, org_ref]
    assert stored["_birthDate"]["extension"][0]["valueReference"]["reference"] == org_ref
    assert stored["contained"][0]["author"]["reference"] == org_ref
    assert stored["contained"][0]["identifier"] == [{"system": org_ref, "value": org_url}]
    care = client.get(f"/{plan_ref}").json()
    assert care["subject"]["reference"] == pat_ref
    assert care["instantiatesUri"] == [org_ref, "http://x"]
    assert care["instantiatesCanonical"] == [org_url] and care["note"] == [{"text": org_url}]


def test_a_transaction_whose_get_fails_stores_nothing(client):
    """All or nothing (R4): a GET entry that fails (a malformed search, an unknown resource)
    refuses the transaction before anything is written; before, the writes stood and the
    answer was a 200."""
    kept = patient(rid=unique())
    for bad in (f"Patient?birthdate=notadate&_id={kept['id']}", f"Patient/{unique()}"):
        before = system_total(client)
        r = send(client, bundle("transaction", put_entry(kept), get_entry(bad)))
        body = assert_outcome(r, (400, 404))
        assert "Bundle.entry[1]" in expressions(body), body
        assert system_total(client) == before
        assert client.get(f"/Patient/{kept['id']}").status_code == 404
    # a GET of what the transaction itself writes answers after the write, as before
    r = send(client, bundle("transaction", put_entry(kept), get_entry(f"Patient/{kept['id']}")))
    assert r.status_code == 200 and r.json()["entry"][1]["resource"]["id"] == kept["id"]


def test_transaction_response_entries_carry_status_location_etag(client, live):
    entries = [post_entry(patient()) for _ in range(3)] + [put_entry(patient(rid=unique()))]
    r = send(client, bundle("transaction", *entries))
    assert r.status_code == 200
    b = r.json()
    assert b["type"] == "transaction-response" and len(b["entry"]) == 4
    for sent, got in zip(entries, b["entry"]):
        resp = got["response"]
        assert resp["status"].startswith("201")
        rtype, rid, _, vid = resp["location"].split("/")
        assert (rtype, vid) == ("Patient", "1")
        assert resp["etag"] == 'W/"1"'
        assert resp["lastModified"].endswith("Z")
        assert got["resource"]["identifier"] == sent["resource"]["identifier"]
        assert got["fullUrl"] == f"{live.base}/Patient/{rid}"
    put_id = b["entry"][3]["response"]["location"].split("/")[1]
    assert put_id == entries[3]["resource"]["id"]


def test_transaction_with_absolute_urls_and_conditional_update(client, live):
    d = patient()
    rid = create(client, d).json()["id"]
    upd = dict(d, gender="male")
    url = f"{live.base}/Patient?identifier={token(d)}"
    r = send(client, bundle("transaction", put_entry(upd, url=url)))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["location"] == f"Patient/{rid}/_history/2"
    r = send(client, bundle("transaction", delete_entry(url)))
    assert r.status_code == 200, r.text
    assert_outcome(client.get(f"/Patient/{rid}"), 410)


def _alike(n: int) -> list[dict]:
    """``n`` POST entries alike but for their fullUrl (and their resource)."""
    return [dict(post_entry(patient(rid=unique())), fullUrl=f"urn:uuid:{unique()}")
            for _ in range(n)]


@pytest.mark.parametrize("b, where", [
    ({"resourceType": "Bundle", "type": "collection", "entry": []}, "Bundle.type"),
    (bundle("transaction", {"resource": patient()}), "Bundle.entry[0].request"),
    (bundle("transaction", {"request": {"method": "PUT", "url": "Patient/a"},
                            "resource": patient(rid="b")}), "Bundle.entry[0].resource.id"),
    (bundle("transaction", {"request": {"method": "POST", "url": "Patient"}}),
     "Bundle.entry[0].resource"),
    (bundle("transaction", {"request": {"method": "POST", "url": "Patient"},
                            "resource": observation("Patient/1")}),
     "Bundle.entry[0].resource.resourceType"),
    (bundle("transaction", {"request": {"method": "FETCH", "url": "Patient"}}),
     "Bundle.entry[0].request.method"),
    # an empty or malformed id names no resource (a DELETE of it answered 204)
    (bundle("transaction", {"request": {"method": "DELETE", "url": "Patient/"}}),
     "Bundle.entry[0].request.url"),
    (bundle("transaction", {"request": {"method": "DELETE", "url": "Patient/a b"}}),
     "Bundle.entry[0].request.url"),
    (bundle("transaction", {"request": {"method": "PUT", "url": "Patient/"},
                            "resource": patient(rid="")}), "Bundle.entry[0].request.url"),
    # the envelope's error is named at its entry among entries alike but for their fullUrl
    (bundle("transaction", *_alike(3), dict(_alike(1)[0], search={"mode": 7})),
     "Bundle.entry[3].search.mode"),
    (bundle("transaction", *_alike(2), dict(_alike(1)[0], fullUrl=12)),
     "Bundle.entry[2].fullUrl"),
    # bdl-7: two entries of one fullUrl (both were created; a reference went to the last)
    (bundle("transaction",
            {"fullUrl": "urn:uuid:9b8e6d52-0c1a-4c0e-9d57-2f4f0b1a7c11", "resource": patient(),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:9b8e6d52-0c1a-4c0e-9d57-2f4f0b1a7c11", "resource": patient(),
             "request": {"method": "POST", "url": "Patient"}}),
     "Bundle.entry[1].fullUrl"),
])
def test_malformed_transactions(client, b, where):
    before = system_total(client)
    body = assert_outcome(send(client, b), (400, 404, 405, 422))
    assert where in expressions(body), body
    assert system_total(client) == before


def test_entry_shapes_accepted_before_still_leave_the_bundle_and_new_shapes_checked(client):
    """Entries alike are checked once in the envelope, and entries a request before had alike
    change nothing: the Bundle's own elements and every new shape are checked each time (guards
    any memory of accepted shapes across requests, tried and dropped as worth about 1 %)."""
    assert send(client, bundle("transaction", *_alike(2))).status_code == 200  # shape accepted
    before = system_total(client)
    bad_top = {**bundle("transaction", *_alike(2)), "timestamp": "not a time"}
    assert "Bundle.timestamp" in expressions(assert_outcome(send(client, bad_top), 422))
    new_shape = bundle("transaction", *_alike(2), dict(_alike(1)[0], search={"mode": 7}))
    assert "Bundle.entry[2].search.mode" in expressions(
        assert_outcome(send(client, new_shape), (400, 422)))
    assert system_total(client) == before


# -- batch -------------------------------------------------------------------------------------


def test_a_control_character_in_a_batch_envelope_is_named_at_its_entry(client):
    """Entries alike are checked once in the envelope; an error is still named where it is."""
    alike = _alike(3)
    odd = _alike(1)[0]
    odd["request"] = {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a\u0001b"}
    before = system_total(client)
    body = assert_outcome(send(client, bundle("batch", *alike, odd)), 400)
    assert "Bundle.entry[3].request.ifNoneExist" in expressions(body), body
    assert system_total(client) == before


def test_batch_entries_are_independent(client):
    ok1, ok2 = patient(), patient(rid=unique())
    bad = patient(birthDate="1990-13-45")
    stale = patient(rid=unique())
    put(client, stale)
    r = send(client, bundle("batch", post_entry(ok1), post_entry(bad), put_entry(ok2),
                            put_entry(dict(stale, gender="male"), if_match='W/"9"'),
                            {"request": {"method": "PUT", "url": "Patient/zz"},
                             "resource": patient(rid="yy")}))
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["type"] == "batch-response"
    Bundle.model_validate(b)
    assert statuses(r) == ["201", "422", "201", "412", "400"]
    for e in b["entry"][1::2] + b["entry"][4:]:
        if not e["response"]["status"].startswith("2"):
            assert e["response"]["outcome"]["resourceType"] == "OperationOutcome"
            assert e["response"]["outcome"]["issue"]
    assert "resource" not in b["entry"][1]
    assert len(found(client, ok1)) == 1 and found(client, bad) == []
    assert client.get(f"/Patient/{ok2['id']}").status_code == 200
    assert "gender" not in client.get(f"/Patient/{stale['id']}").json()


def test_batch_gets(client):
    d = patient(rid=unique())
    put(client, d)
    r = send(client, bundle("batch", get_entry(f"Patient/{d['id']}"),
                            get_entry(f"Patient/{unique()}"),
                            get_entry(f"Patient/{d['id']}/_history/1"),
                            get_entry(f"Patient?identifier={token(d)}"),
                            get_entry("NoSuchType/1")))
    assert r.status_code == 200
    assert statuses(r) == ["200", "404", "200", "200", "404"]
    e = r.json()["entry"]
    assert e[0]["resource"]["id"] == d["id"] and e[2]["resource"]["meta"]["versionId"] == "1"
    assert e[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert e[3]["resource"]["type"] == "searchset" and e[3]["resource"]["total"] == 1
    assert e[0]["response"]["etag"] == 'W/"1"' and e[0]["response"]["lastModified"]
    # conditional reads as on a read: 304 without the resource; HEAD: no resource
    held = {"request": {"method": "GET", "url": f"Patient/{d['id']}", "ifNoneMatch": 'W/"1"'}}
    stale = {"request": {"method": "GET", "url": f"Patient/{d['id']}", "ifNoneMatch": 'W/"0"'}}
    head = {"request": {"method": "HEAD", "url": f"Patient/{d['id']}"}}
    r = send(client, bundle("batch", held, stale, head))
    assert statuses(r) == ["304", "200", "200"]
    e = r.json()["entry"]
    assert "resource" not in e[0] and e[1]["resource"]["id"] == d["id"] and "resource" not in e[2]
    assert e[2]["response"]["etag"] == 'W/"1"'


def test_batch_gets_of_every_kind_http_has(client):
    """R4 allows any GET in a batch: a compartment search (of a type and of all), a history (of
    the instance, the type, the system), a system search; each was a 400 "not supported inside
    a Bundle". And a query holding a URL (identifier=http://…|…) is no absolute URL of another
    server: a conditional PUT keyed by such an identifier was a 400 "not on this server"."""
    d = patient(rid=unique(), system="http://h.example/mrn")
    put(client, d)
    o = create(client, observation(f"Patient/{d['id']}")).json()
    ident = f"http://h.example/mrn|{d['identifier'][0]['value']}"
    r = send(client, bundle("transaction", put_entry({**d, "gender": "female"},
                                                     url=f"Patient?identifier={ident}")))
    assert r.status_code == 200, r.text
    assert client.get(f"/Patient/{d['id']}").json()["gender"] == "female"
    r = send(client, bundle("batch", get_entry(f"Patient/{d['id']}/Observation"),
                            get_entry(f"Patient/{d['id']}/*?_type=Observation,Patient"),
                            get_entry(f"Patient/{d['id']}/_history"),
                            get_entry("Patient/_history?_count=1"),
                            get_entry("_history?_count=1"),
                            get_entry(f"?_type=Patient&_id={d['id']}"),
                            get_entry(f"Observation?subject=Patient/{d['id']}&code=http://loinc.org|8867-4")))
    assert statuses(r) == ["200"] * 7, r.text
    e = [x["resource"] for x in r.json()["entry"]]
    assert [x["resource"]["id"] for x in e[0]["entry"]] == [o["id"]]
    assert {x["resource"]["id"] for x in e[1]["entry"]} == {o["id"], d["id"]}
    assert e[2]["type"] == "history" and len(e[2]["entry"]) == 2  # created, then updated
    assert e[3]["type"] == e[4]["type"] == "history" and len(e[3]["entry"]) == 1
    assert [x["resource"]["id"] for x in e[5]["entry"]] == [d["id"]]
    assert [x["resource"]["id"] for x in e[6]["entry"]] == [o["id"]]
    # Person, the master patient index's view, has no history here either: 405 as over HTTP
    r = send(client, bundle("batch", get_entry("Person/_history"), get_entry("Patient/x/Person")))
    assert statuses(r) == ["405", "405"], r.text
    # a transaction checks them before it writes: a history of no such resource refuses it
    r = send(client, bundle("transaction", put_entry(patient(rid=unique())),
                            get_entry(f"Patient/{unique()}/_history")))
    assert r.status_code == 404, r.text


def test_a_batch_get_if_modified_since_is_an_instant(client):
    """R4's Bundle.entry.request.ifModifiedSince is an instant (an HTTP-date there is a 422):
    one at or after the version's lastUpdated (milliseconds) is a 304 without the resource,
    one a millisecond before is the full answer. Only the HTTP-date form was read: never 304."""
    d = patient(rid=unique())
    put(client, d)
    updated = client.get(f"/Patient/{d['id']}").json()["meta"]["lastUpdated"]
    start = parse_range(updated)[0]

    def instant(us: int) -> str:
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def since(value: str) -> dict:
        return {"request": {"method": "GET", "url": f"Patient/{d['id']}",
                            "ifModifiedSince": value}}
    r = send(client, bundle("batch", since(updated), since(instant(start + 1000)),
                            since(instant(start - 1000))))
    assert statuses(r) == ["304", "304", "200"]
    e = r.json()["entry"]
    assert "resource" not in e[0] and "resource" not in e[1]
    assert e[2]["resource"]["id"] == d["id"]


def test_batch_does_not_resolve_references_between_entries(client):
    """No interdependencies in a batch (R4): an entry naming another, or a conditional reference
    (a transaction's only), fails alone; it was stored as the urn or the query text, a
    reference to nothing that no search of the Patient found."""
    pu = "urn:uuid:" + unique()
    d = create(client, patient()).json()
    r = send(client, bundle("batch", post_entry(patient(), pu), post_entry(observation(pu)),
                            post_entry(observation(f"Patient?identifier={token(d)}")),
                            post_entry(observation(f"Patient/{d['id']}"))))
    assert r.status_code == 200
    assert statuses(r) == ["201", "400", "400", "201"]
    assert "independent" in str(r.json()["entry"][1]["response"]["outcome"])
    assert "transaction" in str(r.json()["entry"][2]["response"]["outcome"])


def test_a_transaction_reference_naming_no_entry_is_refused(client):
    """A urn:uuid no fullUrl of the Bundle is was stored as it came: pointing nowhere."""
    r = send(client, bundle("transaction", post_entry(observation("urn:uuid:" + unique()))))
    assert r.status_code == 400 and "names no entry" in r.text


def test_a_relative_reference_resolves_against_its_entrys_absolute_full_url(client):
    """R4 bundle.html: Patient/p beside fullUrl http://x/fhir/Observation/o names the entry of
    fullUrl http://x/fhir/Patient/p. It was kept, naming the server's own Patient/p: another
    person's."""
    other = create(client, patient()).json()["id"]
    base = "http://example.org/fhir/"
    o = observation(f"Patient/{other}")
    r = send(client, bundle("transaction", post_entry(patient(), base + f"Patient/{other}"),
                            post_entry(o, base + "Observation/o1")))
    assert r.status_code == 200, r.text
    new_pid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    oid = r.json()["entry"][1]["response"]["location"].split("/")[1]
    assert new_pid != other
    assert client.get(f"/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{new_pid}"
    # with no entry of that base and id, a relative reference is the server's resource
    r = send(client, bundle("transaction", post_entry(observation(f"Patient/{other}"),
                                                      base + "Observation/o2")))
    oid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    assert client.get(f"/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{other}"


def test_batch_with_two_writes_of_one_resource_answers_each(client):
    rid = unique()
    r = send(client, bundle("batch", put_entry(patient(rid=rid, family="A")),
                            put_entry(patient(rid=rid, family="B"))))
    assert r.status_code == 200, r.text
    codes = statuses(r)
    assert codes[0] == "201" and codes[1] in ("200", "201", "400", "409", "412")
    hist = client.get(f"/Patient/{rid}/_history").json()
    assert hist["total"] == sum(c in ("200", "201") for c in codes)


def test_batch_conditional_entries_meeting_on_one_resource(client):
    """Two conditional updates that resolve to the same resource: the batch still answers every
    entry (the later one may fail on its own) instead of failing as a whole."""
    d = patient()
    rid = create(client, d).json()["id"]
    r = send(client, bundle("batch",
                            put_entry(dict(d, gender="male"), url=f"Patient?identifier={token(d)}"),
                            put_entry(dict(d, gender="female"), url=f"Patient?_id={rid}")))
    assert r.status_code == 200, r.text
    codes = statuses(r)
    assert codes[0] == "200" and codes[1] in ("200", "409"), codes
    if codes[1] == "409":
        assert r.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    hist = client.get(f"/Patient/{rid}/_history").json()
    assert hist["total"] == 1 + codes.count("200")


def test_synthea_shaped_bundles_load_whole(client):
    # the generator's Synthea-shaped Bundles (hub.synth.bundles, which bench/bundles.py posts):
    # institutions by conditional create, then one transaction per Patient record whose
    # urn:uuid references and conditional Organization references all resolve
    from hub.synth import Region
    from hub.synth.bundles import hospital_bundle, patient_bundles

    region = Region(seed=11, people=3)
    r = send(client, hospital_bundle(region))
    assert r.status_code == 200 and set(statuses(r)) <= {"200", "201"}
    bundles = list(patient_bundles(region))
    entries = sum(len(b["entry"]) for b in bundles)
    first = None
    for b in bundles:
        assert b["entry"][0]["resource"]["resourceType"] == "Patient"
        r = send(client, b)
        first = first or r.json()["entry"][0]["response"]["location"]
        assert r.status_code == 200, r.text
        assert set(statuses(r)) == {"201"}
        for e in r.json()["entry"]:
            assert "urn:uuid" not in str(client.get("/" + e["response"]["location"].split("/_history")[0])
                                         .json())
    pid = first.split("/")[1]
    everything = client.get(f"/Patient/{pid}/$everything", params={"_count": "1000"})
    assert everything.status_code == 200, everything.text
    # the Patient, its records and the Organizations they reference
    assert len(everything.json()["entry"]) >= len(bundles[0]["entry"])
    assert entries > len(bundles)


def test_a_resource_whose_full_url_is_its_canonical_keeps_its_canonical(client):
    """Published conformance Bundles give each resource its canonical URL as fullUrl: the
    canonical (ValueSet.url, typed uri) was replaced by the local path "ValueSet/…", and the
    value set could no longer be found by its url."""
    canonical = f"http://example.org/fhir/ValueSet/vs-{unique()}"
    vs = {"resourceType": "ValueSet", "url": canonical, "status": "active",
          "compose": {"include": [{"system": "http://example.org/cs", "concept": [{"code": "a"}]}]}}
    r = send(client, bundle("transaction", post_entry(vs, canonical)))
    assert r.status_code == 200, r.text
    found = client.get("/ValueSet", params={"url": canonical}).json()
    assert [e["resource"]["url"] for e in found.get("entry", ())] == [canonical]


def test_a_placeholder_in_an_entrys_criteria_is_that_entry_and_a_replay_creates_nothing(client):
    """ifNoneExist subject=urn:uuid:P and a conditional update on it: left as sent, they never
    matched their own earlier results, so every replay of the transaction duplicated them."""
    pu = "urn:uuid:" + unique()
    p = patient()
    code = unique()[:10]
    o = observation(pu) | {"code": {"coding": [{"system": "http://loinc.org", "code": code}]}}
    b = bundle("transaction",
               {**post_entry(p, pu), "request": {"method": "POST", "url": "Patient",
                                                 "ifNoneExist": f"identifier={token(p)}"}},
               {"resource": o, "request": {"method": "POST", "url": "Observation",
                                           "ifNoneExist": f"subject={pu}&code=http://loinc.org|{code}"}})
    first = send(client, b)
    assert first.status_code == 200, first.text
    assert statuses(first) == ["201", "201"]
    again = send(client, b)
    assert statuses(again) == ["200", "200"]
    pid = first.json()["entry"][0]["response"]["location"].split("/")[1]
    assert client.get("/Observation", params={"subject": f"Patient/{pid}"}).json()["total"] == 1


def test_a_bundle_with_no_entries(client):
    """An empty transaction answers with no entry (it answered "entry": [], which FHIR JSON
    forbids); "entry": [] sent is refused as in any resource."""
    for btype in ("transaction", "batch"):
        r = send(client, {"resourceType": "Bundle", "type": btype})
        assert r.status_code == 200 and r.json() == {"resourceType": "Bundle",
                                                     "type": f"{btype}-response"}
        r = send(client, {"resourceType": "Bundle", "type": btype, "entry": []})
        assert r.status_code == 422 and "empty array" in r.text


def test_a_request_url_on_another_server_is_refused(client):
    """PUT http://other.example.org/fhir/Patient/x was written as the local Patient/x."""
    p = patient(rid=unique())
    r = send(client, bundle("transaction", {"resource": p, "request": {
        "method": "PUT", "url": f"http://other.example.org/fhir/Patient/{p['id']}"}}))
    assert r.status_code == 400 and "not on this server" in r.text
    assert client.get(f"/Patient/{p['id']}").status_code == 404


def test_the_same_criteria_twice_in_a_transaction_are_one_resource(client):
    """Two conditional creates by name:exact in one transaction both created (every later
    conditional create on those criteria then failed 412, two matches), and a conditional
    reference of the same criteria found nothing. Now the criteria are one resource: two
    creates of it are refused as two entries on one resource are (as by identifier), and the
    reference finds the entry."""
    name = f"Probe Org {unique()}"
    org = {"resourceType": "Organization", "name": name}
    crit = f"name:exact={name}"
    entry = {"resource": org, "request": {"method": "POST", "url": "Organization",
                                          "ifNoneExist": crit}}
    r = send(client, bundle("transaction", entry, dict(entry)))
    assert r.status_code == 400 and "both concern" in r.text
    pat = patient(managingOrganization={"reference": f"Organization?{crit}"})
    r = send(client, bundle("transaction", entry, post_entry(pat)))
    assert r.status_code == 200, r.text
    org_loc, pat_loc = (e["response"]["location"].split("/_history")[0] for e in r.json()["entry"])
    pid = pat_loc.split("/")[1]
    assert client.get(f"/Patient/{pid}").json()["managingOrganization"]["reference"] == org_loc
    assert client.get("/Organization", params={"name:exact": name}).json()["total"] == 1


def test_an_empty_id_in_if_none_exist_is_refused_not_read_as_no_criteria(client):
    """``ifNoneExist: _id=`` named nothing and was read as no criteria: the entry created a
    resource every time it was sent."""
    p = patient()
    r = send(client, bundle("transaction", post_entry(p, if_none_exist="_id=")))
    assert r.status_code == 400 and "_id" in r.text, r.text
    assert found(client, p) == []


def test_a_get_entry_naming_an_entry_by_its_placeholder_finds_what_it_was_written_as(client):
    """A GET entry's search ``subject=urn:uuid:P`` (R4: every link to an entry is its
    resource) searched for the placeholder itself, which nothing references once written."""
    pu = "urn:uuid:" + str(uuid.uuid4())
    r = send(client, bundle("transaction", post_entry(patient(), pu), post_entry(observation(pu)),
                            get_entry(f"Observation?subject={pu}")))
    assert r.status_code == 200, r.text
    pid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    searched = r.json()["entry"][2]["resource"]
    assert searched["total"] == 1, searched
    assert searched["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{pid}"


# a GET of every kind that fails over HTTP, and the same failing at its entry of a transaction
FAILING_GETS = [
    "Patient/{p}/Observation?date=notadate",  # a compartment search
    "Patient/{p}/*?_type=Device",  # a type outside the compartment
    "Patient/{p}/*?_type=Observation&date=notadate",
    "_history?_since=garbage",
    "Patient/_history?_at=xx",
    "Patient/{p}/_history?_count=many",
    "Person/_history",  # the master patient index's view has none
    "?_type=Nope",
    "?_type=Patient&birthdate=notadate",
    "Patient/{p}?_summary=count",  # no count of a read
]


@pytest.mark.parametrize("url", FAILING_GETS)
def test_a_transactions_failing_get_of_any_kind_refuses_it_before_it_writes(client, url):
    """All or nothing (R4): every GET is checked before the writes, as a type search was; a
    compartment search, a history, a system search or a read's _summary that fails answered a
    200 with the writes committed and the failure at its entry."""
    p = patient(rid=unique())
    put(client, p)
    url = url.format(p=p["id"])
    http = client.get("/" + url if not url.startswith("?") else url)
    assert 400 <= http.status_code < 500, http.text
    kept = patient(rid=unique())
    r = send(client, bundle("transaction", put_entry(kept), get_entry(url)))
    body = assert_outcome(r, http.status_code)
    assert "Bundle.entry[1]" in expressions(body), body
    assert client.get(f"/Patient/{kept['id']}").status_code == 404


def test_a_transactions_get_refused_by_scope_refuses_it_before_it_writes(live, client):
    """A client that may see only Patients: a compartment search of its Observations, their
    history or a system search of them is refused (403) before anything is written."""
    import httpx

    p = patient(rid=unique())
    put(client, p)
    auth = live.client_auth(scope="system/Patient.cruds", name="patients only")
    with httpx.Client(base_url=live.base, timeout=30, auth=auth, verify=httpclient.verify()) as c:
        for url in (f"Patient/{p['id']}/Observation", "Observation/_history",
                    "?_type=Observation"):
            assert c.get(url if url.startswith("?") else "/" + url).status_code == 403, url
            kept = patient(rid=unique())
            r = send(c, bundle("transaction", put_entry(kept), get_entry(url)))
            body = assert_outcome(r, 403)
            assert "Bundle.entry[1]" in expressions(body), (url, body)
            assert client.get(f"/Patient/{kept['id']}").status_code == 404, url
        # what it may see still checks and answers
        r = send(c, bundle("transaction", put_entry(patient(rid=unique())),
                           get_entry(f"Patient/{p['id']}/_history"), get_entry("?_type=Patient")))
        assert statuses(r) == ["201", "200", "200"], r.text


def test_a_read_entry_answers_its_summary_and_elements_as_a_read(client):
    """``_elements`` / ``_summary`` on a read or vread entry subset it as over HTTP (the full
    resource was answered, untagged); ``_summary=count`` is a 400 there as over HTTP."""
    d = patient(rid=unique())
    d["gender"] = "male"
    put(client, d)
    r = send(client, bundle("batch", get_entry(f"Patient/{d['id']}?_elements=identifier"),
                            get_entry(f"Patient/{d['id']}/_history/1?_elements=identifier"),
                            get_entry(f"Patient/{d['id']}?_summary=count"),
                            get_entry(f"Patient/{d['id']}?_summary=false&_pretty=true")))
    assert statuses(r) == ["200", "200", "400", "200"], r.text
    e = r.json()["entry"]
    http = client.get(f"/Patient/{d['id']}", params={"_elements": "identifier"}).json()
    for x in e[:2]:
        assert x["resource"] == http
        assert "gender" not in x["resource"] and x["resource"]["identifier"] == d["identifier"]
        assert "SUBSETTED" in [t["code"] for t in x["resource"]["meta"]["tag"]]
        assert x["response"]["etag"] == 'W/"1"'
    assert e[3]["resource"]["gender"] == "male"


def test_a_request_url_is_read_as_a_server_reads_a_request(client):
    """A percent-encoded path is decoded (``Patient/p%30`` is ``Patient/p0``), empty pairs of
    a query are ignored and a ``#fragment`` is no part of it, as over HTTP (they answered 400,
    400 "Malformed search query", and no match)."""
    d = patient(rid=unique())
    put(client, d)
    encoded = d["id"][:-1] + f"%{ord(d['id'][-1]):02X}"
    r = send(client, bundle("batch", get_entry(f"Patient/{encoded}"),
                            get_entry(f"Patient?identifier={token(d)}&&"),
                            get_entry(f"Patient?_id={d['id']}#x")))
    assert statuses(r) == ["200", "200", "200"], r.text
    e = [x["resource"] for x in r.json()["entry"]]
    assert e[0]["id"] == d["id"]
    assert [x["resource"]["id"] for x in e[1]["entry"]] == [d["id"]]
    assert [x["resource"]["id"] for x in e[2]["entry"]] == [d["id"]]
