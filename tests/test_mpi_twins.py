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


# -- fillers and areas are nobody's evidence: two namesakes through the write path -----------------

DISTRICT = {"url": "https://fhir-region-hub.example/StructureDefinition/administrative-division",
            "valueCode": "410102"}


def registered(pid: str, name: str, sex: str, born: str, org: str, *, line: str | None = None,
               phone: str | None = None, id_: str | None = None) -> dict:
    """A registration at an institution: a name, sex, birth date and district, and what is given."""
    p: dict = {"resourceType": "Patient", "id": pid, "name": [{"text": name}], "gender": sex,
               "birthDate": born, "managingOrganization": {"reference": f"Organization/{org}"},
               "address": [{"extension": [DISTRICT], **({"line": [line]} if line else {})}]}
    if phone:
        p["telecom"] = [{"system": "phone", "value": phone}]
    if id_:
        p["identifier"] = [{"system": RESIDENT_ID, "value": id_}]
    return p


def held_for(region, a: str, b: str) -> str | None:
    """The hold of the open review asking whether ``a`` and ``b`` are one person, else None."""
    svc = region.svc
    svc.sync()
    with svc.person.read() as c:
        for r in svc.person.open_reviews(c):
            pair = {r["patient"], *r["candidates"]}
            if {f"Patient/{a}", f"Patient/{b}"} <= pair:
                other = f"Patient/{b}" if r["patient"] == f"Patient/{a}" else f"Patient/{a}"
                return r["evidence"].get(other, {}).get("fields", r["evidence"].get(other, {})) \
                    .get("hold", {}).get("level")
    return None


NAMESAKES = [  # (name, sex, birth date, what both give, the hold)
    *[("王芳", "female", "1900-01-01", dict(line=v), "no-own-evidence")
      for v in ("不详", "无", "未知", "地址不详", "无固定住所", "不详不详", "暂无", "无地址", "不明", "空",
                "N/A", "Unknown", "none", "NULL", "同上", "见上", " 不 详 。", "（不详）", "不詳")],
    ("无名氏", "male", "1900-01-01", dict(line="不详"), "no-own-evidence"),
    *[("刘洋", "male", "1979-11-12", dict(line=v), "no-own-evidence")
      for v in ("河南省郑州市中原区", "郑州市", "中原区", "河南郑州", "郑州市中原区不详")],
    *[("张伟", "male", "1966-02-03", dict(phone=v), "no-own-evidence")
      for v in ("0371-88888888", "0371-12345678", "0755-87654321", "0371-6666666")],
    ("新生儿", "female", "2024-03-01", dict(phone="13469153708", line="人民路185号16栋3单元405室"),
     "newborns-unmarked"),
    ("Li, Baby Boy", "male", "2024-03-01", dict(phone="13469153708", line="人民路185号16栋3单元405室"),
     "newborns-unmarked"),
    ("BABY GIRL", "female", "2024-03-01", dict(phone="13469153708", line="人民路185号16栋3单元405室"),
     "newborns-unmarked"),
]


@pytest.mark.parametrize("name, sex, born, given, why", NAMESAKES)
def test_two_namesakes_sharing_only_a_filler_are_held(region, name, sex, born, given, why):
    """Two institutions register a name, a sex, a birth date and a district, and a filler: an
    address that places no one (不详, 郑州市), a landline's filler after a four-digit area code, a
    newborn's placeholder name. Matched as they arrive: never one person, a steward asks."""
    got = region(registered("n1", name, sex, born, "hospital-a", **given),
                 registered("n2", name, sex, born, "hospital-b", **given))
    assert got == apart("n1", "n2")
    assert held_for(region, "n1", "n2") == why


@pytest.mark.parametrize("name, sex, born, given", [
    ("王芳", "female", "1900-01-01", dict(line="河南省郑州市中原区建设路12号")),
    ("刘洋", "male", "1979-11-12", dict(line="中原区须水镇张庄村3组18号")),
    ("张伟", "male", "1966-02-03", dict(phone="0371-66321457")),
])
def test_one_person_with_an_address_or_phone_of_their_own_still_links(region, name, sex, born, given):
    got = region(registered("s1", name, sex, born, "hospital-a", **given),
                 registered("s2", name, sex, born, "hospital-b", **given))
    assert got == [["Patient/s1", "Patient/s2"]]


def test_a_resident_id_number_written_with_separators_is_the_persons():
    number = "41010219850615123" + check_digit("41010219850615123")
    plain = features(registered("a", "王磊", "male", "1985-06-15", "o", id_=number))
    for written in (f"{number[:6]}-{number[6:14]}-{number[14:]}", f"{number[:6]} {number[6:14]} {number[14:]}",
                    f"{number[:6]}－{number[6:]}"):
        f = features(registered("b", "王磊", "male", "1985-06-15", "o", id_=written))
        assert (f["id"], f["ids"]) == (plain["id"], "valid"), written
    # one failing its check with separators in it is no key, nor a typo of one
    slip = f"{number[:6]}-{number[6:17]}{'1' if number[17] != '1' else '2'}"
    assert features(registered("c", "王磊", "male", "1985-06-15", "o", id_=slip))["id"] is None


def test_one_person_whose_number_is_written_with_separators_links(region):
    number = "41010219850615123" + check_digit("41010219850615123")
    got = region(registered("r1", "王磊", "male", "1985-06-15", "hospital-a", id_=number),
                 registered("r2", "王磊", "male", "1985-06-15", "hospital-b",
                            id_=f"{number[:6]}-{number[6:14]}-{number[14:]}"))
    assert got == [["Patient/r1", "Patient/r2"]]
