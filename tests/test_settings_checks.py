"""What `hub` makes of its HUB_* settings at start, as a user running it sees it: a value it cannot
use stops it with one line and exit status 2 (never a secret in that line), a misspelt variable
is named in a warning, and the TLS files are judged before it serves.

Each test runs the real command in a subprocess, in an environment holding only the HUB_*
variables it sets.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.tls_certs import Pki

README = Path(__file__).resolve().parent.parent / "README.md"


def run(tmp_path: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """``hub ARGS`` with only these HUB_* variables (and a data directory in ``tmp_path``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    clean.update(HUB_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **env)
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=clean, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, one line on stderr holding each needle, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def serve(port: int | None = None) -> list[str]:
    return ["serve", "--port", str(port or free_port()), "--workers", "1", "--followers", "none"]


# -- secrets in database and Elasticsearch URLs -----------------------------------------------------

@pytest.mark.parametrize("url, secrets", [
    ("postgresql:/hubuser:S3cretPW@db.example/hub", ["S3cretPW"]),
    ("mysql://u:Pw0rdXy@h/db", ["Pw0rdXy"]),
    ("postgresql//u:Pw0rdXy@h/db", ["Pw0rdXy"]),
    ("postgresql://u:s3cret PW9@127.0.0.1/db", ["s3cret", "PW9"]),
    ("postgresql://u:S3cret%ZZ@127.0.0.1/db", ["S3cret"]),
    ("host=127.0.0.1 password=Xq9 Zr7", ["Xq9", "Zr7"]),
    ("postgresql://127.0.0.1/db?password=Sekr1t&bogus=1", ["Sekr1t"])])
@pytest.mark.parametrize("command", [serve(), ["show", "Patient/x"]])
def test_a_database_url_that_cannot_be_read_is_named_without_its_password(tmp_path, url, secrets,
                                                                          command):
    """`HUB_DATABASE_URL='postgresql:/hubuser:S3cretPW@…' hub serve` printed the URL, password and
    all, in libpq's message; a space in the password printed the password."""
    line = one_line(run(tmp_path, *command, HUB_DATABASE_URL=url), "HUB_DATABASE_URL",
                    "is not a PostgreSQL URL")
    for secret in secrets:
        assert secret not in line, line


def test_a_database_url_that_cannot_be_read_on_the_command_line_is_masked_too(tmp_path):
    proc = run(tmp_path, "show", "Patient/x", "--database-url", "mysql://u:Pw0rdXy@h/db")
    line = one_line(proc, "postgresql://", "mysql://u:***@h/db")
    assert "Pw0rdXy" not in line


def test_an_elasticsearch_url_with_a_password_is_shown_without_it(tmp_path):
    from hub.core.config import Settings

    Settings(data_dir=tmp_path / "data", database_url=None).open_store().close()
    url = f"http://hub:Es5ecretPw@127.0.0.1:{free_port()}"
    proc = run(tmp_path, "projections", "status", "search-es", HUB_ES_URL=url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "Es5ecretPw" not in proc.stderr + proc.stdout
    assert "hub:***@127.0.0.1" in proc.stderr.strip().splitlines()[-1]


# -- listening beyond loopback ---------------------------------------------------------------------

@pytest.mark.parametrize("host", ["192.0.2.2", "0", "::0", "0.0.0.0", "::", "hub.example"])
def test_listening_beyond_loopback_needs_the_base_url(tmp_path, host):
    """`--host 0`, `--host ::0` and an interface's own address got past the rule: the tokens'
    audience became https://0:22001/fhir."""
    one_line(run(tmp_path, *serve(), "--host", host), "needs HUB_BASE_URL")
    one_line(run(tmp_path, *serve(), "--host", host, HUB_AUTH="0"), "without access control")


def test_loopback_is_judged_as_an_address():
    from hub.core.config import is_loopback

    assert all(map(is_loopback, ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "::1",
                                 "[::1]", "0:0:0:0:0:0:0:1"]))
    assert not any(map(is_loopback, ["0", "::0", "0.0.0.0", "::", "", "192.0.2.2", "10.0.0.1",
                                     "hub.example", "localhost.evil.example", "127.1"]))


# -- values that cannot be used --------------------------------------------------------------------

@pytest.mark.parametrize("name, value, words", [
    ("HUB_ES_URL", "notaurl", "http(s) URL with a host and port"),
    ("HUB_ES_URL", "http://es.example", "http(s) URL with a host and port"),
    ("HUB_AUTH_ISSUER", "notaurl", "https URL"),
    ("HUB_AUTH_ISSUER", "http://idp.example", "https URL"),
    ("HUB_AUTH_JWKS_URL", "x", "https URL"),
    ("HUB_CONSOLE_OIDC_ISSUER", "x", "https URL"),
    ("HUB_CONSOLE_OIDC_ISSUER", "http://10.0.0.8/realms/r", "https URL"),
    ("HUB_FULLTEXT", "Foo,Bar", "'Foo' is no FHIR resource type"),
    ("HUB_FULLTEXT", "Composition,*", "'*' is no FHIR resource type")])
@pytest.mark.parametrize("command", [serve(), ["projections", "status"]])
def test_a_url_or_type_the_hub_cannot_use_stops_it_in_one_line(tmp_path, name, value, words,
                                                               command):
    """Each started the server: HUB_ES_URL=notaurl then died in a traceback of the app's
    lifespan (exit 3), and `hub projections status` said `ValueError: URL must include …`; an
    issuer over plain http had its keys fetched without TLS."""
    env = {name: value, "HUB_SEARCH": "elasticsearch"} if name == "HUB_ES_URL" else {name: value}
    if name == "HUB_AUTH_JWKS_URL":
        env["HUB_AUTH_ISSUER"] = "https://idp.example"
    line = one_line(run(tmp_path, *command, **env), f"{name}={value!r}", words)
    assert line.startswith("hub: "), line


def test_urls_and_types_the_hub_can_use_are_taken(monkeypatch):
    from hub.core.config import Settings

    for name, value in (("HUB_AUTH_ISSUER", "http://127.0.0.1:8080/realms/r"),
                        ("HUB_AUTH_JWKS_URL", "https://idp.example/certs"),
                        ("HUB_CONSOLE_OIDC_ISSUER", "http://localhost:9000"),
                        ("HUB_ES_URL", "https://hub:pw@es.example:443/"),
                        ("HUB_FULLTEXT", "Patient, Observation")):
        monkeypatch.setenv(name, value)
    assert Settings().auth_issuer == "http://127.0.0.1:8080/realms/r"
    for value in ("*", "", " * "):
        monkeypatch.setenv("HUB_FULLTEXT", value)
        Settings()


# -- misspelt variables ----------------------------------------------------------------------------

def test_a_misspelt_variable_is_named_once_while_the_hub_serves(tmp_path):
    """`HUB_TLS_CLIENTCA=ca.pem hub serve` served without mutual TLS, saying nothing."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    clean.update(HUB_DATA_DIR=str(tmp_path / "data"), HUB_TLS_CLIENTCA="ca.pem",
                 HUB_MAX_BODDY="1", PYTHONUNBUFFERED="1")
    # the default follower process is a `hub` of its own, with the same environment
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port),
                             "--workers", "1"], env=clean, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        time.sleep(2)  # the follower process has started by now
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    warnings = [line for line in err.splitlines() if "HUB_TLS_CLIENTCA" in line]
    assert warnings == ["hub: warning: HUB_TLS_CLIENTCA is not a setting of the hub (it is "
                        "ignored; did you mean HUB_TLS_CLIENT_CA?)"], err
    assert [line for line in err.splitlines() if "HUB_MAX_BODDY" in line] == [
        "hub: warning: HUB_MAX_BODDY is not a setting of the hub (it is ignored; did you mean "
        "HUB_MAX_BODY?)"], err


def test_a_variable_like_no_setting_is_named_without_a_guess(tmp_path):
    proc = run(tmp_path, "generate", str(tmp_path / "out"), "--people", "0",
               HUB_ZZZ_OTHER_TOOL="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "hub: warning: HUB_ZZZ_OTHER_TOOL is not a setting of the hub " \
                                  "(it is ignored)", proc.stderr


def test_every_variable_of_the_readme_table_is_known_and_each_known_one_is_there():
    from hub.core.config import known_variables

    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table = {name for row in section.splitlines() if row.startswith("| `HUB_")
             for name in re.findall(r"`(HUB_[A-Z0-9_]+)`", row.split(" | ")[0])}
    internal = {"HUB_SERVE_PARENT", "HUB_FOLLOW_PARENT"}  # set by `hub serve` for its processes
    assert table == set(known_variables()) - internal


# -- TLS files -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("content", ["", "key"])
def test_a_client_ca_that_does_not_load_is_named(tmp_path, pki, content):
    """An empty client CA file, or a key given for it, was blamed on the server certificate
    ("the TLS certificate srv.pem and key srv.key do not load")."""
    ca = tmp_path / "client-ca.pem"
    ca.write_text("" if not content else Path(pki.server_key).read_text())
    line = one_line(run(tmp_path, *serve(), "--tls-cert", pki.server_cert, "--tls-key",
                        pki.server_key, "--tls-client-ca", str(ca)), f"client CA {ca}")
    assert pki.server_cert not in line, line


def test_an_expired_server_certificate_is_warned_of_at_start(tmp_path, pki):
    """It started silently; every client then refused the handshake."""
    then = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert = pki.ca.issue_cert("127.0.0.1", not_before=then, not_after=then.replace(month=2))
    cert_path, key_path = tmp_path / "old.pem", tmp_path / "old.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    with socket.socket() as busy:  # the start ends at the port, after the certificate is judged
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        proc = run(tmp_path, *serve(busy.getsockname()[1]), "--tls-cert", str(cert_path),
                   "--tls-key", str(key_path))
    first, *rest = proc.stderr.strip().splitlines()
    assert first == f"hub: warning: the TLS certificate {cert_path} expired on 2020-02-01 " \
                    "00:00:00 UTC (notAfter): clients will refuse it", proc.stderr
    assert proc.returncode == 2 and len(rest) == 1 and "cannot serve on" in rest[0], proc.stderr
