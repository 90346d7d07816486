"""Stopping a process on SIGTERM or SIGINT without deadlocking it.

A Python signal handler runs in the main thread, between two of its bytecodes: when the signal
lands while the main thread holds a lock (``Event.wait`` holds its condition's lock between two
timed waits, as a follower's loop does), a handler that takes the same lock, ``Event.set``, waits
for itself for ever. A follower hung so for hours, and its parent-watch thread behind it: the
process never ended, even after the server it followed was gone. The handler here only starts a
thread that calls ``stop``, which takes the lock once the main thread lets it go.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


def stop_handler(stop: Callable[[], None]) -> Callable[[int, Any], None]:
    """A signal handler that calls ``stop`` in a thread of its own (never in the handler)."""
    def handle(signum: int, frame: Any) -> None:
        threading.Thread(target=stop, name=f"stop-on-signal-{signum}", daemon=True).start()
    return handle


def stop_on_signals(stop: Callable[[], None],
                    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Call ``stop`` (safely, see the module) when one of ``signals`` arrives; main thread only."""
    handler = stop_handler(stop)
    for sig in signals:
        signal.signal(sig, handler)
