"""The OperationDefinitions of the operations the CapabilityStatement lists, shipped as data
beside this file: the hub's own written by hand, the standard ones derived from the HL7
definitions by ``scripts/derive_operations.py`` (a copy where the hub takes every input the HL7
definition declares, else the hub's own definition based on it).

A read of ``OperationDefinition/{id}`` and a search by ``url`` answer them from these files (as
``/metadata``, which names them, is answered from the routes); any other id or query goes to the
store.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from hub.api.caller import context_of, repository
from hub.api.responses import base_url, fhir_response
from hub.core.access import Action

__all__ = ["HUB_CANONICAL", "OUT", "canonical", "definitions", "read", "search"]

HUB_CANONICAL = "https://fhir-region-hub.example/OperationDefinition/"
OUT = Path(__file__).resolve().parent
_TYPE = "OperationDefinition"
_URL_QUERY = {"url", "_format", "_pretty"}  # a lookup by canonical, answered here


@lru_cache(maxsize=1)
def definitions() -> dict[str, dict[str, Any]]:
    """id -> the shipped OperationDefinition."""
    out = {}
    for path in sorted(OUT.glob(f"{_TYPE}-*.json")):
        d = json.loads(path.read_text("utf-8"))
        out[d["id"]] = d
    return out


def canonical(oid: str) -> str:
    """The canonical URL of the shipped definition ``oid`` (KeyError: none is shipped)."""
    return definitions()[oid]["url"]


def _matching(values: list[str]) -> list[dict[str, Any]]:
    """The shipped definitions a ``url`` search names (``url`` or ``url|version``, OR by
    comma)."""
    wanted = [v.partition("|") for value in values for v in value.split(",") if v]
    return [d for d in definitions().values()
            if any(d["url"] == u and (not bar or d.get("version") == version)
                   for u, bar, version in wanted)]


def read(request: Request, rtype: str, rid: str) -> Response | None:
    """The answer to a read of a shipped definition (None: the store answers)."""
    d = definitions().get(rid) if rtype == _TYPE else None
    if d is None:
        return None
    repository(request).authorize(context_of(request), Action("read", _TYPE, rid))
    return fhir_response(d, request=request)


def search(request: Request, rtype: str) -> Response | None:
    """The answer to a search by ``url`` naming shipped definitions (None: the store answers,
    as it does any other search of the type: a stored definition of such a url is shadowed)."""
    items = list(request.query_params.multi_items())
    if rtype != _TYPE or not {k for k, _ in items} <= _URL_QUERY:
        return None
    found = _matching([v for k, v in items if k == "url"])
    if not found:
        return None
    repository(request).authorize(context_of(request), Action("search-type", _TYPE))
    base = base_url(request, request.app.state.settings.base_url)
    return fhir_response({
        "resourceType": "Bundle", "type": "searchset", "total": len(found),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [{"fullUrl": f"{base}/{_TYPE}/{d['id']}", "resource": d,
                   "search": {"mode": "match"}} for d in found],
    }, request=request)
