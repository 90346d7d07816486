"""Search-index value extraction, as a ratio to raw model_validate_json measured in the same run.

Goal: extraction costs clearly less than validation, ratio of rates >= 2. Measured on the
synthetic region's resources in their stored form (canonical JSON with meta), for every parameter of
each resource's type: ``parse_and_extract`` includes orjson parsing of the stored bytes (what the
projection does), ``extract`` starts from parsed dicts. Each resource's values are consumed and
dropped, as an index writer does; keeping all of them alive (``retained``) costs the cyclic garbage
collector about half the rate. Rates are per core (one thread).
"""

from __future__ import annotations

import argparse

import orjson

from bench.common import generated, rate, record, validation_rate
from hub.core.resource import canonical
from projections.search.extract import compile_stats, extract


def stored(items: list[bytes]) -> list[bytes]:
    out = []
    for raw in items:
        d = orjson.loads(raw)
        out.append(canonical(d, d["id"], 1, "2024-05-01T10:00:00.123+08:00"))
    return out


def consume(items: list, parse: bool) -> int:
    n = 0
    for item in items:
        n += len(extract(orjson.loads(item) if parse else item))
    return n


def run(people: int, repeats: int = 3) -> dict:
    items = generated(people)
    blobs = stored(items)
    dicts = [orjson.loads(b) for b in blobs]
    for d in dicts:  # compile every type's plan and warm the caches once, as a running projection has
        extract(d)
    values = sum(len(vs) for d in dicts for vs in extract(d).values())
    stats = compile_stats()
    out = {"resources": len(items), "people": people, "index_values": values,
           "values_per_resource": round(values / len(items), 1),
           "parameters_direct": stats["direct"], "parameters_fallback": stats["fallback"],
           "parameters_skipped": stats["skipped"], "runs": []}
    for _ in range(repeats):
        row = {"validate_per_s": round(validation_rate(items))}
        row["parse_and_extract_per_s"] = round(rate(len(blobs), lambda: consume(blobs, parse=True)))
        row["extract_per_s"] = round(rate(len(dicts), lambda: consume(dicts, parse=False)))
        row["extract_retained_per_s"] = round(rate(len(dicts), lambda: [extract(d) for d in dicts]))
        row["ratio"] = round(row["parse_and_extract_per_s"] / row["validate_per_s"], 2)
        row["extract_only_ratio"] = round(row["extract_per_s"] / row["validate_per_s"], 2)
        out["runs"].append(row)
        print(row, flush=True)
    for key in ("ratio", "extract_only_ratio"):
        vals = sorted(r[key] for r in out["runs"])
        out[f"median_{key}"] = vals[len(vals) // 2]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--people", type=int, default=800)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    result = run(args.people, args.repeats)
    print("wrote", record("extract", result))
    return result


if __name__ == "__main__":
    main()
