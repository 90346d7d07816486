"""The ``hub`` command line as an operator starts it: demo, generate, serve, and the settings,
options and mistakes every command answers in one line (a real subprocess each)."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from hub.core import httpclient
from hub.core.config import Settings
from tests.cli_helpers import (
    assert_clean_error,
    counts,
    feed,  # noqa: F401 - a fixture
    hub_env,
    patient,
    run_hub,
    write,
)

from .conftest import free_port

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
    ("HUB_BODY_TIMEOUT", "1m", "a number of seconds"),
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
