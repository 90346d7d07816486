"""One connector daemon per state directory: an advisory lock held for the daemon's lifetime.

Two daemons started with one ``state_dir`` both drained its spool, and every unit was sent twice.
``fcntl.flock`` on ``daemon.lock`` in the folder is dropped by the kernel when its process dies,
so a crash leaves no stale lock; the file holds the holder's pid, for the refusal to name.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from connectors.base import CannotStart

LOCK_FILE = "daemon.lock"


class StateDirLock:
    def __init__(self, state_dir: Path):
        path = state_dir / LOCK_FILE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise CannotStart(f"state_dir {state_dir}: {path.name}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if isinstance(e, BlockingIOError):
                raise CannotStart(f"state_dir {state_dir} is in use by pid {holder or '?'} "
                                  "(another connector daemon)") from None
            raise CannotStart(f"state_dir {state_dir}: cannot lock {path.name}: "
                              f"{e.strerror or e}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        # a Connector dropped without join (a test's) still lets the folder go
        self._release = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._release()  # once: closing the file drops the lock
