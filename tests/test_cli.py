"""The ``hub`` command line as an operator uses it to load and read records: ingest, replay of
rejected inputs, show and history, each a real subprocess, asserting what it prints.

Every command runs as ``python -m hub.cli`` with ``HUB_DATA_DIR`` (and for PostgreSQL
``HUB_DATABASE_URL``) in its environment, but the one that turns the hub's own checks off, to
reach the database's, which calls ``hub.cli.main`` in-process (as the hypothesis tests of
``test_cli_inputs.py`` do, to stay fast). Starting and configuring it: ``test_cli_serve.py``.
"""

from __future__ import annotations

import re
import time
import uuid

import orjson
import pytest

from hub import cli
from hub.core import conditional, jsontext
from hub.core.config import Settings
from tests.cli_helpers import (
    VALID_INPUTS,
    assert_clean_error,
    counts,
    current_ids,
    feed,  # noqa: F401 - a fixture
    ndjson,
    observation,
    patient,
    rejected_records,
    run_hub,
    write,
)

from .conftest import _pg_available


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
