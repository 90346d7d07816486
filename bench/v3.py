"""HL7 v3 interaction messages -> FHIR, messages per CPU second per service family.

Messages come from the synthetic region (``hub.synth.hl7v3``): patient registrations (H02,
``PRPA_IN201311UV02``) and visits (H07: ``PRPA_IN400001UV`` registration or admission,
``PRPA_IN400003UV`` discharge), orders and requests (H08 drug orders, H09 laboratory requests:
``POOR_IN200901UV``), their status (H10 ``POLB_IN224000UV01``), appointments (H11
``PRPA_IN410001UV``) and dictionaries (H05 ``PRVS_IN000001UV01``). The rate covers the whole
mapper path (safe XML parsing, mapping, Provenance) in one thread, in this process's CPU time. The baseline is raw fhir.resources
``model_validate_json`` over the very resources the conversion produced, in the same run: the ratio
(messages converted per CPU s / messages whose resources can be validated per CPU s) says what the
mapping costs next to the validation the hub does anyway.

    python -m bench.v3 --people 300
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import orjson

from bench.common import record
from fhir_mapping import hl7v3
from hub.core.resource import model_class
from hub.synth import Region
from hub.synth.hl7v3 import iter_messages

FAMILIES = {"H02 patient": ("PRPA_IN201311UV02",),
            "H07 visit": ("PRPA_IN400001UV", "PRPA_IN400003UV"),
            "H08/H09 orders and requests": ("POOR_IN200901UV",),
            "H10 status": ("POLB_IN224000UV01",),
            "H11 appointments": ("PRPA_IN410001UV",),
            "H05 terminology": ("PRVS_IN000001UV01",)}


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def run(people: int, repeats: int = 3) -> dict:
    msgs = list(iter_messages(Region(seed=7, people=people)))
    out: dict = {"people": people, "load_average_at_start": os.getloadavg()[0], "families": {}}
    for family, interactions in FAMILIES.items():
        sub = [(p, s) for i, p, s in msgs if i in interactions]
        resources = [(orjson.dumps(r), r["resourceType"]) for p, s in sub
                     for r in hl7v3.convert(p, s).resources]
        per_msg = len(resources) / len(sub)

        def convert(sub=sub) -> None:
            for p, s in sub:
                hl7v3.convert(p, s)

        def validate(resources=resources) -> None:
            for raw, rtype in resources:
                model_class(rtype).model_validate_json(raw)

        convert()  # warm the tables and caches
        runs = []
        for _ in range(repeats):
            gc.collect()
            conv = len(sub) / _cpu(convert)
            val = len(resources) / _cpu(validate)
            runs.append({"messages_per_cpu_s": round(conv),
                         "validate_resources_per_cpu_s": round(val),
                         "ratio": round(conv / (val / per_msg), 2)})
        best = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
        out["families"][family] = {"messages": len(sub), "resources_per_message": round(per_msg, 2),
                                   "median": best, "runs": runs}
        print(family, out["families"][family], flush=True)
    return out


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    return [(f"HL7 v3 {family} messages -> FHIR ({x['messages']} messages, "
             f"{x['resources_per_message']} resources each): messages per CPU s (ratio to "
             "validating their resources)", f"{x['median']['messages_per_cpu_s']} "
             f"({x['median']['ratio']})", "reported")
            for family, x in r["families"].items()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    result = run(args.people, args.repeats)
    print("wrote", record("v3", result))
    return result


if __name__ == "__main__":
    main()
