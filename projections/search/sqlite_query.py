"""Search plans (query.py) answered with SQL over the SQLite index tables (sqlite_index.py).

Every criterion becomes a condition on the resource row ``r`` of ``sp_res``, mostly
``r.pk IN (SELECT pk FROM ix_<type> WHERE p = <param> AND <value test>)``; OR alternatives of one
parameter share one sub-select; chains and ``_has`` nest sub-selects over ``ix_reference``.

Pages use a keyset cursor: the sort values of the last (or first) row and its id, so the next and
previous pages stay right while resources are added or removed. Resources lacking a sort value
come last; ties are broken by the resource id, which survives index rebuilds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from hub.core.errors import bad_request
from projections.search import fulltext
from projections.search.backend import (
    INCLUDE_DEPTH,
    Page,
    Row,
    SearchBackend,
    decode_cursor,
    encode_cursor,
)
from projections.search.extract import holds_ranges, normalize, ucum_canonical
from projections.search.params import params_for
from projections.search.query import (
    WORD,
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
    range_bounds,
    text_query,
    uri_prefixes,
)
from projections.search.sqlite_index import SQLiteSearchIndex

RANGE_TYPES = frozenset({"date", "number", "quantity"})
TABLE = {"string": "ix_string", "token": "ix_token", "date": "ix_date", "number": "ix_number",
         "quantity": "ix_quantity", "reference": "ix_reference", "uri": "ix_uri",
         "composite": "ix_composite"}
TOP = "\U0010ffff"
UCUM_BAR = "http://unitsofmeasure.org|"
ESTIMATE_EXACT_UP_TO = 1000  # _total=estimate is exact when some criterion has this few rows
TYPE_SIZE_TTL = 60.0
SORT_COLUMN = {"string": "norm", "token": "code", "number": "value", "quantity": "cvalue",
               "reference": "target", "uri": "uri", "date": "lo"}
# parameter types whose query index (p, sort column, …) delivers the sort order (quantity's is by
# unit first), and the result size from which a sorted page is read from that index
INDEX_SORTABLE = ("string", "token", "date", "number", "reference", "uri")
INDEX_SORT_FROM = 2000




def text_matches(text: str | None, q: str) -> bool:
    """``:text``: every query word starts some word of the text; CJK runs (no spaces between words)
    only need to occur in it. Both sides normalized like string search."""
    if text is None:
        return False
    words, cjk = text_query(q)
    if not words and not cjk:
        return False
    norm = normalize(text)
    if any(c not in norm for c in cjk):
        return False
    if not words:
        return True
    have = WORD.findall(norm)
    return all(any(h.startswith(w) for h in have) for w in words)


def _ucum_value(c2: str | None, num: float | None, ccode: str) -> float | None:
    """A composite's quantity (``system|code``, value) in the canonical unit ``ccode``, or None."""
    if num is None or c2 is None or not c2.startswith(UCUM_BAR):
        return None
    form = ucum_canonical(c2[len(UCUM_BAR):])
    return form.to(num) if form.unit == ccode else None


class Args(Protocol):
    """Where a test's values go: ``arg`` keeps one and gives its placeholder."""

    def arg(self, v: Any) -> str: ...


class _Sql:
    """Accumulates SQL text and its arguments while a plan is translated."""

    def __init__(self, search: SQLiteSearch, c):
        self.search, self.c = search, c
        self.args: dict[str, Any] = {}  # named, so text may be assembled in any order
        self.n = 0

    def alias(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def arg(self, v: Any) -> str:
        name = f"a{len(self.args)}"
        self.args[name] = v
        return ":" + name

    def pid(self, rtype: str, code: str) -> int:
        return self.search.param_id(self.c, rtype, code)

    def p_is(self, rtype: str, code: str, x: str, plus: bool = False) -> str:
        """Rows of ``x`` that belong to the parameter (an alias: to the ones it is stored as)."""
        pids, target_type = self.search.stored_as(self.c, rtype, code)
        col = f"+{x}.p" if plus else f"{x}.p"
        test = (f"{col} = {self.arg(pids[0])}" if len(pids) == 1
                else f"{col} IN ({', '.join(self.arg(p) for p in pids)})")
        return f"{test} AND {x}.type = {self.arg(target_type)}" if target_type else test


class SQLiteSearch(SearchBackend):
    """The ``SearchBackend`` over the SQLite search index."""

    def __init__(self, index: SQLiteSearchIndex):
        self.index = index
        self._pids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[int, float]] = {}
        self.estimate_exact_up_to = ESTIMATE_EXACT_UP_TO

    # -- plumbing ---------------------------------------------------------------------------------

    def _cursor(self):
        return self.index.datastore.transaction(commit=False)

    def _prepare(self, c) -> None:
        # cheap (a few µs), and pooled connections come and go
        con = c.sqlite_cursor.connection
        con.create_function("fhir_text", 2, text_matches, deterministic=True)
        con.create_function("fhir_ucum", 3, _ucum_value, deterministic=True)

    def param_id(self, c, rtype: str, code: str) -> int:
        key = (rtype, code)
        pid = self._pids.get(key)
        if pid is None:
            c.execute("SELECT id FROM sp_param WHERE rtype=? AND code=?", key)
            found = c.fetchone()
            if found is None:
                return -1  # no resource has had a value yet: nothing matches
            pid = self._pids[key] = found[0]
        return pid

    def stored_as(self, c, rtype: str, code: str) -> tuple[list[int], str | None]:
        """The parameter ids whose rows answer ``code``, and the target type an alias requires."""
        p = params_for(rtype).get(code)
        if p is None or not p.stored_as:
            return [self.param_id(c, rtype, code)], None
        return [self.param_id(c, rtype, b) for b in p.stored_as], p.target_type

    # -- criteria ---------------------------------------------------------------------------------

    def where(self, s: _Sql, q: Query, alias: str) -> str:
        parts = [f"{alias}.rtype = {s.arg(q.rtype)}"]
        groups = list(q.where)
        # date=ge2024-01&date=lt2024-02 on a parameter no resource has two values of: one row
        # must pass both, so one sub-select tests both (a narrow index range, not two wide ones)
        ranges: dict[str, list[Criterion]] = {}
        for group in q.where:
            if len(group) == 1 and _plain(group[0]) and group[0].type in RANGE_TYPES and \
                    not holds_ranges(q.rtype, group[0].param):
                ranges.setdefault(group[0].param, []).append(group[0])
        for code, crits in ranges.items():
            if len(crits) > 1 and self._single_valued(s.c, q.rtype, code):
                groups = [g for g in groups if not (len(g) == 1 and g[0] in crits)]
                x = s.alias("x")
                tests = " AND ".join(f"({self._value(s, c, x, q.rtype)})" for c in crits)
                parts.append(f"{alias}.pk IN (SELECT {x}.pk FROM {TABLE[crits[0].type]} {x} "
                             f"WHERE {s.p_is(q.rtype, code, x)} AND {tests})")
        for group in groups:
            parts.append(self._group(s, q.rtype, group, alias))
        return " AND ".join(parts)

    def _single_valued(self, c, rtype: str, code: str) -> bool:
        pids, _ = self.stored_as(c, rtype, code)
        if len(pids) != 1:
            return False
        c.execute("SELECT multi FROM sp_param WHERE id = ?", (pids[0],))
        found = c.fetchone()
        return found is not None and not found[0]

    def _span(self, c, rtype: str, code: str) -> float:
        """The widest date range of the parameter's rows (so hi >= A implies lo >= A - span)."""
        pids, _ = self.stored_as(c, rtype, code)
        c.execute(f"SELECT MAX(span) FROM sp_param WHERE id IN ({', '.join('?' * len(pids))})",
                  pids)
        found = c.fetchone()
        return found[0] if found and found[0] is not None else 0.0

    def _group(self, s: _Sql, rtype: str, group: list[Criterion], alias: str) -> str:
        plain = [c for c in group if _plain(c)]
        other = [c for c in group if not _plain(c)]
        ors = []
        # alternatives on one parameter and table share one sub-select
        by_param: dict[str, list[Criterion]] = {}
        for c in plain:
            by_param.setdefault(c.param, []).append(c)
        for code, crits in by_param.items():
            x = s.alias("x")
            table = TABLE[crits[0].type]
            tests = " OR ".join(f"({self._value(s, c, x, rtype)})" for c in crits)
            ors.append(f"{alias}.pk IN (SELECT {x}.pk FROM {table} {x} WHERE "
                       f"{s.p_is(rtype, code, x)} AND ({tests}))")
            if crits[0].type != "composite" and holds_ranges(rtype, code):
                y = s.alias("x")
                tests = " OR ".join(f"({_range_test(s, c.prefix, c.value, y)})" for c in crits)
                ors.append(f"{alias}.pk IN (SELECT {y}.pk FROM ix_range {y} WHERE "
                           f"{s.p_is(rtype, code, y)} AND ({tests}))")
        for c in other:
            ors.append(self._criterion(s, rtype, c, alias))
        return ors[0] if len(ors) == 1 else "(" + " OR ".join(ors) + ")"

    def _criterion(self, s: _Sql, rtype: str, c: Criterion, alias: str) -> str:
        if c.param == "_id":
            return self._id(s, c, alias)
        if c.param == "_lastUpdated":
            lo, hi = f"{alias}.updated", f"({alias}.updated + 1)"
            if c.modifier == "missing":
                return "0" if c.value else "1"
            return date_test(s, c.prefix, c.value, lo, hi)
        if c.type == "has":
            return self._has(s, rtype, c.value, alias)
        if c.type == "geo":  # Location near: a box on the index, then the distance on a plane
            lat, lon, km = c.value  # (good to a fraction of a per cent over a few hundred km)
            ky, kx = 111.32, 111.32 * max(math.cos(math.radians(lat)), 1e-6)
            dy, dx = km / ky, km / kx
            a = s.alias("g")
            return (f"{alias}.pk IN (SELECT {a}.pk FROM sp_geo {a} WHERE {a}.lat BETWEEN "
                    f"{s.arg(lat - dy)} AND {s.arg(lat + dy)} AND {a}.lon BETWEEN "
                    f"{s.arg(lon - dx)} AND {s.arg(lon + dx)} AND "
                    f"(({a}.lat - {s.arg(lat)}) * {ky}) * (({a}.lat - {s.arg(lat)}) * {ky}) + "
                    f"(({a}.lon - {s.arg(lon)}) * {kx}) * (({a}.lon - {s.arg(lon)}) * {kx}) "
                    f"<= {s.arg(km * km)})")
        if c.type == "fulltext":  # _text, _content (projections.search.fulltext)
            query = fulltext.match_query(*c.value)
            return f"{alias}.pk IN (SELECT rowid FROM sp_fts WHERE sp_fts MATCH {s.arg(query)})"
        table = TABLE[c.type]
        if c.modifier == "missing":
            x = s.alias("x")
            # +p: look the resource's rows up by pk, not every row of the parameter
            test = (f"EXISTS (SELECT 1 FROM {table} {x} WHERE {x}.pk = {alias}.pk "
                    f"AND {s.p_is(rtype, c.param, x, plus=True)})")
            if c.type != "composite" and holds_ranges(rtype, c.param):  # a Range is a value too
                y = s.alias("x")
                test = (f"({test} OR EXISTS (SELECT 1 FROM ix_range {y} WHERE {y}.pk = "
                        f"{alias}.pk AND {s.p_is(rtype, c.param, y, plus=True)}))")
            return f"NOT {test}" if c.value else test
        if c.chain is not None:
            x, r2 = s.alias("x"), s.alias("r")
            (target,) = c.chain.rtypes
            inner = self.where(s, Query(target, where=[[c.chain.criterion]]), r2)
            if c.chain.base:  # each match as 'Type/id' and as the absolute URL on this server
                pf = s.alias("pf")
                targets = (f"SELECT {pf}.column1 || {r2}.rid FROM sp_res {r2}, (VALUES "
                           f"({s.arg(target + '/')}), ({s.arg(f'{c.chain.base}/{target}/')})) {pf} "
                           f"WHERE {inner}")
            else:
                targets = f"SELECT {s.arg(target + '/')} || {r2}.rid FROM sp_res {r2} WHERE {inner}"
            return (f"{alias}.pk IN (SELECT {x}.pk FROM ix_reference {x} WHERE "
                    f"{s.p_is(rtype, c.param, x)} AND {x}.target IN ({targets}))")
        if c.modifier == "not":
            x = s.alias("x")
            return (f"{alias}.pk NOT IN (SELECT {x}.pk FROM ix_token {x} WHERE "
                    f"{s.p_is(rtype, c.param, x)} AND ({self._value(s, c, x, rtype)}))")
        raise AssertionError(f"criterion not planned: {c}")

    def _id(self, s: _Sql, c: Criterion, alias: str) -> str:
        if c.modifier == "missing":
            return "0" if c.value else "1"
        tv: TokenValue = c.value
        test = f"{alias}.rid = {s.arg(tv.code)}"
        return f"NOT ({test})" if c.modifier == "not" else test

    def _has(self, s: _Sql, rtype: str, h: Has, alias: str) -> str:
        x, r3 = s.alias("x"), s.alias("r")
        inner = self.where(s, Query(h.rtype, where=[[h.criterion]]), r3)
        me = rtype + "/"
        # the reference targets 'Type/id' of this type, less the 'Type/'; and those stored as
        # absolute URLs on this server, less the base and 'Type/'
        within = f"{x}.target > {s.arg(me)} AND {x}.target < {s.arg(me + TOP)}"
        rid = f"substr({x}.target, {len(me) + 1})"
        if h.base:
            own = f"{h.base}/{me}"
            # "+": no index for the OR's terms, so the plan still starts from the matches' pks
            # (a multi-index OR would read every reference of the parameter to the type)
            within = (f"((+{x}.target > {s.arg(me)} AND +{x}.target < {s.arg(me + TOP)}) OR "
                      f"(+{x}.target > {s.arg(own)} AND +{x}.target < {s.arg(own + TOP)}))")
            rid = (f"CASE WHEN {x}.target < {s.arg(me + TOP)} THEN {rid} "
                   f"ELSE substr({x}.target, {len(own) + 1}) END")
        return (f"{alias}.rid IN (SELECT {rid} FROM ix_reference {x} WHERE "
                f"{s.p_is(h.rtype, h.param, x)} AND {within} AND "
                f"{x}.pk IN (SELECT {r3}.pk FROM sp_res {r3} WHERE {inner}))")

    def _value(self, s: _Sql, c: Criterion, x: str, rtype: str | None = None) -> str:
        """The test of one alternative on an index row ``x`` of its parameter's table."""
        v, t = c.value, c.type
        if t == "string":
            if c.modifier == "exact":
                return f"{x}.exact = {s.arg(v)}"
            n = normalize(v)
            if c.modifier == "contains":
                return f"instr({x}.norm, {s.arg(n)}) > 0"
            return f"{x}.norm >= {s.arg(n)} AND {x}.norm < {s.arg(n + TOP)}"
        if t == "token":
            if c.modifier == "text":
                return f"fhir_text({x}.text, {s.arg(v)})"
            return _token_test(s, v, x)
        if t == "date":
            test = date_test(s, c.prefix, v, f"{x}.lo", f"{x}.hi")
            # a lower bound on hi bounds lo too (lo >= hi - span): the (p, lo) index range
            # becomes [bound - span, ...) instead of every row before the upper bound
            floor = {"ge": v.lo, "gt": v.hi, "ap": None}.get(c.prefix) if c.prefix else None
            if c.prefix == "ap":
                floor = approx(v, is_date=True)[0]
            if floor is not None and rtype is not None:
                span = self._span(s.c, rtype, c.param)
                if span < 1e299:
                    test += f" AND {x}.lo >= {s.arg(floor - span)}"
            return test
        if t == "number":
            return _number_test(s, c.prefix, v, f"{x}.value")
        if t == "quantity":
            return _quantity_test(s, c.prefix, v, x)
        if t == "reference":
            return _reference_test(s, v, x)
        if t == "uri":
            if c.modifier == "below":
                return f"{x}.uri >= {s.arg(v)} AND {x}.uri < {s.arg(v + TOP)}"
            if c.modifier == "above":
                prefixes = uri_prefixes(v)
                return f"{x}.uri IN ({', '.join(s.arg(p) for p in prefixes)})"
            if c.param == "_profile" and "|" not in v and "#" not in v:
                # meta.profile is a canonical: a URL alone matches it stored with a version
                ranges = [f"({x}.uri >= {s.arg(v + sep)} AND {x}.uri < {s.arg(v + sep + TOP)})"
                          for sep in ("|", "#")]
                return f"({x}.uri = {s.arg(v)} OR {' OR '.join(ranges)})"
            return f"{x}.uri = {s.arg(v)}"
        if t == "composite":
            ranged = rtype is not None and holds_ranges(rtype, c.param)
            return " AND ".join(_composite_test(s, i, part, x, ranged) for i, part in enumerate(v))
        raise AssertionError(t)

    # -- running ----------------------------------------------------------------------------------

    def _sort_exprs(self, s: _Sql, q: Query, alias: str) -> list[tuple[str, bool]]:
        out = []
        for k in q.sort:
            if k.param == "_id":
                out.append((f"{alias}.rid", k.desc))
            elif k.param == "_lastUpdated":
                out.append((f"{alias}.updated", k.desc))
            else:
                col = SORT_COLUMN[k.type]
                agg = "MAX" if k.desc else "MIN"
                x = s.alias("x")
                out.append((f"(SELECT {agg}({x}.{col}) FROM {TABLE[k.type]} {x} WHERE "
                            f"{x}.pk = {alias}.pk AND {s.p_is(q.rtype, k.param, x, plus=True)})",
                            k.desc))
        return out

    def _count(self, c, q: Query) -> int:
        s = _Sql(self, c)
        w = self.where(s, q, "r")
        c.execute(f"SELECT COUNT(*) FROM sp_res r WHERE {w}", s.args)
        return c.fetchone()[0]

    def _type_size(self, c, rtype: str) -> int:
        """Resources of a type (cached for TYPE_SIZE_TTL seconds: an estimate's denominator)."""
        now = time.monotonic()
        hit = self._sizes.get(rtype)
        if hit is not None and now - hit[1] < TYPE_SIZE_TTL:
            return hit[0]
        c.execute("SELECT COUNT(*) FROM sp_res WHERE rtype = ?", (rtype,))
        n = c.fetchone()[0]
        self._sizes[rtype] = (n, now)
        return n

    def estimate(self, c, q: Query, exact_only: bool = False) -> int | None:
        """``_total=estimate``: counts of index rows, combined as if the criteria were independent.

        The exact count materializes the pk list of every criterion and looks every candidate up in
        ``sp_res``. Here each AND group on one parameter's own table is counted in its covering
        index alone (``COUNT(*)`` over ``p = ? AND test``: no list, no join); a resource with two
        matching values counts twice. If some group counts at most ``estimate_exact_up_to`` rows,
        the result is small and the exact count is cheap: it is returned. Otherwise the estimate is
        ``N * prod(n_g / N)``, N the resources of the type (cached), other groups (chains,
        ``_has``, ``:missing``, ``:not``, ``_id``, ``_lastUpdated``) taken as not selective. A query
        with no such group at all is counted exactly.
        """
        counts = []
        for group in q.where:
            if not group or not all(_plain(x) for x in group) or len({x.param for x in group}) > 1:
                continue
            s = _Sql(self, c)
            x = s.alias("x")
            tests = " OR ".join(f"({self._value(s, crit, x, q.rtype)})" for crit in group)
            rows = (f"FROM {TABLE[group[0].type]} {x} WHERE "
                    f"{s.p_is(q.rtype, group[0].param, x)} AND ({tests})")
            if exact_only:  # only "is it small?" matters: stop counting past the threshold
                c.execute(f"SELECT COUNT(*) FROM (SELECT 1 {rows} LIMIT "
                          f"{int(self.estimate_exact_up_to) + 1})", s.args)
            else:
                c.execute(f"SELECT COUNT(*) {rows}", s.args)
            counts.append(c.fetchone()[0])
        if exact_only and not q.where:
            return self._count(c, q)
        if exact_only and not counts:
            return None
        if not counts or min(counts) <= self.estimate_exact_up_to:
            return self._count(c, q)
        if exact_only:
            return None
        n = self._type_size(c, q.rtype)
        est = float(n)
        for k in counts:
            est *= min(1.0, k / n) if n else 0.0
        return int(round(est))

    def page(self, q: Query, count: int, with_total: bool | str) -> Page:
        """One page of matches; ``with_total``: False, True or "accurate" (exact), "estimate", or
        "if-cheap" (exact where cheap, else no total)."""
        direction, values = decode_cursor(q.cursor, len(q.sort)) if q.cursor else ("n", None)
        with self._cursor() as c:
            self._prepare(c)
            total = None
            if with_total == "estimate":
                total = self.estimate(c, q)
            elif with_total == "if-cheap":
                total = self.estimate(c, q, exact_only=True)
            elif with_total:
                total = self._count(c, q)
            if count == 0:
                return Page([], None, None, total)
            s = _Sql(self, c)
            sorts = self._sort_exprs(s, q, "r")
            cols = "".join(f", {e} AS s{i}" for i, (e, _) in enumerate(sorts))
            w = self.where(s, q, "r")
            # a big result sorted by a single-valued parameter: the page's candidates from that
            # parameter's value index, in order, instead of every match's sort keys
            first = None
            if direction == "n" and (values is None or values[0] is not None) and \
                    (total is None or total > INDEX_SORT_FROM):
                first = self._index_order(c, q, count, values)
            if first is not None:
                w = f"{w} AND r.pk IN ({', '.join(s.arg(pk) for pk in first)})"
            inner = f"SELECT r.pk AS pk, r.rid AS rid{cols} FROM sp_res r WHERE {w}"
            # components: per sort key (missing last, then the value), then the id
            comps: list[tuple[str, bool]] = []
            for i, (_, desc) in enumerate(sorts):
                comps += [(f"(s{i} IS NULL)", False), (f"s{i}", desc)]
            # then the index key: the order resources entered the index, like HAPI's default;
            # the (p, value, pk) indexes deliver it, so a page is read without sorting all matches
            comps.append(("pk", False))
            reverse = direction == "p"
            order = ", ".join(f"{e} {'DESC' if d != reverse else 'ASC'}" for e, d in comps)
            cond = ""
            if values is not None:
                cond = "WHERE " + _after(s, comps, _expand(values), reverse)
            sql = f"SELECT * FROM ({inner}) {cond} ORDER BY {order} LIMIT {s.arg(count + 1)}"
            c.execute(sql, s.args)
            fetched = c.fetchall()
            more = len(fetched) > count
            fetched = fetched[:count]
            if reverse:
                fetched.reverse()
            if not fetched:
                return Page([], None, None, total)
            # the side the cursor came from: rows there only if some are left (the data changes,
            # and a cursor may point before the first row): one probe, LIMIT 1
            beyond = False
            if values is not None:
                edge = fetched[-1] if reverse else fetched[0]
                probe = _after(s, comps, _expand(_key(edge)), not reverse)
                c.execute(f"SELECT 1 FROM ({inner}) WHERE {probe} LIMIT 1", s.args)
                beyond = c.fetchone() is not None
        rows = [Row(q.rtype, f[1], f[0], _key(f)) for f in fetched]
        has_next = beyond if reverse else more
        has_prev = more if reverse else beyond
        return Page(rows, encode_cursor("n", _key(fetched[-1])) if has_next else None,
                    encode_cursor("p", _key(fetched[0])) if has_prev else None, total)

    def _index_order(self, c, q: Query, count: int, values: list | None) -> list[int] | None:
        """The pks that can make the next page of ``q`` when its first sort key is a
        single-valued parameter with a value index: the matches with the ``count + 1`` best
        values walking that index (from the cursor's value on), and every match tied with the
        last of them, so the full order (the other keys, the pk) is decided among them alone.
        None when this does not apply, or when the walk ran out of values (matches without one
        sort last: the full query finds them)."""
        if not q.sort:
            return None
        key = q.sort[0]
        if key.param in ("_id", "_lastUpdated") or key.type not in INDEX_SORTABLE or \
                not self._single_valued(c, q.rtype, key.param):
            return None
        table, col = TABLE[key.type], SORT_COLUMN[key.type]
        order = "DESC" if key.desc else "ASC"
        s = _Sql(self, c)
        w = self.where(s, q, "r")
        x = s.alias("x")
        base = (f"FROM {table} {x} JOIN sp_res r ON r.pk = {x}.pk WHERE "
                f"{s.p_is(q.rtype, key.param, x)} AND {w}")
        pks: list[int] = []
        walk = base
        if values is not None:
            # the cursor's own value: all its ties (the rest of the order decides which follow),
            # then the values beyond it
            at = s.arg(values[0])
            c.execute(f"SELECT {x}.pk {base} AND {x}.{col} = {at}", s.args)
            pks += [pk for (pk,) in c.fetchall()]
            walk += f" AND {x}.{col} {'<' if key.desc else '>'} {at}"
        c.execute(f"SELECT {x}.pk, {x}.{col} {walk} ORDER BY {x}.{col} {order} "
                  f"LIMIT {int(count) + 1}", s.args)
        rows = c.fetchall()
        if len(rows) <= count:
            return None
        c.execute(f"SELECT {x}.pk {base} AND {x}.{col} = {s.arg(rows[-1][1])}", s.args)
        return list(dict.fromkeys([*pks, *(pk for pk, _ in rows), *(pk for (pk,) in c.fetchall())]))

    def match_ids(self, q: Query, limit: int = 1000) -> list[str]:
        with self._cursor() as c:
            self._prepare(c)
            s = _Sql(self, c)
            w = self.where(s, q, "r")
            c.execute(f"SELECT r.rid FROM sp_res r WHERE {w} ORDER BY r.rid LIMIT {int(limit)}",
                      s.args)
            return [r[0] for r in c.fetchall()]

    def count(self, q: Query) -> int:
        with self._cursor() as c:
            self._prepare(c)
            s = _Sql(self, c)
            w = self.where(s, q, "r")
            c.execute(f"SELECT COUNT(*) FROM sp_res r WHERE {w}", s.args)
            return c.fetchone()[0]

    def included(self, matches: list[Row], include: list[Include], revinclude: list[Include],
                 rounds: int = INCLUDE_DEPTH, base: str | None = None) -> list[Row]:
        """Resources that ``_include``/``_revinclude`` add to a page (not those already in it).

        ``base``: this server's base URL; references stored as absolute URLs on it are local.
        """
        if not matches or not (include or revinclude):
            return []
        seen = {(r.rtype, r.rid) for r in matches}
        out: list[Row] = []
        frontier = list(matches)
        with self._cursor() as c:
            for round_ in range(rounds):
                found: list[Row] = []
                for inc in include:
                    if round_ and not inc.iterate:
                        continue
                    pks = [r.pk for r in frontier if inc.source in ("*", r.rtype)]
                    if pks:
                        found += self._forward(c, inc, pks, base)
                for inc in revinclude:
                    if round_ and not inc.iterate:
                        continue
                    targets = [f"{r.rtype}/{r.rid}" for r in frontier
                               if inc.target is None or r.rtype == inc.target]
                    if targets:
                        found += self._reverse(c, inc, targets, base)
                frontier = []
                for r in found:
                    if (r.rtype, r.rid) not in seen:
                        seen.add((r.rtype, r.rid))
                        out.append(r)
                        frontier.append(r)
                if not frontier:
                    break
        return out

    def _forward(self, c, inc: Include, pks: list[int], base: str | None = None) -> list[Row]:
        pids: list[int]
        target_type: str | None
        if inc.param == "*":  # every reference of the resources
            pids, target_type = [], None
        else:
            pids, target_type = self.stored_as(c, inc.source, inc.param)
        target = inc.target or target_type
        rows = []
        own = base.rstrip("/") + "/" if base else None
        by_param = f"p IN ({', '.join('?' * len(pids))}) AND " if pids else ""
        for chunk in _chunks(pks, 500):
            c.execute(f"SELECT DISTINCT target FROM ix_reference WHERE {by_param}pk IN "
                      f"({', '.join('?' * len(chunk))})", [*pids, *chunk])
            found = [t for (t,) in c.fetchall() if t]
            if own:
                found = [t[len(own):] if t.startswith(own) else t for t in found]
            refs = [t for t in dict.fromkeys(found) if "/" in t and "://" not in t]
            keys = [tuple(t.split("/", 1)) for t in refs]
            keys = [k for k in keys if target is None or k[0] == target]
            for kc in _chunks(keys, 400):
                cond = " OR ".join("(rtype = ? AND rid = ?)" for _ in kc)
                c.execute(f"SELECT rtype, rid, pk FROM sp_res WHERE {cond}",
                          [v for k in kc for v in k])
                rows += [Row(*f) for f in c.fetchall()]
        return rows

    def _reverse(self, c, inc: Include, targets: list[str], base: str | None = None) -> list[Row]:
        # a typed alias (Observation:patient) needs no type test: the targets name their type
        pids: list[int]
        if inc.param == "*":  # every reference to the resources (of one type, or of any)
            pids = []
            by_param = "" if inc.source == "*" else "r.rtype = ? AND "
            first: list = [] if inc.source == "*" else [inc.source]
        else:
            pids, _ = self.stored_as(c, inc.source, inc.param)
            by_param = f"x.p IN ({', '.join('?' * len(pids))}) AND "
            first = list(pids)
        if base:
            targets = [*targets, *(f"{base.rstrip('/')}/{t}" for t in targets)]
        rows = []
        for chunk in _chunks(targets, 500):
            c.execute(f"SELECT DISTINCT r.rtype, r.rid, r.pk FROM ix_reference x JOIN sp_res r "
                      f"ON r.pk = x.pk WHERE {by_param}x.target "
                      f"IN ({', '.join('?' * len(chunk))}) ORDER BY r.rid", [*first, *chunk])
            rows += [Row(*f) for f in c.fetchall()]
        return rows


# -- value tests ----------------------------------------------------------------------------------

def _plain(c: Criterion) -> bool:
    """A test on one row of the parameter's own table (can share a sub-select with its siblings)."""
    return (c.type in TABLE and c.chain is None and c.modifier not in ("missing", "not")
            and c.param not in ("_id", "_lastUpdated"))


def _token_set_test(s: _Sql, v: TokenSet, x: str) -> str:
    ors = [f"({x}.system = {s.arg(system)} AND {x}.code IN ({', '.join(s.arg(c) for c in codes)}))"
           for system, codes in v.groups]
    if v.unsystemed:
        ors.append(f"({x}.system IS NULL AND {x}.code IN ({', '.join(s.arg(c) for c in v.unsystemed)}))")
    return "(" + " OR ".join(ors) + ")" if ors else "0"


def _token_test(s: _Sql, v: TokenValue | TokenSet, x: str) -> str:
    if isinstance(v, TokenSet):  # (neither class has subclasses)
        return _token_set_test(s, v, x)
    parts = []
    if v.code is not None:
        parts.append(f"{x}.code = {s.arg(v.code)}")
    if v.system == "":
        parts.append(f"{x}.system IS NULL")
    elif v.system is not None and v.bound_codes:
        # a code element whose binding fixes the system: indexed without it
        if v.code is not None:
            parts.append(f"({x}.system = {s.arg(v.system)} OR {x}.system IS NULL)")
        else:
            codes = ", ".join(s.arg(c) for c in v.bound_codes)
            parts.append(f"({x}.system = {s.arg(v.system)} OR ({x}.system IS NULL AND "
                         f"{x}.code IN ({codes})))")
    elif v.system is not None:
        parts.append(f"{x}.system = {s.arg(v.system)}")
    if v.type_system is not None:
        parts.append(f"{x}.type_system = {s.arg(v.type_system)}")
    if v.type_code is not None:
        parts.append(f"{x}.type_code = {s.arg(v.type_code)}")
    return " AND ".join(parts) or "1"


def date_test(s: Args, prefix: str | None, v: RangeValue, lo: str, hi: str) -> str:
    a, b = s.arg, s.arg
    if prefix in (None, "eq"):
        return f"{lo} >= {a(v.lo)} AND {hi} <= {b(v.hi)}"
    if prefix == "ne":
        return f"NOT ({lo} >= {a(v.lo)} AND {hi} <= {b(v.hi)})"
    if prefix == "gt":
        return f"{hi} > {a(v.hi)}"
    if prefix == "lt":
        return f"{lo} < {a(v.lo)}"
    # ge and le are ORs no index serves; each branch implies a bound on one column (a range ends
    # after it starts), stated first so the (p, hi) or (p, lo) index narrows the rows.
    if prefix == "ge":
        return f"{hi} >= {a(v.lo)} AND ({hi} > {a(v.hi)} OR {lo} >= {b(v.lo)})"
    if prefix == "le":
        return f"{lo} < {a(v.hi)} AND ({lo} < {a(v.lo)} OR {hi} <= {b(v.hi)})"
    if prefix == "sa":
        return f"{lo} >= {a(v.hi)}"
    if prefix == "eb":
        return f"{hi} <= {a(v.lo)}"
    if prefix == "ap":
        lo_, hi_ = approx(v, is_date=True)
        return f"{lo} < {a(hi_)} AND {hi} > {b(lo_)}"
    raise bad_request(f"Unknown prefix {prefix!r}")


def _number_test(s: _Sql, prefix: str | None, v: RangeValue, col: str) -> str:
    a = s.arg
    if prefix in (None, "eq"):
        return f"{col} >= {a(v.lo)} AND {col} < {a(v.hi)}"
    if prefix == "ne":
        return f"NOT ({col} >= {a(v.lo)} AND {col} < {a(v.hi)})"
    if prefix in ("gt", "sa"):
        return f"{col} > {a(v.value)}"
    if prefix in ("lt", "eb"):
        return f"{col} < {a(v.value)}"
    if prefix == "ge":
        return f"{col} >= {a(v.value)}"
    if prefix == "le":
        return f"{col} <= {a(v.value)}"
    if prefix == "ap":
        lo, hi = approx(v)
        return f"{col} >= {a(lo)} AND {col} <= {a(hi)}"
    raise bad_request(f"Unknown prefix {prefix!r}")


def _quantity_test(s: _Sql, prefix: str | None, v: QuantityValue, x: str) -> str:
    if v.code is None:
        test = _number_test(s, prefix, v.number, f"{x}.value")
        if v.system:
            test += f" AND {x}.system = {s.arg(v.system)}"
        return test
    exact = f"{x}.code = {s.arg(v.code)} AND " + _number_test(s, prefix, v.number, f"{x}.value")
    if v.system:
        exact = f"{x}.system = {s.arg(v.system)} AND " + exact
    if v.canonical is None:
        return exact
    canonical = (f"{x}.system = 'http://unitsofmeasure.org' AND {x}.ccode = "
                 f"{s.arg(v.canonical_code)} AND "
                 + _number_test(s, prefix, v.canonical, f"{x}.cvalue"))
    return f"({exact}) OR ({canonical})"


def _range_number_test(s: Args, prefix: str | None, v: RangeValue, lo: str, hi: str) -> str:
    op, a, b = range_bounds(prefix, v)
    if op in ("in", "not-in"):
        test = f"{lo} >= {s.arg(a)} AND {hi} < {s.arg(b)}"
        return test if op == "in" else f"NOT ({test})"
    if op == "meets":
        return f"{lo} <= {s.arg(b)} AND {hi} >= {s.arg(a)}"
    col, cmp = (hi, op[2:]) if op.startswith("hi") else (lo, op[2:])
    return f"{col} {cmp} {s.arg(a)}"


def _range_test(s: _Sql, prefix: str | None, v: RangeValue | QuantityValue, x: str) -> str:
    """The test of one alternative on an ix_range row ``x`` (a Range value of the parameter)."""
    if isinstance(v, RangeValue):  # a number parameter: the Range's values, whatever its unit
        return _range_number_test(s, prefix, v, f"{x}.lo", f"{x}.hi")
    test = _range_number_test(s, prefix, v.number, f"{x}.lo", f"{x}.hi")
    if v.code is None:
        return f"{test} AND {x}.system = {s.arg(v.system)}" if v.system else test
    exact = f"{x}.code = {s.arg(v.code)} AND {test}"
    if v.system:
        exact = f"{x}.system = {s.arg(v.system)} AND {exact}"
    if v.canonical is None:
        return exact
    canonical = (f"{x}.system = 'http://unitsofmeasure.org' AND {x}.ccode = "
                 f"{s.arg(v.canonical_code)} AND "
                 + _range_number_test(s, prefix, v.canonical, f"{x}.clo", f"{x}.chi"))
    return f"({exact}) OR ({canonical})"


def _reference_test(s: _Sql, v: RefValue, x: str) -> str:
    if v.identifier is not None:
        parts = [f"{x}.id_value = {s.arg(v.identifier.code)}"]
        if v.identifier.system == "":
            parts.append(f"{x}.id_system IS NULL")
        elif v.identifier.system is not None:
            parts.append(f"{x}.id_system = {s.arg(v.identifier.system)}")
        return " AND ".join(parts)
    if v.id_suffix is not None:
        tail = "/" + v.id_suffix
        return f"substr({x}.target, -{len(tail)}) = {s.arg(tail)}"
    test = f"{x}.target IN ({', '.join(s.arg(t) for t in v.targets)})"
    if v.canonical is None:
        return test
    # a canonical URL without a version or fragment matches it stored with any (url|1.0, url#p)
    ranges = [f"({x}.target >= {s.arg(v.canonical + sep)} AND "
              f"{x}.target < {s.arg(v.canonical + sep + TOP)})" for sep in ("|", "#")]
    return f"({' OR '.join([test, *ranges])})"


def _composite_test(s: _Sql, i: int, part: tuple, x: str, ranged: bool = False) -> str:
    """``ranged``: the parameter's quantity component can be a Range (a row with lo and hi, no
    num), tested as a Range of a quantity parameter is."""
    ptype, prefix, v = part
    if i == 0:  # the first component is a token: c1 = 'system|code'
        if ptype != "token":
            return "0"
        if v.system is not None and v.code is not None:
            return f"{x}.c1 = {s.arg(v.system + '|' + v.code)}"
        if v.code is not None:
            return f"substr({x}.c1, instr({x}.c1, '|') + 1) = {s.arg(v.code)}"
        return f"{x}.c1 >= {s.arg(v.system + '|')} AND {x}.c1 < {s.arg(v.system + '|' + TOP)}"
    if ptype == "quantity":
        test = _number_test(s, prefix, v.number, f"{x}.num")
        if ranged:
            test = (f"(({x}.num IS NOT NULL AND {test}) OR ({x}.num IS NULL AND {x}.lo IS NOT "
                    f"NULL AND {_range_number_test(s, prefix, v.number, f'{x}.lo', f'{x}.hi')}))")
        if v.code is None:
            if v.system:
                test += (f" AND {x}.c2 >= {s.arg(v.system + '|')} "
                         f"AND {x}.c2 < {s.arg(v.system + '|' + TOP)}")
            return test
        if v.system:
            exact = f"{x}.c2 = {s.arg(v.system + '|' + v.code)} AND " + test
        else:  # no system: the code in any system
            exact = f"substr({x}.c2, instr({x}.c2, '|') + 1) = {s.arg(v.code)} AND " + test
        if v.canonical is None:
            return exact
        # UCUM units that differ by a metric prefix: compare in the canonical unit
        code = s.arg(v.canonical_code)
        folded = _number_test(s, prefix, v.canonical, f"fhir_ucum({x}.c2, {x}.num, {code})")
        if ranged:
            folded = (f"(({x}.num IS NOT NULL AND {folded}) OR ({x}.num IS NULL AND {x}.lo IS "
                      "NOT NULL AND " + _range_number_test(
                          s, prefix, v.canonical, f"fhir_ucum({x}.c2, {x}.lo, {code})",
                          f"fhir_ucum({x}.c2, {x}.hi, {code})") + "))")
        return f"(({exact}) OR ({folded}))"
    if ptype == "number":
        return _number_test(s, prefix, v, f"{x}.num")
    if ptype == "date":
        return date_test(s, prefix, v, f"{x}.lo", f"{x}.hi")
    if ptype == "token":
        if v.system is not None and v.code is not None:
            return f"{x}.c2 = {s.arg(v.system + '|' + v.code)}"
        if v.code is None:  # system|: any code of that system, as the first component reads it
            return f"{x}.c2 >= {s.arg(v.system + '|')} AND {x}.c2 < {s.arg(v.system + '|' + TOP)}"
        return f"substr({x}.c2, instr({x}.c2, '|') + 1) = {s.arg(v.code)}"
    if ptype == "string":
        n = normalize(v)
        return f"{x}.c2 >= {s.arg(n)} AND {x}.c2 < {s.arg(n + TOP)}"
    return f"{x}.c2 = {s.arg(v)}"


def _after(s: _Sql, comps: list[tuple[str, bool]], vals: list[Any], reverse: bool) -> str:
    """Rows after ``vals`` in the order of ``comps`` (before them when ``reverse``)."""
    ors = []
    for i, (expr, desc) in enumerate(comps):
        eqs = [f"{comps[j][0]} IS {s.arg(vals[j])}" for j in range(i)]
        op = "<" if desc != reverse else ">"
        if vals[i] is None:
            continue  # nothing is after NULL on this component except equal rows
        ors.append("(" + " AND ".join([*eqs, f"{expr} {op} {s.arg(vals[i])}"]) + ")")
    return "(" + " OR ".join(ors or ["0"]) + ")"


def _key(f: tuple) -> list:
    """The cursor values of a fetched row (pk, rid, sort values…): the sort values, then the pk."""
    return [*f[2:], f[0]]


def _expand(values: list) -> list:
    """Cursor values -> values of the order's components (missing flag and value per key, id)."""
    out: list[Any] = []
    for v in values[:-1]:
        out += [int(v is None), v]
    out.append(values[-1])
    return out


def _chunks(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
