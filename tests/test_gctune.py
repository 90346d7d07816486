"""The collector tuning `hub serve` applies once started (hub.core.gctune)."""

from __future__ import annotations

import gc

from hub.core.gctune import SERVING_THRESHOLD, tune_for_serving


def test_serving_freezes_start_up_and_collects_the_young_less_often():
    before = gc.get_threshold()
    try:
        tune_for_serving()
        assert gc.get_threshold() == (SERVING_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0  # what start-up built is out of the collector's passes
        # cyclic garbage made afterwards is still collected
        cycle: list = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
