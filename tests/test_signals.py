"""A stop signal never deadlocks a daemon: its handler hands the stop to a thread."""

from __future__ import annotations

import signal
import threading

from hub.core.signals import stop_handler


def test_a_stop_signal_landing_while_the_event_lock_is_held_still_stops():
    """A handler runs in the main thread between two bytecodes; landing while the main thread
    held the stop Event's lock (inside ``Event.wait``'s re-acquire, as a follower's timed loop
    does), ``Event.set`` in the handler waited for that same lock for ever: a follower hung for
    hours after SIGTERM, its parent-watch behind it. The handler now returns at once and the
    stop lands when the lock is let go."""
    stop = threading.Event()
    handler = stop_handler(stop.set)
    returned = threading.Event()

    def main_thread_inside_wait() -> None:
        with stop._cond:  # what Event.wait holds between its waits
            handler(signal.SIGTERM, None)
            returned.set()

    threading.Thread(target=main_thread_inside_wait, daemon=True).start()
    assert returned.wait(5), "the handler blocked on the lock its own thread holds"
    assert stop.wait(5)
