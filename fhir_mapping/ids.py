"""Deterministic resource ids from the source's own keys.

``stable_id("Patient", "H0001", "MR", "123456")`` is the same on every run and every machine, fits
FHIR's id rules ([A-Za-z0-9-.]{1,64}) and does not reveal the keys (ids appear in URLs and logs,
record numbers must not).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources


def stable_id(*parts: object) -> str:
    """A 32-character hex id over ``parts`` (each part stringified; None as empty)."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


# Shared conventions, so every feed of one institution (HL7 v2, HL7 v3, database views) lands on the
# same resources: a patient is keyed by the institution's record number, a visit by its patient's key
# and its visit number (senders reuse visit numbers across patients: a counter restarting each day,
# "0001" at every clinic; keyed by the number alone, one patient's visit moved to another).
def patient_id(institution: str, record_number: str) -> str:
    return stable_id("Patient", institution, "MR", record_number)


def encounter_id(institution: str, patient_key: str, visit_number: str) -> str:
    """``patient_key``: the key the visit's Patient is keyed by (its record number, as in
    ``patient_id``)."""
    return stable_id("Encounter", institution, "VN", patient_key, visit_number)


@lru_cache(maxsize=None)
def local_suffixes() -> dict[str, str]:
    """register -> suffix of the institution's own identifier systems (``urn:oid:<oid>.<suffix>``),
    the one table every feed assigns them from (``tables/local_suffixes.json``)."""
    data = json.loads(resources.files("fhir_mapping.tables").joinpath("local_suffixes.json").read_text("utf-8"))
    return {str(k): str(v) for k, v in data["registers"].items()}
