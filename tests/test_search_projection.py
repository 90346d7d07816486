"""The search-index projection follows the event log exactly once, resumes, and rebuilds the same."""

from __future__ import annotations

import sqlite3
import uuid

import orjson
import pytest

from hub.core.ingest import Context, Op
from projections.runner import Runner
from projections.search.sqlite_index import TABLES, SQLiteSearchIndex


def put(hub, d):
    return hub.execute([Op("PUT", d["resourceType"], d["id"], d, url="x")], Context(),
                       atomic=True)[0]


def patient(pid, family, **more):
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}], **more}


def dump(index: SQLiteSearchIndex) -> dict:
    """Every index row, with resource keys replaced by Type/id (keys differ between builds)."""
    with index.datastore.transaction(commit=False) as c:
        c.execute("SELECT pk, rtype || '/' || rid, version FROM sp_res")
        names = {pk: (name, version) for pk, name, version in c.fetchall()}
        c.execute("SELECT id, rtype || '.' || code FROM sp_param")
        params = dict(c.fetchall())
        out = {"sp_res": sorted(names.values())}
        for table in TABLES:
            c.execute(f"SELECT * FROM {table}")
            # by repr: a column may hold None beside values, which do not compare
            out[table] = sorted(((params[r[0]], *r[1:-1], names[r[-1]][0]) for r in c.fetchall()), key=repr)
        return out


@pytest.fixture
def index(tmp_path):
    ix = SQLiteSearchIndex(tmp_path / "search.sqlite")
    yield ix
    ix.close()


def test_index_follows_creates_updates_and_deletes(hub, index):
    pid = f"p{uuid.uuid4().hex[:8]}"
    put(hub, patient(pid, "Zhāng", gender="male"))
    runner = Runner(hub.store, index)
    assert runner.lag() > 0
    runner.catch_up()
    assert runner.lag() == 0
    rows = dump(index)
    assert (f"Patient/{pid}", 1) in rows["sp_res"]
    assert ("Patient.family", "zhang", "Zhāng", f"Patient/{pid}") in rows["ix_string"]
    put(hub, patient(pid, "王", gender="female"))
    runner.catch_up()
    rows = dump(index)
    assert (f"Patient/{pid}", 2) in rows["sp_res"]
    families = [r for r in rows["ix_string"] if r[0] == "Patient.family" and r[-1] == f"Patient/{pid}"]
    assert families == [("Patient.family", "王", "王", f"Patient/{pid}")]
    genders = [r[1] for r in rows["ix_token"] if r[0] == "Patient.gender" and r[-1] == f"Patient/{pid}"]
    assert genders == ["female"]
    hub.execute([Op("DELETE", "Patient", pid, url="x")], Context(), atomic=True)
    runner.catch_up()
    rows = dump(index)
    assert all(f"Patient/{pid}" not in str(v) for v in rows.values())


def test_interrupted_build_resumes_to_the_same_index_as_a_rebuild(hub, index, tmp_path):
    for i in range(25):
        put(hub, patient(f"r{i}", f"Fam{i}", gender="other"))
        if i % 5 == 0:
            put(hub, patient(f"r{i}", f"Changed{i}"))
    partial = Runner(hub.store, index, batch=7)
    partial.step()
    partial.step()  # "crash" here: a new process opens the same file and goes on
    index.close()
    reopened = SQLiteSearchIndex(tmp_path / "search.sqlite")
    assert reopened.position() == 14
    Runner(hub.store, reopened, batch=7).catch_up()
    resumed = dump(reopened)
    fresh = SQLiteSearchIndex(tmp_path / "fresh.sqlite")
    Runner(hub.store, fresh, batch=1000).rebuild()
    assert dump(fresh) == resumed
    Runner(hub.store, reopened).rebuild()
    assert dump(reopened) == resumed
    fresh.close()
    reopened.close()


def test_a_batch_is_never_applied_twice(hub, index):
    put(hub, patient("once", "Li"))
    notes = hub.store.notifications(1, 100)
    index.apply(notes)
    before = dump(index)
    index.apply(notes)  # skipped: at or below the recorded position
    assert dump(index) == before


def test_wait_for_gives_read_your_writes(hub, index):
    runner = Runner(hub.store, index)
    result = put(hub, patient("ryw", "Zhao"))
    position = hub.store.max_notification_id()
    assert result.status == 201
    assert runner.wait_for(position, timeout=5)
    assert ("Patient/ryw", 1) in dump(index)["sp_res"]
    runner.start(poll=0.01)
    try:
        put(hub, patient("ryw", "Qian"))
        assert runner.wait_for(hub.store.max_notification_id(), timeout=5)
        assert ("Patient/ryw", 2) in dump(index)["sp_res"]
    finally:
        runner.stop()


def test_projection_commands(hub, settings, tmp_path, capsys):
    from hub import cli

    put(hub, patient("cli1", "Sun"))
    args = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        args += ["--database-url", settings.database_url]
    assert cli.main(["projections", "run", "search", *args]) == 0
    assert cli.main(["projections", "status", "search", *args]) == 0
    out = capsys.readouterr().out
    assert "lag 0" in out and "sp_res" in out
    assert cli.main(["projections", "rebuild", "search", *args]) == 0
    assert "applied" in capsys.readouterr().out


def test_two_processes_following_one_index_file_never_double_apply(hub, tmp_path):
    """Two API workers each run a runner on the same search.sqlite: the tracking row arbitrates."""
    for i in range(30):
        put(hub, patient(f"w{i}", f"Worker{i}"))
    first = SQLiteSearchIndex(tmp_path / "shared.sqlite")
    second = SQLiteSearchIndex(tmp_path / "shared.sqlite")
    a, b = Runner(hub.store, first, batch=4), Runner(hub.store, second, batch=4)
    a.step()
    stale = hub.store.notifications(1, 4)  # what b would apply if it had read before a wrote
    second.apply(stale, since=0)  # skipped: the position under the lock says a applied it
    b.step()  # b reads the position a left, applies the next batch
    a.catch_up()
    b.catch_up()
    fresh = SQLiteSearchIndex(tmp_path / "fresh.sqlite")
    Runner(hub.store, fresh).rebuild()
    assert dump(first) == dump(fresh)
    for ix in (first, second, fresh):
        ix.close()


def test_planner_statistics_are_taken_once_the_index_has_grown(hub, index):
    items = [orjson.dumps({"resourceType": "Patient", "id": f"s{i}", "gender": "male"})
             for i in range(1100)]
    list(hub.ingest(((raw, orjson.loads(raw)) for raw in items), Context()))
    Runner(hub.store, index).catch_up()
    with index.datastore.transaction(commit=False) as c:
        c.execute("SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = 'ix_token'")
        assert c.fetchone()[0] > 0


def _value_indexes(index: SQLiteSearchIndex) -> set[str]:
    with index.datastore.transaction(commit=False) as c:
        c.execute("SELECT name FROM sqlite_master WHERE type='index' AND name NOT LIKE 'sqlite_%'")
        return {n for (n,) in c.fetchall()}


def test_an_interrupted_rebuild_resumes_and_ends_with_the_same_index(hub, index, tmp_path):
    """A rebuild loads without value indexes and builds them at the end; a crash midway resumes."""
    from projections.search.sqlite_index import VALUE_INDEXES

    for i in range(30):
        put(hub, patient(f"b{i}", f"Bulk{i}", gender="male"))
    for i in range(0, 30, 3):  # newer versions and deletes in later batches than the creates
        put(hub, patient(f"b{i}", f"Later{i}", gender="female"))
    for i in range(1, 30, 7):
        hub.execute([Op("DELETE", "Patient", f"b{i}", url="x")], Context(), atomic=True)
    incremental = SQLiteSearchIndex(tmp_path / "incremental.sqlite")
    Runner(hub.store, incremental).catch_up()
    expected = dump(incremental)
    incremental.close()

    rebuild = Runner(hub.store, index, batch=2)  # bulk batches are 5 x 2 notifications
    index.reset()
    rebuild.step()
    rebuild.step()
    rebuild.step()  # "crash": the value indexes are not there yet
    assert index.bulk and not (_value_indexes(index) & set(VALUE_INDEXES))
    index.close()
    reopened = SQLiteSearchIndex(tmp_path / "search.sqlite")
    assert reopened.bulk and reopened.position() == 30
    Runner(hub.store, reopened).catch_up()
    assert not reopened.bulk and set(VALUE_INDEXES) <= _value_indexes(reopened)
    assert dump(reopened) == expected  # superseded and deleted versions left no rows behind
    reopened.close()


def test_an_index_file_of_the_earlier_layout_rebuilds(hub, tmp_path):
    """Index files whose sp_res carried UNIQUE (rtype, rid) keep working, and a rebuild (which
    inserts a row per version) replaces that table rather than failing on the constraint."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE sp_res (pk INTEGER PRIMARY KEY, rtype TEXT NOT NULL, "
                   "rid TEXT NOT NULL, version INTEGER NOT NULL, updated INTEGER NOT NULL, "
                   "UNIQUE (rtype, rid))")
    put(hub, patient("o1", "Old"))
    put(hub, patient("o1", "Older"))
    old = SQLiteSearchIndex(path)
    Runner(hub.store, old).catch_up()
    old.reset()
    Runner(hub.store, old).catch_up()
    assert dump(old)["sp_res"] == [("Patient/o1", 2)]
    assert ("Patient.family", "older", "Older", "Patient/o1") in dump(old)["ix_string"]
    old.close()


def test_an_index_file_from_before_ranges_holds_them_after_a_rebuild(hub, tmp_path):
    """Range values (a RiskAssessment's probabilityRange) have rows of their own (ix_range): a
    file made before them gains the table when opened, and the values with a rebuild."""
    ra = {"resourceType": "RiskAssessment", "id": "ra1", "status": "final",
          "subject": {"reference": "Patient/x"},
          "prediction": [{"probabilityRange": {"low": {"value": 0.2}, "high": {"value": 0.4}}}]}
    put(hub, ra)
    path = tmp_path / "before.sqlite"
    index = SQLiteSearchIndex(path)
    Runner(hub.store, index).catch_up()
    assert [r[:3] for r in dump(index)["ix_range"]] == [("RiskAssessment.probability", 0.2, 0.4)]
    index.close()
    with sqlite3.connect(path) as db:  # as the earlier layout had it: no Range rows at all
        db.execute("DROP TABLE ix_range")
    old = SQLiteSearchIndex(path)
    Runner(hub.store, old).catch_up()
    assert dump(old)["ix_range"] == []  # indexed before: not until the rebuild
    old.reset()
    Runner(hub.store, old).catch_up()
    assert [r[:3] for r in dump(old)["ix_range"]] == [("RiskAssessment.probability", 0.2, 0.4)]
    old.close()
