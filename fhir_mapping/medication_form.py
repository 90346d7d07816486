"""A drug's administration unit (CDA and HL7 v3 ``administrationUnitCode``): the unit one dose is
counted in (片 tablet, 粒 capsule, puff), never ``Dosage.method`` (how a drug is given). C-CDA on
FHIR maps it to ``Medication.form``; the MedicationRequest carries it in the extension below, its
drug staying ``medicationCodeableConcept`` (where code search, the console and the ConceptMaps read
it; a Medication would move the code behind a reference). A dose without a unit of its own is
counted in it."""

from __future__ import annotations

from typing import Any

FORM_EXTENSION = "https://fhir-region-hub.example/StructureDefinition/medication-form"


def form_extension(form: dict[str, Any]) -> dict[str, Any]:
    return {"url": FORM_EXTENSION, "valueCodeableConcept": form}


def counted_in(q: dict[str, Any] | None, unit: dict[str, Any]) -> dict[str, Any] | None:
    """A dose without a unit of its own, counted in the drug's administration unit (its coded
    unit when it has a system and code, else its name only)."""
    if not q or q.get("unit") or q.get("code"):
        return q
    cd = next((c for c in unit.get("coding") or () if c.get("system") and c.get("code")), None)
    name = (cd or {}).get("display") or unit.get("text") or (cd or {}).get("code")
    out = dict(q)
    if name:
        out["unit"] = name
    if cd is not None:
        out["system"], out["code"] = cd["system"], cd["code"]
    return out
