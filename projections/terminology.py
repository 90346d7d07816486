"""The terminology read model: code systems, value sets, concept maps and naming systems.

CodeSystem, ValueSet, ConceptMap and NamingSystem are ordinary resources in the event log; this
projection keeps what the terminology operations read, in ``$HUB_DATA_DIR/terminology.sqlite``:

- ``t_resource``: every current terminology resource (its header JSON: a CodeSystem without its
  concepts, a ConceptMap without its elements, a ValueSet or NamingSystem whole);
- ``t_cs`` / ``t_concept`` / ``t_closure`` / ``t_prop``: each CodeSystem version under an integer
  key; its concepts (display, active, abstract, the rest as JSON); the hierarchy as a closure
  table (one row per concept and ancestor, both ways indexed, so is-a is one indexed read);
  property values (for ``=`` filters);
- ``t_cm`` / ``t_map``: each ConceptMap and its source -> target rows, indexed from both ends
  (``$translate`` and ``reverse``);
- ``t_vs``: each ValueSet's url and version;
- ``t_alias``: the URIs a code system is also known by (CodeSystem.identifier OIDs, NamingSystem
  uniqueIds), so ``urn:oid:…`` and the canonical URL are one system; and a ValueSet's OIDs.

A new version of a resource replaces its rows, a delete removes them; rows and the tracking
position are written in one transaction, and ``generation`` in ``t_meta`` counts the changes, so
readers (``terminology.service``) can cache until it moves. ``hub projections rebuild
terminology`` replays the log into an empty model.
"""

from __future__ import annotations

import orjson
from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC, institution_of
from projections.sqlite_model import SQLiteReadModel, newest
from terminology import rows as R
from terminology.aliases import names_of

NAME = "terminology"
TYPES = ("CodeSystem", "ValueSet", "ConceptMap", "NamingSystem")

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS t_meta (key TEXT PRIMARY KEY, value)",
    "INSERT OR IGNORE INTO t_meta (key, value) VALUES ('writer', 0)",
    "INSERT OR IGNORE INTO t_meta (key, value) VALUES ('generation', 0)",
    "CREATE TABLE IF NOT EXISTS t_resource (stream TEXT PRIMARY KEY, rtype TEXT NOT NULL, "
    "rid TEXT NOT NULL, version INTEGER NOT NULL, nid INTEGER NOT NULL, url TEXT, "
    "bversion TEXT, body BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS t_resource_url ON t_resource (rtype, url)",
    "CREATE TABLE IF NOT EXISTS t_cs (sid INTEGER PRIMARY KEY, stream TEXT UNIQUE NOT NULL, "
    "url TEXT, version TEXT, vkey TEXT NOT NULL, nid INTEGER NOT NULL, "
    "case_sensitive INTEGER NOT NULL, content TEXT, count INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS t_cs_url ON t_cs (url, vkey, nid)",
    "CREATE TABLE IF NOT EXISTS t_concept (sid INTEGER NOT NULL, code TEXT NOT NULL, "
    "seq INTEGER NOT NULL, display TEXT, active INTEGER NOT NULL, abstract INTEGER NOT NULL, "
    "extra BLOB, PRIMARY KEY (sid, code)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS t_concept_seq ON t_concept (sid, seq)",
    # codes of systems that are not case-sensitive are found in any case
    "CREATE INDEX IF NOT EXISTS t_concept_nocase ON t_concept (sid, code COLLATE NOCASE)",
    # anc is an ancestor of des (the concept itself is not listed); direct: anc is a parent
    "CREATE TABLE IF NOT EXISTS t_closure (sid INTEGER NOT NULL, anc TEXT NOT NULL, "
    "direct INTEGER NOT NULL, des TEXT NOT NULL, PRIMARY KEY (sid, anc, direct, des)) "
    "WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS t_closure_up ON t_closure (sid, des, anc)",
    "CREATE TABLE IF NOT EXISTS t_prop (sid INTEGER NOT NULL, prop TEXT NOT NULL, "
    "value TEXT NOT NULL, code TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS t_prop_value ON t_prop (sid, prop, value)",
    "CREATE TABLE IF NOT EXISTS t_vs (vid INTEGER PRIMARY KEY, stream TEXT UNIQUE NOT NULL, "
    "url TEXT, version TEXT, vkey TEXT NOT NULL, nid INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS t_vs_url ON t_vs (url, vkey, nid)",
    "CREATE TABLE IF NOT EXISTS t_cm (mid INTEGER PRIMARY KEY, stream TEXT UNIQUE NOT NULL, "
    "url TEXT, version TEXT, vkey TEXT NOT NULL, nid INTEGER NOT NULL, source TEXT, "
    "target TEXT, owner TEXT)",
    "CREATE INDEX IF NOT EXISTS t_cm_url ON t_cm (url, vkey, nid)",
    "CREATE TABLE IF NOT EXISTS t_map (mid INTEGER NOT NULL, ssys TEXT NOT NULL, "
    "scode TEXT NOT NULL, sdisplay TEXT, tsys TEXT NOT NULL, tcode TEXT, tdisplay TEXT, "
    "equivalence TEXT NOT NULL, comment TEXT)",
    "CREATE INDEX IF NOT EXISTS t_map_source ON t_map (scode, ssys, mid)",
    "CREATE INDEX IF NOT EXISTS t_map_target ON t_map (tcode, tsys, mid)",
    "CREATE INDEX IF NOT EXISTS t_map_mid ON t_map (mid)",
    # kind: url (a CodeSystem's own url), identifier, preferred / other (NamingSystem uniqueId);
    # valueset: a ValueSet's identifier (its OID), kept apart from the code systems
    "CREATE TABLE IF NOT EXISTS t_alias (stream TEXT NOT NULL, alias TEXT NOT NULL, "
    "kind TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS t_alias_stream ON t_alias (stream)",
    "CREATE INDEX IF NOT EXISTS t_alias_alias ON t_alias (alias, kind)",
]

class TerminologyProjection(SQLiteReadModel):
    name = NAME
    meta_table = "t_meta"  # its 'writer' row: the write lock
    schema = SCHEMA
    types = TYPES  # the runner hands over only these events
    rules = 1
    older_rules = "versions ordered as text, v9 after v10; maps without their institution"

    tables = ("t_resource", "t_cs", "t_concept", "t_closure", "t_prop", "t_vs", "t_cm", "t_map",
              "t_alias")

    def opened(self, c) -> None:
        # a model from before maps had owners: the column added (filled by a rebuild, which its
        # rules ask for)
        c.execute("PRAGMA table_info(t_cm)")
        if "owner" not in {row[1] for row in c.fetchall()}:
            c.execute("ALTER TABLE t_cm ADD COLUMN owner TEXT")

    def clear(self, c) -> None:
        super().clear(c)
        c.execute("UPDATE t_meta SET value = value + 1 WHERE key = 'generation'")

    def generation(self) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT value FROM t_meta WHERE key = 'generation'")
            return c.fetchone()[0]

    def apply_new(self, c, notifications: list[Notification]) -> None:
        latest = newest(notifications)  # only the last event of a resource counts
        # a map's owner: the institution its earliest version naming one came from (as the
        # repository's record owner), kept across versions whoever wrote them
        owners: dict[str, str] = {}
        for n in notifications:
            stream = str(n.originator_id)
            if stream not in owners and (who := institution_of(n.state)):
                owners[stream] = who
        for stream, n in latest.items():
            c.execute("SELECT owner FROM t_cm WHERE stream=?", (stream,))
            before = c.fetchone()
            owner = (before[0] if before and before[0] else None) or owners.get(stream)
            self._drop(c, stream)
            if KIND_OF_TOPIC.get(n.topic) == "deleted":
                continue
            body = n.state.partition(b"\n")[2]
            try:
                d = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(d, dict) and d.get("resourceType") in TYPES:
                self._add(c, stream, n, d, owner)
        if latest:
            c.execute("UPDATE t_meta SET value = value + 1 WHERE key = 'generation'")

    # -- rows of one resource --------------------------------------------------------------------

    @staticmethod
    def _drop(c, stream: str) -> None:
        c.execute("SELECT sid FROM t_cs WHERE stream=?", (stream,))
        for (sid,) in c.fetchall():
            for table in ("t_concept", "t_closure", "t_prop"):
                c.execute(f"DELETE FROM {table} WHERE sid=?", (sid,))
        c.execute("SELECT mid FROM t_cm WHERE stream=?", (stream,))
        for (mid,) in c.fetchall():
            c.execute("DELETE FROM t_map WHERE mid=?", (mid,))
        for table in ("t_cs", "t_cm", "t_vs", "t_alias", "t_resource"):
            c.execute(f"DELETE FROM {table} WHERE stream=?", (stream,))

    @staticmethod
    def _add(c, stream: str, n: Notification, d: dict, owner: str | None = None) -> None:
        rtype = d["resourceType"]
        url, version = R.text(d.get("url")), R.text(d.get("version"))
        head = R.header(d)
        if rtype == "ConceptMap":
            head["unmapped"] = R.unmapped(d)
        c.execute("INSERT INTO t_resource (stream, rtype, rid, version, nid, url, bversion, body) "
                  "VALUES (?,?,?,?,?,?,?,?)", (stream, rtype, stream.split("/", 1)[1],
                                               n.originator_version, n.id, url, version,
                                               orjson.dumps(head)))
        vkey = R.version_key(version)
        if rtype == "CodeSystem":
            concepts, parents, props = R.concept_rows(d)
            c.execute("INSERT INTO t_cs (stream, url, version, vkey, nid, case_sensitive, content, "
                      "count) VALUES (?,?,?,?,?,?,?,?)",
                      (stream, url, version, vkey, n.id, int(d.get("caseSensitive") is True),
                       R.text(d.get("content")), len(concepts)))
            sid = c.lastrowid
            c.executemany("INSERT INTO t_concept (sid, code, seq, display, active, abstract, "
                          "extra) VALUES (?,?,?,?,?,?,?)",
                          [(sid, code, seq, display, active, abstract,
                            orjson.dumps(extra) if extra else None)
                           for code, seq, display, active, abstract, extra in concepts])
            c.executemany("INSERT INTO t_closure (sid, anc, direct, des) VALUES (?,?,?,?)",
                          ((sid, anc, int(anc in parents[code]), code)
                           for code, ancs in R.closure(parents).items() for anc in ancs))
            c.executemany("INSERT INTO t_prop (sid, prop, value, code) VALUES (?,?,?,?)",
                          ((sid, prop, value, code) for code, prop, value in props))
        elif rtype == "ConceptMap":
            c.execute("INSERT INTO t_cm (stream, url, version, vkey, nid, source, target, owner) "
                      "VALUES (?,?,?,?,?,?,?,?)", (stream, url, version, vkey, n.id,
                                                   R.scope(d, "source"), R.scope(d, "target"),
                                                   owner))
            mid = c.lastrowid
            c.executemany("INSERT INTO t_map (mid, ssys, scode, sdisplay, tsys, tcode, tdisplay, "
                          "equivalence, comment) VALUES (?,?,?,?,?,?,?,?,?)",
                          [(mid, *row) for row in R.map_rows(d)])
        elif rtype == "ValueSet":
            c.execute("INSERT INTO t_vs (stream, url, version, vkey, nid) VALUES (?,?,?,?,?)",
                      (stream, url, version, vkey, n.id))
        # the URIs it names (terminology.aliases: read by the hub and the connectors alike)
        c.executemany("INSERT INTO t_alias (stream, alias, kind) VALUES (?,?,?)",
                      [(stream, a, kind) for a, kind in names_of(d)])

    # -- operator views ----------------------------------------------------------------------------

    def dump(self) -> dict[str, list[tuple]]:
        """Every row but the integer keys, sorted (to compare a rebuild with an incremental
        build)."""
        queries = {
            "t_resource": "SELECT stream, version, url, bversion, body FROM t_resource",
            "t_concept": "SELECT s.stream, c.code, c.seq, c.display, c.active, c.abstract, c.extra "
                         "FROM t_concept c JOIN t_cs s USING (sid)",
            "t_closure": "SELECT s.stream, c.anc, c.direct, c.des FROM t_closure c JOIN t_cs s USING (sid)",
            "t_prop": "SELECT s.stream, p.prop, p.value, p.code FROM t_prop p JOIN t_cs s USING (sid)",
            "t_map": "SELECT m.stream, t.ssys, t.scode, t.tsys, t.tcode, t.equivalence "
                     "FROM t_map t JOIN t_cm m USING (mid)",
            "t_alias": "SELECT stream, alias, kind FROM t_alias",
        }
        out = {}
        with self.datastore.transaction(commit=False) as c:
            for name, sql in queries.items():
                c.execute(sql)
                out[name] = sorted((tuple(r) for r in c.fetchall()), key=repr)
        return out


