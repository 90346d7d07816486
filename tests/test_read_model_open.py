"""Several processes opening the read models of a new data directory at once (the API workers and
the follower of `hub serve` starting together on a fresh machine): each opens every model; none
fails creating its tracking table."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("round_", range(3))
def test_processes_opening_new_read_models_together_all_succeed(tmp_path, round_):
    start = time.time() + 2.0  # they all open at this moment, after their imports
    code = ("import sys, time; from pathlib import Path; from hub.readmodels import open_models; "
            f"time.sleep(max(0, {start} - time.time())); "
            "[m.close() for m in open_models(Path(sys.argv[1])).values()]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE)
             for _ in range(6)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for e in errors if e][:1]
