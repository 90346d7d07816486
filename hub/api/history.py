"""History bundles (instance, type, system) from the event log, newest first, paged by cursor.

The cursor is the notification id of the last entry shown (sealed, as a search's), so pages stay put
while writes go on.

Each page's ``meta.lastUpdated`` and ``timestamp`` (R4: "used as the _since time to ask for
subsequent updates") are the time the history is complete up to, taken with its first page and
carried in the cursor (``Repository.history``): a version stamped earlier is committed and in
this history, and polling ``_since`` that time misses none written after (it may show some again:
overlap, never a gap). The largest ``lastModified`` seen is no such time: a write commits after its
stamp, and a later-stamped one may commit first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from hub.api.bundles import status_line
from hub.api.paging import link, page_size
from hub.api.responses import etag
from hub.core.config import Settings
from hub.core.errors import bad_request
from hub.core.fhirtime import parse_range
from hub.core.ingest import Context, instant_of
from hub.core.pagetokens import page_tokens
from hub.repository import Repository

# each version's status as its write answered: a DELETE answers 200 with an OperationOutcome
# (204 only to ``Prefer: return=minimal``, which the history does not know of)
_STATUS = {"created": 201, "updated": 200, "deleted": 200}


@dataclass
class HistoryQuery:
    """A history's parameters, parsed: the page size, ``_since`` and ``_at`` (microseconds), the
    unsealed ``_cursor`` (a notification id, and the time the first page was complete up to)."""
    count: int
    since_us: int | None = None
    at_us: tuple[int, int] | None = None
    cursor: int | None = None
    settled_us: int | None = None


def parse_history(items: list[tuple[str, str]], settings: Settings) -> HistoryQuery:
    """A history's query parsed, a malformed one refused (400), before anything is read."""
    params = dict(items)
    out = HistoryQuery(page_size(params, settings))
    try:
        if "_since" in params:
            out.since_us = parse_range(params["_since"])[0]
        if "_at" in params:
            out.at_us = parse_range(params["_at"])
    except ValueError as e:
        raise bad_request(str(e)) from None
    if "_cursor" in params:
        # sealed as a search's is: a bare position could be forged to map where hidden
        # versions lie (an empty page for each)
        raw = page_tokens(settings.data_dir).open(params["_cursor"])
        parts = raw.split(":")  # a notification id and a time (none in a cursor sealed before)
        if len(parts) > 2 or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
            raise bad_request("_cursor is not a page cursor of this server")
        out.cursor = int(parts[0])
        out.settled_us = int(parts[1]) if len(parts) == 2 else None
    return out


def check_history(repo: Repository, ctx: Context, items: list[tuple[str, str]],
                  settings: Settings, rtype: str | None = None, rid: str | None = None) -> None:
    """Whether ``history_bundle`` would fail (a malformed query, a forbidden or unknown
    history), nothing read: a transaction's GET checked before its writes."""
    q = parse_history(items, settings)
    repo.plan_history(ctx, rtype=rtype, rid=rid, at=q.at_us is not None)


def history_bundle(repo: Repository, ctx: Context, items: list[tuple[str, str]], base: str,
                   settings: Settings, rtype: str | None = None, rid: str | None = None) -> dict:
    """A history of the system, a type or an instance; ``items``: the query's parameters (an
    instance's asked of one never written is a 404, of one not shown a 403, as a read's, each
    audited by ``Repository.history``)."""
    params = dict(items)
    q = parse_history(items, settings)
    count, since_us, at_us, cursor = q.count, q.since_us, q.at_us, q.cursor
    tokens = page_tokens(settings.data_dir)
    # _count=0: the total only
    # the time it is complete up to: taken with the first page, carried by the cursor after it
    rows, after, settled = repo.history(ctx, rtype=rtype, rid=rid, since_us=since_us,
                                        at_us=at_us, before_nid=cursor, count=count,
                                        settle=cursor is None)
    settled = settled if cursor is None else q.settled_us
    entries = []
    # a version written over a deletion created the resource again: 201, as its write answered;
    # the deletion (version n-1) on this page or not
    shown = {(r.rtype, r.rid, r.version): r.kind for r in rows}
    before = [(r.rtype, r.rid, r.version - 1) for r in rows if r.kind == "updated"]
    deleted = {v for v in before if shown.get(v) == "deleted"}
    elsewhere = [v for v in before if v not in shown]
    if elsewhere:
        deleted |= repo.deletions(elsewhere)
    for row in rows:
        header_bytes, _, body = row.state.partition(b"\n")
        header = orjson.loads(header_bytes)
        method = (header.get("request") or {}).get("method") or (
            "DELETE" if row.kind == "deleted" else "POST" if row.version == 1 else "PUT")
        entry: dict[str, Any] = {"fullUrl": f"{base}/{row.rtype}/{row.rid}"}
        if body:
            entry["resource"] = orjson.Fragment(body)
        entry["request"] = {"method": method,
                            "url": row.rtype if method == "POST" else f"{row.rtype}/{row.rid}"}
        status = _STATUS[row.kind]
        if row.kind == "updated" and (row.rtype, row.rid, row.version - 1) in deleted:
            status = 201
        entry["response"] = {"status": status_line(status), "etag": etag(row.version),
                             "lastModified": header["lastUpdated"]}
        entries.append(entry)
    path = base + "/" + "/".join(p for p in (rtype, rid, "_history") if p)
    links = [{"relation": "self", "url": link(path, items)}]
    if after is not None:
        sealed = tokens.seal(str(after) if settled is None else f"{after}:{settled}")
        links.append({"relation": "next", "url": link(path, items, _cursor=sealed)})
    out: dict[str, Any] = {"resourceType": "Bundle"}
    if settled is not None:
        out["meta"] = {"lastUpdated": instant_of(settled)}
    out["type"] = "history"
    if settled is not None:
        out["timestamp"] = instant_of(settled)
    if at_us is None and (rid is not None or params.get("_total") == "accurate"):
        total = repo.count_history(ctx, rtype=rtype, rid=rid, since_us=since_us)
        if total is not None:
            out["total"] = total
    out["link"] = links
    if entries:  # no empty array (json.html): a page with no versions has no entry
        out["entry"] = entries
    return out

