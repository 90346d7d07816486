"""Long work's progress (``hub.core.jobs``): what a CLI command records where the console shows
it; a job whose process died shows as interrupted, one that raised as failed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from hub.cli import main
from hub.core.jobs import Jobs, _start_mark, both


def test_a_job_counts_its_work_and_finishes(tmp_path):
    jobs = Jobs(tmp_path)
    job = jobs.start("rematch", "re-matching every Patient", 1000)
    seen = []
    progress = both(seen.append, job.advance)
    for _ in range(10):
        progress(100)
    time.sleep(0.6)
    job.advance(0)  # the last write is at most half a second behind
    [row] = jobs.list()
    assert row["status"] == "running" and row["done"] == 1000 and row["percent"] == 100.0
    job.finish("10 linked")
    [row] = jobs.list()
    assert (row["status"], row["detail"], sum(seen)) == ("finished", "10 linked", 1000)


def test_a_job_that_raises_is_failed_and_one_whose_process_died_is_interrupted(tmp_path):
    jobs = Jobs(tmp_path)
    with pytest.raises(RuntimeError):
        with jobs.start("renormalise", "renormalisation", 5) as job:
            job.advance(2)
            raise RuntimeError("the store went away")
    code = ("import sys; from hub.core.jobs import Jobs; "
            f"Jobs({str(tmp_path)!r}).start('reindex', 'the store', 9).advance(3)")
    subprocess.run([sys.executable, "-c", code], check=True)  # exits without finishing
    by_kind = {j["kind"]: j for j in jobs.list()}
    assert by_kind["renormalise"]["status"] == "failed"
    assert "the store went away" in by_kind["renormalise"]["detail"]
    assert by_kind["reindex"]["status"] == "interrupted"


def _recorded(path, pid: int, mark: str) -> None:
    """A job left running by the process ``pid`` of ``mark``, as its ledger holds it."""
    with sqlite3.connect(path / "jobs.sqlite") as db:
        db.execute("INSERT INTO job (kind, title, started, updated, total, pid, host, mark) "
                   "VALUES (?,?,?,?,?,?,?,?)", (mark, "work", time.time(), time.time(), 9, pid,
                                                os.uname().nodename, mark))


def test_a_job_of_an_earlier_process_given_the_same_pid_is_interrupted(tmp_path):
    """A restarted container's process is PID 1 again: the job the killed one left running
    was shown running, its pid being alive (this process's, or another's now)."""
    jobs = Jobs(tmp_path)
    own = jobs.start("reindex", "this process's")
    _recorded(tmp_path, os.getpid(), "token:an earlier process")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mark = _start_mark(sleeper.pid)
        _recorded(tmp_path, sleeper.pid, str(mark))
        if mark is not None:  # the start time known: an earlier process of the sleeper's pid
            boot, start = mark.split(":")
            _recorded(tmp_path, sleeper.pid, f"{boot}:{int(start) - 1}")
        shown = {j["kind"]: j["status"] for j in jobs.list()}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert shown.pop("reindex") == "running" and shown.pop(str(mark)) == "running"
    assert set(shown.values()) == {"interrupted"}, shown
    own.finish()


@pytest.mark.skipif(subprocess.run(["unshare", "--pid", "--fork", "true"],
                                   capture_output=True).returncode != 0,
                    reason="no new pid namespace here (unshare needs privileges)")
@pytest.mark.parametrize("proc", [[], ["--mount-proc"]], ids=["host-proc", "own-proc"])
def test_a_job_of_a_killed_container_is_interrupted_in_the_next(tmp_path, proc):
    """Two processes in turn as PID 1 of a new pid namespace, as a container restarted."""
    code = ("import sys; from hub.core.jobs import Jobs; "
            f"Jobs({str(tmp_path)!r}).start('export', 'the store', 9).advance(3)")
    unshare = ["unshare", "--pid", "--fork", "--kill-child", *proc]
    subprocess.run([*unshare, sys.executable, "-c", code], check=True)
    code = (f"from hub.core.jobs import Jobs; print(Jobs({str(tmp_path)!r}).list()[0]['status'])")
    done = subprocess.run([*unshare, sys.executable, "-c", code], check=True,
                          capture_output=True, text=True)
    assert done.stdout.strip() == "interrupted"


def test_a_projection_rebuild_from_the_cli_is_recorded(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["demo", "--data-dir", str(data), "--people", "3"]) == 0
    assert main(["projections", "rebuild", "quality", "--data-dir", str(data)]) == 0
    [row] = [j for j in Jobs(data).list() if j["kind"] == "projection-rebuild"]
    assert row["status"] == "finished" and row["title"] == "rebuild quality"
    assert row["done"] == row["total"] > 0


# 8 processes forked together 120 times, each creating one new file at once. They are forked from
# a small Python process of their own, not from the test's: a worker of the suite holds every test
# module, and forking it 960 times took over a minute; the race in SQLite is the same.
_CREATE_TOGETHER = """
import multiprocessing as mp
import sys
from pathlib import Path

from hub.core.sqlitefile import create


def create_at_once(path, barrier, errors):
    barrier.wait()
    try:
        create(Path(path), "CREATE TABLE IF NOT EXISTS t (a INTEGER);")
    except Exception as e:
        errors.put(repr(e))


if __name__ == "__main__":
    mp.set_start_method("fork")
    errors = mp.Queue()
    for n in range(120):
        barrier = mp.Barrier(8)
        procs = [mp.Process(target=create_at_once, args=(f"{sys.argv[1]}/{n}.sqlite", barrier,
                                                         errors)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
    print(errors.get() if not errors.empty() else "")
"""


def test_processes_starting_together_create_one_file(tmp_path):
    """`hub serve`'s workers start at once and each creates the data directory's small files
    (the jobs ledger, the exports): one failed "database is locked" switching the new file to
    WAL, and that worker's start failed (a test of two workers met it)."""
    done = subprocess.run([sys.executable, "-c", _CREATE_TOGETHER, str(tmp_path)], check=True,
                          capture_output=True, text=True, timeout=600)
    assert done.stdout.strip() == "", done.stdout
