"""Identity events and the person projection, on SQLite and PostgreSQL.

The matcher's interface (``auto_decide``, ``blocked_pairs``) is driven directly: it is the real
interface the incremental matcher calls. Exact person memberships are asserted after every step.
"""

from __future__ import annotations

import time

import orjson
import pytest
from fhir.resources.R4B.person import Person as PersonModel

from hub.core.errors import FhirError
from hub.core.ingest import Context, Op
from hub.mpi import qr
from hub.core.identity_events import STREAM, TOPICS
from hub.mpi.everything import person_view
from hub.mpi.identity import IdentityService
from projections.person import PersonProjection
from projections.runner import Runner
from projections.search.sqlite_index import SQLiteSearchIndex
from projections.timeline import TimelineProjection

RESIDENT = "urn:oid:2.16.156.10011.1.3"


def put_patients(hub, *specs):
    ops = []
    for rid, ident in specs:
        d = {"resourceType": "Patient", "id": rid, "name": [{"family": "王", "given": [rid]}]}
        if ident:
            d["identifier"] = [{"system": RESIDENT, "value": ident}]
        ops.append(Op("PUT", "Patient", rid, d, url=f"Patient/{rid}"))
    results = hub.execute(ops, Context(), atomic=True)
    assert all(r.status in (200, 201) for r in results)


@pytest.fixture
def svc(hub, settings):
    s = IdentityService.open(hub.store, settings.data_dir)
    yield s
    s.close()


def groups(svc) -> list[list[str]]:
    """Every person's Patients, sorted: the exact state of the index."""
    svc.sync()
    P = svc.person
    with P.read() as c:
        c.execute("SELECT patient FROM p_patient")
        patients = [r[0] for r in c.fetchall()]
        persons = {P.person_of(c, p) for p in patients}
        return sorted(sorted(P.patients(c, x)) for x in persons)


def person_of(svc, patient):
    with svc.person.read() as c:
        return svc.person.person_of(c, patient)


def rebuilt_dump(hub, settings) -> object:
    """The person projection's rows as a rebuild from the log gives them (in a file of its own)."""
    copy = PersonProjection(settings.data_dir / "person-rebuilt.sqlite")
    try:
        Runner(hub.store, copy).rebuild()
        return copy.dump()
    finally:
        copy.close()


def test_auto_decide_link_review_new_and_idempotence(hub, svc):
    put_patients(hub, ("a", "110101198001010011"), ("b", "110101198001010011"),
                 ("c", "110101199002020022"), ("d", None))
    assert [e.event for e in svc.auto_decide("Patient/a", "new", [], 1.0, {}, "r1")] == ["Linked"]
    evs = svc.auto_decide("Patient/b", "link", ["Patient/a"], 0.97,
                          {"name": 0.4, "resident_id": 0.57}, "r1")
    # b joins a's cluster: linked straight in, or founds its own person and a's merges into it
    # (whichever id is less survives: ids derive from the Patients, not from the order)
    assert [e.event for e in evs] in (["Linked"], ["Linked", "Merged"])
    assert evs[-1].data["evidence"] == {"name": 0.4, "resident_id": 0.57}
    assert evs[-1].data["by"] == {"type": "matcher", "name": "matcher"}
    assert evs[-1].data["ruleset"] == "r1" and evs[-1].data["score"] == 0.97
    # the same decision again changes nothing (re-matching is safe)
    assert svc.auto_decide("Patient/b", "link", ["Patient/a"], 0.97, {}, "r1") == []
    # a candidate without a person: the one whose id survives founds it, the other is linked in
    evs = svc.auto_decide("Patient/d", "link", ["Patient/c"], 0.9, {}, "r1")
    assert [e.event for e in evs] == ["Linked", "Linked"]
    assert evs[0].data["created"] and not evs[1].data["created"]
    assert groups(svc) == [["Patient/a", "Patient/b"], ["Patient/c", "Patient/d"]]
    # the matcher changes its mind about d: its own person again
    assert [e.event for e in svc.auto_decide("Patient/d", "new", [], 0.1, {}, "r2")] == ["Unlinked"]
    assert groups(svc) == [["Patient/a", "Patient/b"], ["Patient/c"], ["Patient/d"]]
    with svc.person.read() as c:
        assert svc.person.link_of(c, "Patient/b")["assurance"] == "level3"


def test_conflicting_identifiers_go_to_review_not_to_a_merge(hub, svc):
    # same name and birth date, two different resident ID numbers: the matcher asks a steward
    put_patients(hub, ("x1", "110101198001010011"), ("x2", "110101198001010029"))
    svc.auto_decide("Patient/x1", "new", [], 1.0, {}, "r1")
    evs = svc.auto_decide("Patient/x2", "review", ["Patient/x1"], 0.62,
                          {"name": 0.5, "birthDate": 0.3, "resident_id": -4.0}, "r1")
    assert [e.event for e in evs] == ["Linked", "ReviewOpened"]
    assert groups(svc) == [["Patient/x1"], ["Patient/x2"]]  # no silent merge
    with svc.person.read() as c:
        assert svc.person.link_of(c, "Patient/x2")["assurance"] == "level2"
        reviews = svc.person.open_reviews(c)
    assert [(r["patient"], r["candidates"], r["score"]) for r in reviews] == [
        ("Patient/x2", ["Patient/x1"], 0.62)]
    assert reviews[0]["evidence"]["resident_id"] == -4.0
    # asked again: still one review
    assert svc.auto_decide("Patient/x2", "review", ["Patient/x1"], 0.62, {}, "r1") == []
    # the steward rejects: a not-duplicate pair, and the matcher can no longer link them
    svc.reject_review(reviews[0]["id"], "steward-li", "different ID numbers")
    assert svc.blocked_pairs() == {frozenset({"Patient/x1", "Patient/x2"})}
    assert svc.auto_decide("Patient/x2", "link", ["Patient/x1"], 0.99, {}, "r2") == []
    assert groups(svc) == [["Patient/x1"], ["Patient/x2"]]


def test_review_accept_links_as_the_steward(hub, svc):
    put_patients(hub, ("r1", None), ("r2", None))
    svc.auto_decide("Patient/r1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/r2", "review", ["Patient/r1"], 0.7, {}, "r1")
    with svc.person.read() as c:
        review = svc.person.open_reviews(c)[0]["id"]
    evs = svc.accept_review(review, "steward-li")
    assert [e.event for e in evs] == ["Linked", "ReviewClosed"]
    assert groups(svc) == [["Patient/r1", "Patient/r2"]]
    with svc.person.read() as c:
        link = svc.person.link_of(c, "Patient/r2")
        assert link["assurance"] == "level4" and link["manual"]
        assert svc.person.review(c, review)["outcome"] == "accepted"
    with pytest.raises(FhirError) as e:
        svc.accept_review(review, "steward-li")
    assert e.value.status == 409


def test_accepting_a_review_decides_the_candidate_waiting_for_it_too(hub, svc):
    """Both records of a pair waited in their own persons (level2); accepting the review left
    the candidate at "waits for a review" in the person the steward made."""
    put_patients(hub, ("m1", None), ("m2", None))
    svc.auto_decide("Patient/m1", "review", ["Patient/m2"], 0.7, {}, "r1")
    svc.auto_decide("Patient/m2", "review", ["Patient/m1"], 0.7, {}, "r1")
    with svc.person.read() as c:
        assert svc.person.link_of(c, "Patient/m1")["assurance"] == "level2"
        review = next(r["id"] for r in svc.person.open_reviews(c) if r["patient"] == "Patient/m2")
    svc.accept_review(review, "steward-li")
    assert groups(svc) == [["Patient/m1", "Patient/m2"]]
    with svc.person.read() as c:
        assert {svc.person.link_of(c, p)["assurance"] for p in ("Patient/m1", "Patient/m2")} == {
            "level4"}
        assert svc.person.open_reviews(c) == []


def test_no_decision_moves_a_deleted_record(hub, svc):
    """A review whose Patient or candidate was deleted since it opened cannot be accepted: 404,
    as $link answers (it answered 200 and linked the live record into the deleted one's
    person). A deleted record can still be unlinked: its records stay current in its person's
    shared record, and a wrong link would leave them in another person's record for good."""
    put_patients(hub, ("d1", None), ("d2", None), ("d3", None))
    svc.auto_decide("Patient/d1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/d2", "review", ["Patient/d1"], 0.7, {}, "r1")
    svc.auto_decide("Patient/d3", "link", ["Patient/d1"], 1.0, {}, "r1")
    with svc.person.read() as c:
        review = svc.person.open_reviews(c)[0]["id"]
    results = hub.execute([Op("DELETE", "Patient", "d1", url="Patient/d1")], Context(), atomic=True)
    assert results[0].status in (200, 204)
    with pytest.raises(FhirError) as e:
        svc.accept_review(review, "steward-li")
    assert e.value.status == 404
    assert groups(svc) == [["Patient/d1", "Patient/d3"], ["Patient/d2"]]
    svc.unlink("Patient/d1", "steward-li")
    assert groups(svc) == [["Patient/d1"], ["Patient/d2"], ["Patient/d3"]]


def test_a_deleted_record_withdraws_the_reviews_about_it(hub, svc):
    """Deleting a Patient closes the reviews it is the subject of, and those left with no live
    candidate (outcome withdrawn); a review with a live candidate left stays. They stayed open
    on the stewards' queue, each to be refused when decided."""
    put_patients(hub, *((f"w{i}", None) for i in range(1, 5)))
    svc.auto_decide("Patient/w1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/w2", "review", ["Patient/w1"], 0.7, {}, "r1")
    svc.auto_decide("Patient/w3", "review", ["Patient/w1", "Patient/w2"], 0.7, {}, "r1")
    svc.auto_decide("Patient/w4", "review", ["Patient/w3"], 0.7, {}, "r1")

    def still_open():
        svc.sync()
        with svc.person.read() as c:
            return sorted(r["patient"] for r in svc.person.open_reviews(c))

    assert still_open() == ["Patient/w2", "Patient/w3", "Patient/w4"]
    for rid in ("w1", "w4"):
        hub.execute([Op("DELETE", "Patient", rid, url=f"Patient/{rid}")], Context(), atomic=True)
        svc.auto_decide(f"Patient/{rid}", "deleted", [], 0.0, {}, "r1")
    assert still_open() == ["Patient/w3"]  # w2 is still a live candidate of it
    closed = [r for r in svc.person.reviews(status=None) if r["patient"] == "Patient/w2"]
    assert closed[0]["outcome"] == "withdrawn"
    svc.auto_decide("Patient/w4", "deleted", [], 0.0, {}, "r1")  # again: nothing more
    hub.execute([Op("DELETE", "Patient", "w2", url="Patient/w2")], Context(), atomic=True)
    svc.auto_decide("Patient/w2", "deleted", [], 0.0, {}, "r1")
    assert still_open() == []
    with pytest.raises(ValueError):
        svc.auto_decide("Patient/w2", "deleted", ["Patient/w3"], 0.0, {}, "r1")


def test_a_merge_chain_of_any_length_keeps_every_patient_and_closes_no_loop(hub, svc):
    """Seventy persons merged one into the next: the last holds all seventy Patients, and
    merging it back into the first is refused. The chain was followed 64 steps only: two
    Patients fell out of the survivor, and the loop was allowed, leaving no active person."""
    n = 70
    put_patients(hub, *((f"m{i}", None) for i in range(n)))
    for i in range(n):
        svc.auto_decide(f"Patient/m{i}", "new", [], 1.0, {}, "r1")
    persons = [person_of(svc, f"Patient/m{i}") for i in range(n)]
    for a, b in zip(persons, persons[1:]):
        svc.merge(f"Person/{a}", f"Person/{b}", "steward-li")
    assert groups(svc) == [sorted(f"Patient/m{i}" for i in range(n))]
    assert person_of(svc, "Patient/m0") == persons[-1]
    with pytest.raises(FhirError) as e:
        svc.merge(f"Person/{persons[-1]}", f"Person/{persons[0]}", "steward-li")
    assert e.value.status == 409


@pytest.mark.parametrize("decision", ["accept", "reject"])
def test_deciding_a_review_closes_the_same_question_asked_the_other_way(hub, svc, decision):
    """Two records arriving together are each proposed against the other: deciding one left
    its mirror open on the queue, to be decided again (or differently)."""
    put_patients(hub, ("v1", None), ("v2", None))
    svc.auto_decide("Patient/v1", "review", ["Patient/v2"], 0.7, {}, "r1")
    svc.auto_decide("Patient/v2", "review", ["Patient/v1"], 0.7, {}, "r1")
    with svc.person.read() as c:
        first = svc.person.open_reviews(c)
    assert len(first) == 2
    if decision == "accept":
        svc.accept_review(first[0]["id"], "steward-li")
    else:
        svc.reject_review(first[0]["id"], "steward-li")
    with svc.person.read() as c:
        assert svc.person.open_reviews(c) == []
        assert svc.person.review(c, first[1]["id"])["outcome"] == f"{decision}ed"


def test_manual_decision_survives_rematching(hub, svc):
    put_patients(hub, ("m1", None), ("m2", None), ("m3", None))
    svc.auto_decide("Patient/m1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/m2", "link", ["Patient/m1"], 0.95, {}, "r1")
    svc.unlink("Patient/m2", "steward-li", "different mothers' names")
    assert groups(svc) == [["Patient/m1"], ["Patient/m2"]]
    # the matcher, run again with the same or any rule set, does not undo it
    for decision in ("link", "review", "new"):
        assert svc.auto_decide("Patient/m2", decision, ["Patient/m1"], 0.99, {}, "r9") == []
    assert groups(svc) == [["Patient/m1"], ["Patient/m2"]]
    # a manual link holds too, and the matcher never moves a Patient out of a person a user
    # decided about
    svc.link("Patient/m3", person_of(svc, "Patient/m1"), "steward-li")
    assert svc.auto_decide("Patient/m3", "new", [], 0.0, {}, "r9") == []
    assert svc.auto_decide("Patient/m1", "link", ["Patient/m2"], 0.99, {}, "r9") == []
    assert groups(svc) == [["Patient/m1", "Patient/m3"], ["Patient/m2"]]


def test_link_merge_unmerge_relink_sequence_and_rebuild(hub, svc, settings):
    put_patients(hub, *[(f"s{i}", None) for i in range(5)])
    for i in range(5):
        svc.link(f"Patient/s{i}", None, "steward-li")
    pa, pb, pc = (person_of(svc, f"Patient/s{i}") for i in range(3))
    svc.link("Patient/s3", pa, "steward-li")
    svc.link("Patient/s4", pb, "steward-li")
    assert groups(svc) == [["Patient/s0", "Patient/s3"], ["Patient/s1", "Patient/s4"],
                           ["Patient/s2"]]
    svc.merge(pb, pa, "steward-li", "same resident ID")
    assert groups(svc) == [["Patient/s0", "Patient/s1", "Patient/s3", "Patient/s4"],
                           ["Patient/s2"]]
    assert person_of(svc, "Patient/s4") == pa
    # a Patient linked to the merged person lands on the survivor
    svc.link("Patient/s2", pb, "steward-li")
    assert person_of(svc, "Patient/s2") == pa
    # the Person views: the survivor lists everyone; the merged one points to it
    view = person_view(svc, hub.store, pa)
    assert sorted(x["target"]["reference"] for x in view["link"]) == [
        f"Patient/s{i}" for i in range(5)]
    PersonModel.model_validate_json(orjson.dumps(view))
    merged = person_view(svc, hub.store, pb)
    assert merged["active"] is False and merged["link"] == [
        {"target": {"reference": f"Person/{pa}"}, "assurance": "level4"}]
    PersonModel.model_validate_json(orjson.dumps(merged))
    with pytest.raises(FhirError) as e:
        svc.merge(pb, pc, "steward-li")
    assert e.value.status == 409
    # unmerge: pb has exactly what it had, s2 stays with the survivor
    svc.unmerge(pb, "steward-li")
    assert groups(svc) == [["Patient/s0", "Patient/s2", "Patient/s3"],
                           ["Patient/s1", "Patient/s4"]]
    # relink s3 to pb, then a not-duplicate pair stops a link and a merge
    svc.link("Patient/s3", pb, "steward-li")
    svc.unlink("Patient/s2", "steward-li")
    svc.not_duplicate("Patient/s2", "Patient/s0", "steward-li")
    with pytest.raises(FhirError) as e:
        svc.link("Patient/s2", pa, "steward-li")
    assert e.value.status == 409
    with pytest.raises(FhirError) as e:
        svc.not_duplicate("Patient/s1", "Patient/s3", "steward-li")  # they share a person
    assert e.value.status == 409
    final = [["Patient/s0"], ["Patient/s1", "Patient/s3", "Patient/s4"], ["Patient/s2"]]
    assert groups(svc) == final
    # a rebuild from the log gives the same rows
    before = svc.person.dump()
    assert rebuilt_dump(hub, settings) == before
    Runner(hub.store, svc.person).rebuild()
    assert svc.person.dump() == before and groups(svc) == final


def test_hostile_and_unknown_input(hub, svc):
    put_patients(hub, ("h1", None), ("h2", None))
    for bad in ("h1", "Observation/1", "Patient/", "Patient/a b", None, 7):
        with pytest.raises(ValueError):
            svc.auto_decide(bad, "new", [], 1.0, {}, "r1")
    with pytest.raises(ValueError):
        svc.auto_decide("Patient/h1", "merge", [], 1.0, {}, "r1")
    with pytest.raises(ValueError):
        svc.auto_decide("Patient/h1", "link", [], 1.0, {}, "r1")
    # the matcher follows the log: unknown (deleted) Patients are skipped, not errors
    assert svc.auto_decide("Patient/nobody", "new", [], 1.0, {}, "r1") == []
    assert [e.event for e in svc.auto_decide("Patient/h1", "link", ["Patient/gone"], 0.99, {},
                                             "r1")] == ["Linked"]
    assert groups(svc) == [["Patient/h1"]]
    for call in (lambda: svc.link("Patient/h1", "no-such-person", "u"),
                 lambda: svc.merge("nope", "nada", "u"),
                 lambda: svc.unmerge("nope", "u"),
                 lambda: svc.unlink("Patient/h2", "u"),
                 lambda: svc.accept_review("0" * 32, "u"),
                 lambda: svc.link("Patient/zz", None, "u")):
        with pytest.raises(FhirError) as e:
            call()
        assert e.value.status == 404
    with pytest.raises(FhirError) as e:
        svc.link("Patient/h1", None, "")  # nobody named
    assert e.value.status == 400
    with pytest.raises(FhirError) as e:
        svc.link("Patient/h1", None, "x", reason="bad\x00reason")
    assert e.value.status == 400


def test_identity_events_stay_out_of_resource_indexes(hub, svc, settings):
    put_patients(hub, ("i1", "110101198001010011"), ("i2", None))
    svc.auto_decide("Patient/i1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/i2", "review", ["Patient/i1"], 0.5, {}, "r1")
    store = hub.store
    notes = store.notifications(1, 100)
    kinds = [n.topic for n in notes]
    assert sum(t in TOPICS for t in kinds) == 3  # Linked (i1), Linked (i2), ReviewOpened
    assert {n.originator_id for n in notes if n.topic in TOPICS} == {STREAM}
    # resource-level reads pass them by
    assert [n.originator_id for n in store.notifications_of(["Patient"], 1, 100)] == [
        "Patient/i1", "Patient/i2"]
    assert len(store.notifications_of(["Identity"], 1, 100)) == 3
    assert [(r.rtype, r.rid) for r in store.history()] == [("Patient", "i2"), ("Patient", "i1")]
    assert store.count_history() == 2
    assert store.heads([("Identity", "mpi")]) == {}
    # the search projection follows the log across them, and a reindex keeps them out
    index = SQLiteSearchIndex(settings.data_dir / "search.sqlite")
    try:
        Runner(store, index).catch_up()
        assert index.position() == store.max_notification_id()
    finally:
        index.close()
    store.rebuild_indexes()
    assert store.count_history() == 2
    assert store.find_by_identifier("Patient", RESIDENT, "110101198001010011") == ["i1"]


def test_two_deciders_never_decide_on_stale_state(hub, settings):
    """Two services (two processes' projections) over one store: the stream's unique version
    makes the second re-decide on fresh state, never commit over the first."""
    put_patients(hub, ("c1", None), ("c2", None), ("c3", None))
    one = IdentityService.open(hub.store, settings.data_dir / "one")
    two = IdentityService.open(hub.store, settings.data_dir / "two")
    try:
        one.auto_decide("Patient/c1", "new", [], 1.0, {}, "r1")
        two.person.position()  # two has not read it yet
        # two decides about c1 too: it must see c1's person and link c2 there
        two.auto_decide("Patient/c2", "link", ["Patient/c1"], 0.9, {}, "r1")
        one.auto_decide("Patient/c3", "link", ["Patient/c2"], 0.9, {}, "r1")
        assert groups(one) == groups(two) == [["Patient/c1", "Patient/c2", "Patient/c3"]]
        versions = [e.originator_version for e in hub.store.recorder.select_events(STREAM)]
        assert versions == list(range(1, len(versions) + 1))
    finally:
        one.close()
        two.close()


def test_timeline_projection_rows_and_rebuild(hub, settings):
    put_patients(hub, ("t1", None))
    ops = [Op("PUT", "Encounter", "e1", {
        "resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/t1"},
        "period": {"start": "2024-03-01T09:00:00+08:00"}}, url="Encounter/e1"),
        Op("PUT", "Observation", "o1", {
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "glucose"}, "subject": {"reference": "Patient/t1"},
            "effectiveDateTime": "2024-03-01T10:00:00+08:00"}, url="Observation/o1"),
        Op("PUT", "Condition", "c1", {
            "resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/t1"},
            "code": {"text": "diabetes"}}, url="Condition/c1")]  # no time: its lastUpdated
    hub.execute(ops, Context(), atomic=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    model = TimelineProjection(settings.data_dir / "timeline.sqlite")
    try:
        Runner(hub.store, model).catch_up()
        rows = model.query(["t1"])
        assert [(r[1], r[2], r[4], r[6]) for r in rows] == [
            ("Encounter", "e1", "encounter", 1), ("Observation", "o1", "result", 1),
            ("Condition", "c1", "diagnosis", 0)]
        assert [r[2] for r in model.query(["t1"], kinds=["result"])] == ["o1"]
        hub.execute([Op("DELETE", "Observation", "o1", url="Observation/o1")], Context(),
                    atomic=True)
        Runner(hub.store, model).catch_up()
        assert [r[2] for r in model.query(["t1"])] == ["e1", "c1"]
        before = model.dump()
        Runner(hub.store, model).rebuild()
        assert model.dump() == before
    finally:
        model.close()


def test_qr_payloads():
    now = time.time()
    assert qr.parse("HC0001:1") == qr.Card("HC0001", False, None)
    card = qr.parse(f"HC0001:0:{int(now) + 300}")
    assert card.dynamic and card.identifier == (qr.HEALTH_CARD_SYSTEM, "HC0001")
    assert qr.parse("HC0001:0:20991231235959").expires is not None
    for bad in ("", "HC0001", "HC0001:2", "HC0001:0", f"HC0001:0:{int(now) - 1}",
                "HC0001:0:20200101000000", "HC0001:0:20251399000000", "HC 1:1", "x" * 300,
                "HC0001:0:abc", "HC0001:1:2"):
        with pytest.raises(qr.QrError):
            qr.parse(bad)


def test_cli_identity_commands(hub, settings, capsys):
    from hub.cli import main

    put_patients(hub, ("k1", None), ("k2", None))
    store_args = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        store_args += ["--database-url", settings.database_url]
    assert main(["identity", "link", "Patient/k1", "--user", "li", *store_args]) == 0
    pid = orjson.loads(capsys.readouterr().out)["id"]
    assert main(["identity", "link", "Patient/k2", "--person", pid, "--user", "li",
                 *store_args]) == 0
    view = orjson.loads(capsys.readouterr().out)
    assert view["id"] == pid and sorted(x["target"]["reference"] for x in view["link"]) == [
        "Patient/k1", "Patient/k2"]
    assert main(["identity", "unlink", "Patient/k2", *store_args]) == 2  # no user
    assert "--user" in capsys.readouterr().err
    assert main(["identity", "merge", "nope", pid, "--user", "li", *store_args]) == 2
    assert main(["identity", "review", "list", *store_args]) == 0
    assert main(["projections", "rebuild", "person", *store_args]) == 0
    capsys.readouterr()
    assert main(["identity", "show", "Patient/k2", *store_args]) == 0
    assert orjson.loads(capsys.readouterr().out)["id"] == pid
    # the identity stream reads like a resource's history: each decision, when, by whom
    assert main(["history", "Identity/mpi", *store_args]) == 0
    out = capsys.readouterr().out
    assert "Linked" in out and "by user:li" in out


def test_identity_events_are_read_by_kind_and_survive_a_reindex(hub, svc):
    """Projections read identity decisions through their own index (not a scan of the log's
    topics), and `hub reindex` derives that index again with the resource indexes."""
    put_patients(hub, ("k1", None), ("k2", None))
    svc.auto_decide("Patient/k1", "new", [], 0.0, {}, "test")
    svc.auto_decide("Patient/k2", "link", ["Patient/k1"], 0.99, {}, "test")
    before = [n.id for n in hub.store.notifications_of(["Identity"], 1, 100)]
    assert len(before) in (2, 3) and all(n.topic in TOPICS for n in
                                    hub.store.notifications_of(["Identity"], 1, 100))
    hub.store.rebuild_indexes()
    assert [n.id for n in hub.store.notifications_of(["Identity"], 1, 100)] == before
    mixed = hub.store.notifications_of(["Identity", "Patient"], 1, 100)
    assert [n.id for n in mixed] == sorted(n.id for n in mixed) and len(mixed) == len(before) + 2


# -- auto_decide_many: the same decisions batched ------------------------------------------------

BATCH_SCRIPT = [  # (patient, decision, candidates): chains, founders, blocks, manual, repeats
    ("p2", "link", ["p1"]), ("p3", "link", ["p2"]),  # a chain inside one batch
    ("p5", "link", ["p4"]),  # p4 has no person yet: founded for it
    ("p4", "link", ["p5"]),  # already together
    ("x2", "link", ["x1"]), ("x2", "review", ["x1"]),  # a not-duplicate pair
    ("m2", "link", ["m1"]),  # a user decided about m2
    ("p2", "link", ["p1"]),  # the same decision again
    ("d1", "new", []), ("p6", "link", ["d1"]),  # d1 deleted: skipped, and no candidate
    ("r1", "review", ["p1"]), ("r1", "review", ["p1"]),
    ("p3", "new", []),  # out of the chain's person again
    ("p7", "link", ["p3"]), ("p8", "review", ["p7", "p1"]), ("p9", "new", []),
]


def _batch_setup(hub, svc, pre):
    ids = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "x1", "x2", "m1", "m2", "r1",
           "d1"]
    put_patients(hub, *[(pre + i, None) for i in ids])
    svc.auto_decide(f"Patient/{pre}p1", "new", [], 1.0, {}, "r1")
    for x in ("x1", "x2"):
        svc.auto_decide(f"Patient/{pre}{x}", "new", [], 1.0, {}, "r1")
    svc.not_duplicate(f"Patient/{pre}x1", f"Patient/{pre}x2", "steward-li")
    svc.auto_decide(f"Patient/{pre}m1", "new", [], 1.0, {}, "r1")
    svc.auto_decide(f"Patient/{pre}m2", "link", [f"Patient/{pre}m1"], 0.9, {}, "r1")
    svc.unlink(f"Patient/{pre}m2", "steward-li")
    hub.execute([Op("DELETE", "Patient", pre + "d1", url=f"Patient/{pre}d1")], Context(),
                atomic=True)
    return [(f"Patient/{pre}{p}", d, [f"Patient/{pre}{c}" for c in cands], 0.9,
             {"k": 1}, "r1") for p, d, cands in BATCH_SCRIPT]


def _state_of(svc, pre):
    """Groups and open reviews of the Patients prefixed ``pre``, with the prefix taken off."""
    strip = lambda r: r.replace(f"Patient/{pre}", "Patient/")  # noqa: E731
    gs = sorted(sorted(strip(p) for p in g) for g in groups(svc)
                if g[0].startswith(f"Patient/{pre}"))
    with svc.person.read() as c:
        reviews = [(strip(r["patient"]), sorted(strip(x) for x in r["candidates"]), r["score"])
                   for r in svc.person.open_reviews(c) if r["patient"].startswith(f"Patient/{pre}")]
    return gs, reviews


def test_auto_decide_many_equals_one_by_one(hub, svc, monkeypatch):
    one = _batch_setup(hub, svc, "s")
    many = _batch_setup(hub, svc, "b")
    recorded_one = sum(len(svc.auto_decide(*item)) for item in one)
    appends = []
    real_append = svc.store.append
    monkeypatch.setattr(svc.store, "append", lambda stored: appends.append(len(stored))
                        or real_append(stored))
    # (the event counts of the two prefixes may differ by a founder or a merge: person ids
    # derive from the Patients, so which of two persons survives a join differs between them)
    assert svc.auto_decide_many(iter(many)) == sum(appends) > 0 and recorded_one > 0
    assert len(appends) < len(many)  # batched (flushed only where a decision needs the last)
    state = _state_of(svc, "s")
    assert state == _state_of(svc, "b")
    assert state == ([["Patient/m1"], ["Patient/m2"], ["Patient/p1", "Patient/p2"],
                      ["Patient/p3", "Patient/p7"], ["Patient/p4", "Patient/p5"], ["Patient/p6"],
                      ["Patient/p8"], ["Patient/p9"], ["Patient/r1"], ["Patient/x1"],
                      ["Patient/x2"]],
                     [("Patient/r1", ["Patient/p1"], 0.9),
                      ("Patient/p8", ["Patient/p1", "Patient/p7"], 0.9)])
    # all of it again: p3 now brings p7 along when it joins the chain (linking joins clusters),
    # leaves it alone, and p7's link to p3 joins the two clusters again
    assert svc.auto_decide_many(many) > 0 and sum(len(svc.auto_decide(*item)) for item in one) > 0
    again = _state_of(svc, "s")
    assert again == _state_of(svc, "b")
    assert again[0] == [["Patient/m1"], ["Patient/m2"],
                        ["Patient/p1", "Patient/p2", "Patient/p3", "Patient/p7"],
                        ["Patient/p4", "Patient/p5"], ["Patient/p6"], ["Patient/p8"],
                        ["Patient/p9"], ["Patient/r1"], ["Patient/x1"], ["Patient/x2"]]
    versions = [e.originator_version for e in hub.store.recorder.select_events(STREAM)]
    assert versions == list(range(1, len(versions) + 1))
    # a malformed item: those before it are recorded, then ValueError
    put_patients(hub, ("v1", None))
    with pytest.raises(ValueError):
        svc.auto_decide_many([("Patient/v1", "new", [], 1.0, {}, "r1"),
                              ("Patient/v2", "maybe", [], 1.0, {}, "r1")])
    assert person_of(svc, "Patient/v1") is not None


def test_auto_decide_many_replans_after_a_concurrent_decision(hub, settings, monkeypatch):
    put_patients(hub, ("q1", None), ("q2", None), ("q3", None), ("q4", None))
    one = IdentityService.open(hub.store, settings.data_dir / "one")
    two = IdentityService.open(hub.store, settings.data_dir / "two")
    try:
        real_append = hub.store.append
        calls = []

        def append(stored):
            calls.append(len(stored))
            if len(calls) == 1:  # between one's plan and its append, two decides
                two.auto_decide("Patient/q1", "new", [], 1.0, {}, "r1")
                two.auto_decide("Patient/q4", "link", ["Patient/q3"], 0.9, {}, "r1")
            return real_append(stored)

        monkeypatch.setattr(hub.store, "append", append)
        # planned against the old state: q1 and q3 had no person (founders), q4 none either
        n = one.auto_decide_many([("Patient/q2", "link", ["Patient/q1"], 0.9, {}, "r1"),
                                  ("Patient/q3", "link", ["Patient/q2"], 0.9, {}, "r1"),
                                  ("Patient/q4", "new", [], 0.1, {}, "r1")])
        assert n > 0 and len(calls) >= 4  # two's two appends, one's refused one, the retry
        assert groups(one) == groups(two) == [["Patient/q1", "Patient/q2", "Patient/q3"],
                                              ["Patient/q4"]]
        with one.person.read() as c:
            assert one.person.stream_version(c) == len(hub.store.recorder.select_events(STREAM))
        versions = [e.originator_version for e in hub.store.recorder.select_events(STREAM)]
        assert versions == list(range(1, len(versions) + 1))
    finally:
        one.close()
        two.close()


def test_a_steward_unlink_is_not_undone_through_a_third_patient(hub, svc):
    """A steward took b out of a's person (twins the matcher joined); a third record like both
    must not join them again: the matcher may add it to one side, never bridge the two."""
    put_patients(hub, ("a", None), ("b", None), ("c", None))
    svc.auto_decide("Patient/a", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/b", "link", ["Patient/a"], 0.99999, {}, "r1")
    assert groups(svc) == [["Patient/a", "Patient/b"], ["Patient/c"]] or \
        ["Patient/a", "Patient/b"] in groups(svc)
    svc.unlink("Patient/b", "steward1", "twins")
    assert person_of(svc, "Patient/a") != person_of(svc, "Patient/b")
    # the matcher finds c certain against both, b's side first
    svc.auto_decide("Patient/c", "link", ["Patient/b", "Patient/a"], 0.99999, {}, "r1")
    svc.sync()
    assert person_of(svc, "Patient/a") != person_of(svc, "Patient/b")


def test_a_link_waits_for_a_review_only_while_one_is_open(hub, svc):
    """A Patient sent to review (level2) and then joined by the matcher (its review closed as
    superseded) kept level2: a steward read a pending review that was not there."""
    put_patients(hub, ("w1", "110101198001010011"), ("w2", "110101198001010011"))
    svc.auto_decide("Patient/w1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/w2", "review", ["Patient/w1"], 0.7, {}, "r1")
    with svc.person.read() as c:
        assert svc.person.link_of(c, "Patient/w2")["assurance"] == "level2"
    svc.auto_decide("Patient/w2", "link", ["Patient/w1"], 0.99, {}, "r2")  # a fix settles it
    svc.sync()
    with svc.person.read() as c:
        assert svc.person.open_reviews(c, "Patient/w2") == []
        assert svc.person.link_of(c, "Patient/w2")["assurance"] == "level3"
    assert groups(svc) == [["Patient/w1", "Patient/w2"]]


@pytest.mark.parametrize("out", ["a", "b"])
def test_a_steward_unlink_holds_when_the_other_patient_is_matched_again(hub, svc, out):
    """Both Patients had persons of their own, joined by a merge; a steward took one out. The
    next routine update of the other Patient joined them again (the Patients left behind were
    not marked decided: the walk started from the unlinked Patient's own, merged-away person)."""
    a, b = f"Patient/ua{out}", f"Patient/ub{out}"
    put_patients(hub, (a.split("/")[1], None), (b.split("/")[1], None))
    svc.auto_decide(a, "new", [], 1.0, {}, "r1")
    svc.auto_decide(b, "new", [], 1.0, {}, "r1")
    svc.auto_decide(b, "link", [a], 0.99999, {}, "r1")
    svc.sync()
    assert person_of(svc, a) == person_of(svc, b)
    moved, stays = (a, b) if out == "a" else (b, a)
    svc.unlink(moved, "steward1", "different people, checked")
    svc.sync()
    assert person_of(svc, a) != person_of(svc, b)
    svc.auto_decide(stays, "link", [moved], 0.99999, {}, "r2")  # the other's next update
    svc.sync()
    assert person_of(svc, a) != person_of(svc, b)


def test_a_certain_match_the_matcher_may_not_join_goes_to_a_steward(hub, svc):
    """Two clusters, one shaped by a steward, certain to be one person: the matcher may not join
    them (a steward's person is joined only by a steward), and dropped it without a word. Now a
    review asks the steward."""
    put_patients(hub, ("ha1", None), ("ha2", None), ("hb1", None), ("hb2", None))
    svc.auto_decide("Patient/ha1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/ha2", "link", ["Patient/ha1"], 0.99999, {}, "r1")
    svc.sync()
    svc.link("Patient/ha2", person_of(svc, "Patient/ha1"), "steward1", "confirmed")
    svc.auto_decide("Patient/hb1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/hb2", "link", ["Patient/hb1"], 0.99999, {}, "r1")
    svc.auto_decide("Patient/hb1", "link", ["Patient/ha1"], 0.99999, {}, "r2")
    svc.sync()
    assert person_of(svc, "Patient/hb1") != person_of(svc, "Patient/ha1")  # not the matcher's
    with svc.person.read() as c:
        [review] = svc.person.open_reviews(c, "Patient/hb1")
    assert review["candidates"] == ["Patient/ha1"]


@pytest.mark.parametrize("decision", ["link", "merge"])
def test_a_link_or_merge_closes_the_reviews_it_answers(hub, svc, decision):
    """A pair asked both ways, then decided by $link or $merge: both reviews stayed open, and a
    reject of either was refused as contradicting the decision."""
    put_patients(hub, ("q1", None), ("q2", None))
    svc.auto_decide("Patient/q1", "review", ["Patient/q2"], 0.7, {}, "r1")
    svc.auto_decide("Patient/q2", "review", ["Patient/q1"], 0.7, {}, "r1")
    svc.sync()
    p1, p2 = person_of(svc, "Patient/q1"), person_of(svc, "Patient/q2")
    if decision == "link":
        svc.link("Patient/q1", p2, "steward-li", "same woman")
    else:
        svc.merge(p1, p2, "steward-li", "same woman")
    svc.sync()
    with svc.person.read() as c:
        assert [r for r in svc.person.open_reviews(c)
                if r["patient"] in ("Patient/q1", "Patient/q2")] == []
    assert person_of(svc, "Patient/q1") == person_of(svc, "Patient/q2")


def test_a_stewards_decision_ends_the_wait_for_a_review(hub, svc, settings):
    """A Patient the matcher sent to review stayed level2 ("waits for a review") after a steward
    closed its review: rejecting the pair (not-duplicate) or linking the candidate into its
    person. A steward decided: level4, and a rebuild from the log says the same."""
    put_patients(hub, ("v1", None), ("v2", None), ("v3", None), ("v4", None))
    svc.auto_decide("Patient/v1", "new", [], 1.0, {}, "r1")
    svc.auto_decide("Patient/v2", "review", ["Patient/v1"], 0.7, {}, "r1")
    svc.auto_decide("Patient/v3", "review", ["Patient/v1"], 0.7, {}, "r1")
    svc.auto_decide("Patient/v4", "review", ["Patient/v1"], 0.7, {}, "r1")

    def assurance(p: str) -> str:
        svc.sync()
        with svc.person.read() as c:
            return svc.person.link_of(c, p)["assurance"]

    assert assurance("Patient/v2") == "level2"
    svc.not_duplicate("Patient/v2", "Patient/v1", "steward-li")  # rejects v2's review
    assert assurance("Patient/v2") == "level4"
    svc.link("Patient/v1", person_of(svc, "Patient/v3"), "steward-li")  # answers v3's
    assert assurance("Patient/v3") == "level4"
    [r4] = [r["id"] for r in svc.person.reviews() if r["patient"] == "Patient/v4"]
    svc.reject_review(r4, "steward-li")
    assert assurance("Patient/v4") == "level4"
    before = svc.person.dump()
    assert rebuilt_dump(hub, settings) == before


def test_two_stewards_linking_one_patient_at_once_are_not_both_told_it_stands(
        hub, settings, monkeypatch):
    """Two stewards link one Patient to different persons at the same time, in two processes
    (two services over one store): both were told 200, the later silently undoing the earlier.
    The one whose commit collides plans again and finds the Patient moved by the other meanwhile:
    a 409 naming the Patient, the person and who moved it; nothing of its decision recorded."""
    put_patients(hub, ("k0", None), ("kx", None), ("ky", None))
    one = IdentityService.open(hub.store, settings.data_dir / "one")
    two = IdentityService.open(hub.store, settings.data_dir / "two")
    try:
        x = one.link("Patient/kx", None, "setup")[0].data["person"]
        y = one.link("Patient/ky", None, "setup")[0].data["person"]
        one.link("Patient/k0", None, "setup")
        real_append = hub.store.append
        calls = []

        def append(stored):
            calls.append(len(stored))
            if len(calls) == 1:  # between one's plan and its append, two decides
                two.link("Patient/k0", y, "steward-wang")
            return real_append(stored)

        monkeypatch.setattr(hub.store, "append", append)
        with pytest.raises(FhirError) as refused:
            one.link("Patient/k0", x, "steward-li")
        monkeypatch.undo()
        assert refused.value.status == 409
        assert str(refused.value) == (
            f"Patient/k0 was just linked to Person/{y} by steward-wang while this decision was "
            "being taken; read the Person again and decide on what it shows now")
        assert person_of(one, "Patient/k0") == y and groups(one) == groups(two)
        linked = [e for e in hub.store.recorder.select_events(STREAM)
                  if b"steward-li" in e.state]
        assert linked == []
        # a decision arriving after the other's (taken against the state it left) stands
        one.link("Patient/k0", x, "steward-li")
        assert person_of(one, "Patient/k0") == x
        # in one process the second waits for the first: what it arrived against decides
        seen = two.decision_point()
        one.link("Patient/k0", y, "steward-wang")
        with pytest.raises(FhirError) as refused:
            two.link("Patient/k0", None, "steward-li", seen=seen)
        assert refused.value.status == 409 and "by steward-wang" in str(refused.value)
        # two stewards taking the same decision at once: it stands, for both
        seen = two.decision_point()
        one.link("Patient/k0", x, "steward-wang")
        assert two.link("Patient/k0", x, "steward-li", seen=seen) == []
        assert person_of(two, "Patient/k0") == x
        # an unlink arriving before another's link is taken is not applied to the new person
        one.link("Patient/kx", y, "setup")
        seen = two.decision_point()
        one.link("Patient/k0", y, "steward-wang")
        with pytest.raises(FhirError) as refused:
            two.unlink("Patient/k0", "steward-li", seen=seen)
        assert refused.value.status == 409 and "by steward-wang" in str(refused.value)
        assert person_of(two, "Patient/k0") == y
    finally:
        one.close()
        two.close()


def test_accepting_a_review_of_several_candidates_names_one(hub, svc):
    """Candidates are listed the likeliest first (score, then fields agreeing exactly); a steward
    accepting without naming one is told the candidates instead of the first being linked."""
    put_patients(hub, ("f1b", None), ("f0a", None), ("f0b", None), ("f1a", None))
    def ev(birth: str) -> dict:
        return {"weight": 20.0, "score": 0.999965,
                "fields": {"name": {"level": "exact"}, "birth": {"level": birth}}}
    svc.auto_decide("Patient/f1b", "review", ["Patient/f0a", "Patient/f0b", "Patient/f1a"],
                    0.999965, {"Patient/f0a": ev("typo"), "Patient/f0b": ev("typo"),
                               "Patient/f1a": ev("exact")}, "r1")
    with svc.person.read() as c:
        (r,) = svc.person.open_reviews(c, "Patient/f1b")
    assert r["candidates"] == ["Patient/f1a", "Patient/f0a", "Patient/f0b"]
    with pytest.raises(FhirError) as e:
        svc.accept_review(r["id"], "steward-li", reason="looks right")
    assert e.value.status == 400 and "Patient/f1a" in str(e.value) and "Patient/f0a" in str(e.value)
    assert person_of(svc, "Patient/f1b") != person_of(svc, "Patient/f0a")  # nothing linked
    svc.accept_review(r["id"], "steward-li", "Patient/f1a", "same birth date")
    assert person_of(svc, "Patient/f1b") == person_of(svc, "Patient/f1a")
