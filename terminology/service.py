"""Reading the terminology read model: code systems, concepts, hierarchies, aliases, value sets.

``TerminologyService`` answers from ``$HUB_DATA_DIR/terminology.sqlite`` (written by
``projections.terminology``) through its own read-only connection per thread, and caches what it
derives (aliases, value-set plans and expansions, descendants) until the model's ``generation``
moves, which one tiny query per call checks. The search engine's token modifiers use:

- ``expand_codes(valueset)`` -> {(system, code)} for ``:in`` / ``:not-in``;
- ``descendants(system, code)`` / ``ancestors(system, code)`` -> {code} for ``:below`` / ``:above``;
- ``canonical_system(uri)`` and ``system_aliases(uri)``: ``urn:oid:…`` and the canonical URL of one
  code system fold to one name (CodeSystem.identifier, NamingSystem.uniqueId).

Unknown code systems and value sets raise ``TerminologyNotFound``; mistakes in a value set
(a cycle of includes, a bad filter) raise ``TerminologyError``.
"""

from __future__ import annotations

from terminology.store import (
    EXPANSION_CACHE,
    HIERARCHY_CACHE,
    CodeSystemRef,
    Concept,
    ResourceRef,
    TerminologyError,
    TerminologyNotFound,
    TerminologyStore,
    split_canonical,
)
from terminology.valueset import expand_stored

__all__ = [
    "EXPANSION_CACHE", "HIERARCHY_CACHE", "CodeSystemRef", "Concept", "ResourceRef", "TerminologyError",
    "TerminologyNotFound", "TerminologyService", "TerminologyStore", "split_canonical",
]


class TerminologyService(TerminologyStore):
    def expand_codes(self, valueset_canonical: str, with_aliases: bool = False
                     ) -> frozenset[tuple[str, str]]:
        """{(system, code)} of a stored value set's expansion (``url`` or ``url|version``); with
        ``with_aliases`` each code also under every other URI of its system (``urn:oid:…``).
        Unknown value set: ``TerminologyNotFound``. Cached like ``descendants``."""
        self.refresh()
        return self.cached_expansion(("codes", valueset_canonical, with_aliases),
                                     lambda: self._expand_codes(valueset_canonical, with_aliases))

    def _expand_codes(self, valueset_canonical: str, with_aliases: bool
                      ) -> frozenset[tuple[str, str]]:
        entries = expand_stored(self, valueset_canonical)
        out = {(e.system, e.code) for e in entries}
        if with_aliases:
            for system in {s for s, _ in out}:
                aliases = self.system_aliases(system) - {system}
                if aliases:
                    codes = [c for s, c in out if s == system]
                    out.update((a, c) for a in aliases for c in codes)
        return frozenset(out)
