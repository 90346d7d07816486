"""Seeded, deterministic synthetic region for demos, tests and benchmarks.

``Region(seed, people)`` has institutions (tertiary hospitals, township health centres, village clinics,
each with its own OID under ``2.16.156.10011.99.1``) and people with Chinese names, valid resident ID
numbers, phones and GB/T 2260 addresses. Every institution a person visits registers them under its own
record number, with the identity noise real feeds carry (homophones and typos in names, day and month
swapped, missing, placeholder, mistyped or 15-digit ID numbers, newborns under a parent's ID and name,
family phones). Visits produce Encounters, Conditions, Observations, MedicationRequests and Procedures as
FHIR R4 JSON dicts; ``iter_truth()`` says who every Patient really is. Everything is streamed.
``hub.synth.units.iter_units(region)`` gives what the institutions send for those visits (HL7 v2 messages,
WS/T 500 CDA documents, with the defects real feeds carry) and, per unit, the true person and its facts.

    region = Region(seed=42, people=1000)
    for resource in region.iter_resources(): ...
    write_ndjson("var/synth", seed=42, people=1000)   # or: hub generate var/synth --people 1000
"""

from .export import write_ndjson
from .people import REFERENCE_DATE, Person
from .region import NOISE_KINDS, Institution, Region, TruthRow, institution_counts

__all__ = [
    "Region", "Institution", "TruthRow", "Person", "NOISE_KINDS", "REFERENCE_DATE", "institution_counts", "write_ndjson",
]
