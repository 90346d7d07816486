"""What the write path's text checks (hub/core/jsontext.py) cost next to validation, per resource.

    python -m bench.jsontext [--people N]

On the resources of a generated region, each written compactly by orjson and pretty with ASCII
escapes by Python's json (the slow path of both checks): hub.resource.validate, then the duplicate-key
byte test every body pays and the exact check it spares, the control-character byte test every body
pays and the walk it spares. All in CPU time of this process, as shares of validation.
"""

from __future__ import annotations

import argparse
import json
import time

import orjson

from bench.common import generated, record
from hub.core import jsontext
from hub.core import resource as res


def _cpu(fn, items) -> float:
    t = time.process_time()
    for x in items:
        fn(*x)
    return time.process_time() - t


def run(people: int) -> dict:
    out = {}
    raws = generated(people)
    for label, dump in (("compact", lambda d: orjson.dumps(d)),
                        ("pretty_ascii", lambda d: json.dumps(d, indent=2).encode())):
        items = []
        for raw in raws:
            d = orjson.loads(raw)
            body = dump(d)
            items.append((d["resourceType"], body, res.parse_json(body)))
        best = {}
        for _ in range(3):
            for name, fn, args in (
                    ("validate", res.validate, [(t, b, p) for t, b, p in items]),
                    ("duplicate_byte_test", jsontext.keys_may_repeat, [(b, p) for _, b, p in items]),
                    ("duplicate_exact", jsontext.duplicate_keys, [(b, t) for t, b, _ in items]),
                    ("control_byte_test", jsontext.refuse_bad_text, [(p, t, b) for t, b, p in items]),
                    ("control_walk", jsontext.bad_text, [(p, t, []) for t, _, p in items])):
                s = _cpu(fn, args)
                best[name] = min(best.get(name, s), s)
        n = len(items)
        out[label] = {"resources": n, "bytes_mean": sum(len(b) for _, b, _ in items) // n,
                      **{f"{k}_us": round(v / n * 1e6, 2) for k, v in best.items()},
                      "duplicate_byte_test_share": round(best["duplicate_byte_test"] / best["validate"], 4),
                      "control_byte_test_share": round(best["control_byte_test"] / best["validate"], 4)}
    return {"people": people, "kinds": out}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.jsontext")
    p.add_argument("--people", type=int, default=100)
    args = p.parse_args(argv)
    result = run(args.people)
    for label, r in result["kinds"].items():
        print(label, r)
    print("wrote", record("jsontext", result))
    return result


if __name__ == "__main__":
    main()
