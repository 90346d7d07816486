"""Which URIs name one code system: one rule for the hub's read model (``TerminologyStore``) and
a connector's normaliser (``connectors.terminology``).

A code system is known under its canonical URL and its ``urn:oid:`` (and sometimes more URIs).
What says so: the well-known pairs of the international terminologies below (known without any
stored resource, as FHIR's "Using Codes" lists them), a CodeSystem's ``url`` with the OIDs of its
``identifier``s, and the ``uniqueId``s of one NamingSystem. URIs named together are one group
(a union over every resource); its canonical name is the best ranked: a CodeSystem's url, then a
NamingSystem's preferred id, another id, a CodeSystem identifier, then the well-known names; a
URL before an OID of the same rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from terminology import rows as R

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


def alias_groups(named: Iterable[Sequence[tuple[str, str]]]
                 ) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """(canonical name of every URI, every URI of each canonical name) from the (uri, kind)
    lists of the resources, the well-known pairs added; value-set names are left out."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    rank: dict[str, int] = {}
    well_known = [[(url, "well-known"), (oid, "well-known")] for url, oid in WELL_KNOWN]
    for names in (*well_known, *named):
        names = [(a, k) for a, k in names if k in RANK and isinstance(a, str) and a]
        if not names:
            continue
        first = find(names[0][0])
        for alias, kind in names:
            parent[find(alias)] = find(first)
            score = RANK[kind] + alias.startswith("urn:oid:")
            rank[alias] = min(rank.get(alias, 9), score)
    members: dict[str, list[str]] = {}
    for alias in parent:
        members.setdefault(find(alias), []).append(alias)
    canonical: dict[str, str] = {}
    groups: dict[str, frozenset[str]] = {}
    for group in members.values():
        best = min(group, key=lambda a: (rank.get(a, 9), a))
        groups[best] = frozenset(group)
        for a in group:
            canonical[a] = best
    return canonical, groups


class SystemAliases:
    """The code systems' names from resources (dicts) and the well-known pairs; an instance is
    the ``aliases`` callable ``terminology.normalise.Normaliser.from_concept_maps`` takes."""

    def __init__(self, resources: Iterable[Any] = ()):
        self._canonical, self._groups = alias_groups(names_of(d) for d in resources)

    def canonical_system(self, system_uri: str) -> str:
        uri = R.oid_uri(system_uri.strip())
        return self._canonical.get(uri, uri)

    def __call__(self, system_uri: str) -> frozenset[str]:
        """Every URI of the code system (the canonical one included)."""
        canonical = self.canonical_system(system_uri)
        return self._groups.get(canonical, frozenset((canonical,)))
