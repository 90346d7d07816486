"""Newborn twins through the hub's write path, the automatic matcher and the identity service: two
children of one birth date and household, registered before they have names or numbers of their
own, are never one person without a steward."""

from __future__ import annotations

import pytest

from hub.core.ingest import Context, Op
from hub.mpi import weights as W
from hub.mpi.candidates import IdentityCandidates
from hub.mpi.identity import IdentityService
from hub.mpi.incremental import IncrementalMatcher, rematch_all
from hub.mpi.matcher import Matcher
from hub.mpi.normalise import RESIDENT_ID, features
from projections.person import PersonProjection
from projections.runner import Runner
from terminology.resident_id import check_digit

MOTHER_ID = "41010219900505062" + check_digit("41010219900505062")  # born 1990-05-05, female
BORN = "2024-03-01"
HOME = {"line": ["人民路185号16栋3单元405室"],
        "extension": [{"url": "https://fhir-region-hub.example/StructureDefinition/"
                              "administrative-division", "valueCode": "410102"}]}


def baby(pid: str, name: str, *, org: str, id_: str | None = None, sex: str = "male",
         **more) -> dict:
    """A newborn's registration: the mother's phone and home, maybe her resident ID number."""
    return {"resourceType": "Patient", "id": pid, "name": [{"text": name}], "gender": sex,
            "birthDate": BORN, "managingOrganization": {"reference": f"Organization/{org}"},
            "identifier": [{"system": RESIDENT_ID, "value": id_}] if id_ else [],
            "telecom": [{"system": "phone", "value": "13469153708"}], "address": [HOME], **more}


@pytest.fixture
def region(hub, settings, tmp_path):
    """``arrive(*patients)``: the Patients written through the hub and matched as ``hub serve``
    matches them; returns every person's Patients."""
    svc = IdentityService.open(hub.store, settings.data_dir)
    index = IdentityCandidates(tmp_path / "ic.sqlite")
    runner = Runner(hub.store, IncrementalMatcher.recording_with(index, Matcher(index, W.load()), svc))

    def arrive(*patients: dict) -> list[list[str]]:
        for p in patients:  # one message at a time, as feeds send them
            hub.execute([Op("PUT", "Patient", p["id"], p, url=f"Patient/{p['id']}")], Context(),
                        atomic=True)
            runner.catch_up()
        svc.sync()
        P = svc.person
        with P.read() as c:
            c.execute("SELECT patient FROM p_patient")
            persons = {P.person_of(c, r[0]) for r in c.fetchall()}
            return sorted(sorted(P.patients(c, x)) for x in persons)

    arrive.svc = svc  # type: ignore[attr-defined]
    arrive.index = index  # type: ignore[attr-defined]
    yield arrive
    index.close()
    svc.close()


def apart(*refs: str) -> list[list[str]]:
    return sorted([f"Patient/{r}"] for r in refs)


@pytest.mark.parametrize("first, second", [
    # unmarked: one on the mother's number at the maternity hospital, the other without a number
    # at the children's hospital, both 张丽之子
    (dict(name="张丽之子", id_=MOTHER_ID, org="maternity"), dict(name="张丽之子", org="children")),
    # both on the mother's number at one hospital
    (dict(name="张丽之子", id_=MOTHER_ID, org="maternity"),
     dict(name="张丽之子", id_=MOTHER_ID, org="maternity")),
    # birth orders as families say them
    (dict(name="张丽大宝", id_=MOTHER_ID, org="maternity"), dict(name="张丽二宝", org="children")),
    # the same placeholder, told apart by multipleBirthInteger alone
    (dict(name="张丽之子", id_=MOTHER_ID, org="maternity", multipleBirthInteger=1),
     dict(name="张丽之子", id_=MOTHER_ID, org="maternity", multipleBirthInteger=2)),
])
def test_newborn_twins_of_one_household_are_not_linked(region, first, second):
    assert region(baby("t1", **first), baby("t2", **second)) == apart("t1", "t2")


def test_a_placeholder_does_not_join_named_twins(region, hub):
    # the twins named later, no numbers of their own yet: each fits the placeholder, so it is
    # neither's without a steward (linked to both, it merged the twins)
    named = [baby("haoran", "王浩然", org="children"), baby("haoyu", "王浩宇", org="children")]
    placeholder = baby("ph", "张丽之子", id_=MOTHER_ID, org="maternity")
    assert region(*named, placeholder) == apart("haoran", "haoyu", "ph")


def test_a_named_twin_does_not_join_the_placeholder_its_twin_joined(region):
    # the placeholder first, one twin named (linked to it: the only child in sight), then the
    # other: certain with the placeholder, but its twin is in sight
    got = region(baby("ph", "张丽之子", id_=MOTHER_ID, org="maternity"),
                 baby("haoran", "王浩然", org="children"), baby("haoyu", "王浩宇", org="children"))
    assert ["Patient/haoyu"] in got and not any("Patient/haoyu" in g and len(g) > 1 for g in got)


def test_one_child_registered_twice_still_links(region):
    # the placeholder and the child named later, alone in its household: one person, as before
    got = region(baby("ph", "张丽之子", id_=MOTHER_ID, org="maternity"),
                 baby("haoran", "王浩然", org="children"))
    assert got == [["Patient/haoran", "Patient/ph"]]


def test_birth_order_names_are_read_from_the_table():
    f = [features(baby("x", n, org="o")) for n in ("张丽大宝", "张丽二宝", "张大宝", "欧阳大宝")]
    assert [(x["nb"], x.get("nbo"), x.get("nbp")) for x in f] == [
        (1, "大", "张丽"), (1, "二", "张丽"), (0, None, None), (0, None, None)]
    assert features(baby("x", "张丽之子", org="o", multipleBirthInteger=2))["mb"] == 2


ZHONG_ID = "11010519790101555" + check_digit("11010519790101555")


def zhong(pid: str, given: str, org: str, phone: bool = True) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "钟", "given": [given]}],
            "gender": "male", "birthDate": "1979-01-01",
            "managingOrganization": {"reference": f"Organization/{org}"},
            "identifier": [{"system": RESIDENT_ID, "value": ZHONG_ID}],
            "telecom": [{"system": "phone", "value": "13522223333"}] if phone else []}


def _groups(svc: IdentityService) -> list[list[str]]:
    svc.sync()
    P = svc.person
    with P.read() as c:
        c.execute("SELECT patient FROM p_patient")
        return sorted(sorted(P.patients(c, x)) for x in {P.person_of(c, r[0]) for r in c.fetchall()})


def _asked(svc: IdentityService) -> set[tuple[str, str]]:
    svc.sync()
    with svc.person.read() as c:
        return {(r["patient"], q) for r in svc.person.open_reviews(c) for q in r["candidates"]}


A, B, C = "Patient/bc-a", "Patient/bc-b", "Patient/bc-c"


def sibling(pid: str, given: str, born: str, org: str) -> dict:
    """A child of the 钟 household (its phone and home), no number of its own."""
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "钟", "given": [given]}],
            "gender": "female", "birthDate": born,
            "managingOrganization": {"reference": f"Organization/{org}"},
            "telecom": [{"system": "phone", "value": "13522223333"}],
            "address": [HOME]}


def test_a_pair_held_for_a_steward_is_not_joined_through_a_third_record(region, hub, tmp_path):
    """钟子涵 (2010) and 钟梓涵 (2012) of one home are held (siblings named alike); a third record
    钟子涵 born 2012-05-01 is certain of each (of one by its name, of the other by its birth date)
    and linked both, merging the sisters: it joins one and a steward is asked about the other,
    and a re-match from scratch keeps the pair apart too."""
    got = region(sibling("bc-a", "子涵", "2010-05-01", "H1"),
                 sibling("bc-b", "梓涵", "2012-05-01", "H2"))
    assert got == apart("bc-a", "bc-b")
    assert (B, A) in _asked(region.svc)
    persons = region(sibling("bc-c", "子涵", "2012-05-01", "H3"))
    assert not any({A, B} <= set(x) for x in persons), persons
    asked = _asked(region.svc)
    assert (B, A) in asked  # the held pair still waits for its steward
    assert {(C, A), (C, B)} & asked  # and the third record with it
    fresh = IdentityService(hub.store, PersonProjection(tmp_path / "rematch-person.sqlite"))
    try:
        rematch_all(region.index, Matcher(region.index, W.load()), None,
                    decide_many=fresh.auto_decide_many)
        again = _groups(fresh)
        assert not any({A, B} <= set(x) for x in again), again
        assert {(C, A), (C, B)} & _asked(fresh)
    finally:
        fresh.close()


def test_a_pair_marked_apart_is_not_joined_through_a_third_record(region):
    """A steward rejected the review of 钟子涵 and 钟梓涵 (two sisters: marked not-duplicate, no
    review open any more); a third record certain of each joins one and a steward is asked about
    the other, never both in one person."""
    region(sibling("bc-a", "子涵", "2010-05-01", "H1"), sibling("bc-b", "梓涵", "2012-05-01", "H2"))
    svc = region.svc
    with svc.person.read() as c:
        (review,) = svc.person.open_reviews(c)
    svc.reject_review(review["id"], "steward-li", "two sisters")
    persons = region(sibling("bc-c", "子涵", "2012-05-01", "H3"))
    assert not any({A, B} <= set(x) for x in persons), persons
    assert {(C, A), (C, B)} & _asked(svc)
