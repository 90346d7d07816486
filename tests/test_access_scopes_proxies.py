"""Access over real HTTP with real tokens: several scopes each by its own limits, a Binary held to
its security proxy, a hidden record's deletion, a patient and its own Consent, linked Patients.

One ``hub serve`` with access control on and ``HUB_BASE_URL`` set (what the policy takes an
absolute reference for this server's by). Backend clients get their tokens from the token
endpoint; patient-context tokens are signed as the hub's own (an OpenID provider's launch).
"""

from __future__ import annotations

import httpx
import pytest

from hub.auth.signer import Signer
from hub.core import httpclient
from tests.api_helpers import consent, observation, patient, unique
from tests.conftest import FHIR_JSON, LiveServer, make_settings

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
OPT_OUT = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                       "code": "OPTOUT"}]}


@pytest.fixture(scope="module")
def live(request, tmp_path_factory):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("scopes-proxies"), request)
    server = LiveServer(settings)
    server.extra_env["HUB_BASE_URL"] = server.base
    with server:
        yield server


@pytest.fixture(scope="module")
def admin(live):
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth,
                      headers={"accept": "application/fhir+json"}, verify=httpclient.verify()) as c:
        yield c


def _put(c: httpx.Client, d: dict) -> dict:
    r = c.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text
    return d


def _new(c: httpx.Client, d: dict) -> dict:
    return _put(c, {**d, "id": unique()[:16]})


def _obs(pid: str, category: str) -> dict:
    return {**observation(f"Patient/{pid}"), "id": unique()[:16],
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}]}


def _token(live: LiveServer, pid: str, scope: str = "patient/*.rs", *, me: bool = False,
           roles: tuple[str, ...] = ("clinician",)) -> httpx.Client:
    """A patient-context token for Patient ``pid``; ``me``: the user is that patient
    (``fhirUser``), else a clinician's app launched in its context."""
    claims = {"iss": live.origin + "/auth", "aud": live.base, "sub": f"user-{pid}",
              "scope": scope, "patient": pid, "hub_roles": list(roles)}
    if me:
        claims["fhirUser"] = f"Patient/{pid}"
    token = Signer(live.settings.data_dir).issue(claims, 300)
    return httpx.Client(base_url=live.base, timeout=30,
                        headers={"authorization": f"Bearer {token}",
                                 "accept": "application/fhir+json"}, verify=httpclient.verify())


def _client(live: LiveServer, scope: str, institution: str) -> httpx.Client:
    auth = live.client_auth(roles=("clinician",), scope=scope, institution=institution)
    return httpx.Client(base_url=live.base, timeout=30, auth=auth,
                        headers={"accept": "application/fhir+json"}, verify=httpclient.verify())


def _ids(r: httpx.Response, rtype: str) -> set[str]:
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", ())
            if e["resource"]["resourceType"] == rtype}


def _pages(c: httpx.Client, path: str, params: dict | None) -> list[str]:
    seen: list[str] = []
    url: str | None = path
    while url:
        page = c.get(url, params=params)
        seen += sorted(_ids(page, "Observation"))
        url = next((link["url"] for link in page.json().get("link", ())
                    if link["relation"] == "next"), None)
        params = None
    return seen


# -- several scopes on a type: each admits by its own limits -------------------------------------

def test_a_patient_scope_beside_a_query_scope_grants_their_union_not_everything(live, admin):
    a, b = _new(admin, patient()), _new(admin, patient())
    a_vital, a_lab = _put(admin, _obs(a["id"], "vital-signs")), _put(admin, _obs(a["id"],
                                                                                   "laboratory"))
    b_vital, b_lab = _put(admin, _obs(b["id"], "vital-signs")), _put(admin, _obs(b["id"],
                                                                                   "laboratory"))
    every = [d["id"] for d in (a_vital, a_lab, b_vital, b_lab)]
    shown = {a_vital["id"], a_lab["id"], b_lab["id"]}  # A's compartment, anyone's laboratory
    with _token(live, a["id"], "patient/*.rs user/Observation.rs?category=laboratory") as c:
        for d in (a_vital, a_lab, b_lab):
            assert c.get(f"/Observation/{d['id']}").status_code == 200, d
        assert c.get(f"/Observation/{b_vital['id']}").status_code == 403
        assert c.get(f"/Observation/{b_vital['id']}/_history/1").status_code == 403
        assert c.get(f"/Patient/{b['id']}").status_code == 403  # patient/ only: A's own
        found = c.get("/Observation", params={"_id": ",".join(every), "_total": "accurate"})
        assert _ids(found, "Observation") == shown
        assert found.json()["total"] == 3  # the hidden one is not counted
        assert sorted(_pages(c, "/Observation", {"_id": ",".join(every), "_count": "1"})) == \
            sorted(shown)
        count = c.get("/Observation", params={"_id": ",".join(every), "_summary": "count"})
        assert count.json()["total"] == 3
        # B's laboratory result is found by the query scope, B's vital signs by none
        r = c.get("/Observation", params={"subject": f"Patient/{b['id']}", "_total": "accurate"})
        assert _ids(r, "Observation") == {b_lab["id"]} and r.json()["total"] == 1
    # writes alike: a connector's patient-context token for A writes A's compartment and, by
    # its query scope, laboratory results; not B's vital signs
    writer = "patient/*.cruds user/Observation.c?category=laboratory"
    with _token(live, a["id"], writer, roles=("connector",)) as c:
        def post(d: dict) -> int:
            return c.post("/Observation", json={k: v for k, v in d.items() if k != "id"},
                          headers=FHIR_JSON).status_code
        assert post(_obs(b["id"], "vital-signs")) == 403
        assert post(_obs(b["id"], "laboratory")) == 201
        assert post(_obs(a["id"], "vital-signs")) == 201


# -- a Binary is shown exactly when its security proxy is -----------------------------------------

def _document(pid: str, **extra) -> dict:
    return {"resourceType": "DocumentReference", "id": unique()[:16], "status": "current",
            "subject": {"reference": f"Patient/{pid}"},
            "content": [{"attachment": {"contentType": "text/plain"}}], **extra}


def _binary(context: str | None) -> dict:
    d = {"resourceType": "Binary", "id": unique()[:16], "contentType": "text/plain",
         "data": "U0VDUkVU"}
    return {**d, "securityContext": {"reference": context}} if context else d


def test_a_binary_is_hidden_with_the_document_that_secures_it(live, admin):
    b = _new(admin, patient())
    doc = _put(admin, _document(b["id"]))
    secret = _put(admin, _binary(f"DocumentReference/{doc['id']}"))
    _put(admin, consent(b["id"], {"type": "deny"}, policyRule=OPT_OUT))  # no sharing beyond H1
    with _client(live, "user/*.rs", "H9") as other:
        assert other.get(f"/DocumentReference/{doc['id']}").status_code == 403
        assert other.get(f"/Binary/{secret['id']}").status_code == 403
        assert other.get(f"/Binary/{secret['id']}/_history/1").status_code == 403
        found = other.get("/Binary", params={"_id": secret["id"], "_total": "accurate"})
        assert _ids(found, "Binary") == set() and found.json()["total"] == 0
    with _client(live, "user/*.rs", "H1") as recorder:  # the consent spares its recorder
        assert recorder.get(f"/Binary/{secret['id']}").status_code == 200
    # a scope whose query selects no such document shows none of its Binaries either
    narrow = "user/DocumentReference.rs?category=http://loinc.org|11506-3 user/Binary.rs"
    with _client(live, narrow, "H1") as c:
        assert c.get(f"/DocumentReference/{doc['id']}").status_code == 403
        assert c.get(f"/Binary/{secret['id']}").status_code == 403
        assert not _ids(c.get("/Binary", params={"_id": secret["id"]}), "Binary")
    # the document deleted, its Binary is judged as the version it deleted: still hidden
    assert admin.delete(f"/DocumentReference/{doc['id']}").status_code in (200, 204)
    with _client(live, "user/*.rs", "H9") as other:
        assert other.get(f"/Binary/{secret['id']}").status_code == 403
    # a proxy never written: the Binary's own rules (a clinician's scope on Binary shows it)
    orphan = _put(admin, _binary(f"DocumentReference/{unique()[:16]}"))
    with _client(live, "user/*.rs", "H9") as other:
        assert other.get(f"/Binary/{orphan['id']}").status_code == 200


def test_a_security_context_on_this_servers_base_is_local(live, admin):
    a, b = _new(admin, patient()), _new(admin, patient())
    doc = _put(admin, _document(a["id"]))
    absolute = _put(admin, _binary(f"{live.base}/DocumentReference/{doc['id']}"))
    relative = _put(admin, _binary(f"DocumentReference/{doc['id']}"))
    with _token(live, a["id"]) as c:
        assert c.get(f"/DocumentReference/{doc['id']}").status_code == 200
        assert c.get(f"/Binary/{relative['id']}").status_code == 200
        assert c.get(f"/Binary/{absolute['id']}").status_code == 200
    with _token(live, b["id"]) as c:  # the proxy restricts too: another patient sees neither
        assert c.get(f"/Binary/{absolute['id']}").status_code == 403
        assert c.get(f"/Binary/{relative['id']}").status_code == 403


# -- a hidden record's deletion answers as the hidden record ---------------------------------------

def test_a_hidden_deleted_record_answers_as_a_hidden_live_one(live, admin):
    a, b = _new(admin, patient()), _new(admin, patient())
    live_one = _put(admin, {"resourceType": "Condition", "id": unique()[:16],
                            "subject": {"reference": f"Patient/{b['id']}"}, "code": {"text": "x"}})
    gone = _put(admin, {**live_one, "id": unique()[:16]})
    _put(admin, {**gone, "code": {"text": "y"}})  # version 2
    assert admin.delete(f"/Condition/{gone['id']}").status_code in (200, 204)  # version 3
    assert admin.get(f"/Condition/{gone['id']}").status_code == 410  # shown: told it is deleted

    def asked(c: httpx.Client, rid: str) -> list[int]:
        batch = c.post("/", headers=FHIR_JSON, json={"resourceType": "Bundle", "type": "batch",
                                                      "entry": [{"request": {
                                                          "method": "GET",
                                                          "url": f"Condition/{rid}"}}]})
        assert batch.status_code == 200, batch.text
        return [c.get(f"/Condition/{rid}").status_code,
                c.head(f"/Condition/{rid}").status_code,
                c.get(f"/Condition/{rid}", headers={"if-none-match": 'W/"3"'}).status_code,
                *(c.get(f"/Condition/{rid}/_history/{v}").status_code for v in (1, 3, 9)),
                c.get(f"/Condition/{rid}/_history").status_code,
                int(batch.json()["entry"][0]["response"]["status"].split()[0])]

    with _token(live, a["id"]) as c:  # another patient's: out of A's compartment
        assert asked(c, gone["id"]) == asked(c, live_one["id"]) == [403] * 8
        r = c.get(f"/Condition/{gone['id']}")
        assert "deleted" not in r.text and "version" not in r.text
    _put(admin, consent(b["id"], {"type": "deny"}, policyRule=OPT_OUT))
    with _client(live, "user/*.rs", "H9") as other:  # hidden by the patient's consent
        assert asked(other, gone["id"]) == asked(other, live_one["id"]) == [403] * 8
    with _token(live, b["id"], me=True) as c:  # its own: told it is deleted
        assert c.get(f"/Condition/{gone['id']}").status_code == 410
        assert c.get(f"/Condition/{gone['id']}/_history/1").status_code == 200


# -- the patient and its own Consent ---------------------------------------------------------------

def test_a_patients_own_opt_out_does_not_shut_it_out_of_its_own_record(live, admin):
    b = _new(admin, patient())
    cond = _put(admin, {"resourceType": "Condition", "id": unique()[:16],
                        "subject": {"reference": f"Patient/{b['id']}"}, "code": {"text": "x"}})
    opt_out = _put(admin, consent(b["id"], {"type": "deny"}, policyRule=OPT_OUT))
    with _token(live, b["id"], me=True) as c:
        assert c.get(f"/Patient/{b['id']}").status_code == 200
        assert c.get(f"/Condition/{cond['id']}").status_code == 200
        assert c.get(f"/Consent/{opt_out['id']}").status_code == 200
        found = c.get("/Condition", params={"subject": f"Patient/{b['id']}",
                                            "_total": "accurate"})
        assert _ids(found, "Condition") == {cond["id"]} and found.json()["total"] == 1
    # the consent still holds for everyone else: a clinician's app in B's context (its user is
    # no Patient), another institution's clinician
    with _token(live, b["id"]) as c:
        assert c.get(f"/Condition/{cond['id']}").status_code == 403
    with _client(live, "user/*.rs", "H9") as other:
        assert other.get(f"/Condition/{cond['id']}").status_code == 403
    # nor does claiming to be the patient open another patient's record
    other_patient = _new(admin, patient())
    with _token(live, other_patient["id"], me=True) as c:
        assert c.get(f"/Condition/{cond['id']}").status_code == 403


# -- a Patient linking to the patient --------------------------------------------------------------

def test_a_patient_linking_to_the_patient_in_context_stays_hidden(live, admin):
    a = _new(admin, patient())
    linked = _new(admin, {**patient(), "link": [{"other": {"reference": f"Patient/{a['id']}"},
                                                 "type": "seealso"}]})
    assert linked["id"] in _ids(admin.get(f"/Patient/{a['id']}/Patient"), "Patient")
    with _token(live, a["id"], me=True) as c:
        assert c.get(f"/Patient/{linked['id']}").status_code == 403
        assert _ids(c.get(f"/Patient/{a['id']}/Patient"), "Patient") == {a["id"]}
        assert _ids(c.get("/Patient", params={"link": f"Patient/{a['id']}"}), "Patient") == set()
