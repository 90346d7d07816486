"""ConceptMaps read from a file, as the connectors and ``hub terminology renormalise`` take them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson


def read_concept_maps(path: str | Path) -> list[dict]:
    """The ConceptMaps of a file: one resource, a Bundle, a JSON array, or NDJSON."""
    raw = Path(path).read_bytes()
    try:
        docs = [orjson.loads(raw)]
    except orjson.JSONDecodeError:
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(orjson.loads(line))
                except orjson.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n} is not JSON: {e}") from None
    return list(concept_maps_in(docs))


def concept_maps_in(docs: Iterable[Any]) -> Iterable[dict]:
    """The ConceptMaps among parsed JSON documents: resources, Bundles, arrays of either."""
    for d in docs:
        if isinstance(d, list):
            yield from concept_maps_in(d)
        elif isinstance(d, dict) and d.get("resourceType") == "Bundle":
            yield from concept_maps_in(e.get("resource") for e in d.get("entry") or ()
                                     if isinstance(e, dict))
        elif isinstance(d, dict) and d.get("resourceType") == "ConceptMap":
            yield d
