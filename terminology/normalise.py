"""Local codes to standard codes on the way in: ConceptMaps applied to resource dicts.

Pure: no I/O, no clock. ``Normaliser.from_concept_maps(maps)`` reads FHIR R4 ConceptMap resources
(dicts) into a lookup ``(source system, code) -> target codings``:

- each ``group`` maps ``group.source`` to ``group.target`` (an element's target without a
  system of its own takes the group's); ``group.sourceVersion`` restricts the group to codings of
  that version (a coding without a version matches any); ``group.targetVersion`` becomes the added
  coding's ``version``;
- only a target that means the same as the source or less (``APPLIED``: ``equivalent``,
  ``equal``, ``wider``, ``subsumes``; R5 ``equivalent``, ``source-is-narrower-than-target``) is
  inserted. A more specific target (``narrower``, ``specializes``) would state what the sender
  never did, and ``inexact`` or ``relatedto`` may not mean it at all: such targets (kept for
  ``$translate``) leave the code unmapped, on the worklist for a person to review, as do
  ``unmatched`` and ``disjoint``; a target with ``dependsOn`` is skipped (its condition cannot be
  checked from one coding); maps with ``status: retired`` are ignored;
- a malformed map, group or element is skipped, never fatal (``skipped`` counts them).

``normalise(resource)`` walks the resource's CodeableConcepts (the paths of each resource type
are compiled once from the R4B element table, ``hub.core.jsontypes.TYPES``) and, for a coding of a
*local* system that has a mapping, inserts each standard coding right after it, marked
``userSelected: false``. The local coding is never changed or removed; a target already present in
the CodeableConcept is not added again, so normalising twice adds nothing the second time (codings
marked ``userSelected: false`` are not mapped again: no chains). It returns the local codings that
stay without a standard one (``Unmapped``): a coding of a local system with no mapping in a
CodeableConcept that holds no coding of a standard (not local) system, given or just added.

A coding is mapped when its system is a map's ``group.source`` or local. Which system is *local*
(its unmapped codes reported) is ``terminology.systems.is_local_system``'s rule, the worklist's:
never a standard one (a LOINC code without a LOINC→SNOMED mapping is no unmapped local code, nor a
WS 363 data element), any other ``urn:oid:``, and a URL a map has as ``group.source`` or that
starts with one of ``local_prefixes``. With ``aliases`` (``TerminologyService.system_aliases``) a map
from a code system's canonical URL also maps its codings under its ``urn:oid:`` (and back), as
``$translate`` does. Of the versions of one map (``url``) only the current one is applied
(``terminology.rows.latest_per_url``, as ``$translate``); a target without ``equivalence`` (nor
R5 ``relationship``) is skipped with a warning: R4 requires it, so it says nothing about meaning.

``default_systems`` (``{"Observation.code": "urn:oid:….7"}``) gives codings *without* a system at
those paths the institution's local system: the HL7 v2 mapper leaves a CWE whose coding system is
local (``L``, ``99…``) without one. A ``99…`` one carries its name (``fhir_mapping.local_codes``)
and gets only ``named_systems[name]`` (``{"99LIS": "urn:oid:….7"}``), else a system derived from
the path's default and the name: two local systems of one CWE never become one.

``apply(conversion)`` normalises every resource of a ``fhir_mapping.base.Conversion`` and adds one
``Finding`` (warning, rule ``terminology.unmapped-local-code``) per unmapped local code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson

from fhir_mapping.base import Conversion, Finding
from fhir_mapping.local_codes import local_name, named_local_system
from terminology.rows import latest_per_url
from terminology.systems import is_local_system

log = logging.getLogger("terminology.normalise")

RULE_UNMAPPED = "terminology.unmapped-local-code"
# the equivalences (R4) and relationships (R5) whose target is inserted: it means the same as
# the source, or less (a wider concept); never one more specific, inexact or merely related
APPLIED = frozenset({"equivalent", "equal", "wider", "subsumes", "source-is-narrower-than-target"})
MAX_TEXT = 256  # of a code or display quoted in a finding
# element types whose CodeableConcepts are not local clinical codes (or not reachable by a dict
# walk): identifiers' types, references, narrative, metadata, extensions, contained resources
_SKIP_TYPES = frozenset({"Identifier", "Reference", "Meta", "Narrative", "Extension", "Resource",
                         "Coding", "Quantity", "Period", "Range", "Ratio", "SampledData",
                         "Attachment", "HumanName", "Address", "ContactPoint", "Duration",
                         "Money", "Annotation", "Signature"})
_MAX_DEPTH = 6
# the resource types whose codes are institutions' local lab tests, drugs, departments, diagnoses,
# procedures (``types=None`` walks every type)
CLINICAL_TYPES = frozenset({
    "Observation", "DiagnosticReport", "MedicationRequest", "MedicationStatement",
    "MedicationAdministration", "MedicationDispense", "Medication", "Procedure", "Condition",
    "Encounter", "ServiceRequest", "Specimen", "Immunization", "AllergyIntolerance",
    # fee items (WS/T 500 病案首页, HL7 v2 FT1) and diet and supply orders carry local codes as well
    "ChargeItem", "NutritionOrder", "SupplyRequest"})


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A local coding left without a standard one."""

    system: str
    code: str
    display: str | None
    resource_type: str
    path: str  # FHIRPath-like: "Observation.code.coding[0]"
    resource_id: str | None = None


# -- the element table, compiled per type ----------------------------------------------------------

_TYPES: dict[str, dict[str, list]] | None = None


def _types() -> dict[str, dict[str, list]]:
    global _TYPES
    if _TYPES is None:
        from hub.core.jsontypes import TYPES

        _TYPES = TYPES
    return _TYPES


# A plan: element name -> (is a CodeableConcept, repeats, sub-plan or None, default system or None)
Plan = dict[str, tuple[bool, bool, "Plan | None", "str | None"]]
_PLANS: dict[tuple, Plan] = {}  # (type, default systems) -> plan, shared by all normalisers


def _compile(tname: str, path: str, depth: int, defaults: Mapping[str, str],
             seen: tuple[str, ...]) -> Plan:
    plan: Plan = {}
    fields = _types().get(tname) or {}
    for name, spec in fields.items():
        kind, repeats = spec[0], bool(spec[1])
        where = f"{path}.{name}"
        if kind == "CodeableConcept":
            plan[name] = (True, repeats, None, defaults.get(where))
        elif (len(kind) > 1 and kind not in _SKIP_TYPES and kind in _types()
              and depth < _MAX_DEPTH and kind not in seen):
            sub = _compile(kind, where, depth + 1, defaults, (*seen, kind))
            if sub:
                plan[name] = (False, repeats, sub, None)
    return plan


# -- the normaliser --------------------------------------------------------------------------------


class Normaliser:
    """An in-memory lookup built from ConceptMaps; safe to share between threads once built."""

    def __init__(self, mappings: dict[str, dict[str, list[tuple[str | None, dict]]]] | None = None,
                 *, local_prefixes: Iterable[str] = (), default_systems: Mapping[str, str] | None = None,
                 named_systems: Mapping[str, str] | None = None,
                 types: Iterable[str] | None = CLINICAL_TYPES, skipped: int = 0, maps: int = 0,
                 size: int | None = None):
        self._map = mappings or {}
        self.mapped_systems = frozenset(self._map)
        # mapped codes, each once (not once per alias of its system)
        self.size = sum(len(codes) for codes in self._map.values()) if size is None else size
        self._known = frozenset(self._map)  # local unless standard (systems.is_local_system)
        self.local_prefixes = tuple(p for p in local_prefixes if isinstance(p, str) and p)
        self.default_systems = dict(default_systems or {})
        # a sender's named local coding systems (HL7 v2 99zzz) -> the system configured for each
        self.named_systems = dict(named_systems or {})
        self.types = None if types is None else frozenset(types)
        self.skipped = skipped
        self.maps = maps
        self._plans: dict[str, Plan] = {}
        self._local_cache: dict[str, bool] = {}

    @classmethod
    def from_concept_maps(cls, concept_maps: Iterable[Any], *, local_prefixes: Iterable[str] = (),
                          default_systems: Mapping[str, str] | None = None,
                          named_systems: Mapping[str, str] | None = None,
                          types: Iterable[str] | None = CLINICAL_TYPES,
                          aliases: Callable[[str], Iterable[str]] | None = None) -> Normaliser:
        mappings: dict[str, dict[str, list[tuple[str | None, dict]]]] = {}
        skipped = maps = 0
        given = []
        for cm in concept_maps:
            if not isinstance(cm, dict) or cm.get("resourceType") != "ConceptMap":
                skipped += 1
            else:
                given.append(cm)
        warnings: list[str] = []
        # a superseded version of a map (same url) is not applied: its corrected codes would stay
        for cm in latest_per_url(given, lambda m: m.get("url"), lambda m: m.get("version")):
            if cm.get("status") == "retired":
                continue
            groups = cm.get("group")
            if not isinstance(groups, list):
                skipped += 1
                continue
            maps += 1
            name = cm.get("url") or cm.get("id") or f"ConceptMap #{maps}"
            for g in groups:
                skipped += _read_group(g, mappings, warnings, str(name)[:MAX_TEXT])
        for w in warnings[:10]:
            log.warning("%s", w)
        if len(warnings) > 10:
            log.warning("… and %d more ConceptMap targets without equivalence", len(warnings) - 10)
        size = sum(len(codes) for codes in mappings.values())
        if aliases is not None:
            mappings = _with_aliases(mappings, aliases)
        return cls(mappings, local_prefixes=local_prefixes, default_systems=default_systems,
                   named_systems=named_systems, types=types, skipped=skipped, maps=maps, size=size)

    def with_local(self, *, local_prefixes: Iterable[str] = (),
                   default_systems: Mapping[str, str] | None = None,
                   named_systems: Mapping[str, str] | None = None) -> Normaliser:
        """The same mappings for another institution's prefixes and default systems."""
        return Normaliser(self._map, local_prefixes=local_prefixes,
                          default_systems=default_systems, named_systems=named_systems,
                          types=self.types,
                          skipped=self.skipped, maps=self.maps, size=self.size)

    def __len__(self) -> int:
        return self.size

    def targets(self, system: str, code: str, version: str | None = None) -> list[dict]:
        """The standard codings ``system|code`` maps to (copies)."""
        found = (self._map.get(system) or {}).get(code) or ()
        return [dict(t) for v, t in found if v is None or version is None or v == version]

    def is_local(self, system: Any) -> bool:
        if not isinstance(system, str):
            return False
        hit = self._local_cache.get(system)
        if hit is None:
            hit = is_local_system(system, self._known, self.local_prefixes)
            if len(self._local_cache) < 10_000:
                self._local_cache[system] = hit
        return hit

    # -- resources -------------------------------------------------------------------------------

    def plan(self, rtype: str) -> Plan:
        plan = self._plans.get(rtype)
        if plan is None:
            key = (rtype, tuple(sorted(self.default_systems.items())))
            plan = _PLANS.get(key)
            if plan is None:
                plan = _compile(rtype, rtype, 0, self.default_systems, (rtype,)) \
                    if rtype in _types() else {}
                if len(_PLANS) < 10_000:
                    _PLANS[key] = plan
            self._plans[rtype] = plan
        return plan

    def normalise(self, resource: Any) -> list[Unmapped]:
        """Add standard codings beside mapped local ones (in place); the unmapped local ones."""
        if not isinstance(resource, dict):
            return []
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or (self.types is not None and rtype not in self.types):
            return []
        plan = self._plans.get(rtype)
        if plan is None:
            plan = self.plan(rtype)
        if not plan:
            return []
        found = self._walk(resource, plan)
        if not found:
            return []
        rid = resource.get("id")
        rid = rid if isinstance(rid, str) else None
        return [Unmapped(system, code, display, rtype, rtype + "".join(reversed(trail)), rid)
                for system, code, display, trail in found]

    # The walk builds no paths: an unmapped coding comes back with its path segments innermost
    # first, and each level adds its own only then (unmapped codings are the rare case).
    def _walk(self, node: dict, plan: Plan) -> list | None:
        out = None
        for key, value in node.items():
            step = plan.get(key)
            if step is None:
                continue
            is_cc, repeats, sub, default = step  # not a CodeableConcept: it has its sub-plan
            if repeats:
                if type(value) is not list:
                    continue
                for i, item in enumerate(value):
                    if type(item) is dict:
                        found = self._concept(item, default) if is_cc else self._walk(item, cast(Plan, sub))
                        if found:
                            segment = f".{key}[{i}]"
                            for f in found:
                                f[3].append(segment)
                            out = found if out is None else out + found
            elif type(value) is dict:
                found = self._concept(value, default) if is_cc else self._walk(value, cast(Plan, sub))
                if found:
                    segment = "." + key
                    for f in found:
                        f[3].append(segment)
                    out = found if out is None else out + found
        return out

    def _concept(self, cc: dict, default: str | None) -> list | None:
        codings = cc.get("coding")
        if not isinstance(codings, list) or not codings:
            return None
        local: list[int] | None = None
        cache = self._local_cache
        for i, c in enumerate(codings):
            if type(c) is not dict:
                continue
            system = c.get("system")
            if system is None:
                if not isinstance(c.get("code"), str):
                    continue
                # the mapper knew no system: the institution's own system of this kind; a named
                # local system (v2 99zzz) only its own, never the kind's (fhir_mapping.local_codes)
                name = local_name(c) if "extension" in c else None
                if name is None:
                    system = default
                else:
                    system = self.named_systems.get(name) or (
                        named_local_system(default, name) if default is not None else None)
                if system is None:
                    continue
                codings[i] = c = {"system": system, **c}
            hit = cache.get(system) if type(system) is str else False
            if hit is None:
                hit = self.is_local(system)
            if hit or (type(system) is str and system in self._map):  # a standard one mapped too
                if local is None:
                    local = []
                local.append(i)
        if local is None:
            return None
        out = None
        present = None
        inserted = 0
        for i in local:
            c = codings[i + inserted]
            code = c.get("code")
            if not isinstance(code, str) or c.get("userSelected") is False:
                continue
            system = c["system"]
            found = (self._map.get(system) or {}).get(code)
            version = c.get("version")
            targets = [t for v, t in found if v is None or version is None or v == version] \
                if found else None
            if not targets:
                if not self.is_local(system):
                    continue  # a standard code: no unmapped local code
                display = c.get("display")
                if out is None:
                    out = []
                # its index stays: codings are inserted only after the one being mapped
                out.append((system, code, display if isinstance(display, str) else None,
                            [f".coding[{i + inserted}]"]))
                continue
            if present is None:
                present = {(o.get("system"), o.get("code")) for o in codings
                           if type(o) is dict and type(o.get("code")) is str
                           and type(o.get("system")) is str}
            at = i + inserted + 1
            for t in targets:
                key = (t["system"], t["code"])
                if key in present:
                    continue
                present.add(key)
                codings.insert(at, dict(t))
                at += 1
                inserted += 1
        if out is not None and any(type(o) is dict and type(o.get("system")) is str
                                   and not self.is_local(o["system"]) for o in codings):
            return None  # a standard coding beside (given, or just added): the concept is mapped
        return out

    def apply(self, conversion: Conversion) -> Conversion:
        """Normalise every resource of ``conversion`` in place; one finding per unmapped code."""
        seen = set()
        for r in conversion.resources:
            for u in self.normalise(r):
                key = (u.system, u.code, u.path)
                if key in seen:
                    continue
                seen.add(key)
                conversion.findings.append(finding(u))
        return conversion


def finding(u: Unmapped) -> Finding:
    display = f" ({_short(u.display)})" if u.display else ""
    where = f"{u.resource_type}/{u.resource_id}" if u.resource_id else u.resource_type
    return Finding(severity="warning", rule=RULE_UNMAPPED,
                   message=f"local code {_short(u.system)}|{_short(u.code)}{display} has no "
                           f"mapping to a standard code ({where})",
                   location=_short(u.path))


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


# -- reading ConceptMaps -----------------------------------------------------------------------------


def _with_aliases(mappings: dict, aliases: Callable[[str], Iterable[str]]) -> dict:
    """Each source's mappings under every URI of its code system as well."""
    out: dict[str, dict[str, list]] = {s: {c: list(f) for c, f in codes.items()}
                                       for s, codes in mappings.items()}
    for source, codes in mappings.items():
        for other in set(aliases(source)) - {source}:
            into = out.setdefault(other, {})
            for code, found in codes.items():
                have = into.setdefault(code, [])
                have.extend(f for f in found if f not in have)
    return out


def _read_group(g: Any, mappings: dict, warnings: list[str] | None = None, name: str = "") -> int:
    """Add one group's mappings; how many parts were skipped as malformed."""
    if not isinstance(g, dict):
        return 1
    source, target = g.get("source"), g.get("target")
    if not isinstance(source, str) or not source:
        return 1
    if target is not None and not isinstance(target, str):
        target = None
    source_version = g.get("sourceVersion") if isinstance(g.get("sourceVersion"), str) else None
    target_version = g.get("targetVersion") if isinstance(g.get("targetVersion"), str) else None
    elements = g.get("element")
    if not isinstance(elements, list):
        return 1
    skipped = 0
    codes = mappings.setdefault(source, {})
    for el in elements:
        if not isinstance(el, dict) or not isinstance(el.get("code"), str) or not el["code"]:
            skipped += 1
            continue
        targets = el.get("target")
        if targets is None:
            continue  # an element listed without targets: known, not mapped
        if not isinstance(targets, list):
            skipped += 1
            continue
        for t in targets:
            coding = _target(t, target, target_version)
            if coding is None:
                if not isinstance(t, dict):
                    skipped += 1
                elif t.get("equivalence", t.get("relationship")) is None:
                    skipped += 1
                    if warnings is not None:
                        warnings.append(f"{name}: {_short(source)}|{_short(el['code'])} -> "
                                        f"{_short(str(t.get('code')))} has no equivalence: skipped")
                continue
            found = codes.setdefault(el["code"], [])
            if not any(v == source_version and o["system"] == coding["system"]
                       and o["code"] == coding["code"] for v, o in found):
                found.append((source_version, coding))
    return skipped  # a source without usable targets stays: its codes are local and unmapped


def _target(t: Any, system: str | None, version: str | None) -> dict | None:
    if not isinstance(t, dict):
        return None
    # R4 requires equivalence (the hub refuses a map without): none says nothing, not "exact"
    equivalence = t.get("equivalence", t.get("relationship"))
    if not isinstance(equivalence, str) or equivalence not in APPLIED:
        return None
    if t.get("dependsOn"):
        return None
    code = t.get("code")
    tsystem = t.get("system") if isinstance(t.get("system"), str) else system
    if not isinstance(code, str) or not code or not tsystem:
        return None
    out: dict[str, Any] = {"system": tsystem}
    if version:
        out["version"] = version
    out["code"] = code
    display = t.get("display")
    if isinstance(display, str) and display:
        out["display"] = display
    out["userSelected"] = False
    return out


class StoredMaps:
    """The hub's own Normaliser over the ConceptMaps it stores (``POST /cda``, ``POST /v3``: the
    mappings that run in the hub rather than in a connector), rebuilt when the terminology read
    model changes (``TerminologyService.refresh`` says so); None while there are no maps."""

    def __init__(self, service: Any, store: Any, sync: Any = None):
        self.service = service
        self.store = store  # the maps' elements are read from the log, not the read model
        self.sync = sync  # brings the read model up to the log's end (a map just written counts)
        self._generation: Any = object()
        self._normaliser: Normaliser | None = None

    def __call__(self) -> Normaliser | None:
        if self.sync is not None:
            self.sync()
        generation = self.service.refresh()
        if generation != self._generation:
            ids = [ref.stream.partition("/")[2] for ref in self.service.concept_maps()]
            maps = [orjson.loads(state.partition(b"\n")[2])
                    for _, state in self.store.latest_many("ConceptMap", ids).values()]
            self._normaliser = Normaliser.from_concept_maps(
                maps, aliases=self.service.system_aliases) if maps else None
            self._generation = generation
        return self._normaliser

