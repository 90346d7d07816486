"""Search plans (query.py) answered from Elasticsearch (es_index.py): the second ``SearchBackend``.

Every criterion becomes a filter clause: a value test runs inside a ``nested`` query on the value
group of its parameter type, with ``p`` naming the parameter, so the parts of one value are tested
together, as one SQLite index row is. The tests are those of ``sqlite_query`` written in the query
DSL; a criterion that needs another type's matches first (a chain, ``_has``, ``near``) runs that
search and filters by the references or ids it found (at most ``MAX_INNER``: beyond, the search is
refused as too broad, with a 400).

Pages are read with ``search_after`` on (sort keys, index key); a cursor carries the last row's
sort values, and the page before is read in the reverse order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from hub.core.errors import bad_request
from hub.core.resource import RESOURCE_TYPES
from projections.search.backend import (
    INCLUDE_DEPTH,
    Page,
    Row,
    SearchBackend,
    decode_cursor,
    encode_cursor,
)
from projections.search.es_index import PATH, SORT_FIELD, ElasticsearchIndex, edge, keyword
from projections.search.extract import holds_ranges, normalize
from projections.search.params import params_for
from projections.search.query import (
    Criterion,
    Has,
    Include,
    QuantityValue,
    Query,
    RangeValue,
    RefValue,
    TokenSet,
    TokenValue,
    approx,
    local_reference,
    range_bounds,
    text_query,
    uri_prefixes,
)

# Elasticsearch refuses a prefix longer than index.max_regex_length (1,000 by default): a longer
# prefix or :contains value is asked as far as that (a few more matches, never fewer); also below
# es_index.KEPT, where a long keyword value's hash begins
PATTERN_CHARS = 1000
MAX_INNER = 10_000  # ids or references a chain, _has or near may stand for
UCUM = "http://unitsofmeasure.org"
NONE: dict = {"bool": {"must_not": [{"match_all": {}}]}}
ALL: dict = {"match_all": {}}
_TYPE_OF = {t.lower(): t for t in RESOURCE_TYPES}


def _and(*clauses: dict) -> dict:
    return clauses[0] if len(clauses) == 1 else {"bool": {"filter": list(clauses)}}


def _or(clauses: list[dict]) -> dict:
    if not clauses:
        return NONE
    return clauses[0] if len(clauses) == 1 else \
        {"bool": {"should": clauses, "minimum_should_match": 1}}


def _not(clause: dict) -> dict:
    return {"bool": {"must_not": [clause]}}


def _term(field: str, value: Any) -> dict:
    return {"term": {field: value}}


def _range(field: str, **bounds: Any) -> dict:
    return {"range": {field: bounds}}


def _missing(field: str) -> dict:
    return _not({"exists": {"field": field}})


def _wild(s: str) -> str:
    """``s`` as literal text inside a wildcard pattern."""
    return "".join("\\" + ch if ch in "*?\\" else ch for ch in s)


def _cut(value: Any) -> Any:
    return keyword(value) if isinstance(value, str) else value


def _cut_prefix(value: Any) -> Any:
    return value[:PATTERN_CHARS] if isinstance(value, str) and len(value) > PATTERN_CHARS else value


def _cut_pattern(pattern: str) -> str:
    """A wildcard pattern asked only as far as PATTERN_CHARS: what it asks beyond is dropped."""
    if len(pattern) <= PATTERN_CHARS:
        return pattern
    head = pattern[:PATTERN_CHARS - 1]
    escapes = len(head) - len(head.rstrip("\\"))
    return head[:len(head) - escapes % 2] + "*"  # never end on half an escape


def cut_values(node: Any) -> Any:
    """The query with the values it compares keywords with written as the index writes them
    (``es_index.keyword``), so that a value too long for a keyword is found by itself."""
    if isinstance(node, list):
        return [cut_values(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "term" and isinstance(value, dict):
            out[key] = {f: _cut(v) for f, v in value.items()}
        elif key == "prefix" and isinstance(value, dict):
            out[key] = {f: _cut_prefix(v) for f, v in value.items()}
        elif key == "terms" and isinstance(value, dict):
            out[key] = {f: [_cut(x) for x in v] if isinstance(v, list) else v
                        for f, v in value.items()}
        elif key == "wildcard" and isinstance(value, dict):
            out[key] = {f: {**v, "value": _cut_pattern(v["value"])} if isinstance(v, dict) else v
                        for f, v in value.items()}
        else:
            out[key] = cut_values(value)
    return out


class ElasticsearchSearch(SearchBackend):
    """The ``SearchBackend`` over the Elasticsearch search index."""

    def __init__(self, index: ElasticsearchIndex):
        self.index = index
        self.es = index.es

    # -- criteria ---------------------------------------------------------------------------------

    def query(self, q: Query) -> dict:
        clauses = [_or([self._criterion(q.rtype, c) for c in group]) for group in q.where]
        return {"bool": {"filter": clauses}} if clauses else ALL

    def _p(self, rtype: str, code: str, path: str) -> dict:
        """The value rows of parameter ``code`` (an alias: the parameters it is stored as)."""
        p = params_for(rtype).get(code)
        if p is None or not p.stored_as:
            test = _term(f"{path}.p", code)
        else:
            test = {"terms": {f"{path}.p": list(p.stored_as)}}
            if p.target_type:
                test = _and(test, _term(f"{path}.type", p.target_type))
        return test

    def _nested(self, rtype: str, code: str, ptype: str, test: dict | None) -> dict:
        path = PATH[ptype]
        inner = self._p(rtype, code, path)
        return {"nested": {"path": path, "query": _and(inner, test) if test else inner}}

    def _criterion(self, rtype: str, c: Criterion) -> dict:
        if c.param == "_id":
            if c.modifier == "missing":
                return NONE if c.value else ALL
            test = {"ids": {"values": [c.value.code]}}
            return _not(test) if c.modifier == "not" else test
        if c.param == "_lastUpdated":
            if c.modifier == "missing":
                return NONE if c.value else ALL
            return _date_test(c.prefix, c.value, "updated", "updated", point=True)
        if c.type == "has":
            return self._has(rtype, c.value)
        if c.type == "geo":
            return {"ids": {"values": self._near(rtype, *c.value)}}
        if c.type == "fulltext":
            column, groups = c.value
            return _or([_and(*({"match_phrase": {column: " ".join(tokens)}} for tokens in g))
                        for g in groups])
        if c.modifier == "missing":
            present = self._nested(rtype, c.param, c.type, None)
            if c.type != "composite" and holds_ranges(rtype, c.param):  # a Range is a value too
                present = _or([present, self._ranged(rtype, c.param, None)])
            return _not(present) if c.value else present
        if c.chain is not None:
            (target,) = c.chain.rtypes
            ids = self._ids(Query(target, where=[[c.chain.criterion]]))
            if not ids:
                return NONE
            refs = [f"{target}/{i}" for i in ids]
            if c.chain.base:  # stored absolute on this server: the same targets
                refs += [f"{c.chain.base}/{r}" for r in refs]
            return self._nested(rtype, c.param, "reference", {"terms": {"ref.target": refs}})
        test = self._value(c, PATH[c.type], rtype)
        if c.modifier == "not":
            return _not(self._nested(rtype, c.param, c.type, test))
        if c.type != "composite" and holds_ranges(rtype, c.param):
            return _or([self._nested(rtype, c.param, c.type, test),
                        self._ranged(rtype, c.param, _range_test(c.prefix, c.value))])
        return self._nested(rtype, c.param, c.type, test)

    def _ranged(self, rtype: str, code: str, test: dict | None) -> dict:
        """The ``rng`` rows (Range values) of ``code``; an index made before they were mapped
        has none (``hub projections rebuild search-es`` maps and fills them)."""
        inner = self._p(rtype, code, "rng")
        return {"nested": {"path": "rng", "query": _and(inner, test) if test else inner,
                           "ignore_unmapped": True}}

    def _has(self, rtype: str, h: Has) -> dict:
        me = rtype + "/"
        targets: set[str] = set()
        for source in self._sources(Query(h.rtype, where=[[h.criterion]]), ["ref"]):
            for v in source.get("ref") or ():
                t = local_reference(v.get("target") or "", h.base)  # absolute on this server
                if t.startswith(me) and self._is_param(h.rtype, h.param, v):
                    targets.add(t[len(me):])
        return {"ids": {"values": sorted(targets)}} if targets else NONE

    @staticmethod
    def _is_param(rtype: str, code: str, v: dict) -> bool:
        p = params_for(rtype).get(code)
        if p is None or not p.stored_as:
            return v.get("p") == code
        return v.get("p") in p.stored_as and (not p.target_type or v.get("type") == p.target_type)

    def _near(self, rtype: str, lat: float, lon: float, km: float) -> list[str]:
        ky, kx = 111.32, 111.32 * max(math.cos(math.radians(lat)), 1e-6)
        dy, dx = km / ky, km / kx
        box = _and(_range("geo.lat", gte=lat - dy, lte=lat + dy),
                   _range("geo.lon", gte=lon - dx, lte=lon + dx))
        out = []
        for rid, source in self._hits(rtype, box, ["geo"]):
            g = source.get("geo") or {}
            if ((g["lat"] - lat) * ky) ** 2 + ((g["lon"] - lon) * kx) ** 2 <= km * km:
                out.append(rid)
        return out

    def _value(self, c: Criterion, path: str, rtype: str | None = None) -> dict:
        """The test of one alternative on a value row of ``path``."""
        v, t, f = c.value, c.type, (lambda name: f"{path}.{name}")
        if t == "string":
            if c.modifier == "exact":
                return _term(f("exact"), v)
            n = normalize(v)
            if c.modifier == "contains":
                return {"wildcard": {f("norm"): {"value": f"*{_wild(n)}*"}}}
            return {"prefix": {f("norm"): n}}
        if t == "token":
            if c.modifier == "text":
                words, cjk = text_query(v)
                if not words and not cjk:
                    return NONE
                return _and(*({"prefix": {f("text"): w}} for w in words),
                            *({"match_phrase": {f("text"): " ".join(run)}} for run in cjk))
            return _token_test(v, f)
        if t == "date":
            return _date_test(c.prefix, v, f("lo"), f("hi"))
        if t == "number":
            return _number_test(c.prefix, v, f("value"))
        if t == "quantity":
            return _quantity_test(c.prefix, v, f)
        if t == "reference":
            return _reference_test(v, f)
        if t == "uri":
            if c.modifier == "below":
                return {"prefix": {f("uri"): v}}
            if c.modifier == "above":
                return {"terms": {f("uri"): uri_prefixes(v)}}
            if c.param == "_profile" and "|" not in v and "#" not in v:
                # meta.profile is a canonical: a URL alone matches it stored with a version
                return _or([_term(f("uri"), v), {"prefix": {f("uri"): v + "|"}},
                            {"prefix": {f("uri"): v + "#"}}])
            return _term(f("uri"), v)
        if t == "composite":
            ranged = holds_ranges(rtype, c.param) if rtype is not None else False
            return _and(*(_composite_test(i, part, f, ranged) for i, part in enumerate(v)))
        raise AssertionError(t)

    # -- reading ----------------------------------------------------------------------------------

    def _search(self, rtype: str | None, **body: Any) -> dict:
        index = self.index.alias(rtype) if rtype else \
            f"{self.index.prefix}-*,-{self.index.tracking_index}"
        if "query" in body:
            body["query"] = cut_values(body["query"])
        return dict(self.es.search(index=index, ignore_unavailable=True, allow_no_indices=True,
                                   **body))

    def _hits(self, rtype: str, query: dict, fields: list[str],
              limit: int = MAX_INNER) -> Iterable[tuple[str, dict]]:
        """(id, source) of every match, in index order, at most ``limit`` (else a 400)."""
        after = None
        seen = 0
        while True:
            body: dict[str, Any] = {"query": query, "size": 1000, "sort": [{"pk": "asc"}],
                                    "_source": fields or False, "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            hits = self._search(rtype, **body)["hits"]["hits"]
            for h in hits:
                seen += 1
                if seen > limit:
                    raise bad_request(f"A chained, _has or near criterion matches more than "
                                      f"{limit:,} {rtype} resources here; narrow it")
                yield h["_id"], h.get("_source") or {}
            if len(hits) < 1000:
                return
            after = hits[-1]["sort"]

    def _ids(self, q: Query) -> list[str]:
        return [rid for rid, _ in self._hits(q.rtype, self.query(q), [])]

    def _sources(self, q: Query, fields: list[str]) -> Iterable[dict]:
        return (source for _, source in self._hits(q.rtype, self.query(q), fields))

    def _sort(self, q: Query, reverse: bool) -> list[dict]:
        out: list[dict] = []
        for k in q.sort:
            desc = k.desc != reverse
            order = "desc" if desc else "asc"
            # missing values sort last in the page order, so first when reading backwards
            missing = "_first" if reverse else "_last"
            if k.param == "_id":
                out.append({"rid": {"order": order}})
            elif k.param == "_lastUpdated":
                out.append({"updated": {"order": order}})
            else:
                kind = SORT_FIELD.get(k.type, ("", {"type": "keyword"}))[1]["type"]
                out.append({f"sort.{k.param}.{'max' if k.desc else 'min'}": {
                    "order": order, "missing": missing, "unmapped_type": kind}})
        out.append({"pk": {"order": "desc" if reverse else "asc"}})
        return out

    def page(self, q: Query, count: int, with_total: bool | str) -> Page:
        direction, values = decode_cursor(q.cursor, len(q.sort)) if q.cursor else ("n", None)
        query = self.query(q)
        total = self.count(q) if with_total else None
        if count == 0:
            return Page([], None, None, total)
        reverse = direction == "p"
        body: dict[str, Any] = {"query": query, "size": count + 1, "_source": ["pk"],
                                "sort": self._sort(q, reverse), "track_total_hits": False}
        if values is not None:
            body["search_after"] = values
        hits = self._search(q.rtype, **body)["hits"]["hits"]
        more = len(hits) > count
        hits = hits[:count]
        if reverse:
            hits.reverse()
        if not hits:
            return Page([], None, None, total)
        beyond = False
        if values is not None:  # rows on the side the cursor came from, if any are left
            edge_hit = hits[-1] if reverse else hits[0]
            probe = self._search(q.rtype, query=query, size=1, _source=False,
                                 sort=self._sort(q, not reverse), search_after=edge_hit["sort"],
                                 track_total_hits=False)
            beyond = bool(probe["hits"]["hits"])
        rows = [Row(q.rtype, h["_id"], int(h["_source"]["pk"]), h["sort"]) for h in hits]
        has_next = beyond if reverse else more
        has_prev = more if reverse else beyond
        return Page(rows, encode_cursor("n", hits[-1]["sort"]) if has_next else None,
                    encode_cursor("p", hits[0]["sort"]) if has_prev else None, total)

    def match_ids(self, q: Query, limit: int = 1000) -> list[str]:
        hits = self._search(q.rtype, query=self.query(q), size=limit, _source=False,
                            sort=[{"rid": "asc"}], track_total_hits=False)["hits"]["hits"]
        return [h["_id"] for h in hits]

    def count(self, q: Query) -> int:
        return int(self.es.count(index=self.index.alias(q.rtype), query=cut_values(self.query(q)),
                                 ignore_unavailable=True, allow_no_indices=True)["count"])

    def included(self, matches: list[Row], include: list[Include], revinclude: list[Include],
                 rounds: int = INCLUDE_DEPTH, base: str | None = None) -> list[Row]:
        if not matches or not (include or revinclude):
            return []
        seen = {(r.rtype, r.rid) for r in matches}
        out: list[Row] = []
        frontier = list(matches)
        for round_ in range(rounds):
            found: list[Row] = []
            for inc in include:
                if round_ and not inc.iterate:
                    continue
                rows = [r for r in frontier if inc.source in ("*", r.rtype)]
                if rows:
                    found += self._forward(inc, rows, base)
            for inc in revinclude:
                if round_ and not inc.iterate:
                    continue
                targets = [f"{r.rtype}/{r.rid}" for r in frontier
                           if inc.target is None or r.rtype == inc.target]
                if targets:
                    found += self._reverse(inc, targets, base)
            frontier = []
            for r in found:
                if (r.rtype, r.rid) not in seen:
                    seen.add((r.rtype, r.rid))
                    out.append(r)
                    frontier.append(r)
            if not frontier:
                break
        return out

    def _forward(self, inc: Include, rows: list[Row], base: str | None) -> list[Row]:
        own = base.rstrip("/") + "/" if base else None
        p = params_for(inc.source).get(inc.param) if inc.param != "*" else None
        target = inc.target or (p.target_type if p is not None else None)
        refs: list[str] = []
        by_type: dict[str, list[str]] = {}
        for r in rows:
            by_type.setdefault(r.rtype, []).append(r.rid)
        for rtype, rids in by_type.items():
            for i in range(0, len(rids), 1000):
                found = self.es.mget(index=self.index.alias(rtype), ids=rids[i:i + 1000],
                                     source_includes=["ref"])
                for d in found["docs"]:
                    for v in (d.get("_source") or {}).get("ref") or ():
                        if inc.param != "*" and not self._is_param(inc.source, inc.param, v):
                            continue
                        t = v.get("target")
                        if t:
                            refs.append(t[len(own):] if own and t.startswith(own) else t)
        wanted: dict[str, list[str]] = {}
        for t in dict.fromkeys(refs):
            if "/" not in t or "://" in t:
                continue
            rtype, rid = t.split("/", 1)
            if target is None or rtype == target:
                wanted.setdefault(rtype, []).append(rid)
        return self._rows_of(wanted)

    def _rows_of(self, wanted: dict[str, list[str]]) -> list[Row]:
        out: list[Row] = []
        for rtype, rids in wanted.items():
            if rtype not in RESOURCE_TYPES:
                continue
            for i in range(0, len(rids), 1000):
                found = self.es.mget(index=self.index.alias(rtype), ids=rids[i:i + 1000],
                                     source_includes=["pk"])
                out += [Row(rtype, d["_id"], int(d["_source"]["pk"])) for d in found["docs"]
                        if d.get("found")]
        return out

    def _reverse(self, inc: Include, targets: list[str], base: str | None) -> list[Row]:
        if base:
            targets = [*targets, *(f"{base.rstrip('/')}/{t}" for t in targets)]
        out: list[Row] = []
        for i in range(0, len(targets), 1000):
            test: dict = {"terms": {"ref.target": targets[i:i + 1000]}}
            if inc.param != "*":
                test = _and(self._p(inc.source, inc.param, "ref"), test)
            query = {"nested": {"path": "ref", "query": test}}
            source = None if inc.source == "*" else inc.source
            after = None
            while True:
                body: dict[str, Any] = {"query": query, "size": 1000, "_source": ["pk"],
                                        "sort": [{"rid": "asc"}, {"pk": "asc"}],
                                        "track_total_hits": False}
                if after is not None:
                    body["search_after"] = after
                hits = self._search(source, **body)["hits"]["hits"]
                for h in hits:
                    rtype = source or _TYPE_OF.get(h["_index"].rsplit("-g", 1)[0][
                        len(self.index.prefix) + 1:])
                    if rtype:
                        out.append(Row(rtype, h["_id"], int(h["_source"]["pk"])))
                if len(hits) < 1000:
                    break
                after = hits[-1]["sort"]
        return out


# -- value tests ----------------------------------------------------------------------------------

def _token_test(v: TokenValue | TokenSet, f) -> dict:
    if isinstance(v, TokenSet):
        ors = [_and(_term(f("system"), system), {"terms": {f("code"): list(codes)}})
               for system, codes in v.groups]
        if v.unsystemed:
            ors.append(_and(_missing(f("system")), {"terms": {f("code"): list(v.unsystemed)}}))
        return _or(ors)
    parts: list[dict] = []
    if v.code is not None:
        parts.append(_term(f("code"), v.code))
    if v.system == "":
        parts.append(_missing(f("system")))
    elif v.system is not None and v.bound_codes:
        if v.code is not None:
            parts.append(_or([_term(f("system"), v.system), _missing(f("system"))]))
        else:
            parts.append(_or([_term(f("system"), v.system),
                              _and(_missing(f("system")),
                                   {"terms": {f("code"): list(v.bound_codes)}})]))
    elif v.system is not None:
        parts.append(_term(f("system"), v.system))
    if v.type_system is not None:
        parts.append(_term(f("type_system"), v.type_system))
    if v.type_code is not None:
        parts.append(_term(f("type_code"), v.type_code))
    return _and(*parts) if parts else ALL


def _date_test(prefix: str | None, v: RangeValue, lo: str, hi: str, point: bool = False) -> dict:
    """The SQLite planner's ``date_test``; ``point``: a single instant (``_lastUpdated``), whose
    range is [lo, lo + 1)."""
    a, b = edge(v.lo), edge(v.hi)

    def hi_gt(x: int) -> dict:  # hi > x
        return _range(hi, gte=x) if point else _range(hi, gt=x)

    def hi_ge(x: int) -> dict:  # hi >= x
        return _range(hi, gte=x - 1) if point else _range(hi, gte=x)

    def hi_le(x: int) -> dict:  # hi <= x
        return _range(hi, lte=x - 1) if point else _range(hi, lte=x)

    if prefix in (None, "eq"):
        return _and(_range(lo, gte=a), hi_le(b))
    if prefix == "ne":
        return _not(_and(_range(lo, gte=a), hi_le(b)))
    if prefix == "gt":
        return hi_gt(b)
    if prefix == "lt":
        return _range(lo, lt=a)
    if prefix == "ge":
        return _and(hi_ge(a), _or([hi_gt(b), _range(lo, gte=a)]))
    if prefix == "le":
        return _and(_range(lo, lt=b), _or([_range(lo, lt=a), hi_le(b)]))
    if prefix == "sa":
        return _range(lo, gte=b)
    if prefix == "eb":
        return hi_le(a)
    if prefix == "ap":
        lo_, hi_ = approx(v, is_date=True)
        return _and(_range(lo, lt=edge(hi_)), hi_gt(edge(lo_)))
    raise bad_request(f"Unknown prefix {prefix!r}")


def _json_range(r: RangeValue) -> RangeValue:
    # JSON has no infinities: a bound beyond any double is the largest double
    def c(x: float) -> float:
        return max(-1.7e308, min(1.7e308, x))

    return RangeValue(c(r.lo), c(r.hi), c(r.value), r.gap)


def _number_test(prefix: str | None, r: RangeValue, col: str) -> dict:
    v = _json_range(r)
    if prefix in (None, "eq"):
        return _range(col, gte=v.lo, lt=v.hi)
    if prefix == "ne":
        return _not(_range(col, gte=v.lo, lt=v.hi))
    if prefix in ("gt", "sa"):
        return _range(col, gt=v.value)
    if prefix in ("lt", "eb"):
        return _range(col, lt=v.value)
    if prefix == "ge":
        return _range(col, gte=v.value)
    if prefix == "le":
        return _range(col, lte=v.value)
    if prefix == "ap":
        lo, hi = approx(v)
        return _range(col, gte=lo, lte=hi)
    raise bad_request(f"Unknown prefix {prefix!r}")


def _quantity_test(prefix: str | None, v: QuantityValue, f) -> dict:
    if v.code is None:
        test = _number_test(prefix, v.number, f("value"))
        return _and(test, _term(f("system"), v.system)) if v.system else test
    exact = [_term(f("code"), v.code), _number_test(prefix, v.number, f("value"))]
    if v.system:
        exact.insert(0, _term(f("system"), v.system))
    if v.canonical is None:
        return _and(*exact)
    canonical = _and(_term(f("system"), UCUM), _term(f("ccode"), v.canonical_code),
                     _number_test(prefix, v.canonical, f("cvalue")))
    return _or([_and(*exact), canonical])


def _range_number_test(prefix: str | None, r: RangeValue, lo: str, hi: str) -> dict:
    op, a, b = range_bounds(prefix, _json_range(r))
    if op in ("in", "not-in"):
        test = _and(_range(lo, gte=a), _range(hi, lt=b))
        return test if op == "in" else _not(test)
    if op == "meets":
        return _and(_range(lo, lte=b), _range(hi, gte=a))
    cmp = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[op[2:]]
    return _range(hi if op.startswith("hi") else lo, **{cmp: a})


def _range_test(prefix: str | None, v: RangeValue | QuantityValue) -> dict:
    """The test of one alternative on a ``rng`` row (a Range value of the parameter)."""
    if isinstance(v, RangeValue):  # a number parameter: the Range's values, whatever its unit
        return _range_number_test(prefix, v, "rng.lo", "rng.hi")
    test = _range_number_test(prefix, v.number, "rng.lo", "rng.hi")
    if v.code is None:
        return _and(test, _term("rng.system", v.system)) if v.system else test
    exact = [_term("rng.code", v.code), test]
    if v.system:
        exact.insert(0, _term("rng.system", v.system))
    if v.canonical is None:
        return _and(*exact)
    canonical = _and(_term("rng.system", UCUM), _term("rng.ccode", v.canonical_code),
                     _range_number_test(prefix, v.canonical, "rng.clo", "rng.chi"))
    return _or([_and(*exact), canonical])


def _reference_test(v: RefValue, f) -> dict:
    if v.identifier is not None:
        parts = [_term(f("id_value"), v.identifier.code)]
        if v.identifier.system == "":
            parts.append(_missing(f("id_system")))
        elif v.identifier.system is not None:
            parts.append(_term(f("id_system"), v.identifier.system))
        return _and(*parts)
    if v.id_suffix is not None:
        return {"wildcard": {f("target"): {"value": "*/" + _wild(v.id_suffix)}}}
    test = {"terms": {f("target"): list(v.targets)}}
    if v.canonical is None:
        return test
    # a canonical URL without a version or fragment matches it stored with any (url|1.0, url#p)
    return _or([test, *({"prefix": {f("target"): v.canonical + sep}} for sep in ("|", "#"))])


def _composite_test(i: int, part: tuple, f, ranged: bool = False) -> dict:
    """``ranged``: the parameter's quantity component can be a Range (``rlo``/``rhi``, no
    ``num``), tested as a Range of a quantity parameter is."""
    ptype, prefix, v = part
    if i == 0:  # the first component is a token: c1 = 'system|code'
        if ptype != "token":
            return NONE
        if v.system is not None and v.code is not None:
            return _term(f("c1"), f"{v.system}|{v.code}")
        if v.code is not None:
            return {"wildcard": {f("c1"): {"value": "*|" + _wild(v.code)}}}
        return {"prefix": {f("c1"): v.system + "|"}}
    if ptype == "quantity":
        test = _number_test(prefix, v.number, f("num"))
        if ranged:  # a point value, or a Range (ne must not take a Range for a missing num)
            test = _or([_and({"exists": {"field": f("num")}}, test),
                        _and({"exists": {"field": f("rlo")}},
                             _range_number_test(prefix, v.number, f("rlo"), f("rhi")))])
        if v.code is None:
            return _and(test, {"prefix": {f("c2"): v.system + "|"}}) if v.system else test
        unit = _term(f("c2"), f"{v.system}|{v.code}") if v.system else \
            {"wildcard": {f("c2"): {"value": "*|" + _wild(v.code)}}}
        exact = _and(unit, test)
        if v.canonical is None:
            return exact
        folded_test = _number_test(prefix, v.canonical, f("cnum"))
        if ranged:
            folded_test = _or([_and({"exists": {"field": f("cnum")}}, folded_test),
                               _and({"exists": {"field": f("crlo")}},
                                    _range_number_test(prefix, v.canonical, f("crlo"),
                                                       f("crhi")))])
        folded = _and(_term(f("cc"), v.canonical_code), folded_test)
        return _or([exact, folded])
    if ptype == "number":
        return _number_test(prefix, v, f("num"))
    if ptype == "date":
        return _date_test(prefix, v, f("lo"), f("hi"))
    if ptype == "token":
        if v.system is not None and v.code is not None:
            return _term(f("c2"), f"{v.system}|{v.code}")
        if v.code is None:  # system|: any code of that system
            return {"prefix": {f("c2"): f"{v.system}|"}}
        return {"wildcard": {f("c2"): {"value": "*|" + _wild(v.code)}}}
    if ptype == "string":
        return {"prefix": {f("c2"): normalize(v)}}
    return _term(f("c2"), v)
