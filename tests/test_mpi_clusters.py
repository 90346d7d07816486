"""Linking is clustering: a matcher's link joins two clusters, vetoes hold per cluster, person ids
follow from the Patients (not from the order of decisions). Real stores (SQLite, PostgreSQL) and
real HTTP for the stewards' answers."""

from __future__ import annotations

import pytest

from hub.core.errors import FhirError
from hub.core.ingest import Context, Op
from hub.mpi import conflicts
from hub.mpi.identity import own_person_id
from terminology.resident_id import check_digit
from tests.test_mpi_identity import groups, svc  # noqa: F401 - svc is a fixture

RESIDENT = "urn:oid:2.16.156.10011.1.3"


def rid(seq: int, birth: str = "19800101") -> str:
    """A valid resident ID number (Dongcheng, Beijing); odd ``seq``: male."""
    first = f"110101{birth}{seq:03d}"
    return first + check_digit(first)


def put(hub, *specs):
    """Patients ``(id, resident ID or None, sex or None)``."""
    ops = []
    for pid, ident, sex in specs:
        d = {"resourceType": "Patient", "id": pid, "name": [{"family": "王", "given": ["伟"]}]}
        if ident:
            d["identifier"] = [{"system": RESIDENT, "value": ident}]
        if sex:
            d["gender"] = sex
        ops.append(Op("PUT", "Patient", pid, d, url=f"Patient/{pid}"))
    assert all(r.status in (200, 201) for r in hub.execute(ops, Context(), atomic=True))




def person_of(svc, patient):
    with svc.person.read() as c:
        return svc.person.person_of(c, patient)


def link(svc, p, *cands):
    return svc.auto_decide(f"Patient/{p}", "link", [f"Patient/{x}" for x in cands], 0.99999,
                           {}, "t")


def test_keys_and_conflicts_are_per_cluster():
    male = rid(11)
    assert conflicts.keys_of({"identifier": [{"system": RESIDENT, "value": male}],
                              "gender": "male"}).ids == ((RESIDENT, male),)
    # a number contradicting the record's sex (a parent's) is no key of this Patient
    assert conflicts.keys_of({"identifier": [{"system": RESIDENT, "value": male}],
                              "gender": "female"}).ids == ()
    # a wrong check character, or another system, is no hard key either
    assert conflicts.keys_of({"identifier": [{"system": RESIDENT, "value": male[:-1] + "0"
                                              if male[-1] != "0" else male[:-1] + "1"}]}).ids == ()
    a = ("Patient/a", conflicts.Keys(((RESIDENT, male),), "male"))
    b = ("Patient/b", conflicts.NONE)
    c = ("Patient/c", conflicts.Keys(((RESIDENT, rid(13)),), None))
    d = ("Patient/d", conflicts.Keys((), "female"))
    assert conflicts.conflict([a], [b]) is None
    why = conflicts.conflict([a, b], [c])
    assert "Patient/a" in why and "Patient/c" in why and RESIDENT in why
    assert male not in why  # the values never reach an answer or a log
    assert "sexes" in conflicts.conflict([b, a], [d])


def test_a_link_joins_both_clusters_whatever_the_order(hub, svc):
    put(hub, *[(x, None, None) for x in ("a1", "a2", "b1", "b2")])
    link(svc, "a2", "a1")
    link(svc, "b2", "b1")
    assert groups(svc) == [["Patient/a1", "Patient/a2"], ["Patient/b1", "Patient/b2"]]
    # a2 is certain of b1: all four are one person (before, a2 alone moved and a1 was stranded)
    link(svc, "a2", "b1")
    assert groups(svc) == [["Patient/a1", "Patient/a2", "Patient/b1", "Patient/b2"]]
    ids = {own_person_id(svc.person, _NoRows(), f"Patient/{x}") for x in ("a1", "a2", "b1", "b2")}
    assert person_of(svc, "Patient/b2") == min(ids)  # the least own id survives
    # every earlier id still resolves to the survivor
    with svc.person.read() as c:
        assert {svc.person.survivor(c, x) for x in ids if svc.person.person_row(c, x)} == {min(ids)}


class _NoRows:
    """A snapshot without persons: the first-choice own id of a Patient."""

    def execute(self, *a):
        pass

    def fetchone(self):
        return None


def test_a_bridge_without_id_never_joins_two_numbers(hub, svc):
    put(hub, ("x", rid(11), None), ("y", None, None), ("z", rid(13), None),
        ("m", None, "male"), ("n", None, None), ("f", None, "female"))
    svc.auto_decide("Patient/z", "new", [], 0.0, {}, "t")
    link(svc, "y", "x")
    evs = link(svc, "y", "z")  # certain by the pair, impossible for the cluster
    assert groups(svc) == [["Patient/x", "Patient/y"], ["Patient/z"]]
    assert [e.event for e in evs] == ["ReviewOpened"]  # a steward decides
    assert evs[-1].data["candidates"] == ["Patient/z"]
    assert link(svc, "y", "z") == []  # asked again: still one review
    # the same the other way round, through the candidate's side
    link(svc, "n", "m")
    assert [e.event for e in link(svc, "f", "n")][-1] == "ReviewOpened"
    assert ["Patient/m", "Patient/n"] in groups(svc) and ["Patient/f"] in groups(svc)


def test_stewards_are_refused_a_conflicting_person(hub, svc):
    put(hub, ("x", rid(11), None), ("y", None, None), ("z", rid(13), None), ("w", None, None))
    link(svc, "y", "x")
    link(svc, "w", "z")
    px, pz = person_of(svc, "Patient/x"), person_of(svc, "Patient/z")
    for call in (lambda: svc.link("Patient/z", px, "steward-li"),
                 lambda: svc.merge(pz, px, "steward-li"),
                 lambda: svc.merge(px, pz, "steward-li")):
        with pytest.raises(FhirError) as e:
            call()
        assert e.value.status == 409
        why = str(e.value)
        assert "Patient/x" in why and "Patient/z" in why and RESIDENT in why
    svc.link("Patient/w", px, "steward-li")  # no number: allowed, it moves alone
    assert groups(svc) == [["Patient/w", "Patient/x", "Patient/y"], ["Patient/z"]]


def test_unmerge_splits_a_join_exactly_and_the_matcher_leaves_it(hub, svc):
    put(hub, *[(x, None, None) for x in ("a1", "a2", "b1", "b2")])
    link(svc, "a2", "a1")
    link(svc, "b2", "b1")
    pa, pb = person_of(svc, "Patient/a1"), person_of(svc, "Patient/b1")
    link(svc, "a2", "b1")
    loser = max(pa, pb)
    svc.unmerge(loser, "steward-li", "two people")
    assert groups(svc) == [["Patient/a1", "Patient/a2"], ["Patient/b1", "Patient/b2"]]
    # the steward's split stands: the matcher does not join the two clusters again
    assert link(svc, "a2", "b1") == [] and link(svc, "b2", "a1") == []
    assert groups(svc) == [["Patient/a1", "Patient/a2"], ["Patient/b1", "Patient/b2"]]
    # a new Patient may still join one of them
    put(hub, ("a3", None, None))
    link(svc, "a3", "a1")
    assert ["Patient/a1", "Patient/a2", "Patient/a3"] in groups(svc)


def _op(client, name: str, **values):
    body = {"resourceType": "Parameters",
            "parameter": [{"name": k, "valueString": v} for k, v in values.items()]}
    return client.post(f"/Person/${name}", json=body,
                       headers={"content-type": "application/fhir+json",
                                "x-hub-user": "steward-li"})


def test_a_stewards_conflicting_link_or_merge_is_a_409_naming_it(client):
    import uuid

    pre = uuid.uuid4().hex[:8]
    x, z = f"{pre}x", f"{pre}z"
    for pid, ident in ((x, rid(11)), (z, rid(13))):
        r = client.put(f"/Patient/{pid}", json={
            "resourceType": "Patient", "id": pid, "identifier": [{"system": RESIDENT,
                                                                  "value": ident}]},
            headers={"content-type": "application/fhir+json"})
        assert r.status_code in (200, 201), r.text
    px = _op(client, "link", patient=f"Patient/{x}").json()["id"]
    pz = _op(client, "link", patient=f"Patient/{z}").json()["id"]
    for r in (_op(client, "link", patient=f"Patient/{z}", person=f"Person/{px}"),
              _op(client, "merge", source=f"Person/{pz}", target=f"Person/{px}")):
        assert r.status_code == 409, r.text
        issue = r.json()["issue"][0]
        assert r.json()["resourceType"] == "OperationOutcome" and issue["code"] == "conflict"
        assert f"Patient/{x}" in issue["diagnostics"] and f"Patient/{z}" in issue["diagnostics"]
        assert RESIDENT in issue["diagnostics"] and rid(11) not in issue["diagnostics"]
    # nothing changed
    assert [x_["target"]["reference"] for x_ in client.get(f"/Person/{px}").json()["link"]] \
        == [f"Patient/{x}"]


def test_a_patient_updated_to_contradict_its_cluster_leaves_it(hub, svc):
    put(hub, ("x", rid(11), None), ("y", None, None), ("z", None, None))
    link(svc, "y", "x")
    link(svc, "z", "y")
    assert groups(svc) == [["Patient/x", "Patient/y", "Patient/z"]]
    put(hub, ("z", rid(13), None))  # z's record now carries another number
    # the matcher re-decides z: still certain of y (nothing conflicts in that pair), but the
    # person holds x's number: z leaves, and its join with y waits for a steward
    evs = link(svc, "z", "y")
    assert [e.event for e in evs] == ["Unlinked", "ReviewOpened"]
    assert groups(svc) == [["Patient/x", "Patient/y"], ["Patient/z"]]


PASSPORT = "urn:example:passport"


def test_configured_unique_systems_are_hard_keys_of_the_cluster(hub, svc):
    from hub.mpi.identifiers import Roles

    roles = Roles({PASSPORT: "unique"})
    one = {"identifier": [{"system": PASSPORT, "value": "e1"}, {"system": PASSPORT, "value": "E2"}]}
    two = {"identifier": [{"system": PASSPORT, "value": "E3"}]}
    assert conflicts.keys_of(two) == conflicts.NONE  # not configured: not read
    k1, k2 = conflicts.keys_of(one, roles), conflicts.keys_of(two, roles)
    assert k1.ids == ((PASSPORT, "E1"), (PASSPORT, "E2"))
    # two values on one Patient are one person's; a third value elsewhere is someone else's
    assert conflicts.conflict([("Patient/a", k1)],
                              [("Patient/b", conflicts.Keys(((PASSPORT, "E2"),), None))]) is None
    assert PASSPORT in conflicts.conflict([("Patient/a", k1)], [("Patient/b", k2)])
    # the service reads them with the roles it is given (the candidate index's, in a server)
    ops = [Op("PUT", "Patient", x, {"resourceType": "Patient", "id": x, "identifier": [
        {"system": PASSPORT, "value": v}]} if v else {"resourceType": "Patient", "id": x},
        url=f"Patient/{x}") for x, v in (("pa", "E1"), ("pb", None), ("pc", "E9"))]
    assert all(r.status in (200, 201) for r in hub.execute(ops, Context(), atomic=True))
    svc.roles = lambda: roles
    for x in ("pa", "pb", "pc"):
        svc.auto_decide(f"Patient/{x}", "new", [], 0.0, {}, "t")
    link(svc, "pb", "pa")
    assert [e.event for e in link(svc, "pb", "pc")] == ["ReviewOpened"]
    assert groups(svc) == [["Patient/pa", "Patient/pb"], ["Patient/pc"]]
