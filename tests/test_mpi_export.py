"""``hub mpi export`` and reads of the index while a re-match runs in another process (SQLite)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time

import orjson

from hub import cli
from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op
from hub.mpi.identity import IdentityService
from hub.synth import Region


def _region(tmp_path, people: int) -> tuple[Settings, list[str]]:
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    hub = Hub(settings.open_store())
    refs = []
    ops = []
    for r in Region(seed=7, people=people).iter_resources():
        if r["resourceType"] == "Patient":
            ops.append(Op("PUT", "Patient", r["id"], r, url=f"Patient/{r['id']}"))
            refs.append(f"Patient/{r['id']}")
    for i in range(0, len(ops), 500):
        hub.execute(ops[i:i + 500], Context(), atomic=True)
    hub.store.close()
    return settings, refs


def _compatible(store, refs: list[str], n: int = 3) -> list[str]:
    """``n`` of the Patients that may be one person (no two resident ID numbers, no two sexes):
    the index refuses to put any others together."""
    from hub.mpi import conflicts

    bodies = store.latest_many("Patient", [r.split("/", 1)[1] for r in refs])
    chosen: list[tuple[str, conflicts.Keys]] = []
    for r in refs:
        k = conflicts.keys_of_stored(bodies[r.split("/", 1)[1]][1])
        if conflicts.conflict([*chosen, (r, k)]) is None:
            chosen.append((r, k))
            if len(chosen) == n:
                return [x for x, _ in chosen]
    raise AssertionError("the region has no such Patients")


def _export(settings: Settings, capsysbinary, *args: str) -> bytes:
    code = cli.main(["mpi", "export", "--data-dir", str(settings.data_dir), *args])
    captured = capsysbinary.readouterr()
    assert code == 0, captured.err.decode()[-500:]
    return captured.out


def test_export_lists_every_link_with_assurance_and_decision(tmp_path, capsysbinary):
    settings, refs = _region(tmp_path, 40)
    store = settings.open_store()
    a, b, c = _compatible(store, refs)
    svc = IdentityService.open(store, settings.data_dir)
    try:
        svc.auto_decide(a, "new", [], 1.0, {}, "r1")
        svc.auto_decide(b, "link", [a], 0.999995, {}, "r1")
        svc.auto_decide(c, "new", [], 1.0, {}, "r1")
        pc = svc.link(c, None, "steward-wang", "checked the card")  # c in a person of its own
        with svc.person.read() as cur:
            pa, pc = svc.person.person_of(cur, a), svc.person.person_of(cur, c)
            own_a = svc.person.link_of(cur, a)["person"]  # a's own, or b's if that id is less
        svc.merge(pc, pa, "steward-wang", "same woman")
    finally:
        svc.close()
        store.close()
    rows = [orjson.loads(x) for x in _export(settings, capsysbinary, "--format", "ndjson").splitlines()]
    assert [r["patient"] for r in rows] == sorted([a, b, c])
    by = {r["patient"]: r for r in rows}
    assert {r["person"] for r in rows} == {pa}
    assert by[c]["own_person"] == pc and by[a]["own_person"] == own_a
    assert {r["assurance"] for r in rows} == {"level4"}  # the steward's merge decided for all
    assert by[b]["decided_by_type"] == "matcher" and by[b]["score"] == 0.999995
    assert by[c]["decided_by_type"] == "user" and by[c]["decided_by"] == "steward-wang"
    text = _export(settings, capsysbinary).decode()
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["patient"], r["person"], r["assurance"]) for r in table] == [
        (r["patient"], r["person"], r["assurance"]) for r in rows]
    assert table[0]["manual"] in ("true", "false")
    # read in batches smaller than the region: the same rows, none twice
    from hub.mpi.listing import link_rows
    from projections.person import PersonProjection

    person = PersonProjection(settings.data_dir / "person.sqlite")
    try:
        assert list(link_rows(person, batch=2)) == list(link_rows(person)) == rows
    finally:
        person.close()
    out = tmp_path / "links.csv"
    _export(settings, capsysbinary, "--out", str(out))
    assert out.read_text() == text


def test_reads_do_not_fail_while_a_rematch_runs_in_another_process(tmp_path, capsysbinary):
    settings, refs = _region(tmp_path, 1500)
    d = str(settings.data_dir)
    assert cli.main(["projections", "rebuild", "identity-candidates", "--data-dir", d]) == 0
    capsysbinary.readouterr()
    env_cwd = settings.data_dir.parent
    rematch = subprocess.Popen([sys.executable, "-m", "hub.cli", "mpi", "rematch", "--data-dir", d],
                               cwd=env_cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reads = 0
    failures: list[str] = []
    try:
        while rematch.poll() is None:
            try:
                text = _export(settings, capsysbinary).decode()
                assert text.startswith("patient,person,")
                assert cli.main(["identity", "show", refs[reads % len(refs)], "--data-dir", d]) in (0, 2)
                capsysbinary.readouterr()
                reads += 1
            except Exception as e:  # noqa: BLE001 - any failure of a read is what this test counts
                failures.append(repr(e)[:300])
            time.sleep(0.05)
        out, err = rematch.communicate(timeout=600)
    finally:
        if rematch.poll() is None:
            rematch.kill()
    assert rematch.returncode == 0, err.decode()[-2000:]
    assert b"rematch with weights" in out
    assert reads >= 3, "the re-match ended before the reads could overlap it"
    assert failures == []
    rows = list(csv.DictReader(io.StringIO(_export(settings, capsysbinary).decode())))
    assert len(rows) == len(refs)


def test_export_names_the_steward_who_decided_a_review(tmp_path, capsysbinary):
    """A Patient waiting for a review (level2) that a steward marks not-duplicate is level4, and
    the export says the steward decided, not the matcher."""
    settings, refs = _region(tmp_path, 20)
    store = settings.open_store()
    a, b = refs[:2]
    svc = IdentityService.open(store, settings.data_dir)
    try:
        svc.auto_decide(a, "new", [], 1.0, {}, "r1")
        svc.auto_decide(b, "review", [a], 0.9, {}, "r1")
        svc.not_duplicate(b, a, "steward-zhao", "two people")
    finally:
        svc.close()
        store.close()
    rows = {r["patient"]: r for r in
            map(orjson.loads, _export(settings, capsysbinary, "--format", "ndjson").splitlines())}
    assert rows[b]["assurance"] == "level4"
    assert (rows[b]["decided_by_type"], rows[b]["decided_by"]) == ("user", "steward-zhao")
    assert (rows[a]["decided_by_type"], rows[a]["assurance"]) == ("matcher", "level3")
