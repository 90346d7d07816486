"""Which URIs name one code system: one rule for the hub's read model (``TerminologyStore``) and
a connector's normaliser (``connectors.terminology``).

A code system is known under its canonical URL and its ``urn:oid:`` (and sometimes more URIs).
What says so: the well-known pairs of the international terminologies below (known without any
stored resource, as FHIR's "Using Codes" lists them), a CodeSystem's ``url`` with the OIDs of its
``identifier``s, and the ``uniqueId``s of one NamingSystem. URIs named together are one group
(a union over every resource); its canonical name is the best ranked: a CodeSystem's url, then a
NamingSystem's preferred id, another id, a CodeSystem identifier, then the well-known names; a
URL before an OID of the same rank.

What no resource may join (``joins_apart``): two different local OIDs (``urn:oid:`` outside the
standard arcs: an institution's own code systems, ``terminology.systems``) in one group, or a
local OID with a standard system (LOINC, a national or HL7 OID). Such a group would hand one
hospital's codes the meaning of another's, or a standard's: whoever wrote it, a resource whose
names would make one is left out of the groups (``alias_groups`` reports it; the hub refuses to
store it, ``hub.access.terminology``), the rest applied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from terminology import rows as R
from terminology.systems import is_local_system, is_standard_system

log = logging.getLogger("terminology.aliases")

# (canonical URL, OID) of the code systems every sender may write either way
WELL_KNOWN: tuple[tuple[str, str], ...] = (
    ("http://snomed.info/sct", "urn:oid:2.16.840.1.113883.6.96"),
    ("http://loinc.org", "urn:oid:2.16.840.1.113883.6.1"),
    ("http://unitsofmeasure.org", "urn:oid:2.16.840.1.113883.6.8"),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "urn:oid:2.16.840.1.113883.6.88"),
    ("http://hl7.org/fhir/sid/icd-10", "urn:oid:2.16.840.1.113883.6.3"),
    ("http://hl7.org/fhir/sid/icd-10-cm", "urn:oid:2.16.840.1.113883.6.90"),
    ("http://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73"),
    ("http://hl7.org/fhir/sid/ndc", "urn:oid:2.16.840.1.113883.6.69"),
    ("http://hl7.org/fhir/sid/cvx", "urn:oid:2.16.840.1.113883.12.292"),
)
# how good a name is as the canonical one (lower is better; an OID ranks one worse)
RANK = {"url": 0, "preferred": 2, "other": 3, "identifier": 4, "well-known": 6}


def names_of(d: Any) -> list[tuple[str, str]]:
    """(uri, kind) of every name a CodeSystem, NamingSystem or ValueSet resource declares."""
    if not isinstance(d, dict):
        return []
    rtype, url = d.get("resourceType"), R.text(d.get("url"))
    if rtype == "CodeSystem":
        return ([(url, "url")] if url else []) + [(a, "identifier")
                                                  for a in R.identifiers_as_uris(d)]
    if rtype == "NamingSystem":
        return [(a, "preferred" if preferred else "other") for a, preferred in R.naming_aliases(d)]
    if rtype == "ValueSet":
        return [(a, "valueset") for a in R.identifiers_as_uris(d) if a != url]
    return []


def joins_apart(group: Iterable[str]) -> str | None:
    """Why these URIs may not be one code system (None: they may): two local OIDs, or a local
    OID with a standard system."""
    local = sorted({a for a in group if a.startswith("urn:oid:") and is_local_system(a)})
    if len(local) > 1:
        return (f"it would make {local[0]} and {local[1]} one code system: two local code "
                "systems (institutions' own OIDs) are never one")
    standard = sorted(a for a in group if is_standard_system(a))
    if local and standard:
        return (f"it would make the local code system {local[0]} one with the standard "
                f"{standard[0]}")
    return None


def alias_groups(named: Iterable[Sequence[tuple[str, str]]],
                 refused: dict[int, str] | None = None
                 ) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """(canonical name of every URI, every URI of each canonical name) from the (uri, kind)
    lists of the resources, the well-known pairs added; value-set names are left out. A
    resource whose names would join apart what ``joins_apart`` keeps apart (with what the
    resources before it joined) is left out: ``refused`` gets its index (in ``named``) and why."""
    group_of: dict[str, int] = {}  # uri -> group number
    groups_: dict[int, set[str]] = {}
    rank: dict[str, int] = {}
    well_known = [[(url, "well-known"), (oid, "well-known")] for url, oid in WELL_KNOWN]
    for i, names in enumerate((*well_known, *named)):
        names = [(a, k) for a, k in names if k in RANK and isinstance(a, str) and a]
        if not names:
            continue
        touched = {group_of[a] for a, _ in names if a in group_of}
        merged = {a for a, _ in names}.union(*(groups_[g] for g in touched))
        why = joins_apart(merged)
        if why is not None:
            if refused is not None and i >= len(well_known):
                refused[i - len(well_known)] = why
            continue
        number = min(touched) if touched else i  # a new group: numbered by its first resource
        for g in touched - {number}:
            del groups_[g]
        groups_[number] = merged
        for a in merged:
            group_of[a] = number
        for alias, kind in names:
            score = RANK[kind] + alias.startswith("urn:oid:")
            rank[alias] = min(rank.get(alias, 9), score)
    canonical: dict[str, str] = {}
    groups: dict[str, frozenset[str]] = {}
    for group in groups_.values():
        best = min(group, key=lambda a: (rank.get(a, 9), a))
        groups[best] = frozenset(group)
        for a in group:
            canonical[a] = best
    return canonical, groups


class SystemAliases:
    """The code systems' names from resources (dicts) and the well-known pairs; an instance is
    the ``aliases`` callable ``terminology.normalise.Normaliser.from_concept_maps`` takes."""

    def __init__(self, resources: Iterable[Any] = ()):
        resources = list(resources)
        refused: dict[int, str] = {}
        self._canonical, self._groups = alias_groups((names_of(d) for d in resources), refused)
        for i, why in refused.items():  # a steward's mistake never merges two hospitals' codes
            d = resources[i]
            log.warning("%s/%s not applied as code system aliases: %s", d.get("resourceType"),
                        d.get("id") or d.get("url") or "?", why)

    def canonical_system(self, system_uri: str) -> str:
        uri = R.oid_uri(system_uri.strip())
        return self._canonical.get(uri, uri)

    def __call__(self, system_uri: str) -> frozenset[str]:
        """Every URI of the code system (the canonical one included)."""
        canonical = self.canonical_system(system_uri)
        return self._groups.get(canonical, frozenset((canonical,)))
