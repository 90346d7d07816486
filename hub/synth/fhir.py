"""Small builders of FHIR R4 JSON (plain dicts) for the synthetic region.

Every call builds fresh dicts (nothing nested is shared between resources), so callers may mutate what they
get. Times are naive local datetimes written with the +08:00 offset.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
HEALTH_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.19"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD9CM3 = "urn:oid:2.16.156.10011.2.3.3.12"  # ICD-9-CM-3 procedures, national code system OID
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"

_ID_TYPES = {
    "MR": "Medical record number",
    "NI": "National unique individual identifier",
    "HC": "Health Card Number",
    "VN": "Visit number",
    "XX": "Organization identifier",
}
CLASS_DISPLAY = {"AMB": "ambulatory", "IMP": "inpatient encounter", "EMER": "emergency"}
_INTERPRETATION_DISPLAY = {"L": "Low", "N": "Normal", "H": "High"}
# Readable forms of UCUM codes for Quantity.unit.
_UNIT_TEXT = {"10*9/L": "10^9/L", "m[IU]/L": "mIU/L", "[iU]": "IU", "Cel": "°C", "mm[Hg]": "mmHg"}


def ts(t: dt.datetime) -> str:
    """``2024-03-05T09:30:00+08:00`` for a naive local datetime (no microseconds)."""
    return t.isoformat() + "+08:00"


def ref(resource_type: str, rid: str) -> dict:
    return {"reference": f"{resource_type}/{rid}"}


def identifier(type_code: str, system: str, value: str, use: str | None = None) -> dict:
    d: dict[str, Any] = {"use": use} if use else {}
    d["type"] = coded(V2_0203, type_code, _ID_TYPES[type_code])
    d["system"] = system
    d["value"] = value
    return d


def coded(system: str, code: str, display: str | None = None) -> dict:
    """A CodeableConcept with one coding and no text."""
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def concept(system: str, code: str, display: str, text: str | None = None) -> dict:
    """A CodeableConcept with one coding and a text (the display unless given)."""
    return {"coding": [{"system": system, "code": code, "display": display}], "text": text or display}


def unit_text(ucum: str) -> str:
    """A readable form of a UCUM unit code (``mm[Hg]`` -> ``mmHg``)."""
    return _UNIT_TEXT.get(ucum, ucum)


def quantity(value: float, ucum: str) -> dict:
    return {"value": value, "unit": unit_text(ucum), "system": UCUM, "code": ucum}


def observation(
    oid: str, category: str, code: str, display: str, text: str, subject: dict, encounter: dict, when: str
) -> dict:
    """An Observation without a value: add ``valueQuantity`` or ``component``."""
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [coded(OBS_CATEGORY, category)],
        "code": concept(LOINC, code, display, text),
        "subject": subject,
        "encounter": encounter,
        "effectiveDateTime": when,
    }


def interpretation(flag: str) -> list[dict]:
    return [coded(INTERPRETATION, flag, _INTERPRETATION_DISPLAY[flag])]
