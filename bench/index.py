"""Search-index build: rate as a ratio to raw model_validate_json (same run), size per resource.

Goal (issue 3): index build rate >= 2x the validation rate, on the embedded default; disk per
resource reported for the event store and the index. The region is ingested first (not timed),
then the index is rebuilt from the log by the projection runner, as `hub projections rebuild`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import orjson

from bench.common import generated, record, rss_peak_mb, validation_rate
from hub.ingest import Context, Hub
from hub.store import ResourceStore
from projections.runner import Runner
from projections.search.sqlite_index import SQLiteSearchIndex


def disk_mb(path: str) -> float:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)) / 1e6


def run(people: int) -> dict:
    from hub.synth import Region

    tmp = tempfile.mkdtemp(prefix="hub-bench-index-")
    try:
        store = ResourceStore.sqlite(f"{tmp}/events.sqlite")
        hub = Hub(store)
        n = 0
        for _ in hub.ingest(((orjson.dumps(d), d) for d in Region(seed=7, people=people)
                             .iter_resources()), Context()):
            n += 1
        base = validation_rate(generated(min(people, 400)))
        index = SQLiteSearchIndex(f"{tmp}/search.sqlite")
        t = time.perf_counter()
        built = Runner(store, index, batch=2000).rebuild()
        seconds = time.perf_counter() - t
        stats = index.stats()
        index.close()
        store.close()
        events, idx = disk_mb(f"{tmp}/events.sqlite"), disk_mb(f"{tmp}/search.sqlite")
        return {"resources": n, "events_indexed": built, "seconds": round(seconds, 1),
                "index_per_s": round(built / seconds), "validate_per_s": round(base),
                "ratio": round(built / seconds / base, 2),
                "index_rows_per_resource": round(sum(v for k, v in stats.items() if k != "sp_res") / n, 1),
                "event_store_kb_per_resource": round(events * 1000 / n, 2),
                "index_kb_per_resource": round(idx * 1000 / n, 2),
                "peak_rss_mb": round(rss_peak_mb())}
    finally:
        shutil.rmtree(tmp)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--people", type=int, nargs="+", default=[3900, 39000],
                   help="region sizes (about 26 resources per person)")
    args = p.parse_args(argv)
    result = {}
    for people in args.people:
        result[str(people)] = run(people)
        print(people, result[str(people)], flush=True)
    print("wrote", record("index", result))
    return result


if __name__ == "__main__":
    main()
