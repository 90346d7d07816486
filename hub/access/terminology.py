"""Who may write which terminology: the code systems, naming systems and concept maps the hub
applies to other institutions' records are the region's.

- **The region's writers** (the hub itself, stewards, administrators, a client of no
  institution) write any of them.
- **An institution's client** (a connector) writes only its own institution's: a ConceptMap whose
  every ``group.source`` is one of its local code systems (``urn:oid:<its OID>.…``, or a URL the
  region's aliases tie to one), at a ``url`` no other institution's maps (nor the region's) hold;
  a CodeSystem or NamingSystem whose every name (url, identifier, uniqueId), with what the stored
  aliases already tie to it, is one of its local systems, never another institution's OID nor a
  standard or national system. Its OID is the client registry's (``hub auth client add --oid``);
  a client registered without one writes none of them. Else 403, naming why.
- **Whoever writes**: a CodeSystem or NamingSystem whose names would make two local code systems
  (two institutions' OIDs), or a local one and a standard one, one system is refused, 422
  (``terminology.aliases.joins_apart``; one stored before is not applied).

ValueSets are not judged here: the hub applies none of them to a record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hub.core.access import Actor
from hub.core.errors import FhirError, forbidden
from terminology import rows as R
from terminology.aliases import alias_groups, names_of
from terminology.systems import is_standard_system

JUDGED = frozenset({"CodeSystem", "NamingSystem", "ConceptMap"})
REGION_ROLES = frozenset({"steward", "admin"})


def is_region(actor: Actor) -> bool:
    """Does ``actor`` write for the region rather than for one institution?"""
    return actor.kind == "system" or bool(actor.roles & REGION_ROLES) or not actor.institution


class TerminologyGuard:
    """The checks of a terminology write, against the terminology read model (``service``: a
    ``terminology.service.TerminologyService``; ``sync`` brings it up to the log's end)."""

    def __init__(self, service: Any, sync: Callable[[], Any] | None = None):
        """``service`` None: no read model to judge against (the Kafka worker, a dead-letter
        replay): an institution's terminology write is refused whole, the region's passes."""
        self.service = service
        self.sync = sync

    def check(self, actor: Actor, rtype: str, rid: str | None, d: dict) -> None:
        """Raise the refusal of writing ``d`` as ``rtype``/``rid`` by ``actor`` (403, 422)."""
        if rtype not in JUDGED:
            return
        if self.service is None:
            if not is_region(actor):
                raise forbidden(f"A {rtype} sent through a feed is not stored: an institution's "
                                "terminology is written over the FHIR API, where the hub checks "
                                "that it is the institution's own")
            return
        if self.sync is not None:
            self.sync()
        groups: dict[str, frozenset[str]] = {}
        canonical: dict[str, str] = {}
        names = [(R.oid_uri(a), k) for a, k in names_of(d)]
        apart: str | None = None
        if rtype != "ConceptMap":
            stored = self.service.named(f"{rtype}/{rid}" if rid else None)
            refused: dict[int, str] = {}
            canonical, groups = alias_groups([*stored, names], refused)
            apart = refused.get(len(stored))
        if not is_region(actor):
            self._own(actor, rtype, d, names, canonical, groups)
        if apart is not None:
            raise FhirError(422, "business-rule", f"{rtype} not stored: {apart} (the systems "
                            "of two institutions, or one's and a standard, would share each "
                            "other's codes)")

    def _own(self, actor: Actor, rtype: str, d: dict, names: list[tuple[str, str]],
             canonical: dict[str, str], groups: dict[str, frozenset[str]]) -> None:
        """An institution's client writes only its own institution's terminology."""
        if not actor.oid:
            raise forbidden(f"A {rtype} is written by the region (a steward or an "
                            f"administrator) or by the institution whose code systems it is "
                            f"about; no OID is registered for institution {actor.institution} "
                            "(hub auth client add --oid), so it owns no code system")
        arc = f"urn:oid:{actor.oid}."
        if rtype == "ConceptMap":
            self._concept_map(actor, arc, d)
            return
        for name, _ in names:
            group = groups.get(canonical.get(name, name), frozenset((name,)))
            why = _not_own(group, arc)
            if why:
                raise forbidden(f"Institution {actor.institution} writes code system names "
                                f"only of its own local code systems (urn:oid:{actor.oid}.…): "
                                f"{name} {why}")

    def _concept_map(self, actor: Actor, arc: str, d: dict) -> None:
        groups = [g for g in R.as_list(d.get("group")) if isinstance(g, dict)]
        for g in groups or [{}]:
            source = R.text(g.get("source"))
            if source is None:
                raise forbidden(f"Institution {actor.institution} writes ConceptMaps only of "
                                "its own code systems: every group must name its source")
            source = R.oid_uri(source)
            why = _not_own(self.service.system_aliases(source), arc)
            if why:
                raise forbidden(f"Institution {actor.institution} maps only its own local "
                                f"codes (urn:oid:{arc[8:]}…), its maps applied to its records "
                                f"only: group.source {source} {why}")
        url = R.text(d.get("url"))
        if url is not None:
            others = self.service.map_owners(url) - {actor.institution}
            if others:
                held = ", ".join(sorted("the region" if o is None else f"institution {o}"
                                        for o in others))
                raise forbidden(f"ConceptMap url {url} is held by {held}: another institution "
                                "writes no version of it (name a url of its own)")


def _not_own(group: frozenset[str] | set[str], arc: str) -> str | None:
    """Why a code system known under the URIs ``group`` is not one of the arc ``arc``'s local
    systems (None: it is)."""
    if any(is_standard_system(a) for a in group):
        return "is (or is one with) a standard code system"
    oids = [a for a in group if a.startswith("urn:oid:")]
    foreign = [a for a in oids if not a.startswith(arc)]
    if foreign:
        return f"is (or is one with) {foreign[0]}, not a system of its own OID"
    if not oids:
        return "is tied to no OID of its own (name it urn:oid:<OID>.… or tie its URL to one)"
    return None
