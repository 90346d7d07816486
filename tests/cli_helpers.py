"""What the command-line tests share: running ``hub`` in a subprocess, reading what it prints,
writing inputs, and the feed of every input form ``hub ingest`` reads."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from hub.core.config import Settings

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
