"""Every access to patient data writes one AuditEvent, refused and failed ones included.

Over real HTTP against ``hub serve`` with the access audit on; the AuditEvents are read from the
audit log itself (reading them through the API would be audited too).
"""

from __future__ import annotations

import time

import orjson
import pytest

from hub.access.auditlog import open_audit_log
from hub.core import httpclient
from tests.api_helpers import consent, observation, patient, unique
from tests.conftest import FHIR_JSON, LiveServer, make_settings


@pytest.fixture(scope="module", params=["sqlite"])
def live(request, tmp_path_factory):
    settings = make_settings(request.param, tmp_path_factory.mktemp("audit"), request)
    settings.audit = True
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def client(live):
    import httpx

    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth,
                      headers={"accept": "application/fhir+json"}, verify=httpclient.verify()) as c:
        yield c


def audit_events(live) -> dict[str, dict]:
    """id -> AuditEvent, every one in the audit log."""
    log = open_audit_log(live.settings.data_dir, live.settings.database_url)
    try:
        stored = {r.id: orjson.loads(r.body) for r in log.rows()}
        # and those the server has spooled but not yet moved into the tables
        return {**stored, **{e.id: e.body for e in log.spool.pending()}}
    finally:
        log.engine.dispose()  # not close(): that would move the server's spool


def new_since(live, before: dict[str, dict]) -> list[dict]:
    return [e for rid, e in audit_events(live).items() if rid not in before]


def _put(client, d: dict) -> None:
    r = client.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text


def _about(events: list[dict], ref: str) -> list[dict]:
    return [e for e in events if any((x.get("what") or {}).get("reference") == ref
                                     for x in e.get("entity", []))]


def test_each_access_to_patient_data_is_one_audit_event(client, live):
    p = patient(rid=unique()[:16])
    o = observation(f"Patient/{p['id']}")
    o["id"] = unique()[:16]
    _put(client, p)
    _put(client, o)
    before = audit_events(live)
    assert client.get(f"/Patient/{p['id']}").status_code == 200
    assert client.get(f"/Observation/{o['id']}/_history/1").status_code == 200
    assert client.get("/Observation", params={"subject": f"Patient/{p['id']}"}).status_code == 200
    assert client.get(f"/Patient/{p['id']}/_history").status_code == 200
    assert client.get(f"/Patient/{unique()[:16]}").status_code == 404
    events = new_since(live, before)
    assert len(events) == 5  # writes are in the log already; reads are audited once each
    mine = _about(events, f"Patient/{p['id']}")
    kinds = sorted(e["subtype"][0]["code"] for e in mine)
    assert kinds == ["history-instance", "read", "search-type", "vread"], kinds
    for e in mine:
        assert e["outcome"] == "0"
        assert e["agent"][0]["who"]["identifier"]["value"] == live.auth.client_id
        assert e["agent"][0]["network"]["address"] == "127.0.0.1"
    search = next(e for e in mine if e["subtype"][0]["code"] == "search-type")
    query = [x for x in search["entity"] if x["role"]["code"] == "24"]
    assert query and "subject=Patient" in query[0]["description"]
    refused = [e for e in events if e["outcome"] == "4"]
    assert len(refused) == 1 and refused[0]["subtype"][0]["code"] == "read"


def test_a_refused_or_malformed_search_is_audited_too(client, live):
    """A read refused (403) was audited, a search refused or malformed (400, 403) was not: the
    README says every access to patient data, refused and failed ones included."""
    before = audit_events(live)
    narrow = live.client_auth(roles=("clinician",), scope="system/Organization.rs")
    import httpx

    with httpx.Client(base_url=live.base, timeout=30, auth=narrow, verify=httpclient.verify()) as c:
        assert c.get("/Patient", params={"_id": "x"}).status_code == 403
    assert client.get("/Observation", params={"date": "notadate"}).status_code == 400
    events = new_since(live, before)
    assert sorted((e["subtype"][0]["code"], e["outcome"]) for e in events) == [
        ("search-type", "4"), ("search-type", "4")]


def test_a_refused_access_aimed_at_a_patient_is_found_by_that_patient(client, live):
    """A search refused for its scope, aimed at one patient (its subject, a compartment path),
    was audited without the patient: an auditor's search by patient missed it."""
    import httpx

    p = patient(rid=unique()[:16])
    _put(client, p)
    narrow = live.client_auth(roles=("clinician",), scope="system/Patient.rs")
    with httpx.Client(base_url=live.base, timeout=30, auth=narrow, verify=httpclient.verify()) as c:
        assert c.get("/Observation", params={"subject": f"Patient/{p['id']}"}).status_code == 403
        assert c.get(f"/Patient/{p['id']}/Observation").status_code == 403
    auditor = live.client_auth(roles=("auditor",), scope="system/AuditEvent.rs")
    with httpx.Client(base_url=live.base, timeout=30, auth=auditor, verify=httpclient.verify()) as c:
        found = c.get("/AuditEvent", params={"patient": f"Patient/{p['id']}", "outcome": "4"})
        assert found.status_code == 200 and len(found.json().get("entry", [])) == 2, found.text


def test_an_attempt_without_a_valid_token_is_audited(client, live):
    """A read of patient data with no token, or a token that does not verify, was answered 401
    and left no trace in the audit."""
    import httpx

    before = audit_events(live)
    for headers in ({}, {"authorization": "Bearer garbage"}):
        assert httpx.get(f"{live.base}/Patient/someone", headers=headers,
                         timeout=30, verify=httpclient.verify()).status_code == 401
    assert httpx.get(f"{live.base}/metadata", timeout=30, verify=httpclient.verify()).status_code == 200
    events = new_since(live, before)
    assert sorted((e["subtype"][0]["code"], e["outcome"]) for e in events) == [
        ("read", "4"), ("read", "4")], events


def test_data_that_is_not_about_patients_is_not_audited(client, live):
    org = {"resourceType": "Organization", "id": unique()[:16], "name": "Audit test hospital"}
    _put(client, org)
    before = audit_events(live)
    assert client.get(f"/Organization/{org['id']}").status_code == 200
    assert client.get("/Organization", params={"name": "Audit test"}).status_code == 200
    assert new_since(live, before) == []


def test_a_batch_read_is_audited_like_a_plain_one(client, live):
    p = patient(rid=unique()[:16])
    _put(client, p)
    before = audit_events(live)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{p['id']}"}},
        {"request": {"method": "GET", "url": f"Patient?_id={p['id']}"}},
    ]}
    r = client.post("", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    events = new_since(live, before)
    assert sorted(e["subtype"][0]["code"] for e in events) == ["read", "search-type"]
    # each with the entry's own query (both were recorded as the POST to the base, "/fhir/")
    queries = {e["subtype"][0]["code"]: [x["description"] for x in e["entity"]
                                         if "description" in x] for e in events}
    assert queries["search-type"] == [f"/fhir/Patient?_id={p['id']}"], queries
    assert queries["read"] == [f"/fhir/Patient/{p['id']}"], queries
    # a transaction's GETs are checked before its writes, and read (and audited) once, after
    before = audit_events(live)
    r = client.post("", json={**bundle, "type": "transaction"}, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    events = new_since(live, before)
    assert sorted(e["subtype"][0]["code"] for e in events) == ["read", "search-type"]


def test_a_forwarded_address_counts_only_from_a_trusted_proxy(client, live):
    p = patient(rid=unique()[:16])
    _put(client, p)
    before = audit_events(live)
    r = client.get(f"/Patient/{p['id']}", headers={"x-forwarded-for": "203.0.113.7"})
    assert r.status_code == 200
    [event] = new_since(live, before)
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"  # not a proxy: ignored


def test_patients_handed_out_by_match_are_audited(client, live):
    from tests.test_mpi_match_api import patient as person

    p = person(unique()[:16], name="赵敏", id_=None, birthDate="1977-07-07")
    _put(client, p)
    before = audit_events(live)
    query = {k: v for k, v in p.items() if k != "id"}
    r = client.post("/Patient/$match", headers=FHIR_JSON, json={
        "resourceType": "Parameters", "parameter": [{"name": "resource", "resource": query}]})
    assert r.status_code == 200, r.text
    assert any(e["resource"]["id"] == p["id"] for e in r.json().get("entry", [])), r.text
    [event] = new_since(live, before)
    assert event["subtype"][0] == {"system": "http://hl7.org/fhir/restful-interaction",
                                   "code": "operation", "display": "$match"}
    assert f"Patient/{p['id']}" in [x["what"]["reference"] for x in event["entity"]
                                    if "what" in x]


def _search(client, **params) -> dict:
    r = client.get("/AuditEvent", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_auditors_search_the_audit_log_by_patient_date_agent_and_outcome(client, live):
    from fhir.resources.R4B.auditevent import AuditEvent

    p = patient(rid=unique()[:16])
    _put(client, p)
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    for _ in range(3):
        assert client.get(f"/Patient/{p['id']}").status_code == 200
    assert client.get(f"/Patient/{p['id']}/_history/7").status_code == 404
    ref = f"Patient/{p['id']}"
    read = "http://hl7.org/fhir/restful-interaction|read"
    mine = _search(client, patient=ref, subtype=read, _count="10")
    assert len(_ids(mine)) == 3 and mine["total"] == 3
    for e in mine["entry"]:
        AuditEvent.model_validate(e["resource"])  # the log serves valid FHIR R4
    [refused] = _search(client, patient=ref, outcome="4")["entry"]
    assert refused["resource"]["subtype"][0]["code"] == "vread"
    # reading the audit is an access to the patient's data too: these searches are in it
    searches = _search(client, patient=ref, subtype="search-type", _total="accurate")
    assert searches["total"] == 2
    assert len(_ids(_search(client, entity=ref, date=f"ge{start}"))) >= 6
    assert _ids(_search(client, entity=ref, date="lt2000-01-01")) == []
    by_name = _search(client, patient=ref, subtype=read, **{"agent-name": live.auth.client_id[:6]})
    assert len(_ids(by_name)) == 3
    assert _ids(_search(client, patient=ref, **{"agent-name:exact": "someone-else"})) == []
    # by the agent itself: the hub names it by identifier (a client or user, no resource), and
    # agent= found nothing in any form
    me = live.auth.client_id
    system = by_name["entry"][0]["resource"]["agent"][0]["who"]["identifier"]["system"]
    for query in ({"agent": me}, {"agent:identifier": me},
                  {"agent:identifier": f"{system}|{me}"}):
        assert set(_ids(_search(client, patient=ref, subtype=read, **query))) == \
            set(_ids(by_name)), query
    assert _ids(_search(client, patient=ref, agent="someone-else")) == []
    # newest first, paged
    newest = _search(client, _sort="-date", _count="2", patient=ref, subtype=read)
    assert len(_ids(newest)) == 2
    nxt = next(link["url"] for link in newest["link"] if link["relation"] == "next")
    rest = client.get(nxt).json()
    assert len(_ids(rest)) == 1 and not set(_ids(rest)) & set(_ids(newest))
    assert _ids(newest)[0] == _ids(mine)[-1] and _ids(rest) == _ids(mine)[:1]
    one = client.get(f"/AuditEvent/{_ids(mine)[0]}")
    assert one.status_code == 200 and one.headers["etag"] == 'W/"1"'
    assert client.get(f"/AuditEvent/{_ids(mine)[0]}/_history/2").status_code == 404
    # the log keeps no time its history is complete up to (the event store's): none is given
    history = client.get("/AuditEvent/_history", params={"_count": "1"})
    assert history.status_code == 200 and history.json()["entry"]
    assert "meta" not in history.json() and "timestamp" not in history.json()
    assert client.get("/AuditEvent/not-there").status_code == 404
    # what the log cannot answer is refused, not silently widened
    for params in ({"patient:identifier": "x|1"}, {"_sort": "outcome"}, {"_has:Patient:link:name": "x"},
                   {"patient": ref, "_include": "AuditEvent:patient"}):
        r = client.get("/AuditEvent", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"


def test_an_audit_search_refuses_a_parameter_it_does_not_know_whatever_the_handling(client):
    """A misspelt or unknown filter (patinet=, code=, foo=) was ignored with a warning: the
    auditor got the whole log. Now it is a 400 without Prefer: handling=strict too, as an R4
    parameter the log cannot answer (site) was; so is a filter given no value. The result
    parameters the log answers still work."""
    p = patient(rid=unique()[:16])
    _put(client, p)
    ref = f"Patient/{p['id']}"
    for params in ({"patinet": ref}, {"code": "x"}, {"foo": "bar"}, {"_foo": "1"},
                   {"site": "x"}, {"patient": ""}, {"patient": ref, "agnet": "me"}):
        for headers in ({}, {"prefer": "handling=strict"}, {"prefer": "handling=lenient"}):
            r = client.get("/AuditEvent", params=params, headers=headers)
            assert r.status_code == 400, (params, headers, r.text)
            assert r.json()["resourceType"] == "OperationOutcome"
            assert list(params)[-1] in r.json()["issue"][0]["diagnostics"], r.text
        r = client.post("/AuditEvent/_search", data=params)
        assert r.status_code == 400, (params, r.text)
    found = client.get("/AuditEvent", params={
        "patient": ref, "_count": "5", "_sort": "-date", "_total": "accurate",
        "_summary": "true", "_format": "json", "_pretty": "true"})
    assert found.status_code == 200, found.text
    assert found.json()["total"] >= 1
    r = client.get("/AuditEvent", params={"patient": ref, "_elements": "outcome"})
    assert r.status_code == 200, r.text


def test_the_accesses_to_an_opted_out_patient_are_the_auditors_to_see(client, live):
    """A patient's Consent governs the disclosure of their data, not the record of who read it:
    an auditor finds every access to a patient who opted out of sharing (a break-the-glass
    read above all), and reads each; before, the log hid them as the patient's data."""
    import httpx

    p = patient(rid=unique()[:16])
    _put(client, p)
    _put(client, consent(p["id"], {"type": "deny"}))
    ref = f"Patient/{p['id']}"
    time.sleep(0.5)  # the consent rules are read again within a quarter second
    assert client.get(f"/{ref}").status_code == 403  # an administrator of no institution
    emergency = client.get(f"/{ref}", headers={"x-purpose-of-use": "ETREAT"})
    assert emergency.status_code == 200
    with httpx.Client(base_url=live.base, timeout=30,
                      auth=live.client_auth(roles=("auditor",), institution="H2"), verify=httpclient.verify()) as auditor:
        found = auditor.get("/AuditEvent", params={"patient": ref, "_count": "50"})
        assert found.status_code == 200, found.text
        events = [e["resource"] for e in found.json().get("entry", [])]
        outcomes = sorted(e["outcome"] for e in events if e["subtype"][0]["code"] == "read")
        assert outcomes == ["0", "4"], outcomes
        for e in events:
            assert auditor.get(f"/AuditEvent/{e['id']}").status_code == 200
    # the patient's own data stays hidden from that auditor's institution
    with httpx.Client(base_url=live.base, timeout=30,
                      auth=live.client_auth(roles=("auditor",), institution="H2"), verify=httpclient.verify()) as auditor:
        assert auditor.get(f"/{ref}").status_code == 403


def test_the_person_an_identity_decision_answers_with_is_an_audited_read(client, live):
    p = patient(rid=unique()[:16])
    _put(client, p)
    before = audit_events(live)
    link = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{p['id']}"}}]}
    r = client.post("/Person/$link", json=link, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert any(e["subtype"][0]["code"] == "person-read"
               for e in _about(new_since(live, before), f"Patient/{p['id']}"))


@pytest.fixture(scope="module")
def behind_proxy(request, tmp_path_factory):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("proxied"), request)
    settings.audit = True
    settings.trusted_proxies = ("127.0.0.1",)
    settings.rate_limit = 5.0
    with LiveServer(settings) as server:
        yield server


def test_behind_a_trusted_proxy_the_forwarded_client_is_audited(behind_proxy):
    import httpx

    live = behind_proxy
    p = patient(rid=unique()[:16])
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        assert c.put(f"/Patient/{p['id']}", json=p, headers=FHIR_JSON).status_code == 201
        before = audit_events(live)
        time.sleep(1)  # the rate limit's bucket refills
        r = c.get(f"/Patient/{p['id']}",
                  headers={"x-forwarded-for": "198.51.100.23, 203.0.113.7, 127.0.0.1"})
        assert r.status_code == 200, r.text
    [event] = new_since(live, before)
    # the nearest hop that is not a trusted proxy
    assert event["agent"][0]["network"]["address"] == "203.0.113.7"


def test_a_caller_over_its_rate_is_told_to_wait(behind_proxy):
    import httpx

    live = behind_proxy
    other = live.client_auth(name="another client")
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        answers = [c.get("/Organization", params={"_count": "1"}) for _ in range(30)]
        with httpx.Client(base_url=live.base, timeout=30, auth=other, verify=httpclient.verify()) as d:
            assert d.get("/Organization", params={"_count": "1"}).status_code == 200
    throttled = [r for r in answers if r.status_code == 429]
    assert throttled and len(throttled) < 30, [r.status_code for r in answers]
    assert int(throttled[0].headers["retry-after"]) >= 1
    assert throttled[0].json()["issue"][0]["code"] == "throttled"


def test_callers_without_a_valid_token_are_held_to_a_rate_per_address(behind_proxy):
    """HUB_RATE_LIMIT held only callers with a valid token: guessing tokens, and signing
    assertions at the token endpoint, went unthrottled."""
    import httpx

    live = behind_proxy
    form = {"grant_type": "client_credentials"}
    with httpx.Client(base_url=live.origin, timeout=30, verify=httpclient.verify()) as c:
        def statuses(send, address: str) -> set[int]:
            time.sleep(1.2)  # the bucket refills
            return {send({"x-forwarded-for": address}).status_code for _ in range(25)}

        assert statuses(lambda h: c.get("/fhir/Patient", headers=h), "198.51.100.1") == {401, 429}
        assert statuses(lambda h: c.get("/fhir/Patient", headers={
            **h, "authorization": "Bearer a.b.c"}), "198.51.100.2") == {401, 429}
        assert statuses(lambda h: c.post("/auth/token", data=form, headers=h),
                        "198.51.100.3") == {401, 429}
        time.sleep(1.2)
        assert c.get("/fhir/metadata").status_code == 200  # public, not held
        assert c.get("/fhir/Patient", headers={"x-forwarded-for": "198.51.100.4"}
                     ).status_code == 401  # another address is not held by the others


def test_a_documents_binary_and_bundle_are_the_patients_data(client, live):
    """A CDA document as sent (its Binary, the patient in securityContext) and its document
    Bundle are read audited as the patient's data, like any resource of their compartment."""
    import base64

    p = patient(rid=unique()[:16])
    _put(client, p)
    ref = {"reference": f"Patient/{p['id']}"}
    binary = {"resourceType": "Binary", "id": unique()[:16], "contentType": "application/xml",
              "securityContext": ref, "data": base64.b64encode(b"<ClinicalDocument/>").decode()}
    bundle = {"resourceType": "Bundle", "id": unique()[:16], "type": "document",
              "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{unique()}"},
              "timestamp": "2024-05-06T10:00:00+08:00",
              "entry": [{"fullUrl": "urn:uuid:5c6f6c53-3a4e-4a55-9a7e-3b4c2f1d0e01",
                         "resource": {"resourceType": "Composition", "status": "final",
                                      "type": {"text": "出院小结"}, "subject": ref,
                                      "date": "2024-05-06T10:00:00+08:00", "title": "出院小结",
                                      "author": [{"display": "张医生"}]}},
                        {"fullUrl": f"Patient/{p['id']}", "resource": p}]}
    _put(client, binary)
    _put(client, bundle)
    before = audit_events(live)
    assert client.get(f"/Binary/{binary['id']}").status_code == 200
    assert client.get(f"/Bundle/{bundle['id']}").status_code == 200
    mine = _about(new_since(live, before), f"Patient/{p['id']}")
    assert sorted(e["subtype"][0]["code"] for e in mine) == ["read", "read"]


def test_every_patient_a_search_hands_out_is_found_in_the_audit(client, live):
    """An AuditEvent named at most 100 Patients: the 101st of a page was handed out with no
    trace an auditor could find by patient."""
    family = "Audit" + unique()[:8]
    entries = [{"resource": {"resourceType": "Patient", "id": f"{family}-{i:03d}",
                             "name": [{"family": family}]},
                "request": {"method": "PUT", "url": f"Patient/{family}-{i:03d}"}}
               for i in range(120)]
    r = client.post("", json={"resourceType": "Bundle", "type": "transaction",
                              "entry": entries}, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    before = audit_events(live)
    r = client.get("/Patient", params={"family": family, "_count": 200})
    assert len(r.json()["entry"]) == 120
    events = new_since(live, before)
    named = {x["what"]["reference"] for e in events for x in e.get("entity", ())
             if "what" in x and x["what"]["reference"].startswith("Patient/")}
    assert named == {f"Patient/{family}-{i:03d}" for i in range(120)}
    assert all(e["subtype"][0]["code"] == "search-type" for e in events) and len(events) == 2


# -- the shared record, refusals, one event per request, the agent of a refusal -----------------

TREAT = {"x-purpose-of-use": "TREAT"}


def _http(live, auth):
    import httpx

    headers = {"accept": "application/fhir+json"}
    if isinstance(auth, str):
        headers["authorization"], auth = f"Bearer {auth}", None
    return httpx.Client(base_url=live.base, timeout=30, auth=auth, headers=headers, verify=httpclient.verify())


def _link(client, pid: str, person: str | None = None) -> str:
    params = [{"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}}]
    if person:
        params.append({"name": "person", "valueReference": {"reference": f"Person/{person}"}})
    r = client.post("/Person/$link", json={"resourceType": "Parameters", "parameter": params},
                    headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def _patient_token(live, pid: str) -> str:
    from hub.auth.signer import Signer

    return Signer(live.settings.data_dir).issue(
        {"iss": live.origin + "/auth", "aud": live.base, "sub": f"user-{pid}",
         "scope": "patient/*.rs", "patient": pid, "hub_roles": ["clinician"]}, 300)


def _named(event: dict) -> set[str]:
    return {x["what"]["reference"] for x in event.get("entity", ()) if "what" in x}


def test_refused_history_person_match_and_resolve_are_audited(client, live):
    """A refused instance history (and one of an unknown id), Person read and search, $match
    and $resolve-identifier were refused before their audit began: no AuditEvent, where a
    refused read has one."""
    p = patient(rid=unique()[:16])
    _put(client, p)
    person = _link(client, p["id"])
    narrow = live.client_auth(roles=("clinician",), scope="user/Observation.rs")
    match = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {k: v for k, v in p.items() if k != "id"}}]}
    ident = f"{p['identifier'][0]['system']}|{p['identifier'][0]['value']}"
    with _http(live, narrow) as c:
        for method, path, kw, status in (
                ("GET", f"/Patient/{p['id']}/_history", {}, 403),
                ("GET", f"/Person/{person}", {}, 403),
                ("GET", "/Person", {"params": {"_id": person}}, 403),
                ("POST", "/Patient/$match", {"json": match, "headers": FHIR_JSON}, 403),
                ("GET", "/$resolve-identifier", {"params": {"identifier": ident}}, 403)):
            before = audit_events(live)
            r = c.request(method, path, **kw)
            assert r.status_code == status, (path, r.text)
            events = new_since(live, before)
            assert [e["outcome"] for e in events] == ["4"], (path, events)
    before = audit_events(live)
    unknown = unique()[:16]
    assert client.get(f"/Patient/{unknown}/_history").status_code == 404
    [event] = new_since(live, before)
    assert event["outcome"] == "4" and f"Patient/{unknown}" in _named(event)


def test_everything_and_timeline_of_a_hidden_patient_answer_as_its_read(client, live):
    """A Patient the caller may not read (opted out; another patient's, for a patient token)
    answered $everything and $timeline with the records of the person's other Patients, which
    told of the link; a Person it may not read answered an empty $everything. And the audit of
    an answered $everything named every Patient of the person, a hidden one too."""
    shown, hidden, alone = (patient(rid=unique()[:16]) for _ in range(3))
    hidden["identifier"] = shown["identifier"]  # the same person, recorded twice
    obs = []
    for p in (shown, hidden, alone):
        o = observation(f"Patient/{p['id']}")
        o["id"] = unique()[:16]
        obs.append(o)
        _put(client, p)
        _put(client, o)
    person = _link(client, shown["id"])
    _link(client, hidden["id"], person)
    apart = _link(client, alone["id"])
    for p in (hidden, alone):
        _put(client, consent(p["id"], {"type": "deny"}))
    time.sleep(0.5)  # the consent rules are read again within a quarter second
    clinician = live.client_auth(roles=("clinician",), scope="user/*.rs", institution="H2")
    with _http(live, clinician) as c:
        assert c.get(f"/Patient/{hidden['id']}").status_code == 403
        assert c.get(f"/Person/{apart}").status_code == 403
        for path in (f"/Patient/{hidden['id']}/$everything", f"/Patient/{hidden['id']}/$timeline",
                     f"/Person/{apart}/$everything", f"/Person/{apart}/$timeline"):
            r = c.get(path, headers=TREAT)
            assert r.status_code == 403, (path, r.text)
            assert obs[0]["id"] not in r.text, path
        assert c.get(f"/Patient/{unique()[:16]}/$everything", headers=TREAT).status_code == 404
        before = audit_events(live)
        r = c.get(f"/Patient/{shown['id']}/$everything", headers=TREAT)
        assert r.status_code == 200, r.text
        handed = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                  for e in r.json()["entry"]}
        assert handed == {f"Patient/{shown['id']}", f"Observation/{obs[0]['id']}"}
        [event] = new_since(live, before)
        assert event["outcome"] == "0"
        # the Patients whose data was handed out, not the hidden one of the same person
        assert _named(event) == {f"Person/{person}", f"Patient/{shown['id']}"}, _named(event)
    with _http(live, _patient_token(live, shown["id"])) as c:
        assert c.get(f"/Patient/{alone['id']}").status_code == 403
        r = c.get(f"/Patient/{alone['id']}/$everything", headers=TREAT)
        assert r.status_code == 403 and obs[2]["id"] not in r.text, r.text


def test_a_compartment_search_across_its_types_is_one_audit_event(client, live):
    """``Patient/{id}/*`` searched each type of the compartment as an access of its own: some
    65 AuditEvents for one request, an unknown or refused patient's too."""
    p = patient(rid=unique()[:16])
    o = observation(f"Patient/{p['id']}")
    o["id"] = unique()[:16]
    _put(client, p)
    _put(client, o)
    weak = live.client_auth(roles=("clinician",), scope="user/Organization.rs")
    for c, path, status, outcome in (
            (client, f"/Patient/{p['id']}/*", 200, "0"),
            (client, f"/Patient/{p['id']}/*?_count=1", 200, "0"),
            (client, f"/Patient/{unique()[:16]}/*", 200, "0"),
            (_http(live, weak), f"/Patient/{p['id']}/*", 403, "4")):
        before = audit_events(live)
        r = c.get(path)
        assert r.status_code == status, (path, r.text)
        events = new_since(live, before)
        assert [e["outcome"] for e in events] == [outcome], (path, len(events))
    before = audit_events(live)
    found = client.get(f"/Patient/{p['id']}/*").json()
    assert {e["resource"]["id"] for e in found["entry"]} == {p["id"], o["id"]}
    [event] = new_since(live, before)
    assert f"Patient/{p['id']}" in _named(event)
    # a search of the system across types is one access too (it was one per type, and one
    # more per type for whether a next page exists); one of no patient data type is none
    for params, count in (({"_type": "Patient,Observation,Condition", "_id": o["id"]}, 1),
                          ({"_type": "Patient,Observation", "_count": "1"}, 1),
                          ({"_type": "CodeSystem,ValueSet"}, 0)):
        before = audit_events(live)
        assert client.get("", params=params).status_code == 200
        events = new_since(live, before)
        assert len(events) == count, (params, len(events))
        assert all(e["outcome"] == "0" for e in events)


def test_a_revoked_clients_refused_requests_are_audited_as_that_client(client, live):
    """A revoked client's token verifies, so who sent it is known: its refused requests were
    audited as "anonymous", which an auditor's search by that client did not find. A token
    that does not verify names no one it could be trusted to name."""
    from hub.auth.clients import open_registry
    from hub.auth.signer import Signer

    auth = live.client_auth(roles=("clinician",), scope="user/*.rs", name="soon revoked")
    token = auth.token()
    ref = f"Patient/{unique()[:16]}"
    with _http(live, token) as c:
        assert c.get(f"/{ref}").status_code == 404
        open_registry(live.settings.data_dir).revoke(auth.client_id)
        r = c.get(f"/{ref}")
        assert r.status_code == 401 and "revoked" in r.text, r.text
    forged = Signer(live.settings.data_dir / "elsewhere").issue(
        {"iss": live.origin + "/auth", "aud": live.base, "sub": auth.client_id,
         "client_id": auth.client_id, "scope": "user/*.rs"}, 300)
    with _http(live, forged) as c:
        assert c.get(f"/{ref}").status_code == 401
    time.sleep(0.5)  # moved from the spool into the searchable tables
    auditor = live.client_auth(roles=("auditor",), scope="system/AuditEvent.rs")
    with _http(live, auditor) as c:
        found = c.get("/AuditEvent", params={"agent": auth.client_id, "outcome": "4"})
        assert found.status_code == 200, found.text
        events = [e["resource"] for e in found.json().get("entry", [])
                  if "revoked" in e["resource"].get("outcomeDesc", "")]
        assert len(events) == 1 and ref in _named(events[0]), events
        found = c.get("/AuditEvent", params={"entity": ref, "outcome": "4"}).json()
        agents = sorted(e["resource"]["agent"][0]["who"]["identifier"]["value"]
                        for e in found.get("entry", []))
        # the read before the revocation (404), the revoked token's, the forged one's
        assert agents == sorted([auth.client_id, auth.client_id, "anonymous"]), agents


def test_an_external_providers_user_has_a_rate_of_its_own_apart_from_a_hub_client_of_its_subject(
        tmp_path, request):
    """The rate limit's bucket was keyed by the token's subject alone: a user of an external
    provider whose ``sub`` equals a hub client's id spent that client's rate (and could hold it
    to 429s on purpose)."""
    import httpx

    from tests.test_auth_tokens import RSA_KEY, JwksServer, idp_token

    idp = JwksServer()
    idp.publish(RSA_KEY, "k1")
    settings = make_settings("sqlite", tmp_path, request)
    settings.rate_limit = 5.0
    settings.auth_issuer, settings.auth_jwks_url = idp.issuer, None
    try:
        with LiveServer(settings) as server:
            twin = server.client_auth(roles=("clinician",), scope="system/*.rs", name="twin")
            token = idp_token(RSA_KEY, "k1", iss=idp.issuer, aud=server.base,
                              sub=twin.client_id, scope="system/*.rs", roles=["clinician"])
            with httpx.Client(base_url=server.base, timeout=30, headers={
                    "authorization": f"Bearer {token}", "accept": "application/fhir+json"}, verify=httpclient.verify()) as theirs:
                answers = [theirs.get("/Organization", params={"_count": "1"}).status_code
                           for _ in range(30)]
            assert 429 in answers, answers
            with httpx.Client(base_url=server.base, timeout=30, auth=twin, verify=httpclient.verify()) as ours:
                assert ours.get("/Organization", params={"_count": "1"}).status_code == 200
    finally:
        idp.close()


def test_an_external_providers_user_is_told_apart_from_a_hub_client_of_the_same_subject(
        tmp_path, request):
    """The audit named an agent by its subject alone: a user of an external OpenID Connect
    provider whose ``sub`` equals a hub client's id was the same agent to ``AuditEvent?agent=``
    and in the export jobs' titles."""
    import httpx

    from hub.core.jobs import Jobs
    from tests.test_auth_tokens import RSA_KEY, JwksServer, idp_token

    idp = JwksServer()
    idp.publish(RSA_KEY, "k1")
    settings = make_settings("sqlite", tmp_path, request)
    settings.audit = True
    settings.auth_issuer, settings.auth_jwks_url = idp.issuer, None
    try:
        with LiveServer(settings) as server:
            p = patient(rid=unique()[:16])
            with httpx.Client(base_url=server.base, timeout=30, auth=server.auth, verify=httpclient.verify()) as admin:
                _put(admin, p)
            twin = server.client_auth(roles=("clinician",), scope="system/*.rs", name="twin")
            sub = twin.client_id
            token = idp_token(RSA_KEY, "k1", iss=idp.issuer, aud=server.base, sub=sub,
                              scope="system/*.rs", roles=["clinician"])
            with httpx.Client(base_url=server.base, timeout=30, auth=twin, verify=httpclient.verify()) as ours:
                assert ours.get(f"/Patient/{p['id']}").status_code == 200
                assert ours.get("/$export", params={"_type": "Patient"}, headers={
                    "accept": "application/fhir+json", "prefer": "respond-async"}
                                ).status_code == 202
            with httpx.Client(base_url=server.base, timeout=30, headers={
                    "authorization": f"Bearer {token}", "accept": "application/fhir+json"}, verify=httpclient.verify()) as theirs:
                for _ in range(2):
                    assert theirs.get(f"/Patient/{p['id']}").status_code == 200
                assert theirs.get("/$export", params={"_type": "Patient"}, headers={
                    "prefer": "respond-async"}).status_code == 202
            auditor = server.client_auth(roles=("auditor",), scope="system/AuditEvent.rs")
            read = "http://hl7.org/fhir/restful-interaction|read"
            ref = f"Patient/{p['id']}"
            with httpx.Client(base_url=server.base, timeout=30, auth=auditor,
                              headers={"accept": "application/fhir+json"}, verify=httpclient.verify()) as c:
                def found(**query) -> list[dict]:
                    return [e["resource"] for e in _search(c, patient=ref, subtype=read,
                                                           **query).get("entry", [])]
                everyone = found(agent=sub)  # by the subject alone: both, as before
                assert len(everyone) == 3, everyone
                hub_system = "https://fhir-region-hub.example/user"
                ours_only = found(**{"agent:identifier": f"{hub_system}|{sub}"})
                theirs_only = found(**{"agent:identifier": f"{idp.issuer}|{sub}"})
                assert len(ours_only) == 1 and len(theirs_only) == 2, (ours_only, theirs_only)
                who = theirs_only[0]["agent"][0]["who"]
                assert who["identifier"] == {"system": idp.issuer, "value": sub}
                assert ours_only[0]["agent"][0]["who"] == {
                    "identifier": {"system": hub_system, "value": sub}, "display": sub}
            titles = [j["title"] for j in Jobs(settings.data_dir).list() if j["kind"] == "export"]
            assert len(titles) == 2 and len(set(titles)) == 2, titles
    finally:
        idp.close()


def _external_provider_hub(tmp_path, request):
    """A hub with the access audit on whose API also takes an external provider's tokens."""
    from tests.test_auth_tokens import RSA_KEY, JwksServer

    idp = JwksServer()
    idp.publish(RSA_KEY, "k1")
    settings = make_settings("sqlite", tmp_path, request)
    settings.audit = True
    settings.auth_issuer, settings.auth_jwks_url = idp.issuer, None
    return idp, settings


def test_identity_decisions_tell_an_external_user_from_a_hub_client_of_the_same_subject(
        tmp_path, request, capsysbinary):
    """A decision recorded its user by the token's subject alone: an external provider's steward
    whose ``sub`` equals a hub client's id was that client in the decision history and in
    ``hub mpi export``."""
    import httpx

    from hub import cli
    from tests.test_auth_tokens import RSA_KEY, idp_token

    idp, settings = _external_provider_hub(tmp_path, request)
    try:
        with LiveServer(settings) as server:
            a, b = patient(rid=unique()[:16]), patient(rid=unique()[:16])
            with httpx.Client(base_url=server.base, timeout=30, auth=server.auth, verify=httpclient.verify()) as admin:
                _put(admin, a)
                _put(admin, b)
            ours = server.client_auth(roles=("steward",), scope="system/*.rs", name="twin")
            sub = ours.client_id
            token = idp_token(RSA_KEY, "k1", iss=idp.issuer, aud=server.base, sub=sub,
                              scope="system/*.rs", roles=["steward"])
            body = {"resourceType": "Parameters", "parameter": [
                {"name": "patient", "valueReference": {"reference": ""}}]}
            for who, p in ((ours, a), ({"authorization": f"Bearer {token}"}, b)):
                body["parameter"][0]["valueReference"]["reference"] = f"Patient/{p['id']}"
                with httpx.Client(base_url=server.base, timeout=30,
                                  **({"auth": who} if not isinstance(who, dict) else
                                     {"headers": who})) as c:
                    r = c.post("/Person/$link", json=body, headers=FHIR_JSON)
                    assert r.status_code == 200, r.text
        code = cli.main(["mpi", "export", "--data-dir", str(settings.data_dir), "--format",
                         "ndjson"])
        out = capsysbinary.readouterr()
        assert code == 0, out.err.decode()[-500:]
        by = {r["patient"]: r["decided_by"] for r in map(orjson.loads, out.out.splitlines())}
        assert by[f"Patient/{a['id']}"] == sub
        assert by[f"Patient/{b['id']}"] == f"{sub} ({idp.issuer})"
    finally:
        idp.close()


def test_a_break_the_glass_access_of_an_external_user_is_reviewed_by_the_hub_user_of_its_subject(
        tmp_path, request):
    """The review's check compared subjects alone: a hub auditor could not review the
    break-the-glass access of an external provider's user whose ``sub`` was the auditor's own
    subject (two people), the page marking it the auditor's own access."""
    import re

    import httpx

    from tests.console_helpers import console_user, logged_in, wait_for
    from tests.test_auth_tokens import RSA_KEY, idp_token

    idp, settings = _external_provider_hub(tmp_path, request)
    try:
        with LiveServer(settings) as server:
            p = patient(rid=unique()[:16])
            with httpx.Client(base_url=server.base, timeout=30, auth=server.auth, verify=httpclient.verify()) as admin:
                _put(admin, p)
            name = console_user(server, ("auditor",))
            token = idp_token(RSA_KEY, "k1", iss=idp.issuer, aud=server.base,
                              sub=f"console:{name}", scope="system/*.rs", roles=["clinician"])
            r = httpx.get(f"{server.base}/Patient/{p['id']}", timeout=30, headers={
                "authorization": f"Bearer {token}", "x-purpose-of-use": "ETREAT"}, verify=httpclient.verify())
            assert r.status_code == 200, r.text
            aud = logged_in(server, name)

            def row() -> str | None:
                m = re.search(r'<tr id="access-([^"]+)">((?:(?!</tr>).)*Patient/'
                              + re.escape(p["id"]) + r".*?)</tr>", aud.get("/console/audit").text,
                              re.S)
                return m and m.group(0)

            found = wait_for(row)
            assert found and idp.issuer in found  # the external user, with its provider
            assert "<form" in found  # not the auditor's own: the review form is there
            aid = re.search(r'id="access-([^"]+)"', found).group(1)
            csrf = re.search(r'name="csrf" value="([^"]+)"', aud.get("/console/audit").text)
            r = aud.post(f"/console/audit/{aid}/review", data={
                "csrf": csrf.group(1), "finding": "unjustified", "note": "no emergency"})
            assert r.status_code == 303, r.text
            reviewed = row()
            assert "finding-unjustified" in reviewed and "<form" not in reviewed
    finally:
        idp.close()
