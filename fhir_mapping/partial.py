"""What a message sends in part, for the hub to join with what it holds.

An HL7 v2 correction (OBR-25 ``C``) or a report with some results still to come (``A``) often
carries only the results it changes: a DiagnosticReport written from it, replacing the stored
one, would list only those, the report's other results (still final) left outside it. A mapper
marks such elements here (``meta.extension`` ``partial``); the hub joins them with the stored
version's on a feed's write and takes the mark off before anything is stored.

Pure, standard library only (the hub imports it; it imports nothing of the hub).
"""

from __future__ import annotations

from typing import Any

URL = "https://fhir-region-hub.example/StructureDefinition/partial"

__all__ = ["URL", "mark", "take"]


def mark(resource: dict[str, Any], elements: list[str]) -> None:
    """Say that ``resource``'s ``elements`` (arrays) are a part of what it holds."""
    if not elements:
        return
    meta = dict(resource.get("meta") or {})
    meta["extension"] = [*(meta.get("extension") or ()),
                         {"url": URL, "extension": [{"url": "element", "valueCode": e}
                                                    for e in elements]}]
    resource["meta"] = meta


def take(resource: dict[str, Any]) -> set[str]:
    """The elements ``resource`` says it holds in part, the mark taken off it."""
    meta = resource.get("meta")
    if not isinstance(meta, dict) or not meta.get("extension"):
        return set()
    found: set[str] = set()
    kept = []
    for e in meta["extension"]:
        if isinstance(e, dict) and e.get("url") == URL:
            for x in e.get("extension") or ():
                if isinstance(x, dict) and isinstance(x.get("valueCode"), str):
                    found.add(x["valueCode"])
        else:
            kept.append(e)
    if len(kept) != len(meta["extension"]):
        rest = {k: v for k, v in meta.items() if k != "extension"}
        if kept:
            rest["extension"] = kept
        if rest:
            resource["meta"] = rest
        else:
            resource.pop("meta", None)
    return found
