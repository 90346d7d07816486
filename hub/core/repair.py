"""Lenient intake: the two habitual defects of hospital FHIR JSON, repaired deterministically.

HAPI and Microsoft's server accept them; the hub repairs them only for callers whose policy says
``repair`` (``hub.api.intake``) and says what it did:

- ``intake-datetime-zone``: a dateTime or instant with a time but no zone
  (``2024-03-01T10:20:00``) gets the platform's zone (``HUB_TIMEZONE``, default ``+08:00``);
- ``intake-singleton-array``: a single value where R4 has an array (``"name": {...}``) is wrapped.

The repair is driven by the validation errors of the resource's model: only when every error of a
round is one of these two is anything changed, and the result is validated again, so a resource
with any other defect is refused as it was. Nothing else is repaired. Each repair is an ``Issue``
(severity warning, ``expression`` the element) that the response carries and the data-quality
projection counts per institution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic

from hub.core import jsontext
from hub.core.errors import Issue
from hub.core.resource import loc_path, model_class

RULE_SYSTEM = "https://fhir-region-hub.example/CodeSystem/quality-rule"
ZONELESS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$")
_TIME_ERRORS = ("DateTime value string does not match", "Instant value string does not match")
ROUNDS = 4  # a wrapped array can reveal defects inside it: validated again, a few times at most


@dataclass(frozen=True, slots=True)
class Repair(Issue):
    """A repair made: an Issue with the rule it counts under."""

    rule: str = ""

    def to_json(self) -> dict:
        out = Issue.to_json(self)  # (a slotted dataclass: no bare super())
        out["details"] = {"coding": [{"system": RULE_SYSTEM, "code": self.rule}]}
        return out


def _locate(d: Any, loc: tuple) -> tuple[Any, Any] | None:
    """(container, key) of the value at ``loc``, or None where the path leaves the JSON."""
    node: Any = d
    parent: Any = None
    key: Any = None
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            parent, key, node = node, part, node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            parent, key, node = node, part, node[part]
        else:
            return None
    return (parent, key) if parent is not None else None


def repair(rtype: str, d: dict, timezone: str) -> tuple[dict, list[Issue]] | None:
    """The repaired copy of ``d`` and what was repaired; None when the resource has a defect
    these repairs do not cover (or none at all)."""
    fixed = jsontext.copy_json(d)  # decimals kept as written stay so
    made: list[Issue] = []
    model = model_class(rtype)
    for _ in range(ROUNDS):
        try:  # as the JSON text: what resource.validate validates
            model.model_validate_json(orjson.dumps(fixed))
            return (fixed, made) if made else None
        except pydantic.ValidationError as e:
            errors = e.errors()
        except Exception:  # noqa: BLE001 - the models' own validators: not ours to repair
            return None
        round_made: list[Issue] = []
        for err in errors:
            found = _locate(fixed, tuple(err["loc"]))
            if found is None:
                return None
            container, key = found
            value = container[key]
            where = loc_path(rtype, tuple(err["loc"]))
            if err["type"] == "list_type" and not isinstance(value, list) and value is not None:
                container[key] = [value]
                round_made.append(Repair("value", "A single value where R4 has an array: "
                                                  "wrapped in one", "warning", where,
                                         rule="intake-singleton-array"))
            elif any(m in str(err.get("msg", "")) for m in _TIME_ERRORS) and \
                    isinstance(value, str) and ZONELESS.match(value):
                container[key] = value + timezone
                round_made.append(Repair("value", f"A time without a zone: {timezone} added "
                                                  "(the platform's zone)", "warning", where,
                                         rule="intake-datetime-zone"))
            else:
                return None
        made += round_made
    return None
