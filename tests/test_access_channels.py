"""Every way data leaves the hub keeps to what the caller may see: consents, type scopes,
query-restricted scopes and a patient-context token's compartment, over real HTTP with real
tokens.

Each case is a channel that once handed out (or told of) what the caller may not see: a
versioned reference, the Person view, ``$everything``'s types and what it refers to,
``_include:iterate`` through a hidden record, a page link's cursor, ``_has`` and chains through
an unscoped type, conditional writes whose answer tells whether a hidden record matches, a
patient token writing outside its compartment, and the history of a deleted record.
"""

from __future__ import annotations

import base64
import binascii
import time

import httpx
import orjson
import pytest

from hub.auth.signer import Signer
from hub.core import httpclient
from tests.api_helpers import consent, observation, patient, unique
from tests.conftest import FHIR_JSON, LiveServer, make_settings, matching_server

ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PSY = {"system": ACTCODE, "code": "PSY"}
TREAT = {"x-purpose-of-use": "TREAT"}


def _obs(pid: str, code: str = "8867-4", system: str = "http://loinc.org",
         category: str | None = None, psy: bool = False, **extra) -> dict:
    d = {**observation(f"Patient/{pid}"), "id": unique()[:16],
         "code": {"coding": [{"system": system, "code": code}]}}
    if category:
        d["category"] = [{"coding": [{"system": CATEGORY, "code": category}]}]
    if psy:
        d["meta"] = {"security": [PSY]}
    return {**d, **extra}


def _optout(pid: str) -> dict:
    return consent(pid, {"type": "deny"}, "H1")


def _psy_consent(pid: str) -> dict:
    return consent(pid, {"type": "permit", "provision": [{"type": "deny", "securityLabel": [PSY]}]},
                   "H1")


def _put(c: httpx.Client, d: dict) -> httpx.Response:
    return c.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON)


def _http(live: LiveServer, auth) -> httpx.Client:
    headers = {"accept": "application/fhir+json"}
    if isinstance(auth, str):
        headers["authorization"], auth = f"Bearer {auth}", None
    return httpx.Client(base_url=live.base, timeout=60, auth=auth, headers=headers, verify=httpclient.verify())


def _ids(r: httpx.Response, rtype: str | None = None) -> set[str]:
    assert r.status_code == 200, r.text
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json().get("entry", ())
            if e.get("search", {}).get("mode") != "outcome"
            and (rtype is None or e["resource"]["resourceType"] == rtype)}


def _patient_token(live: LiveServer, pid: str, scope: str = "patient/*.rs",
                   roles: tuple[str, ...] = ("clinician",)) -> str:
    """A patient-context token for Patient ``pid`` (as an OpenID provider's launch would give)."""
    return Signer(live.settings.data_dir).issue(
        {"iss": live.origin + "/auth", "aud": live.base, "sub": f"user-{pid}", "scope": scope,
         "patient": pid, "hub_roles": list(roles)}, 300)


def _connector_h1(live: LiveServer):
    """The token source of institution H1's connector, which writes each test's records."""
    return live.client_auth(roles=("connector",), scope="system/*.cruds", institution="H1")


def _server(request, tmp_path_factory, name: str) -> LiveServer:
    return LiveServer(make_settings("sqlite", tmp_path_factory.mktemp(name), request))


@pytest.fixture(scope="module")
def bare(request, tmp_path_factory):
    """A hub where no Consent was ever written: only scopes narrow what a caller sees."""
    with _server(request, tmp_path_factory, "bare") as live:
        live.h1 = _connector_h1(live)
        yield live


@pytest.fixture(scope="module")
def guarded(request, tmp_path_factory):
    """A hub holding patients' consents: H1 records, H2 is another institution."""
    with _server(request, tmp_path_factory, "guarded") as live:
        live.h1 = _connector_h1(live)
        live.h2 = live.client_auth(roles=("clinician",), scope="user/*.rs", institution="H2")
        yield live


def _write(live: LiveServer, *resources: dict) -> None:
    with _http(live, live.h1) as c:
        for d in resources:
            assert _put(c, d).status_code == 201, d


# -- with scopes alone ----------------------------------------------------------------------------

def test_has_and_chains_hold_only_through_what_the_scopes_show(bare):
    p = patient(rid=unique()[:16])
    vital = _obs(p["id"], "SECRET", "urn:x", category="vital-signs")
    panel = _obs(p["id"], "PANEL", "urn:x", category="laboratory",
                 hasMember=[{"reference": f"Observation/{vital['id']}"}])
    _write(bare, p, vital, panel)
    has = {"_has:Observation:subject:code": "urn:x|SECRET", "_id": p["id"]}
    lab = bare.client_auth(roles=("clinician",),
                           scope="user/Patient.rs user/Observation.rs?category=laboratory")
    with _http(bare, lab) as c:
        assert c.get(f"/Observation/{vital['id']}").status_code == 403
        assert _ids(c.get("/Patient", params=has)) == set()
        assert c.get("/Patient", params={**has, "_summary": "count"}).json()["total"] == 0
        assert _ids(c.get("/Observation", params={
            "has-member:Observation.code": "urn:x|SECRET"})) == set()
        # the same through what it does see
        assert _ids(c.get("/Patient", params={"_has:Observation:subject:code": "urn:x|PANEL",
                                              "_id": p["id"]})) == {f"Patient/{p['id']}"}
    patients_only = bare.client_auth(roles=("clinician",), scope="user/Patient.rs")
    with _http(bare, patients_only) as c:
        assert _ids(c.get("/Patient", params=has)) == set()
    with _http(bare, bare.h1) as c:  # who sees every Observation finds it
        assert _ids(c.get("/Patient", params=has)) == {f"Patient/{p['id']}"}


def test_a_history_total_counts_only_what_a_query_scope_shows(bare):
    q = patient(rid=unique()[:16])
    labs = [_obs(q["id"], category="laboratory") for _ in range(2)]
    vitals = [_obs(q["id"], category="vital-signs") for _ in range(3)]
    _write(bare, q, *labs, *vitals)
    lab = bare.client_auth(roles=("clinician",),
                           scope="user/Observation.rs?category=laboratory")
    with _http(bare, lab) as c:
        body = c.get("/Observation/_history", params={"_total": "accurate"}).json()
        shown = {e["resource"]["id"] for e in body.get("entry", ())}
        assert shown >= {d["id"] for d in labs} and not shown & {d["id"] for d in vitals}
        assert body["total"] == len(body["entry"])
        # a hidden resource's history is refused as its read is, not said to be unknown
        assert c.get(f"/Observation/{vitals[0]['id']}").status_code == 403
        assert c.get(f"/Observation/{vitals[0]['id']}/_history").status_code == 403
        assert c.get(f"/Observation/{unique()[:16]}/_history").status_code == 404
        # page links are sealed: a bare position (forged to map where hidden versions lie) is
        # no cursor of this server
        r = c.get("/Observation/_history", params={"_count": 1})
        nxt = next(lk["url"] for lk in r.json()["link"] if lk["relation"] == "next")
        assert c.get(nxt).status_code == 200
        forged = c.get("/Observation/_history", params={"_count": 1, "_cursor": "999999"})
        assert forged.status_code == 400


def test_everything_and_timeline_hand_out_only_the_scoped_types(bare):
    p = patient(rid=unique()[:16])
    prac = {"resourceType": "Practitioner", "id": unique()[:16], "name": [{"family": "Li"}]}
    vital = _obs(p["id"], category="vital-signs",
                 performer=[{"reference": f"Practitioner/{prac['id']}"}])
    _write(bare, p, prac, vital)
    patients_only = bare.client_auth(roles=("clinician",), scope="user/Patient.rs")
    lab = bare.client_auth(roles=("clinician",),
                           scope="user/Patient.rs user/Observation.rs?category=laboratory")
    for caller in (patients_only, lab):
        with _http(bare, caller) as c:
            r = c.get(f"/Patient/{p['id']}/$everything", headers=TREAT)
            assert _ids(r) == {f"Patient/{p['id']}"}
            assert r.json()["total"] == 1
            assert _ids(c.get(f"/Patient/{p['id']}/$timeline", headers=TREAT),
                        "Observation") == set()
    everyone = bare.client_auth(roles=("clinician",), scope="user/*.rs")
    with _http(bare, everyone) as c:
        assert _ids(c.get(f"/Patient/{p['id']}/$everything", headers=TREAT)) == {
            f"Patient/{p['id']}", f"Observation/{vital['id']}", f"Practitioner/{prac['id']}"}


def test_a_patient_token_writes_only_its_own_compartment(bare):
    a, b = patient(rid=unique()[:16]), patient(rid=unique()[:16])
    _write(bare, a, b)
    token = _patient_token(bare, a["id"], "patient/*.cruds", ("connector",))
    with _http(bare, token) as c:
        other = {k: v for k, v in _obs(b["id"]).items() if k != "id"}
        assert c.post("/Observation", json=other, headers=FHIR_JSON).status_code == 403
        assert _put(c, _obs(b["id"])).status_code == 403
        assert _put(c, {**b, "active": False}).status_code == 403
        own = _obs(a["id"])
        assert _put(c, own).status_code == 201
        # nor moved out of it
        assert _put(c, {**own, "subject": {"reference": f"Patient/{b['id']}"}}).status_code == 403
        # another patient's record that names this one outside the compartment's parameters
        # (focus, a note's author) is that other patient's: it was admitted, and read back
        planted = {**other, "focus": [{"reference": f"Patient/{a['id']}"}]}
        assert c.post("/Observation", json=planted, headers=FHIR_JSON).status_code == 403
        noted = {**other, "note": [{"authorReference": {"reference": f"Patient/{a['id']}"},
                                    "text": "x"}]}
        assert c.post("/Observation", json=noted, headers=FHIR_JSON).status_code == 403
    theirs = {**_obs(b["id"]), "focus": [{"reference": f"Patient/{a['id']}"}]}
    _write(bare, theirs)
    with _http(bare, _patient_token(bare, a["id"])) as c:
        assert c.get(f"/Observation/{theirs['id']}").status_code == 403


# -- with consents --------------------------------------------------------------------------------

def test_a_patient_scope_without_a_patient_in_context_grants_nothing(bare):
    """patient/ scopes are about the patient in context: a token holding them but naming no
    patient read the whole region (as a system/ scope would), and the hub's own token endpoint
    handed such tokens out to any client allowed patient/ scopes."""
    p = patient(rid=unique()[:16])
    obs = _obs(p["id"], "X", "urn:x")
    _write(bare, p, obs)
    token = Signer(bare.settings.data_dir).issue(
        {"iss": bare.origin + "/auth", "aud": bare.base, "sub": "no-context",
         "scope": "patient/*.cruds", "hub_roles": ["connector"]}, 300)
    with _http(bare, token) as c:
        assert c.get(f"/Observation/{obs['id']}").status_code == 403
        assert c.get("/Patient", params={"_summary": "count"}).status_code == 403
        assert c.put(f"/Observation/{obs['id']}", json=obs).status_code == 403
    with _http(bare, _patient_token(bare, p["id"])) as c:  # with its patient: its records
        assert c.get(f"/Observation/{obs['id']}").status_code == 200
    asking = bare.client_auth(roles=("clinician",), scope="patient/*.rs")
    with pytest.raises(httpx.HTTPStatusError) as e:
        asking.token()
    assert e.value.response.status_code == 400
    assert "patient in context" in e.value.response.json()["error_description"]


def test_what_a_caller_may_not_write_is_refused_over_v3_and_cda_and_never_kept(bare):
    """A reader's v3 registration and CDA document were answered "refused, kept for replay":
    a routine `hub quarantine replay` then stored them as the hub itself. Refused (403) and
    kept nowhere; a connector's are taken in."""
    from pathlib import Path

    from hub.quarantine import Quarantine

    fixtures = Path(__file__).parent / "fixtures"
    register = (fixtures / "hl7v3" / "patient-register.xml").read_bytes()
    document = (fixtures / "cda" / "C0030-critical-condition-notice.xml").read_bytes()
    xml = {"content-type": "application/xml"}

    def kept() -> int:
        q = Quarantine(bare.settings.data_dir / "quarantine.sqlite")
        try:
            return len(q.list())
        finally:
            q.close()

    before = kept()
    reader = bare.client_auth(roles=("clinician",), scope="system/*.rs")
    with httpx.Client(base_url=bare.origin, timeout=60, auth=reader, verify=httpclient.verify()) as c:
        r = c.post("/v3", content=register, headers=xml)
        assert r.status_code == 403 and b'typeCode="AR"' in r.content, r.text[:300]
        assert c.post("/v3", content=b"<x/>", headers=xml).status_code == 400  # and not kept
        assert c.post("/cda", content=document, headers=xml).status_code == 403
        assert c.post("/cda", content=b"<ClinicalDocument/>", headers=xml).status_code == 403
    assert kept() == before
    with httpx.Client(base_url=bare.origin, timeout=60, auth=bare.h1, verify=httpclient.verify()) as c:
        r = c.post("/v3", content=register, headers=xml)
        assert r.status_code == 200 and b'typeCode="AA"' in r.content, r.text[:300]
        assert c.post("/cda", content=document, headers=xml).status_code in (200, 201)


def test_a_versioned_subject_reference_is_the_patients(guarded):
    p = patient(rid=unique()[:16])
    plain, versioned = _obs(p["id"]), _obs(p["id"])
    versioned["subject"] = {"reference": f"Patient/{p['id']}/_history/1"}
    _write(guarded, p, plain, versioned, _optout(p["id"]))
    with _http(guarded, guarded.h2) as c:
        assert c.get(f"/Observation/{plain['id']}").status_code == 403
        assert c.get(f"/Observation/{versioned['id']}").status_code == 403
        assert _ids(c.get("/Observation", params={"subject": f"Patient/{p['id']}"})) == set()
    # a Consent naming a version of its Patient applies too
    q = patient(rid=unique()[:16])
    record = _obs(q["id"])
    opt = _optout(q["id"])
    opt["patient"] = {"reference": f"Patient/{q['id']}/_history/1"}
    _write(guarded, q, record, opt)
    with _http(guarded, guarded.h2) as c:
        assert c.get(f"/Observation/{record['id']}").status_code == 403


def test_includes_follow_only_what_the_caller_sees(guarded):
    p = patient(rid=unique()[:16])
    prac = {"resourceType": "Practitioner", "id": unique()[:16], "name": [{"family": "Zhou"}]}
    psy = _obs(p["id"], psy=True, performer=[{"reference": f"Practitioner/{prac['id']}"}])
    _write(guarded, p, prac, psy, _psy_consent(p["id"]))
    with _http(guarded, guarded.h2) as c:
        assert c.get(f"/Observation/{psy['id']}").status_code == 403
        for params in ({"_revinclude": "Observation:subject",
                        "_include:iterate": "Observation:performer"},
                       {"_revinclude": "*:*", "_include:iterate": "*"}):
            assert _ids(c.get("/Patient", params={"_id": p["id"], **params})) == {
                f"Patient/{p['id']}"}, params
        # a hidden match is no way to what it refers to either
        assert _ids(c.get("/Observation", params={"_id": psy["id"],
                                                  "_include": "Observation:performer"})) == set()
        assert _ids(c.get(f"/Patient/{p['id']}/$everything", headers=TREAT)) == {
            f"Patient/{p['id']}"}
    with _http(guarded, guarded.h1) as c:  # the recording institution sees the way
        assert f"Practitioner/{prac['id']}" in _ids(c.get("/Patient", params={
            "_id": p["id"], "_revinclude": "Observation:subject",
            "_include:iterate": "Observation:performer"}))


def _cursor_of(r: httpx.Response) -> str:
    return next(lk["url"] for lk in r.json()["link"]
                if lk["relation"] == "next").split("_cursor=")[1].split("&")[0]


def test_page_links_tell_nothing_of_hidden_rows(guarded):
    p = patient(rid=unique()[:16])
    _write(guarded, p, _obs(p["id"], "AAA", "urn:x"),
           _obs(p["id"], "ZZZ-SCHIZOPHRENIA", "urn:x", psy=True), _psy_consent(p["id"]))
    with _http(guarded, guarded.h2) as c:
        r = c.get("/Observation", params={"subject": f"Patient/{p['id']}", "_sort": "-code",
                                          "_count": "1"})
        # the hidden record's place is filled with the visible one after it (an empty page
        # with a next link told there was a hidden record), and no link is left to page on
        assert {e["resource"]["code"]["coding"][0]["code"] for e in r.json()["entry"]} == {"AAA"}
        assert not [lk for lk in r.json()["link"] if lk["relation"] == "next"]
        r = c.get("/Observation", params={"subject": f"Patient/{p['id']}", "_sort": "code",
                                          "_count": "1"})
        cursor = _cursor_of(r)  # AAA first, then a link past it: it tells nothing
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        assert b"ZZZ" not in raw and b"SCHIZ" not in raw and b"AAA" not in raw
        nxt = c.get(next(lk["url"] for lk in r.json()["link"] if lk["relation"] == "next"))
        assert nxt.status_code == 200 and not nxt.json().get("entry")
        # a cursor made by the client (to probe where hidden rows lie) is refused
        forged = base64.urlsafe_b64encode(b'["n","ZZZ",1]').decode().rstrip("=")
        r = c.get("/Observation", params={"subject": f"Patient/{p['id']}", "_sort": "-code",
                                          "_count": "1", "_cursor": forged})
        assert r.status_code == 400


def test_a_merged_person_names_its_survivor_only_to_whoever_may_see_it(guarded):
    """A Person merged into another answered any caller 200 with a link to the survivor, even
    when every Patient of both was hidden from it (a consent): it told the merge and the
    survivor's id. It is now refused as the survivor is, naming neither."""
    d1, d2 = patient(rid=unique()[:16], family="Opted"), patient(rid=unique()[:16], family="Opted")
    d2.pop("identifier")  # one person's two records: no resident ID numbers apart
    _write(guarded, d1, d2, _optout(d1["id"]), _optout(d2["id"]))
    steward = guarded.client_auth(roles=("steward",), scope="system/Patient.rs system/Person.rs",
                                  institution="H1")

    def params(**refs: str) -> dict:
        return {"resourceType": "Parameters", "parameter": [
            {"name": k, "valueString": v} for k, v in refs.items()]}

    with _http(guarded, steward) as c:
        a, b = (c.post("/Person/$link", json=params(patient=f"Patient/{d['id']}"),
                       headers=FHIR_JSON).json()["id"] for d in (d1, d2))
        r = c.post("/Person/$merge", json=params(source=f"Person/{a}", target=f"Person/{b}"),
                   headers=FHIR_JSON)
        assert r.status_code == 200, r.text
        merged = c.get(f"/Person/{a}").json()  # the steward who sees them is told the survivor
        assert merged["active"] is False and merged["link"][0]["target"]["reference"] == f"Person/{b}"
    with _http(guarded, guarded.h2) as c:
        for person in (a, b):
            r = c.get(f"/Person/{person}")
            assert r.status_code == 403, r.text
            assert ({a, b} - {person}).isdisjoint(r.text.split("/")), r.text


def test_a_person_shows_only_the_patients_the_caller_may_see(guarded):
    me, d = patient(rid=unique()[:16]), patient(rid=unique()[:16], family="Opted")
    _write(guarded, me, d, _optout(d["id"]))
    steward = guarded.client_auth(roles=("steward",), scope="system/Patient.rs system/Person.rs",
                                  institution="H1")
    link = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{d['id']}"}}]}
    with _http(guarded, steward) as c:
        r = c.post("/Person/$link", json=link, headers=FHIR_JSON)
        assert r.status_code in (200, 201), r.text
        person = r.json()["id"]
        assert c.get(f"/Person/{person}").json()["name"][0]["family"] == "Opted"
    ident = f"{d['identifier'][0]['system']}|{d['identifier'][0]['value']}"
    with _http(guarded, guarded.h2) as c:
        assert c.get(f"/Patient/{d['id']}").status_code == 403
        assert c.get(f"/Person/{person}").status_code == 403
        assert f"Person/{person}" not in _ids(c.get("/Person"))
        for params in ({"identifier": ident}, {"patient": f"Patient/{d['id']}"}):
            found = c.get("/Person", params=params)
            # counted as the caller sees them (the total was left out whenever a consent existed)
            assert _ids(found) == set() and found.json()["total"] == 0, params
        r = c.get("/$resolve-identifier", params={"identifier": ident}, headers=TREAT)
        assert r.status_code == 200 and r.json()["total"] == 0 and _ids(r) == set()
    with _http(guarded, _patient_token(guarded, me["id"])) as c:
        assert f"Person/{person}" not in _ids(c.get("/Person"))
    with _http(guarded, steward) as c:
        found = c.get("/Person", params={"patient": f"Patient/{d['id']}"}).json()
        assert found["total"] == 1 and len(found["entry"]) == 1


def test_an_identity_decisions_answer_shows_only_what_the_decider_may_see(guarded):
    """$link, $unlink (and the other decisions) answer with the Person as a read of it shows it
    to the decider: a steward of another institution links an opted-out patient's record and
    gets the Person's id, not the patient's resident ID, phone and address; a steward whose
    scopes name no Patient gets no demographics either."""
    kept, other = patient(rid=unique()[:16], family="Hidden"), patient(rid=unique()[:16])
    kept["telecom"] = [{"system": "phone", "value": "13711112222"}]
    other["identifier"] = [{"system": "urn:oid:1.2.3.9", "value": unique()[:12]}]  # no clash
    _write(guarded, kept, other, _optout(kept["id"]))
    secret = kept["identifier"][0]["value"]
    link = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{kept['id']}"}}]}
    h2 = guarded.client_auth(roles=("steward",), scope="system/Patient.rs system/Person.rs",
                             institution="H2")
    no_patients = guarded.client_auth(roles=("steward",), scope="system/Observation.rs",
                                      institution="H1")
    def params(pid: str, person: str | None = None) -> dict:
        return {"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}},
            *([{"name": "person", "valueString": person}] if person else [])]}

    for auth in (h2, no_patients):
        with _http(guarded, auth) as c:
            r = c.post("/Person/$link", json=params(other["id"]), headers=FHIR_JSON)
            assert r.status_code == 200, r.text
            person = r.json()["id"]
            for op, body in (("$link", params(kept["id"], person)), ("$unlink", link)):
                r = c.post(f"/Person/{op}", json=body, headers=FHIR_JSON)
                assert r.status_code == 200, r.text
                assert r.json()["resourceType"] == "Person" and r.json()["id"]
                for leaked in (secret, "13711112222", "Hidden"):
                    assert leaked not in r.text, (op, leaked)
    with _http(guarded, guarded.client_auth(roles=("steward",), institution="H1",
                                            scope="system/Patient.rs system/Person.rs")) as c:
        r = c.post("/Person/$link", json=link, headers=FHIR_JSON)
        assert r.status_code == 200 and secret in r.text  # the recording institution sees it


def test_a_refused_decision_names_no_patient_the_decider_may_not_see(guarded):
    """A $link (or $merge, or a review's $accept) that would put a man in a person holding a
    woman's record is refused: to a steward the woman's consent hides her from, the 409 named
    her Patient and that the sexes differ. It says now only that a record this steward may not
    see conflicts; the steward who sees her is told which and why; the refusal stands for both."""
    from hub.mpi.identity import IdentityService

    def record(gender: str | None, family: str) -> dict:
        d = patient(rid=unique()[:16], family=family, system="urn:oid:1.2.3.9")
        return {**d, "gender": gender} if gender else d

    shown, hidden, man = record(None, "Shown"), record("female", "Hidden"), record("male", "Man")
    _write(guarded, shown, hidden, man, _optout(hidden["id"]))
    home = guarded.client_auth(roles=("steward",), scope="system/Patient.rs system/Person.rs",
                               institution="H1")
    elsewhere = guarded.client_auth(roles=("steward",), institution="H2",
                                    scope="system/Patient.rs system/Person.rs")

    def params(**refs: str) -> dict:
        return {"resourceType": "Parameters", "parameter": [
            {"name": k, "valueString": v} for k, v in refs.items()]}

    with _http(guarded, home) as c:
        person = c.post("/Person/$link", json=params(patient=f"Patient/{shown['id']}"),
                        headers=FHIR_JSON).json()["id"]
        r = c.post("/Person/$link", json=params(patient=f"Patient/{hidden['id']}",
                                                person=f"Person/{person}"), headers=FHIR_JSON)
        assert r.status_code == 200, r.text
    store = guarded.settings.open_store()
    matcher = IdentityService.open(store, guarded.settings.data_dir / f"matcher-{unique()[:6]}")
    try:  # the matcher asks whether the man is the shown record's person
        matcher.auto_decide(f"Patient/{man['id']}", "review", [f"Patient/{shown['id']}"], 0.7,
                            {}, "r1")
    finally:
        matcher.close()
        store.close()
    with _http(guarded, elsewhere) as c:
        # the person as this steward sees it: the one record it may see
        assert [x["target"]["reference"] for x in c.get(f"/Person/{person}").json()["link"]] \
            == [f"Patient/{shown['id']}"]
        found: list = []
        deadline = time.monotonic() + 30
        while not found:
            assert time.monotonic() < deadline, "the review is not listed"
            found = [x["id"] for x in c.get("/$mpi-review").json()["reviews"]
                     if x["patient"] == f"Patient/{man['id']}"]
        refused = [c.post(f"/$mpi-review/{found[0]}/$accept", headers=FHIR_JSON,
                          json=params(candidate=f"Patient/{shown['id']}"))]
        own = c.post("/Person/$link", json=params(patient=f"Patient/{man['id']}"),
                     headers=FHIR_JSON).json()["id"]
        refused += [c.post("/Person/$link", json=params(patient=f"Patient/{man['id']}",
                                                        person=f"Person/{person}"),
                           headers=FHIR_JSON),
                    c.post("/Person/$merge", json=params(source=f"Person/{own}",
                                                         target=f"Person/{person}"),
                           headers=FHIR_JSON)]
    for r in refused:
        assert r.status_code == 409, r.text
        told = r.json()["issue"][0]["diagnostics"]
        assert "may not see" in told, told
        for leaked in (hidden["id"], "sex", "identifier"):
            assert leaked not in r.text, (leaked, told)
    with _http(guarded, home) as c:  # who may see her is told which record and why
        r = c.post("/Person/$link", json=params(patient=f"Patient/{man['id']}",
                                                person=f"Person/{person}"), headers=FHIR_JSON)
        assert r.status_code == 409 and hidden["id"] in r.text and "different sexes" in r.text
        assert [x["target"]["reference"] for x in c.get(f"/Person/{person}").json()["link"]] \
            == sorted([f"Patient/{shown['id']}", f"Patient/{hidden['id']}"])


def test_conditional_writes_match_only_what_the_caller_sees(guarded):
    p = patient(rid=unique()[:16])
    psy = _obs(p["id"], "F20", "urn:icd", psy=True)
    _write(guarded, p, psy, _psy_consent(p["id"]))
    h2 = guarded.client_auth(roles=("connector",), scope="system/*.cruds", institution="H2")

    def answers(c: httpx.Client, code: str) -> tuple:
        q = {"subject": f"Patient/{p['id']}", "code": f"urn:icd|{code}"}
        patch = [{"op": "add", "path": "/status", "value": "final"}]
        return (c.delete("/Observation", params=q).status_code,
                c.patch("/Observation", params=q, json=patch,
                        headers={"content-type": "application/json-patch+json"}).status_code,
                c.delete("/Patient", params={"_id": p["id"],
                                             "_has:Observation:subject:code": f"urn:icd|{code}"}
                         ).status_code)

    with _http(guarded, h2) as c:
        assert c.get(f"/Observation/{psy['id']}").status_code == 403
        # the hidden record's code answers as a code nobody has
        assert answers(c, "F20") == answers(c, "F99")
        body = {k: v for k, v in _obs(p["id"]).items() if k != "id"}
        r = c.post("/Observation", json=body, headers={
            **FHIR_JSON, "if-none-exist": f"subject=Patient/{p['id']}&code=urn:icd|F20"})
        assert r.status_code == 201 and psy["id"] not in r.headers["location"]
        body["focus"] = [{"reference": "Observation?code=urn:icd|F20"}]
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": body, "request": {"method": "POST", "url": "Observation"}}]}
        r = c.post("", json=tx, headers={**FHIR_JSON, "prefer": "return=representation"})
        assert r.status_code == 412 and psy["id"] not in r.text
    with _http(guarded, guarded.h1) as c:  # it is still there, for who may see it
        assert c.get(f"/Observation/{psy['id']}").status_code == 200


def test_a_conditional_create_by_key_of_a_hidden_record_tells_no_version_nor_count(guarded):
    """By a key a conditional create finds a hidden record and answers where it is: it also
    told its version and time (ETag, Last-Modified, a Location with ``_history/2``, a Bundle
    entry's ``etag`` and ``lastModified``), so a caller followed every change of a record it may
    not read; and a 412 counted the hidden matches beside the ones it sees. (A caller that may
    change it: a steward of another institution; a connector of one is refused, 412.)"""
    hidden_p, shown_p = patient(rid=unique()[:16]), patient(rid=unique()[:16])
    key = unique()[:12]
    secret = {**_obs(hidden_p["id"]), "identifier": [{"system": "urn:probe:obs", "value": key}]}
    many = unique()[:12]
    twins = [{**_obs(p["id"]), "identifier": [{"system": "urn:probe:obs", "value": many}]}
             for p in (shown_p, shown_p, hidden_p)]
    _write(guarded, hidden_p, shown_p, _optout(hidden_p["id"]), secret, *twins)
    with _http(guarded, guarded.h1) as c:
        assert _put(c, {**secret, "status": "amended"}).status_code == 200  # version 2
    h2 = guarded.client_auth(roles=("steward",), scope="system/*.cruds", institution="H2")
    body = {k: v for k, v in secret.items() if k != "id"}
    where = f"{guarded.base}/Observation/{secret['id']}"
    feed = guarded.client_auth(roles=("connector",), scope="system/*.cruds", institution="H2")
    with _http(guarded, feed) as c:
        r = c.post("/Observation", json=body, headers={
            **FHIR_JSON, "if-none-exist": f"identifier=urn:probe:obs|{key}"})
        assert r.status_code == 412 and secret["id"] not in r.text, r.text
    with _http(guarded, h2) as c:
        assert c.get(f"/Observation/{secret['id']}").status_code == 403
        for criteria in (f"identifier=urn:probe:obs|{key}", f"_id={secret['id']}"):
            r = c.post("/Observation", json=body, headers={**FHIR_JSON, "if-none-exist": criteria})
            assert r.status_code == 200, r.text
            assert r.headers.get("location") == where, (criteria, r.headers)
            assert "etag" not in r.headers and "last-modified" not in r.headers, r.headers
            assert "amended" not in r.text and "_history" not in r.text
            tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": body, "request": {"method": "POST", "url": "Observation",
                                               "ifNoneExist": criteria}}]}
            r = c.post("", json=tx, headers=FHIR_JSON)
            assert r.status_code == 200, r.text
            entry = r.json()["entry"][0]
            assert entry["response"]["location"] == f"Observation/{secret['id']}", entry
            assert "etag" not in entry["response"] and "lastModified" not in entry["response"]
        # two it sees and one it does not under one key: too many, not how many
        criteria = f"identifier=urn:probe:obs|{many}"
        r = c.post("/Observation", json=body, headers={**FHIR_JSON, "if-none-exist": criteria})
        assert r.status_code == 412 and "matched more than one Observation" in r.text, r.text
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {**body, "focus": [{"reference": f"Observation?{criteria}"}]},
             "request": {"method": "POST", "url": "Observation"}}]}
        r = c.post("", json=tx, headers=FHIR_JSON)
        assert r.status_code == 412 and "matched more than one resource" in r.text, r.text
    with _http(guarded, guarded.h1) as c:  # who sees them all is told as before
        r = c.post("/Observation", json=body, headers={
            **FHIR_JSON, "if-none-exist": f"identifier=urn:probe:obs|{key}"})
        assert r.status_code == 200 and r.headers["etag"] == 'W/"2"', r.headers
        assert r.headers["location"] == f"{where}/_history/2"
        r = c.post("/Observation", json=body, headers={
            **FHIR_JSON, "if-none-exist": f"identifier=urn:probe:obs|{many}"})
        assert r.status_code == 412 and "matched 3 Observation" in r.text, r.text


def _tx(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_a_conditional_create_never_takes_another_institutions_record(guarded):
    """H2 wrote a Patient and an Observation under H1's identifiers; H1's conditional creates by
    those keys resolved to them: H1's demographics and value were stored nowhere, its lab result
    pointed at a Patient H2 could then redefine as someone else. Now refused (412, a connector's
    dead letter), nothing of H1's written; shared types still resolve across institutions."""
    h2 = guarded.client_auth(roles=("connector",), scope="system/*.cruds", institution="H2")
    mrn, obs_key, org_key = unique()[:12], unique()[:12], unique()[:12]
    squat = {"resourceType": "Patient", "identifier": [{"system": "urn:h1:mrn", "value": mrn}],
             "name": [{"family": "假"}], "birthDate": "2000-01-01"}
    lab = {**observation("urn:uuid:2"), "identifier": [{"system": "urn:h1:obs", "value": obs_key}]}
    with _http(guarded, h2) as c:
        r = c.post("/Patient", json=squat, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        squat_id = r.json()["id"]
        r = c.put("/Observation", params={"identifier": f"urn:h1:obs|{obs_key}"}, headers=FHIR_JSON,
                  json={**lab, "subject": {"reference": f"Patient/{squat_id}"},
                        "valueQuantity": {"value": 10.1, "unit": "mmol/L"}})
        assert r.status_code == 201, r.text
        org = {"resourceType": "Organization", "name": "Shared lab",
               "identifier": [{"system": "urn:region:org", "value": org_key}]}
        r = c.post("/Organization", json=org, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        org_id = r.json()["id"]
    mine = {**squat, "name": [{"family": "孙", "given": ["七"]}], "birthDate": "1955-05-05"}
    by_mrn = f"identifier=urn:h1:mrn|{mrn}"
    with _http(guarded, guarded.h1) as c:
        r = c.post("", headers=FHIR_JSON, json=_tx(
            {"fullUrl": "urn:uuid:1", "resource": mine,
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": by_mrn}},
            {"fullUrl": "urn:uuid:2", "resource": {**lab, "subject": {"reference": "urn:uuid:1"}},
             "request": {"method": "POST", "url": "Observation"}}))
        assert r.status_code == 412 and "another institution wrote" in r.text, r.text
        assert squat_id not in r.text
        # a conditional reference to it is refused alike
        r = c.post("", headers=FHIR_JSON, json=_tx(
            {"resource": {**lab, "subject": {"reference": f"Patient?{by_mrn}"}},
             "request": {"method": "POST", "url": "Observation"}}))
        assert r.status_code == 412 and "another institution wrote" in r.text, r.text
        r = c.post("/Observation", headers={**FHIR_JSON,
                                            "if-none-exist": f"identifier=urn:h1:obs|{obs_key}"},
                   json={**lab, "subject": {"reference": f"Patient/{squat_id}"},
                         "valueQuantity": {"value": 12.3, "unit": "mmol/L"}})
        assert r.status_code == 412 and "another institution wrote" in r.text, r.text
        assert c.get("/Observation", params={"subject": f"Patient/{squat_id}",
                                             "value-quantity": "15.5"}).json()["total"] == 0
        assert c.get(f"/Patient/{squat_id}").json()["name"] == [{"family": "假"}]
        # a shared resource is the region's: found whoever wrote it
        r = c.post("/Organization", json=org, headers={
            **FHIR_JSON, "if-none-exist": f"identifier=urn:region:org|{org_key}"})
        assert r.status_code == 200 and r.json()["id"] == org_id, r.text
        r = c.post("", headers=FHIR_JSON, json=_tx(
            {"resource": {**mine, "identifier": [{"system": "urn:h1:mrn", "value": unique()[:12]}],
                          "managingOrganization": {
                              "reference": f"Organization?identifier=urn:region:org|{org_key}"}},
             "request": {"method": "POST", "url": "Patient"}}))
        assert r.status_code == 200, r.text
    with _http(guarded, h2) as c:  # H2's own conditional create still finds its own record
        r = c.post("/Patient", json=squat, headers={**FHIR_JSON, "if-none-exist": by_mrn})
        assert r.status_code == 200 and r.json()["id"] == squat_id, r.text


def test_a_conditional_update_by_other_criteria_makes_no_second_record_under_a_key(guarded):
    """H2's conditional PUT by subject matched only H1's record, hidden from H2 by a consent, so
    it created another carrying H1's identifier; from then on H1's correction by that key
    answered 412 "matched 2". Now the create is refused; other creates by such criteria go on."""
    p = patient(rid=unique()[:16])
    key = unique()[:12]
    hidden = {**_obs(p["id"]), "identifier": [{"system": "urn:h1:obs", "value": key}]}
    _write(guarded, p, _optout(p["id"]), hidden)
    h2 = guarded.client_auth(roles=("connector",), scope="system/*.cruds", institution="H2")
    body = {k: v for k, v in hidden.items() if k != "id"}
    with _http(guarded, h2) as c:
        assert c.get(f"/Observation/{hidden['id']}").status_code == 403
        r = c.put("/Observation", params={"subject": f"Patient/{p['id']}"}, json=body,
                  headers=FHIR_JSON)
        assert r.status_code == 412 and "another institution wrote" in r.text, r.text
        assert hidden["id"] not in r.text
        fresh = {**body, "identifier": [{"system": "urn:h2:obs", "value": unique()[:12]}]}
        r = c.put("/Observation", params={"subject": f"Patient/{p['id']}"}, json=fresh,
                  headers=FHIR_JSON)
        assert r.status_code == 201, r.text  # the hidden match answers as none, as before
    with _http(guarded, guarded.h1) as c:
        r = c.put("/Observation", params={"identifier": f"urn:h1:obs|{key}"},
                  json={**body, "status": "amended"}, headers=FHIR_JSON)
        assert r.status_code == 200 and r.json()["id"] == hidden["id"], r.text


def _walk(c: httpx.Client, url: str) -> tuple[list[str], int]:
    """The versions (``id/etag``) of a history walked page by page, and how many pages were
    empty (each must have been the last)."""
    seen, empty = [], 0
    while url:
        r = c.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        found = [f"{e['fullUrl'].rsplit('/', 1)[1]}/{e['response']['etag']}"
                 for e in body.get("entry", ())]
        seen += found
        url = next((lk["url"] for lk in body["link"] if lk["relation"] == "next"), None)
        empty += not found
    return seen, empty


def test_history_pages_are_filled_past_hidden_versions(guarded):
    """Walking ``_count=1`` pages of a history, each hidden version made an empty page with a
    ``next`` link: the pages counted the versions the caller may not see, and a ``_since``
    narrowed between them dated each hidden write."""
    hidden_p, shown_p = patient(rid=unique()[:16]), patient(rid=unique()[:16])
    _write(guarded, hidden_p, shown_p, _optout(hidden_p["id"]))
    moving, secret = _obs(shown_p["id"]), _obs(hidden_p["id"])
    _write(guarded, moving)  # version 1: shown to H2
    with _http(guarded, guarded.h1) as c:
        since = c.get(f"/Observation/{moving['id']}").json()["meta"]["lastUpdated"]
        for n, who in enumerate((hidden_p, hidden_p, shown_p, hidden_p, shown_p)):  # 2-6
            assert _put(c, {**moving, "subject": {"reference": f"Patient/{who['id']}"},
                            "valueQuantity": {"value": 60 + n, "unit": "/min"}}).status_code == 200
            assert _put(c, {**secret, "valueQuantity": {"value": n, "unit": "/min"}}
                        ).status_code in (200, 201)
    shown = [f"{moving['id']}/W/\"{v}\"" for v in (6, 4, 1)]
    since = since.replace("+", "%2B")
    with _http(guarded, guarded.h2) as c:
        for url in (f"/Observation/_history?_count=1&_since={since}",
                    f"/_history?_count=1&_since={since}",
                    f"/Observation/{moving['id']}/_history?_count=1",
                    f"/Observation/_history?_count=2&_since={since}"):
            seen, empty = _walk(c, url)
            assert seen == shown and not empty, (url, seen, empty)
    with _http(guarded, guarded.h1) as c:  # who sees them all pages them all
        assert len(_walk(c, f"/Observation/_history?_count=1&_since={since}")[0]) == 11


def test_the_history_of_a_deleted_record_is_hidden_as_the_record(guarded):
    p = patient(rid=unique()[:16])
    gone = _obs(p["id"])
    _write(guarded, p, gone)
    with _http(guarded, guarded.h1) as c:
        assert c.delete(f"/Observation/{gone['id']}").status_code in (200, 204)
    _write(guarded, _optout(p["id"]))
    with _http(guarded, guarded.h2) as c:
        r = c.get(f"/Observation/{gone['id']}/_history", params={"_total": "accurate"})
        assert r.json().get("total", 0) == 0 and not r.json().get("entry")
        urls = {e["request"]["url"] for e in c.get("/Observation/_history",
                                                    params={"_count": "500"}).json().get("entry", ())}
        assert f"Observation/{gone['id']}" not in urls
    with _http(guarded, guarded.h1) as c:
        assert len(c.get(f"/Observation/{gone['id']}/_history").json()["entry"]) == 2


def test_a_history_page_of_hidden_versions_still_leads_to_the_visible_ones(guarded):
    """Versions hidden from the caller do not end the history early: its pages read on past
    them to the visible ones."""
    p, q = patient(rid=unique()[:16]), patient(rid=unique()[:16])
    _write(guarded, p, q, _optout(p["id"]))
    record = _obs(q["id"])
    _write(guarded, record)  # version 1: of q, shown to H2
    with _http(guarded, guarded.h1) as c:
        since = c.get(f"/Observation/{record['id']}").json()["meta"]["lastUpdated"]
        for n in range(4):  # versions 2-5: moved to p, who opted out
            assert _put(c, {**record, "subject": {"reference": f"Patient/{p['id']}"},
                            "valueQuantity": {"value": 60 + n, "unit": "/min"}}).status_code == 200
    with _http(guarded, guarded.h2) as c:
        url, seen = f"/Observation/_history?_count=2&_since={since.replace('+', '%2B')}", []
        for _ in range(10):
            r = c.get(url)
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [e["response"]["etag"] for e in body.get("entry", ())]
            url = next((lk["url"] for lk in body["link"] if lk["relation"] == "next"), None)
            if url is None:
                break
        assert seen == ['W/"1"']


def test_pages_are_filled_with_what_a_caller_sees_not_left_empty(bare):
    """A page whose matches were all hidden still linked onward: walking ``_count=1`` pages,
    a patient token counted the region's matches (an empty page for each hidden one)."""
    a, b = patient(rid=unique()[:16]), patient(rid=unique()[:16])
    code = unique()[:12]
    mine = [_obs(a["id"], code, "urn:probe") for _ in range(2)]
    theirs = [_obs(b["id"], code, "urn:probe") for _ in range(5)]
    _write(bare, a, b, *theirs[:3], mine[0], *theirs[3:], mine[1])
    with _http(bare, _patient_token(bare, a["id"])) as c:
        url, pages, seen = "/Observation", 0, []
        params: dict | None = {"code": f"urn:probe|{code}", "_count": 1}
        while url:
            r = c.get(url, params=params)
            assert r.status_code == 200, r.text
            pages += 1
            seen += [e["resource"]["id"] for e in r.json().get("entry", ())
                     if e["search"]["mode"] == "match"]
            url = next((lk["url"] for lk in r.json()["link"] if lk["relation"] == "next"), None)
            params = None
        assert sorted(seen) == sorted(d["id"] for d in mine)
        assert pages == len(mine)  # no page for a hidden match


def test_an_instance_history_under_a_query_scope_pages_no_empty_pages(bare):
    """An instance's history shows the versions a scope's query selects: each version it left
    out was an empty page with a ``next`` link."""
    p = patient(rid=unique()[:16])
    record = _obs(p["id"], category="laboratory")
    _write(bare, p, record)
    with _http(bare, bare.h1) as c:
        for n, category in enumerate(("vital-signs", "vital-signs", "laboratory", "vital-signs",
                                      "laboratory")):  # versions 2-6
            assert _put(c, {**record, "valueQuantity": {"value": n, "unit": "/min"},
                            "category": [{"coding": [{"system": CATEGORY, "code": category}]}]}
                        ).status_code == 200
    lab = bare.client_auth(roles=("clinician",), institution="H1",
                           scope="system/Observation.rs?category=laboratory")
    with _http(bare, lab) as c:
        seen, empty = _walk(c, f"/Observation/{record['id']}/_history?_count=1")
        assert seen == [f"{record['id']}/W/\"{v}\"" for v in (6, 4, 1)] and not empty, (seen,
                                                                                        empty)


def test_quality_reports_are_never_patched_or_deleted_nor_filed_by_others(bare):
    """A connector deleted the report of its refused document (or rewrote it as accepted, by
    PATCH), and any writer could file reports of documents never sent: the quality figures
    lost the refusal. A report is filed by the hub or with a connector's document only."""
    tag = {"system": "https://fhir-region-hub.example/CodeSystem/hub-tags",
           "code": "document-quality"}
    report = {"resourceType": "OperationOutcome", "id": unique()[:16], "meta": {"tag": [tag]},
              "issue": [{"severity": "error", "code": "invalid", "diagnostics": "refused"}]}
    with _http(bare, bare.h1) as c:  # a connector: its quality control's report travels
        assert _put(c, report).status_code == 201
        assert c.delete(f"/OperationOutcome/{report['id']}").status_code == 403
        r = c.patch(f"/OperationOutcome/{report['id']}", headers={
            "content-type": "application/json-patch+json"},
            content=b'[{"op":"replace","path":"/issue/0/severity","value":"information"}]')
        assert r.status_code == 403
    steward = bare.client_auth(roles=("steward",), scope="system/*.cruds")
    with _http(bare, steward) as c:
        forged = {**report, "id": unique()[:16]}
        assert _put(c, forged).status_code == 403
        assert c.delete(f"/OperationOutcome/{report['id']}").status_code == 403
    with _http(bare, bare.h1) as c:
        assert c.get(f"/OperationOutcome/{report['id']}").json()["issue"][0]["severity"] == "error"


@pytest.fixture(scope="module")
def matching(request, tmp_path_factory):
    """As ``guarded``, with the index matching Patients as they arrive (reviews open)."""
    with matching_server(request, tmp_path_factory, "matching") as live:
        live.h1 = _connector_h1(live)
        yield live


def test_the_review_queue_and_decisions_keep_to_what_the_steward_may_see(matching):
    """A review about a Patient a consent hides from this steward was listed (naming it and
    whom it resembles) and could be accepted by that steward."""
    def local(system: str) -> dict:  # two hospitals' records of one name and birth, no ID
        return {"resourceType": "Patient", "id": unique()[:16],
                "identifier": [{"system": system, "value": unique()[:12]}],
                "name": [{"text": "上官婉儿", "family": "上官", "given": ["婉儿"]}],
                "gender": "female", "birthDate": "1993-03-03"}
    a, b = local("https://h1.example/mrn"), local("https://h2.example/mrn")
    _write(matching, a, b, _optout(b["id"]))
    # a steward of the institution the consent lets see both
    home = matching.client_auth(roles=("steward",), scope="system/Patient.rs system/Person.rs",
                                institution="H1")

    def reviews(auth) -> list[dict]:
        with _http(matching, auth) as c:
            r = c.get("/$mpi-review", params={"_count": 1000})
            assert r.status_code == 200, r.text
            return [x for x in r.json()["reviews"]
                    if {x["patient"], *x["candidates"]} & {f"Patient/{a['id']}",
                                                           f"Patient/{b['id']}"}]
    deadline = time.monotonic() + 30
    while not reviews(home):
        assert time.monotonic() < deadline, "the matcher opened no review"
        time.sleep(0.3)
    elsewhere = matching.client_auth(roles=("steward",), scope="system/Patient.rs system/Person.rs",
                                    institution="H2")
    assert reviews(elsewhere) == []
    rid = reviews(home)[0]["id"]
    with _http(matching, elsewhere) as c:
        assert c.post(f"/$mpi-review/{rid}/$accept", json={"resourceType": "Parameters",
                      "parameter": [{"name": "reason", "valueString": "x"}]},
                      headers=FHIR_JSON).status_code == 403
    assert reviews(home)[0]["status"] == "open"


def test_a_binary_is_shown_as_the_resource_its_security_context_names(bare):
    """R4 Binary.securityContext: the resource that stands for the Binary's sensitivity. A
    patient could not read the Binary of its own DocumentReference (the usual document
    pattern: 403); another patient still cannot. The reference deleted, the Binary is judged as
    the version it deleted (as a deletion is): its patient still reads it, the other still not
    (falling back to the Binary's own rules would show it to whoever reads Binaries: it names
    no patient, so no compartment or consent holds it)."""
    import base64

    a, b = patient(rid=unique()[:16]), patient(rid=unique()[:16])
    doc = {"resourceType": "DocumentReference", "id": unique()[:16], "status": "current",
           "subject": {"reference": f"Patient/{a['id']}"},
           "content": [{"attachment": {"contentType": "application/pdf"}}]}
    binary = {"resourceType": "Binary", "id": unique()[:16], "contentType": "application/pdf",
              "securityContext": {"reference": f"DocumentReference/{doc['id']}"},
              "data": base64.b64encode(b"%PDF-1.4 report").decode()}
    _write(bare, a, b, doc, binary)
    with _http(bare, _patient_token(bare, a["id"])) as c:
        assert c.get(f"/Binary/{binary['id']}").status_code == 200
        native = c.get(f"/Binary/{binary['id']}", headers={"accept": "application/pdf"})
        assert native.status_code == 200 and native.content == b"%PDF-1.4 report"
    with _http(bare, _patient_token(bare, b["id"])) as c:
        assert c.get(f"/Binary/{binary['id']}").status_code == 403
    with _http(bare, bare.h1) as c:
        assert c.delete(f"/DocumentReference/{doc['id']}").status_code in (200, 204)
    with _http(bare, _patient_token(bare, a["id"])) as c:
        assert c.get(f"/Binary/{binary['id']}").status_code == 200
    with _http(bare, _patient_token(bare, b["id"])) as c:
        assert c.get(f"/Binary/{binary['id']}").status_code == 403


def _resident_born(born: str) -> str:
    """A resident ID number (its check digit right) that encodes birth date ``born`` (YYYYMMDD)."""
    from terminology.resident_id import check_digit

    first17 = f"110101{born}{int(unique()[:6], 16) % 1000:03d}"
    return first17 + check_digit(first17)


def test_a_feeds_warnings_tell_nothing_of_a_stored_patient_it_may_not_read(bare):
    """A feed's Patient keeps a merge's retirement, the elements its message leaves unsaid and a
    retired record's content: its answer said so, naming the survivor, the stored resident ID
    kept or left out and that the record was live, to a connector that may not read it."""
    rid = "urn:oid:2.16.156.10011.0.99"
    retired = patient(rid=unique()[:16], active=False, link=[
        {"type": "replaced-by", "other": {"reference": "Patient/survivor-of-the-merge"}}])
    held = patient(rid=unique()[:16], value=_resident_born("19900101"))
    live = patient(rid=unique()[:16])
    with _http(bare, bare.auth) as c:  # written by no institution: any connector may change them
        for d in (retired, held, live):
            assert _put(c, d).status_code == 201
    sent = [  # the record number alone, a birth date of its own, a merge of its own
        {"resourceType": "Patient", "id": retired["id"],
         "identifier": [{"system": rid, "value": "1"}]},
        {"resourceType": "Patient", "id": held["id"], "birthDate": "1950-06-01",
         "identifier": [{"system": rid, "value": "2"}]},
        {"resourceType": "Patient", "id": live["id"], "identifier": [{"system": rid, "value": "3"}],
         "link": [{"type": "replaced-by", "other": {"reference": f"Patient/{retired['id']}"}}]}]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": d, "request": {"method": "PUT", "url": f"Patient/{d['id']}"}} for d in sent]}
    feed = {**FHIR_JSON, "x-hub-source-feed": "adt"}
    blind = bare.client_auth(roles=("connector",), scope="system/Patient.cu")
    with _http(bare, blind) as c:
        r = c.post("", json=batch, headers=feed)
    assert r.status_code == 200, r.text
    for entry in r.json()["entry"]:
        assert entry["response"]["status"].startswith("200"), entry
        said = orjson.dumps(entry["response"].get("outcome") or {}).decode()
        for told in ("merged into", "survivor-of-the-merge", "retired", "resident ID",
                     "held is kept"):
            assert told not in said, said
    with _http(bare, bare.auth) as c:  # kept all the same
        assert c.get(f"/Patient/{retired['id']}").json()["active"] is False
        assert c.get(f"/Patient/{held['id']}").json()["name"] == held["name"]
        assert c.get(f"/Patient/{live['id']}").json()["name"] == live["name"]
    # who may read them is told
    with _http(bare, bare.h1) as c:
        r = c.post("", json=batch, headers=feed)
    said = [orjson.dumps(e["response"].get("outcome") or {}).decode() for e in r.json()["entry"]]
    assert "merged into Patient/survivor-of-the-merge" in said[0], said


def test_everything_and_timeline_of_a_deleted_patient_answer_as_its_read(bare):
    """A deleted Patient the caller may see is gone (410) to a read, and was unknown (404) to
    ``$everything`` and ``$timeline``; one it may not see is refused alike by all three."""
    p = patient(rid=unique()[:16])
    _write(bare, p, _obs(p["id"], category="laboratory"))
    with _http(bare, bare.h1) as c:
        assert c.delete(f"/Patient/{p['id']}").status_code in (200, 204)
    everyone = bare.client_auth(roles=("clinician",), scope="user/*.rs")
    with _http(bare, everyone) as c:
        assert c.get(f"/Patient/{p['id']}").status_code == 410
        for op in ("$everything", "$timeline"):
            r = c.get(f"/Patient/{p['id']}/{op}", headers=TREAT)
            assert r.status_code == 410, (op, r.text)
        r = c.post(f"/Patient/{p['id']}/$everything", headers={**TREAT, **FHIR_JSON},
                   json={"resourceType": "Parameters"})
        assert r.status_code == 410, r.text
        assert c.get(f"/Patient/{unique()[:16]}/$everything", headers=TREAT).status_code == 404
    vitals = bare.client_auth(roles=("clinician",),
                              scope="user/Patient.rs?gender=male user/Observation.rs")
    with _http(bare, vitals) as c:  # not selected by its scope, deleted or not: refused
        assert c.get(f"/Patient/{p['id']}").status_code == 403
        for op in ("$everything", "$timeline"):
            assert c.get(f"/Patient/{p['id']}/{op}", headers=TREAT).status_code == 403
