"""PATCH requests as writes of the hub: the patch document, read from a REST body or from a
Bundle entry, and the step that turns the target's current version into its checked successor.

The hub applies that step to the version it is about to replace (``Op.patch``), so a patch named
by criteria, or one in a transaction beside the writes it refers to, is applied where the write is
planned, and applied again if another write gets in first.

Formats (R4 http.html#patch): JSON Patch (``application/json-patch+json``; in a Bundle a Binary of
that content type) and FHIRPath Patch (a Parameters resource).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from hub.core import jsontext
from hub.core import resource as res
from hub.core.errors import FhirError, Issue, bad_request
from hub.core.patch import apply_fhirpath_patch, apply_json_patch

JSON_PATCH = "application/json-patch+json"

Apply = Callable[[dict, Any], dict]
# (type, JSON text, resource, where) -> the resource to store and the warnings to answer
Check = Callable[[str, bytes, dict, str], tuple[dict, list[Issue]]]


def from_body(media: str, raw: bytes, max_string: int | None) -> tuple[Apply, Any]:
    """The patch of a REST PATCH: its media type says which format."""
    if not raw.strip():
        raise bad_request("The request body is empty")
    document = res.parse_json(raw, max_string=max_string)
    if media == JSON_PATCH:
        return apply_json_patch, document
    if not isinstance(document, dict) or document.get("resourceType") != "Parameters":
        raise bad_request("PATCH takes a JSON Patch (Content-Type application/json-patch+json) "
                          "or a FHIRPath Patch (a Parameters resource); a partial resource "
                          "(JSON merge patch) is not a FHIR patch format")
    return apply_fhirpath_patch, document


def from_entry(resource: object, where: str) -> tuple[Apply, Any]:
    """The patch of a Bundle entry: a Binary holding a JSON Patch, or a Parameters."""
    at = f"{where}.resource"
    if not isinstance(resource, dict):
        raise bad_request("A PATCH entry needs its patch as the resource: a Binary holding a "
                          "JSON Patch, or a Parameters (FHIRPath Patch)", at)
    kind = resource.get("resourceType")
    if kind == "Parameters":
        return apply_fhirpath_patch, resource
    if kind != "Binary":
        raise bad_request(f"A PATCH entry's resource is a Binary or a Parameters, not {kind!r}", at)
    if resource.get("contentType") != JSON_PATCH:
        raise bad_request(f"A Binary patch has contentType {JSON_PATCH}", f"{at}.contentType")
    data = resource.get("data")
    if not isinstance(data, str):
        raise bad_request("The Binary patch has no data", f"{at}.data")
    try:
        text = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("The Binary patch's data is not base64", f"{at}.data") from None
    try:
        return apply_json_patch, res.parse_json(text, f"{at}.data")
    except FhirError as e:  # say where: the entry's data
        raise bad_request(e.issues[0].diagnostics if e.issues else "Not JSON", f"{at}.data") \
            from None


def step(rtype: str, apply: Apply, document: Any, check: Check | None,
         where: str = "") -> Callable[[dict], tuple[dict, list[Issue]]]:
    """The current resource -> the patched one, checked as an update's body is (validation,
    lenient intake, profiles; plain validation when ``check`` is None)."""
    at = f"{where}.resource" if where else ""

    def run(current: dict) -> tuple[dict, list[Issue]]:
        patched = apply(current, document)  # meta's versionId and lastUpdated: the store's
        raw = jsontext.dumps(patched, at or rtype)
        if check is None:
            res.validate(rtype, raw, patched, at or None)
            return patched, []
        return check(rtype, raw, patched, at)
    return run
