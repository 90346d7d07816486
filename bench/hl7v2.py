"""HL7 v2 -> FHIR conversion throughput, messages per second per core, for ADT and ORU.

Messages come from the synthetic region (``hub.synth.hl7v2``: ADT^A01/A04/A08/A03 and ORU^R01,
Chinese names, UTF-8 or GB18030). The rate covers the whole mapper path (decoding, python-hl7
parsing, mapping to dicts, Provenance) in one thread. The baseline is raw fhir.resources R4B
``model_validate_json`` over the very resources the conversion produced, measured in the same run
(``bench.common.validation_rate``), so the ratio says how much conversion costs next to the
validation the hub does anyway:

- ``ratio_resources``: resources converted per second / resources validated per second;
- ``ratio_messages``: messages converted per second / messages whose resources can be validated
  per second (validation of one message = validation of all its resources);
- ``cpu_*``: the same measured in this process's CPU time (the machine may be shared).

    python -m bench.hl7v2 --people 300
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import orjson

from bench.common import rate, record, validation_rate
from fhir_mapping.hl7v2 import convert
from hub.synth import Region
from hub.synth.hl7v2 import iter_messages


def _convert_all(msgs) -> int:
    n = 0
    for _, payload, src in msgs:
        n += len(convert(payload, src).resources)
    return n


def _cpu_rate(n: int, fn) -> float:
    """Like ``bench.common.rate`` but over this process's CPU time: on a shared machine the wall
    clock also counts other processes' turns."""
    t = time.process_time()
    fn()
    return n / (time.process_time() - t)


def _validate_all(resources: list[tuple[bytes, str]]) -> None:
    from hub.core.resource import model_class

    for raw, rtype in resources:
        model_class(rtype).model_validate_json(raw)


def run(people: int, repeats: int = 3, encoding: str = "utf-8") -> dict:
    msgs = list(iter_messages(Region(seed=7, people=people), encoding=encoding))
    out: dict = {"people": people, "encoding": encoding, "messages": len(msgs),
                 "load_average_at_start": os.getloadavg()[0], "kinds": {}}
    for family in ("ADT", "ORU"):
        sub = [m for m in msgs if m[0].startswith(family)]
        if not sub:
            continue
        resources = [orjson.dumps(r) for _, p, s in sub for r in convert(p, s).resources]
        per_msg = len(resources) / len(sub)
        _convert_all(sub[:200])  # warm caches (tables, python-hl7, practitioner ids)
        runs = []
        for _ in range(repeats):
            gc.collect()
            conv = rate(len(sub), lambda sub=sub: _convert_all(sub))
            val = validation_rate(resources)
            row = {"convert_msgs_per_s": round(conv), "convert_resources_per_s": round(conv * per_msg),
                   "validate_resources_per_s": round(val), "validate_msgs_per_s": round(val / per_msg)}
            row["ratio_resources"] = round(row["convert_resources_per_s"] / row["validate_resources_per_s"], 2)
            row["ratio_messages"] = round(row["convert_msgs_per_s"] / row["validate_msgs_per_s"], 2)
            typed = [(r, orjson.loads(r)["resourceType"]) for r in resources]
            cpu_conv = _cpu_rate(len(sub), lambda sub=sub: _convert_all(sub))
            cpu_val = _cpu_rate(len(typed), lambda typed=typed: _validate_all(typed))
            row["cpu_convert_msgs_per_s"] = round(cpu_conv)
            row["cpu_validate_resources_per_s"] = round(cpu_val)
            row["cpu_ratio_resources"] = round(cpu_conv * per_msg / cpu_val, 2)
            runs.append(row)
            print(family, row, flush=True)
        best = sorted(runs, key=lambda r: r["convert_msgs_per_s"])[len(runs) // 2]
        out["kinds"][family] = {"messages": len(sub), "resources_per_message": round(per_msg, 2),
                                "bytes_per_message": round(sum(len(m[1]) for m in sub) / len(sub)),
                                "median": best, "runs": runs}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encoding", default="utf-8", choices=["utf-8", "gb18030"])
    args = p.parse_args(argv)
    result = run(args.people, args.repeats, args.encoding)
    print("wrote", record("hl7v2", result))
    return result


if __name__ == "__main__":
    main()
