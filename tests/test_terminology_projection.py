"""The terminology projection follows the log: a new version replaces a resource's rows, a
delete removes them, a rebuild gives the same rows as following along, and the answers of the
service move with it (its caches too). Real event stores: SQLite files and PostgreSQL databases
(``hub`` fixture)."""

from __future__ import annotations

import pytest

from hub.core.ingest import Context, Op
from projections.runner import Runner
from projections.terminology import TerminologyProjection
from terminology.rows import closure
from terminology.service import TerminologyNotFound, TerminologyService
from tests.test_terminology_operations import (
    CONTENT,
    DEPT,
    DEPT_OID,
    DEPT_V2,
    SEX,
    SEX_NS,
    SEX_OID,
    VS,
    store_content,
)


@pytest.fixture
def model(tmp_path):
    m = TerminologyProjection(tmp_path / "terminology.sqlite")
    yield m
    m.close()


@pytest.fixture
def svc(model):
    s = TerminologyService(model.path)
    yield s
    s.close()


def put(hub, d: dict) -> None:
    r = hub.execute([Op("PUT", d["resourceType"], d["id"], d, url="x")], Context(), atomic=True)[0]
    assert r.status in (200, 201), r


def delete(hub, rtype: str, rid: str) -> None:
    hub.execute([Op("DELETE", rtype, rid, url="x")], Context(), atomic=True)


def test_follows_updates_and_deletes(hub, model, svc):
    store_content(hub)
    runner = Runner(hub.store, model)
    runner.catch_up()
    assert model.stats()["t_cs"] == 5 and model.stats()["t_cm"] == 1
    assert svc.descendants(DEPT, "02") == {"02", "0201", "0202"}
    assert svc.canonical_system(SEX_OID) == SEX
    # a new version: 0202 moves under 03, 0201 goes; the old rows go with the old version
    moved = {**DEPT_V2, "concept": [c for c in DEPT_V2["concept"] if c["code"] != "02"]
             + [{"code": "02", "display": "外科"}]}
    moved["concept"] = [({**c, "property": [{"code": "parent", "valueCode": "03"}]}
                         if c["code"] == "0202" else c) for c in moved["concept"]]
    put(hub, moved)
    runner.catch_up()
    assert svc.descendants(DEPT, "02") == {"02"}
    assert svc.descendants(DEPT, "03") == {"03", "0202", "0301"}
    assert model.stats()["t_cs"] == 5
    # a delete: the naming system goes, and with it the OID of the sex code system
    delete(hub, "NamingSystem", SEX_NS["id"])
    runner.catch_up()
    assert svc.canonical_system(SEX_OID) == SEX_OID
    delete(hub, "CodeSystem", "dept-2")
    runner.catch_up()
    # version 1 is what is left of the department codes
    assert svc.code_system(DEPT).version == "1"
    assert svc.canonical_system(DEPT_OID) == DEPT_OID  # the OID was version 2's identifier
    delete(hub, "CodeSystem", "dept-1")
    runner.catch_up()
    with pytest.raises(TerminologyNotFound):
        svc.descendants(DEPT, "01")


def test_rebuild_gives_the_same_rows(hub, model, tmp_path):
    store_content(hub)
    runner = Runner(hub.store, model)
    runner.catch_up()
    put(hub, {**DEPT_V2, "concept": DEPT_V2["concept"][:2]})
    delete(hub, "ValueSet", "enum")
    runner.catch_up()
    incremental = model.dump()
    runner.rebuild()
    assert model.dump() == incremental
    # a second follower of the same file resumes where the first stopped: nothing twice
    other = TerminologyProjection(model.path)
    try:
        assert Runner(hub.store, other).catch_up() == 0
    finally:
        other.close()


def test_only_terminology_events_are_read(hub, model):
    put(hub, {"resourceType": "Patient", "id": "p1", "name": [{"family": "张"}]})
    store_content(hub, CONTENT[:1])
    put(hub, {"resourceType": "Patient", "id": "p2", "name": [{"family": "李"}]})
    runner = Runner(hub.store, model)
    runner.catch_up()
    assert model.position() == hub.store.max_notification_id()
    assert model.stats()["t_cs"] == 1


def test_service_caches_follow_the_generation(hub, model, svc):
    store_content(hub)
    runner = Runner(hub.store, model)
    runner.catch_up()
    assert svc.expand_codes(VS + "sex") == {(SEX, c) for c in "0129"}
    put(hub, {**CONTENT[2], "concept": CONTENT[2]["concept"][:2]})  # the sex codes: 0 and 1
    runner.catch_up()
    assert svc.expand_codes(VS + "sex") == {(SEX, "0"), (SEX, "1")}


CLOSURES = [
    ({"a": set(), "b": {"a"}, "c": {"b"}}, {"a": set(), "b": {"a"}, "c": {"a", "b"}}),
    ({"d": {"b", "c"}, "b": {"a"}, "c": {"a"}}, {"d": {"a", "b", "c"}, "b": {"a"}, "c": {"a"}}),
    # loops are cut, never followed forever
    ({"a": {"b"}, "b": {"a"}}, None),
    ({"a": {"a"}}, {"a": set()}),
]


@pytest.mark.parametrize("parents,expected", CLOSURES)
def test_closure(parents, expected):
    got = closure(parents)
    if expected is not None:
        assert {k: got.get(k, set()) for k in expected} == expected
    for code, ancestors in got.items():
        assert code not in ancestors


def test_a_service_before_anything_was_followed_knows_nothing(tmp_path):
    svc = TerminologyService(tmp_path / "terminology.sqlite")
    try:
        assert svc.code_system(DEPT) is None
        assert svc.canonical_system(DEPT_OID) == DEPT_OID
        with pytest.raises(TerminologyNotFound):
            svc.expand_codes(VS + "internal")
        with pytest.raises(TerminologyNotFound):
            svc.ancestors(DEPT, "01")
    finally:
        svc.close()
