"""`hub serve --workers N`: several API processes behind one port, on SQLite and PostgreSQL. A
write answered by one worker is seen by a search or read answered by another (read-your-writes);
no worker runs the read models (the one follower process does); each worker ends with the
server, even one killed outright; a rate limit is the limit of all workers together."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import httpx
import psutil
import pytest

from hub.core import httpclient
from tests.api_helpers import FHIR_JSON
from tests.conftest import LiveServer, make_settings


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children()
            if "multiprocessing.spawn" in " ".join(p.cmdline())]


def _both_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The server's two worker processes, once both are up."""
    deadline = time.monotonic() + 30
    while len(workers := _workers(proc)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) == 2
    return workers


def _cpu(p: psutil.Process) -> float:
    return sum(p.cpu_times()[:2])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_workers_share_one_port_and_see_each_others_writes(backend, tmp_path, request):
    settings = make_settings(backend, tmp_path, request)
    srv = LiveServer(settings)
    srv.extra_args = ["--workers", "2"]
    with srv:
        workers = _both_workers(srv.proc)
        # the read models are followed by the one follower process, not by the workers
        assert sum("projections follow" in " ".join(p.cmdline())
                   for p in psutil.Process(srv.proc.pid).children()) == 1
        used = {w.pid: _cpu(w) for w in workers}
        tag = uuid.uuid4().hex[:8]
        for i in range(30):
            family = f"Wk{tag}{i}"
            # a new connection for each request: the kernel hands them to either worker
            with httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
                r = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]},
                           headers=FHIR_JSON)
                assert r.status_code == 201, r.text
                pid = r.json()["id"]
            with httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
                found = c.get("/Patient", params={"family": family}).json()
                assert found["total"] == 1, f"write {i} not seen by the next search"
                assert c.get(f"/Patient/{pid}").status_code == 200
        # both workers answered some of them
        assert all(_cpu(w) - used[w.pid] > 0.05 for w in workers), \
            {w.pid: _cpu(w) - used[w.pid] for w in workers}


def test_workers_end_with_their_server_even_when_it_is_killed(tmp_path, request):
    settings = make_settings("sqlite", tmp_path, request)
    srv = LiveServer(settings)
    srv.extra_args = ["--workers", "2"]
    with srv:
        workers = _both_workers(srv.proc)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, "a worker outlived its server and keeps the port"
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.base + "/metadata", timeout=2, verify=httpclient.verify())


def test_a_rate_limit_holds_across_workers(tmp_path, request):
    """HUB_RATE_LIMIT is per client for the whole server: each of N workers keeps 1/N of it."""
    settings = make_settings("sqlite", tmp_path, request)
    settings.auth = False
    settings.rate_limit = 5  # per second, bursts of twice that
    srv = LiveServer(settings)
    srv.extra_args = ["--workers", "2"]
    with srv:
        time.sleep(2.5)  # both workers up, buckets full
        answers = []
        t0 = time.monotonic()
        for _ in range(80):  # new connections, spread over both workers, as fast as they go
            with httpx.Client(base_url=srv.base, timeout=30, verify=httpclient.verify()) as c:
                answers.append(c.get("/Patient", params={"_count": "1"}).status_code)
        took = time.monotonic() - t0
        # the whole server allows a burst of 10 and 5 a second after it; workers that each kept
        # the full limit would allow up to twice that
        allowed = 10 + 5 * took
        assert answers.count(200) <= allowed + 2, (answers.count(200), round(took, 2))
        assert 429 in answers


def test_no_workers_is_a_usage_error(tmp_path):
    import os
    import sys

    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "d"), "HUB_AUTH": "0"}
    env.pop("HUB_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--workers", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers" in done.stderr
