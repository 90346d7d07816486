"""Following the event log with tracking: the machinery every read model shares.

A read model applies a batch of notifications and records the last notification id in the same
transaction as its own rows (eventsourcing's tracking table), so after a crash it resumes exactly
where it stopped: nothing applied twice, nothing skipped. ``Runner`` pulls batches from the event
store, reports lag, rebuilds from nothing, and lets a writer wait until its own write is visible.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from eventsourcing.persistence import IntegrityError, Notification

from hub.core.store import ResourceStore
from projections.contract import ReadModel
from projections.errors import NotThisLog

log = logging.getLogger("projections.runner")
IDLE_STEP = 5.0  # the longest an idle runner with a LogWatch goes without a step of its own


class Lease(Protocol):
    """Who may apply: ``held`` says whether this process does now (taking it if free)."""

    def held(self) -> bool: ...

    def release(self) -> None: ...


class LogWatch:
    """The log's end, read by one thread for every runner of a process.

    A runner that found nothing new waits for the end to move instead of asking its model's
    position and the log every poll: an idle follower of a dozen read models spent about 4 % of
    a core on those questions. A write is still taken in within a poll of its commit.
    """

    def __init__(self, store: ResourceStore, poll: float = 0.2):
        self.store = store
        self.poll = poll
        self.end = 0
        self._moved = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="log-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                end = self.store.max_notification_id()
            except Exception as e:  # noqa: BLE001 - the store away: the runners' own steps say so
                log.debug("the log's end could not be read: %s", e)
            else:
                if end != self.end:
                    with self._moved:
                        self.end = end
                        self._moved.notify_all()
            self._stop.wait(self.poll)

    def wait_past(self, seen: int, stop: threading.Event, timeout: float) -> None:
        """Until the log's end is no longer ``seen``, ``stop`` is set, or ``timeout`` passes."""
        with self._moved:
            self._moved.wait_for(lambda: self.end != seen or stop.is_set(), timeout)

    def wake(self) -> None:
        """Let waiting runners look at their stop events."""
        with self._moved:
            self._moved.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


class Runner:
    def __init__(self, store: ResourceStore, model: ReadModel, batch: int = 1000,
                 lease: Lease | None = None):
        self.store = store
        self.model = model
        self.batch = batch
        # with a lease, the background loop applies only while it holds it (a standby waits)
        self.lease = lease
        self._applied = threading.Condition()
        self._stepping = threading.Lock()  # one batch at a time per process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: LogWatch | None = None
        self.error: BaseException | None = None
        self._log_checked = False  # the model follows this log (``check``, once per runner)

    def lag(self) -> int:
        """Notifications in the log that the model has not applied yet (``problem`` says whether
        the model is beyond the log's end instead)."""
        return max(0, self.store.max_notification_id() - self.model.position())

    def problem(self, end: int | None = None) -> str | None:
        """Why the model cannot follow this log, or None: its position is beyond the log's end
        (``end``, else read now), or it was built from another log (its recorded log id is not
        the store's). Either way its rows are not this log's: following on would serve them as
        current ("lag 0") and index nothing new until the log passed the position. An empty
        model, and one that recorded no log (built before log ids were recorded: backward
        compatible), adopts this log here."""
        name = self.model.name
        position = self.model.position()
        end = self.store.max_notification_id() if end is None else end
        # the read model a rebuild of which starts it again (the automatic matching's is the
        # candidate index)
        fix = (f"rebuild it (hub projections rebuild {getattr(self.model, 'rebuilt_by', name)}) "
               "or restore the event log it was built from")
        if position > end:
            return (f"the read model {name} is at position {position}, beyond the event log's "
                    f"end ({end}): it was built from another log, or the log lost events; {fix}")
        ours = self.store.log_id()
        theirs = self.model.followed_log()
        if theirs == ours:
            return None
        if theirs is None or position == 0:
            self.model.follow_log(ours)
            return None
        return (f"the read model {name} was built from another event log (log id {theirs}, "
                f"this one's is {ours}); {fix}")

    def check(self) -> None:
        """``problem`` as an error (``NotThisLog``)."""
        if (problem := self.problem()) is not None:
            raise NotThisLog(problem)

    def step(self) -> int:
        """Apply the next batch; how many notifications it held. The first step of a runner
        checks that the model follows this log (``check``), and refuses to apply until it
        does."""
        if not self._log_checked:
            self.check()
            self._log_checked = True
        with self._stepping:
            # a bulk load (rebuild) takes bigger bites: fewer commits, same bounded memory
            size = self.batch * 5 if self.model.bulk else self.batch
            position = self.model.position()
            types = self.model.types
            covered = 0
            notes: Sequence[Notification]
            if types:
                # A model of a few resource types reads only their events (the type index),
                # and may then record the log's end as its position: nothing else concerns it.
                # The end is read first: every event up to it is committed (writers append
                # in notification order), so none of its types can appear below it later.
                end = self.store.max_notification_id()
                notes = self.store.notifications_of(types, position + 1, size)
                up_to = end if len(notes) < size and end > position else None
                covered = (up_to or (notes[-1].id if notes else position)) - position
            else:
                notes = self.store.notifications(position + 1, size)
                up_to = None
                covered = len(notes)
            if notes or up_to:
                try:
                    self.model.apply(notes, up_to=up_to, since=position)
                except IntegrityError:
                    # Another process (a second API worker) applied this batch first; its
                    # tracking row refused ours and our rows were rolled back. Move on from there.
                    pass
        if covered:
            with self._applied:
                self._applied.notify_all()
        return covered

    def catch_up(self, progress: Callable[[int], object] | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> int:
        """Apply until the model is at the end of the log (or asked to stop); how many applied."""
        done = 0
        while not should_stop():
            n = self.step()
            if not n:
                self._caught_up()
                break
            done += n
            if progress is not None:
                progress(n)
        return done

    def _caught_up(self) -> None:
        """Tell the model it reached the end of the log (a bulk load builds its indexes now)."""
        if self.model.bulk:
            with self._stepping:
                self.model.caught_up()

    def rebuild(self, progress: Callable[[int], object] | None = None) -> int:
        """From nothing: the emptied model adopts this log at its first step."""
        self.model.reset()
        self._log_checked = False
        return self.catch_up(progress)

    def sync(self, timeout: float = 5.0) -> bool:
        """Bring the model up to the log's end as of now (read-your-writes for a request),
        stepping here while the background follower is not holding a batch; False, logged,
        if that took longer than ``timeout`` seconds."""
        target = self.store.max_notification_id()
        deadline = time.monotonic() + timeout
        while self.model.position() < target:
            if time.monotonic() > deadline:
                log.warning("%s lags the log (%s < %s)", self.model.name,
                            self.model.position(), target)
                return False
            if not self.step():  # another thread holds the batch, or it is not visible yet
                time.sleep(0.002)
        return True

    def wait_for(self, notification_id: int, timeout: float = 5.0) -> bool:
        """Block until the model has applied ``notification_id`` (read-your-writes)."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while self.model.position() < notification_id:
                if self._thread is None:  # nobody follows the log: do it here
                    self.step()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._applied.wait(min(remaining, 0.05))
        return True

    # -- background following ----------------------------------------------------------------

    def start(self, poll: float = 0.2, watch: LogWatch | None = None) -> None:
        """Follow the log in a thread of this process, a step every ``poll`` seconds; with a
        ``watch``, an idle model waits for the log's end to move (or, should the watch fall
        silent, at most ``IDLE_STEP`` seconds) before it steps again."""
        self._watch = watch

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    if self.lease is not None and not self.lease.held():
                        self._stop.wait(poll)  # another follower applies; take over if it dies
                        continue
                    seen = watch.end if watch is not None else 0
                    applied = self.step()
                    self.error = None  # following again: an outage that ended is no error
                    if not applied:
                        self._caught_up()
                    # between steps, under load too: a write stream then arrives in batches of
                    # a poll's worth, whose fixed costs (the position, the log's end, one
                    # transaction) are paid once, not per write; a reader that must see its own
                    # write steps the model itself (``sync``), so waiting here delays no one
                    if applied or watch is None:
                        self._stop.wait(poll)
                    else:
                        watch.wait_past(seen, self._stop, IDLE_STEP)
                except BaseException as e:  # noqa: BLE001 - kept for lag reports; retried
                    if self.error is None or repr(self.error) != repr(e):
                        # said once per new failure: a step failing the same way every second
                        # would otherwise stall the model with only /ready's lag to show it
                        if isinstance(e, NotThisLog):  # checked again every second
                            log.error("%s: not followed: %s", self.model.name, e)
                        else:
                            log.warning("%s: step failed, retried every second: %s: %s",
                                        self.model.name, type(e).__name__, e)
                    self.error = e
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=loop, name=f"projection-{self.model.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.lease is not None:
            self.lease.release()
