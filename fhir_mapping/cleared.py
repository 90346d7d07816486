"""What a message says it clears, for the hub to tell from what it does not mention.

A feed's message holds what the sender chose to send. An HL7 v2 ORU's PID may carry the record
number alone; a resource written from it, replacing the stored one, would erase the resident ID,
birth date and sex an ADT gave before. So the hub keeps, on a feed's write of a Patient, what
the stored version has and the write does not mention (``hub.core.ingest``), except what the
message clears: HL7 v2's explicit null ``""`` (v2.5 2.5.3: delete the value in the receiver).
A mapper marks those elements here (``meta.extension`` ``cleared``); the hub takes the mark off
before anything is stored. ``fhir_mapping.partial`` marks elements the same way, under its own URL.

Pure, standard library only (the hub imports it; it imports nothing of the hub).
"""

from __future__ import annotations

from typing import Any

URL = "https://fhir-region-hub.example/StructureDefinition/cleared"

__all__ = ["URL", "mark", "take", "taken"]


def mark(resource: dict[str, Any], elements: list[str], url: str = URL) -> None:
    """Say that the message clears ``elements`` of ``resource`` (its own ``meta``, a copy);
    ``url``: another mark of elements kept the same way."""
    if not elements:
        return
    meta = dict(resource.get("meta") or {})
    meta["extension"] = [*(meta.get("extension") or ()),
                         {"url": url, "extension": [{"url": "element", "valueCode": e}
                                                    for e in elements]}]
    resource["meta"] = meta


def take(resource: dict[str, Any], url: str = URL) -> set[str]:
    """The elements ``resource`` says its message clears (or marks under ``url``), the mark
    taken off it."""
    meta = resource.get("meta")
    if not isinstance(meta, dict) or not meta.get("extension"):
        return set()
    found: set[str] = set()
    kept = []
    for e in meta["extension"]:
        if isinstance(e, dict) and e.get("url") == url:
            for x in e.get("extension") or ():
                if isinstance(x, dict) and isinstance(x.get("valueCode"), str):
                    found.add(x["valueCode"])
        else:
            kept.append(e)
    if len(kept) != len(meta["extension"]):
        meta = {k: v for k, v in meta.items() if k != "extension"}
        if kept:
            meta["extension"] = kept
        if meta:
            resource["meta"] = meta
        else:
            resource.pop("meta", None)
    return found


def taken(resource: dict[str, Any], url: str = URL) -> tuple[set[str], dict[str, Any]]:
    """The elements ``resource`` says its message clears (or marks under ``url``), and the
    resource without the mark: ``resource`` itself when it carries none, else a shallow copy.
    ``resource`` is left as it was (a write planned again reads its marks again)."""
    meta = resource.get("meta")
    exts = meta.get("extension") if isinstance(meta, dict) else None
    for e in exts if isinstance(exts, list) else ():
        if isinstance(e, dict) and e.get("url") == url:
            out = dict(resource)
            return take(out, url), out
    return set(), resource
