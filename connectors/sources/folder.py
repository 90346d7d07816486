"""Folder drop: files put into a folder are read once and moved to ``done/`` or ``failed/``.

A file is taken only when it is complete: names starting with ``.`` or ending in ``.tmp``,
``.part``, ``.partial`` or ``.filepart`` are skipped (write under such a name, then rename), and a
file must be unchanged (size and modification time) for ``settle_ms`` before it is read. Each file
is spooled (converted, or dead-lettered) in one transaction together with the checkpoint naming
it; only then is it moved. A crash between the two is recognised at restart by that checkpoint: the
file is moved without being read again.

``split: hl7`` splits a file of several HL7 v2 messages (each starting with ``MSH``) into one
payload per message, leaving out the batch envelope (``FHS``, ``BHS``, ``BTS``, ``FTS``
segments); otherwise the whole file is one payload (``csv:<mapping>`` handles many rows). The
messages of a big batch file are spooled ``CHUNK`` at a time, each chunk in one transaction with
a checkpoint naming the file and the next message, so memory stays bounded (a 15 MB file of
60,000 messages, spooled at once, held 1.4 GB) and a restart resumes after the last chunk. A
file over ``max_file_bytes`` (default 256 MiB) is moved to ``failed/`` unread.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from connectors.base import Envelope, Intake

log = logging.getLogger("connectors.folder")

PARTIAL = (".tmp", ".part", ".partial", ".filepart", ".crdownload")
CHUNK = 500  # messages of a batch file spooled per transaction
MAX_FILE_BYTES = 256 * 1024 * 1024
_MSH = re.compile(rb"(?:\r\n|\r|\n)(?=MSH)")
# the batch envelope of HL7 v2 (2.10.3): file and batch header and trailer segments
_ENVELOPE = re.compile(rb"(?:^|(?<=[\r\n]))(?:FHS|BHS|BTS|FTS)[^\r\n]*(?:\r\n|\r|\n|$)")


def split_hl7(data: bytes) -> list[bytes]:
    data = data.lstrip(b"\xef\xbb\xbf").strip(b"\r\n\x0b\x1c")
    data = _ENVELOPE.sub(b"", data)
    parts = [p.strip(b"\r\n\x0b\x1c") for p in _MSH.split(data)]
    return [p.replace(b"\r\n", b"\r").replace(b"\n", b"\r") for p in parts if p]


class FolderSource:
    def __init__(self, name: str, path: str, kind: str = "hl7v2", pattern: str = "*",
                 settle_ms: int = 500, poll_s: float = 0.5, done_dir: str | None = None,
                 failed_dir: str | None = None, split: str | None = None,
                 max_file_bytes: int = MAX_FILE_BYTES, **_: Any):
        self.name, self.kind, self.pattern = name, kind, pattern
        self.path = Path(path)
        self.settle = settle_ms / 1000.0
        self.poll = float(poll_s)
        self.done = Path(done_dir) if done_dir else self.path / "done"
        self.failed = Path(failed_dir) if failed_dir else self.path / "failed"
        self.split = split
        self.max_file_bytes = int(max_file_bytes)
        self.key = f"folder:{name}"
        self.stats = {"files": 0, "done": 0, "failed": 0}
        self._watched: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime, since)

    @classmethod
    def from_config(cls, name: str, cfg: dict) -> FolderSource:
        return cls(name=name, **{k: v for k, v in cfg.items() if k not in ("name", "type")})

    def run(self, intake: Intake, stop: threading.Event) -> None:
        for d in (self.path, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self._recover(intake)
        while not stop.is_set():
            for f in self.ready_files():
                if stop.is_set():
                    break
                self.take(intake, f)
            stop.wait(self.poll)

    def ready_files(self) -> list[Path]:
        now, clock = time.time(), time.monotonic()
        out = []
        seen: dict[str, tuple[int, int, float]] = {}
        # the pattern matches names in any case (*.hl7 takes UPPER.HL7, as Windows senders write)
        pattern = self.pattern.lower()
        for f in self.path.iterdir() if self.path.is_dir() else ():
            name = f.name
            if not fnmatch.fnmatchcase(name.lower(), pattern):
                continue
            if name.startswith(".") or name.lower().endswith(PARTIAL):
                continue
            try:
                if f.is_symlink():
                    # the daemon reads what the hospital drops, not what a link points to (a file
                    # outside the inbox, or a loop): the link goes to failed/
                    log.warning("folder %s: %s is a symbolic link: moved to failed/, not read",
                                self.name, _shown(name))
                    self._move(f, False)
                    self._set_aside()
                    continue
                st = f.stat()
            except OSError:  # gone meanwhile, or unreadable: not taken
                continue
            if not f.is_file():
                continue
            # unchanged for settle_ms: by its time, or, for a time in the future (a sender's
            # clock ahead: such a file waited unseen until the clock caught up), by watching it
            size, first = st.st_size, self._watched.get(name)
            since = first[2] if first is not None and first[:2] == (size, st.st_mtime_ns) else clock
            seen[name] = (size, st.st_mtime_ns, since)
            if now - st.st_mtime < self.settle and clock - since < self.settle:
                continue
            out.append((st.st_mtime_ns, name, f))
        self._watched = seen
        return [f for _, _, f in sorted(out)]

    def _set_aside(self) -> None:
        """A file moved to failed/ unread is a failed file in the status, as a refused one is
        (the status showed no failure at all)."""
        self.stats["files"] += 1
        self.stats["failed"] += 1

    def take(self, intake: Intake, f: Path) -> None:
        try:
            st = f.stat()
            if st.st_size > self.max_file_bytes:
                log.warning("folder %s: %s holds %d bytes, over max_file_bytes %d: moved to "
                            "failed/, not read (split it, or raise the limit)", self.name,
                            _shown(f.name), st.st_size, self.max_file_bytes)
                self._move(f, False)
                self.stats["files"] += 1
                self.stats["failed"] += 1
                return
            data = f.read_bytes()
            if f.stat().st_size != st.st_size or f.stat().st_mtime_ns != st.st_mtime_ns:
                return  # still being written after all: next round
        except FileNotFoundError:
            return
        except OSError as e:  # unreadable (permissions): set aside, the rest go on
            log.warning("folder %s: %s cannot be read (%s): moved to failed/", self.name,
                        _shown(f.name), e)
            try:
                self._move(f, False)
            except OSError:
                pass
            self._set_aside()
            return
        payloads = split_hl7(data) if self.split == "hl7" else [data]
        if not payloads:
            payloads = [data]
        shown = _shown(f.name)  # a name that is no UTF-8 (copied from Windows) as text
        # the content's digest too: a second file of the same name, size and time (rsync -t,
        # cp -p, a file system of whole seconds) was taken for the one spooled, and skipped
        cp = {"file": shown, "raw": os.fsencode(f.name).hex(), "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "parts": len(payloads),
              "sha256": hashlib.sha256(data).hexdigest()}
        start = self._resumed(intake, cp)
        answers = []
        for i in range(start, len(payloads), CHUNK):
            envs = [Envelope(p, self.kind, self.name, {"file": shown, "part": i + j})
                    for j, p in enumerate(payloads[i:i + CHUNK])]
            at = {**cp, "next": min(i + CHUNK, len(payloads))}
            answers += intake.accept(envs, (self.key, orjson.dumps(at).decode()))
        ok = all(a.ok for a in answers)
        try:
            self._move(f, ok)
        except FileNotFoundError:  # removed by its sender once spooled: nothing to move
            log.info("folder %s: %s was removed after it was spooled", self.name, shown)
        self.stats["files"] += 1
        self.stats["done" if ok else "failed"] += 1
        if not ok:
            log.warning("folder %s: %s failed (dead letters %s)", self.name, shown,
                        [a.deadletter_id for a in answers if not a.ok])

    def _resumed(self, intake: Intake, cp: dict) -> int:
        """The first message of the file still to spool: after the chunks spooled before a
        restart (the checkpoint names this very file), else 0."""
        raw = intake.checkpoint(self.key)
        if not raw:
            return 0
        was = orjson.loads(raw)
        same = all(was.get(k) == cp[k] for k in ("raw", "size", "mtime_ns", "parts")) and \
            was.get("sha256", cp["sha256"]) == cp["sha256"]  # a checkpoint of before digests
        return int(was.get("next", 0)) if same else 0

    def _recover(self, intake: Intake) -> None:
        """A file spooled before a crash but not moved: move it now, do not read it again (to
        done/: a failure of it is in the dead letters already). A batch file spooled in part
        stays: ``take`` goes on from its next chunk."""
        raw = intake.checkpoint(self.key)
        if not raw:
            return
        cp = orjson.loads(raw)
        if cp.get("next", 0) < cp.get("parts", 0):
            return
        f = self.path / (os.fsdecode(bytes.fromhex(cp["raw"])) if "raw" in cp else cp["file"])
        try:
            st = f.stat()
        except FileNotFoundError:
            return
        if st.st_size == cp["size"] and st.st_mtime_ns == cp["mtime_ns"] and (
                "sha256" not in cp or _digest(f) == cp["sha256"]):
            log.info("folder %s: %s was spooled before a restart; moving it", self.name, f.name)
            self._move(f, True)

    def _move(self, f: Path, ok: bool) -> None:
        target_dir = self.done if ok else self.failed
        target = target_dir / f.name
        if target.exists():
            target = target_dir / f"{f.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}" \
                                  f"{time.monotonic_ns() % 10**6}{f.suffix}"
        os.replace(f, target)


def _digest(f: Path) -> str | None:
    try:
        return hashlib.sha256(f.read_bytes()).hexdigest()
    except OSError:
        return None


def _shown(name: str) -> str:
    """A file name as text: bytes that are no UTF-8 (read with surrogate escapes) replaced."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
