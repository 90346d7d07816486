"""The ``hub`` command line as an operator uses it: a real subprocess, asserting what it prints.

Every command runs as ``python -m hub.cli`` with ``HUB_DATA_DIR`` (and for PostgreSQL
``HUB_DATABASE_URL``) in its environment. Only the hypothesis test calls ``hub.cli.main`` in-process,
to stay fast, and the one that turns the hub's own checks off, to reach the database's.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub import cli
from hub.core import conditional, httpclient, jsontext
from hub.core.config import Settings

from .conftest import _pg_available, free_port

SUMMARY = re.compile(
    r"^(\d+) inputs in [\d.]+s: (\d+) accepted \((\d+) created, (\d+) updated, (\d+) unchanged"
    r"(?:, (\d+) deleted)?\), (\d+) rejected$",
    re.M,
)


# -- running the command ---------------------------------------------------------------------------


def hub_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("HUB_DATABASE_URL", None)
    if settings.database_url:
        env["HUB_DATABASE_URL"] = settings.database_url
    return env


def run_hub(settings: Settings, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``hub ARGS`` in a subprocess, in the data directory's parent (so no ./var lands anywhere)."""
    cwd = settings.data_dir.parent
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "hub.cli", *map(str, args)], env=hub_env(settings),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def counts(stdout: str) -> dict[str, int]:
    m = SUMMARY.search(stdout)
    assert m, f"no summary line in:\n{stdout}"
    inputs, accepted, created, updated, unchanged, deleted, rejected = m.groups()
    out = dict(inputs=int(inputs), accepted=int(accepted), created=int(created),
               updated=int(updated), unchanged=int(unchanged), deleted=int(deleted or 0),
               rejected=int(rejected))
    assert out["accepted"] + out["rejected"] == out["inputs"], stdout
    assert out["created"] + out["updated"] + out["unchanged"] + out["deleted"] == out["accepted"], stdout
    return out


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def current_ids(store, rtype: str) -> list[str]:
    """Ids of the resources of a type that exist now, read off the type's history."""
    latest: dict[str, str] = {}
    for row in store.history(rtype=rtype, limit=10_000):  # newest first
        latest.setdefault(row.rid, row.kind)
    return sorted(rid for rid, kind in latest.items() if kind != "deleted")


def rejected_records(settings: Settings) -> list[dict]:
    return [orjson.loads(line) for f in sorted((settings.data_dir / "rejected").glob("*.ndjson"))
            for line in f.read_bytes().splitlines()]


def write(path: Path, data: bytes | str | dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, dict):
        data = orjson.dumps(data)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def ndjson(*resources: dict | str) -> bytes:
    return b"".join((r.encode() if isinstance(r, str) else orjson.dumps(r)) + b"\n" for r in resources)


def patient(rid: str, family: str = "Wang", **more) -> dict:
    return {"resourceType": "Patient", "id": rid, "name": [{"family": family}], **more}


def observation(rid: str, subject: str) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"text": "body weight"}, "subject": {"reference": subject},
            "valueQuantity": {"value": 61.5, "unit": "kg"}}


TX_PATIENT = "urn:uuid:5f0c9a3e-2b7d-4c1e-9a57-0d3c6f1b2a11"


# -- the feed: every input form hub ingest reads ---------------------------------------------------

# created on the first run: patient.json 1, transaction 2, batch 2, collection 3, NDJSON 3 + 2
VALID_INPUTS = 13


@pytest.fixture(scope="module")
def feed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("feed")
    write(root / "patient.json", patient("p1"))
    write(root / "bundles" / "transaction.json", {
        "resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": TX_PATIENT,
             "resource": {"resourceType": "Patient",
                          "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "110105198003151234"}]},
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": "identifier=urn:oid:2.16.156.10011.1.3|110105198003151234"}},
            {"resource": observation("tx-obs", TX_PATIENT),
             "request": {"method": "PUT", "url": "Observation/tx-obs"}},
        ]})
    write(root / "bundles" / "batch.json", {
        "resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": patient("b1"), "request": {"method": "PUT", "url": "Patient/b1"}},
            {"resource": observation("b-obs", "Patient/b1"),
             "request": {"method": "PUT", "url": "Observation/b-obs"}},
        ]})
    write(root / "bundles" / "collection.json", {
        "resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": patient("c1")}, {"resource": patient("c2", "Li")},
            {"resource": {"resourceType": "Organization", "id": "org1", "name": "Township centre"}},
        ]})
    # a byte order mark and a blank line, as exports from other systems have them
    write(root / "ndjson" / "Patient.ndjson",
          b"\xef\xbb\xbf" + ndjson(patient("n1"), patient("n2")) + b"\n" + ndjson(patient("n3")))
    write(root / "ndjson" / "Observation.ndjson.gz",
          gzip.compress(ndjson(observation("g1", "Patient/n1"), observation("g2", "Patient/n2"))))
    write(root / "ndjson" / "README.txt", "not an input: files of other kinds in a folder are skipped")
    return root


def test_ingest_every_form_then_replay_changes_nothing(settings, feed):
    first = run_hub(settings, "ingest", feed)
    assert first.returncode == 0, first.stdout + first.stderr
    assert counts(first.stdout) == dict(inputs=VALID_INPUTS, accepted=VALID_INPUTS,
                                        created=VALID_INPUTS, updated=0, unchanged=0, deleted=0,
                                        rejected=0)
    assert first.stderr == ""
    assert not (settings.data_dir / "rejected").exists() or not rejected_records(settings)

    again = run_hub(settings, "ingest", feed)
    assert again.returncode == 0, again.stdout + again.stderr
    assert counts(again.stdout) == dict(inputs=VALID_INPUTS, accepted=VALID_INPUTS, created=0,
                                        updated=0, unchanged=VALID_INPUTS, deleted=0, rejected=0)

    store = settings.open_store()
    try:
        assert store.count_history() == VALID_INPUTS  # the replay appended no event
        assert len(current_ids(store, "Patient")) == 8  # p1, the transaction's, b1, c1, c2, n1-n3
    finally:
        store.close()
    # every entry of the collection and the transaction was stored, references resolved
    shown = run_hub(settings, "show", "Observation/tx-obs")
    assert shown.returncode == 0, shown.stderr
    ref = orjson.loads(shown.stdout)["subject"]["reference"]
    assert ref.startswith("Patient/") and not ref.startswith("Patient/urn")
    assert run_hub(settings, "show", ref).returncode == 0
    assert orjson.loads(run_hub(settings, "show", "Patient/c2").stdout)["name"] == [{"family": "Li"}]
    assert run_hub(settings, "show", "Organization/org1").returncode == 0
    assert orjson.loads(run_hub(settings, "show", "Observation/g2").stdout)["valueQuantity"]["value"] == 61.5


def test_ingest_single_files_and_updates(settings, feed):
    one = run_hub(settings, "ingest", feed / "patient.json", feed / "ndjson" / "Observation.ndjson.gz")
    assert one.returncode == 0, one.stderr
    assert counts(one.stdout)["created"] == 3
    write(settings.data_dir.parent / "v2" / "p1.ndjson", ndjson(patient("p1", "Zhang"), patient("p1", "Zhao")))
    two = run_hub(settings, "ingest", settings.data_dir.parent / "v2")
    # two versions of one resource in one batch: both stored, in order, the later one wins
    assert counts(two.stdout) == dict(inputs=2, accepted=2, created=0, updated=2, unchanged=0,
                                      deleted=0, rejected=0)
    assert orjson.loads(run_hub(settings, "show", "Patient/p1").stdout)["name"] == [{"family": "Zhao"}]


def test_ingesting_resources_without_ids_again_stores_nothing_twice(settings, tmp_path):
    """A resource without an id gets one of its content: an interrupted import run again, or a
    file ingested twice, finds what it stored (unchanged) instead of storing every fact again.
    Two identical resources in one input are still two."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "心率"},
           "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 72, "unit": "/min"}}
    other = {**obs, "valueQuantity": {"value": 80, "unit": "/min"}}
    folder = tmp_path / "no-ids"
    write(folder / "obs.ndjson", ndjson(obs, other, obs))
    first = run_hub(settings, "ingest", folder)
    assert counts(first.stdout)["created"] == 3, first.stdout + first.stderr
    again = run_hub(settings, "ingest", folder)
    assert counts(again.stdout) == dict(inputs=3, accepted=3, created=0, updated=0, unchanged=3,
                                        deleted=0, rejected=0), again.stdout
    store = settings.open_store()
    try:
        assert len(current_ids(store, "Observation")) == 3
    finally:
        store.close()


def test_ingesting_an_export_of_creates_again_stores_nothing_twice(settings, tmp_path):
    """A transaction of POST entries with urn:uuid fullUrls (Synthea's, most exports') was
    stored again by every run: three runs, three of each person. Its creates take the id of
    their content, as resources without ids do; a conditional create stays one."""
    pat, obs = "urn:uuid:" + str(uuid.uuid4()), "urn:uuid:" + str(uuid.uuid4())
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pat, "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "name": [{"family": "Export"}]}},
        {"fullUrl": obs, "request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "心率"},
                      "subject": {"reference": pat}}}]}
    write(tmp_path / "export" / "tx.json", orjson.dumps(tx))
    runs = [run_hub(settings, "ingest", tmp_path / "export") for _ in range(3)]
    assert counts(runs[0].stdout)["created"] == 2, runs[0].stdout + runs[0].stderr
    for again in runs[1:]:
        assert counts(again.stdout)["unchanged"] == 2, again.stdout + again.stderr
    store = settings.open_store()
    try:
        assert len(current_ids(store, "Patient")) == 1
        [oid] = current_ids(store, "Observation")
        [pid] = current_ids(store, "Patient")
    finally:
        store.close()
    shown = orjson.loads(run_hub(settings, "show", f"Observation/{oid}").stdout)
    assert shown["subject"]["reference"] == f"Patient/{pid}"


def test_the_same_create_under_two_full_urls_in_two_files_stays_two_records(settings, tmp_path):
    """Two files each POSTing the same Observation under its own urn:uuid fullUrl are two
    facts, ingested in one run or in two (they collapsed into one record across runs)."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "体温"},
           "subject": {"reference": "Patient/someone"}}

    def tx() -> bytes:
        return orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
            {"fullUrl": "urn:uuid:" + str(uuid.uuid4()),
             "request": {"method": "POST", "url": "Observation"}, "resource": obs}]})

    write(tmp_path / "a" / "one.json", tx())
    write(tmp_path / "b" / "two.json", tx())
    for folder in ("a", "b", "a"):  # the last run is a re-run: nothing new
        run = run_hub(settings, "ingest", tmp_path / folder)
        assert run.returncode == 0, run.stdout + run.stderr
    store = settings.open_store()
    try:
        assert len(current_ids(store, "Observation")) == 2
    finally:
        store.close()


def test_a_rejected_inputs_file_is_replayed_by_ingest_once_fixed(settings, tmp_path):
    """What ``hub ingest`` keeps "for replay" is taken back by ``hub ingest`` as it is: each
    line's input is replayed (it was refused as having no resourceType)."""
    write(tmp_path / "in" / "p.ndjson", ndjson(patient("r1", birthDate="yesterday"), patient("r2")))
    first = run_hub(settings, "ingest", tmp_path / "in")
    assert counts(first.stdout)["rejected"] == 1
    [kept] = sorted((settings.data_dir / "rejected").glob("*.ndjson"))
    replay = run_hub(settings, "ingest", kept)
    assert counts(replay.stdout)["rejected"] == 1  # still invalid: refused for what it is
    assert "birthDate" in replay.stdout and "no resourceType" not in replay.stdout
    # rejected again, it stays in its line, not copied anew: replaying the folder doubled it
    # each time it was run
    assert "1 replayed inputs rejected again, still kept where they were" in replay.stdout
    assert run_hub(settings, "ingest", settings.data_dir / "rejected").returncode == 1
    assert sorted((settings.data_dir / "rejected").glob("*")) == [kept]
    assert len(kept.read_text().splitlines()) == 1
    copied = tmp_path / "copied.ndjson"  # a copy elsewhere is the operator's: kept anew
    copied.write_text(kept.read_text())
    assert "rejected inputs kept for replay in" in run_hub(settings, "ingest", copied).stdout
    fixed = tmp_path / "fixed.ndjson"
    fixed.write_text(kept.read_text().replace("yesterday", "1990-01-01"))
    again = run_hub(settings, "ingest", fixed)
    assert counts(again.stdout)["created"] == 1, again.stdout
    assert orjson.loads(run_hub(settings, "show", "Patient/r1").stdout)["birthDate"] == "1990-01-01"


def _events(settings: Settings) -> list[tuple[str, int, str]]:
    """(Type/id, version, kind) of every resource event stored, in log order."""
    store = settings.open_store()
    try:
        return [(f"{r.rtype}/{r.rid}", r.version, r.kind)
                for r in store.history(limit=100_000)][::-1]
    finally:
        store.close()


def test_running_an_import_again_writes_nothing_and_the_summary_counts_what_was_stored(
        settings, tmp_path):
    """A newborn's record carrying a parent's resident ID (as exports have them) was stored
    as sent, then a second run dropped the number as a feed's join would, writing a new version
    the summary called "unchanged"; the synthetic region's bundles did so for three Patients.
    A second run stores nothing, and says so."""
    from hub.core.events import CREATED
    from hub.synth import Region
    from hub.synth.bundles import hospital_bundle, patient_bundles

    write(tmp_path / "tx" / "tx.json", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaaaaaaa-1111-4111-8111-111111111111",
         "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "identifier": [
             {"system": RESIDENT, "value": "50011119871120654X"},
             {"system": "urn:oid:1.2.3", "value": "MRN-C1"}],
             "name": [{"text": "苏敏佳之女"}], "gender": "female", "birthDate": "2021-10-24"}}]})
    region = Region(seed=7, people=30)
    write(tmp_path / "region" / "00-hospitals.json", hospital_bundle(region))
    for i, bundle in enumerate(patient_bundles(region)):
        write(tmp_path / "region" / f"p{i:04d}.json", bundle)
    for folder in ("tx", "region"):
        before = len(_events(settings))
        first = run_hub(settings, "ingest", tmp_path / folder)
        assert first.returncode == 0, first.stdout + first.stderr
        made = _events(settings)
        assert counts(first.stdout)["created"] == sum(k == CREATED for _, _, k in made[before:])
        again = run_hub(settings, "ingest", tmp_path / folder)
        assert again.returncode == 0, again.stdout + again.stderr
        n = counts(first.stdout)["inputs"]
        assert counts(again.stdout) == dict(inputs=n, accepted=n, created=0, updated=0,
                                            unchanged=n, deleted=0, rejected=0), again.stdout
        assert _events(settings) == made  # no new version


def test_a_file_reached_twice_in_one_run_is_read_once(settings, tmp_path):
    """A folder and a file in it, or a link to a file beside it: the file was read twice and
    its resources without an id stored twice (6 created of 3)."""
    obs = [{"resourceType": "Observation", "status": "final", "code": {"text": t}}
           for t in ("a", "b", "c")]
    folder = tmp_path / "ov"
    write(folder / "a.ndjson", ndjson(*obs))
    (folder / "link.ndjson").symlink_to("a.ndjson")
    run = run_hub(settings, "ingest", folder, folder / "a.ndjson")
    assert run.returncode == 0, run.stdout + run.stderr
    assert counts(run.stdout) == dict(inputs=3, accepted=3, created=3, updated=0, unchanged=0,
                                      deleted=0, rejected=0), run.stdout
    assert f"  skipped {folder / 'link.ndjson'}: already read as {folder / 'a.ndjson'}" \
        in run.stdout.splitlines()
    assert f"  skipped {folder / 'a.ndjson'}: already read" in run.stdout.splitlines()
    store = settings.open_store()
    try:
        assert len(current_ids(store, "Observation")) == 3
    finally:
        store.close()


def test_a_replay_of_rejected_inputs_keeps_their_institution_and_location(settings, tmp_path):
    """The rejected-inputs file kept what was sent and why, not the run's ``--institution``: a
    replay of it was recorded under no institution (counted under "-"), and each input was
    reported at its line of the rejected file, not where it was first read."""
    inst = "2.16.156.10011.99.1.7"
    bad = {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
           "valueQuantity": {"value": "2"}}
    write(tmp_path / "in" / "obs.ndjson", ndjson(
        {"resourceType": "Observation", "status": "final", "code": {"text": "a"}}, bad))
    write(tmp_path / "in" / "batch.json", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "PUT", "url": "Patient/ok1"}, "resource": patient("ok1")},
        {"request": {"method": "PUT", "url": "Patient/bad1"},
         "resource": patient("bad1", gender="man")}]})
    first = run_hub(settings, "ingest", "--institution", inst, tmp_path / "in")
    assert counts(first.stdout)["rejected"] == 2, first.stdout
    [kept] = sorted((settings.data_dir / "rejected").glob("*.ndjson"))
    assert {r["where"]: r["source"] for r in rejected_records(settings)} == {
        str(tmp_path / "in" / "batch.json") + "#entry[1]": {"feed": "file", "institution": inst},
        str(tmp_path / "in" / "obs.ndjson") + ":2": {"feed": "file", "institution": inst}}
    # replayed as it is: refused again, where it was first read
    again = run_hub(settings, "ingest", kept)
    assert counts(again.stdout)["rejected"] == 2
    assert f"  rejected {tmp_path / 'in' / 'obs.ndjson'}:2: must be a JSON number" in again.stdout
    assert f"  rejected {tmp_path / 'in' / 'batch.json'}#entry[1]: " in again.stdout
    # fixed: stored under the institution of the run that first read it
    fixed = tmp_path / "fixed.ndjson"
    fixed.write_text(kept.read_text().replace('\\"2\\"', "2").replace('\\"man\\"', '\\"male\\"'))
    replay = run_hub(settings, "ingest", fixed)
    assert counts(replay.stdout)["created"] == 2, replay.stdout + fixed.read_text()
    hist = run_hub(settings, "history", "Patient/bad1")
    assert hist.stdout.strip().splitlines()[-1].endswith(f"feed=file, institution={inst}")
    written = [e for e in _events(settings) if e[0].startswith("Observation/")]
    assert len(written) == 2
    for ref, _, _ in written:
        row = run_hub(settings, "history", ref).stdout.strip().splitlines()[-1]
        assert row.endswith(f"feed=file, institution={inst}"), row


# -- rejected inputs -------------------------------------------------------------------------------


BAD_LINES = [
    orjson.dumps(patient("x1")).decode(),  # 1 ok
    '{"resourceType": "Patient", "id": "x9"',  # 2 invalid JSON
    orjson.dumps(patient("x2")).decode(),  # 3 ok
    '{"resourceType": "Alien", "id": "a1"}',  # 4 unknown resource type
    "",  # 5 blank: skipped, still counted as a line
    orjson.dumps(patient("x3", birthDate="yesterday")).decode(),  # 6 invalid resource
    orjson.dumps(patient("x4")).decode(),  # 7 ok
]


def test_rejected_inputs_are_reported_kept_and_the_rest_stored(settings, tmp_path):
    bad = tmp_path / "bad"
    mixed = write(bad / "mixed.ndjson", "\n".join(BAD_LINES) + "\n")
    invalid = write(bad / "invalid.json", patient("x5", active="maybe"))
    write(bad / "ok.json", patient("x6"))
    write(bad / "not-gzip.ndjson.gz", b"these bytes are not gzip")
    odd = write(bad / "odd-collection.json", {"resourceType": "Bundle", "type": "collection", "entry": 5})
    write(bad / "batch.json", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("x7"), "request": {"method": "PUT", "url": "Patient/x7"}},
        {"resource": {"resourceType": "Patient", "gender": 3}, "request": {"method": "POST", "url": "Patient"}},
    ]})
    failed_tx = write(bad / "transaction.json", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("t1"), "request": {"method": "PUT", "url": "Patient/t1"}},
        {"resource": patient("t2"), "request": {"method": "PUT", "url": "Patient/other"}},
    ]})

    proc = run_hub(settings, "ingest", bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # 6 lines + invalid + ok + not-gzip + odd + 2 batch entries + 2 transaction entries
    assert counts(proc.stdout) == dict(inputs=14, accepted=5, created=5, updated=0, unchanged=0,
                                       deleted=0, rejected=9)
    out = proc.stdout
    assert f"rejected {mixed}:2: The body is not valid JSON" in out
    assert f"rejected {mixed}:4: Unknown resource type 'Alien'" in out
    assert re.search(rf"rejected {re.escape(str(mixed))}:6: .+ at Patient\.birthDate", out)
    assert re.search(rf"rejected {re.escape(str(invalid))}: .+ at Patient\.active", out)
    assert f"rejected {bad / 'not-gzip.ndjson.gz'}: Cannot read the file" in out
    assert f"rejected {odd}: Bundle.entry must be an array" in out
    assert re.search(rf"rejected {re.escape(str(bad / 'batch.json'))}#entry\[1\]: .+gender", out)
    assert f"rejected {failed_tx}: The resource id 't2' differs from the request URL" in out
    # reported in input order
    wheres = re.findall(r"^  rejected (\S+?):? ", out, re.M)
    assert wheres == sorted(wheres, key=lambda w: (w.split(":")[0].split("#")[0], w))
    assert "rejected inputs kept for replay in " in out

    stored = settings.open_store()
    try:
        assert current_ids(stored, "Patient") == ["x1", "x2", "x4", "x6", "x7"]
    finally:
        stored.close()
    # kept with their OperationOutcome, byte for byte, so they can be fixed and replayed
    records = {r["where"]: r for r in rejected_records(settings)}
    assert len(records) == 8  # the failed transaction is kept once, as the whole Bundle
    for r in records.values():
        assert r["outcome"]["resourceType"] == "OperationOutcome"
        assert r["outcome"]["issue"][0]["severity"] == "error"
    assert records[f"{mixed}:2"]["input"] == BAD_LINES[1] + "\n"
    assert records[f"{mixed}:4"]["outcome"]["issue"][0]["expression"] == ["resourceType"]
    assert records[f"{mixed}:6"]["outcome"]["issue"][0]["expression"] == ["Patient.birthDate"]
    assert orjson.loads(records[str(failed_tx)]["input"]) == orjson.loads(failed_tx.read_bytes())

    fixed = orjson.loads(records[f"{mixed}:6"]["input"]) | {"birthDate": "1990-05-01"}
    batch_entry = orjson.loads(records[f"{bad / 'batch.json'}#entry[1]"]["input"])
    assert batch_entry["type"] == "batch" and len(batch_entry["entry"]) == 1
    batch_entry["entry"][0]["resource"]["gender"] = "female"
    replay = write(tmp_path / "replay" / "fixed.ndjson", ndjson(fixed, batch_entry))
    again = run_hub(settings, "ingest", replay)
    assert again.returncode == 0, again.stdout
    assert counts(again.stdout)["created"] == 2


def nul_criteria_bundle(rid: str) -> dict:
    """A transaction whose conditional create and conditional reference hold a NUL (%00)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "c"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:x|a%00b"}},
        {"resource": observation(rid, "Patient?identifier=urn:x|a%00b"),
         "request": {"method": "PUT", "url": f"Observation/{rid}"}}]}


def test_criteria_holding_a_nul_reject_their_input_and_the_run_goes_on(settings, tmp_path):
    """On PostgreSQL the NUL ended the whole import (exit 2, "event store error", no file
    named); the inputs after it were never read and the rejected ones never kept."""
    folder = tmp_path / "in"
    tx = write(folder / "a.json", nul_criteria_bundle("o1"))
    write(folder / "b.ndjson", ndjson(
        patient("z1"), '{"resourceType":"Patient","id":"z2","name":[{"family":"A\\u0000B"}]}'))
    proc = run_hub(settings, "ingest", folder)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert counts(proc.stdout) == dict(inputs=4, accepted=1, created=1, updated=0, unchanged=0,
                                       deleted=0, rejected=3)
    assert f"rejected {tx}: Search criteria 'identifier=urn:x|a%00b' hold the control character " \
        "U+0000" in proc.stdout
    assert f"rejected {folder / 'b.ndjson'}:2: The string holds U+0000" in proc.stdout
    assert sorted(r["where"] for r in rejected_records(settings)) == [
        str(tx), f"{folder / 'b.ndjson'}:2"]
    stored = settings.open_store()
    try:
        assert current_ids(stored, "Patient") == ["z1"]
        assert current_ids(stored, "Observation") == []
    finally:
        stored.close()


def test_a_value_postgresql_refuses_rejects_that_input_only(pg_databases, tmp_path, monkeypatch,
                                                            capsys):
    """With the checks in front of it off, a NUL reaches PostgreSQL, which refuses it: the input
    holding it is rejected, named and kept, the others stored; the run goes on."""
    monkeypatch.setattr(jsontext, "text_may_be_bad", lambda raw: False)
    monkeypatch.setattr(conditional, "_CONTROL", re.compile("(?!)"))
    folder = tmp_path / "in"
    tx = write(folder / "a.json", nul_criteria_bundle("o1"))
    lines = write(folder / "b.ndjson", ndjson(
        patient("y1"), patient("y2", identifier=[{"system": "urn:x", "value": "a\x00b"}]),
        patient("y3")))
    write(folder / "c.json", patient("y4"))
    data_dir = tmp_path / "data"
    rc = cli.main(["ingest", "--quiet", "--data-dir", str(data_dir),
                   "--database-url", pg_databases.new(), str(folder)])
    out = capsys.readouterr()
    assert rc == 1, out
    assert "event store error" not in out.err
    assert counts(out.out) == dict(inputs=6, accepted=3, created=3, updated=0, unchanged=0,
                                   deleted=0, rejected=3)  # the transaction: its two entries
    refused = "The event store cannot take a value of this request: "
    assert f"rejected {tx}: {refused}PostgreSQL text fields cannot contain NUL" in out.out
    assert f"rejected {lines}:2: {refused}" in out.out  # at the commit: said otherwise
    kept = [orjson.loads(line) for f in (data_dir / "rejected").glob("*.ndjson")
            for line in f.read_bytes().splitlines()]
    assert sorted(r["where"] for r in kept) == [str(tx), f"{lines}:2"]


def test_missing_path_is_one_clear_line_and_stores_nothing(settings, feed, tmp_path):
    proc = run_hub(settings, "ingest", feed / "patient.json", tmp_path / "nowhere.ndjson")
    assert_clean_error(proc, "hub ingest:", "nowhere.ndjson", "does not exist")
    assert proc.stdout == ""
    assert_clean_error(run_hub(settings, "show", "Patient/p1"), "hub show:")
    other = write(tmp_path / "notes.txt", "hello")
    assert_clean_error(run_hub(settings, "ingest", other), "notes.txt", ".json or .ndjson")


@pytest.mark.parametrize("url, needle", [
    ("postgresql://nobody:s3cret@127.0.0.1:1/x", "cannot connect to PostgreSQL at nobody@127.0.0.1:1/x"),
    ("postgresql://postgres@127.0.0.1:5432/hub_no_such_database", "does not exist"),
    ("not a url", "not a PostgreSQL URL"),
    # the URL's own parameters hold: sslmode=require was dropped, and the hub wrote patient data
    # over plain TCP to a server without TLS
    ("postgresql://postgres@127.0.0.1:5432/test?sslmode=require", "SSL"),
])
def test_bad_database_url_is_a_clear_error(tmp_path, feed, url, needle):
    if "5432" in url and not _pg_available():
        pytest.skip("needs the PostgreSQL server to say the database does not exist")
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    t0 = time.monotonic()
    for args in (["--database-url", url, "ingest", feed], ["ingest", "--database-url", url, feed]):
        line = assert_clean_error(run_hub(settings, *args), "hub ingest:", needle)
        assert "s3cret" not in line
    settings.database_url = url  # the same from HUB_DATABASE_URL
    assert_clean_error(run_hub(settings, "history", "Patient/p1"), "hub history:", needle)
    assert time.monotonic() - t0 < 20  # no waiting for a pool to give up


# -- show and history ------------------------------------------------------------------------------


def test_show_and_history(settings, tmp_path):
    d = tmp_path / "in"
    write(d / "v1.json", patient("s1", "Wang"))
    write(d / "v2.json", patient("s1", "Wáng"))
    write(d / "delete.json", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/s1"}}]})
    assert run_hub(settings, "ingest", "--institution", "2.16.156.10011.99.1.1", d / "v1.json").returncode == 0
    assert run_hub(settings, "ingest", d / "v2.json").returncode == 0

    shown = run_hub(settings, "show", "Patient/s1")
    assert shown.returncode == 0 and shown.stderr == ""
    body = orjson.loads(shown.stdout)
    assert (body["id"], body["meta"]["versionId"], body["name"]) == ("s1", "2", [{"family": "Wáng"}])
    v1 = orjson.loads(run_hub(settings, "show", "Patient/s1/_history/1").stdout)
    assert (v1["meta"]["versionId"], v1["name"]) == ("1", [{"family": "Wang"}])

    deleted = run_hub(settings, "ingest", d / "delete.json")
    assert deleted.returncode == 0, deleted.stdout
    assert counts(deleted.stdout)["deleted"] == 1
    assert_clean_error(run_hub(settings, "show", "Patient/s1"), "Patient/s1 was deleted")
    assert_clean_error(run_hub(settings, "show", "Patient/s1/_history/3"), "deletion")
    assert run_hub(settings, "show", "Patient/s1/_history/2").returncode == 0

    hist = run_hub(settings, "history", "Patient/s1")
    assert hist.returncode == 0, hist.stderr
    header, *rows = hist.stdout.strip().splitlines()
    assert header.split() == ["version", "kind", "last", "updated", "request", "source"]
    assert [r.split()[:2] for r in rows] == [["3", "deleted"], ["2", "updated"], ["1", "created"]]
    for row in rows:
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", row), row
    assert "DELETE Patient/s1" in rows[0] and "PUT Patient/s1" in rows[2]
    assert "feed=file, institution=2.16.156.10011.99.1.1" in rows[2]
    assert rows[1].rstrip().endswith("feed=file")

    assert_clean_error(run_hub(settings, "show", "Patient/nobody"), "Patient/nobody is not known")
    assert_clean_error(run_hub(settings, "show", "Patient/s1/_history/9"), "no version 9")
    assert_clean_error(run_hub(settings, "show", "Patient/s1/_history/0"), "no version 0")
    assert_clean_error(run_hub(settings, "history", "Patient/nobody"), "Patient/nobody is not known")
    assert_clean_error(run_hub(settings, "show", "Patient"), "is not Type/id")
    # --data-dir after the command, pointing at nothing: no new empty store
    empty = tmp_path / "empty"
    if not settings.database_url:
        assert_clean_error(run_hub(settings, "show", "--data-dir", empty, "Patient/s1"), "no event store")
        assert not empty.exists()


RESIDENT = "urn:oid:2.16.156.10011.1.3"
MRN = "urn:oid:2.16.156.10011.99.1.1.1"


def _ids(body: dict) -> list[tuple[str, str]]:
    return [(i["system"], i["value"]) for i in body.get("identifier", ())]


def test_an_update_loaded_by_ingest_replaces_what_its_file_leaves_out(settings, tmp_path):
    """FHIR JSON loaded with ``hub ingest`` is stored as its client wrote it: an update replaces,
    as FHIR says. It was written as a message feed's, which keeps what a message leaves unsaid:
    the second file's Patient kept the first one's other identifier, birth date, address, phone
    and ``deceasedBoolean: true``, and the summary called the run "unchanged"."""
    old, new = "620921193912141755", "500102198504184652"  # born 1939-12-14, 1985-04-18
    d = tmp_path / "in"
    write(d / "v1.json", patient("jp1", identifier=[{"system": MRN, "value": "97000005"},
                                                    {"system": RESIDENT, "value": old}],
                                 birthDate="1939-12-14", address=[{"text": "旧地址"}],
                                 telecom=[{"system": "phone", "value": "13800000000"}],
                                 deceasedBoolean=True))
    write(d / "v2.json", patient("jp1", identifier=[{"system": RESIDENT, "value": new}]))
    assert counts(run_hub(settings, "ingest", d / "v1.json").stdout)["created"] == 1
    second = run_hub(settings, "ingest", d / "v2.json")
    assert second.returncode == 0, second.stdout + second.stderr
    assert counts(second.stdout) == dict(inputs=1, accepted=1, created=0, updated=1, unchanged=0,
                                         deleted=0, rejected=0), second.stdout
    body = orjson.loads(run_hub(settings, "show", "Patient/jp1").stdout)
    assert body["meta"]["versionId"] == "2"
    assert {k: v for k, v in body.items() if k != "meta"} == patient(
        "jp1", identifier=[{"system": RESIDENT, "value": new}])
    store = settings.open_store()
    try:
        assert store.find_by_identifier("Patient", RESIDENT, old) == []
        assert store.find_by_identifier("Patient", MRN, "97000005") == []
        assert store.find_by_identifier("Patient", RESIDENT, new) == ["jp1"]
    finally:
        store.close()
    again = run_hub(settings, "ingest", d / "v2.json")
    assert counts(again.stdout)["unchanged"] == 1, again.stdout
    assert orjson.loads(run_hub(settings, "show", "Patient/jp1").stdout)["meta"]["versionId"] == "2"


def test_a_demo_region_loaded_over_another_keeps_no_other_persons_resident_id(settings):
    """Two demo seeds into one data directory write other people under the same ids: the
    Patient became the second seed's person and still carried the first one's resident ID."""
    ref = "Patient/p-1-97000005"
    assert run_hub(settings, "demo", "--people", "30", "--seed", "1").returncode == 0
    first = orjson.loads(run_hub(settings, "show", ref).stdout)
    assert run_hub(settings, "demo", "--people", "30", "--seed", "3").returncode == 0
    second = orjson.loads(run_hub(settings, "show", ref).stdout)
    assert first["birthDate"][:4] != second["birthDate"][:4]  # another person under the id
    old = {v for s, v in _ids(first) if s == RESIDENT}
    now = {v for s, v in _ids(second) if s == RESIDENT}
    assert len(now) == 1 and not now & old
    store = settings.open_store()
    try:
        assert all("p-1-97000005" not in store.find_by_identifier("Patient", RESIDENT, v) for v in old)
    finally:
        store.close()


# -- demo, generate, serve -------------------------------------------------------------------------


def test_demo_twice_stores_nothing_new(settings):
    first = run_hub(settings, "demo", "--people", "30")
    assert first.returncode == 0, first.stdout + first.stderr
    m = re.search(r"(\d+) resources, (\d+) accepted \((\d+) created, 0 updated, 0 unchanged\), "
                  r"0 rejected", first.stdout)
    assert m and m[1] == m[2] == m[3] and int(m[1]) > 30, first.stdout
    total = int(m[1])
    second = run_hub(settings, "demo", "--people", "30")
    assert second.returncode == 0
    assert f"{total} resources, {total} accepted (0 created, 0 updated, {total} unchanged)" in second.stdout
    store = settings.open_store()
    try:
        assert store.count_history() == total
    finally:
        store.close()


def test_generate_then_ingest(settings, tmp_path):
    out = tmp_path / "region"
    gen = run_hub(settings, "generate", out, "--people", "20")
    assert gen.returncode == 0, gen.stderr
    written = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", gen.stdout.split(":", 1)[1])}
    assert sum(written.values()) == int(re.search(r"wrote (\d+) resources", gen.stdout)[1])
    for rtype, n in written.items():
        assert len((out / f"{rtype}.ndjson").read_bytes().splitlines()) == n
    with (out / "truth.csv").open(newline="") as f:
        truth = list(csv.DictReader(f))
    assert len(truth) == written["Patient"]
    assert all(r["patient_reference"].startswith("Patient/") for r in truth)

    loaded = run_hub(settings, "ingest", out)
    assert loaded.returncode == 0, loaded.stdout
    n = sum(written.values())
    assert counts(loaded.stdout) == dict(inputs=n, accepted=n, created=n, updated=0, unchanged=0,
                                         deleted=0, rejected=0)
    one = truth[0]["patient_reference"]
    assert orjson.loads(run_hub(settings, "show", one).stdout)["resourceType"] == "Patient"


def test_serve_on_every_address_with_access_control_needs_its_public_url(tmp_path):
    """With access control on, --host 0.0.0.0 and no HUB_BASE_URL the hub started, and every
    token had to name http://0.0.0.0:… as its audience (a token for the address clients used
    was refused as "wrong audience"), every link pointing there too."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    env = {**hub_env(settings), "HUB_AUTH": "1"}  # the suite may run with it off
    env.pop("HUB_BASE_URL", None)
    (tmp_path / "data").mkdir()
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--host", "0.0.0.0",
                           "--port", str(free_port())], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert_clean_error(proc, "HUB_BASE_URL")


def test_serve_answers_metadata(tmp_path, feed):
    data = tmp_path / "served"
    settings = Settings(data_dir=data)
    settings.database_url = None
    assert run_hub(settings, "ingest", feed / "patient.json").returncode == 0
    port = free_port()
    env = hub_env(Settings(data_dir=tmp_path / "elsewhere"))  # --data-dir wins over the environment
    env.pop("HUB_DATABASE_URL", None)
    env["HUB_AUTH"] = "0"  # on loopback: this is about where the data is, not who may read it
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port),
                             "--data-dir", str(data)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                r = httpx.get(base + "/metadata", timeout=2, verify=httpclient.verify())
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "hub serve did not answer in 30 s"
                time.sleep(0.1)
        assert r.status_code == 200
        assert r.json()["resourceType"] == "CapabilityStatement"
        assert httpx.get(base + "/Patient/p1", timeout=5, verify=httpclient.verify()).json()["id"] == "p1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert f"FHIR API on http://127.0.0.1:{port}/fhir (data: {data})" in out
    assert "Traceback" not in err
    assert not (tmp_path / "elsewhere").exists()


# -- malformed inputs found by these tests -----------------------------------------------------------------


def test_contained_resource_of_unknown_type_is_rejected(tmp_path):
    f = write(tmp_path / "in.ndjson", ndjson(
        {"resourceType": "Patient", "id": "k1", "contained": [{"resourceType": "Nope"}]}))
    assert main_in_process(tmp_path / "data", f)[0] == 1


@pytest.mark.parametrize("entry", [
    {"resource": {"resourceType": "Patient"},
     "request": {"method": "POST", "url": "Patient", "ifNoneExist": 5}},
    {"fullUrl": ["urn:uuid:x"], "resource": {"resourceType": "Patient"},
     "request": {"method": "POST", "url": "Patient"}},
])
def test_transaction_entry_with_odd_types_is_rejected(tmp_path, entry):
    f = write(tmp_path / "tx.json", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    assert main_in_process(tmp_path / "data", f)[0] == 1


# -- random input never breaks ingest --------------------------------------------------------------


def main_in_process(data_dir: Path, *paths: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(["ingest", "--quiet", "--data-dir", str(data_dir), *map(str, paths)])
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HUB_DATABASE_URL", raising=False)  # in-process: SQLite in the tmp dir only
        yield tmp_path_factory.mktemp("fuzz")


VALID = [orjson.dumps(patient(f"h{i}", family)) for i, family in enumerate(["Wang", "Li", "Zhang"])]
INVALID = [b"{}", b"[]", b"null", b'{"resourceType": "Patient", "id": "h9", "active": "x"}',
           b'{"resourceType": "Unicorn"}', b'{"resourceType": "Bundle", "type": "collection", "entry": {}}',
           b'{"resourceType": "Bundle", "type": "collection"}', b'{"resourceType": "Bundle", "type": "batch"}']
line = st.one_of(st.binary(max_size=60), st.sampled_from(VALID + INVALID))


def expected_inputs(data: bytes) -> int:
    return sum(1 for chunk in data.removeprefix(b"\xef\xbb\xbf").split(b"\n") if chunk.strip())


def check(fuzz_dir: Path, name: str, data: bytes, valid: int, inputs: int) -> None:
    f = fuzz_dir / name
    f.write_bytes(data)
    rc, out = main_in_process(fuzz_dir / "data", f)
    assert rc in (0, 1, 2)
    if rc == 2:
        return
    got = counts(out)
    assert got["inputs"] == got["accepted"] + got["rejected"] == inputs
    assert got["accepted"] >= valid
    assert rc == (1 if got["rejected"] else 0)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), st.sampled_from(VALID + INVALID)))
def test_random_json_file_never_breaks_ingest(fuzz_dir, data):
    check(fuzz_dir, "random.json", data, 1 if data in VALID else 0, 1)  # a .json file is one input


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=8))
def test_random_ndjson_file_never_breaks_ingest(fuzz_dir, lines):
    data = b"\n".join(lines)
    check(fuzz_dir, "random.ndjson", data, sum(1 for x in lines if x in VALID), expected_inputs(data))


def test_the_command_starts_without_the_engines_and_models_it_does_not_use():
    """Every `hub` command builds the whole parser first: building it imports no engine, client
    or model library (they are imported by the command that uses them), so `hub --version` and
    `hub … --help` answer at once (they took over a second)."""
    heavy = ("sqlalchemy", "psycopg", "httpx", "fastapi", "uvicorn", "fhir.resources", "pydantic",
             "lxml", "kafka", "elasticsearch")
    probe = ("import sys\nfrom hub.cli import main\ntry:\n    main(['--version'])\n"
             "except SystemExit:\n    pass\n"
             f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1:] == [""], f"imported: {done.stdout.splitlines()[-1]}"


def test_an_elasticsearch_that_does_not_answer_is_one_line_not_a_traceback(tmp_path):
    from tests.conftest import free_port

    settings = Settings(data_dir=tmp_path / "d", database_url=None)
    settings.open_store().close()
    url = f"http://127.0.0.1:{free_port()}"
    env = {**hub_env(settings), "HUB_ES_URL": url}
    done = subprocess.run([sys.executable, "-m", "hub.cli", "projections", "status", "search-es"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # exit 2 and no traceback; before the error, the index's own warning that the cluster is away
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hub projections: Elasticsearch at {url}: ConnectionError"), last


@pytest.mark.parametrize("args, option", [
    (["serve", "--port", "99999"], "--port"), (["serve", "--port", "0"], "--port"),
    (["generate", "OUT", "--people", "-1"], "--people"),
    (["ingest-worker", "--bootstrap-servers", "x", "--topic", "t", "--max-records", "0"],
     "--max-records"),
    (["stream", "relay", "--bootstrap-servers", "x", "--partitions", "-2", "--once"],
     "--partitions")])
def test_a_number_out_of_its_range_is_a_usage_error(tmp_path, args, option):
    """These ended in a Python traceback (exit 1); --port 0 served on 8080 unsaid."""
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "d")}
    env.pop("HUB_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert option in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", [["serve"], ["projections", "status"]])
@pytest.mark.parametrize("value", ["Asia/Shanghai", "CST", "+8", ""])
def test_a_timezone_that_is_no_fixed_offset_refuses_to_start(tmp_path, command, value):
    """`HUB_TIMEZONE=Asia/Shanghai hub serve` served, reading times without a zone as UTC (one
    log line said so): an Observation at 07:00+08:00 on the 15th was found by date=…-14."""
    if command == ["serve"]:
        command += ["--port", str(free_port()), "--workers", "1"]
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    env = {**hub_env(settings), "HUB_TIMEZONE": value}
    proc = subprocess.run([sys.executable, "-m", "hub.cli", *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    line = assert_clean_error(proc, f"HUB_TIMEZONE={value!r}", "+08:00")
    assert line.startswith("hub: ") and "fixed offset" in line, line


@pytest.mark.parametrize("name, value, what", [
    ("HUB_MAX_BODY", "64M", "a whole number of bytes"),
    ("HUB_MAX_STRING", "1MiB", "a whole number of characters"),
    ("HUB_MAX_HEADER", "-1", "a whole number of bytes"),
    ("HUB_LARGE_BODY", "1e6", "a whole number of bytes"),
    ("HUB_MAX_LARGE", "two", "a whole number of requests"),
    ("HUB_LARGE_WAIT", "10s", "a number of seconds"),
    ("HUB_KEEP_ALIVE", "5s", "a whole number of seconds"),
    ("HUB_HEADER_TIMEOUT", "nan", "a number of seconds"),
    ("HUB_MAX_COUNT", "lots", "a whole number of resources"),
    ("HUB_WORKERS", "auto", "a whole number of processes"),
    ("HUB_RATE_LIMIT", "10/s", "a number of requests per second"),
    ("HUB_QUARANTINE_QUOTA", "10k", "a whole number of entries"),
    ("HUB_PORT", "99999", "a port number (1-65535)")])
def test_a_numeric_setting_that_is_no_number_names_the_variable_and_value(tmp_path, name, value,
                                                                          what):
    """`HUB_MAX_BODY=64M hub serve` said "bad HUB_* environment setting: invalid literal for int()
    with base 10: '64M'", naming neither the variable nor what it takes."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    env = {**hub_env(settings), name: value}
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--workers", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert assert_clean_error(proc) == f"hub: {name}={value!r} is not {what}"


@pytest.mark.parametrize("name, value, least", [
    ("HUB_MAX_BODY", "0", 4096), ("HUB_MAX_BODY", "4095", 4096), ("HUB_MAX_STRING", "0", 1024),
    ("HUB_MAX_HEADER", "100", 4096), ("HUB_MAX_LARGE", "0", 1), ("HUB_MAX_COUNT", "0", 1),
    ("HUB_WORKERS", "0", 1), ("HUB_QUARANTINE_QUOTA", "0", 1), ("HUB_EXPORT_KEEP", "0", 60)])
def test_a_limit_under_its_least_stops_serve(tmp_path, name, value, least):
    """`HUB_MAX_BODY=0 hub serve` served, answering every write 413 "exceeds the limit of 0
    bytes"; `HUB_MAX_COUNT=0` answered every search an empty page, `HUB_WORKERS=0` was taken for
    the default. Each limit has a least it takes, said with why."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    env = {**hub_env(settings), name: value}
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", str(free_port())],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    line = assert_clean_error(proc)
    assert line.startswith(f"hub: {name}={value!r} is less than {least}, the least it takes ("), line


def test_projections_without_a_name_are_every_read_model(tmp_path):
    """`hub projections status|run` without a NAME acted on `search` alone; now status is a
    table of every read model and run catches every one up. rebuild (from nothing) needs a
    NAME, and says which."""
    from hub.readmodels import names

    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    write(tmp_path / "patient.json", patient("every"))
    assert run_hub(settings, "ingest", tmp_path / "patient.json").returncode == 0

    def table() -> dict[str, list[str]]:
        done = run_hub(settings, "projections", "status")
        assert done.returncode == 0, done.stderr
        head, *rows = done.stdout.strip().splitlines()
        assert head.split() == ["read", "model", "position", "lag", "state"], head
        return {row.split()[0]: row.split()[1:] for row in rows}

    before = table()
    assert list(before) == names() and {"intake", "identity-candidates"} <= set(before)
    assert all(int(lag) > 0 for _, lag, *_ in before.values()), before
    caught_up = run_hub(settings, "projections", "run")
    assert caught_up.returncode == 0, caught_up.stderr
    assert [line.split(":")[0] for line in caught_up.stdout.splitlines()] == names()
    after = table()
    assert all(lag == "0" and state == ["ok"] for _, lag, *state in after.values()), after
    line = assert_clean_error(run_hub(settings, "projections", "rebuild"), "rebuild needs the NAME")
    assert "search, quality," in line and "intake" in line and "search-es" in line


def test_a_reading_command_creates_no_tables_in_an_empty_postgresql_database(pg_databases, tmp_path):
    """`hub show` and `hub projections status` pointed at a database without an event store
    (a mistyped name) created the hub's nine tables there; SQLite refused already."""
    import psycopg

    url = pg_databases.new()
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "d"), "HUB_DATABASE_URL": url}
    for args in (["show", "Patient/x"], ["projections", "status"]):
        done = subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "no event store" in done.stderr, done.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone()[0] == 0


def test_serve_on_postgresql_with_a_data_directory_that_is_a_file_stops_at_once(pg_databases,
                                                                                 tmp_path):
    """Every API worker died on it and was restarted, and the follower too, for ever."""
    file = tmp_path / "file.txt"
    file.write_text("x")
    env = {**os.environ, "HUB_DATABASE_URL": pg_databases.new(), "HUB_AUTH": "0"}
    done = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", "1",
                           "--data-dir", str(file)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "is a file" in done.stderr and "Traceback" not in done.stderr


def test_serve_with_a_certificate_that_does_not_load_is_one_line(tmp_path):
    """A missing or wrong certificate made every worker die at start and be started again for
    ever (thousands of traceback lines, the port closed), after saying it served."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    junk = write(tmp_path / "junk.pem", "not a certificate")
    for args in (["--tls-cert", str(tmp_path / "nosuch.pem")],
                 ["--tls-cert", str(junk), "--tls-key", str(junk)]):
        proc = run_hub(settings, "serve", "--port", str(free_port()), "--workers", "2", *args,
                       timeout=60)
        line = assert_clean_error(proc, "hub serve:", "TLS")
        assert "FHIR API on" not in proc.stdout, proc.stdout
        assert ("nosuch.pem" in line) or ("junk.pem" in line)


def test_names_that_are_no_utf8_are_taken_or_refused_in_one_line(settings, tmp_path):
    """A file named in GBK (bytes that are no UTF-8) holding a bad resource crashed the whole
    run when its rejection was written; such bytes in --institution ended in a traceback."""
    folder = tmp_path / "nu"
    folder.mkdir()
    bad = os.fsdecode(b"bad\xff.json")
    (folder / bad).write_bytes(b'{"resourceType":"Patient","id":"x1","gender":"bogus"}')
    proc = run_hub(settings, "ingest", folder)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert counts(proc.stdout)["rejected"] == 1
    proc = run_hub(settings, "ingest", folder, "--institution", os.fsdecode(b"H\xff"))
    assert_clean_error(proc, "hub ingest:", "institution", "UTF-8")


def test_a_listing_at_a_mistyped_data_dir_says_so(tmp_path):
    """Listings at a mistyped --data-dir created empty databases there and listed nothing,
    exit 0 (a data directory that is a file: "no open entries")."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    afile = write(tmp_path / "afile", "x")
    for d in (tmp_path / "typo", afile):
        for args in (["auth", "client", "list"], ["auth", "user", "list"],
                     ["v3", "subscriptions"], ["quarantine", "list"]):
            proc = run_hub(settings, *args, "--data-dir", str(d))
            assert_clean_error(proc, str(d))
    assert not (tmp_path / "typo").exists()


def test_odd_values_end_in_one_line(settings, tmp_path):
    """Values no command can use ended in tracebacks: an enormous --limit (OverflowError), a
    --retention-days of nan, a key encrypted with a password."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    enc = tmp_path / "enc.pem"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret")))
    run_hub(settings, "quarantine", "list")  # the data directory exists
    for args in (["quarantine", "list", "--limit", "9" * 25],
                 ["v3", "route", "--once", "--retention-days", "nan"],
                 ["auth", "token", "--client-id", "x", "--key", str(enc)]):
        proc = run_hub(settings, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_serve_on_a_port_in_use_is_one_line_before_it_says_it_serves(tmp_path):
    """It printed "FHIR API on …", then exited 3 on "address already in use"."""
    import socket

    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_hub(settings, "serve", "--port", str(port), "--workers", "1", timeout=60)
    assert_clean_error(proc, "hub serve:", str(port))
    assert "FHIR API on" not in proc.stdout


@pytest.mark.parametrize("args, command, words", [
    (["connector", "status", "--x"], "hub connector status", "unrecognized arguments: --x"),
    (["quality", "report", "--nope"], "hub quality report", "unrecognized arguments: --nope"),
    (["show"], "hub show", "required: reference"),
    (["projections", "bogus"], "hub projections", "invalid choice: 'bogus'"),
    (["deadletter", "list", "--worker", "--config", "x"], "hub deadletter list", "not allowed"),
    (["serve", "--port", "abc"], "hub serve", "--port"),
    (["nosuch"], "hub", "invalid choice: 'nosuch'"),
    (["--bogus"], "hub", "unrecognized arguments: --bogus"),
    (["quarantine", "--bogus"], "hub quarantine", "unrecognized arguments: --bogus")])
def test_an_argument_mistake_is_one_line_naming_the_help_to_read(tmp_path, args, command, words):
    """argparse printed its whole usage block before the error; the other usage errors of the
    command line are one line. `--help` still prints the usage."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    line = assert_clean_error(run_hub(settings, *args), f"{command}: error: ", words,
                              f"(see {command} --help)")
    assert "usage:" not in line
    helped = run_hub(settings, *command.split()[1:], "--help")
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: {command} ")


@pytest.mark.parametrize("args", [
    ["auth", "rotate-key"], ["auth", "client", "revoke", "c1"], ["auth", "user", "disable", "u1"],
    ["connector", "list"], ["connector", "unregister", "c1"], ["v3", "route", "--once"]])
def test_a_command_on_the_hub_at_a_mistyped_data_dir_says_so(tmp_path, args):
    """These reported success at a mistyped --data-dir: `hub auth rotate-key` said "signing with
    the new key …" and made a key there (the hub's own never rotated), `connector list` and
    `v3 route` made empty databases."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    typo = tmp_path / "dta"
    assert_clean_error(run_hub(settings, *args, "--data-dir", typo), "no data directory",
                       str(typo), "mistyped")
    assert not typo.exists()


@pytest.mark.parametrize("args", [
    ["projections", "follow"], ["projections", "follow", "search"], ["projections", "status"],
    ["projections", "run"], ["projections", "rebuild", "search"], ["quality", "report"],
    ["terminology", "unmapped"], ["terminology", "renormalise"], ["mpi", "train"],
    ["mpi", "rematch"], ["mpi", "export"], ["audit", "verify"], ["audit", "export"],
    ["audit", "anchor"], ["audit", "emergency"], ["identity", "show", "Patient/x"],
    ["identity", "review", "list"], ["stream", "relay", "--bootstrap-servers", "127.0.0.1:1",
                                     "--once"],
    ["show", "Patient/x"], ["history", "Patient/x"], ["reindex"]])
def test_a_command_on_the_event_store_at_a_mistyped_data_dir_makes_none(tmp_path, args):
    """A command that works on the store that is there refuses a mistyped --data-dir naming it,
    and makes nothing there: `hub projections follow` made an empty store and followed it for
    ever (the follower `hub serve` starts has the store its server made)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    typo = tmp_path / "dta"
    assert_clean_error(run_hub(settings, *args, "--data-dir", typo, timeout=30),
                       "no event store in", str(typo))
    assert not typo.exists()


@pytest.mark.parametrize("name, value, words", [
    ("HUB_REQUIRED_PROFILES", "Patient:http://example.org/p", "Type=canonical-url"),
    ("HUB_REQUIRED_PROFILES", "Patinet=http://example.org/p", "no FHIR resource type"),
    ("HUB_REQUIRED_PROFILES", "Patient=", "Type=canonical-url"),
    ("HUB_SQLITE_SYNC", "BOGUS", "OFF, NORMAL, FULL, EXTRA"),
    ("HUB_SQLITE_SYNC", "7", "OFF, NORMAL, FULL, EXTRA"),
    ("HUB_SQLITE_SYNC", "1 2", "OFF, NORMAL, FULL, EXTRA"),
    ("HUB_MPI_AUTOMATCH", "2", "on or off"), ("HUB_AUDIT", "maybe", "on or off"),
    ("HUB_AUTH", "flase", "on or off"), ("HUB_AUTH", "", "on or off"),
    ("HUB_FOLLOW", "bogus", "threads or none"),
    ("HUB_BASE_URL", "notaurl", "absolute http(s) URL"),
    ("HUB_BASE_URL", "ftp://hub.example/fhir", "absolute http(s) URL"),
    ("HUB_TRUSTED_PROXIES", "999.1.1.1", "'999.1.1.1' is neither"),
    ("HUB_TIMEZONE", "+14:30", "from -12:00 to +14:00"),
    ("HUB_TIMEZONE", "-12:30", "from -12:00 to +14:00")])
def test_a_setting_the_hub_cannot_use_stops_it_naming_the_variable(tmp_path, name, value, words):
    """Each was taken: a profile written with a colon was dropped (no enforcement), BOGUS was
    NORMAL and 7 was OFF, any word but 0 turned auditing and access control on, a proxy that is
    no address stopped `hub serve` with a traceback after its banner."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    env = {**hub_env(settings), name: value}
    for args in (["show", "Patient/x"], ["serve", "--port", str(free_port()), "--workers", "1"]):
        proc = subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        line = assert_clean_error(proc, f"{name}={value!r}", words)
        assert line.startswith("hub: ") and "FHIR API on" not in proc.stdout, line


def test_the_settings_take_what_they_say(monkeypatch):
    from hub.core.sqlitesync import sqlite_sync

    for name, value in (("HUB_REQUIRED_PROFILES", "Patient=http://example.org/p, Observation="
                                                  "urn:oid:1.2.3"),
                        ("HUB_SQLITE_SYNC", "full"), ("HUB_MPI_AUTOMATCH", "Yes"),
                        ("HUB_AUDIT", "off"), ("HUB_AUTH", "FALSE"), ("HUB_FOLLOW", "none"),
                        ("HUB_BASE_URL", "https://hub.example:8443/fhir"),
                        ("HUB_TRUSTED_PROXIES", "10.0.0.5, 10.1.0.0/16,::1"),
                        ("HUB_TIMEZONE", "+14:00")):
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.required_profiles == ("Patient=http://example.org/p", "Observation=urn:oid:1.2.3")
    assert (sqlite_sync(), s.mpi_automatch, s.audit, s.auth) == ("FULL", True, False, False)
    assert s.trusted_proxies == ("10.0.0.5", "10.1.0.0/16", "::1") and not s.follows_here
    monkeypatch.setenv("HUB_TIMEZONE", "-12:00")
    assert Settings().timezone == "-12:00"


CONNECTOR = """name: lab
institution: {code: H0001, oid: 1.2.156.1}
state_dir: state
status: {host: 127.0.0.1, port: 0}
retry: {initial_s: 0.5, max_s: 30}
sources: [{type: folder, name: drop, path: inbox}]
sink: {type: http, url: 'http://127.0.0.1:9/fhir'}
"""


@pytest.mark.parametrize("old, new, words", [
    ("state_dir:", "durabel: false\nstate_dir:", "unknown key(s) durabel (known: durable,"),
    ("state_dir:", "naem: x\nstate_dir:", "unknown key(s) naem"),
    ("initial_s: 0.5", "inital_s: 5", "retry: unknown key(s) inital_s (known: initial_s, max_s)"),
    ("host: 127.0.0.1", "hots: 127.0.0.1", "status: unknown key(s) hots"),
    ("oid: 1.2.156.1", "odi: 1.2.3", "institution: unknown key(s) odi"),
    ("code: H0001, ", "", "institution.code is required"),
    ("institution: {code: H0001, oid: 1.2.156.1}\n", "", "'institution' is required"),
    ("state_dir:", "durable: 'no'\nstate_dir:", "durable must be true or false")])
def test_a_connector_configuration_with_a_misspelt_or_missing_key_is_refused(settings, tmp_path,
                                                                               old, new, words):
    """Misspelt keys at the top, in institution, status and retry were silently ignored
    (`durabel: false` left fsync on), and a feed without its institution's OID was taken."""
    (tmp_path / "inbox").mkdir()
    config = write(tmp_path / "lab.yaml", CONNECTOR.replace(old, new, 1))
    assert CONNECTOR.replace(old, new, 1) != CONNECTOR
    for action in ("status", "run"):
        assert_clean_error(run_hub(settings, "connector", action, config), "hub connector:",
                           words)


def test_connector_options_go_before_or_after_config_and_status_shows_findings(settings,
                                                                                tmp_path):
    """`hub connector status --json CONFIG` and `register --url URL CONFIG` failed
    "unrecognized arguments: CONFIG" (only options after CONFIG worked; `hub deadletter show`
    likewise with its ids); the status table had no findings column (only --json had them)."""
    from connectors.config import ConnectorConfig
    from connectors.spool import Spool

    (tmp_path / "inbox").mkdir()
    config = write(tmp_path / "lab.yaml", CONNECTOR)
    cfg = ConnectorConfig.load(config)
    cfg.state_dir.mkdir(parents=True)
    spool = Spool(cfg.spool_path, cfg.source_info)
    with spool._lock:  # what a run leaves: counters per source
        for name, n in (("received", 5), ("converted", 4), ("failed", 1), ("findings", 3)):
            spool._count("drop", name, n)
    spool.close()
    for args in (["--json", config], [config, "--json"]):
        done = run_hub(settings, "connector", "status", *args)
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["sources"]["drop"]["findings"] == 3
    done = run_hub(settings, "connector", "status", config)
    head, row = done.stdout.splitlines()[1:3]
    assert head.split() == ["source", "received", "converted", "delivered", "failed",
                            "findings", "lag", "dead"], head
    assert row.split() == ["drop", "5", "4", "0", "1", "3", "0", "0"], row
    for args in (["--url", "http://127.0.0.1:9", config], [config, "--url", "http://127.0.0.1:9"]):
        done = run_hub(settings, "connector", "register", *args)
        assert done.returncode == 0 and "registered at http://127.0.0.1:9" in done.stdout, \
            done.stderr
    listed = run_hub(settings, "connector", "list", "--json")
    assert orjson.loads(listed.stdout) == [{"name": "lab", "url": "http://127.0.0.1:9",
                                          "admin": False}]
    for args in (["--json", "--config", config, "7"], ["7", "--config", config, "--json"]):
        assert_clean_error(run_hub(settings, "deadletter", "show", *args), "no dead letter 7")


def test_a_connector_whose_folder_is_missing_says_so_and_makes_nothing(settings, tmp_path):
    """A mistyped folder path was made, with done/ and failed/ in it, and waited for files that
    never came there."""
    config = write(tmp_path / "lab.yaml", CONNECTOR.replace("path: inbox", "path: inbx"))
    assert_clean_error(run_hub(settings, "connector", "run", config), "hub connector:",
                       "sources 'drop'", str(tmp_path / "inbx"), "no folder")
    assert not (tmp_path / "inbx").exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize("option, value", [
    ("--interval", "-1"), ("--interval", "nan"), ("--interval", "inf"), ("--interval", "0"),
    ("--retention-days", "-1"), ("--retention-days", "inf")])
def test_v3_route_takes_only_finite_positive_times(settings, option, value):
    """--interval -1 or nan made the router spin a core, inf ended in an OverflowError,
    --retention-days -1 was taken."""
    run_hub(settings, "quarantine", "list")  # the data directory exists
    assert_clean_error(run_hub(settings, "v3", "route", "--once", f"{option}={value}"),
                       "hub v3 route: error:", option, repr(value))


@pytest.mark.parametrize("args", [["mpi", "export"], ["projections", "status"]])
def test_output_into_a_closed_pipe_ends_quietly(settings, tmp_path, args):
    """`hub mpi export | head -1` said "hub mpi: [Errno 32] Broken pipe", exit 2: a reader
    that stops early is no error (141, as a shell shows for `cat` or `git log` into `head`)."""
    write(tmp_path / "patient.json", patient("piped"))
    assert run_hub(settings, "ingest", tmp_path / "patient.json").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", *args], env=hub_env(settings),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_replay_of_named_entries_and_all_says_they_exclude_each_other(settings):
    run_hub(settings, "quarantine", "list")  # the data directory exists
    assert_clean_error(run_hub(settings, "quarantine", "replay", "2", "--all"),
                       "exclude each other")
    assert_clean_error(run_hub(settings, "quarantine", "replay"), "IDS", "--all")


def test_identity_show_takes_no_decision_options(settings):
    helped = run_hub(settings, "identity", "show", "--help")
    assert helped.returncode == 0 and "--user" not in helped.stdout, helped.stdout
    assert "--reason" not in helped.stdout
    assert "--user" in run_hub(settings, "identity", "link", "--help").stdout


# -- a large batch or collection Bundle is read entry by entry -----------------------------------


def big_batch(n: int, type_last: bool = True) -> bytes:
    """A batch Bundle of ``n`` entries as a bulk dump writes it (compact; ``type`` after the
    entries, or before them as most writers put it): updates with decimals whose written form
    counts, creates without ids, and a few entries the hub refuses, the last far past the first
    few hundred."""
    entries = []
    for i in range(n):
        if i % 997 == 996:
            r, request = patient(f"bad{i}", active="x"), {"method": "PUT", "url": f"Patient/bad{i}"}
        elif i % 3 == 0:
            r = {"resourceType": "Patient", "name": [{"family": f"Create{i}"}]}
            request = {"method": "POST", "url": "Patient"}
        else:
            r = {**observation(f"o{i}", f"Patient/p{i}"),
                 "valueQuantity": {"value": orjson.Fragment(f"{i % 90 + 10}.{i % 10}0"), "unit": "kg"}}
            request = {"method": "PUT", "url": f"Observation/o{i}"}
        entries.append({"fullUrl": f"urn:uuid:{uuid.UUID(int=i)}", "resource": r, "request": request})
    if type_last:
        return orjson.dumps({"resourceType": "Bundle", "entry": entries, "type": "batch"})
    return orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})


def stored_state(data_dir: Path) -> dict[tuple[str, str], bytes]:
    """Every current resource as stored (the header line, then the body), without meta (its
    lastUpdated is the time of the run, the request's id is the run's)."""
    store = Settings(data_dir=data_dir).open_store()
    try:
        rows = store.history(limit=100_000)
        out = {}
        for rtype in {row.rtype for row in rows}:
            for rid, (_, state) in store.latest_many(rtype, [r.rid for r in rows
                                                             if r.rtype == rtype]).items():
                out[rtype, rid] = re.sub(rb'"(lastUpdated|requestId)":"[^"]*"', b"", state)
        return out
    finally:
        store.close()


def test_a_large_batch_bundle_streamed_gives_what_it_gave_read_whole(tmp_path, monkeypatch):
    """A batch Bundle over the streaming size is read a few hundred entries at a time: the
    same counts, resources, decimals and rejected entries (at their index in the whole file)
    as when it was parsed whole."""
    from hub.core import bundlestream

    monkeypatch.delenv("HUB_DATABASE_URL", raising=False)  # in-process: SQLite in tmp_path
    f = write(tmp_path / "dump.json", big_batch(4500))
    assert f.stat().st_size > bundlestream.STREAM_FROM
    assert bundlestream.streamed_type(f) == "batch"
    streamed = main_in_process(tmp_path / "streamed", f)
    with monkeypatch.context() as mp:
        mp.setattr(bundlestream, "STREAM_FROM", 1 << 40)  # every file read whole, as before
        assert bundlestream.streamed_type(f) is None
        whole = main_in_process(tmp_path / "whole", f)
    assert streamed[0] == whole[0] == 1
    assert counts(streamed[1]) == counts(whole[1]) == dict(
        inputs=4500, accepted=4496, created=4496, updated=0, unchanged=0, deleted=0, rejected=4)
    rejected = [[(r["where"], r["outcome"], r["input"]) for r in rejected_records(Settings(data_dir=d))]
                for d in (tmp_path / "streamed", tmp_path / "whole")]
    assert rejected[0] == rejected[1]
    assert [w for w, _, _ in rejected[0]] == [f"{f}#entry[{i}]" for i in (996, 1993, 2990, 3987)]
    state = stored_state(tmp_path / "streamed")
    assert state == stored_state(tmp_path / "whole") and len(state) == 4496
    assert b'"value":35.50' in state["Observation", "o2995"]


def test_a_large_bundle_cut_short_keeps_the_entries_before_and_the_run_goes_on(settings, tmp_path):
    data = big_batch(6000, type_last=False)  # cut short, a type after the entries is unknown
    read = 5000  # the file ends in the middle of this entry
    cut = data.index(f'{{"fullUrl":"urn:uuid:{uuid.UUID(int=read)}"'.encode()) + 60
    f = write(tmp_path / "a-cut.json", data[:cut])
    after = write(tmp_path / "b-after.json", patient("after"))
    proc = run_hub(settings, "ingest", f, after)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    refused = sum(1 for i in range(read) if i % 997 == 996)
    assert counts(proc.stdout) == dict(inputs=read + 2, accepted=read - refused + 1,
                                       created=read - refused + 1, updated=0, unchanged=0,
                                       deleted=0, rejected=refused + 1), proc.stdout
    assert f"rejected {f}#entry[{read}]: The file is not valid JSON after {read} entries of the " \
        "batch Bundle: parse error: premature EOF (the entries before were read)" in proc.stdout, \
        proc.stdout
    store = settings.open_store()
    try:
        assert "after" in current_ids(store, "Patient")  # the next file was read
        assert f"o{read - 1}" in current_ids(store, "Observation")
    finally:
        store.close()


def test_a_100_mb_collection_bundle_is_ingested_in_bounded_memory(tmp_path):
    """Parsed whole, this file took the process to about 390 MB (ad hoc: 100 MB of text, its
    parse, and the parse written back to check it); streamed, to about 110 MB, as NDJSON does."""
    import base64
    import random

    rnd = random.Random(7)
    f = tmp_path / "dump.json"
    n = 25_000
    with f.open("wb") as out:
        out.write(b'{"resourceType":"Bundle","type":"collection","entry":[')
        for i in range(n):
            out.write((b"," if i else b"") + orjson.dumps({"resource": {
                "resourceType": "Binary", "id": f"b{i}", "contentType": "application/octet-stream",
                "data": base64.b64encode(rnd.randbytes(3000)).decode()}}))
        out.write(b"]}")
    assert f.stat().st_size > 100_000_000
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "data")}
    env.pop("HUB_DATABASE_URL", None)
    # the peak of `hub ingest` alone: started by a small launcher, which reads its children's
    # peak (started from this process, a test worker of some hundred MB, the child's count
    # begins at the worker's own: Linux carries the peak of the memory an exec replaces)
    peak_file = tmp_path / "peak.txt"
    launcher = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[2:]); "
                "open(sys.argv[1], 'w').write(str(resource.getrusage("
                "resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(r.returncode)")
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.run([sys.executable, "-c", launcher, str(peak_file), sys.executable,
                               "-m", "hub.cli", "ingest", "--quiet", str(f)],
                              env=env, cwd=tmp_path, stdout=o, stderr=e, timeout=180)
    assert proc.returncode == 0, err.read_text()
    assert counts(out.read_text())["created"] == n
    peak_mb = int(peak_file.read_text()) / 1024  # kilobytes on Linux
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize("action", ["merge", "unmerge"])
def test_the_readme_synopsis_of_identity_merge_and_unmerge_names_what_each_takes(action, capsys):
    """The README said `hub identity merge|unmerge SOURCE [TARGET]`: merge requires TARGET,
    unmerge takes none."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    [line] = [ln for ln in readme.splitlines() if ln.startswith(f"hub identity {action} ")]
    said = line[len(f"hub identity {action} "):51].split()
    with pytest.raises(SystemExit):
        cli.main(["identity", action, "--help"])
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    takes = [w.upper() for w in re.sub(r"\[[^]]*\]", "", usage).split()[4:]]
    assert said == takes, (line, usage)


@pytest.mark.parametrize("args, says, not_says", [
    (["stream", "relay", "--help"], "at least once", "exactly once"),
    (["auth", "user", "disable", "--help"], "end their live console sessions at once",
     "next login")])
def test_help_says_what_the_command_does(args, says, not_says, capsys):
    """`hub stream relay --help` promised "exactly once" (a relay killed mid-batch sends events
    again); `hub auth user disable` was to "refuse the user's next login" (it ends live sessions
    at once too)."""
    with pytest.raises(SystemExit):
        cli.main(args)
    out = " ".join(capsys.readouterr().out.split())
    assert says in out and not_says not in out, out
