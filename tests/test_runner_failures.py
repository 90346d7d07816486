"""A read model's follower whose step fails keeps retrying, says so in the log once per new
failure (not every second), keeps the failure for ``/ready``, and catches up once the cause is gone."""

from __future__ import annotations

import logging
import time

import pytest

from hub.core.ingest import Context, Op
from projections.runner import Runner
from projections.search.sqlite_index import SQLiteSearchIndex


class FailingIndex(SQLiteSearchIndex):
    """The real index, whose ``apply`` fails while ``failures`` is above zero (a disk that
    filled, a lock held elsewhere)."""

    failures = 0

    def apply(self, notifications, up_to=None, since=None):
        if self.failures > 0:
            self.failures -= 1
            raise OSError("database or disk is full")
        return super().apply(notifications, up_to=up_to, since=since)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_failing_step_is_logged_once_and_retried_until_it_works(hub, tmp_path, caplog):
    hub.execute([Op("PUT", "Patient", "p1", {"resourceType": "Patient", "id": "p1"})],
                Context(), atomic=True)
    index = FailingIndex(tmp_path / "search.sqlite")
    index.failures = 3
    runner = Runner(hub.store, index)
    with caplog.at_level(logging.WARNING, logger="projections.runner"):
        runner.start(poll=0.05)
        try:
            deadline = time.monotonic() + 20
            while runner.lag() > 0:
                assert time.monotonic() < deadline, "the follower never caught up"
                time.sleep(0.05)
        finally:
            runner.stop()
    said = [r for r in caplog.records if "step failed" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # three failures, one line
    assert "database or disk is full" in said[0].getMessage()
    assert runner.error is None  # following again: the failure is over
    index.close()
