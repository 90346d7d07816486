"""Derive the FHIR resource types that fhir.resources R4B models (and which have identifier), into fhir_mapping/tables/.

Run after upgrading fhir.resources:  .venv/bin/python scripts/derive_resource_types.py
"""

import json
import pathlib

from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from fhir.resources.R4B.resource import Resource

names = {}
for attr in dir(fhirtypes):
    if not attr.endswith("Type") or attr.startswith("_"):
        continue
    try:
        cls = get_fhir_model_class(attr[: -len("Type")])
    except (ValueError, AttributeError, TypeError):
        continue
    if isinstance(cls, type) and issubclass(cls, Resource) and cls.__name__ not in (
        "Resource",
        "DomainResource",
    ):
        names[cls.__name__] = {"identifier": "identifier" in cls.model_fields}

out = pathlib.Path(__file__).resolve().parent.parent / "fhir_mapping" / "tables" / "resource_types.json"
out.write_text(json.dumps(dict(sorted(names.items())), indent=0) + "\n")
print(f"{len(names)} resource types -> {out}")
