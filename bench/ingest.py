"""Validated ingest through the event store, as a ratio to raw model_validate_json in the same run.

Goal (issue Foundation): ingest >= 0.6 x the validation rate, on SQLite and on PostgreSQL.
Rates are per core: everything runs in this one process and thread.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import orjson

from bench.common import generated, rate, record, validation_rate
from hub.core.ingest import Context, Hub
from hub.core.store import ResourceStore


def ingest_rate(store: ResourceStore, items: list[bytes]) -> float:
    hub = Hub(store)
    try:
        return rate(len(items), lambda: sum(
            1 for _ in hub.ingest(((r, orjson.loads(r)) for r in items), Context())))
    finally:
        store.close()


def run(people: int, pg_admin: str | None, repeats: int = 3) -> dict:
    items = generated(people)
    out = {"resources": len(items), "people": people, "runs": []}
    for _ in range(repeats):
        row = {"validate_per_s": round(validation_rate(items))}
        tmp = tempfile.mkdtemp(prefix="hub-bench-")
        try:
            row["sqlite_per_s"] = round(ingest_rate(ResourceStore.sqlite(f"{tmp}/events.sqlite"), items))
        finally:
            shutil.rmtree(tmp)
        if pg_admin:
            from bench.pg import temporary_database

            with temporary_database(pg_admin) as dsn:
                row["postgres_per_s"] = round(ingest_rate(ResourceStore.postgres(dsn), items))
        row["sqlite_ratio"] = round(row["sqlite_per_s"] / row["validate_per_s"], 3)
        if "postgres_per_s" in row:
            row["postgres_ratio"] = round(row["postgres_per_s"] / row["validate_per_s"], 3)
        out["runs"].append(row)
        print(row, flush=True)
    for key in ("sqlite_ratio", "postgres_ratio"):
        vals = sorted(r[key] for r in out["runs"] if key in r)
        if vals:
            out[f"median_{key}"] = vals[len(vals) // 2]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--people", type=int, default=800)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--no-pg", action="store_true")
    args = p.parse_args(argv)
    result = run(args.people, None if args.no_pg else args.pg)
    print("wrote", record("ingest", result))
    return result


if __name__ == "__main__":
    main()
