"""What the checks of hub/jsontext.py cost next to validation, per resource (a few seconds).

    PYTHONPATH=. python scripts/time_jsontext.py

For a Patient and an Observation, written compactly by orjson and pretty with ASCII escapes by
Python's json: model validation alone and all of hub.resource.validate; the duplicate-key byte
test (what every body pays) and the exact slow check it spares; the control-character byte
test (what every body pays) and the walk it spares; best of five rounds.
"""

from __future__ import annotations

import json
import time

import orjson

from hub import jsontext
from hub import resource as res

SAMPLES = {
    "Patient": {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "110101199003071234"},
                       {"system": "urn:oid:1.2.156.112604.1.2.1", "value": "MRN12345"}],
        "name": [{"family": "王", "given": ["小明"], "text": "王小明"}],
        "gender": "male", "birthDate": "1990-03-07",
        "telecom": [{"system": "phone", "value": "13800138000", "use": "mobile"}],
        "address": [{"line": ["朝阳区建国路88号"], "city": "北京市", "district": "朝阳区",
                     "postalCode": "100020", "country": "CN"}],
        "maritalStatus": {"coding": [{"system":
                                      "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                      "code": "M"}]},
    },
    "Observation": {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:oid:1.2.156.1", "value": "obs-1"}], "status": "final",
        "category": [{"coding": [{"system":
                                  "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                             "display": "Heart rate"}], "text": "心率"},
        "subject": {"reference": "Patient/abc"}, "effectiveDateTime": "2024-01-02T10:00:00+08:00",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
    },
}


def best_us(fn, n: int = 2000) -> float:
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return min(rounds)


def main() -> None:
    for rtype, d in SAMPLES.items():
        for label, raw in (("orjson", orjson.dumps(d)),
                           ("json indent ascii", json.dumps(d, indent=2).encode())):
            parsed = res.parse_json(raw)
            model = best_us(lambda: res.model_class(rtype).model_validate_json(raw))
            full = best_us(lambda: res.validate(rtype, raw, parsed))
            dup = best_us(lambda: jsontext.keys_may_repeat(raw, parsed))
            dup_slow = best_us(lambda: jsontext.duplicate_keys(raw, rtype))
            text = best_us(lambda: jsontext.refuse_bad_text(parsed, rtype, raw))
            walk = best_us(lambda: jsontext.bad_text(parsed, rtype, []))
            print(f"{rtype:11} {label:17} {len(raw):5} B | model {model:6.1f} µs, validate "
                  f"{full:6.1f} µs | duplicate keys: byte test {dup:4.2f} µs ({dup / full:.1%} of "
                  f"validate), exact {dup_slow:5.1f} µs | control characters: byte test "
                  f"{text:4.2f} µs ({text / full:.1%}), walk {walk:4.1f} µs")


if __name__ == "__main__":
    main()
