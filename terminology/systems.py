"""Which code systems are local (an institution's own codes) and which standard: one rule for the
normalisers (``terminology.normalise``) and the unmapped-codes worklist (``projections.unmapped``).

A *standard* system is never local: the OID arcs of the Chinese national code systems and
identifiers (``2.16.156.10011.1``/``.2``) and of HL7 (``2.16.840.1.113883``), and the URLs of the
international terminologies (LOINC, SNOMED CT, HL7, UCUM, RxNorm, ATC, ISO and IETF URNs). Any
other ``urn:oid:`` system is local, as each institution's code systems are ``urn:oid:<institution
OID>.<n>``; so is a system a caller knows as local (a ConceptMap's source, an institution's
prefix). Another URL is not local by itself: the worklist, which knows no maps, never lists it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

STANDARD_ARCS = ("urn:oid:2.16.156.10011.1.", "urn:oid:2.16.156.10011.2.",
                 "urn:oid:2.16.840.1.113883.")
# a URL is standard when it is one of these or below one (followed by "/")
STANDARD_URLS = ("http://loinc.org", "http://snomed.info", "http://hl7.org",
                 "http://terminology.hl7.org", "http://unitsofmeasure.org",
                 "http://www.nlm.nih.gov/research/umls/rxnorm", "http://www.whocc.no/atc")
STANDARD_URNS = ("urn:iso:", "urn:ietf:")


def is_standard_system(system: str) -> bool:
    if system.startswith("urn:"):
        return system.startswith(STANDARD_ARCS) or system.startswith(STANDARD_URNS)
    return any(system == u or system.startswith(u + "/") for u in STANDARD_URLS)


def is_local_system(system: Any, known: Collection[str] = (), prefixes: tuple[str, ...] = ()
                    ) -> bool:
    """Whether codings of ``system`` are local codes (to map, or to list when unmapped);
    ``known``: systems the caller knows as local (map sources), ``prefixes``: its institutions'."""
    if not isinstance(system, str) or is_standard_system(system):
        return False
    if system.startswith("urn:oid:") and "." in system[8:]:
        return True
    return system in known or (bool(prefixes) and system.startswith(prefixes))
