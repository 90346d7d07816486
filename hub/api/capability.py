"""The CapabilityStatement, generated from the routes the app actually has.

Route names are FHIR interaction codes (``read``, ``history-type``, ``transaction`` …); the
conditional variants and search parameters are read off the same places that implement them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

from fastapi import FastAPI

from hub.access.auditlog import SEARCHABLE as AUDIT_SEARCHABLE
from hub.api.operations import canonical
from hub.core import resource as res
from hub.repository import APPEND_ONLY, AUDIT, VIEW_TYPES
from projections.search import fulltext
from projections.search.params import params_for

_TYPE_LEVEL = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type",
               "create", "search-type")
_SYSTEM_LEVEL = ("transaction", "batch", "history-system", "search-system")
_STARTED = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def statement(app: FastAPI, base: str, security: dict | None = None) -> dict:
    out = _with_mpi(frozenset(_route_names(app.routes)), base)  # MPI operations added
    if security is None:
        return out
    rest = out["rest"][0]  # the cached statement is shared: a copy of what changes
    rest = {"mode": rest["mode"], "security": security, **rest}
    return {**out, "rest": [rest]}


# -- rest.security: what ``hub.api.caller.authenticate`` asks of a caller ---------------------------
_SMART = {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
          "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def security(auth: bool, token_url: str) -> dict:
    """rest.security as the server behaves: no CORS headers are sent (no browser origin is
    allowed); with access control on, every call but this statement, SMART discovery and the
    token endpoint needs a bearer token from the token endpoint (SMART Backend Services, as
    /.well-known/smart-configuration says: there is no authorize endpoint)."""
    if not auth:
        return {"cors": False, "description": "Access control is off (HUB_AUTH=0): every call is "
                "answered without a token, as the system"}
    return {
        "extension": [{"url": _OAUTH_URIS,
                       "extension": [{"url": "token", "valueUri": token_url}]}],
        "cors": False,
        "service": [{"coding": [_SMART], "text": "SMART Backend Services"}],
        "description": "Every call but /metadata and /.well-known/smart-configuration needs an "
                       "OAuth 2.0 bearer token: client credentials with a signed JWT assertion "
                       "(private_key_jwt) at the token endpoint",
    }


# -- the master patient index (hub.api.identity, hub.api.everything) ------------------------------
# each definition is shipped (hub.api.operations) and served at /fhir/OperationDefinition/{id}
_MPI_TYPE_OPS = (  # route name, resource type, operation, definition id
    ("patient-match", "Patient", "match", "Patient-match"),
    ("patient-everything", "Patient", "everything", "Patient-everything"),
    ("patient-timeline", "Patient", "timeline", "timeline"),
    ("person-everything", "Person", "everything", "person-everything"),
    ("person-timeline", "Person", "timeline", "timeline"),
    ("person-link", "Person", "link", "person-link"),
    ("person-unlink", "Person", "unlink", "person-unlink"),
    ("person-merge", "Person", "merge", "person-merge"),
    ("person-unmerge", "Person", "unmerge", "person-unmerge"),
    ("person-not-duplicate", "Person", "not-duplicate", "person-not-duplicate"),
)
_MPI_SYSTEM_OPS = (("mpi-review", "mpi-review"), ("resolve-identifier", "resolve-identifier"),
                   ("unmapped-codes", "unmapped-codes"))  # the last: the unmapped-codes worklist


@lru_cache(maxsize=8)
def _with_mpi(routed: frozenset[str], base: str) -> dict:
    import copy

    out = copy.deepcopy(_statement(routed, base))
    rest = out["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    person = by_type.get("Person")
    if person is not None and "person-read" in routed:
        # the golden Person is a projection: read and search, never written through /fhir
        person["interaction"] = [{"code": "read"}, {"code": "search-type"}]
        person["versioning"] = "no-version"  # no vread nor history: not versioned
        person["readHistory"] = False
        person["updateCreate"] = False
        person["conditionalCreate"] = person["conditionalUpdate"] = False
        person["conditionalDelete"] = "not-supported"
        # what person_search takes (with _count and _total, listed for every type): no
        # includes, _has, _sort, _summary or _elements
        person["searchParam"] = [p for p in person["searchParam"]
                                 if p["name"] in ("identifier", "link", "patient", "_id",
                                                  "_lastUpdated")]
        person.pop("searchInclude", None)
        person.pop("searchRevInclude", None)
    for name, rtype, op, definition in _MPI_TYPE_OPS:
        if name in routed and rtype in by_type:
            by_type[rtype].setdefault("operation", []).append(
                {"name": op, "definition": canonical(definition)})
    for name, op in _MPI_SYSTEM_OPS:
        if name in routed:
            rest.setdefault("operation", []).append({"name": op, "definition": canonical(op)})
    _with_export(routed, rest, by_type, out)
    return out


_BULK = "http://hl7.org/fhir/uv/bulkdata/"


def _with_export(routed: frozenset[str], rest: dict, by_type: dict, out: dict) -> None:
    """FHIR Bulk Data $export (hub.api.bulkexport): system, Patient and Group level."""
    if "export" not in routed:
        return
    out["instantiates"] = [_BULK + "CapabilityStatement/bulk-data"]
    rest.setdefault("operation", []).append(
        {"name": "export", "definition": canonical("export")})
    for name, rtype, definition in (("patient-export", "Patient", "patient-export"),
                                    ("group-export", "Group", "group-export")):
        if name in routed and rtype in by_type:
            by_type[rtype].setdefault("operation", []).append(
                {"name": "export", "definition": canonical(definition)})
# -- end of the master patient index --------------------------------------------------------------


def _route_names(routes) -> list[str]:
    names = []
    for r in routes:
        inner = getattr(r, "original_router", None)  # an included router (newer FastAPI)
        if inner is not None:
            names += _route_names(inner.routes)
        elif getattr(r, "name", None):
            names.append(r.name)
    return names


_WRITES = frozenset({"create", "update", "patch", "delete"})
# The types R4B added (the models are R4B): served, as the official R4B examples are, but not
# declared to an R4 client, which knows none of them (fhirVersion is 4.0.1)
R4B_ONLY = frozenset({
    "AdministrableProductDefinition", "Citation", "ClinicalUseDefinition", "EvidenceReport",
    "Ingredient", "ManufacturedItemDefinition", "NutritionProduct", "PackagedProductDefinition",
    "RegulatedAuthorization", "SubscriptionStatus", "SubscriptionTopic"})
# parameters of type special the planner answers (projections.search.query.parse)
_PLANNED_SPECIAL = frozenset({("Location", "near")})
_SP = "http://hl7.org/fhir/SearchParameter/"
_FULLTEXT = [{"name": "_text", "type": "string", "definition": _SP + "DomainResource-text",
              "documentation": "The narrative: words, \"a phrase\", OR"},
             {"name": "_content", "type": "string", "definition": _SP + "Resource-content",
              "documentation": "Every string of the resource: words, \"a phrase\", OR"}]
# the search result parameters every type searched through the index takes
_RESULT = [
    {"name": "_sort", "type": "special", "documentation":
     "Any parameter of the type but composite and special ones; several, comma-separated"},
    {"name": "_include", "type": "special", "documentation":
     "searchInclude, wildcards, :iterate"},
    {"name": "_revinclude", "type": "special", "documentation":
     "searchRevInclude, wildcards, :iterate"},
    {"name": "_has", "type": "special"},
    {"name": "_summary", "type": "token"},
    {"name": "_elements", "type": "special"},
]
# the audit log's search: sorted by its time only, no includes nor _has
_AUDIT_RESULT = [
    {"name": "_sort", "type": "special", "documentation": "date or _lastUpdated only"},
    {"name": "_summary", "type": "token"},
    {"name": "_elements", "type": "special"},
]


@lru_cache(maxsize=8)
def _statement(routed: frozenset[str], base: str) -> dict:
    from importlib.metadata import version

    routed = frozenset(routed | {"batch"}) if "transaction" in routed else routed
    # (batch: one endpoint with transaction; Bundle.type picks the semantics)
    type_interactions = [{"code": c} for c in _TYPE_LEVEL if c in routed]
    resources = []
    # the terminology operations, routed by hub.api.terminology as "CodeSystem-lookup"
    # and so on: the ids of their R4 OperationDefinitions
    operations: dict[str, list[dict]] = {}
    for name in sorted(routed):
        rtype, _, op = name.partition("-")
        if rtype in ("CodeSystem", "ValueSet", "ConceptMap") and op and "-instance" not in op:
            operations.setdefault(rtype, []).append(
                {"name": op, "definition": canonical(name)})
    # _revinclude: each reference parameter of each type, under every type it can point at
    rev: dict[str, set[str]] = {}
    for source in res.RESOURCE_TYPES - VIEW_TYPES - R4B_ONLY:  # a stored Person is never included
        for code, p in params_for(source).items():
            if p.type == "reference" and p.answered:
                for target in p.targets:
                    rev.setdefault(target, set()).add(f"{source}:{code}")
    read_only = [i for i in type_interactions if i["code"] not in _WRITES]
    for rtype in sorted(res.RESOURCE_TYPES - R4B_ONLY):
        # what the search index answers: every parameter of the type but those of type special,
        # of which the planner answers Location's near
        params = [{"name": code, "type": p.type, "definition": p.url}
                  for code, p in sorted(params_for(rtype).items())
                  if p.answered or (rtype, code) in _PLANNED_SPECIAL]
        refs = sorted(code for code, p in params_for(rtype).items()
                      if p.type == "reference" and p.answered)
        if rtype == AUDIT:  # answered by the audit log: its own parameters, no includes
            params = [p for p in params if p["name"] in AUDIT_SEARCHABLE] + _AUDIT_RESULT
            refs = []
        else:
            if fulltext.enabled(rtype):  # HUB_FULLTEXT: the types with a full-text row
                params += _FULLTEXT
            params += _RESULT
        resources.append({
            "type": rtype,
            # the audit is written by the hub alone (hub.repository.APPEND_ONLY)
            "interaction": read_only if rtype in APPEND_ONLY else type_interactions,
            # an AuditEvent keeps its one version (vread), but is never updated
            "versioning": "versioned" if rtype in APPEND_ONLY else "versioned-update",
            "readHistory": "vread" in routed,
            "updateCreate": rtype not in APPEND_ONLY,
            "conditionalCreate": "create" in routed and rtype not in APPEND_ONLY,
            # If-None-Match, or If-Modified-Since without it, on read answers 304
            "conditionalRead": "full-support",
            "conditionalUpdate": "conditional-update" in routed and rtype not in APPEND_ONLY,
            "conditionalDelete": "single" if "conditional-delete" in routed
            and rtype not in APPEND_ONLY else "not-supported",
            "referencePolicy": ["literal", "local"],
            "searchInclude": [f"{rtype}:{c}" for c in refs],
            "searchRevInclude": sorted(rev.get(rtype, ())) if rtype != AUDIT else [],
            "searchParam": params,
            "operation": [*operations.get(rtype, []),
                          *([{"name": "validate", "definition": canonical("Resource-validate")}]
                            if "validate" in routed else [])],
        })
        # FHIR JSON has no empty arrays
        for key in ("operation", "searchInclude", "searchRevInclude"):
            if not resources[-1][key]:
                del resources[-1][key]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _STARTED,
        "kind": "instance",
        "software": {"name": "fhir-region-hub", "version": version("fhir-region-hub")},
        "implementation": {"description": "Regional FHIR integration hub", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        # JSON Patch, and FHIRPath Patch (a Parameters resource) in either format
        **({"patchFormat": ["application/json-patch+json", "application/fhir+json",
                            "application/fhir+xml"]} if "patch" in routed else {}),
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": c} for c in _SYSTEM_LEVEL if c in routed],
            # compartment search, of one type (Patient/{id}/{type}) and of all (Patient/{id}/*)
            **({"compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"]}
               if {"search-compartment", "search-compartment-all"} <= routed else {}),
            # the hub's own system-level operation (documents and v3 messages come in at /cda and
            # /v3, outside the FHIR base)
            **({"operation": [{"name": "quality-report",
                               "definition": canonical("quality-report")}]}
               if "quality-report" in routed else {}),
            # what every type's search takes, Person's (the MPI's own) and AuditEvent's (the
            # audit log's) included; the rest is listed per type
            "searchParam": [{"name": "_count", "type": "number"},
                            {"name": "_total", "type": "token"}],
        }],
    }
