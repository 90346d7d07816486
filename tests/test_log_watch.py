"""An idle follower waits for the log to move (``projections.runner.LogWatch``) instead of asking
its model's position and the log's end five times a second; a write is still taken in within a
poll, and stopping does not wait out an idle wait."""

from __future__ import annotations

import time

from hub.core.ingest import Context, Op
from projections.intake import IntakeCounts
from projections.runner import LogWatch, Runner


def _put(hub, rid: str) -> int:
    hub.execute([Op("PUT", "Patient", rid, {"resourceType": "Patient", "id": rid},
                    url=f"Patient/{rid}")], Context(), atomic=True)
    return hub.store.max_notification_id()


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_an_idle_runner_waits_for_the_log_and_takes_a_write_within_a_poll(hub, tmp_path):
    _put(hub, "p0")
    model = IntakeCounts(tmp_path / "intake.sqlite")
    asked = []
    position = model.position
    model.position = lambda: asked.append(1) or position()  # type: ignore[method-assign]
    watch = LogWatch(hub.store)
    runner = Runner(hub.store, model)
    watch.start()
    runner.start(watch=watch)
    try:
        assert _wait(lambda: runner.lag() == 0, 5)
        time.sleep(0.3)  # the watch has read the end; the runner is idle
        before = len(asked)
        time.sleep(1.5)
        # polling every 0.2 s, a runner asks its position at least seven times in 1.5 s
        assert len(asked) - before <= 1
        written = _put(hub, "p1")
        t0 = time.monotonic()
        assert _wait(lambda: position() >= written, 2)
        assert time.monotonic() - t0 < 1.0
        assert [n for _, _, n in model.per_day(0)] == [2]
    finally:
        t0 = time.monotonic()
        runner.stop()
        watch.stop()
        stopped = time.monotonic() - t0
        model.close()
    assert stopped < 1.0
