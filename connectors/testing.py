"""Helpers for tests and benchmarks of connectors: HL7 v2 messages from the synthetic region, a
connector daemon in its own process, waiting for conditions."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from hub.core import httpclient

GENDER = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


def _esc(text: str) -> str:
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def region_patients(people: int, seed: int = 7) -> Iterator[dict]:
    """Patient resources of a synthetic region (the project's own generator)."""
    from hub.synth import Region

    for r in Region(seed=seed, people=people).iter_resources():
        if r["resourceType"] == "Patient":
            yield r


def adt_message(patient: dict, event: str, control_id: str, when: str,
                facility: str = "H0001", phone: str | None = None,
                charset: str = "UNICODE UTF-8", ack_types: tuple[str, str] = ("", "")) -> bytes:
    """An ADT^<event> message for one synthetic Patient (PID from its identifiers and name).
    ``ack_types``: MSH-15 and MSH-16; both empty (original acknowledgment mode, one ACK) unless
    a test asks for enhanced mode."""
    pid3 = []
    for ident in patient.get("identifier", []):
        system = ident.get("system", "")
        code = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code", "")
        if system == "urn:oid:2.16.156.10011.1.3":
            pid3.append(f"{_esc(ident['value'])}^^^&2.16.156.10011.1.3&ISO^NNCHN")
        elif system.startswith("urn:oid:"):
            pid3.append(f"{_esc(ident['value'])}^^^{facility}&{system[8:]}&ISO^{code or 'MR'}")
    name = (patient.get("name") or [{}])[0]
    family = _esc(name.get("family", ""))
    given = _esc("".join(name.get("given", [])))
    gender = GENDER.get(patient.get("gender", ""), "U")
    birth = (patient.get("birthDate") or "").replace("-", "")
    phone = phone if phone is not None else next(
        (t["value"] for t in patient.get("telecom", []) if t.get("system") == "phone"), "")
    segments = [
        f"MSH|^~\\&|HIS|{facility}|HUB|REGION|{when}||ADT^{event}^ADT_A01|{control_id}|P|2.5"
        f"|||{ack_types[0]}|{ack_types[1]}||{charset}",
        f"EVN|{event}|{when}",
        f"PID|1||{'~'.join(pid3)}||{family}^{given}||{birth}|{gender}|||||{_esc(phone)}",
        f"PV1|1|O|MZ^^^{facility}||||||||||||||||V{control_id}",
    ]
    enc = "gb18030" if "18030" in charset else "utf-8"
    return "\r".join(segments).encode(enc)


def adt_stream(people: int, seed: int = 7, facility: str = "H0001"
               ) -> list[tuple[str, list[bytes]]]:
    """Per patient (key, [A04 registration, A08 update with a new phone]) in order."""
    out = []
    for i, p in enumerate(region_patients(people, seed)):
        when = f"2024{(i % 12) + 1:02d}{(i % 28) + 1:02d}0930+0800"
        msgs = [adt_message(p, "A04", f"M{i:07d}A", when, facility),
                adt_message(p, "A08", f"M{i:07d}B", when[:8] + "1015+0800", facility,
                            phone=f"138{i:08d}")]
        out.append((p["id"], msgs))
    return out


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, every: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(every)


@contextmanager
def running(source: Any, intake: Any, join_s: float = 10.0) -> Iterator[threading.Thread]:
    """``source`` running in a thread of its own (yielded), feeding ``intake``, until the block
    ends."""
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(intake, stop), daemon=True)
    t.start()
    try:
        yield t
    finally:
        stop.set()
        t.join(join_s)


def write_config(path: Path, **cfg: Any) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


class ConnectorProcess:
    """``hub connector run CONFIG`` in its own process."""

    def __init__(self, config: Path, status_port: int, log: Path | None = None):
        self.config, self.status_port = config, status_port
        self.log = log or config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/status"

    def start(self, timeout: float = 30.0) -> ConnectorProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "connector", "run", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(self._ready, timeout, what="connector start")
        return self

    def _started(self) -> subprocess.Popen:
        if self.proc is None:
            raise RuntimeError("the connector has not been started")
        return self.proc

    def _ready(self) -> bool:
        proc = self._started()
        if proc.poll() is not None:
            raise RuntimeError(f"the connector exited with {proc.returncode}: "
                               + self.log.read_text(errors="replace")[-2000:])
        try:
            st = httpclient.get(self.status_url, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return all(s.get("alive") for s in st["sources"].values())

    def status(self) -> dict:
        return httpclient.get(self.status_url, timeout=5).json()

    def kill(self) -> None:
        proc = self._started()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode if self.proc else 0

    def __enter__(self) -> ConnectorProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def batched(it, n):
    it = iter(it)
    while chunk := list(itertools.islice(it, n)):
        yield chunk
