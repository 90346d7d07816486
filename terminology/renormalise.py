"""Renormalisation by replay: the ConceptMaps applied again to the resources the unmapped-codes
worklist lists, each that gains a standard coding written as a new version through the hub's
normal write path (an update with the read version as If-Match, the event's source institution
kept, feed ``terminology-renormalise``). ``hub terminology renormalise`` and the console's code
mapping page run it; a second run finds nothing to change.
"""

from __future__ import annotations

from collections import Counter

import orjson

FEED = "terminology-renormalise"
CHUNK = 200


def mapped_codes(model, normaliser, institution: str | None = None) -> list[tuple[str, str]]:
    """The (system, code) pairs of the worklist that the ConceptMaps now map."""
    return sorted({(r["system"], r["code"]) for r in model.worklist(institution)
                   if normaliser.targets(r["system"], r["code"])})


def renormalise(hub, model, normaliser, institution: str | None = None, progress=None) -> Counter:
    """Write new versions of the listed resources that gain a standard coding; counts by outcome."""
    from hub.core import resource as res
    from hub.core.errors import FhirError
    from hub.core.ingest import Context, Op

    counts: Counter = Counter()
    streams = model.streams(institution, mapped_codes(model, normaliser, institution))
    for i in range(0, len(streams), CHUNK):
        by_source: dict[str, list] = {}
        for stream in streams[i:i + CHUNK]:
            rtype, _, rid = stream.partition("/")
            stored = hub.store.latest(rtype, rid)
            counts["read"] += 1
            if stored is None or stored.topic.endswith("Deleted"):
                counts["gone"] += 1
                continue
            header, _, body = stored.state.partition(b"\n")
            d = res.parse_json(body)
            before = res.content_hash(d)
            normaliser.normalise(d)
            if res.content_hash(d) == before:
                counts["unchanged"] += 1
                continue
            try:
                res.validate(rtype, orjson.dumps(d), d)
            except FhirError:
                counts["invalid"] += 1
                continue
            source = (orjson.loads(header).get("source") or {}).get("institution") or ""
            by_source.setdefault(source, []).append(
                Op("PUT", rtype, rid, d, if_match=stored.originator_version, url=stream))
        for source, ops in by_source.items():
            ctx = Context(source={"feed": FEED, **({"institution": source} if source else {})})
            for r in hub.execute(ops, ctx, atomic=False):
                if isinstance(r, FhirError):
                    counts["conflict" if r.status == 412 else "failed"] += 1
                else:
                    counts["updated"] += 1
        if progress is not None:
            progress(len(streams[i:i + CHUNK]))
    return counts


def outcome(counts: Counter) -> str:
    return (f"{counts['updated']} updated, {counts['unchanged']} unchanged, "
            f"{counts['conflict']} changed meanwhile, {counts['invalid'] + counts['failed']} failed")
