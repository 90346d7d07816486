"""The terminology read model as stored: code systems, concepts, hierarchies, aliases, resources.

``TerminologyStore`` reads ``$HUB_DATA_DIR/terminology.sqlite`` (written by
``projections.terminology``) through its own read-only connection per thread, and caches what it
derives (aliases, descendants, value-set plans and expansions) until the model's ``generation``
moves, which one tiny query per call checks. ``terminology.valueset`` compiles and expands value
sets against it; ``terminology.service.TerminologyService`` is this store plus ``expand_codes``.

Unknown code systems and value sets raise ``TerminologyNotFound``; mistakes in a value set
(a cycle of includes, a bad filter) raise ``TerminologyError``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hub.core.errors import HubError
from projections.readers import ReadConnections
from terminology import rows as R
from terminology.aliases import alias_groups

log = logging.getLogger("terminology.store")


class TerminologyNotFound(HubError, LookupError):
    """An unknown code system, value set or concept map (404)."""

    error_code = "not-found"


class TerminologyError(HubError, ValueError):
    """A request or a value set the operations cannot answer (400); ``code`` is the
    OperationOutcome issue type (``invalid``, ``too-costly``, ``not-supported``)."""

    error_code = "invalid"

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CodeSystemRef:
    sid: int
    stream: str
    url: str | None
    version: str | None
    case_sensitive: bool
    content: str | None
    count: int

    @property
    def rid(self) -> str:
        return self.stream.split("/", 1)[1]


@dataclass(frozen=True, slots=True)
class Concept:
    code: str
    display: str | None
    active: bool
    abstract: bool
    extra: bytes | None = None

    def details(self) -> dict:
        return orjson.loads(self.extra) if self.extra else {}


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """A ValueSet or ConceptMap: its key in the model, canonical and header JSON."""

    key: int
    stream: str
    url: str | None
    version: str | None
    body: dict

    @property
    def rid(self) -> str:
        return self.stream.split("/", 1)[1]


EXPANSION_CACHE = 64  # value-set expansions kept (search asks the same few again and again)
HIERARCHY_CACHE = 4096  # descendant / ancestor sets kept


def split_canonical(value: str) -> tuple[str, str | None]:
    """``url|version`` -> (url, version)."""
    url, bar, version = value.partition("|")
    return url, (version or None) if bar else None


class TerminologyStore:
    """The read model's connection, caches and lookups; ``TerminologyService`` adds value-set
    expansion on top (``terminology.valueset`` works on this class, so it sits below the service)."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        if not Path(self.path).exists():  # nothing followed yet: an empty model, not an error
            from projections.terminology import TerminologyProjection

            TerminologyProjection(self.path).close()
        self._lock = threading.Lock()
        self.readers = ReadConnections(self.path)  # every thread's, closed by close()
        self._generation: int | None = None
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._canonical: dict[str, str] | None = None
        self._groups: dict[str, frozenset[str]] = {}
        self._cs: dict[tuple, CodeSystemRef | None] = {}
        # resources by id (ResourceRef | None), headers (dict), ConceptMap lists (list[ResourceRef])
        self._res: dict[tuple, Any] = {}
        self.plans: dict[tuple, Any] = {}  # compiled value sets (terminology.valueset)
        self.expansions: OrderedDict[tuple, Any] = OrderedDict()
        self._hier: OrderedDict[tuple, frozenset[str]] = OrderedDict()

    # -- connection and freshness --------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        return self.readers.get()

    def q(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._conn().execute(sql, args).fetchall()

    def refresh(self) -> int:
        """Forget cached answers if the model changed since; the model's generation."""
        gen = self.q("SELECT value FROM t_meta WHERE key='generation'")[0][0]
        if gen != self._generation:
            with self._lock:
                if gen != self._generation:
                    self._reset_caches()
                    self._generation = gen
        return gen

    def close(self) -> None:
        self.readers.close()

    # -- systems and their aliases -------------------------------------------------------------

    def _alias_map(self) -> dict[str, str]:
        if self._canonical is not None:
            return self._canonical
        # union of the URIs named together: a CodeSystem's url with its identifiers, the
        # uniqueIds of one NamingSystem, the well-known pairs (terminology.aliases: one rule with
        # the connectors' normalisers)
        by_stream: dict[str, list[tuple[str, str]]] = {}
        for stream, alias, kind in self.q("SELECT stream, alias, kind FROM t_alias "
                                          "WHERE kind != 'valueset'"):
            by_stream.setdefault(stream, []).append((alias, kind))
        refused: dict[int, str] = {}
        canonical, self._groups = alias_groups(by_stream.values(), refused)
        streams = list(by_stream)
        for i, why in refused.items():  # stored before the hub refused such names: not applied
            log.warning("%s not applied as code system aliases: %s", streams[i], why)
        self._canonical = canonical
        return canonical

    def named(self, leave_out: str | None = None) -> list[list[tuple[str, str]]]:
        """The (uri, kind) names of each stored CodeSystem and NamingSystem, in the order
        ``alias_groups`` reads them (``leave_out``: a stream whose new version is judged)."""
        self.refresh()
        by_stream: dict[str, list[tuple[str, str]]] = {}
        for stream, alias, kind in self.q("SELECT stream, alias, kind FROM t_alias "
                                          "WHERE kind != 'valueset'"):
            if stream != leave_out:
                by_stream.setdefault(stream, []).append((alias, kind))
        return list(by_stream.values())

    def canonical_system(self, system_uri: str) -> str:
        """The one name of a code system known under several URIs (OID and URL); a bare OID is
        read as ``urn:oid:``; an unknown URI is returned as it is."""
        self.refresh()
        uri = R.oid_uri(system_uri.strip())
        return self._alias_map().get(uri, uri)

    def system_aliases(self, system_uri: str) -> frozenset[str]:
        """Every URI of the code system (the canonical one included)."""
        canonical = self.canonical_system(system_uri)
        return self._groups.get(canonical, frozenset((canonical,)))

    def code_system(self, system: str, version: str | None = None) -> CodeSystemRef | None:
        """The CodeSystem of ``system`` (any of its URIs; ``url|version`` too): that version, or
        the latest (highest version, then the last stored)."""
        self.refresh()
        if version is None and "|" in system:
            system, version = split_canonical(system)
        key = (system, version)
        if key in self._cs:
            return self._cs[key]
        names = sorted(self.system_aliases(system))
        marks = ",".join("?" * len(names))
        sql = (f"SELECT sid, stream, url, version, case_sensitive, content, count FROM t_cs "
               f"WHERE url IN ({marks})")
        args: tuple = tuple(names)
        if version is not None:
            sql += " AND version = ?"
            args += (version,)
        found = self.q(sql + " ORDER BY vkey DESC, nid DESC LIMIT 1", args)
        ref = None
        if found:
            sid, stream, url, ver, cs_, content, count = found[0]
            ref = CodeSystemRef(sid, stream, url, ver, bool(cs_), content, count)
        self._cs[key] = ref
        return ref

    def code_system_by_id(self, rid: str) -> CodeSystemRef | None:
        self.refresh()
        found = self.q("SELECT sid, stream, url, version, case_sensitive, content, count FROM t_cs "
                       "WHERE stream = ?", (f"CodeSystem/{rid}",))
        if not found:
            return None
        sid, stream, url, ver, cs_, content, count = found[0]
        return CodeSystemRef(sid, stream, url, ver, bool(cs_), content, count)

    def header(self, stream: str) -> dict:
        """The stored resource without its bulk (``terminology.rows.header``)."""
        key = ("header", stream)
        if key not in self._res:
            found = self.q("SELECT body FROM t_resource WHERE stream=?", (stream,))
            self._res[key] = orjson.loads(found[0][0]) if found else {}
        return self._res[key]

    def systems(self, text: str = "", limit: int = 200) -> list[dict]:
        """The code systems held (url, version, concepts, title), those whose URL or title holds
        ``text`` (any case) when given, at most ``limit``: what the console lists."""
        self.refresh()
        needle = text.strip().lower()
        out = []
        for stream, url, version, count in self.q(
                "SELECT stream, url, version, count FROM t_cs ORDER BY url, vkey"):
            head = self.header(stream)
            title = head.get("title") or head.get("name") or ""
            if needle and needle not in f"{url} {title}".lower():
                continue
            out.append({"url": url, "version": version, "count": count, "title": title})
            if len(out) >= limit:
                break
        return out

    def value_sets(self, text: str = "", limit: int = 200) -> list[dict]:
        """The value sets held (url, version, title), as ``systems`` lists the code systems."""
        self.refresh()
        needle = text.strip().lower()
        out = []
        for stream, url, version in self.q("SELECT stream, url, version FROM t_vs "
                                           "ORDER BY url, vkey"):
            head = self.header(stream)
            title = head.get("title") or head.get("name") or ""
            if needle and needle not in f"{url} {title}".lower():
                continue
            out.append({"url": url, "version": version, "title": title})
            if len(out) >= limit:
                break
        return out

    def held(self) -> list[tuple[str, list[str | None]]]:
        """Each code system held by its URL, with its versions (None: one without a version) in
        the order ``code_system`` ranks them, the default (latest) last."""
        self.refresh()
        out: dict[str, list[str | None]] = {}
        for url, version in self.q("SELECT url, version FROM t_cs WHERE url IS NOT NULL "
                                   "ORDER BY url, vkey, nid"):
            versions = out.setdefault(url, [])
            if version in versions:  # stored twice (two ids): the later one counts
                versions.remove(version)
            versions.append(version)
        return list(out.items())

    def versions(self, system: str) -> list[str]:
        names = sorted(self.system_aliases(system))
        marks = ",".join("?" * len(names))
        return [v or "(none)" for (v,) in self.q(
            f"SELECT version FROM t_cs WHERE url IN ({marks}) ORDER BY vkey", tuple(names))]

    def require_system(self, system: str, version: str | None = None) -> CodeSystemRef:
        cs = self.code_system(system, version)
        if cs is None:
            if version is not None and self.code_system(system) is not None:
                raise TerminologyNotFound(
                    f"Code system {system} has no version {version!r} (known: "
                    f"{', '.join(self.versions(system))})")
            raise TerminologyNotFound(f"Code system {system} is not known")
        return cs

    # -- concepts --------------------------------------------------------------------------------

    def concept(self, cs: CodeSystemRef, code: str) -> Concept | None:
        found = self.q("SELECT code, display, active, abstract, extra FROM t_concept "
                       "WHERE sid=? AND code=?", (cs.sid, code))
        if not found and not cs.case_sensitive and code.isprintable():
            # caseSensitive false (or unsaid): the code in any (ASCII) case
            found = self.q("SELECT code, display, active, abstract, extra FROM t_concept "
                           "INDEXED BY t_concept_nocase WHERE sid=? AND code = ? COLLATE NOCASE "
                           "LIMIT 1", (cs.sid, code))
        if not found:
            return None
        code, display, active, abstract, extra = found[0]
        return Concept(code, display, bool(active), bool(abstract), extra)

    def find(self, cs: CodeSystemRef, text: str, limit: int = 20) -> list[Concept]:
        """Active concepts whose code starts with ``text`` or whose display holds it (codes
        first), for a person looking a standard code up."""
        like = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.q("SELECT code, display, active, abstract FROM t_concept WHERE sid=? AND "
                      "active AND (code LIKE ? ESCAPE '\\' OR display LIKE ? ESCAPE '\\') "
                      "ORDER BY code NOT LIKE ? ESCAPE '\\', length(code), code LIMIT ?",
                      (cs.sid, like + "%", "%" + like + "%", like + "%", limit))
        return [Concept(c, d, bool(a), bool(b)) for c, d, a, b in rows]

    def designations(self, cs: CodeSystemRef, codes: list[str]) -> dict[str, list[dict]]:
        """The designations of those of ``codes`` that have any (code -> designations)."""
        out: dict[str, list[dict]] = {}
        for i in range(0, len(codes), 500):
            chunk = codes[i:i + 500]
            rows = self.q(f"SELECT code, extra FROM t_concept WHERE sid=? AND extra IS NOT NULL "
                          f"AND code IN ({','.join('?' * len(chunk))})", (cs.sid, *chunk))
            for code, extra in rows:
                found = [d for d in R.as_list(orjson.loads(extra).get("designation"))
                         if isinstance(d, dict) and R.text(d.get("value"))]
                if found:
                    out[code] = found
        return out

    def concepts(self, cs: CodeSystemRef, codes: list[str] | None = None) -> list[Concept]:
        """The concepts of a system in definition order (or those of ``codes`` that exist)."""
        if codes is None:
            rows = self.q("SELECT code, display, active, abstract FROM t_concept "
                          "INDEXED BY t_concept_seq WHERE sid=? ORDER BY seq", (cs.sid,))
            return [Concept(c, d, bool(a), bool(b)) for c, d, a, b in rows]
        out = []
        for i in range(0, len(codes), 500):
            chunk = codes[i:i + 500]
            rows = self.q(f"SELECT code, display, active, abstract, seq FROM t_concept WHERE sid=? "
                          f"AND code IN ({','.join('?' * len(chunk))})", (cs.sid, *chunk))
            out.extend(rows)
        out.sort(key=lambda r: r[4])
        return [Concept(c, d, bool(a), bool(b)) for c, d, a, b, _ in out]

    def is_a(self, cs: CodeSystemRef, code: str, ancestor: str) -> bool:
        """``code`` is ``ancestor`` or below it."""
        return code == ancestor or bool(self.q(
            "SELECT 1 FROM t_closure INDEXED BY t_closure_up WHERE sid=? AND des=? AND anc=? "
            "LIMIT 1", (cs.sid, code, ancestor)))

    def parents(self, cs: CodeSystemRef, code: str) -> list[str]:
        return [a for (a,) in self.q("SELECT anc FROM t_closure INDEXED BY t_closure_up "
                                     "WHERE sid=? AND des=? AND direct=1 ORDER BY anc",
                                     (cs.sid, code))]

    def children(self, cs: CodeSystemRef, code: str) -> list[str]:
        return [d for (d,) in self.q("SELECT des FROM t_closure WHERE sid=? AND anc=? AND direct=1 "
                                     "ORDER BY des", (cs.sid, code))]

    def _below(self, cs: CodeSystemRef, code: str) -> frozenset[str]:
        key = ("below", cs.sid, code)
        got = self._hier.get(key)
        if got is None:
            got = frozenset(d for (d,) in self.q("SELECT des FROM t_closure WHERE sid=? AND anc=?",
                                                 (cs.sid, code)))
            self._remember(key, got)
        return got

    def _above(self, cs: CodeSystemRef, code: str) -> frozenset[str]:
        key = ("above", cs.sid, code)
        got = self._hier.get(key)
        if got is None:
            got = frozenset(a for (a,) in self.q(
                "SELECT anc FROM t_closure INDEXED BY t_closure_up WHERE sid=? AND des=?",
                (cs.sid, code)))
            self._remember(key, got)
        return got

    def _remember(self, key: tuple, value: frozenset[str]) -> None:
        self._hier[key] = value
        if len(self._hier) > HIERARCHY_CACHE:
            self._hier.popitem(last=False)

    def descendants(self, system: str, code: str, include_self: bool = True,
                    version: str | None = None) -> frozenset[str]:
        """Codes below ``code`` in ``system`` (and ``code`` itself with ``include_self``).

        A code the system does not define has nothing below it (``{code}`` with include_self:
        ``:below`` then means the code itself). Unknown system: ``TerminologyNotFound``. The
        answer is cached (a frozenset: share it, do not change it)."""
        return self._with_self(self.require_system(system, version), code, include_self, "below")

    def ancestors(self, system: str, code: str, include_self: bool = True,
                  version: str | None = None) -> frozenset[str]:
        """Codes above ``code`` in ``system`` (and ``code`` itself with ``include_self``)."""
        return self._with_self(self.require_system(system, version), code, include_self, "above")

    def _with_self(self, cs: CodeSystemRef, code: str, include_self: bool,
                   way: str) -> frozenset[str]:
        found = self._below(cs, code) if way == "below" else self._above(cs, code)
        if not include_self:
            return found
        key = (way, cs.sid, code, True)
        got = self._hier.get(key)
        if got is None:
            got = found | {code}
            self._remember(key, got)
        return got

    # -- value sets and concept maps -------------------------------------------------------------

    def _resource(self, table: str, rtype: str, url: str, version: str | None) -> ResourceRef | None:
        self.refresh()
        if version is None and "|" in url:
            url, version = split_canonical(url)
        key = (table, url, version)
        if key in self._res:
            return self._res[key]
        id_col = "vid" if table == "t_vs" else "mid"
        sql = (f"SELECT x.{id_col}, x.stream, x.url, x.version, r.body FROM {table} x "
               f"JOIN t_resource r ON r.stream = x.stream WHERE x.url = ?")
        args: tuple = (url,)
        if version is not None:
            sql += " AND x.version = ?"
            args += (version,)
        elif table == "t_cm":  # the url's current map: never one of another institution's
            holder = self._url_holders().get(url)
            if holder is not None:
                sql += " AND (x.owner IS NULL OR x.owner = ?)"
                args += (holder,)
        found = self.q(sql + " ORDER BY x.vkey DESC, x.nid DESC LIMIT 1", args)
        if not found and table == "t_vs":  # a value set named by its OID (ValueSet.identifier)
            named = [s for (s,) in self.q("SELECT stream FROM t_alias WHERE alias=? AND "
                                          "kind='valueset'", (R.oid_uri(url),))]
            if named:
                sql = sql.replace("x.url = ?", f"x.stream IN ({','.join('?' * len(named))})")
                found = self.q(sql + " ORDER BY x.vkey DESC, x.nid DESC LIMIT 1",
                               (*named, *args[1:]))
        ref = None
        if found:
            key_, stream, u, v, body = found[0]
            ref = ResourceRef(key_, stream, u, v, orjson.loads(body))
        self._res[key] = ref
        return ref

    def _resource_by_id(self, table: str, rtype: str, rid: str) -> ResourceRef | None:
        self.refresh()
        id_col = "vid" if table == "t_vs" else "mid"
        found = self.q(f"SELECT x.{id_col}, x.stream, x.url, x.version, r.body FROM {table} x "
                       f"JOIN t_resource r ON r.stream = x.stream WHERE x.stream = ?",
                       (f"{rtype}/{rid}",))
        if not found:
            return None
        key_, stream, u, v, body = found[0]
        return ResourceRef(key_, stream, u, v, orjson.loads(body))

    def value_set(self, url: str, version: str | None = None) -> ResourceRef | None:
        return self._resource("t_vs", "ValueSet", url, version)

    def value_set_by_id(self, rid: str) -> ResourceRef | None:
        return self._resource_by_id("t_vs", "ValueSet", rid)

    def concept_map(self, url: str, version: str | None = None) -> ResourceRef | None:
        return self._resource("t_cm", "ConceptMap", url, version)

    def concept_map_by_id(self, rid: str) -> ResourceRef | None:
        return self._resource_by_id("t_cm", "ConceptMap", rid)

    def concept_maps(self, source: str | None = None, target: str | None = None
                     ) -> list[ResourceRef]:
        """The latest version of every ConceptMap (optionally of a source / target scope)."""
        self.refresh()
        key = ("maps", source, target)
        if key in self._res:
            return self._res[key]
        sql = ("SELECT x.mid, x.stream, x.url, x.version, r.body, x.owner FROM t_cm x "
               "JOIN t_resource r ON r.stream = x.stream WHERE 1=1")
        args: tuple = ()
        for col, value in (("source", source), ("target", target)):
            if value is not None:
                sql += f" AND x.{col} = ?"
                args += (value,)
        rows = self.q(sql + " ORDER BY x.nid", args)
        # who holds each url is judged over all its maps, whatever the scope asked
        latest = R.latest_per_url(rows, lambda row: row[2], lambda row: row[3],
                                  lambda row: row[5], self._url_holders())
        found = [ResourceRef(k, s, u, v, orjson.loads(b)) for k, s, u, v, b, _ in latest]
        self._res[key] = found
        return found

    def _url_holders(self) -> dict[str, str]:
        """url -> the institution that holds it: that of its first stored map naming one."""
        cached = self._res.get(("holders",))
        if cached is not None:
            return cached
        out: dict[str, str] = {}
        for stream, url, owner in self.q("SELECT stream, url, owner FROM t_cm WHERE owner IS "
                                         "NOT NULL AND url IS NOT NULL ORDER BY nid"):
            if out.setdefault(url, owner) != owner:  # stored before the hub refused it
                log.warning("%s (institution %s) is passed over: its url %s is institution "
                            "%s's", stream, owner, url, out[url])
        self._res[("holders",)] = out
        return out

    def map_owners(self, url: str) -> set[str | None]:
        """The institutions (None: the region) that wrote the stored ConceptMaps of ``url``."""
        self.refresh()
        return {owner or None for (owner,) in self.q("SELECT owner FROM t_cm WHERE url=?",
                                                     (url,))}

    def map_rows(self, mids: list[int], systems: frozenset[str], code: str,
                 reverse: bool) -> list[tuple]:
        """Rows of ``t_map`` whose source (or target, ``reverse``) is ``code`` in one of
        ``systems``: (mid, ssys, scode, sdisplay, tsys, tcode, tdisplay, equivalence, comment)."""
        end = ("tcode", "tsys") if reverse else ("scode", "ssys")
        index = "t_map_target" if reverse else "t_map_source"
        names = sorted(systems)
        sql = (f"SELECT mid, ssys, scode, sdisplay, tsys, tcode, tdisplay, equivalence, comment "
               f"FROM t_map INDEXED BY {index} WHERE {end[0]}=? AND {end[1]} IN "
               f"({','.join('?' * len(names))})")
        sql += f" AND mid IN ({','.join('?' * len(mids))})"
        return self.q(sql + " ORDER BY mid, rowid", (code, *names, *mids))

    def cached_expansion(self, key: tuple, compute) -> Any:
        got = self.expansions.get(key)
        if got is None:
            got = compute()
            self.expansions[key] = got
            if len(self.expansions) > EXPANSION_CACHE:
                self.expansions.popitem(last=False)
        else:
            self.expansions.move_to_end(key)
        return got
