"""A write planned again after a conflict is planned from the write as it was sent.

A feed's write is more than its resource: the hub keeps what the stored version has and the
message left unsaid, takes off the marks of what the message clears or sends in part, keeps a
merge's retirement, and says so in warnings. Another writer commits between the planning and
the commit (made to happen every time by ``RacingStore``); the commit conflicts and the group is
planned again. Planned from what the first attempt made of it, the write took the stored values
it had joined in for its own (and wrote them over the other writer's), had lost its marks, and
said its warnings twice. On both backends.
"""

from __future__ import annotations

import copy

import orjson

from fhir_mapping import cleared, partial
from fhir_mapping.identifiers import RESIDENT_ID_SYSTEM
from hub.core.errors import Issue
from hub.core.ingest import Context, Hub, Op
from terminology.resident_id import check_digit
from tests.test_concurrency import put_op, versions_in_log

FEED = {"institution": "H1", "feed": "adt"}


class RacingStore:
    """The hub's store, except that right before the first commit it is asked for, another
    writer (a second Hub on the same store) commits ``racer``: a write committed between the
    planning of a group and its commit, the interleaving two concurrent writers produce."""

    def __init__(self, inner, racer: Op, source: dict):
        self.inner, self.racer, self.source = inner, racer, source

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def commit(self, commit):
        if self.racer is not None:
            racer, self.racer = self.racer, None
            assert Hub(self.inner).execute([racer], Context(source=dict(self.source)),
                                           atomic=True)[0].status in (200, 201)
        return self.inner.commit(commit)


def racing(hub: Hub, racer: Op, source: dict = FEED) -> Hub:
    """A hub on ``hub``'s store whose first commit meets ``racer`` committed just before it."""
    return Hub(RacingStore(hub.store, racer, source))


def stored(hub: Hub, rtype: str, rid: str) -> dict:
    return orjson.loads(hub.store.latest_many(rtype, [rid])[rid][1].partition(b"\n")[2])


def feed_write(hub: Hub, ops: list[Op]) -> list:
    results = hub.execute(ops, Context(source=dict(FEED)), atomic=True)
    assert all(r.status in (200, 201) for r in results), results
    return results


def patient(rid: str, *identifiers: tuple[str, str], **rest) -> dict:
    return {"resourceType": "Patient", "id": rid,
            "identifier": [{"system": s, "value": v} for s, v in identifiers], **rest}


def test_an_unsaid_identifier_changed_meanwhile_keeps_its_new_value(hub):
    """The stored record has numbers of systems A and B; a lab's message carries A alone. The
    first attempt joined the stored B (b1) into the write; meanwhile an ADT changed B to b2.
    The retry kept the b1 it had joined as the message's own, and wrote it over b2."""
    feed_write(hub, [put_op(patient("p1", ("urn:a", "a1"), ("urn:b", "b1"), gender="female"))])
    racer = put_op(patient("p1", ("urn:a", "a1"), ("urn:b", "b2"), gender="female"))
    d = patient("p1", ("urn:a", "a1"), name=[{"family": "Lab"}])
    write = put_op(d)
    sent = copy.deepcopy(d)
    feed_write(racing(hub, racer), [write])
    got = stored(hub, "Patient", "p1")
    assert [(x["system"], x["value"]) for x in got["identifier"]] == [("urn:a", "a1"),
                                                                     ("urn:b", "b2")]
    assert (got["name"], got["gender"]) == ([{"family": "Lab"}], "female")
    assert d == sent  # the resource as sent is left as it was
    assert versions_in_log(hub, "Patient", "p1") == [1, 2, 3]  # planned again after the racer


def test_what_the_message_clears_stays_cleared_when_planned_again(hub):
    """The message clears the phone (HL7 v2's ``""``): the first attempt took the mark off the
    write itself, so the retry, knowing nothing of it, kept the stored phone."""
    phone = [{"system": "phone", "value": "13800000000"}]
    feed_write(hub, [put_op(patient("p2", ("urn:a", "a1"), telecom=phone, gender="male"))])
    racer = put_op(patient("p2", ("urn:a", "a1"), telecom=phone, gender="male",
                           name=[{"family": "Renamed"}]))
    d = patient("p2", ("urn:a", "a1"))
    cleared.mark(d, ["telecom"])
    write = put_op(d)
    sent = copy.deepcopy(d)
    feed_write(racing(hub, racer), [write])
    got = stored(hub, "Patient", "p2")
    assert "telecom" not in got  # cleared, as the message said
    assert (got["gender"], got["name"]) == ("male", [{"family": "Renamed"}])  # the unsaid kept
    assert cleared.URL not in orjson.dumps(got).decode()  # the mark is never stored
    assert d == sent  # the resource as sent is left as it was, its mark on it
    assert versions_in_log(hub, "Patient", "p2") == [1, 2, 3]


def test_a_retirement_kept_keeps_the_unsaid_and_says_so_once_when_planned_again(hub):
    """A record a merge retired, written again by a feed: the write keeps the retirement and
    what the message left unsaid, and warns once. Planned again from the first attempt's
    result, it took the kept retirement for a merge the message made, and kept nothing the
    message left unsaid (the sex another writer had just stored was lost)."""
    retired = dict(patient("p3", ("urn:a", "old")), active=False,
                   link=[{"other": {"reference": "Patient/p4"}, "type": "replaced-by"}])
    feed_write(hub, [put_op(retired)])
    racer = put_op(dict(retired, gender="female"))
    d = patient("p3", ("urn:a", "old"), name=[{"family": "Lab"}])
    write = put_op(d)
    checked = Issue("informational", "checked on intake", "information")
    write.warnings = sent_warnings = [checked]
    sent = copy.deepcopy(d)
    feed_write(racing(hub, racer), [write])
    got = stored(hub, "Patient", "p3")
    assert (got["active"], got["link"]) == (False, retired["link"])
    assert (got["name"], got.get("gender")) == ([{"family": "Lab"}], "female")
    assert [w.code for w in write.warnings] == ["informational", "business-rule"]
    assert write.warnings[0] is checked and "stays retired" in write.warnings[1].diagnostics
    assert d == sent and write.warnings is not sent_warnings and sent_warnings == [checked]
    assert versions_in_log(hub, "Patient", "p3") == [1, 2, 3]


def test_a_warning_is_said_once_when_planned_again(hub):
    """The stored record's resident ID encodes a birth date decades from the one the message
    gives: not kept, with a warning. Planned again, the write said it a second time."""
    first17 = "11010119800101123"
    number = first17 + check_digit(first17)
    feed_write(hub, [put_op(patient("p6", ("urn:a", "a1"), (RESIDENT_ID_SYSTEM, number),
                                    birthDate="1980-01-01"))])
    racer = put_op(patient("p6", ("urn:a", "a1"), (RESIDENT_ID_SYSTEM, number),
                           birthDate="1980-01-01", gender="male"))
    write = put_op(patient("p6", ("urn:a", "a1"), birthDate="2020-05-01"))
    feed_write(racing(hub, racer), [write])
    assert [w.expression for w in write.warnings] == ["Patient.identifier"]
    got = stored(hub, "Patient", "p6")
    assert [x["value"] for x in got["identifier"]] == ["a1"]
    assert (got["birthDate"], got["gender"]) == ("2020-05-01", "male")
    assert versions_in_log(hub, "Patient", "p6") == [1, 2, 3]


def test_a_part_sent_joins_what_another_writer_stored_meanwhile(hub):
    """A correction resends one result of a report (``partial``): the first attempt joined the
    stored results into the write and took its mark off; a result added meanwhile was lost."""
    def report(*results: str) -> dict:
        return {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
                "code": {"text": "panel"},
                "result": [{"reference": f"Observation/{o}"} for o in results]}

    feed_write(hub, [put_op(report("o1", "o2"))])
    racer = put_op(report("o1", "o2", "o3"))
    d = report("o2")
    partial.mark(d, ["result"])
    write = put_op(d)
    sent = copy.deepcopy(d)
    feed_write(racing(hub, racer), [write])
    got = stored(hub, "DiagnosticReport", "r1")
    assert [x["reference"] for x in got["result"]] == [
        "Observation/o2", "Observation/o1", "Observation/o3"]
    assert "meta" not in got or partial.URL not in orjson.dumps(got["meta"]).decode()
    assert d == sent
    assert versions_in_log(hub, "DiagnosticReport", "r1") == [1, 2, 3]


def test_a_transaction_planned_again_keeps_its_references_and_the_new_unsaid(hub):
    """A feed's transaction: an Organization named by placeholder, and a Patient naming it,
    with one system's number unsaid. Planned again, the placeholder resolves as before (its
    rewrite undone in the resource as sent, done again) and the unsaid number is the new one."""
    feed_write(hub, [put_op(patient("p5", ("urn:a", "a1"), ("urn:b", "b1")))])
    racer = put_op(patient("p5", ("urn:a", "a1"), ("urn:b", "b2")))
    org = {"resourceType": "Organization", "id": "h1", "name": "H1"}
    d = patient("p5", ("urn:a", "a1"), managingOrganization={"reference": "urn:uuid:o"})
    ops = [put_op(org), put_op(d)]
    ops[0].full_url, ops[0].where = "urn:uuid:o", "Bundle.entry[0]"
    ops[1].full_url, ops[1].where = "urn:uuid:p", "Bundle.entry[1]"
    feed_write(racing(hub, racer), ops)
    got = stored(hub, "Patient", "p5")
    assert got["managingOrganization"] == {"reference": "Organization/h1"}
    assert [(x["system"], x["value"]) for x in got["identifier"]] == [("urn:a", "a1"),
                                                                     ("urn:b", "b2")]
    assert versions_in_log(hub, "Patient", "p5") == [1, 2, 3]
