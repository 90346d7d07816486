"""A connector's terminology: its institution's ConceptMaps applied to every conversion.

The optional ``terminology:`` section of a connector config::

    terminology:
      concept_maps: [maps/h0001-lab.json, maps/h0001-drugs.ndjson]  # FHIR JSON: a ConceptMap, a
                                            # Bundle of them, or NDJSON (relative to the config)
      from_hub: true                        # also GET {sink url}/ConceptMap (or hub_url: …/fhir)
      refresh_seconds: 300                  # fetch again; the last good snapshot stays meanwhile
      local_systems:                        # codings WITHOUT a system at these paths get the
        lab: "{oid}.7"                      # institution's local system (HL7 v2 CWE-3 "L", none)
        drug: "{oid}.8"                     # (these are the defaults, as the tabular mappings)
        department: "{oid}.6"
        "99LIS": "{oid}.7"                  # a v2 99zzz name: its codings (any path) get this one;
                                            # an unnamed 99zzz gets <kind's system>.<name's bytes>

Every system under ``urn:oid:<institution OID>.`` counts as local: its codes are normalised when a
map covers them and reported as findings (``terminology.unmapped-local-code``) when none does.
The maps are read (files) or fetched (hub) when the connector starts; a file that cannot be read
or parsed is a configuration error at start, a hub that cannot be reached is logged and retried
every ``refresh_seconds``.

A code system is one system under each of its URIs (``urn:oid:…`` and its canonical URL), as in
the hub's own normalisation (``terminology.aliases``): a map from one maps codings written with
another. The well-known ones (SNOMED CT, LOINC, UCUM, …) always; with ``from_hub`` also those the
hub's CodeSystems (``url`` and ``identifier``) and NamingSystems (``uniqueId``) declare, fetched
with the maps (a map whose group is from the URL of one of the institution's OID systems is the
institution's too). Normalisation runs in the source threads right after mapping and
before the conversion is spooled, so what the hub receives carries both codings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fhir_mapping.base import Conversion, Finding, MappingError, SourceInfo
from fhir_mapping.local_codes import is_named_local
from hub.core.errors import HubError
from terminology.aliases import SystemAliases
from terminology.conceptmaps import concept_maps_in, read_concept_maps
from terminology.normalise import Normaliser
from terminology.rows import latest_per_url

log = logging.getLogger("connectors.terminology")

KINDS = {  # kind of local code -> the paths whose system-less codings are of that kind
    "lab": ("Observation.code", "Observation.component.code", "DiagnosticReport.code",
            "ServiceRequest.code"),
    "drug": ("MedicationRequest.medicationCodeableConcept",
             "MedicationStatement.medicationCodeableConcept",
             "MedicationAdministration.medicationCodeableConcept",
             "MedicationDispense.medicationCodeableConcept", "Medication.code"),
    "department": ("Encounter.serviceType",),
}
DEFAULT_LOCAL = {"lab": "{oid}.7", "drug": "{oid}.8", "department": "{oid}.6"}
MAX_PAGES = 100
PAGE = 200


class TerminologyConfigError(HubError, ValueError):
    error_code = "config"


def parse_config(d: Any, base: Path, where: str) -> dict[str, Any] | None:
    """The ``terminology:`` section checked, file paths made absolute; None when absent."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise TerminologyConfigError(f"{where}: 'terminology' must be a mapping")
    unknown = set(d) - {"concept_maps", "from_hub", "hub_url", "refresh_seconds", "local_systems"}
    if unknown:
        raise TerminologyConfigError(f"{where}: unknown terminology keys {sorted(unknown)}")
    maps = d.get("concept_maps") or []
    if isinstance(maps, str):
        maps = [maps]
    if not isinstance(maps, list) or not all(isinstance(m, str) and m for m in maps):
        raise TerminologyConfigError(f"{where}: terminology.concept_maps must be a list of paths")
    paths = [str(p if Path(p).is_absolute() else (base / p).resolve()) for p in maps]
    for p in paths:  # a missing or unreadable map file is a mistake in the config: say so now
        try:
            read_concept_maps(p)
        except (OSError, ValueError) as e:
            raise TerminologyConfigError(f"{where}: terminology.concept_maps: {e}") from None
    local = d.get("local_systems", DEFAULT_LOCAL)
    if not isinstance(local, dict) or not all(
            (k in KINDS or (isinstance(k, str) and is_named_local(k)))
            and (v is None or isinstance(v, str)) for k, v in local.items()):
        raise TerminologyConfigError(
            f"{where}: terminology.local_systems maps {', '.join(KINDS)} or an HL7 v2 99zzz "
            "coding-system name to an OID or null")
    try:
        refresh = float(d.get("refresh_seconds", 300))
    except (TypeError, ValueError):
        raise TerminologyConfigError(f"{where}: terminology.refresh_seconds must be a number") \
            from None
    hub_url = d.get("hub_url")
    if hub_url is not None and not isinstance(hub_url, str):
        raise TerminologyConfigError(f"{where}: terminology.hub_url must be a URL")
    return {"concept_maps": paths, "from_hub": bool(d.get("from_hub", False)), "hub_url": hub_url,
            "refresh_seconds": max(refresh, 1.0), "local_systems": local}


def _system(template: str, info: SourceInfo) -> str:
    system = template.format(oid=info.oid)
    return system if system.startswith("urn:") else f"urn:oid:{system}"


def local_settings(info: SourceInfo, local: dict[str, str | None] | None = None
                   ) -> tuple[list[str], dict[str, str]]:
    """(local system prefixes, default systems by path) of an institution."""
    if not info.oid:
        return [], {}
    defaults = {}
    for kind, template in (DEFAULT_LOCAL if local is None else local).items():
        if template and kind in KINDS:
            system = _system(template, info)
            for path in KINDS[kind]:
                defaults[path] = system
    return [f"urn:oid:{info.oid}."], defaults


def named_settings(info: SourceInfo, local: dict[str, str | None] | None = None) -> dict[str, str]:
    """The systems configured for HL7 v2 99zzz names (exact names, ``local_systems``)."""
    if not info.oid or not local:
        return {}
    return {k: _system(v, info) for k, v in local.items() if v and k not in KINDS}


def for_institution(maps: Iterable[dict], info: SourceInfo,
                    aliases: Callable[[str], Iterable[str]] | None = None) -> list[dict]:
    """Only the maps with a group from one of the institution's systems (when its OID is known),
    under any of the system's URIs (``aliases``: ``terminology.aliases.SystemAliases``)."""
    if not info.oid:
        return list(maps)
    prefix = f"urn:oid:{info.oid}."
    names = aliases or (lambda s: (s,))

    def mine(source: Any) -> bool:
        return isinstance(source, str) and any(a.startswith(prefix) for a in names(source))

    return [m for m in maps if isinstance(m.get("group"), list)
            and any(isinstance(g, dict) and mine(g.get("source")) for g in m["group"])]


class Terminology:
    """The normaliser of one connector; refreshed from the hub in the background if asked."""

    def __init__(self, info: SourceInfo, settings: dict[str, Any] | None = None,
                 hub_url: str | None = None, http_headers: dict | None = None,
                 http_auth: Any = None, http_verify: Any = True):
        self.info = info
        self.settings = settings
        self.hub_url = ((settings or {}).get("hub_url") or hub_url or "").rstrip("/") or None
        self.headers = http_headers or {}
        self.auth = http_auth  # the sink's tokens (connectors.sinks.http.hub_auth)
        self.verify = http_verify  # the sink's TLS (connectors.tls.client_context)
        self.file_maps: list[dict] = []
        self.hub_maps: list[dict] = []
        self.hub_systems: list[dict] = []  # the hub's CodeSystems (url, identifier), NamingSystems
        self.normaliser: Normaliser | None = None
        self.state: dict[str, Any] = {"maps": 0, "mappings": 0, "hub": None, "error": None,
                                      "refreshed": None}
        self._thread: threading.Thread | None = None
        if settings is None:
            return
        prefixes, defaults = local_settings(info, settings.get("local_systems"))
        self._prefixes, self._defaults = prefixes, defaults
        self._named = named_settings(info, settings.get("local_systems"))
        for p in settings["concept_maps"]:
            self.file_maps.extend(read_concept_maps(p))  # OSError / ValueError: config error
        self._rebuild()

    @classmethod
    def from_config(cls, config) -> Terminology:
        sink = config.sink or {}
        url = sink.get("url") if sink.get("type") == "http" else None
        auth = None
        verify: Any = True
        if url and sink.get("tls") is not None:
            from connectors.tls import client_context

            verify = client_context(sink["tls"], "http sink")
        if url and sink.get("client_id"):
            from connectors.sinks.http import hub_auth

            auth = hub_auth(url, sink.get("client_id"), sink.get("private_key"),
                            sink.get("token_url"), sink.get("scope") or "system/*.cruds", verify)
        return cls(config.source_info, getattr(config, "terminology", None), url,
                   sink.get("headers") or {}, auth, verify)

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    def _rebuild(self) -> None:
        maps = self.file_maps + self.hub_maps
        self.normaliser = Normaliser.from_concept_maps(
            maps, local_prefixes=self._prefixes, default_systems=self._defaults,
            named_systems=self._named,
            aliases=SystemAliases(self.hub_systems))
        self.state.update(maps=self.normaliser.maps, mappings=len(self.normaliser))

    # -- the hub ---------------------------------------------------------------------------------

    def fetch(self, timeout: float = 5.0) -> tuple[list[dict], list[dict]]:
        """Every ConceptMap the hub holds for this institution, and the names of the hub's code
        systems (CodeSystem url and identifier, NamingSystem); follows ``next`` links."""
        import httpx

        if not self.hub_url:
            raise ValueError("from_hub needs an http sink or terminology.hub_url")
        with httpx.Client(timeout=timeout, headers=self.headers, auth=self.auth,
                          verify=self.verify) as client:
            def every(query: str, rtype: str) -> list[dict]:
                out: list[dict] = []
                url: str | None = f"{self.hub_url}/{query}"
                for _ in range(MAX_PAGES):
                    if url is None:
                        break
                    r = client.get(url, headers={"accept": "application/fhir+json"})
                    r.raise_for_status()
                    bundle = r.json()
                    out.extend(e["resource"] for e in bundle.get("entry") or ()
                               if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                               and e["resource"].get("resourceType") == rtype)
                    url = next((ln.get("url") for ln in bundle.get("link") or ()
                                if isinstance(ln, dict) and ln.get("relation") == "next"), None)
                return out

            maps = list(concept_maps_in(every(f"ConceptMap?_count={PAGE}", "ConceptMap")))
            systems = every(f"CodeSystem?_elements=url,identifier&_count={PAGE}", "CodeSystem")
            systems += every(f"NamingSystem?_count={PAGE}", "NamingSystem")
        # the current version of each map first: an older one may still name the institution
        return for_institution(latest_per_url(maps, lambda m: m.get("url"),
                                              lambda m: m.get("version")), self.info,
                               SystemAliases(systems)), systems

    def refresh(self) -> bool:
        """Fetch from the hub; on failure keep the last good snapshot. True if it worked."""
        try:
            maps, systems = self.fetch()
        except Exception as e:  # noqa: BLE001 - unreachable, 5xx, not JSON: keep what we have
            self.state.update(hub="unreachable", error=f"{type(e).__name__}: {e}"[:300])
            log.warning("terminology: ConceptMaps not fetched from the hub, keeping %d: %s",
                        len(self.hub_maps), self.state["error"])
            return False
        self.hub_maps, self.hub_systems = maps, systems
        self._rebuild()
        self.state.update(hub="ok", error=None, refreshed=time.time())
        return True

    def start(self, stop: threading.Event) -> None:
        settings = self.settings
        if settings is None or not settings.get("from_hub"):  # not enabled, or nothing to fetch
            return
        self.refresh()

        def loop() -> None:
            while not stop.wait(settings["refresh_seconds"]):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="terminology-refresh", daemon=True)
        self._thread.start()

    # -- conversions ---------------------------------------------------------------------------

    def apply(self, conversions: list[Conversion]) -> list[Conversion]:
        normaliser = self.normaliser
        if normaliser is None:
            return conversions
        for c in conversions:
            try:
                normaliser.apply(c)
            except Exception as e:  # noqa: BLE001 - a normaliser bug never loses the message
                log.exception("normalising %s failed", c.unit_id)
                c.findings.append(Finding("warning", "terminology.normaliser-failed",
                                          f"codes not normalised: {type(e).__name__}"))
        return conversions

    def converter_factory(self, factory: Callable[[str], Callable]) -> Callable[[str], Callable]:
        """Wrap a converter factory (``connectors.spool.default_converter_factory``)."""
        if not self.enabled:
            return factory

        def make(kind: str):
            convert = factory(kind)

            def normalised(payload: bytes, source: SourceInfo) -> list[Conversion]:
                try:
                    return self.apply(convert(payload, source))
                except MappingError as e:
                    good: list[Conversion] | None = getattr(e, "conversions", None)
                    if good:  # the good rows of a CSV flow on
                        self.apply(good)
                    raise

            return normalised

        return make
