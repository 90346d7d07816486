"""``hub ingest`` on inputs it did not expect: malformed resources, random bytes (hypothesis,
in-process), and batch or collection Bundles too large to read whole."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub import cli
from hub.core.config import Settings
from tests.cli_helpers import counts, current_ids, ndjson, observation, patient, rejected_records, run_hub, write

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
