"""Several processes opening one new quarantine file at once (the API workers of
`hub serve --workers N` starting together): each opens it; none fails on the schema."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("round_", range(3))
def test_processes_opening_a_new_quarantine_together_all_succeed(tmp_path, round_):
    path = tmp_path / "quarantine.sqlite"
    start = time.time() + 1.5  # they all open at this moment, after their imports
    code = ("import sys, time; from hub.quarantine import Quarantine; "
            f"time.sleep(max(0, {start} - time.time())); Quarantine(sys.argv[1]).close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stderr=subprocess.PIPE)
             for _ in range(6)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for e in errors if e][:1]
