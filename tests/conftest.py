"""Shared fixtures: real SQLite files, a real PostgreSQL database per session, a real HTTP server.

PostgreSQL is the machine's server at 127.0.0.1:5432 (override with HUB_TEST_PG, a libpq URL of a
role allowed to create databases). Each test session creates its own database and drops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from hub.auth.backend_client import BackendServicesAuth, new_key, private_pem, public_jwks
from hub.auth.clients import open_registry
from hub.core import httpclient
from hub.core.config import Settings
from hub.core.ingest import Hub

# Servers the tests start do not link Patients in the background: identity decisions would land in
# the log of every test that writes a Patient. The MPI tests turn it on (HUB_MPI_AUTOMATCH=1).
os.environ.setdefault("HUB_MPI_AUTOMATCH", "0")

# taken out of the environment the tests' `hub` commands inherit: no setting of the hub, it would
# be warned of (hub.core.config.unknown_variables)
PG_ADMIN = os.environ.pop("HUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


class PgDatabases:
    """Creates throw-away PostgreSQL databases and drops them all at the end of the session."""

    def __init__(self):
        self.names: list[str] = []

    def new(self) -> str:
        name = f"hub_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return PG_ADMIN.rsplit("/", 1)[0] + "/" + name

    def drop_all(self) -> None:
        # PostgreSQL checkpoints on every DROP DATABASE, and a session creates hundreds: one by
        # one they took 20-30 s at the end of each worker's run; concurrent drops share the
        # checkpoints (the server coalesces requests that arrive together)
        from concurrent.futures import ThreadPoolExecutor

        def drop(name: str) -> None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(drop, self.names))


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN}")
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


def make_settings(backend: str, tmp_path: Path, request) -> Settings:
    """Settings for an empty store: a new SQLite directory or a new PostgreSQL database."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    settings.audit = False  # see LiveServer
    settings.auth = True  # the suites call the API with tokens (LiveServer.auth)
    if backend == "postgres":
        settings.database_url = request.getfixturevalue("pg_databases").new()
    return settings


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(backend, tmp_path, request) -> Settings:
    return make_settings(backend, tmp_path, request)


@pytest.fixture
def hub(settings) -> Iterator[Hub]:
    h = Hub(settings.open_store())
    yield h
    h.store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(app) -> Iterator[int]:
    """``app`` served by uvicorn in a thread of this process on a free loopback port (the port):
    real HTTP for an application a test builds itself."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class LiveServer:
    """``hub serve`` in its own process on a loopback port: real HTTP, no shared GIL."""

    def __init__(self, settings: Settings, verify=True, host: str = "127.0.0.1"):
        """``verify``: the client side of the server's TLS (settings.tls_cert), httpx's: an
        ``ssl.SSLContext`` trusting its CA and, with settings.tls_client_ca, holding a client
        certificate. ``host``: the loopback address it listens on (``::1``: IPv6)."""
        self.verify = verify
        self.port = free_port()
        settings.host, settings.port = host, self.port
        settings.base_url = None  # where it listens: the tokens' audience
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.extra_args: list[str] = []  # more `hub serve` options
        self.env: dict[str, str] = {}  # the server's environment, once started
        self.extra_env: dict[str, str] = {}  # set in the server's environment (HUB_BASE_URL)
        # with access control on: an administrator client with every scope, its tokens renewed
        self.auth: BackendServicesAuth | None = None

    @property
    def origin(self) -> str:
        host = self.settings.host
        return f"{'https' if self.settings.tls_cert else 'http'}://" \
               f"{f'[{host}]' if ':' in host else host}:{self.port}"

    def client_auth(self, *, roles: tuple[str, ...] = ("admin",), scope: str = "system/*.cruds",
                    institution: str = "", name: str = "test client", oid: str = ""
                    ) -> BackendServicesAuth:
        """Register a client (a new key) and return its token source; ``oid``: its
        institution's root OID."""
        key = new_key()
        registry = open_registry(self.settings.data_dir)
        client = registry.add(name, public_jwks(key), institution=institution, roles=roles,
                              scopes=scope, oid=oid)
        return BackendServicesAuth(self.origin + "/auth/token", client.client_id, key, scope,
                                   verify=self.verify)

    def sink_credentials(self, institution: str, folder: Path, key=None) -> dict[str, str]:
        """The http sink settings of a connector client of ``institution`` (none without access
        control): its client_id and the PEM file of its private key (``key``, else a new one)."""
        if not self.settings.auth:
            return {}
        key = key or new_key()
        client = open_registry(self.settings.data_dir).add(
            f"connector {institution}", public_jwks(key), institution=institution,
            roles=("connector",), scopes="system/*.cruds")
        folder.mkdir(parents=True, exist_ok=True)
        pem = folder / f"{client.client_id}.pem"
        pem.write_bytes(private_pem(key))
        return {"client_id": client.client_id, "private_key": str(pem)}

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of the administrator client (none without access control)."""
        return {"authorization": f"Bearer {self.auth.token()}"} if self.auth else {}

    @property
    def base(self) -> str:
        return self.origin + "/fhir"

    def __enter__(self) -> LiveServer:
        env = {**os.environ, "HUB_DATA_DIR": str(self.settings.data_dir)}
        env.pop("HUB_DATABASE_URL", None)
        if self.settings.database_url:
            env["HUB_DATABASE_URL"] = self.settings.database_url
        env["HUB_MAX_BODY"] = str(self.settings.max_body)
        # one API process unless a test asks for more (--workers): the suite runs many servers
        env.setdefault("HUB_WORKERS", "1")
        # the access audit writes an AuditEvent per read: the suites that count what is stored
        # run without it; tests/test_access_audit.py runs with it
        env["HUB_AUDIT"] = "1" if self.settings.audit else "0"
        env["HUB_AUTH"] = "1" if self.settings.auth else "0"
        env.pop("HUB_BASE_URL", None)
        for name, value in (("HUB_AUTH_ISSUER", self.settings.auth_issuer),
                            ("HUB_AUTH_JWKS_URL", self.settings.auth_jwks_url),
                            ("HUB_CONSOLE_OIDC_ISSUER", self.settings.console_oidc_issuer),
                            ("HUB_CONSOLE_OIDC_CLIENT_ID", self.settings.console_oidc_client_id),
                            ("HUB_CONSOLE_OIDC_CLIENT_SECRET",
                             self.settings.console_oidc_client_secret),
                            ("HUB_TRUSTED_PROXIES", ",".join(self.settings.trusted_proxies)),
                            ("HUB_RATE_LIMIT", str(self.settings.rate_limit or "")),
                            ("HUB_QUARANTINE_QUOTA", str(self.settings.quarantine_quota)),
                            ("HUB_MAX_STRING", str(self.settings.max_string)),
                            ("HUB_MAX_HEADER", str(self.settings.max_header)),
                            ("HUB_HEADER_TIMEOUT", str(self.settings.header_timeout)),
                            ("HUB_LARGE_BODY", str(self.settings.large_body)),
                            ("HUB_MAX_LARGE", str(self.settings.max_large)),
                            ("HUB_LARGE_WAIT", str(self.settings.large_wait)),
                            ("HUB_BODY_TIMEOUT", str(self.settings.body_timeout)),
                            ("HUB_TLS_CERT", self.settings.tls_cert),
                            ("HUB_TLS_KEY", self.settings.tls_key),
                            ("HUB_TLS_CLIENT_CA", self.settings.tls_client_ca),
                            ("HUB_SEARCH", self.settings.search),
                            ("HUB_ES_URL", self.settings.es_url),
                            ("HUB_ES_PREFIX", self.settings.es_prefix)):
            env.pop(name, None)
            if value:
                env[name] = value
        env.update(self.extra_env)
        if self.settings.auth:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            self.auth = self.client_auth()
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "serve", "--host", self.settings.host,
             "--port", str(self.port), *self.extra_args], env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the test server exited with {self.proc.returncode}")
            try:
                if httpclient.get(self.base + "/metadata", timeout=2,
                                  verify=self.verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("the test server did not start in 30 s")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module", params=BACKENDS)
def live(request, tmp_path_factory) -> Iterator[LiveServer]:
    """One server per test module and backend."""
    settings = make_settings(request.param, tmp_path_factory.mktemp("live"), request)
    with LiveServer(settings) as server:
        yield server


@contextmanager
def matching_server(request, tmp_path_factory, name: str) -> Iterator[LiveServer]:
    """A SQLite hub whose index matches Patients as they arrive (the suites' servers do not)."""
    before = os.environ.get("HUB_MPI_AUTOMATCH")
    os.environ["HUB_MPI_AUTOMATCH"] = "1"
    try:
        settings = make_settings("sqlite", tmp_path_factory.mktemp(name), request)
        settings.mpi_automatch = True
        with LiveServer(settings) as server:
            yield server
    finally:
        if before is None:
            os.environ.pop("HUB_MPI_AUTOMATCH", None)
        else:
            os.environ["HUB_MPI_AUTOMATCH"] = before


def live_server(request, tmp_path_factory, kind: str) -> LiveServer:
    """A server on the event store ``kind`` (``sqlite``, ``postgres``), or ``elasticsearch``:
    the SQLite store with searches answered by the test session's Elasticsearch-compatible
    server (a module using it imports the ``es_server`` fixture)."""
    settings = make_settings("sqlite" if kind == "elasticsearch" else kind,
                             tmp_path_factory.mktemp("live"), request)
    if kind == "elasticsearch":
        import uuid

        es = request.getfixturevalue("es_server")
        settings.search, settings.es_url = "elasticsearch", es.url
        settings.es_prefix = "t" + uuid.uuid4().hex[:10]
    return LiveServer(settings)


@pytest.fixture
def client(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify(),
                      headers={"accept": "application/fhir+json"}) as c:
        yield c


FHIR_JSON = {"content-type": "application/fhir+json"}


@pytest.fixture
def zone(monkeypatch):
    """Set HUB_TIMEZONE for the test: ``zone("+05:30")`` (the zone is read once per process, so
    its cache is cleared on the way in and out)."""
    from hub.core import fhirtime

    def set_zone(value: str) -> None:
        monkeypatch.setenv("HUB_TIMEZONE", value)
        fhirtime.local_zone.cache_clear()
    yield set_zone
    monkeypatch.undo()
    fhirtime.local_zone.cache_clear()
