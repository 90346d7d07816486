"""Query-restricted SMART scopes and Consent provisions, over real HTTP with real tokens.

One ``hub serve`` with access control on; each client is registered in its registry and gets its
token from the token endpoint (SMART Backend Services), asking for the scopes under test.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest

from fhir_mapping import source_order
from hub.auth.signer import Signer
from hub.core import httpclient
from tests.api_helpers import consent, observation, patient, unique
from tests.conftest import FHIR_JSON, LiveServer, make_settings

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@dataclass
class World:
    live: LiveServer
    writer: object  # connector of H1, every scope
    pid: str
    lab: dict  # laboratory, LOINC 1234-5, final
    lab_prelim: dict  # laboratory, LOINC 1234-5, preliminary
    vital: dict  # vital-signs, LOINC 8867-4, final


def _obs(pid: str, category: str, code: str, status: str = "final") -> dict:
    d = {**observation(f"Patient/{pid}"), "id": unique()[:16], "status": status,
         "category": [{"coding": [{"system": CATEGORY, "code": category}]}]}
    d["code"] = {"coding": [{"system": "http://loinc.org", "code": code}]}
    return d


def _put(c: httpx.Client, d: dict, **headers) -> httpx.Response:
    return c.put(f"/{d['resourceType']}/{d['id']}", json=d, headers={**FHIR_JSON, **headers})


def _http(world: World, auth=None, **headers) -> httpx.Client:
    return httpx.Client(base_url=world.live.base, timeout=30, auth=auth,
                        headers={"accept": "application/fhir+json", **headers}, verify=httpclient.verify())


def _ids(r: httpx.Response, rtype: str = "Observation") -> set[str]:
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", ())
            if e["resource"]["resourceType"] == rtype}


@pytest.fixture(scope="module")
def world(request, tmp_path_factory):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("scopes"), request)
    with LiveServer(settings) as live:
        writer = live.client_auth(roles=("connector",), scope="system/*.cruds", institution="H1")
        p = patient(rid=unique()[:16])
        lab, prelim, vital = (_obs(p["id"], "laboratory", "1234-5"),
                              _obs(p["id"], "laboratory", "1234-5", "preliminary"),
                              _obs(p["id"], "vital-signs", "8867-4"))
        w = World(live, writer, p["id"], lab, prelim, vital)
        with _http(w, writer) as c:
            for d in (p, lab, prelim, vital):
                assert _put(c, d).status_code == 201
        yield w


def _reader(world: World, scope: str, institution: str = "H1"):
    return world.live.client_auth(roles=("clinician",), scope=scope, institution=institution)


# -- query-restricted scopes ----------------------------------------------------------------------

def test_a_query_restricted_scope_reads_and_finds_only_what_its_query_selects(world):
    lab_only = _reader(world, "system/Patient.rs system/Observation.rs?category=laboratory")
    with _http(world, lab_only) as c:
        assert c.get(f"/Observation/{world.lab['id']}").status_code == 200
        r = c.get(f"/Observation/{world.vital['id']}")
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        assert c.get(f"/Observation/{world.vital['id']}/_history/1").status_code == 403
        assert not c.get(f"/Observation/{world.vital['id']}/_history").json().get("entry")
        want = {world.lab["id"], world.lab_prelim["id"]}
        found = c.get("/Observation", params={"subject": f"Patient/{world.pid}",
                                              "_total": "accurate"})
        assert _ids(found) == want and found.json()["total"] == 2  # narrowed in the plan
        # paging counts only what is shown: one per page, two pages, no empty page
        seen, url = [], "/Observation"
        params: dict | None = {"subject": f"Patient/{world.pid}", "_count": "1"}
        while url:
            page = c.get(url, params=params)
            seen += sorted(_ids(page))
            assert len(_ids(page)) == 1
            url = next((link["url"] for link in page.json().get("link", ())
                        if link["relation"] == "next"), None)
            params = None
        assert sorted(seen) == sorted(want)
        # what a search asks for is AND'ed with the scope: vital signs are not found
        assert not _ids(c.get("/Observation", params={"category": "vital-signs"}))
        # _revinclude and _include are held to the same
        r = c.get("/Patient", params={"_id": world.pid, "_revinclude": "Observation:subject"})
        assert _ids(r) == want and _ids(r, "Patient") == {world.pid}
        r = c.get("/Observation", params={"_id": f"{world.lab['id']},{world.vital['id']}",
                                          "_include": "Observation:subject"})
        assert _ids(r) == {world.lab["id"]} and _ids(r, "Patient") == {world.pid}
        # the shared record too
        r = c.get(f"/Patient/{world.pid}/$everything", headers={"x-purpose-of-use": "TREAT"})
        assert _ids(r) == want


def test_an_instance_history_shows_the_versions_a_query_scope_selects_as_the_type_history(world):
    """A record whose category went laboratory, vital-signs, laboratory: to a scope selecting vital
    signs, its own history shows version 2 alone as the type's history does, a vread of
    another version is refused as its read is, and one of a version never written is not found.
    A record hidden whole (by a consent, out of a patient token's compartment, or none of its
    versions selected) is refused as before, whatever version is asked for."""
    p = patient(rid=unique()[:16])
    moved = _obs(p["id"], "laboratory", "1234-5")
    never = _obs(p["id"], "laboratory", "1234-5")
    with _http(world, world.writer) as c:
        for d in (p, moved, never):
            assert _put(c, d).status_code == 201
        vital = {"coding": [{"system": CATEGORY, "code": "vital-signs"}]}
        assert _put(c, {**moved, "category": [vital]}).status_code == 200
        assert _put(c, moved).status_code == 200  # version 3, laboratory again
    url = f"/Observation/{moved['id']}/_history"

    def versions(r: httpx.Response) -> list[str]:
        assert r.status_code == 200, r.text
        return [e["response"]["etag"] for e in r.json().get("entry", ())
                if e["fullUrl"].endswith(f"/Observation/{moved['id']}")]

    scope = "system/Observation.rs?category=vital-signs"
    with _http(world, _reader(world, scope)) as c:
        r = c.get(url, params={"_total": "accurate"})
        assert versions(r) == ['W/"2"'] and r.json()["total"] == 1
        assert versions(c.get("/Observation/_history")) == ['W/"2"']
        assert [c.get(f"{url}/{v}").status_code for v in (1, 2, 3)] == [403, 200, 403]
        assert c.get(f"{url}/9").status_code == 404  # its history is shown: no such version
        assert c.get(f"/Observation/{moved['id']}").status_code == 403  # the current version
        batch = c.post("/", headers=FHIR_JSON, json={"resourceType": "Bundle", "type": "batch",
                                                      "entry": [{"request": {
                                                          "method": "GET", "url": url[1:]}}]})
        (entry,) = batch.json()["entry"]
        assert entry["response"]["status"].startswith("200")
        assert [e["response"]["etag"] for e in entry["resource"]["entry"]] == ['W/"2"']
        # none of its versions selected: refused as its read is
        assert c.get(f"/Observation/{never['id']}/_history").status_code == 403
        assert c.get(f"/Observation/{never['id']}/_history/9").status_code == 403
    # hidden whole: by a consent, or out of a patient token's compartment
    with _http(world, world.writer) as c:
        assert _put(c, consent(p["id"], {"type": "deny"}, "H1")).status_code == 201
    with _http(world, _reader(world, scope, "H2")) as c:
        assert c.get(url).status_code == 403
        assert [c.get(f"{url}/{v}").status_code for v in (2, 9)] == [403, 403]
    other = patient(rid=unique()[:16])
    token = Signer(world.live.settings.data_dir).issue(
        {"iss": world.live.origin + "/auth", "aud": world.live.base, "sub": "vitals-app",
         "scope": "patient/Observation.rs?category=vital-signs", "patient": other["id"],
         "hub_roles": ["clinician"]}, 300)
    with _http(world, None, authorization=f"Bearer {token}") as c:
        assert c.get(url).status_code == 403
        assert [c.get(f"{url}/{v}").status_code for v in (2, 9)] == [403, 403]


def test_a_chain_through_a_type_the_scopes_do_not_search_is_told_not_silent(world):
    """A chain or _has through a type the caller may not search holds through nothing: the
    Bundle says so in an outcome (from the scopes alone, whether or not anything would match),
    and strict handling refuses it."""
    def outcome(r: httpx.Response) -> str:
        assert r.status_code == 200, r.text
        found = [e["resource"] for e in r.json().get("entry", ())
                 if e["search"]["mode"] == "outcome"]
        return " ".join(i["diagnostics"] for o in found for i in o["issue"]
                        if i["severity"] == "warning")

    chained = {"subject:Patient._id": world.pid}
    has = {"patient._has:Condition:subject:code": "http://snomed.info/sct|38341003"}
    with _http(world, _reader(world, "system/Observation.rs")) as c:
        for params, barred in ((chained, "Patient"), ({"subject:Patient._id": "none"}, "Patient"),
                               (has, "Condition, Patient")):
            r = c.get("/Observation", params=params)
            assert not _ids(r)
            assert f"No granted scope allows searching {barred}:" in outcome(r)
            strict = c.get("/Observation", params=params, headers={"prefer": "handling=strict"})
            assert strict.status_code == 403 and barred in strict.text
    with _http(world, _reader(world, "system/Patient.rs system/Observation.rs")) as c:
        r = c.get("/Observation", params=chained, headers={"prefer": "handling=strict"})
        assert world.lab["id"] in _ids(r) and not outcome(r)


def test_token_queries_with_a_system_and_several_parameters(world):
    by_code = _reader(world, "system/Observation.rs?code=http://loinc.org|1234-5")
    with _http(world, by_code) as c:
        assert c.get(f"/Observation/{world.lab['id']}").status_code == 200
        assert c.get(f"/Observation/{world.vital['id']}").status_code == 403
    by_system = _reader(world, f"system/Observation.rs?category={CATEGORY}|vital-signs")
    with _http(world, by_system) as c:
        assert c.get(f"/Observation/{world.vital['id']}").status_code == 200
        assert c.get(f"/Observation/{world.lab['id']}").status_code == 403
    both = _reader(world, "system/Observation.rs?category=laboratory&status=final")
    with _http(world, both) as c:
        assert c.get(f"/Observation/{world.lab['id']}").status_code == 200
        assert c.get(f"/Observation/{world.lab_prelim['id']}").status_code == 403
        assert c.get(f"/Observation/{world.vital['id']}").status_code == 403
        assert _ids(c.get("/Observation", params={"subject": f"Patient/{world.pid}"})) == {
            world.lab["id"]}
    # :not with several values selects none of them (each negation OR'ed would select all)
    neither = _reader(world, "system/Observation.rs?status:not=preliminary,final")
    with _http(world, neither) as c:
        for d in (world.lab, world.lab_prelim, world.vital):
            assert c.get(f"/Observation/{d['id']}").status_code == 403
        assert _ids(c.get("/Observation", params={"subject": f"Patient/{world.pid}"})) == set()


def test_several_restricted_scopes_are_ored_and_an_unrestricted_one_wins(world):
    every = {world.lab["id"], world.lab_prelim["id"], world.vital["id"]}
    either = _reader(world, "system/Observation.rs?category=laboratory&status=preliminary "
                            "system/Observation.rs?code=http://loinc.org|8867-4")
    with _http(world, either) as c:
        assert c.get(f"/Observation/{world.lab['id']}").status_code == 403
        assert c.get(f"/Observation/{world.lab_prelim['id']}").status_code == 200
        assert c.get(f"/Observation/{world.vital['id']}").status_code == 200
        found = c.get("/Observation", params={"subject": f"Patient/{world.pid}",
                                              "_total": "accurate"})
        assert _ids(found) == {world.lab_prelim["id"], world.vital["id"]}
        assert found.json()["total"] == 2
    wins = _reader(world, "system/Observation.rs?category=laboratory system/Observation.rs")
    with _http(world, wins) as c:
        assert c.get(f"/Observation/{world.vital['id']}").status_code == 200
        assert _ids(c.get("/Observation", params={"subject": f"Patient/{world.pid}"})) == every


def test_a_query_the_hub_cannot_judge_selects_nothing(world):
    unjudged = _reader(world, "system/Observation.rs?value-quantity=72")
    with _http(world, unjudged) as c:
        assert c.get(f"/Observation/{world.lab['id']}").status_code == 403
        assert not _ids(c.get("/Observation", params={"subject": f"Patient/{world.pid}"}))


def test_writes_must_store_and_replace_what_the_scope_selects(world):
    lab_writer = world.live.client_auth(
        roles=("connector",), scope="system/Observation.cruds?category=laboratory",
        institution="H1")
    new_lab = _obs(world.pid, "laboratory", "1234-5")
    new_vital = _obs(world.pid, "vital-signs", "8867-4")
    with _http(world, lab_writer) as c:
        r = c.post("/Observation", json={k: v for k, v in new_lab.items() if k != "id"},
                   headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        r = c.post("/Observation", json={k: v for k, v in new_vital.items() if k != "id"},
                   headers=FHIR_JSON)
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        assert _put(c, new_lab).status_code == 201
        assert _put(c, new_vital).status_code == 403
        # an update may not turn a laboratory result into something else, nor the reverse
        assert _put(c, {**new_lab, "category": new_vital["category"]}).status_code == 403
        assert _put(c, {**world.vital, "category": new_lab["category"]}).status_code == 403
        assert _put(c, {**new_lab, "status": "amended"}).status_code == 200
        # nor may a patch, of what it selects or into what it does not
        patch = {"content-type": "application/json-patch+json"}
        r = c.patch(f"/Observation/{new_lab['id']}", headers=patch, json=[
            {"op": "replace", "path": "/category", "value": new_vital["category"]}])
        assert r.status_code == 403, r.text
        r = c.patch(f"/Observation/{world.vital['id']}", headers=patch, json=[
            {"op": "replace", "path": "/status", "value": "amended"}])
        assert r.status_code == 403, r.text
        r = c.patch(f"/Observation/{new_lab['id']}", headers=patch, json=[
            {"op": "replace", "path": "/status", "value": "corrected"}])
        assert r.status_code == 200, r.text
        assert c.delete(f"/Observation/{world.vital['id']}").status_code == 403
        # a conditional write finds its target later: it needs a scope without a query
        r = c.put("/Observation", params={"identifier": "urn:oid:1.2.156.1|nope"},
                  json={k: v for k, v in new_lab.items() if k != "id"}, headers=FHIR_JSON)
        assert r.status_code == 403
        # in a transaction one refused entry refuses all
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {k: v for k, v in d.items() if k != "id"},
             "request": {"method": "POST", "url": "Observation"}}
            for d in (new_lab, new_vital)]}
        assert c.post("/", json=bundle, headers=FHIR_JSON).status_code == 403
        assert c.delete(f"/Observation/{new_lab['id']}").status_code in (200, 204)
    with _http(world, world.writer) as c:
        assert c.get(f"/Observation/{world.vital['id']}").json()["category"] == \
            world.vital["category"]


# -- consent provisions ---------------------------------------------------------------------------

def _org(inst: str) -> dict:
    return {"role": {"coding": [{"code": "PRCP"}]},
            "reference": {"reference": f"Organization/{inst}"}}


def _when(days: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _records(world: World, consent_of) -> tuple[dict, dict, dict]:
    """A Patient with a plain and a PSY-labelled Observation, and the Consent ``consent_of(pid)``
    (None: none), written by H1."""
    p = patient(rid=unique()[:16])
    plain = {**observation(f"Patient/{p['id']}"), "id": unique()[:16]}
    psy = {**observation(f"Patient/{p['id']}"), "id": unique()[:16],
           "meta": {"security": [{"system": ACTCODE, "code": "PSY"}]}}
    with _http(world, world.writer) as c:
        for d in (p, plain, psy):
            assert _put(c, d).status_code == 201
        consent = consent_of(p["id"])
        if consent is not None:
            r = _put(c, consent)
            assert r.status_code == 201, r.text
    return p, plain, psy


def _sees(world: World, auth, d: dict, **headers) -> bool:
    with _http(world, auth, **headers) as c:
        r = c.get(f"/{d['resourceType']}/{d['id']}")
    assert r.status_code in (200, 403), r.text
    return r.status_code == 200


@pytest.fixture(scope="module")
def readers(world):
    return {inst: _reader(world, "user/*.rs", inst) for inst in ("H1", "H2", "H3")}


def test_a_base_permit_with_a_nested_deny_of_a_security_label(world, readers):
    p, plain, psy = _records(world, lambda pid: consent(pid, {
        "type": "permit", "provision": [{"type": "deny", "securityLabel": [
            {"system": ACTCODE, "code": "PSY"}]}]}))
    assert _sees(world, readers["H2"], p) and _sees(world, readers["H2"], plain)
    assert not _sees(world, readers["H2"], psy)
    assert _sees(world, readers["H1"], psy)  # the recording institution is spared
    with _http(world, readers["H2"]) as c:
        found = c.get("/Observation", params={"subject": f"Patient/{p['id']}"})
        assert _ids(found) == {plain["id"]}


def test_a_base_deny_with_a_nested_permit_for_one_institution(world, readers):
    p, plain, psy = _records(world, lambda pid: consent(pid, {
        "type": "deny", "provision": [{"type": "permit", "actor": [_org("H2")]}]}))
    assert _sees(world, readers["H2"], p) and _sees(world, readers["H2"], psy)
    assert not _sees(world, readers["H3"], p) and not _sees(world, readers["H3"], plain)
    assert _sees(world, readers["H1"], plain)


def test_a_base_permit_with_a_nested_deny_of_an_actor_or_a_class(world, readers):
    p, plain, _ = _records(world, lambda pid: consent(pid, {
        "type": "permit", "provision": [{"type": "deny", "actor": [_org("H2")]}]}))
    assert not _sees(world, readers["H2"], p) and _sees(world, readers["H3"], p)
    p, plain, _ = _records(world, lambda pid: consent(pid, {
        "type": "permit", "provision": [{"type": "deny", "class": [
            {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}]}))
    assert _sees(world, readers["H2"], p) and not _sees(world, readers["H2"], plain)
    # a nested deny with two conditions: both must hold
    p, plain, psy = _records(world, lambda pid: consent(pid, {
        "type": "permit", "provision": [{"type": "deny", "actor": [_org("H2")],
                                         "securityLabel": [{"system": ACTCODE, "code": "PSY"}]}]}))
    assert _sees(world, readers["H2"], plain) and not _sees(world, readers["H2"], psy)
    assert _sees(world, readers["H3"], psy)


def test_a_nested_exception_of_an_exception(world, readers):
    # no sharing, except with H2, except its PSY records
    p, plain, psy = _records(world, lambda pid: consent(pid, {
        "type": "deny", "provision": [{"type": "permit", "actor": [_org("H2")], "provision": [
            {"type": "deny", "securityLabel": [{"system": ACTCODE, "code": "PSY"}]}]}]}))
    assert _sees(world, readers["H2"], plain) and not _sees(world, readers["H2"], psy)
    assert not _sees(world, readers["H3"], plain)


def test_periods_status_and_dates_say_when_a_consent_is_in_force(world, readers):
    deny = {"type": "deny"}
    cases = {
        "past provision period": (consent, {**deny, "period": {"start": _when(-10),
                                                                 "end": _when(-5)}}, {}, True),
        "current provision period": (consent, {**deny, "period": {"start": _when(-1)}}, {},
                                     False),
        "future provision period": (consent, {**deny, "period": {"start": _when(5)}}, {}, True),
        "draft": (consent, deny, {"status": "draft"}, True),
        "inactive": (consent, deny, {"status": "inactive"}, True),
        "dated in the future": (consent, deny, {"dateTime": _when(3)}, True),
        "dated in the past": (consent, deny, {"dateTime": _when(-3)}, False),
        "a nested permit out of its period": (consent, {**deny, "provision": [
            {"type": "permit", "actor": [_org("H2")], "period": {"end": _when(-1)}}]}, {}, False),
    }
    for name, (make, provision, extra, shown) in cases.items():
        p, _, _ = _records(world, lambda pid, make=make, provision=provision, extra=extra:
                           make(pid, provision, **extra))
        assert _sees(world, readers["H2"], p) is shown, name


def test_purpose_data_and_what_is_not_judged(world, readers):
    # shared for treatment only
    p, plain, _ = _records(world, lambda pid: consent(pid, {
        "type": "deny", "provision": [{"type": "permit", "purpose": [
            {"system": ACTCODE, "code": "TREAT"}]}]}))
    assert not _sees(world, readers["H2"], plain)
    assert _sees(world, readers["H2"], plain, **{"x-purpose-of-use": "TREAT"})
    # one record named
    holder: dict = {}

    def named(pid: str) -> dict:
        holder["id"] = unique()[:16]
        return consent(pid, {"type": "permit", "provision": [
            {"type": "deny", "data": [{"meaning": "instance", "reference": {
                "reference": f"Observation/{holder['id']}"}}]}]})
    p, plain, _ = _records(world, named)
    hidden = {**observation(f"Patient/{p['id']}"), "id": holder["id"]}
    with _http(world, world.writer) as c:
        assert _put(c, hidden).status_code == 201
    assert not _sees(world, readers["H2"], hidden) and _sees(world, readers["H2"], plain)
    # a permit with a condition the hub does not judge (dataPeriod) is not applied
    p, plain, _ = _records(world, lambda pid: consent(pid, {
        "type": "deny", "provision": [{"type": "permit", "actor": [_org("H2")],
                                       "dataPeriod": {"start": "2000-01-01"}}]}))
    assert not _sees(world, readers["H2"], plain)
    # a provision only about collecting data does not hide it from readers
    p, plain, _ = _records(world, lambda pid: consent(pid, {
        "type": "deny", "action": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentaction",
            "code": "collect"}]}]}))
    assert _sees(world, readers["H2"], plain)
    # the policy rule stands for a base provision without a type
    p, plain, _ = _records(world, lambda pid: consent(pid, {"period": {"start": _when(-1)}},
                                                       policyRule={"coding": [
        {"system": ACTCODE, "code": "OPTOUT"}]}))
    assert not _sees(world, readers["H2"], plain) and _sees(world, readers["H1"], plain)



# -- references a Consent names: versions, this server's base, another server's ------------------

def _org_ref(reference: str) -> dict:
    return {"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": reference}}


def test_an_actor_named_by_a_version_or_on_this_servers_base_is_that_institution(world, readers):
    for named in ("Organization/H2/_history/1", f"{world.live.base}/Organization/H2"):
        p, plain, _ = _records(world, lambda pid, named=named: consent(pid, {
            "type": "permit", "provision": [{"type": "deny", "actor": [_org_ref(named)]}]}))
        assert not _sees(world, readers["H2"], plain), named
        assert _sees(world, readers["H3"], plain), named
    # the recording institution named by a version is still the one a bare deny spares
    p, plain, _ = _records(world, lambda pid: {
        **consent(pid, {"type": "deny"}), "organization": [
            {"reference": "Organization/H1/_history/3"}]})
    assert _sees(world, readers["H1"], plain) and not _sees(world, readers["H2"], plain)
    # another server's H2 is not this one's: a permit for it opens nothing, a deny of it hides
    # (what cannot be told hides rather than shows)
    elsewhere = "https://elsewhere.example/fhir/Organization/H2"
    p, plain, _ = _records(world, lambda pid: consent(pid, {
        "type": "deny", "provision": [{"type": "permit", "actor": [_org_ref(elsewhere)]}]}))
    assert not _sees(world, readers["H2"], plain)
    p, plain, _ = _records(world, lambda pid: consent(pid, {
        "type": "permit", "provision": [{"type": "deny", "actor": [_org_ref(elsewhere)]}]}))
    assert not _sees(world, readers["H2"], plain) and not _sees(world, readers["H3"], plain)


def test_a_record_named_by_a_version_is_denied_whole(world, readers):
    holder: dict = {}

    def named(pid: str) -> dict:
        holder["id"] = unique()[:16]
        return consent(pid, {"type": "permit", "provision": [
            {"type": "deny", "data": [{"meaning": "instance", "reference": {
                "reference": f"Observation/{holder['id']}/_history/1"}}]}]})
    p, plain, _ = _records(world, named)
    hidden = {**observation(f"Patient/{p['id']}"), "id": holder["id"]}
    with _http(world, world.writer) as c:
        assert _put(c, hidden).status_code == 201
        assert _put(c, {**hidden, "status": "amended"}).status_code == 200  # version 2
    assert not _sees(world, readers["H2"], hidden) and _sees(world, readers["H2"], plain)
    with _http(world, readers["H2"]) as c:
        assert c.get(f"/Observation/{hidden['id']}/_history/1").status_code == 403
    # on this server's base alike; another server's record of that id is not this one
    holder.clear()

    def absolute(pid: str) -> dict:
        holder["id"] = unique()[:16]
        return consent(pid, {"type": "deny", "provision": [
            {"type": "permit", "data": [{"meaning": "instance", "reference": {
                "reference": f"https://elsewhere.example/fhir/Observation/{holder['id']}"}}]},
            {"type": "permit", "actor": [_org("H2")], "provision": [
                {"type": "deny", "data": [{"meaning": "instance", "reference": {
                    "reference": f"{world.live.base}/Observation/{holder['id']}"}}]}]}]})
    p, plain, _ = _records(world, absolute)
    named_one = {**observation(f"Patient/{p['id']}"), "id": holder["id"]}
    with _http(world, world.writer) as c:
        assert _put(c, named_one).status_code == 201
    assert _sees(world, readers["H2"], plain) and not _sees(world, readers["H2"], named_one)
    assert not _sees(world, readers["H3"], named_one)  # the permit of another server's: none


def test_a_base_of_no_type_under_another_policy_rule_keeps_its_nested_denies(world, readers):
    for rule in ({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentpolicycodes",
                              "code": "hipaa-auth"}]}, None):
        extra = {"policyRule": rule} if rule else {}
        p, plain, psy = _records(world, lambda pid, extra=extra: consent(pid, {
            "provision": [{"type": "deny", "securityLabel": [
                {"system": ACTCODE, "code": "PSY"}]}]}, **extra))
        assert not _sees(world, readers["H2"], psy), rule
        assert _sees(world, readers["H2"], plain) and _sees(world, readers["H1"], psy), rule
        # a nested provision of no type under it reads as a deny too
        p, plain, psy = _records(world, lambda pid, extra=extra: consent(pid, {
            "provision": [{"actor": [_org("H3")]}]}, **extra))
        assert not _sees(world, readers["H3"], plain) and _sees(world, readers["H2"], plain)


# -- a patient's own app, its fhirUser absolute as SMART gives it ---------------------------------

def _patient_app(world: World, pid: str, fhir_user: str) -> httpx.Client:
    live = world.live
    claims = {"iss": live.origin + "/auth", "aud": live.base, "sub": f"user-{pid}",
              "scope": "patient/*.rs", "patient": pid, "hub_roles": ["clinician"],
              "fhirUser": fhir_user}
    token = Signer(live.settings.data_dir).issue(claims, 300)
    return httpx.Client(base_url=live.base, timeout=30,
                        headers={"authorization": f"Bearer {token}",
                                 "accept": "application/fhir+json"}, verify=httpclient.verify())


def test_a_patients_own_app_with_an_absolute_fhir_user_reads_past_its_own_opt_out(world):
    assert not os.environ.get("HUB_BASE_URL")  # the base is the one the server listens on
    # no sharing beyond H1: the app, of no institution, is held to it unless it is the patient's
    p, plain, _ = _records(world, lambda pid: consent(pid, {"type": "deny"}))
    for me in (f"Patient/{p['id']}", f"{world.live.base}/Patient/{p['id']}"):
        with _patient_app(world, p["id"], me) as c:
            assert c.get(f"/Observation/{plain['id']}").status_code == 200, me
    # another server's Patient of that id is someone else: held to the consent
    with _patient_app(world, p["id"], f"https://elsewhere.example/fhir/Patient/{p['id']}") as c:
        assert c.get(f"/Observation/{plain['id']}").status_code == 403


# -- a write to a record the caller is not shown tells nothing of it ------------------------------

def _answer(r: httpx.Response, rid: str) -> tuple:
    """What a write's answer tells: status, version headers, the outcome's text (but the id)."""
    return (r.status_code, r.headers.get("etag"), r.headers.get("location"),
            r.headers.get("last-modified") is not None, r.text.replace(rid, "ID"))


def test_a_write_to_a_hidden_record_tells_nothing_of_it(world):
    steward = world.live.client_auth(roles=("steward",), scope="system/*.cruds", institution="H2")
    # H1's own connector is shown what it wrote; a consent hides it from H2
    p, plain, _ = _records(world, lambda pid: consent(pid, {"type": "deny", "actor": [_org("H2")]}))
    kept = {**observation(f"Patient/{p['id']}"), "id": unique()[:16]}
    gone = {**kept, "id": unique()[:16]}
    with _http(world, world.writer) as c:
        for d in (kept, gone):
            assert _put(c, d).status_code == 201
            assert _put(c, {**d, "status": "amended"}).status_code == 200  # version 2
        assert c.delete(f"/Observation/{gone['id']}").status_code == 200  # version 3
    with _http(world, steward) as c:
        assert c.get(f"/Observation/{kept['id']}").status_code == 403
        # a wrong If-Match does not name the current version
        r = _put(c, kept, **{"if-match": 'W/"5"'})
        assert r.status_code == 412 and "the current version is" not in r.text, r.text
        # the content stored (as amended) is not told apart from another: both a new version
        same = _put(c, {**kept, "status": "amended"})
        other = _put(c, {**kept, "status": "corrected"})
        assert same.status_code == other.status_code == 200, same.text
        assert "unchanged" not in same.text and same.json() == other.json()
        # a create-only PUT is refused alike, the record live or deleted: it is current to
        # whom it is hidden from (as its read, 403, says)
        live_put = _put(c, kept, **{"if-none-match": "*"})
        deleted_put = _put(c, gone, **{"if-none-match": "*"})
        assert live_put.status_code == 412, live_put.text
        assert _answer(live_put, kept["id"]) == _answer(deleted_put, gone["id"])
        # a deletion answers alike, the record live or deleted, with no version
        deleted = c.delete(f"/Observation/{kept['id']}")
        again = c.delete(f"/Observation/{gone['id']}")
        assert _answer(deleted, kept["id"]) == _answer(again, gone["id"]), again.text
        assert deleted.status_code == 200 and deleted.headers.get("etag") is None
        # written again after its deletion, as an update would answer
        assert _put(c, gone).status_code == 200
    with _http(world, world.writer) as c:  # the writes were made
        assert c.get(f"/Observation/{kept['id']}").status_code == 410
        history = c.get(f"/Observation/{kept['id']}/_history").json()["entry"]
        assert [e["request"]["method"] for e in history] == ["DELETE", "PUT", "PUT", "PUT", "PUT"]
        assert [e["resource"]["status"] for e in history[1:3]] == ["corrected", "amended"]
        assert c.get(f"/Observation/{gone['id']}").headers["etag"] == 'W/"4"'
        # who is shown the record is told as before
        mine = {**kept, "id": unique()[:16]}
        assert _put(c, mine).status_code == 201
        r = _put(c, mine, **{"if-match": 'W/"9"'})
        assert r.status_code == 412 and "the current version is 1" in r.text
        r = _put(c, mine)
        assert r.status_code == 200 and r.headers["etag"] == 'W/"1"'  # unchanged: no new one
        assert c.delete(f"/Observation/{mine['id']}").headers.get("etag") == 'W/"2"'
        assert "already deleted" in c.delete(f"/Observation/{mine['id']}").text
        assert _put(c, mine).status_code == 201


# -- a hidden record answers a write alike, live or deleted ----------------------------------------

STORED_AT, OLDER = "2024-03-01T10:00:00+08:00", "2024-02-01T10:00:00+08:00"


def _stamped(d: dict, when: str) -> dict:
    """``d`` with the source-order stamp a feed's mapper gives what it writes."""
    return {**d, "meta": {**d.get("meta", {}), "extension": [{"url": source_order.URL, "extension": [
        {"url": "time", "valueDateTime": when}]}]}}


def _live_and_deleted(world: World, hide, label: bool = False) -> tuple[dict, dict]:
    """Two Observations of a new Patient (PSY-labelled with ``label``) H1's connector wrote at
    ``STORED_AT``, under the Consent ``hide(pid)``: one live at version 2, one deleted by its
    feed (the deletion stamped too) at version 3."""
    p = patient(rid=unique()[:16])
    meta = {"meta": {"security": [{"system": ACTCODE, "code": "PSY"}]}} if label else {}
    live, gone = ({**observation(f"Patient/{p['id']}"), "id": unique()[:16], **meta}
                  for _ in range(2))
    with _http(world, world.writer) as c:
        assert _put(c, p).status_code == 201
        assert _put(c, hide(p["id"])).status_code == 201
        for d in (live, gone):
            assert _put(c, _stamped(d, STORED_AT)).status_code == 201
            assert _put(c, _stamped({**d, "status": "amended"}, STORED_AT)).status_code == 200
        stamp = _stamped({}, STORED_AT)["meta"]["extension"]
        r = c.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [{"request": {
            "method": "DELETE", "url": f"Observation/{gone['id']}", "extension": stamp}}]},
            headers=FHIR_JSON)
        assert r.json()["entry"][0]["response"]["status"].startswith("200"), r.text
        assert c.get(f"/Observation/{gone['id']}").status_code == 410
    return live, gone


def _batch_put(c: httpx.Client, d: dict) -> httpx.Response:
    return c.post("/", headers=FHIR_JSON, json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": d, "request": {"method": "PUT", "url": f"Observation/{d['id']}"}}]})


# each write a hidden record may be sent: (name, the write of a resource)
WRITES = [
    ("PUT", lambda c, d: _put(c, d)),
    ("PUT of the stored content", lambda c, d: _put(c, {**d, "status": "amended"})),
    ("PUT If-Match: *", lambda c, d: _put(c, d, **{"if-match": "*"})),
    ("PUT If-None-Match: *", lambda c, d: _put(c, d, **{"if-none-match": "*"})),
    *((f"PUT If-Match: {v}", lambda c, d, v=v: _put(c, d, **{"if-match": v}))
      for v in ('W/"1"', 'W/"2"', 'W/"3"', 'W/"4"')),
    ("PUT older than stored", lambda c, d: _put(c, _stamped(d, OLDER))),
    ("batch PUT older than stored", lambda c, d: _batch_put(c, _stamped(d, OLDER))),
    ("batch PUT", _batch_put),
    ("PUT return=representation", lambda c, d: _put(c, d, prefer="return=representation")),
    ("PATCH", lambda c, d: c.patch(f"/Observation/{d['id']}", json=[
        {"op": "replace", "path": "/status", "value": "corrected"}],
        headers={"content-type": "application/json-patch+json"})),
    ("DELETE", lambda c, d: c.delete(f"/Observation/{d['id']}")),
    ("DELETE If-Match: *", lambda c, d: c.delete(f"/Observation/{d['id']}",
                                                   headers={"if-match": "*"})),
    ("DELETE If-Match: version 3", lambda c, d: c.delete(f"/Observation/{d['id']}",
                                                          headers={"if-match": 'W/"3"'})),
]


def _hidden_from(world: World) -> list[tuple[str, object, object, bool, object]]:
    """(who, token, the Consent of the records, labelled, the resource it writes of one)."""
    live = world.live
    steward = live.client_auth(roles=("steward",), scope="system/*.cruds", institution="H2")
    lab_only = live.client_auth(roles=("connector",), institution="H1",
                                scope="system/Observation.cruds?category=laboratory")
    other = patient(rid=unique()[:16])
    with _http(world, world.writer) as c:
        assert _put(c, other).status_code == 201
    token = Signer(live.settings.data_dir).issue(
        {"iss": live.origin + "/auth", "aud": live.base, "sub": "steward-app",
         "scope": "patient/*.cruds", "patient": other["id"], "hub_roles": ["steward"]}, 300)
    lab = {"coding": [{"system": CATEGORY, "code": "laboratory"}]}
    return [
        ("a steward of an institution a consent names",
         steward, lambda pid: consent(pid, {"type": "deny", "actor": [_org("H2")]}), False,
         lambda d: d),
        ("a steward beyond a bare deny", steward,
         lambda pid: consent(pid, {"type": "deny"}), False, lambda d: d),
        ("a steward a label's deny hides from", steward, lambda pid: consent(pid, {
            "type": "permit", "provision": [{"type": "deny", "securityLabel": [
                {"system": ACTCODE, "code": "PSY"}]}]}), True, lambda d: d),
        ("a scope whose query does not select it", lab_only,
         lambda pid: consent(pid, {"type": "permit"}), False,
         lambda d: {**d, "category": [lab]}),
        ("a patient token of another patient", f"Bearer {token}",
         lambda pid: consent(pid, {"type": "permit"}), False,
         lambda d: {**d, "subject": {"reference": f"Patient/{other['id']}"}}),
    ]


def _client(world: World, auth) -> httpx.Client:
    if isinstance(auth, str):
        return _http(world, None, authorization=auth)
    return _http(world, auth)


def _tells(r: httpx.Response) -> list[str]:
    """What of the stored record (H1's, version 2 or deleted at 3) an answer tells."""
    told = [h for h in ("etag", "location", "last-modified") if h in r.headers]
    told += [w for w in ("_history", "version 2", "version 3", "deleted", "amended", STORED_AT)
             if w in r.text]
    return told + ([f"status {r.status_code}"] if r.status_code not in (200, 403, 412) else [])


def test_a_write_to_a_hidden_record_answers_alike_live_or_deleted(world):
    wrong = []
    for who, auth, hide, label, as_sent in _hidden_from(world):
        for name, write in WRITES:
            live, gone = _live_and_deleted(world, hide, label)
            with _client(world, auth) as c:
                assert c.get(f"/Observation/{live['id']}").status_code == 403, who
                assert c.get(f"/Observation/{gone['id']}").status_code == 403, who
                a, b = write(c, as_sent(live)), write(c, as_sent(gone))
            what = f"{who}, {name}"
            if _answer(a, live["id"]) != _answer(b, gone["id"]):
                wrong.append((what, "live and deleted told apart", a.text, b.text))
            # no version, time or content of it, whatever the write did
            if _tells(a) or _tells(b):
                wrong.append((what, "tells", _tells(a), _tells(b)))
            if "older" in name and a.status_code == 200:  # kept as stored, untold
                with _http(world, world.writer) as c:
                    assert c.get(f"/Observation/{live['id']}").headers["etag"] == 'W/"2"', what
                    assert c.get(f"/Observation/{gone['id']}").status_code == 410, what
    assert not wrong, "\n".join(map(str, wrong))


def test_who_is_shown_the_record_is_told_of_it_as_before(world):
    live, gone = _live_and_deleted(world, lambda pid: consent(pid, {"type": "deny"}))
    outcome = {"prefer": "return=OperationOutcome"}
    with _http(world, world.writer) as c:
        r = _put(c, _stamped(live, OLDER), **outcome)
        assert r.headers["etag"] == 'W/"2"' and "the stored version 2 stays" in r.text, r.text
        r = _put(c, _stamped(gone, OLDER), **outcome)
        assert "(its deletion, version 3); it stays deleted" in r.text, r.text
        r = _put(c, gone, **{"if-match": "*"})
        assert r.status_code == 412 and "is deleted" in r.text, r.text
        r = _put(c, live, **{"if-match": 'W/"2"'})
        assert r.status_code == 200 and r.headers["etag"] == 'W/"3"', r.text
        r = _put(c, gone)
        assert r.status_code == 201 and r.headers["etag"] == 'W/"4"', r.text


# -- who records a Consent: never a way to hide another institution's records from it ------------

def _connector(world: World, inst: str):
    return world.live.client_auth(roles=("connector",), scope="system/*.cruds", institution=inst)


def _count(c: httpx.Client, path: str) -> int:
    r = c.get(path, params={"_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def test_a_connector_records_consents_only_as_its_institution_of_its_own_patients(world):
    """H2's connector cannot take H1's patient's record away from H1 (a deny naming H1, a bare
    deny naming H2 the recording institution): refused, and H1 reads, counts and changes its
    own records as before. Of its own patient, naming itself, it records one."""
    p, plain, psy = _records(world, lambda pid: None)
    h2 = _connector(world, "H2")
    deny_h1 = consent(p["id"], {"type": "deny", "actor": [_org("H1")]}, "H2")
    unnamed = {k: v for k, v in deny_h1.items() if k != "organization"}
    with _http(world, h2) as c:
        for d in (deny_h1, unnamed, consent(p["id"], {"type": "deny", "actor": [_org("H1")]}),
                  consent(p["id"], {"type": "deny"}, "H2")):
            r = _put(c, {**d, "id": unique()[:16]})
            assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome", r.text
        own = patient(rid=unique()[:16])
        assert _put(c, own).status_code == 201
        r = _put(c, consent(own["id"], {"type": "deny"}, "H1"))  # claims another's record
        assert r.status_code == 403 and "Organization/H2" in r.text
        assert _put(c, consent(own["id"], {"type": "deny"}, "H2")).status_code == 201
    with _http(world, world.writer) as c:
        assert c.get(f"/Observation/{plain['id']}").status_code == 200
        assert _count(c, f"/Patient/{p['id']}/Observation") == 2
        r = c.patch(f"/Observation/{plain['id']}", content=b'[{"op": "replace", "path": '
                    b'"/status", "value": "amended"}]',
                    headers={"content-type": "application/json-patch+json"})
        assert r.status_code == 200, r.text


def test_a_consent_never_hides_a_record_from_the_institution_that_recorded_it(world, readers):
    """Consents H2 stored before the recording institution was checked on write (a deny naming
    H1, a bare deny naming H2 its recorder, a bare deny claiming H1 as its recorder): H1's
    connector and clinicians still read, count and change what H1 recorded; the claimed
    recorder counts for nothing (H2, which wrote it, is its recorder), and whoever else the
    denies name stays held to them."""
    from hub.core import resource as res
    from hub.core.access import SYSTEM as HUB
    from hub.core.ingest import Context, Hub, Op

    p, plain, psy = _records(world, lambda pid: None)
    h3 = _connector(world, "H3")
    of_h3 = {**observation(f"Patient/{p['id']}"), "id": unique()[:16]}
    with _http(world, h3) as c:
        assert _put(c, of_h3).status_code == 201
    rogue = [consent(p["id"], {"type": "deny", "actor": [_org("H1")]}, "H1"),
             consent(p["id"], {"type": "deny"}, "H2"), consent(p["id"], {"type": "deny"}, "H1")]
    hub = Hub(world.live.settings.open_store())
    try:
        for d in rogue:
            res.validate("Consent", orjson.dumps(d), d)
            hub.execute([Op("PUT", "Consent", d["id"], d, url=f"Consent/{d['id']}")],
                        Context(source={"institution": "H2", "feed": "rest"}, actor=HUB),
                        atomic=True)
    finally:
        hub.store.close()
    time.sleep(0.3)  # another process's Consents are read within a quarter second
    with _http(world, world.writer) as c:
        assert c.get(f"/Observation/{plain['id']}").status_code == 200
        assert c.get(f"/Observation/{psy['id']}/_history").json().get("entry")
        assert _count(c, f"/Patient/{p['id']}/Observation") == 2  # its own, not H3's
        r = c.patch(f"/Observation/{plain['id']}", content=b'[{"op": "replace", "path": '
                    b'"/status", "value": "amended"}]',
                    headers={"content-type": "application/json-patch+json"})
        assert r.status_code == 200, r.text
    assert _sees(world, readers["H1"], plain) and _sees(world, readers["H1"], p)
    assert not _sees(world, readers["H1"], of_h3)  # H2's bare deny spares H2, not H1
    assert _sees(world, readers["H2"], of_h3)
    assert not _sees(world, readers["H3"], plain) and _sees(world, readers["H3"], of_h3)


def _conditional_writes(p: dict, obs: dict) -> list[tuple[str, object]]:
    """Each conditional write naming a record by its identifier, not its id."""
    pq, oq = f"identifier={p['identifier'][0]['system']}|{p['identifier'][0]['value']}", \
        f"identifier={obs['identifier'][0]['system']}|{obs['identifier'][0]['value']}"
    body = {k: v for k, v in p.items() if k != "id"}
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    return [
        ("PUT", lambda c: c.put(f"/Patient?{pq}", json=body, headers=FHIR_JSON)),
        ("DELETE", lambda c: c.delete(f"/Observation?{oq}")),
        ("PATCH", lambda c: c.patch(f"/Observation?{oq}", json=patch,
                                    headers={"content-type": "application/json-patch+json"})),
        *((f"batch {m}", lambda c, m=m, u=u, r=r: c.post("/", headers=FHIR_JSON, json={
            "resourceType": "Bundle", "type": "batch", "entry": [{**r, "request": {"method": m, "url": u}}]}))
          for m, u, r in (("PUT", f"Patient?{pq}", {"resource": body}), ("DELETE", f"Observation?{oq}", {}),
                          ("PATCH", f"Observation?{oq}", {"resource": {
                              "resourceType": "Binary", "contentType": "application/json-patch+json",
                              "data": __import__("base64").b64encode(orjson.dumps(patch)).decode()}}))),
    ]


def test_a_conditional_write_matching_a_hidden_record_of_another_institution_names_it_not(world):
    """H2's connector, a consent hiding H1's records of a patient from H2, sends a conditional
    update, patch or delete by an identifier they hold: refused, as before, but its refusal named
    the hidden record's id (as a conditional create's 412 never does). Shown, it is named as before."""
    def records(deny: bool) -> tuple[dict, dict]:
        p = {**patient(rid=unique()[:16]), "identifier": [{"system": "http://probe-c", "value": unique()}]}
        obs = {**observation(f"Patient/{p['id']}"), "id": unique()[:16],
               "identifier": [{"system": "http://probe-o", "value": unique()}]}
        with _http(world, world.writer) as c:
            for d in (p, obs, *([consent(p["id"], {"type": "deny", "actor": [_org("H2")]})] if deny else [])):
                assert _put(c, d).status_code == 201
        return p, obs

    h2 = _connector(world, "H2")
    hidden, shown = records(deny=True), records(deny=False)
    told = []
    with _http(world, h2) as c:
        for (p, obs), named in ((hidden, False), (shown, True)):
            assert c.get(f"/Patient/{p['id']}").status_code == (200 if named else 403)
            for name, write in _conditional_writes(p, obs):
                r = write(c)
                text = r.text
                status = r.json()["entry"][0]["response"]["status"][:3] if name.startswith("batch") \
                    else str(r.status_code)
                assert status in ("403", "412"), (name, text)
                ids = [rid for rid in (p["id"], obs["id"]) if rid in text]
                if bool(ids) != named:
                    told.append((name, "shown" if named else "hidden", text))
    assert not told, "\n".join(map(str, told))
    with _http(world, world.writer) as c:  # nothing was written
        for p, obs in (hidden, shown):
            assert c.get(f"/Patient/{p['id']}").headers["etag"] == 'W/"1"'
            assert c.get(f"/Observation/{obs['id']}").headers["etag"] == 'W/"1"'
