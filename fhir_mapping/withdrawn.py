"""A clinical resource its source withdrew, as R4 marks it: ``entered-in-error``.

``withdrawn(resource)`` is the resource with the status R4 gives an instance that should not have
been part of the patient's record (``tables/withdrawn.yaml``: which element, and what R4 forbids
beside it), or None for a kind a source does not withdraw this way. Pure, no I/O after import.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

__all__ = ["withdrawn", "is_withdrawn", "KINDS"]


@lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, Any]]:
    text = resources.files("fhir_mapping").joinpath("tables/withdrawn.yaml").read_text("utf-8")
    return yaml.safe_load(text)


KINDS = frozenset(_table())


def withdrawn(resource: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``resource`` marked entered-in-error (its ``meta`` left to the caller), or None
    when its kind is not one a source withdraws."""
    rule = _table().get(resource.get("resourceType", ""))
    if rule is None:
        return None
    out = copy.deepcopy(resource)
    for name in rule.get("clear") or ():
        out.pop(name, None)
    out.update(copy.deepcopy(rule.get("set") or {}))
    return out


def is_withdrawn(resource: dict[str, Any]) -> bool:
    """Whether ``resource`` already carries the withdrawn status of its kind."""
    rule = _table().get(resource.get("resourceType", ""))
    return rule is not None and all(resource.get(k) == v for k, v in (rule.get("set") or {}).items())
