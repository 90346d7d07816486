"""The FHIR R4B resource types and the JSON type of each of their elements (the element table).

Derived from the fhir.resources models by ``scripts/derive_resource_types.py`` and
``scripts/derive_element_types.py`` into ``fhir_mapping/tables/``. Both layers read them: the
tabular loader checks a mapping file's paths and resource types against them, and the hub's core
(``hub.core.jsontypes``, ``hub.core.resource``) checks what it stores. They live here, below both:
standard library only, importing nothing of the hub nor of the other mappers (a leaf module).
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["TYPES", "TYPE_FACTS", "RESOURCE_TYPES", "URI_ELEMENTS", "BASE64_ELEMENTS"]

_TABLES = resources.files("fhir_mapping.tables")

# type name -> {element: [kind, repeats, codes?]}; kind is b(oolean), i(nteger), d(ecimal),
# s(tring-like), or the name of a complex type / backbone element / "Resource".
TYPES: dict[str, dict[str, list]] = json.loads(_TABLES.joinpath("element_types.json").read_text("utf-8"))

# type name -> its elements of FHIR type uri, url, oid or uuid (where a transaction's fullUrls
# are replaced, besides references)
URI_ELEMENTS: dict[str, list[str]] = json.loads(
    _TABLES.joinpath("uri_elements.json").read_text("utf-8"))

# type name -> its elements of FHIR type base64Binary (their text checked as base64: the models
# decode it leniently)
BASE64_ELEMENTS: dict[str, list[str]] = json.loads(
    _TABLES.joinpath("base64_elements.json").read_text("utf-8"))

# resource type -> facts about it ({"identifier": whether it has one})
TYPE_FACTS: dict[str, dict] = json.loads(_TABLES.joinpath("resource_types.json").read_text("utf-8"))
RESOURCE_TYPES: frozenset[str] = frozenset(TYPE_FACTS)
