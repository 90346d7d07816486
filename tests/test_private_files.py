"""What the hub writes to its data directory (every record, password hashes, keys, rejected
input) is readable by the hub's own user alone; `hub serve` warns of a directory others can read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from hub.core.config import Settings

from tests.cli_helpers import hub_env, run_hub


def test_what_the_hub_writes_is_its_users_alone(tmp_path):
    """Under the usual umask (022) the event store, the auth registry and rejected input were
    left readable by every local user (only auth/ and the audit spool were private)."""
    old = os.umask(0o022)
    try:
        settings = Settings(data_dir=tmp_path / "data", database_url=None)
        (tmp_path / "in.ndjson").write_text(
            json.dumps({"resourceType": "Patient", "id": "p1", "gender": "female"}) + "\n"
            + json.dumps({"resourceType": "Patient", "id": "p2", "gender": "nonsense"}) + "\n")
        done = run_hub(settings, "ingest", tmp_path / "in.ndjson")
        assert done.returncode == 1 and "1 rejected" in done.stdout, done.stdout + done.stderr
        made = [settings.data_dir, *settings.data_dir.rglob("*")]
        assert any(f.name == "events.sqlite" for f in made)
        assert any(f.parent.name == "rejected" for f in made)
        loose = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in made
                 if f.stat().st_mode & 0o077}
        assert loose == {}
    finally:
        os.umask(old)


def test_serve_warns_of_a_data_directory_others_can_read(tmp_path):
    """A data directory made before (or copied in) under a loose umask: `hub serve` names it and
    what to do, and goes on (here to refuse a missing certificate, its own one line)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.sqlite").write_bytes(b"")
    os.chmod(data, 0o755)
    os.chmod(data / "events.sqlite", 0o644)
    settings = Settings(data_dir=data, database_url=None)
    env = {**hub_env(settings), "HUB_TLS_CERT": str(tmp_path / "missing.pem"),
           "HUB_TLS_KEY": str(tmp_path / "missing.key")}
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--workers", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first == (f"hub serve: warning: the data directory {data} (mode 755) holds files other "
                     f"users can read (events.sqlite): chmod 700 {data}"), proc.stderr
    os.chmod(data, 0o700)  # closed: nothing to say
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--workers", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "warning" not in proc.stderr, proc.stderr
    assert Path(data / "events.sqlite").exists()
