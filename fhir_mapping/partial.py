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

from fhir_mapping import cleared

URL = "https://fhir-region-hub.example/StructureDefinition/partial"

__all__ = ["URL", "mark", "take", "taken"]


def mark(resource: dict[str, Any], elements: list[str]) -> None:
    """Say that ``resource``'s ``elements`` (arrays) are a part of what it holds."""
    cleared.mark(resource, elements, URL)


def take(resource: dict[str, Any]) -> set[str]:
    """The elements ``resource`` says it holds in part, the mark taken off it."""
    return cleared.take(resource, URL)


def taken(resource: dict[str, Any]) -> tuple[set[str], dict[str, Any]]:
    """The elements ``resource`` says it holds in part, and the resource without the mark (a
    copy when it had one: ``resource`` is left as it was)."""
    return cleared.taken(resource, URL)
