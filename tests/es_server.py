"""An Elasticsearch-compatible server for tests: the ``noida-db`` binary of the PyPI wheel.

``noida-db start --only elasticsearch`` on a free loopback port, its data in a temporary directory,
one per test session. Each user of it takes an index prefix of its own (``prefix``), so tests
running together never see each other's indexes. Where noida lacks what a real cluster has, the
test that meets it says so (the README lists the gaps).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.kafka_broker import _free_port


def noida_binary() -> Path | None:
    try:
        import noida_db
    except ImportError:
        return None
    path = Path(noida_db.__file__).parent / "noida-db"
    if not path.exists():
        return None
    os.chmod(path, 0o755)
    return path


class SearchServer:
    def __init__(self, data: Path):
        self.port = _free_port()
        self.data = data
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SearchServer:
        log = self.data / "noida.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(noida_binary()), "start", "--data-dir", str(self.data / "data"),
                 "--only", "elasticsearch", "--elasticsearch-port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("noida-db exited: " + log.read_text(errors="replace")[-1000:])
            try:
                if httpx.get(self.url, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("noida-db did not answer in 20 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def prefix() -> str:
    """An index prefix of its own for one user of the server."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def es_server(tmp_path_factory) -> Iterator[SearchServer]:
    if noida_binary() is None:
        if os.environ.get("CI"):  # as for PostgreSQL and the broker: in CI a missing one fails
            pytest.fail("the noida-db binary (PyPI wheel noida-db) is not installed")
        pytest.skip("the noida-db binary (PyPI wheel noida-db) is not installed")
    server = SearchServer(tmp_path_factory.mktemp("noida")).start()
    yield server
    server.stop()
