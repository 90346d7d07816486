"""A child process of `hub serve` (the read-model follower, each API worker) ends with its parent,
however the parent ended: even SIGKILL, which gives the parent no chance to stop its children."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def watch_parent(pid: int, gone: Callable[[], None], stop: threading.Event | None = None) -> None:
    """Call ``gone`` once the process ``pid`` is no longer this one's parent (it ended, and this
    process was handed to init), checking every second in a daemon thread, until ``stop``."""
    stop = stop or threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != pid:
                gone()
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
