"""The R4 search parameters of each resource type, from projections/data/search_parameters.json.

The table is derived by scripts/derive_search_params.py from the specification; nothing here reads
../shared. Every type also has the common parameters (``_id``, ``_lastUpdated``, ``_tag``, ``_profile``,
``_security``, ``_source``), their expressions written against the type (``Patient.meta.tag``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

TYPES = ("string", "token", "date", "number", "quantity", "reference", "uri", "composite", "special")


@dataclass(frozen=True, slots=True)
class Component:
    code: str
    type: str
    expression: str  # relative to each node the composite's expression selects


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str
    expression: str | None
    id: str = ""  # the SearchParameter's id: its url is http://hl7.org/fhir/SearchParameter/{id}
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    comparators: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://hl7.org/fhir/SearchParameter/{self.id}"


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(resources.files("projections.data").joinpath("search_parameters.json").read_text())


def _param(code: str, e: dict, rtype: str | None = None) -> SearchParam:
    expression = e.get("expression")
    if rtype and expression and expression.startswith("Resource."):
        expression = rtype + expression[len("Resource"):]
    return SearchParam(
        code=code, type=e["type"], expression=expression, id=e.get("id", ""),
        targets=tuple(e.get("target", ())),
        components=tuple(Component(c["code"], c["type"], c["expression"]) for c in e.get("component", ())),
        comparators=tuple(e.get("comparator", ())), modifiers=tuple(e.get("modifier", ())),
    )


@lru_cache(maxsize=None)
def params_for(rtype: str) -> dict[str, SearchParam]:
    """code -> parameter, for a resource type the hub accepts (KeyError otherwise)."""
    table = _table()
    own = table["types"][rtype]
    out = {code: _param(code, e, rtype) for code, e in table["common"].items()}
    out.update((code, _param(code, e)) for code, e in own.items())
    return out


def param(rtype: str, code: str) -> SearchParam | None:
    return params_for(rtype).get(code)


def resource_types() -> tuple[str, ...]:
    return tuple(_table()["types"])
