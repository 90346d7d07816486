"""The read models and the event log they follow, and the data directory's other databases, when
files go missing, empty or unreadable: through the real ``hub`` command and ``hub serve``.

A read model records its position in the log and the identity of the log (``hub_log`` in the
event store); one whose position is beyond the log's end, or that was built from another log, is
a failure (``/ready``, ``hub projections status``, the follower refuses it) until rebuilt, never
"ok, lag 0" over rows the log does not hold.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from hub.core import httpclient
from hub.core.config import Settings
from hub.readmodels import names
from tests.conftest import LiveServer, make_settings

from tests.cli_helpers import assert_clean_error, ndjson, patient, run_hub, write


def _ingest(settings: Settings, tmp_path: Path, *rids: str, family: str = "Wang") -> None:
    f = write(tmp_path / f"in-{'-'.join(rids)}.ndjson", ndjson(*(patient(r, family) for r in rids)))
    done = run_hub(settings, "ingest", "--quiet", f)
    assert done.returncode == 0, done.stderr


def _built(tmp_path: Path, *rids: str) -> Settings:
    """A data directory whose read models are caught up with a log of ``rids``."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    _ingest(settings, tmp_path, *rids)
    done = run_hub(settings, "projections", "run")
    assert done.returncode == 0, done.stderr
    return settings


def _table(settings: Settings) -> tuple[int, dict[str, str]]:
    """``hub projections status``: its exit status and each read model's row."""
    done = run_hub(settings, "projections", "status")
    assert "Traceback" not in done.stderr, done.stderr
    _, *rows = done.stdout.strip().splitlines()
    return done.returncode, {row.split()[0]: row for row in rows}


def _new_log(settings: Settings) -> None:
    """The event log gone (an operator removed it, a restore missed it): a new one is made."""
    for f in settings.data_dir.glob("events.sqlite*"):
        f.unlink()


def test_an_emptied_event_log_beside_read_models_is_refused_not_made_again(tmp_path):
    """A 0-byte events.sqlite (a full disk, a failed copy) was taken for a new store: `show`
    said "not known", `ingest` wrote into a new log the read models were ahead of."""
    settings = _built(tmp_path, "e1", "e2")
    store = settings.data_dir / "events.sqlite"
    store.write_bytes(b"")
    for args in (["show", "Patient/e1"], ["ingest", "--quiet", tmp_path / "in-e1-e2.ndjson"],
                 ["projections", "status"]):
        line = assert_clean_error(run_hub(settings, *args), str(store), "empty (0 bytes)")
        assert "restore it from a backup" in line
    assert store.stat().st_size == 0  # nothing made in its place


def test_read_models_ahead_of_a_new_log_fail_until_rebuilt(tmp_path):
    """Read models of a log that is gone were "ok, lag 0" over a new log of one event, and
    never indexed its writes (their position was beyond them)."""
    settings = _built(tmp_path, "a1", "a2", "a3")
    _new_log(settings)
    _ingest(settings, tmp_path, "probe", family="Probe")

    code, rows = _table(settings)
    assert code == 1
    assert list(rows) == names()
    for name, row in rows.items():
        assert "FAILED" in row and "beyond the event log's end (1)" in row, row
        assert f"hub projections rebuild {name}" in row, row
    # the follower of `projections run` refuses to apply into it
    assert_clean_error(run_hub(settings, "projections", "run", "search"),
                       "search is at position 3, beyond the event log's end (1)",
                       "hub projections rebuild search")

    done = run_hub(settings, "projections", "rebuild", "search")
    assert done.returncode == 0, done.stderr
    code, rows = _table(settings)
    assert code == 1 and rows["search"].split()[1:] == ["1", "0", "ok"], rows["search"]


def test_read_models_of_another_log_fail_even_behind_its_end(tmp_path):
    """A new log that grew past the read models' position: each recorded the log it follows,
    so the mismatch is found though the position alone looks plausible."""
    settings = _built(tmp_path, "b1", "b2")
    _new_log(settings)
    _ingest(settings, tmp_path, "c1", "c2", "c3", "c4")
    code, rows = _table(settings)
    assert code == 1
    assert all("built from another event log" in row for row in rows.values()), rows
    line = assert_clean_error(run_hub(settings, "projections", "run", "timeline"),
                              "timeline was built from another event log")
    assert "hub projections rebuild timeline" in line
    for name in names():
        done = run_hub(settings, "projections", "rebuild", name)
        assert done.returncode == 0, done.stderr
    code, rows = _table(settings)
    assert code == 0 and all(row.split()[1:] == ["4", "0", "ok"] for row in rows.values()), rows


def test_a_data_directory_from_before_log_ids_adopts_its_log(tmp_path):
    """Neither the store nor the read models of an older release record a log id: the store
    makes one when first asked and the read models adopt it, with no rebuild."""
    settings = _built(tmp_path, "o1", "o2")
    with sqlite3.connect(settings.data_dir / "events.sqlite") as db:
        db.execute("DROP TABLE hub_log")
    for name in names():
        with sqlite3.connect(settings.data_dir / f"{name}.sqlite") as db:
            db.execute("DROP TABLE followed_log")
    code, rows = _table(settings)
    assert code == 0 and all(row.endswith(" ok") for row in rows.values()), rows
    with sqlite3.connect(settings.data_dir / "events.sqlite") as db:
        (log_id,), = db.execute("SELECT value FROM hub_log WHERE key = 'id'").fetchall()
    with sqlite3.connect(settings.data_dir / "search.sqlite") as db:
        assert db.execute("SELECT log_id FROM followed_log").fetchall() == [(log_id,)]


@pytest.mark.postgres
def test_sqlite_read_models_with_another_postgresql_log_fail(pg_databases, tmp_path):
    """A SQLite data directory's read models used with --database-url at another database."""
    settings = _built(tmp_path, "s1", "s2")
    settings.database_url = pg_databases.new()
    _ingest(settings, tmp_path, "p1", "p2", "p3")
    code, rows = _table(settings)
    assert code == 1 and all("built from another event log" in r for r in rows.values()), rows
    assert run_hub(settings, "projections", "rebuild", "search").returncode == 0
    assert _table(settings)[1]["search"].split()[1:] == ["3", "0", "ok"]


def test_ready_fails_naming_a_read_model_of_another_log_until_it_is_rebuilt(tmp_path, request):
    """`hub serve` on read models of a lost log answered /ready "pass", search lag 0, and its
    searches never found the new log's writes; once the new log grew past their position, a
    search applied the new log's events on top of the old rows."""
    settings = make_settings("sqlite", tmp_path, request)
    _ingest(settings, tmp_path, "r1", "r2")
    assert run_hub(settings, "projections", "run").returncode == 0
    _new_log(settings)
    _ingest(settings, tmp_path, "probe", family="Probe")
    with LiveServer(settings) as live:
        origin = live.base.rsplit("/fhir", 1)[0]

        def search_check() -> tuple[int, dict]:
            r = httpx.get(origin + "/ready", timeout=10, verify=httpclient.verify())
            return r.status_code, r.json()["checks"]["read-model:search"]

        def search() -> httpx.Response:
            return httpx.get(live.base + "/Patient", params={"name": "Probe"}, timeout=10,
                             headers={"accept": "application/fhir+json", **live.headers}, verify=httpclient.verify())

        code, check = search_check()
        assert code == 503 and check["status"] == "fail", check
        assert "beyond the event log's end (1)" in check["output"]
        assert "hub projections rebuild search" in check["output"]

        _ingest(settings, tmp_path, "n1", "n2", family="Probe")  # the new log passes position 2
        code, check = search_check()
        assert code == 503 and "built from another event log" in check["output"], check
        r = search()
        assert r.status_code == 503, r.text
        assert "hub projections rebuild search" in r.json()["issue"][0]["diagnostics"]

        done = run_hub(settings, "projections", "rebuild", "search")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 20
        while (check := search_check()[1])["status"] != "pass":
            assert time.monotonic() < deadline, check
            time.sleep(0.3)
        found = search().json()
        assert found["total"] == 3, found


# -- the other databases of the data directory ---------------------------------------------------


def test_an_unreadable_read_model_is_named_and_replaced_by_its_rebuild(tmp_path):
    """A garbage search.sqlite was "event store error: file is not a database" (the store was
    intact), and `projections rebuild search` failed on it the same way."""
    settings = _built(tmp_path, "u1", "u2")
    bad = settings.data_dir / "search.sqlite"
    for f in settings.data_dir.glob("search.sqlite-*"):
        f.unlink()
    garbage = bytes(range(256)) * 80
    bad.write_bytes(garbage)

    code, rows = _table(settings)
    assert code == 1 and "FAILED" in rows["search"] and str(bad) in rows["search"], rows
    assert rows["quality"].endswith(" ok")
    line = assert_clean_error(run_hub(settings, "projections", "status", "search"), str(bad),
                              "file is not a database", "hub projections rebuild search")
    assert "event store" not in line

    done = run_hub(settings, "projections", "rebuild", "search")
    assert done.returncode == 0, done.stderr
    moved = list(settings.data_dir.glob("search.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert f"moved aside to {moved[0]}" in done.stderr
    assert _table(settings)[1]["search"].split()[1:] == ["2", "0", "ok"]


def test_a_garbled_or_emptied_client_registry_is_named_not_made_again_empty(tmp_path):
    """A garbage auth.sqlite was "event store error"; an emptied one was made again empty:
    `hub auth client list` listed no clients, exit 0, every client silently gone."""
    settings = _built(tmp_path, "k1")
    registry = settings.data_dir / "auth.sqlite"
    registry.write_bytes(bytes(range(256)) * 80)
    line = assert_clean_error(run_hub(settings, "auth", "client", "list"), str(registry),
                              "file is not a database")
    assert "event store" not in line
    registry.write_bytes(b"")
    assert_clean_error(run_hub(settings, "auth", "client", "list"), str(registry),
                       "client registry is empty (0 bytes)", "restore it from a backup")
    assert registry.stat().st_size == 0
    quarantine = settings.data_dir / "quarantine.sqlite"
    quarantine.write_bytes(b"")
    assert_clean_error(run_hub(settings, "quarantine", "list"), str(quarantine),
                       "quarantine is empty (0 bytes)")
