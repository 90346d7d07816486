"""A failure that repeats, logged as an operator can read it: the first in full, then one line
at most every ``every_s`` while it goes on (with how many times it failed), and one line when
it works again. A store outage otherwise wrote a traceback five times a second per loop: 120 MB
of log an hour, burying the first error, able to fill a disk."""

from __future__ import annotations

import logging
import time


class RepeatingFailure:
    def __init__(self, log: logging.Logger, what: str, every_s: float = 60.0) -> None:
        self.log, self.what, self.every_s = log, what, every_s
        self.failures = 0
        self._last = 0.0

    def failed(self, e: BaseException, traceback: bool = True) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1:
            self._last = now
            self.log.warning("%s failed: %s: %s", self.what, type(e).__name__, _line(e),
                             exc_info=e if traceback else None)
        elif now - self._last >= self.every_s:
            self._last = now
            self.log.warning("%s still failing (%d times so far): %s: %s", self.what,
                             self.failures, type(e).__name__, _line(e))

    def ok(self) -> None:
        if self.failures:
            self.log.warning("%s works again, after %d failures", self.what, self.failures)
            self.failures = 0

    def backoff(self, base_s: float, most_s: float = 5.0) -> float:
        """The wait before the next try: ``base_s``, doubling while it fails, up to ``most_s``."""
        return base_s if not self.failures else min(most_s, base_s * 2 ** min(self.failures, 8))


def _line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0][:200] if text else ""
