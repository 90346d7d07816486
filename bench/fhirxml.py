"""FHIR XML written and read (hub/api/xmlform.py), against fhir.resources' own XML through its
models, on search-set Bundles of a generated region's resources.

    python -m bench.fhirxml [--people N] [--per-bundle K]

Per resource, in CPU time of this process (best of three): JSON to XML by xmlform, and by
``model_validate_json`` then ``model_dump_xml`` (what the hub did before); XML to JSON by xmlform
(the JSON is validated after, as any body), and by ``model_validate_xml`` then
``model_dump_json``; the raw ``model_validate_json`` of the same Bundles as the baseline.
"""

from __future__ import annotations

import argparse
import time

import orjson
from lxml import etree

from bench.common import generated, record
from hub.api import xmlform
from hub.core.resource import model_class


def _cpu(fn, items) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for x in items:
            fn(x)
        best = min(best, time.process_time() - t)
    return best


def run(people: int, per_bundle: int) -> dict:
    resources = [orjson.loads(r) for r in generated(people)]
    bundles = [orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": f"urn:uuid:{i + j}", "resource": d, "search": {"mode": "match"}}
        for j, d in enumerate(resources[i:i + per_bundle])]})
        for i in range(0, len(resources), per_bundle)]
    model = model_class("Bundle")
    xmls = [xmlform.json_to_xml(b) for b in bundles]
    n = len(resources)
    cpu = {
        "validate_json": _cpu(model.model_validate_json, bundles),
        "to_xml_xmlform": _cpu(xmlform.json_to_xml, bundles),
        "to_xml_models": _cpu(lambda b: model.model_validate_json(b).model_dump_xml(), bundles),
        "from_xml_xmlform": _cpu(lambda x: xmlform.xml_to_json(
            etree.fromstring(x, parser=xmlform.safe_parser())), xmls),
        "from_xml_models": _cpu(lambda x: model.model_validate_xml(x).model_dump_json(), xmls),
    }
    out = {f"{k}_us_per_resource": round(v / n * 1e6, 1) for k, v in cpu.items()}
    out.update(people=people, resources=n, bundles=len(bundles),
               to_xml_ratio_to_validation=round(cpu["to_xml_xmlform"] / cpu["validate_json"], 3),
               from_xml_ratio_to_validation=round(cpu["from_xml_xmlform"] / cpu["validate_json"], 3),
               to_xml_speedup_over_models=round(cpu["to_xml_models"] / cpu["to_xml_xmlform"], 1),
               from_xml_speedup_over_models=round(cpu["from_xml_models"] / cpu["from_xml_xmlform"],
                                                  1))
    return out


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    return [(f"FHIR XML, {r['resources']:,} generated resources in search-set Bundles: JSON to XML "
             "and XML to JSON, CPU per resource as a ratio to raw model_validate_json; times "
             "faster than fhir.resources' own XML (through its models)",
             f"{r['to_xml_ratio_to_validation']}, {r['from_xml_ratio_to_validation']}; "
             f"{r['to_xml_speedup_over_models']}x, {r['from_xml_speedup_over_models']}x", "")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.fhirxml")
    p.add_argument("--people", type=int, default=60)
    p.add_argument("--per-bundle", type=int, default=100)
    args = p.parse_args(argv)
    result = run(args.people, args.per_bundle)
    result["summary_rows"] = summary_rows(result)
    print(result)
    print("written", record("fhirxml", result))
    return result


if __name__ == "__main__":
    main()
