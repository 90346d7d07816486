"""An Elasticsearch-compatible server on a free loopback port: the ``noida-db`` wheel's binary
(``noida-db start --only elasticsearch``), for the benchmarks and the tests (tests/es_server.py).
A real cluster is a user's; this one keeps its data in a directory of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SearchServer:
    def __init__(self, data: Path):
        self.port = free_port()
        self.data = Path(data)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SearchServer:
        binary = noida_binary()
        if binary is None:
            raise RuntimeError("the noida-db binary is not installed (pip install noida-db)")
        self.data.mkdir(parents=True, exist_ok=True)
        log = self.data / "noida.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(binary), "start", "--data-dir", str(self.data / "data"),
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
