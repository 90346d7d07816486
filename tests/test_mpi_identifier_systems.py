"""Identifier systems as configuration (hub.mpi.identifiers): the shipped table, NamingSystems stored
in the hub, and what normalisation, comparison and the candidate index make of them."""

from __future__ import annotations

from hub.core import httpclient
from hub.core.ingest import Context, Op
from hub.mpi import identifiers
from hub.mpi import weights as W
from hub.mpi.candidates import IdentityCandidates
from hub.mpi.compare import compare
from hub.mpi.identifiers import ROLE_EXTENSION, Roles, naming_system_roles, roles_from
from hub.mpi.incremental import IncrementalMatcher
from hub.mpi.matcher import Matcher
from hub.mpi.normalise import RESIDENT_ID, features
from projections.runner import Runner

PASSPORT = "urn:oid:2.16.156.10011.99.77.1"  # a system the shipped table does not know
CARD = "urn:oid:2.16.156.10011.1.19"
HEALTH_RECORD = "urn:oid:2.16.156.10011.1.2"


def naming_system(role: str | None = "unique", type_code: str | None = None, **kw) -> dict:
    ns = {"resourceType": "NamingSystem", "id": "passport", "name": "Passport", "status": "active",
          "kind": "identifier", "date": "2026-12-01",
          "uniqueId": [{"type": "oid", "value": PASSPORT.removeprefix("urn:oid:")}]}
    if role:
        ns["extension"] = [{"url": ROLE_EXTENSION, "valueCode": role}]
    if type_code:
        ns["type"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": type_code}]}
    ns.update(kw)
    return ns


def patient(pid: str, passport: str | None, name: str = "张伟", **kw) -> dict:
    p = {"resourceType": "Patient", "id": pid, "name": [{"text": name}], "gender": "male",
         "birthDate": "1980-01-02", "identifier": []}
    if passport:
        p["identifier"].append({"system": PASSPORT, "value": passport})
    p.update(kw)
    return {k: v for k, v in p.items() if v != []}  # FHIR JSON has no empty arrays


def test_naming_system_declares_roles_by_extension_or_type():
    assert naming_system_roles(naming_system("unique")) == {PASSPORT: "unique"}
    assert naming_system_roles(naming_system(None, "NNCHN")) == {PASSPORT: "unique"}
    assert naming_system_roles(naming_system(None, "PPN")) == {PASSPORT: "identifying"}
    assert naming_system_roles(naming_system("ignored", "NI")) == {PASSPORT: "ignored"}  # extension wins
    assert naming_system_roles(naming_system(None, "MR")) == {}  # a record number: not configured
    assert naming_system_roles(naming_system(status="retired")) == {}
    assert naming_system_roles(naming_system(kind="codesystem")) == {}
    uri = naming_system(uniqueId=[{"type": "uri", "value": "https://ids.example/passport"},
                                  {"type": "uuid", "value": "3f1c0c1e-0000-4000-8000-000000000000"}])
    assert naming_system_roles(uri) == {"https://ids.example/passport": "unique"}
    # the resident ID number and the health card keep their own rules
    builtin = naming_system("ignored", uniqueId=[{"type": "oid", "value": "2.16.156.10011.1.3"}])
    assert roles_from([builtin]).role(RESIDENT_ID) == "unique"
    assert Roles().role(HEALTH_RECORD) == "identifying" and Roles().role(PASSPORT) is None


def test_normalisation_reads_systems_by_their_role():
    p = patient("a", " e1234567 ", identifier=[
        {"system": PASSPORT, "value": " e1234567 "}, {"system": HEALTH_RECORD, "value": "HR-1"},
        {"system": "urn:oid:1.2.3.4", "value": "MRN-9"}, {"system": PASSPORT, "value": "无"},
        {"system": CARD, "value": "c1"}])
    f = features(p)  # the shipped table: the passport is not read
    assert f["x"] == sorted([f"{PASSPORT}|E1234567", f"{HEALTH_RECORD}|HR-1", "urn:oid:1.2.3.4|MRN-9"])
    assert f["uid"] == [] and f["oid"] == [f"{HEALTH_RECORD}|HR-1"] and f["hc"] == "C1"
    f = features(p, roles_from([naming_system("unique")]))
    assert f["uid"] == [f"{PASSPORT}|E1234567"]
    assert f["oid"] == sorted([f"{PASSPORT}|E1234567", f"{HEALTH_RECORD}|HR-1"])
    f = features(p, roles_from([naming_system("identifying")]))
    assert f["uid"] == [] and f"{PASSPORT}|E1234567" in f["oid"]


def test_a_unique_system_vetoes_on_disagreement_and_agrees_strongly():
    roles = roles_from([naming_system("unique")])
    a = features(patient("a", "E1"), roles)
    twin = features(patient("b", "E2"), roles)  # same name and birth date, another passport
    levels, vetoes = compare(a, twin)
    assert "identifier_conflict" in vetoes and levels["id"] == "different"
    renamed = features(patient("c", "E1", name="李明"), roles)
    levels, vetoes = compare(a, renamed)
    assert levels["id"] == "exact" and not vetoes
    assert compare(a, features(patient("d", None), roles))[0].get("id") is None  # absent: nothing
    # configured only identifying: a different value says nothing
    loose = roles_from([naming_system("identifying")])
    levels, vetoes = compare(features(patient("a", "E1"), loose), features(patient("b", "E2"), loose))
    assert not vetoes and "id" not in levels
    assert identifiers.compare_unique({"uid": [f"{PASSPORT}|E1", f"{PASSPORT}|E9"]},
                                      {"uid": [f"{PASSPORT}|E9"]}) == (True, False)


def put(hub, d: dict) -> None:
    hub.execute([Op("PUT", d["resourceType"], d["id"], d, url=f"{d['resourceType']}/{d['id']}")],
                Context(), atomic=True)


def delete(hub, rtype: str, rid: str) -> None:
    hub.execute([Op("DELETE", rtype, rid, None, url=f"{rtype}/{rid}")], Context(), atomic=True)


def test_a_stored_naming_system_configures_the_index_and_matcher(hub, tmp_path):
    index = IdentityCandidates(tmp_path / "ic.sqlite")
    calls: list[tuple] = []
    follower = IncrementalMatcher(index, Matcher(index, W.load()), lambda *a: calls.append(a))
    runner = Runner(hub.store, follower)
    put(hub, patient("a", "E1"))
    put(hub, patient("b", "E2"))  # same name, sex and birth date: another passport
    runner.catch_up()
    assert index.features_of("Patient/b")["uid"] == []
    ranked = follower.matcher.match(index.features_of("Patient/b"), exclude={"Patient/b"},
                                    keep_vetoed=True)
    assert ranked and not ranked[0].vetoes
    put(hub, naming_system("unique"))  # configured after the Patients: they are read again
    runner.catch_up()
    assert index.features_of("Patient/a")["uid"] == [f"{PASSPORT}|E1"]
    assert index.roles.role(PASSPORT) == "unique"
    ranked = follower.matcher.match(index.features_of("Patient/b"), exclude={"Patient/b"},
                                    keep_vetoed=True)
    assert [c.ref for c in ranked] == ["Patient/a"] and ranked[0].vetoes == ["identifier_conflict"]
    # a Patient named otherwise but carrying a's passport is found through it (a blocking key)
    put(hub, patient("c", "E1", name="王芳"))
    runner.catch_up()
    found = follower.matcher.match(index.features_of("Patient/c"), exclude={"Patient/c"},
                                   keep_vetoed=True)
    assert [c.ref for c in found][:1] == ["Patient/a"]
    assert found[0].evidence["id"]["level"] == "exact"
    # a rebuild replays the NamingSystem and gives the same index
    before = sorted((f["ref"], f) for _, f in index.iter_all())
    Runner(hub.store, index).rebuild()
    assert sorted((f["ref"], f) for _, f in index.iter_all()) == before
    assert index.roles.role(PASSPORT) == "unique"
    # deleting the NamingSystem puts the shipped table back
    delete(hub, "NamingSystem", "passport")
    runner.catch_up()
    assert index.features_of("Patient/a")["uid"] == [] and index.roles.role(PASSPORT) is None
    index.close()


def test_a_naming_system_put_over_http_keeps_two_passport_holders_apart(tmp_path, monkeypatch):
    """``hub serve`` with automatic matching: a NamingSystem declaring the passport unique, PUT like
    any resource, makes two people of the same name, sex, birth date and phone two persons, while
    a pair without passports and otherwise alike is linked."""
    import time

    import httpx

    from hub.core.config import Settings

    from .conftest import LiveServer

    fhir = {"content-type": "application/fhir+json"}
    monkeypatch.setenv("HUB_MPI_AUTOMATCH", "1")
    with LiveServer(Settings(data_dir=tmp_path)) as srv, httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
        r = c.put("/NamingSystem/passport", json=naming_system("unique"), headers=fhir)
        assert r.status_code == 201, r.text
        phone = [{"system": "phone", "value": "13917263548"}]
        other = [{"system": "phone", "value": "13900139000"}]
        for body in (patient("h-a", "E1", telecom=phone), patient("h-b", "E2", telecom=phone),
                     patient("h-c", None, name="刘洋", telecom=other),
                     patient("h-d", None, name="刘洋", telecom=other)):
            r = c.put(f"/Patient/{body['id']}", json=body, headers=fhir)
            assert r.status_code == 201, r.text

        def person_of(pid: str) -> dict | None:
            b = c.get("/Person", params={"patient": f"Patient/{pid}"}).json()
            return b["entry"][0]["resource"] if b.get("entry") else None

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            d = person_of("h-d")
            if d and len(d.get("link", [])) == 2:
                break
            time.sleep(0.2)
        assert {x["target"]["reference"] for x in person_of("h-c")["link"]} == {
            "Patient/h-c", "Patient/h-d"}  # decided after h-a and h-b (log order)
        a, b = person_of("h-a"), person_of("h-b")
        assert a is not None and b is not None and a["id"] != b["id"]
        assert [x["target"]["reference"] for x in a["link"]] == ["Patient/h-a"]


def test_unique_identifiers_of_a_patient_for_cluster_checks():
    roles = roles_from([naming_system("unique")])
    p = patient("a", " e1 ", identifier=[{"system": PASSPORT, "value": " e1 "},
                                          {"system": PASSPORT, "value": "-"},
                                          {"system": HEALTH_RECORD, "value": "HR-1"},
                                          {"system": RESIDENT_ID, "value": "11010519491231002X"}])
    assert identifiers.unique_identifiers(p, roles) == [(PASSPORT, "E1")]
    assert identifiers.unique_identifiers(p) == []  # the shipped table does not know the passport
