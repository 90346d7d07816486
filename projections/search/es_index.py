"""The search index on Elasticsearch: one index per resource type behind an alias, fed by the log.

The second implementation of the search index (the first: ``sqlite_index``); its queries are
``es_query``. Each resource's current version is one document (id: the resource id) holding the
values ``extract`` gives, one nested object per value, grouped by parameter type as the SQLite
tables are (``str``, ``tok``, ``dt``, ``num``, ``qty``, ``ref``, ``uri``, ``cmp``; ``p`` names the
parameter), so one value's parts (a system and its code, a range's two ends) are tested together.
A sort key per parameter (``sort.<code>.min``/``max``) sits on the document itself: sorting on a
nested field is an engine feature not every ES-compatible server has.

Mappings are derived from the search-parameter table (``params_for``), per type, when the type's
first resource arrives. Writes are bulk requests with the event's stream version as an external
version: a replayed batch (a crash before the position was stored, or two followers) changes
nothing, and an older version never overwrites a newer one. The position lives in the cluster too
(``<prefix>-tracking``), so any search node reads the index and its position together.

A rebuild (``reset``) writes a new generation of indexes while the aliases still point at the
old one; at the log's end (``caught_up``) the aliases move in one request and the old generation
is deleted, so searches never see a half-built index.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, cast

import orjson
from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC
from hub.core.fhirtime import parse_range, zone_changed, zone_name
from hub.core.redact import redact_url
from projections.contract import nothing_to_apply
from projections.search import fulltext
from projections.search.extract import (
    OLDER_RULES,
    RULES,
    DateRange,
    Quantity,
    Str,
    Token,
    ValueRange,
    extract,
    normalize,
)
from projections.search.params import indexed_params
from projections.search.plan import UCUM

NAME = "search-es"
log = logging.getLogger("projections.search.es_index")
LONG_EDGE = 2 ** 62  # an open date range's end (µs), within a long
# Elasticsearch refuses a whole document holding a keyword of more than 32,766 bytes (an
# "immense term"), and the follower would retry it for ever. A keyword value longer than 8,191
# characters (of up to 4 bytes each) is indexed as its first KEPT characters and the SHA-256 of
# the whole (``keyword``), and the values a search compares with are written alike (es_query):
# such a value is found by itself and by no other; a prefix or a :contains beyond KEPT
# characters is asked only as far as that. The mapping's ignore_above is the guard behind it.
KEYWORD_CHARS = 8191
KEPT = KEYWORD_CHARS - 65  # then '#' and 64 hex digits
# values one document may hold (each value of a parameter is a nested object; the engine's
# default is 10,000, which a Group's members or a List's items pass): a document over it is
# refused, and indexed reduced (``ElasticsearchIndex.apply``)
NESTED_LIMIT = 50_000
# the settings of every index the hub makes, raised on one it finds lower (an older hub's)
INDEX_LIMITS = {"max_result_window": 100_000, "mapping.nested_objects.limit": NESTED_LIMIT}
ENGINE_DEFAULTS = {"max_result_window": 10_000, "mapping.nested_objects.limit": 10_000}
REFUSALS_KEPT = 20  # the latest refused resources named in the state


def keyword(value: str) -> str:
    """``value`` as a keyword field holds it: itself, or when too long its start and hash."""
    if len(value) <= KEYWORD_CHARS:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[:KEPT]}#{digest}"


_KEYWORD: dict[str, Any] = {"type": "keyword", "ignore_above": KEYWORD_CHARS}
_LONG: dict[str, Any] = {"type": "long"}
_DOUBLE: dict[str, Any] = {"type": "double"}
NESTED: dict[str, dict[str, dict[str, Any]]] = {
    "str": {"norm": _KEYWORD, "exact": _KEYWORD},
    "tok": {"system": _KEYWORD, "code": _KEYWORD, "text": {"type": "text"},
            "type_system": _KEYWORD, "type_code": _KEYWORD},
    "dt": {"lo": _LONG, "hi": _LONG},
    "num": {"value": _DOUBLE},
    "qty": {"value": _DOUBLE, "system": _KEYWORD, "code": _KEYWORD, "cvalue": _DOUBLE,
            "ccode": _KEYWORD},
    "ref": {"target": _KEYWORD, "type": _KEYWORD, "id_system": _KEYWORD, "id_value": _KEYWORD},
    "uri": {"uri": _KEYWORD},
    # cc, cnum: a UCUM quantity component in its canonical unit (metric prefixes folded);
    # rlo, rhi (crlo, crhi in the canonical unit): a Range component's ends
    "cmp": {"c1": _KEYWORD, "c2": _KEYWORD, "num": _DOUBLE, "lo": _LONG, "hi": _LONG,
            "cc": _KEYWORD, "cnum": _DOUBLE, "rlo": _DOUBLE, "rhi": _DOUBLE, "crlo": _DOUBLE,
            "crhi": _DOUBLE},
    # a Range of a number or quantity parameter: [lo, hi] (clo, chi: in the canonical unit)
    "rng": {"lo": _DOUBLE, "hi": _DOUBLE, "system": _KEYWORD, "code": _KEYWORD,
            "clo": _DOUBLE, "chi": _DOUBLE, "ccode": _KEYWORD},
}
PATH = {"string": "str", "token": "tok", "date": "dt", "number": "num", "quantity": "qty",
        "reference": "ref", "uri": "uri", "composite": "cmp"}
# the value a parameter sorts by, as the SQLite planner's SORT_COLUMN
SORT_FIELD = {"string": ("norm", _KEYWORD), "token": ("code", _KEYWORD), "date": ("lo", _LONG),
              "number": ("value", _DOUBLE), "quantity": ("cvalue", _DOUBLE),
              "reference": ("target", _KEYWORD), "uri": ("uri", _KEYWORD)}
_SAFE = re.compile(r"[^a-z0-9_-]")


def edge(x: float) -> int:
    """A date bound (µs, maybe infinite) as a long."""
    if math.isinf(x):
        return LONG_EDGE if x > 0 else -LONG_EDGE
    return max(-LONG_EDGE, min(LONG_EDGE, int(x)))


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def mapping(rtype: str, analyzer: str = "standard") -> dict:
    """The mapping of ``rtype``'s index: the nested value groups and one sort key per parameter
    of the type's search-parameter table."""
    props: dict[str, Any] = {
        "rid": _KEYWORD, "pk": _LONG, "version": _LONG, "updated": _LONG,
        "geo": {"properties": {"lat": _DOUBLE, "lon": _DOUBLE}},
        "narrative": {"type": "text", "analyzer": analyzer},
        "content": {"type": "text", "analyzer": analyzer},
    }
    for path, fields in NESTED.items():
        props[path] = {"type": "nested", "properties": {"p": _KEYWORD, **fields}}
    sort: dict[str, Any] = {}
    for code, p in indexed_params(rtype).items():
        if p.type in SORT_FIELD:
            kind = SORT_FIELD[p.type][1]
            sort[code] = {"properties": {"min": kind, "max": kind}}
    props["sort"] = {"properties": sort}
    return {"dynamic": False, "properties": props}


def _bounded(x: float) -> float:
    return max(-1.7e308, min(1.7e308, x))  # JSON has no infinities: an open end is the largest


def _composite(value: tuple) -> dict:
    first, second = value[0], value[1] if len(value) > 1 else None
    out: dict[str, Any] = {"c1": f"{first.system or ''}|{first.code or ''}"
                           if isinstance(first, Token) else str(first)}
    if isinstance(second, Token):
        out["c2"] = f"{second.system or ''}|{second.code or ''}"
    elif isinstance(second, Quantity):
        out["c2"], out["num"] = f"{second.system or ''}|{second.code or ''}", _finite(second.value)
        if second.system == UCUM and second.canonical_code:
            out["cc"], out["cnum"] = second.canonical_code, _finite(second.canonical_value)
    elif isinstance(second, ValueRange):
        out["c2"] = f"{second.system or ''}|{second.code or ''}"
        out["rlo"], out["rhi"] = _bounded(second.lo), _bounded(second.hi)
        if second.system == UCUM and second.canonical_code:
            out["cc"] = second.canonical_code
            out["crlo"], out["crhi"] = _bounded(second.canonical_lo), _bounded(second.canonical_hi)
    elif isinstance(second, DateRange):
        out["lo"], out["hi"] = edge(second.start), edge(second.end)
    elif isinstance(second, Str):
        out["c2"] = second.norm
    elif isinstance(second, (int, float)):
        out["num"] = _finite(second)
    elif second is not None:
        out["c2"] = str(second)
    return out


def _values(ptype: str, code: str, values: list) -> tuple[list[dict], Any]:
    """(nested objects, the sort value list) of one parameter's values."""
    if ptype == "string":
        return [{"p": code, "norm": v.norm, "exact": v.value} for v in values], \
            [v.norm for v in values]
    if ptype == "token":
        return [{"p": code, "system": v.system, "code": v.code,
                 "text": normalize(v.text) if v.text else None, "type_system": v.type_system,
                 "type_code": v.type_code} for v in values], \
            [v.code for v in values if v.code is not None]
    if ptype == "date":
        rows = [{"p": code, "lo": edge(v.start), "hi": edge(v.end)} for v in values]
        return rows, [r["lo"] for r in rows]
    if ptype == "number":
        nums = [x for x in (_finite(v) for v in values) if x is not None]
        return [{"p": code, "value": x} for x in nums], nums
    if ptype == "quantity":
        rows = [{"p": code, "value": _finite(v.value), "system": v.system, "code": v.code,
                 "cvalue": _finite(v.canonical_value), "ccode": v.canonical_code} for v in values
                if type(v) is Quantity]
        return rows, [r["cvalue"] for r in rows if r["cvalue"] is not None]
    if ptype == "reference":
        return [{"p": code, "target": v.reference, "type": v.type,
                 "id_system": v.identifier_system, "id_value": v.identifier_value}
                for v in values], [v.reference for v in values if v.reference]
    if ptype == "uri":
        return [{"p": code, "uri": v} for v in values], list(values)
    if ptype == "composite":
        return [{"p": code, **_composite(v)} for v in values], []
    return [], []


def _ranges(code: str, values: list) -> list[dict]:
    """The ``rng`` rows of the Range values among a number or quantity parameter's values."""
    return [{"p": code, "lo": _bounded(v.lo), "hi": _bounded(v.hi), "system": v.system,
             "code": v.code, "clo": _bounded(v.canonical_lo), "chi": _bounded(v.canonical_hi),
             "ccode": v.canonical_code} for v in values if type(v) is ValueRange]


def document(rtype: str, rid: str, version: int, updated: float, resource: dict,
             pk: int) -> dict:
    """The index document of one resource version."""
    params = indexed_params(rtype)
    doc: dict[str, Any] = {"rid": rid, "pk": pk, "version": version, "updated": edge(updated)}
    sort: dict[str, dict] = {}
    for code, values in extract(resource).items():
        p = params.get(code)
        if p is None or code in ("_id", "_lastUpdated") or p.type not in PATH:
            continue
        rows, keys = _values(p.type, code, values)
        if rows:
            doc.setdefault(PATH[p.type], []).extend(rows)
        if p.type in ("number", "quantity") and (ranges := _ranges(code, values)):
            doc.setdefault("rng", []).extend(ranges)
        if keys and p.type in SORT_FIELD:
            sort[code] = {"min": min(keys), "max": max(keys)}
    for path, fields in NESTED.items():
        for row in doc.get(path, ()):
            for k, v in row.items():
                if isinstance(v, str) and len(v) > KEYWORD_CHARS and fields.get(k, _KEYWORD) is _KEYWORD:
                    row[k] = keyword(v)
    if sort:
        doc["sort"] = {code: {k: keyword(v) if isinstance(v, str) else v
                              for k, v in bounds.items()} for code, bounds in sort.items()}
    if fulltext.enabled(rtype):
        doc["narrative"] = fulltext.narrative(resource)
        doc["content"] = fulltext.content(resource)
    if rtype == "Location":
        position = resource.get("position") or {}
        lat, lon = _finite(position.get("latitude")), _finite(position.get("longitude"))
        if lat is not None and lon is not None:
            doc["geo"] = {"lat": lat, "lon": lon}
    return doc


def _fresh_state() -> dict:
    """The state of an index that holds nothing yet (read in today's zone, by today's rules)."""
    return {"position": 0, "generation": 1, "building": None, "zone": zone_name(), "rules": RULES}


class ElasticsearchIndex:
    """The ``ReadModel`` writing the search index into Elasticsearch (``url``), under index
    names starting with ``prefix``."""

    name = NAME
    types: tuple[str, ...] = ()  # every resource type

    def __init__(self, url: str, prefix: str = "hub", analyzer: str = "standard",
                 client: Any = None):
        from elasticsearch import Elasticsearch

        self.url, self.prefix, self.analyzer = url, _SAFE.sub("", prefix.lower()) or "hub", analyzer
        self.es = client if client is not None else Elasticsearch(url, request_timeout=60)
        self.tracking_index = f"{self.prefix}-tracking"
        self._made: set[str] = set()  # concrete indexes known to exist
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        try:
            self._state = self._load()
        except (TransportError, ApiError) as e:
            # the cluster away: the hub starts all the same (its searches answer 503, this
            # model's follower retries); the state is read again before anything is written
            log.warning("Elasticsearch at %s does not answer (%s): its searches and index wait "
                        "for it", redact_url(url), type(e).__name__)
            self._state = _fresh_state()

    # -- names and state ---------------------------------------------------------------------------

    def alias(self, rtype: str) -> str:
        """The name searches use for ``rtype``'s index."""
        return f"{self.prefix}-{rtype.lower()}"

    def _concrete(self, rtype: str, generation: int) -> str:
        return f"{self.alias(rtype)}-g{generation}"

    def _load(self) -> dict:
        from elasticsearch import NotFoundError

        try:
            found = self.es.get(index=self.tracking_index, id=self.name)
        except NotFoundError:
            return _fresh_state()
        state = dict(found["_source"])
        # the zone dates without one were read in (hub.core.fhirtime): an index written before
        # it was recorded read them as UTC
        state.setdefault("zone", "+00:00" if state.get("position") else zone_name())
        # the extraction rules (extract.RULES): an index written before they were recorded holds
        # an older release's values
        state.setdefault("rules", 0 if state.get("position") else RULES)
        return state

    def _save(self) -> None:
        self.es.index(index=self.tracking_index, id=self.name, document=self._state,
                      refresh=True)

    @property
    def generation(self) -> int:
        return int(self._state["building"] or self._state["generation"])

    @property
    def bulk(self) -> bool:
        return self._state.get("building") is not None

    def position(self) -> int:
        self._state = self._load()
        return int(self._state["position"])

    def followed_log(self) -> str | None:
        self._state = self._load()
        return self._state.get("log")

    def follow_log(self, log_id: str) -> None:
        self._state = self._load()
        self._state["log"] = log_id
        self._save()

    def _ensure(self, rtype: str) -> str:
        name = self._concrete(rtype, self.generation)
        if name in self._made:
            return name
        if self.es.indices.exists(index=name):
            self._raise_limits(name)
        else:
            body: dict[str, Any] = {"mappings": mapping(rtype, self.analyzer),
                                    "settings": {"index": dict(INDEX_LIMITS)}}
            if not self.bulk:  # live: searched at once; a rebuild's are aliased at its end
                body["aliases"] = {self.alias(rtype): {}}
            from elasticsearch import BadRequestError

            try:
                self.es.indices.create(index=name, **body)
            except BadRequestError as e:  # created by another follower meanwhile
                if "already_exists" not in str(e):
                    raise
        self._made.add(name)
        return name

    def _raise_limits(self, name: str) -> None:
        """An index created by an older hub, or by hand, under lower limits (the engine's default
        of 10,000 nested objects: a 12,000-member Group refused) takes ours. Both are dynamic
        settings, and each is changed only where it is lower, so that a follower's start does
        not rewrite the cluster's state once per index."""
        found: dict[str, dict] = dict(self.es.indices.get_settings(index=name, flat_settings=True))
        have: dict[str, str] = next(iter(found.values()), {}).get("settings", {})
        lower = {k: v for k, v in INDEX_LIMITS.items()
                 if int(have.get(f"index.{k}", ENGINE_DEFAULTS[k])) < v}
        if lower:
            self.es.indices.put_settings(index=name, settings={"index": lower})
            log.info("%s: raised %s", name, ", ".join(f"{k} to {v}" for k, v in lower.items()))

    # -- the ReadModel contract ------------------------------------------------------------------

    def apply(self, notifications: Sequence[Notification], up_to: int | None = None,
              since: int | None = None) -> None:
        last = max(notifications[-1].id if notifications else 0, up_to or 0)
        done = self.position()
        if nothing_to_apply(last, done, since):
            return  # applied already, or read before a rebuild's reset
        newest: dict[str, Notification] = {}
        first: dict[str, int] = {}  # the notification id a resource entered the index with
        for n in notifications:
            if n.id <= done or n.topic not in KIND_OF_TOPIC:
                continue
            stream = cast(str, n.originator_id)
            newest[stream] = n
            if n.originator_version == 1:
                first.setdefault(stream, n.id)
        pks = self._pks([s for s, n in newest.items() if s not in first
                         and KIND_OF_TOPIC[n.topic] != "deleted"])
        actions: list[bytes] = []
        docs: dict[tuple[str, str], tuple[str, dict, dict]] = {}
        for stream, n in newest.items():
            rtype, rid = stream.split("/", 1)
            index = self._ensure(rtype)
            meta = {"_index": index, "_id": rid, "version": n.originator_version,
                    "version_type": "external_gte"}
            if KIND_OF_TOPIC[n.topic] == "deleted":
                actions.append(orjson.dumps({"delete": meta}))
                continue
            header, _, body = n.state.partition(b"\n")
            updated = parse_range(orjson.loads(header)["lastUpdated"])[0]
            doc = document(rtype, rid, n.originator_version, updated, orjson.loads(body),
                           first.get(stream) or pks.get(stream) or n.id)
            actions.append(orjson.dumps({"index": meta}))
            actions.append(orjson.dumps(doc))
            docs[(index, rid)] = rtype, meta, doc
        if actions:
            refused = self._bulk(actions)
            if refused:
                self._index_reduced(refused, docs)
        self._state["position"] = last
        self._save()

    def _index_reduced(self, refused: list[tuple[str, str, str]],
                       docs: dict[tuple[str, str], tuple[str, dict, dict]]) -> None:
        """Documents the engine refused (over a limit of its own): indexed without their values,
        so that the log goes on past them and they are still found by _id and _lastUpdated; the
        refusal is kept in the state, and ``stale`` says it."""
        actions = []
        for index, rid, reason in refused:
            _, meta, doc = docs[(index, rid)]
            actions.append(orjson.dumps({"index": meta}))
            actions.append(orjson.dumps({**{k: doc[k] for k in ("rid", "pk", "version", "updated")},
                                         "unindexed": reason}))
        if self._bulk(actions):
            raise RuntimeError(f"Elasticsearch refused even the reduced document of {refused[0][1]}")
        generation = str(self.generation)
        kept = self._state.setdefault("refused", {}).setdefault(generation, {"count": 0, "last": []})
        for index, rid, reason in refused:
            resource = f"{docs[(index, rid)][0]}/{rid}"
            log.warning("Elasticsearch refused %s, indexed without its values: %s", resource, reason)
            kept["count"] += 1
            kept["last"] = [*kept["last"], {"resource": resource, "reason": reason}][-REFUSALS_KEPT:]

    def _bulk(self, actions: list[bytes]) -> list[tuple[str, str, str]]:
        """Send ``actions``; (index, id, reason) of each document the engine refused as such (a
        400: over one of its limits), raising for any other failure."""
        body = b"\n".join(actions) + b"\n"
        # the NDJSON body as it is (the client takes bytes; its typing says mappings only);
        # refreshed at once (a search right after a write must see it), but not during a
        # rebuild, whose indexes nobody searches before its end
        answer = self.es.bulk(operations=body,  # type: ignore[arg-type]
                              refresh=not self.bulk)
        if not answer.get("errors"):
            return []
        refused = []
        for item in answer["items"]:
            (op, result), = item.items()
            status = result.get("status", 200)
            # 409: the index holds this version or a newer one (a replay); 404: a delete of
            # something never indexed
            if status < 300 or status == 409 or (op == "delete" and status == 404):
                continue
            error = result.get("error")
            if op == "index" and status == 400:
                reason = error.get("reason") if isinstance(error, dict) else error
                refused.append((str(result.get("_index")), str(result.get("_id")),
                                str(reason)[:300]))
                continue
            raise RuntimeError(f"Elasticsearch refused a {op} of {result.get('_id')}: {error}")
        return refused

    def _pks(self, streams: Iterable[str]) -> dict[str, int]:
        """The index keys of resources already indexed (kept by their later versions)."""
        by_type: dict[str, list[str]] = {}
        for s in streams:
            rtype, rid = s.split("/", 1)
            by_type.setdefault(rtype, []).append(rid)
        out: dict[str, int] = {}
        for rtype, rids in by_type.items():
            index = self._ensure(rtype)
            found = self.es.mget(index=index, ids=rids, source_includes=["pk"])
            for d in found["docs"]:
                if d.get("found"):
                    out[f"{rtype}/{d['_id']}"] = int(d["_source"]["pk"])
        return out

    def reset(self) -> None:
        """Start a new generation from the log's start; searches keep the old one until
        ``caught_up``."""
        self._state = self._load()
        old_building = self._state.get("building")
        if old_building is not None:  # an interrupted rebuild: its indexes start again
            self._delete(self._indexes(f"{self.prefix}-*-g{old_building}"))
        self._state["building"] = int(self._state["generation"]) + 1
        self._state["position"] = 0
        self._state.get("refused", {}).pop(str(self._state["building"]), None)
        self._made.clear()
        self._save()

    def caught_up(self) -> None:
        """End a rebuild: the aliases move to the new generation in one request, and the old
        generation goes."""
        if not self.bulk:
            return
        old, new = int(self._state["generation"]), int(self._state["building"])
        actions: list[dict] = []
        olds, news = self._indexes(f"{self.prefix}-*-g{old}"), self._indexes(f"{self.prefix}-*-g{new}")
        if news:
            self.es.indices.refresh(index=",".join(news))
        for name in news:
            actions.append({"add": {"index": name, "alias": name.rsplit("-g", 1)[0]}})
        for name in olds:
            actions.append({"remove": {"index": name, "alias": name.rsplit("-g", 1)[0]}})
        if actions:
            self.es.indices.update_aliases(actions=actions)
        self._delete(olds)
        self._state["generation"], self._state["building"] = new, None
        self._state["zone"] = zone_name()  # the generation now searched was read in today's zone
        self._state["rules"] = RULES  # by today's rules
        self._state["refused"] = {k: v for k, v in self._state.get("refused", {}).items()
                                  if k == str(new)}
        self._made.clear()
        self._save()

    def stale(self) -> str | None:
        """The zone's change, older extraction rules, and the resources the engine refused to
        index with their values (found only by _id and _lastUpdated)."""
        rules = None if self._state.get("rules", RULES) >= RULES else (
            f"written under an older release's rules ({OLDER_RULES}) until "
            "`hub projections rebuild search-es`")
        said = [s for s in (zone_changed(self._state.get("zone", zone_name()), "search-es"),
                            rules, self._refusals()) if s]
        return "; ".join(said) or None

    def _refusals(self) -> str | None:
        kept = self._state.get("refused", {}).get(str(self._state["generation"]))
        if not kept or not kept.get("count"):
            return None
        last = kept["last"][-1]
        return (f"Elasticsearch refused {kept['count']} resource(s) as they are, indexed without "
                f"their values (searches by them miss them), the latest {last['resource']}: "
                f"{last['reason']}")

    def _indexes(self, pattern: str) -> list[str]:
        return list(self.es.indices.get(index=pattern, allow_no_indices=True,
                                        expand_wildcards="open"))

    def _delete(self, names: list[str]) -> None:
        # by name: a cluster refuses wildcard deletes (action.destructive_requires_name)
        for i in range(0, len(names), 50):
            self.es.indices.delete(index=",".join(names[i:i + 50]), ignore_unavailable=True)

    def drop(self) -> None:
        """Delete every index of this prefix (tests, and ``hub projections`` starting over)."""
        self._delete(self._indexes(f"{self.prefix}-*"))
        self._made.clear()
        self._state = _fresh_state()

    def stats(self) -> dict[str, int]:
        from elasticsearch import NotFoundError

        try:
            n = self.es.count(index=f"{self.prefix}-*,-{self.tracking_index}",
                              ignore_unavailable=True)["count"]
        except NotFoundError:
            n = 0
        return {"documents": int(n)}

    def close(self) -> None:
        self.es.close()
