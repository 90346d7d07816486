"""The AuditEvents' hash chain (hub.access.chain) over the audit log (hub.access.auditlog) on a real
SQLite file and a real PostgreSQL database: events sealed and written by the audit writer verify
as intact; the log's tables refuse UPDATE and DELETE; each kind of tampering done with SQL around
those triggers (a changed byte, a deleted row, swapped rows, a forged row) is reported with its
kind; the tail cut off is found only with an anchor; the audit writer seals in commit order;
``hub audit`` exits 0 or 1."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import orjson
import psycopg
import pytest

from hub import cli
from hub.access.audit import AuditWriter
from hub.access.auditlog import Entry, open_audit_log
from hub.access.chain import CHAIN_URL, ZERO, AuditChain, anchor_line, canonical, seal_of, verify
from hub.core.access import SYSTEM
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


def write(log, chain: AuditChain | None, events: list[dict]) -> list[str]:
    """Sealed into ``chain`` and committed together, as the audit writer does; unsealed (written
    around the writer) without one."""
    if chain is None:
        entries = [Entry(uuid.uuid4().hex, {**d}, "", 0) for d in events]
    else:
        writer = AuditWriter(log, chain=chain)
        entries = [writer._entry(d) for d in events]
        writer.close()
    log.append(entries)
    return [e.id for e in entries]


@pytest.fixture
def log(settings):
    audit_log = open_audit_log(settings.data_dir, settings.database_url)
    yield audit_log
    audit_log.close()


@pytest.fixture
def chained(log):
    """N sealed AuditEvents in three commits."""
    chain = AuditChain.new()
    write(log, None, [])
    for b in range(3):
        write(log, chain, [audit_event(b * 4 + i) for i in range(4)])
    return log, chain


class Db:
    """Plain SQL on the test's audit log, around the hub (what an intruder with database access
    does: the append-only triggers dropped first)."""

    def __init__(self, settings, *, keep_triggers: bool = False):
        self.settings = settings
        self.pg = bool(settings.database_url)
        if not keep_triggers:
            if self.pg:
                for t in ("audit_event", "audit_index"):
                    self.run(f"DROP TRIGGER IF EXISTS {t}_append_only ON {t}")
            else:
                for t in ("audit_event", "audit_index"):
                    for verb in ("update", "delete"):
                        self.run(f"DROP TRIGGER IF EXISTS {t}_no_{verb}")

    def run(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.pg:
            with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
                cur = conn.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        with closing(sqlite3.connect(self.settings.data_dir / "audit.sqlite")) as conn, conn:
            cur = conn.execute(sql, params)
            return cur.fetchall()

    def audit_rows(self) -> list[tuple[int, str, bytes]]:
        """(pos, id, body) of the AuditEvents in commit order."""
        return [(n, o, bytes(s)) for n, o, s in self.run(
            "SELECT pos, id, body FROM audit_event ORDER BY pos")]


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


# -- an intact log ---------------------------------------------------------------------------------

def test_sealed_events_verify_as_intact(chained):
    log, chain = chained
    report = verify(log, page=5)  # pages smaller than the log: the paging is exercised
    assert report.ok, report.problems
    assert (report.events, report.chains) == (N, 1)
    assert report.heads == {chain.chain_id: chain.state()}


def test_many_chains_interleaved_and_a_resumed_chain_verify(log):
    a, b = AuditChain.new(), AuditChain.new()
    for i in range(4):
        write(log, a, [audit_event(i)])
        write(log, b, [audit_event(10 + i), audit_event(20 + i)])
    resumed = AuditChain.resume(log, a.chain_id)
    assert resumed.state() == a.state()
    write(log, resumed, [audit_event(99)])
    fresh = AuditChain.resume(log, "never-written")
    assert fresh.state() == (0, ZERO)
    report = verify(log)
    assert report.ok, report.problems
    assert (report.events, report.chains) == (13, 2)
    assert report.heads[a.chain_id][0] == 5 and report.heads[b.chain_id][0] == 8


def test_the_log_refuses_update_and_delete(chained, settings):
    log, _ = chained
    assert log.index_pending() == N  # the search values too
    db = Db(settings, keep_triggers=True)
    pos, _, body = db.audit_rows()[3]
    for sql, params in (("UPDATE audit_event SET body=? WHERE pos=?", (body + b" ", pos)),
                        ("DELETE FROM audit_event WHERE pos=?", (pos,)),
                        ("DELETE FROM audit_index", ())):
        with pytest.raises((sqlite3.DatabaseError, psycopg.Error)) as e:
            db.run(sql, params)
        assert "append-only" in str(e.value)
    if settings.database_url:
        with pytest.raises(psycopg.Error, match="append-only"):
            db.run("TRUNCATE audit_event")
    assert verify(log).ok


# -- tampering in the database around the triggers -----------------------------------------------

def test_a_changed_byte_is_modified(chained, settings):
    log, _ = chained
    db = Db(settings)
    pos, rid, body = db.audit_rows()[4]
    assert b"user-" in body
    db.run("UPDATE audit_event SET body=? WHERE pos=?", (body.replace(b"user-", b"user_", 1), pos))
    report = verify(log)
    assert kinds(report) == ["modified"]
    p = report.problems[0]
    assert (p.rid, p.pos) == (rid, pos)
    assert p.seq is not None and p.chain is not None


def test_a_body_edited_into_text_is_modified_not_a_crash(chained, settings):
    """SQLite's replace() on the body leaves it TEXT: the verification crashed on it."""
    if settings.database_url:
        pytest.skip("a TEXT body is SQLite's own (PostgreSQL keeps bytea)")
    log, _ = chained
    db = Db(settings)
    pos, rid, body = db.audit_rows()[3]
    db.run("UPDATE audit_event SET body=? WHERE pos=?",
           (body.replace(b"user-", b"user_", 1).decode(), pos))
    report = verify(log)
    assert kinds(report) == ["modified"] and report.problems[0].rid == rid


def test_a_changed_chain_extension_is_found(chained, settings):
    log, chain = chained
    db = Db(settings)
    pos, _, body = db.audit_rows()[2]
    db.run("UPDATE audit_event SET body=? WHERE pos=?",
           (body.replace(chain.chain_id.encode(), b"other-chain"), pos))
    report = verify(log)
    # a chain of its own that does not start at 1, the old one with a hole, the hash broken
    assert "modified" in kinds(report) and "missing" in kinds(report)


def test_a_deleted_row_is_missing(chained, settings):
    log, _ = chained
    db = Db(settings)
    pos, _, _ = db.audit_rows()[5]
    db.run("DELETE FROM audit_event WHERE pos=?", (pos,))
    report = verify(log)
    assert kinds(report) == ["missing"]
    assert report.problems[0].seq == 6
    assert report.events == N - 1


def test_a_deleted_row_replaced_by_a_forgery_with_its_sequence_is_found(chained, settings):
    log, chain = chained
    db = Db(settings)
    pos, _, _ = db.audit_rows()[5]
    # the forger knows the format but not the true previous hash: a chain of their own
    forged = AuditChain(chain.chain_id, seq=5, head="f" * 64).seal(audit_event(500))
    db.run("UPDATE audit_event SET body=? WHERE pos=?", (orjson.dumps(forged), pos))
    report = verify(log)
    assert kinds(report) == ["missing", "missing"]  # its previous, and the next one's previous


def test_swapped_rows_are_reordered(chained, settings):
    log, _ = chained
    db = Db(settings)
    rows = db.audit_rows()
    (n1, _, s1), (n2, _, s2) = rows[3], rows[4]
    db.run("UPDATE audit_event SET body=? WHERE pos=?", (s2, n1))
    db.run("UPDATE audit_event SET body=? WHERE pos=?", (s1, n2))
    report = verify(log)
    assert kinds(report) == ["reordered"]
    assert report.problems[0].seq == 4


def test_renumbered_positions_are_reordered(chained, settings):
    log, _ = chained
    db = Db(settings)
    rows = db.audit_rows()
    first, last = rows[1][0], rows[-2][0]
    spare = db.run("SELECT MAX(pos) FROM audit_event")[0][0] + 1000
    for a, b in ((first, spare), (last, first), (spare, last)):
        db.run("UPDATE audit_event SET pos=? WHERE pos=?", (b, a))
    report = verify(log)
    assert report.kinds() and set(report.kinds()) == {"reordered"}, report.problems
    assert report.events == N


def test_a_forged_row_without_a_chain_is_unchained(chained, settings):
    log, _ = chained
    db = Db(settings)
    body = {**audit_event(7), "id": "forged"}
    db.run("INSERT INTO audit_event (id, lo_us, hi_us, chain, seq, body) VALUES (?, 0, 1, '', 0, ?)",
           ("forged", orjson.dumps(body)))
    report = verify(log)
    assert kinds(report) == ["unchained"]
    assert report.problems[0].rid == "forged"


def test_a_copied_row_is_a_duplicate(chained, settings):
    log, _ = chained
    db = Db(settings)
    _, _, body = db.audit_rows()[2]
    db.run("INSERT INTO audit_event (id, lo_us, hi_us, chain, seq, body) VALUES (?, 0, 1, '', 0, ?)",
           ("copy", body))
    assert kinds(verify(log)) == ["duplicate"]


def test_an_unreadable_row_is_malformed(chained, settings):
    log, _ = chained
    db = Db(settings)
    pos, _, body = db.audit_rows()[7]
    db.run("UPDATE audit_event SET body=? WHERE pos=?", (body[:-5], pos))
    report = verify(log)
    assert "malformed" in kinds(report)


def test_an_unsealed_audit_event_is_unchained(chained):
    log, _ = chained
    write(log, None, [audit_event(50)])
    assert kinds(verify(log)) == ["unchained"]


# -- nothing writes AuditEvents but the audit writer ----------------------------------------------------

def test_the_repository_refuses_audit_event_writes_even_the_hubs_own(hub, log):
    repo = Repository(hub, audit_records=log)
    body = audit_event(1)
    for actor_ctx in (Context(source={"feed": "audit"}, actor=SYSTEM), Context()):
        results = repo.execute([Op("POST", "AuditEvent", d=body, url="AuditEvent")], actor_ctx,
                               atomic=False)
        assert isinstance(results[0], FhirError) and results[0].status == 403
    assert hub.store.count_history(rtype="AuditEvent") == 0


# -- the tail, and anchors --------------------------------------------------------------------------------

def test_a_cut_tail_is_found_only_against_an_anchor(chained, settings):
    log, chain = chained
    anchor = anchor_line(verify(log), "2024-03-01T12:00:00Z")
    assert anchor["chains"] == {chain.chain_id: {"seq": N, "hash": chain.state()[1]}}
    db = Db(settings)
    for pos, _, _ in db.audit_rows()[-2:]:
        db.run("DELETE FROM audit_event WHERE pos=?", (pos,))
    assert verify(log).ok  # nothing in the log refers to the newest events
    report = verify(log, [anchor])
    assert kinds(report) == ["truncated"]
    assert report.problems[0].seq == N


def test_an_anchor_of_a_chain_gone_altogether_is_truncated(chained, settings):
    log, chain = chained
    anchor = anchor_line(verify(log), "2024-03-01T12:00:00Z")
    Db(settings).run("DELETE FROM audit_event")
    report = verify(log, [anchor])
    assert kinds(report) == ["truncated"] and report.events == 0


def test_an_anchored_event_replaced_is_found(chained):
    log, chain = chained
    anchor = {"chains": {chain.chain_id: {"seq": 3, "hash": "e" * 64}}}
    assert kinds(verify(log, [anchor])) == ["rewritten"]


# -- the audit writer ---------------------------------------------------------------------------------

def test_the_writer_seals_in_spool_order_under_concurrent_writes(log):
    writer = AuditWriter(log)
    try:
        def write_many(t: int) -> None:
            for i in range(25):
                writer.write(audit_event(t * 100 + i))

        threads = [threading.Thread(target=write_many, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        writer.close()  # what is spooled moves into the tables
    report = verify(log)
    assert report.ok, report.problems
    assert (report.events, report.chains) == (150, 1)
    assert report.heads[writer.chain.chain_id][0] == 150
    assert list(log.spool.pending()) == []  # moved files are deleted


def test_events_spooled_by_a_process_that_died_are_moved_by_the_next(settings):
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from hub.access.audit import AuditWriter\n"
        "from hub.access.auditlog import open_audit_log\n"
        "from tests.test_audit_chain import audit_event\n"
        "log = open_audit_log(Path(sys.argv[1]), sys.argv[2] or None)\n"
        "writer = AuditWriter(log)\n"
        "for i in range(7):\n"
        "    writer.write(audit_event(i))\n"
        "os._exit(0)  # no close, nothing moved: as if killed\n")
    subprocess.run([sys.executable, "-c", script, str(settings.data_dir),
                    settings.database_url or ""], check=True, cwd=Path(__file__).parent.parent)
    log = open_audit_log(settings.data_dir, settings.database_url)
    try:
        assert log.count() == 0 and len(list(log.spool.pending())) == 7
        assert log.move_spooled() == 7
        assert log.move_spooled() == 0  # moved once; the file is gone
        report = verify(log)
        assert report.ok and report.events == 7, report.problems
    finally:
        log.close()


def test_the_background_mover_stores_at_once_and_indexes_when_quiet_or_behind(log):
    writer = AuditWriter(log)
    log.start(every=0.05, quiet_below=0, backlog=5)  # never quiet: indexes past a backlog of 5
    try:
        for i in range(3):
            writer.write(audit_event(i))
        deadline = time.monotonic() + 10
        while log.count() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.count() == 3
        time.sleep(0.2)
        assert log.unindexed() == 3  # busy and not behind: the index waits
        for i in range(3, 9):
            writer.write(audit_event(i))
        while log.unindexed() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.count() == 9 and log.unindexed() == 0
    finally:
        writer.close()


class FailingSpool:
    """The spool's write failing once (a full disk): before writing anything, or after a line
    went out (``torn``)."""

    def __init__(self, spool, torn: bool):
        self.spool, self.torn, self.fail = spool, torn, True

    def write(self, entry) -> None:
        if self.fail:
            self.fail = False
            if self.torn:
                self.spool.write(entry)
            raise OSError(28, "No space left on device")
        self.spool.write(entry)


@pytest.mark.parametrize("torn", [False, True])
def test_a_failed_spool_write_starts_a_new_chain_and_bad_content_is_refused_alone(log, torn):
    real = log.spool
    log.spool = FailingSpool(real, torn)
    writer = AuditWriter(log)
    first = writer.chain.chain_id
    try:
        with pytest.raises(OSError):
            writer.write(audit_event(1))
        with pytest.raises(FhirError):
            writer.write({**audit_event(2), "outcomeDesc": "bad\x00"})
        with pytest.raises(FhirError):
            writer.write({**audit_event(2), "recorded": "yesterday"})
        for i in range(3):
            writer.write(audit_event(3 + i))
    finally:
        log.spool = real
        writer.close()
    assert writer.chain.chain_id != first  # whether a line was left is not known
    report = verify(log)
    assert report.ok, report.problems
    assert report.events == (4 if torn else 3) and report.chains == (2 if torn else 1)
    assert report.heads[writer.chain.chain_id][0] == 3


# -- the command line -----------------------------------------------------------------------------------

def store_args(settings) -> list[str]:
    if settings.database_url:
        return ["--database-url", settings.database_url]
    return ["--data-dir", str(settings.data_dir)]


def test_hub_audit_verify_export_and_anchor(chained, hub, settings, tmp_path, capsys):
    log, chain = chained  # ``hub``: the event store the command line checks is there
    args = store_args(settings)
    assert cli.main(["audit", "verify", *args]) == 0
    assert "12 AuditEvents in 1 chains: intact" in capsys.readouterr().out
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
    pos, _, _ = db.audit_rows()[-1]
    db.run("DELETE FROM audit_event WHERE pos=?", (pos,))
    assert cli.main(["audit", "verify", *args]) == 0  # the tail: not visible without the anchor
    assert cli.main(["audit", "verify", *args, "--anchors", str(anchors)]) == 1
    assert "truncated" in capsys.readouterr().out
    db = Db(settings)  # each opening of the log puts the triggers back: drop them again
    pos, _, body = db.audit_rows()[0]
    db.run("UPDATE audit_event SET body=? WHERE pos=?", (body.replace(b"user", b"USER"), pos))
    assert cli.main(["audit", "verify", *args, "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["ok"] is False and [p["kind"] for p in report["problems"]] == ["modified"]
    assert cli.main(["audit", "anchor", *args]) == 1  # a failing log is not anchored
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
    deadline = time.monotonic() + 10
    while True:  # the server moves its spool into the tables within a fraction of a second
        assert cli.main(["audit", "verify", *args, "--json"]) == 0
        report = orjson.loads(capsys.readouterr().out)
        if report["events"] == 20 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
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
