"""Type search, for now limited to what the write-side index answers: ``_id`` and ``identifier``.

The search-index projection (next issue) replaces the matching; the bundle shape stays.
Unknown parameters are ignored with a warning in the bundle, or refused with
``Prefer: handling=strict``, as the FHIR search page asks.
"""

from __future__ import annotations

import orjson

from hub.api.paging import PAGING_PARAMS, link, page_size
from hub.conditional import IdentifierResolver
from hub.config import Settings
from hub.errors import FhirError, Issue, bad_request
from hub.events import resource_bytes
from hub.ingest import Hub


def search_bundle(hub: Hub, rtype: str, params: list[tuple[str, str]], base: str,
                  settings: Settings, strict: bool) -> dict:
    flat = dict(params)
    count = page_size(flat, settings)
    criteria, ignored = [], []
    for name, value in params:
        if name in IdentifierResolver.supported:
            criteria.append((name, value))
        elif name not in PAGING_PARAMS:
            ignored.append(name)
    if ignored and strict:
        raise FhirError(400, "not-supported",
                        f"Unsupported search parameter(s): {', '.join(sorted(set(ignored)))}")
    cursor = flat.get("_cursor")
    if criteria:
        ids = hub.resolver.match(rtype, criteria)
        total = len(ids)
        start = 0
        if cursor is not None:
            if not cursor.isdigit():
                raise bad_request("_cursor is not a page cursor of this server")
            start = int(cursor)
        page, more = ids[start:start + count], count > 0 and start + count < total
        next_cursor = str(start + count)
    else:
        page = hub.store.list_ids(rtype, cursor, count + 1)
        more, page = count > 0 and len(page) > count, page[:count]
        next_cursor = page[-1] if page else ""
        total = hub.store.count_current(rtype) if flat.get("_total") != "none" else None
    entries = []
    for rid in page:
        stored = hub.store.latest(rtype, rid)
        if stored is None or stored.topic.endswith("Deleted"):
            continue
        entries.append({"fullUrl": f"{base}/{rtype}/{rid}",
                        "resource": orjson.Fragment(resource_bytes(stored)),
                        "search": {"mode": "match"}})
    if ignored:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [
            Issue("not-supported",
                  f"Ignored unsupported search parameter(s): {', '.join(sorted(set(ignored)))}",
                  "warning").to_json()]}, "search": {"mode": "outcome"}})
    path = f"{base}/{rtype}"
    links = [{"relation": "self", "url": link(path, params)}]
    if more:
        links.append({"relation": "next", "url": link(path, params, _cursor=next_cursor)})
    out = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        out["total"] = total
    out["link"] = links
    out["entry"] = entries
    return out
