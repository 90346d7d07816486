"""The OperationDefinitions of the operations the CapabilityStatement lists, shipped as data
beside this file: the hub's own written by hand, the standard ones derived from the HL7
definitions by ``scripts/derive_operations.py`` (a copy where the hub takes every input the HL7
definition declares, else the hub's own definition based on it).

A read of ``OperationDefinition/{id}`` (plain or in a batch or transaction), its vread of version
1 and its history (that one version), and a search by ``url`` answer them from these files (as
``/metadata``, which names them, is answered from the routes); any other id or query goes to the
store. A write of a shipped id or canonical is refused (409): the store's copy would be shadowed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from hub.api.caller import context_of, repository
from hub.api.responses import base_url, etag, fhir_response
from hub.core.access import Action
from hub.core.errors import FhirError, not_found
from hub.core.ingest import Context, Op
from hub.repository import Repository

__all__ = ["HUB_CANONICAL", "OUT", "canonical", "definitions", "history", "read", "read_as",
           "refuse_body", "refuse_write", "search", "search_as", "vread", "vread_as"]

HUB_CANONICAL = "https://fhir-region-hub.example/OperationDefinition/"
OUT = Path(__file__).resolve().parent
_TYPE = "OperationDefinition"
_URL_QUERY = {"url", "_format", "_pretty"}  # a lookup by canonical, answered here
_VERSION = "1"  # each shipped definition has one version: the one shipped


@lru_cache(maxsize=1)
def definitions() -> dict[str, dict[str, Any]]:
    """id -> the shipped OperationDefinition (version 1, as its vread and history say)."""
    out = {}
    for path in sorted(OUT.glob(f"{_TYPE}-*.json")):
        d = json.loads(path.read_text("utf-8"))
        d["meta"] = {**d.get("meta", {}), "versionId": _VERSION}
        out[d["id"]] = d
    return out


@lru_cache(maxsize=1)
def _canonicals() -> frozenset[str]:
    return frozenset(d["url"] for d in definitions().values())


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


def read_as(repo: Repository, ctx: Context, rtype: str, rid: str) -> dict[str, Any] | None:
    """The shipped definition a read of ``rtype/rid`` answers (None: the store answers)."""
    d = definitions().get(rid) if rtype == _TYPE else None
    if d is not None:
        repo.authorize(ctx, Action("read", _TYPE, rid))
    return d


def vread_as(repo: Repository, ctx: Context, rtype: str, rid: str,
             vid: str) -> dict[str, Any] | None:
    """The shipped definition's version ``vid``: version 1, else 404 (None: not shipped)."""
    d = read_as(repo, ctx, rtype, rid)
    if d is not None and vid != _VERSION:
        raise not_found(f"{vid!r} is not a version of {rtype}/{rid}: the server's own "
                        f"definition has version {_VERSION} only")
    return d


def history(repo: Repository, ctx: Context, rtype: str, rid: str, base: str,
            self_url: str) -> dict[str, Any] | None:
    """The history Bundle of a shipped definition: its one version (None: not shipped)."""
    d = definitions().get(rid) if rtype == _TYPE else None
    if d is None:
        return None
    repo.authorize(ctx, Action("history-instance", _TYPE, rid))
    return {"resourceType": "Bundle", "type": "history", "total": 1,
            "link": [{"relation": "self", "url": self_url}],
            "entry": [{"fullUrl": f"{base}/{_TYPE}/{rid}", "resource": d,
                       "request": {"method": "POST", "url": _TYPE},
                       "response": {"status": "201 Created", "etag": etag(1)}}]}


def search_as(repo: Repository, ctx: Context, rtype: str, items: list[tuple[str, str]],
              base: str, self_url: str) -> dict[str, Any] | None:
    """The searchset of a search by ``url`` naming shipped definitions (None: the store
    answers, as it does any other search of the type: a stored definition of such a url is
    shadowed, which is why none can be written)."""
    if rtype != _TYPE or not {k for k, _ in items} <= _URL_QUERY:
        return None
    found = _matching([v for k, v in items if k == "url"])
    if not found:
        return None
    repo.authorize(ctx, Action("search-type", _TYPE))
    return {
        "resourceType": "Bundle", "type": "searchset", "total": len(found),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [{"fullUrl": f"{base}/{_TYPE}/{d['id']}", "resource": d,
                   "search": {"mode": "match"}} for d in found],
    }


def read(request: Request, rtype: str, rid: str) -> Response | None:
    """The answer to a read of a shipped definition (None: the store answers)."""
    d = read_as(repository(request), context_of(request), rtype, rid)
    return None if d is None else fhir_response(d, request=request,
                                                headers={"ETag": etag(1)})


def vread(request: Request, rtype: str, rid: str, vid: str) -> Response | None:
    """The answer to a vread of a shipped definition (None: the store answers)."""
    d = vread_as(repository(request), context_of(request), rtype, rid, vid)
    return None if d is None else fhir_response(d, request=request,
                                                headers={"ETag": etag(1)})


def search(request: Request, rtype: str) -> Response | None:
    """The answer to a search by ``url`` naming shipped definitions (None: the store answers)."""
    out = search_as(repository(request), context_of(request), rtype,
                    list(request.query_params.multi_items()),
                    base_url(request, request.app.state.settings.base_url), str(request.url))
    return None if out is None else fhir_response(out, request=request)


def _refused(what: str, where: str | None) -> FhirError:
    # 409, not 405: the type takes writes, only what the server defines itself is read-only
    return FhirError(409, "conflict", f"{what} is the server's own OperationDefinition, "
                     "read-only: write one with another id and url", where)


def refuse_write(op: Op) -> None:
    """409 for a write (create, update, patch, delete, plain or conditional) aimed at a shipped
    definition: by its id, by criteria naming its id or canonical, or an update to its id."""
    if op.rtype != _TYPE:
        return
    where = f"{op.where}.request.url" if op.where else None
    if op.rid in definitions():
        raise _refused(f"{_TYPE}/{op.rid}", where)
    for name, value in [*(op.query or []), *(op.if_none_exist or [])]:
        if (name == "_id" and value in definitions()) or (
                name == "url" and value.partition("|")[0] in _canonicals()):
            raise _refused(f"{_TYPE}?{name}={value}", where)


def refuse_body(rtype: str, d: dict, where: str) -> None:
    """409 for a resource to be written (a create's, an update's, a patch's result) that
    carries a shipped canonical."""
    if rtype == _TYPE and d.get("url") in _canonicals():
        raise _refused(f"url {d['url']!r}", f"{where}.url" if where else f"{_TYPE}.url")
