"""The AuditEvents' hash chain (hub.access.chain) on a real SQLite file and a real PostgreSQL
database: events sealed and written through the hub verify as intact; each kind of tampering done
with SQL straight in the event table (a changed byte, a deleted row, swapped rows, a forged row)
or through the hub (an update, a deletion) is reported with its kind; the tail cut off is found
only with an anchor; the audit writer seals in commit order; ``hub audit`` exits 0 or 1."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing

import orjson
import psycopg
import pytest

from hub import cli
from hub.access.audit import AuditWriter
from hub.access.chain import CHAIN_URL, ZERO, AuditChain, anchor_line, canonical, seal_of, verify
from hub.core.access import SYSTEM, Action, OpenPolicy
from hub.core.errors import FhirError
from hub.core.ingest import Context, Op
from hub.repository import Repository

N = 12


def audit_event(i: int) -> dict:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "action": "R",
        "recorded": f"2024-03-01T10:00:{i % 60:02d}Z",
        "outcome": "0",
        "agent": [{"who": {"display": f"user-{i:03d}"}, "requestor": True}],
        "source": {"observer": {"display": "fhir-region-hub"}},
        "entity": [{"what": {"reference": f"Person/p{i}"}}],
    }


def write(hub, chain: AuditChain | None, events: list[dict]) -> list[str]:
    ops = [Op("POST", "AuditEvent", d=chain.seal(d) if chain else d, url="AuditEvent")
           for d in events]
    results = hub.execute(ops, Context(source={"feed": "audit"}, actor=SYSTEM), atomic=False)
    assert all(not isinstance(r, FhirError) for r in results)
    return [r.rid for r in results]


@pytest.fixture
def chained(hub):
    """N sealed AuditEvents in three commits, among other resources."""
    chain = AuditChain.new()
    write(hub, None, [])
    for b in range(3):
        hub.execute([Op("POST", "Patient", d={"resourceType": "Patient", "gender": "other"},
                        url="Patient")], Context(), atomic=False)
        write(hub, chain, [audit_event(b * 4 + i) for i in range(4)])
    return hub, chain


class Db:
    """Plain SQL on the test's event store, around the hub (what an intruder with database access
    does)."""

    def __init__(self, settings):
        self.settings = settings
        self.pg = bool(settings.database_url)
        self.nid = "notification_id" if self.pg else "rowid"

    def run(self, sql: str, params: tuple = ()) -> list[tuple]:
        sql = sql.replace("{nid}", self.nid)
        if self.pg:
            with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
                cur = conn.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        with closing(sqlite3.connect(self.settings.event_store_path)) as conn, conn:
            cur = conn.execute(sql, params)
            return cur.fetchall()

    def audit_rows(self) -> list[tuple[int, str, bytes]]:
        """(nid, originator id, state) of the AuditEvents in commit order."""
        return [(n, o, bytes(s)) for n, o, s in self.run(
            "SELECT {nid}, originator_id, state FROM stored_events "
            "WHERE substr(originator_id, 1, 11) = 'AuditEvent/' ORDER BY {nid}")]


def kinds(report) -> list[str]:
    return sorted(report.kinds())


# -- sealing ------------------------------------------------------------------------------------------

def test_a_seal_is_an_extension_over_the_content_without_id_and_meta():
    chain = AuditChain("c1")
    first = chain.seal(audit_event(1))
    second = chain.seal({**audit_event(2), "id": "x", "meta": {"versionId": "3"}})
    s1, s2 = seal_of(first), seal_of(second)
    assert (s1.chain, s1.seq, s1.previous) == ("c1", 1, ZERO)
    assert (s2.seq, s2.previous) == (2, s1.hash)
    assert chain.state() == (2, s2.hash)
    assert [e["url"] for e in first["extension"]] == [CHAIN_URL]
    assert canonical(first) == canonical(audit_event(1))  # the extension itself is left out
    assert canonical(second) == canonical(audit_event(2))  # so are id and meta
    assert "extension" not in audit_event(1)  # the caller's dict is not changed
    again = chain.seal(first)  # an earlier seal is replaced, not added to
    assert len(again["extension"]) == 1 and seal_of(again).seq == 3


def test_content_the_hub_refuses_is_refused_before_the_chain_moves():
    chain = AuditChain("c1")
    with pytest.raises(FhirError):
        chain.seal({**audit_event(1), "outcomeDesc": "bad\x00text"})
    assert chain.state() == (0, ZERO)


# -- an intact store --------------------------------------------------------------------------------

def test_sealed_events_verify_as_intact(chained):
    hub, chain = chained
    report = verify(hub.store, page=5)  # pages smaller than the log: the paging is exercised
    assert report.ok, report.problems
    assert (report.events, report.chains) == (N, 1)
    assert report.heads == {chain.chain_id: chain.state()}


def test_many_chains_interleaved_and_a_resumed_chain_verify(hub):
    a, b = AuditChain.new(), AuditChain.new()
    for i in range(4):
        write(hub, a, [audit_event(i)])
        write(hub, b, [audit_event(10 + i), audit_event(20 + i)])
    resumed = AuditChain.resume(hub.store, a.chain_id)
    assert resumed.state() == a.state()
    write(hub, resumed, [audit_event(99)])
    fresh = AuditChain.resume(hub.store, "never-written")
    assert fresh.state() == (0, ZERO)
    report = verify(hub.store)
    assert report.ok, report.problems
    assert (report.events, report.chains) == (13, 2)
    assert report.heads[a.chain_id][0] == 5 and report.heads[b.chain_id][0] == 8


# -- tampering in the database ------------------------------------------------------------------------

def test_a_changed_byte_is_modified(chained, settings):
    hub, _ = chained
    db = Db(settings)
    nid, oid, state = db.audit_rows()[4]
    assert b"user-" in state
    db.run("UPDATE stored_events SET state=? WHERE {nid}=?",
           (state.replace(b"user-", b"user_", 1), nid))
    report = verify(hub.store)
    assert kinds(report) == ["modified"]
    p = report.problems[0]
    assert (p.rid, p.nid) == (oid.removeprefix("AuditEvent/"), nid)
    assert p.seq is not None and p.chain is not None


def test_a_changed_chain_extension_is_found(chained, settings):
    hub, chain = chained
    db = Db(settings)
    nid, _, state = db.audit_rows()[2]
    db.run("UPDATE stored_events SET state=? WHERE {nid}=?",
           (state.replace(chain.chain_id.encode(), b"other-chain"), nid))
    report = verify(hub.store)
    # a chain of its own that does not start at 1, the old one with a hole, the hash broken
    assert "modified" in kinds(report) and "missing" in kinds(report)


def test_a_deleted_row_is_missing(chained, settings):
    hub, _ = chained
    db = Db(settings)
    nid, _, state = db.audit_rows()[5]
    db.run("DELETE FROM stored_events WHERE {nid}=?", (nid,))
    report = verify(hub.store)
    assert kinds(report) == ["missing"]
    assert report.problems[0].seq == 6
    assert report.events == N - 1


def test_a_deleted_row_replaced_by_a_forgery_with_its_sequence_is_found(chained, settings):
    hub, chain = chained
    db = Db(settings)
    nid, _, state = db.audit_rows()[5]
    # the forger knows the format but not the true previous hash: a chain of their own
    forged = AuditChain(chain.chain_id, seq=5, head="f" * 64).seal(audit_event(500))
    header = state.partition(b"\n")[0]
    db.run("UPDATE stored_events SET state=? WHERE {nid}=?",
           (header + b"\n" + orjson.dumps(forged), nid))
    report = verify(hub.store)
    assert kinds(report) == ["missing", "missing"]  # its previous, and the next one's previous


def test_swapped_rows_are_reordered(chained, settings):
    hub, _ = chained
    db = Db(settings)
    rows = db.audit_rows()
    (n1, _, s1), (n2, _, s2) = rows[3], rows[4]
    db.run("UPDATE stored_events SET state=? WHERE {nid}=?", (s2, n1))
    db.run("UPDATE stored_events SET state=? WHERE {nid}=?", (s1, n2))
    report = verify(hub.store)
    assert kinds(report) == ["reordered"]
    assert report.problems[0].seq == 4


def test_renumbered_notification_ids_are_reordered(chained, settings):
    hub, _ = chained
    db = Db(settings)
    rows = db.audit_rows()
    first, last = rows[1][0], rows[-2][0]
    spare = db.run("SELECT MAX({nid}) FROM stored_events")[0][0] + 1000
    for a, b in ((first, spare), (last, first), (spare, last)):
        db.run("UPDATE stored_events SET {nid}=? WHERE {nid}=?", (b, a))
    report = verify(hub.store)
    assert report.kinds() and set(report.kinds()) == {"reordered"}, report.problems
    assert report.events == N


def test_a_forged_row_without_a_chain_is_unchained(chained, settings):
    hub, _ = chained
    db = Db(settings)
    _, _, state = db.audit_rows()[0]
    header = orjson.loads(state.partition(b"\n")[0])
    header["id"] = "forged"
    body = {**audit_event(7), "id": "forged"}
    db.run("INSERT INTO stored_events (originator_id, originator_version, topic, state) "
           "VALUES (?, 1, 'hub.resource:Created', ?)",
           ("AuditEvent/forged", orjson.dumps(header) + b"\n" + orjson.dumps(body)))
    report = verify(hub.store)
    assert kinds(report) == ["unchained"]
    assert report.problems[0].rid == "forged"


def test_a_copied_row_is_a_duplicate(chained, settings):
    hub, _ = chained
    db = Db(settings)
    _, _, state = db.audit_rows()[2]
    db.run("INSERT INTO stored_events (originator_id, originator_version, topic, state) "
           "VALUES (?, 1, 'hub.resource:Created', ?)", ("AuditEvent/copy", state))
    assert kinds(verify(hub.store)) == ["duplicate"]


def test_an_unreadable_row_is_malformed(chained, settings):
    hub, _ = chained
    db = Db(settings)
    nid, _, state = db.audit_rows()[7]
    db.run("UPDATE stored_events SET state=? WHERE {nid}=?", (state[:-5], nid))
    report = verify(hub.store)
    assert "malformed" in kinds(report)


# -- changes through the hub ---------------------------------------------------------------------------

def test_an_update_and_a_deletion_through_the_hub_are_found(chained, settings):
    hub, _ = chained
    rows = Db(settings).audit_rows()
    updated = rows[2][1].removeprefix("AuditEvent/")
    deleted = rows[6][1].removeprefix("AuditEvent/")
    body = orjson.loads(rows[2][2].partition(b"\n")[2])
    body["outcome"] = "4"
    results = hub.execute([Op("PUT", "AuditEvent", updated, d=body, url=f"AuditEvent/{updated}"),
                           Op("DELETE", "AuditEvent", deleted, url=f"AuditEvent/{deleted}")],
                          Context(), atomic=True)
    assert [r.version for r in results] == [2, 2]
    report = verify(hub.store)
    assert report.events == N + 2
    assert kinds(report) == ["deleted", "updated"]
    assert {p.rid for p in report.problems} == {updated, deleted}


def test_an_unsealed_audit_event_through_the_hub_is_unchained(chained):
    hub, _ = chained
    write(hub, None, [audit_event(50)])
    assert kinds(verify(hub.store)) == ["unchained"]


# -- the tail, and anchors --------------------------------------------------------------------------------

def test_a_cut_tail_is_found_only_against_an_anchor(chained, settings):
    hub, chain = chained
    anchor = anchor_line(verify(hub.store), "2024-03-01T12:00:00Z")
    assert anchor["chains"] == {chain.chain_id: {"seq": N, "hash": chain.state()[1]}}
    db = Db(settings)
    for nid, _, _ in db.audit_rows()[-2:]:
        db.run("DELETE FROM stored_events WHERE {nid}=?", (nid,))
    assert verify(hub.store).ok  # nothing in the store refers to the newest events
    report = verify(hub.store, [anchor])
    assert kinds(report) == ["truncated"]
    assert report.problems[0].seq == N


def test_an_anchor_of_a_chain_gone_altogether_is_truncated(chained, settings):
    hub, chain = chained
    anchor = anchor_line(verify(hub.store), "2024-03-01T12:00:00Z")
    Db(settings).run("DELETE FROM stored_events WHERE substr(originator_id, 1, 11) = 'AuditEvent/'")
    report = verify(hub.store, [anchor])
    assert kinds(report) == ["truncated"] and report.events == 0


def test_an_anchored_event_replaced_is_found(chained):
    hub, chain = chained
    anchor = {"chains": {chain.chain_id: {"seq": 3, "hash": "e" * 64}}}
    assert kinds(verify(hub.store, [anchor])) == ["rewritten"]


# -- the audit writer ---------------------------------------------------------------------------------

def test_the_writer_seals_in_commit_order_under_concurrent_submits(hub):
    writer = AuditWriter(Repository(hub), batch=16)
    try:
        def submit_many(t: int) -> None:
            futs = [writer.submit(audit_event(t * 100 + i)) for i in range(25)]
            for f in futs:
                f.result(timeout=30)

        threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        writer.close()
    report = verify(hub.store)
    assert report.ok, report.problems
    assert (report.events, report.chains) == (150, 1)
    assert report.heads[writer.chain.chain_id][0] == 150


class RefuseFirst(OpenPolicy):
    """A policy that refuses the first ``n`` writes of AuditEvents, then allows everything."""

    def __init__(self, n: int):
        self.n = n

    def check(self, actor, action: Action) -> None:
        if action.rtype == "AuditEvent" and self.n > 0:
            self.n -= 1
            raise FhirError(403, "forbidden", "not now")

    def visible(self, actor, rtype, rid, resource) -> bool:
        return True


def test_a_refused_commit_leaves_no_gap_and_bad_content_is_refused_alone(hub):
    writer = AuditWriter(Repository(hub, policy=RefuseFirst(1)))
    try:
        with pytest.raises(FhirError):
            writer.submit(audit_event(1)).result(timeout=30)
        with pytest.raises(FhirError):
            writer.submit({**audit_event(2), "outcomeDesc": "bad\x00"}).result(timeout=30)
        for i in range(3):
            writer.submit(audit_event(3 + i)).result(timeout=30)
    finally:
        writer.close()
    report = verify(hub.store)
    assert report.ok, report.problems
    assert report.events == 3 and report.heads[writer.chain.chain_id][0] == 3


def test_a_failure_of_unknown_outcome_starts_a_new_chain(hub):
    class Flaky:
        def __init__(self, repo):
            self.repo, self.fail = repo, True

        def execute(self, ops, ctx, *, atomic):
            if self.fail:
                self.fail = False
                self.repo.execute(ops, ctx, atomic=atomic)  # written, then the connection "drops"
                raise ConnectionError("server closed the connection")
            return self.repo.execute(ops, ctx, atomic=atomic)

    writer = AuditWriter(Flaky(Repository(hub)))  # type: ignore[arg-type]
    first = writer.chain.chain_id
    try:
        with pytest.raises(ConnectionError):
            writer.submit(audit_event(1)).result(timeout=30)
        writer.submit(audit_event(2)).result(timeout=30)
    finally:
        writer.close()
    assert writer.chain.chain_id != first
    report = verify(hub.store)
    assert report.ok, report.problems
    assert report.chains == 2


# -- the command line -----------------------------------------------------------------------------------

def store_args(settings) -> list[str]:
    if settings.database_url:
        return ["--database-url", settings.database_url]
    return ["--data-dir", str(settings.data_dir)]


def test_hub_audit_verify_export_and_anchor(chained, settings, tmp_path, capsys):
    hub, chain = chained
    args = store_args(settings)
    assert cli.main(["audit", "verify", *args]) == 0
    assert "12 AuditEvent versions in 1 chains: intact" in capsys.readouterr().out
    anchors = tmp_path / "anchors.ndjson"
    assert cli.main(["audit", "anchor", *args, "--out", str(anchors)]) == 0
    assert orjson.loads(anchors.read_bytes())["chains"][chain.chain_id]["seq"] == N
    out = tmp_path / "audit.ndjson"
    assert cli.main(["audit", "export", *args, "--out", str(out)]) == 0
    exported = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [seal_of(d).seq for d in exported] == list(range(1, N + 1))
    assert cli.main(["audit", "export", *args, "--since", "2999", "--out", str(out)]) == 0
    assert out.read_bytes() == b""
    capsys.readouterr()

    db = Db(settings)
    nid, _, state = db.audit_rows()[-1]
    db.run("DELETE FROM stored_events WHERE {nid}=?", (nid,))
    assert cli.main(["audit", "verify", *args]) == 0  # the tail: not visible without the anchor
    assert cli.main(["audit", "verify", *args, "--anchors", str(anchors)]) == 1
    assert "truncated" in capsys.readouterr().out
    nid, _, state = db.audit_rows()[0]
    db.run("UPDATE stored_events SET state=? WHERE {nid}=?", (state.replace(b"user", b"USER"), nid))
    assert cli.main(["audit", "verify", *args, "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["ok"] is False and [p["kind"] for p in report["problems"]] == ["modified"]
    assert cli.main(["audit", "anchor", *args]) == 1  # a failing store is not anchored
    capsys.readouterr()
    assert cli.main(["audit", "verify", *args, "--anchors", str(tmp_path / "nope")]) == 2


# -- end to end ---------------------------------------------------------------------------------------

def test_reads_audited_by_hub_serve_verify_and_a_posted_audit_event_does_not(live, client, capsys):
    def read(i: int) -> None:
        assert client.get(f"/Person/nobody-{i}/$everything",
                          headers={"X-Hub-User": f"u{i}"}).status_code == 404

    threads = [threading.Thread(target=read, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    args = store_args(live.settings)
    capsys.readouterr()
    assert cli.main(["audit", "verify", *args, "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["events"] == 20 and report["chains"] == 1
    # the audit is written by the hub only: a client's AuditEvent is refused, whatever the verb
    r = client.post("/AuditEvent", content=orjson.dumps(audit_event(1)),
                    headers={"content-type": "application/fhir+json"})
    assert r.status_code == 403, r.text
    some = next(iter(orjson.loads(client.get("/AuditEvent", params={"_count": "1"}).content)
                     ["entry"]))["resource"]
    assert client.delete(f"/AuditEvent/{some['id']}").status_code == 403
    r = client.put(f"/AuditEvent/{some['id']}", content=orjson.dumps(some),
                   headers={"content-type": "application/fhir+json"})
    assert r.status_code == 403, r.text
    capsys.readouterr()
    assert cli.main(["audit", "verify", *args, "--json"]) == 0
