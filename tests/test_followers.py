"""Read models kept current by a follower process beside the API (``hub serve`` starts
``hub projections follow``): the API's requests do not share an interpreter with them, a follower
that dies is started again, and none outlives its server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from hub.core import httpclient
from hub.core.config import Settings
from tests.api_helpers import FHIR_JSON, observation, patient
from tests.conftest import LiveServer, make_settings


def _followers(proc: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children()
            if "follow" in " ".join(p.cmdline())]


def _caught_up(c: httpx.Client, seconds: float = 20) -> dict:
    """/ready until every read model's lag is 0 (no read here brings a model up itself)."""
    deadline = time.monotonic() + seconds
    while True:
        checks = {k: v for k, v in c.get("/ready").json().get("checks", {}).items()
                  if k.startswith("read-model:")}
        if checks and all(v.get("lag") == 0 for v in checks.values()):
            return checks
        if time.monotonic() > deadline:
            raise AssertionError(f"the read models did not catch up: {checks}")
        time.sleep(0.2)


def _root(srv: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=srv.origin, timeout=30, verify=httpclient.verify())


def test_the_follower_process_keeps_read_models_current_and_comes_back(tmp_path):
    with LiveServer(Settings(data_dir=tmp_path / "d")) as srv, \
            httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c, _root(srv) as root:
        (follower,) = _followers(srv.proc)
        r = c.post("/Patient", json=patient(), headers=FHIR_JSON)
        assert r.status_code == 201
        pid = r.json()["id"]
        assert c.post("/Observation", json=observation(f"Patient/{pid}"),
                      headers=FHIR_JSON).status_code == 201
        _caught_up(root)  # the follower applied the writes: nobody read them
        follower.kill()
        follower.wait(10)
        for _ in range(3):  # written while no follower runs
            assert c.post("/Observation", json=observation(f"Patient/{pid}"),
                          headers=FHIR_JSON).status_code == 201
        deadline = time.monotonic() + 20
        while not _followers(srv.proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        (again,) = _followers(srv.proc)
        assert again.pid != follower.pid
        _caught_up(root)
        # and a search sees all four, as it would have anyway (read-your-writes)
        b = c.get("/Observation", params={"subject": f"Patient/{pid}", "_total": "accurate"}).json()
        assert b["total"] == 4


def test_no_follower_outlives_its_server(tmp_path):
    srv = LiveServer(Settings(data_dir=tmp_path / "d"))
    with srv:
        (follower,) = _followers(srv.proc)
    follower.wait(15)  # SIGINT to the server: it stopped its follower on the way out
    assert not follower.is_running()
    srv = LiveServer(Settings(data_dir=tmp_path / "d"))
    with srv:
        (follower,) = _followers(srv.proc)
        srv.proc.send_signal(signal.SIGKILL)  # no way out at all: the follower notices
        srv.proc.wait(10)
        follower.wait(15)
        assert not follower.is_running()


def test_followers_none_leaves_it_to_a_follow_process_of_ones_own(tmp_path):
    settings = Settings(data_dir=tmp_path / "d")
    settings.auth = False
    srv = LiveServer(settings)
    srv.extra_args = ["--followers", "none"]
    with srv, httpx.Client(base_url=srv.base, timeout=30, verify=httpclient.verify()) as c, _root(srv) as root:
        assert _followers(srv.proc) == []
        assert c.post("/Patient", json=patient(), headers=FHIR_JSON).status_code == 201
        time.sleep(1.0)
        lags = {k: v.get("lag") for k, v in root.get("/ready").json()["checks"].items()}
        assert lags["read-model:search"] > 0  # nobody follows
        env = {**srv.env, "HUB_DATA_DIR": str(settings.data_dir)}
        follow = subprocess.Popen([sys.executable, "-m", "hub.cli", "projections", "follow"], env=env)
        try:
            _caught_up(root)
        finally:
            follow.send_signal(signal.SIGTERM)
            assert follow.wait(15) == 0


def test_what_the_follower_process_fails_on_is_a_failing_check_on_ready(tmp_path):
    """The API processes follow nothing themselves: a read model failing in the follower process
    (its Elasticsearch gone) shows on /ready as failing, with the reason, not only as a lag; a
    search meanwhile is a 503 to retry; all passes again once the engine is back."""
    from bench.noida import SearchServer, noida_binary

    if noida_binary() is None:
        pytest.fail("the noida-db binary (PyPI wheel noida-db) is not installed")
    es = SearchServer(tmp_path / "es").start()
    settings = Settings(data_dir=tmp_path / "d")
    settings.database_url = None
    settings.search, settings.es_url, settings.es_prefix = "elasticsearch", es.url, "f"
    try:
        with LiveServer(settings) as srv, _root(srv) as root, \
                httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
            assert c.post("/Patient", json=patient(), headers=FHIR_JSON).status_code == 201
            assert _caught_up(root)["read-model:search-es"]["status"] == "pass"
            es.stop()
            assert c.post("/Patient", json=patient(), headers=FHIR_JSON).status_code == 201
            # a search meanwhile: the engine's absence, not a crash
            r = c.get("/Patient", params={"name": "x"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert r.json()["issue"][0]["code"] == "transient"
            deadline = time.monotonic() + 30
            while True:
                r = root.get("/ready")
                check = r.json()["checks"]["read-model:search-es"]
                if check["status"] == "fail":
                    break
                assert time.monotonic() < deadline, check
                time.sleep(0.3)
            # the engine away: this process cannot read the index's position either (it was a
            # 500); once the follower process has said why, a request after shows that too. An
            # engine every node shares: a warning, not a 503 taking every node out of service
            assert r.status_code == 200 and r.json()["status"] == "warn"
            deadline = time.monotonic() + 30
            while "the follower process" not in check.get("output", ""):
                assert time.monotonic() < deadline, check
                time.sleep(0.3)
                check = root.get("/ready").json()["checks"]["read-model:search-es"]
            assert r.json()["checks"]["read-model:search"]["status"] == "pass"
            es.start()  # the same port and data
            _caught_up(root, 60)
            deadline = time.monotonic() + 30  # the follower process reports within a second
            while (r := root.get("/ready")).json()["status"] != "pass":
                assert time.monotonic() < deadline, r.json()
                time.sleep(0.3)
            assert r.json()["checks"]["read-model:search-es"] == {"status": "pass", "lag": 0}
    finally:
        es.stop()


def test_the_hub_starts_and_writes_while_its_elasticsearch_is_away(tmp_path):
    """Elasticsearch is the search backend, not the record: with none answering, ``hub serve``
    starts (it refused to), writes are stored, the other read models follow, searches are 503s
    to retry and /ready says which model fails and why."""
    from tests.conftest import free_port

    settings = Settings(data_dir=tmp_path / "d")
    settings.database_url = None
    settings.search, settings.es_url = "elasticsearch", f"http://127.0.0.1:{free_port()}"
    with LiveServer(settings) as srv, _root(srv) as root, \
            httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
        assert c.post("/Patient", json=patient(), headers=FHIR_JSON).status_code == 201
        assert c.get("/Patient", params={"name": "x"}).status_code == 503
        deadline = time.monotonic() + 30
        while True:
            checks = root.get("/ready").json()["checks"]
            if "the follower process" in checks["read-model:search-es"].get("output", ""):
                break
            assert time.monotonic() < deadline, checks
            time.sleep(0.3)
        assert checks["read-model:search-es"]["status"] == "fail"
        assert checks["read-model:timeline"]["status"] == "pass"
        r = root.get("/ready")
        assert r.status_code == 200 and r.json()["status"] == "warn"  # the node still serves
        # a model of the node's own failing (as a follower of it reports): the node is not ready
        import orjson

        (settings.data_dir / "followers-timeline.json").write_bytes(orjson.dumps(
            {"pid": psutil.Process().pid, "errors": {"timeline": "OSError: disk full"}}))
        r = root.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "fail"
        assert r.json()["checks"]["read-model:timeline"]["output"] == \
            "the follower process: OSError: disk full"
        assert checks["read-model:search"] == {"status": "pass", "lag": 0}


def test_the_failures_of_every_live_follower_of_a_data_directory_are_read(tmp_path):
    """Followers of all the models and of one named model each report in a file of their own;
    one that has ended reports nothing (its successor writes its own)."""
    import orjson

    from hub.core.jobs import _start_mark
    from hub.followers import follower_errors

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mark = _start_mark(live.pid)
        for name, pid, errors, mark_of in (
                ("followers.json", ended.pid, {"timeline": "OSError: gone"}, None),
                ("followers-search-es.json", live.pid,
                 {"search-es": "ConnectionError: refused"}, mark),
                ("followers-quality.json", live.pid, {}, mark),
                # an earlier process given the pid of this one (a restarted container's)
                ("followers-person.json", psutil.Process().pid, {"person": "OSError: old"},
                 "token:an earlier process")):
            (tmp_path / name).write_bytes(orjson.dumps({"pid": pid, "mark": mark_of,
                                                        "errors": errors}))
        (tmp_path / "followers-broken.json").write_bytes(b"{")
        assert follower_errors(tmp_path) == {"search-es": "ConnectionError: refused"}
        assert follower_errors(tmp_path / "nowhere") == {}
    finally:
        live.kill()
        live.wait()


def _sessions(dsn: str) -> dict[str, int]:
    """The connections to the database of ``dsn`` by application name, less this one."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "GROUP BY application_name").fetchall())


@pytest.mark.postgres
def test_an_idle_server_and_its_follower_hold_few_postgresql_connections(tmp_path, request):
    """One idle `hub serve` on PostgreSQL held 28 connections of the database's 100: four store
    pools of five opened eagerly, grown pools kept for ten minutes, a connection per read
    model's lease. Now: one lease session per follower process, one store in the API process
    (its followers run elsewhere) whose pool opens as requests need it."""
    settings = make_settings("postgres", tmp_path, request)
    settings.audit = True  # as served: the audit log's engine has connections too
    dsn = settings.database_url
    with LiveServer(settings) as srv, \
            httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth,
                         verify=httpclient.verify()) as c, _root(srv) as root:
        for _ in range(5):
            assert c.post("/Patient", json=patient(), headers=FHIR_JSON).status_code == 201
        for query in ({"gender": "female"}, {"_count": "2"}, {"_total": "accurate"}):
            assert c.get("/Patient", params=query).status_code == 200
        _caught_up(root)
        (follower,) = _followers(srv.proc)
        time.sleep(1.0)  # idle
        held = _sessions(dsn)
    # the follower's leases (a read model each): one session
    assert held.get(f"hub-lease-{follower.pid}") == 1, held
    assert not [n for n in held if n.startswith("hub-lease-") and n != f"hub-lease-{follower.pid}"]
    # the API process: one store, a connection for a request and one for the search index's
    # catch-up within it (two pools of five opened at start held ten)
    assert 1 <= held.get(f"hub-store-{srv.proc.pid}", 0) <= 2, held
    # the follower's pool grows while its read models catch up together (one per model at most)
    # and shrinks back to one within minutes; the audit log's engine has one or two
    assert sum(held.values()) <= 12, held
