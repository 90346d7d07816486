"""``GET /fhir/metadata?mode=terminology``: the terminology service's TerminologyCapabilities (R4
http.html#capabilities), read off what ``hub.api.terminology`` answers and the code systems the
terminology model holds."""

from __future__ import annotations

from fastapi import Request

from hub.core.errors import FhirError
from terminology.operations import MAX_COUNT, MAX_UNPAGED, SPECS

# $expand parameters its spec takes but the expansion does not act on: not claimed
_EXPAND_IGNORED = frozenset({"date", "excludeNotForUI", "excludePostCoordinated",
                             "check-system-version"})
_EXPAND_NOTES = {
    "filter": "Words, each found in the code, the display or a designation",
    "excludeNested": "Always: an expansion is a flat list",
    "count": f"At most {MAX_COUNT:,}; an expansion of more than {MAX_UNPAGED:,} concepts needs it",
}


def capabilities(request: Request, statement: dict) -> dict:
    """The TerminologyCapabilities, dated, named and placed as the CapabilityStatement is."""
    state = request.app.state
    svc, runner = getattr(state, "terminology", None), getattr(state, "terminology_runner", None)
    if svc is None or runner is None:
        raise FhirError(503, "transient", "The terminology service is not running")
    if runner.model.position() < runner.store.max_notification_id():
        runner.sync()  # a code system stored a moment ago is listed, as its $lookup answers it
    systems = []
    for url, versions in svc.held():
        entry: dict = {"uri": url}
        listed = [{"code": v} for v in versions if v is not None]
        if listed and versions[-1] is not None:
            listed[-1]["isDefault"] = True  # what a code without a version is looked up in
        if listed:
            entry["version"] = listed
        entry["subsumption"] = True  # $subsumes, over the concepts' parents
        systems.append(entry)
    parameters = [{"name": name, **({"documentation": _EXPAND_NOTES[name]}
                                    if name in _EXPAND_NOTES else {})}
                  for name in SPECS["expand"] if name not in _EXPAND_IGNORED]
    out: dict = {"resourceType": "TerminologyCapabilities"}
    for key in ("status", "date", "kind", "software", "implementation"):
        out[key] = statement[key]
    if systems:
        out["codeSystem"] = systems
    out["expansion"] = {"hierarchical": False, "paging": True, "parameter": parameters,
                        "textFilter": _EXPAND_NOTES["filter"]}
    # $validate-code judges the code given, never through a ConceptMap; $translate finds the
    # maps of the source and target itself when no url names one; there is no $closure
    out["validateCode"] = {"translations": False}
    out["translation"] = {"needsMap": False}
    return out
