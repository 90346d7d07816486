"""Parsing, validation (once, at the edge) and the canonical stored form of a FHIR resource.

Validation uses ``fhir.resources`` R4B ``model_validate_json``; the model is then dropped. What is
stored is the sender's JSON re-emitted by orjson (compact, ``resourceType``/``id``/``meta`` first),
so reads serve stored bytes and never pay for a model dump.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class

from fhir_mapping import source_order
from fhir_mapping.fhir_types import RESOURCE_TYPES  # a leaf module: the tabular mappers read it too
from hub.core import invariants, jsontext, jsontypes, narrative, xhtml
from hub.core.errors import FhirError, Issue, bad_request

MAX_ISSUES = 20


def parse_json(body: bytes, where: str = "body", max_string: int | None = None) -> Any:
    """Parse with orjson; where a decimal would lose its written form, keep it as sent. A key
    repeated in one object is refused (400), not decided by whichever value the parser keeps.
    With ``max_string`` (the API passes HUB_MAX_STRING) a string longer than that many characters
    is refused (413, naming its element), except the values of keys named "data" (base64)."""
    raw = body if isinstance(body, bytes) else bytes(body, "utf-8")
    try:
        d = orjson.loads(raw)
        dumped = _dumps(d)
        # orjson writes the parse back as the very text received (compact JSON, as most programs
        # send): no number lost its written form and no key was dropped as a repeat
        exact = dumped is not None and dumped == raw.strip()
        if not exact and jsontext.INEXACT_NUMBER.search(raw) is not None:
            d = json.loads(raw, parse_float=orjson.Fragment)
            dumped = None  # of the other parse
    except (orjson.JSONDecodeError, ValueError, RecursionError) as e:
        raise FhirError(400, "structure", f"The {where} is not valid JSON: {e}") from None
    if max_string is not None:
        jsontext.refuse_long_strings(raw, d, max_string, "$")
    if not exact:
        jsontext.refuse_duplicate_keys(raw, d, where, dumped)
    return d


def _dumps(d: Any) -> bytes | None:
    try:
        return orjson.dumps(d)
    except orjson.JSONEncodeError:  # integers beyond 64 bits, nesting orjson will not write
        return None


def check_type(d: Any, expected: str | None = None, where: str = "") -> str:
    """The resource's type, after checking it is a JSON object of a known resource type."""
    if not isinstance(d, dict):
        raise FhirError(400, "structure", "A FHIR resource must be a JSON object", where or None)
    rtype = d.get("resourceType")
    if not isinstance(rtype, str):
        raise FhirError(400, "required", "The resource has no resourceType",
                        f"{where}.resourceType" if where else "resourceType")
    if rtype not in RESOURCE_TYPES:
        raise FhirError(400, "not-supported", f"Unknown resource type {rtype!r}",
                        f"{where}.resourceType" if where else "resourceType")
    if expected is not None and rtype != expected:
        raise bad_request(f"Expected a {expected} but the body is a {rtype}",
                          f"{where}.resourceType" if where else "resourceType")
    return rtype


@lru_cache(maxsize=None)
def model_class(rtype: str) -> type[pydantic.BaseModel]:
    return get_fhir_model_class(rtype)


def validate(rtype: str, raw: bytes, d: dict, prefix: str | None = None,
             check_json: bool = True) -> None:
    """Validate ``raw`` (the JSON of ``d``) against the R4B model of ``rtype``; 422 on failure
    (the base invariants the model does not evaluate are warnings: ``hub.core.invariants``, but
    for the few it refuses: ``invariants.refusals``, a CodeSystem's duplicate codes and loops).

    ``prefix`` is the FHIRPath of the resource inside its container (``Bundle.entry[2].resource``).
    Strings holding control characters or lone surrogates are a 400, found before the model runs.
    """
    prefix = prefix or rtype
    jsontext.refuse_bad_text(d, prefix, raw)
    issues: list[Issue] = []
    try:
        model_class(rtype).model_validate_json(raw)
    except pydantic.ValidationError as e:
        for err in e.errors()[:MAX_ISSUES]:
            issues.append(
                Issue(_issue_code(err["type"]), f"{err['msg']}", expression=loc_path(prefix, err["loc"]))
            )
    except KeyError as e:  # fhir_core's lookup of a contained resource of an unknown type
        name = str(e.args[0]).split(".")[-1].removesuffix("Type")
        issues.append(Issue("invalid", f"Unknown resource type {name!r} inside the resource",
                            expression=prefix))
    except Exception as e:  # noqa: BLE001 - the models' own validators raising outside pydantic
        issues.append(Issue("invalid", f"{type(e).__name__}: {e}", expression=prefix))
    if check_json:  # what the model lets through: JSON types, empties, codes
        found: list[Issue] = []
        jsontypes.check(d, rtype, prefix, found)
        reported = {i.expression for i in issues}
        issues += [i for i in found if i.expression not in reported]
    _long_keys(d, prefix, issues)
    _narratives(d, prefix, issues)
    invariants.refusals(rtype, d, prefix, issues)
    if issues:
        raise FhirError(422, "invalid", issues[0].diagnostics, issues=issues[:MAX_ISSUES])


# A business identifier is a key: the event store indexes each (system, value), and PostgreSQL
# refuses an index row over 2,704 bytes (it failed the whole write, then a batch, as a "retry
# later" outage). Both stores refuse the same: no real identifier comes near this.
MAX_KEY_BYTES = 1000


def _long_keys(d: dict, prefix: str, issues: list[Issue]) -> None:
    found = d.get("identifier")
    items = [found] if isinstance(found, dict) else found if isinstance(found, list) else []
    for i, ident in enumerate(items):
        if not isinstance(ident, dict):
            continue
        for part in ("system", "value"):
            v = ident.get(part)
            if isinstance(v, str) and len(v) * 4 > MAX_KEY_BYTES and \
                    len(v.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
                where = f"{prefix}.identifier" + (f"[{i}]" if isinstance(found, list) else "")
                issues.append(Issue("too-long", f"An identifier's {part} is at most "
                                    f"{MAX_KEY_BYTES} bytes (UTF-8) here: it is a key the store "
                                    "indexes", expression=f"{where}.{part}"))


def _narratives(d: dict, prefix: str, issues: list[Issue]) -> None:
    """The resource's narrative and those of its contained resources (``hub.core.narrative``)."""
    for where, r in [(prefix, d), *((f"{prefix}.contained[{i}]", c) for i, c in
                                    enumerate(d.get("contained") or ()) if isinstance(c, dict))]:
        text = r.get("text")
        if isinstance(text, dict) and "div" in text:
            why = narrative.problem(text["div"])
            if why is not None:
                issues.append(Issue("invalid", why, expression=f"{where}.text.div"))


def _issue_code(pydantic_type: str) -> str:
    if pydantic_type == "missing":
        return "required"
    if pydantic_type == "extra_forbidden":
        return "structure"
    return "value"


def loc_path(prefix: str, loc: tuple) -> str:
    """The FHIRPath of a validation error's location (``loc``) under ``prefix``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.replace("_", "").isalnum():
            out += f".{part}"
    return out


def content_hash(d: dict, narratives_canonical: bool = False) -> bytes:
    """Hash of the content that makes a version: everything but id, versionId, lastUpdated and the
    source-order stamp (the same content from a later message is no new version).
    ``narratives_canonical``: each narrative's XHTML in its canonical form (the same XHTML
    spelled otherwise, as FHIR XML gives it back), a parse of each: for comparing a write with
    the stored version when their hashes differ, never for the hash every write stores."""
    d = source_order.strip(d)
    meta = d.get("meta")
    if meta is not None or "id" in d:
        d = {k: v for k, v in d.items() if k not in ("meta", "id")}
        if meta:
            rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
            if rest:
                d["meta"] = rest
    if narratives_canonical:
        d = xhtml.canonical_divs(d)
    return hashlib.blake2b(orjson.dumps(d, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def holds_narrative(d: dict) -> bool:
    """Whether ``d`` holds a narrative (its own, a contained resource's)."""
    return b'"div":' in orjson.dumps(d)


def canonical(d: dict, rid: str, version: int, last_updated: str) -> bytes:
    """The stored bytes of a version: resourceType, id, meta first, then the sender's order."""
    meta = {"versionId": str(version), "lastUpdated": last_updated}
    for k, v in (d.get("meta") or {}).items():
        if k not in meta:
            meta[k] = v
    out = {"resourceType": d["resourceType"], "id": rid, "meta": meta}
    for k, v in d.items():
        if k not in out:
            out[k] = v
    return orjson.dumps(out)


def identifiers(d: dict) -> list[tuple[str, str]]:
    """(system, value) of the resource's business identifiers (list or single, as the type has)."""
    found = d.get("identifier")
    if isinstance(found, dict):
        found = [found]
    if not isinstance(found, list):
        return []
    return [
        (i.get("system") or "", i["value"])
        for i in found
        if isinstance(i, dict) and isinstance(i.get("value"), str)
    ]
