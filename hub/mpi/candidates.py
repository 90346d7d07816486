"""The identity-candidates read model: every current Patient's matching features and blocking keys.

Follows the Patient events of the log (``types``) into ``$HUB_DATA_DIR/identity-candidates.sqlite``:

- ``ic_patient``: one row per current Patient (``pk``, ``ref``, version, features as JSON with the
  hashes of its blocking keys);
- ``ic_key``: (64-bit key hash, pk), indexed on (hash, pk): a block is one indexed range read;
- ``ic_name``: how many current Patients carry each term ``compare.count_terms`` counts (names,
  Latin given names, phones, address lines: term frequencies), never below zero. The meta row
  ``terms`` says which counting the counts are complete under (``TERMS``): written when a new
  file starts from nothing and by a rebuild. A file without it (indexed before phones and
  addresses were counted) holds counts of only the Patients indexed since: ``counts_complete``
  is False and the model ``stale`` until ``hub projections rebuild identity-candidates``, and the
  matcher takes no agreeing phone or address for a person's own evidence meanwhile;
- ``ic_system``: the identifier-system roles each stored NamingSystem declares
  (``hub.mpi.identifiers``). The model follows NamingSystem events too: a change of roles re-reads
  every indexed Patient's other identifiers (kept in its features as ``x``) under the new
  configuration in the same transaction, so the index always answers under the configuration
  at its position, whether built incrementally or rebuilt. Decisions already taken stand until
  ``hub mpi rematch``.

Rows and the tracking position are written in one transaction, so the index is exactly the log up to
its position. A rebuild (``reset``) is a bulk load: key rows go in without their index, an updated
Patient gets a new pk and its old rows are dropped at the end (``caught_up``), where the index is
built once. ``put`` takes features directly (the matching benchmark and tests feed it without an
event store); the incremental matcher (``hub.mpi.incremental``) shares this file and its tracking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC
from hub.mpi import blocking, identifiers
from hub.mpi.compare import count_terms
from hub.mpi.normalise import features as patient_features
from projections.readers import ReadConnections
from projections.sqlite_model import SQLiteReadModel, newest

NAME = "identity-candidates"
_PREFIX = "Patient/"
_NS_PREFIX = "NamingSystem/"
# the counting of ``compare.count_terms`` in the meta row ``terms``: 2, phones and address lines
# besides names and Latin given names (files counted before carry no row). Raise it when that
# counting changes, so an index counted under the last one is stale until it is rebuilt
TERMS = 2
STALE_COUNTS = ("built before phones and address lines were counted: an agreeing phone or address "
                "links no one automatically (review instead) until "
                f"`hub projections rebuild {NAME}`")
_KEY_INDEX = "CREATE INDEX IF NOT EXISTS ic_key_h ON ic_key (h, pk)"
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS ic_meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS ic_patient (pk INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE, "
    "version INTEGER NOT NULL, f BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ic_key (h INTEGER NOT NULL, pk INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ic_name (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS ic_stale (pk INTEGER PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS ic_system (stream TEXT PRIMARY KEY, roles BLOB NOT NULL)",
    "INSERT OR IGNORE INTO ic_meta (key, value) VALUES ('writer', 0)",
    "INSERT OR IGNORE INTO ic_meta (key, value) VALUES ('bulk', 0)",
]


class IdentityCandidates(SQLiteReadModel):
    name = NAME
    meta_table = "ic_meta"  # its 'writer' row: the write lock
    schema = SCHEMA
    types: tuple[str, ...] = ("Patient", "NamingSystem")
    tables = ("ic_patient", "ic_key", "ic_name", "ic_stale", "ic_system")

    def opened(self, c: Any) -> None:
        # lookups: a dozen small indexed reads in one snapshot, on this thread's own connection
        self.readers = ReadConnections(self.path, timeout=30)
        c.execute("SELECT value FROM ic_meta WHERE key='bulk'")
        self._bulk = bool(c.fetchone()[0])
        if not self._bulk:
            c.execute(_KEY_INDEX)
        self.caps = blocking.caps()
        self.alerts = blocking.ALERTS
        self.roles = _load_roles(c)
        c.execute("SELECT value FROM ic_meta WHERE key='terms'")
        found = c.fetchone()
        self._complete = found is not None and found[0] >= TERMS
        if not self._complete:
            c.execute("SELECT 1 FROM ic_patient LIMIT 1")
            if c.fetchone() is None:  # nothing indexed: what is counted from now on is all
                c.execute("DELETE FROM ic_name")
                self._mark_complete(c)
            else:  # counts of Patients indexed since, less updates and deletes of earlier ones
                c.execute("DELETE FROM ic_name WHERE n <= 0")

    def _mark_complete(self, c: Any) -> None:
        c.execute("INSERT OR REPLACE INTO ic_meta (key, value) VALUES ('terms', ?)", (TERMS,))
        self._complete = True

    def counts_complete(self) -> bool:
        """Whether the term counts are every indexed Patient's (read again while they are not:
        a rebuild in another process completes them)."""
        if not self._complete:
            with self.readers.snapshot() as c:
                c.execute("SELECT value FROM ic_meta WHERE key='terms'")
                found = c.fetchone()
            self._complete = found is not None and found[0] >= TERMS
        return self._complete

    def stale(self) -> str | None:
        return None if self.counts_complete() else STALE_COUNTS

    def stored_roles(self) -> identifiers.Roles:
        """The identifier-system roles as the index holds them now. ``roles`` is this process's
        copy, refreshed when it applies a batch: under ``hub serve`` the follower process applies
        most, and a NamingSystem it indexed must count in the API process too (``$match`` reads a
        contradicting identifier of a unique system as the veto it is)."""
        with self.readers.snapshot() as c:
            return _load_roles(c)

    @property
    def bulk(self) -> bool:
        return self._bulk

    # -- writing ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything and start a bulk load (ended by ``caught_up``)."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("DROP INDEX IF EXISTS ic_key_h")
            # only its own position: the incremental matcher's stays (a rebuilt index is no reason
            # to decide about every Patient again)
            self.clear(c)
            self._mark_complete(c)  # counted from the start of the log
            c.execute("UPDATE ic_meta SET value=1 WHERE key='bulk'")
        self._bulk = True

    def caught_up(self) -> None:
        """End a bulk load: drop the key rows of superseded versions, build the key index."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM ic_key WHERE pk IN (SELECT pk FROM ic_stale)")
            c.execute("DELETE FROM ic_stale")
            c.execute(_KEY_INDEX)
            c.execute("UPDATE ic_meta SET value=0 WHERE key='bulk'")
        self._bulk = False

    def _put(self, c: Any, rows: Iterable[tuple[str, int, dict | None]]) -> None:
        """Write (ref, version, features or None for deleted) in transaction ``c``."""
        # per term: Patients that carry it now, and rows that carried it before this call
        added: Counter[str] = Counter()
        removed: Counter[str] = Counter()
        fresh: set[int] = set()  # rows written by this call (a ref given twice)
        new_keys: list[tuple[int, int]] = []
        for ref, version, f in rows:
            c.execute("SELECT pk, f FROM ic_patient WHERE ref=?", (ref,))
            old = c.fetchone()
            if old is not None:
                old_f = orjson.loads(old[1])
                if old[0] in fresh:
                    added.subtract(count_terms(old_f))  # not in the table yet
                else:
                    removed.update(count_terms(old_f))
                if self._bulk:
                    c.execute("INSERT OR IGNORE INTO ic_stale (pk) VALUES (?)", (old[0],))
                else:
                    c.executemany("DELETE FROM ic_key WHERE h=? AND pk=?", [(h, old[0]) for h in old_f["k"]])
                c.execute("DELETE FROM ic_patient WHERE pk=?", (old[0],))
            if f is None:
                continue
            hashes = [h for _, h in blocking.hashed(f)]
            f = {**f, "k": hashes}
            c.execute("INSERT INTO ic_patient (ref, version, f) VALUES (?,?,?)", (ref, version, orjson.dumps(f)))
            pk = c.lastrowid
            fresh.add(pk)
            new_keys.extend((h, pk) for h in hashes)
            added.update(count_terms(f))
        if new_keys:
            c.executemany("INSERT INTO ic_key (h, pk) VALUES (?,?)", new_keys)
        changed = [(t, added[t], removed[t]) for t in added.keys() | removed.keys()
                   if added[t] or removed[t]]
        if changed:
            # never below zero: an index whose counts are incomplete (``counts_complete``) never
            # counted a term of a Patient indexed before, and a count below zero would make a
            # value look rarer still. What leaves is taken off before what comes is added, so a
            # term that arrives is counted whatever was taken off it uncounted
            c.executemany("INSERT INTO ic_name (name, n) VALUES (?,?) "
                          "ON CONFLICT(name) DO UPDATE SET n = MAX(n - ?, 0) + excluded.n", changed)
            # a term no one carries any more leaves the table, as a rebuild leaves it out
            c.executemany("DELETE FROM ic_name WHERE name=? AND n=0",
                          [(t,) for t, plus, minus in changed if minus and not plus])

    def put(self, features: Iterable[dict], version: int = 1) -> None:
        """Index Patients' features directly (no tracking): benchmarks and tests."""
        with self.datastore.transaction(commit=True) as c:
            self._put(c, ((f["ref"], version, f) for f in features))

    def apply_new(self, c, notifications: list[Notification]) -> None:
        self.roles = _load_roles(c)  # another process may have changed them
        systems = newest(notifications, lambda n: n.originator_id.startswith(_NS_PREFIX))
        if systems:
            for stream, n in systems.items():
                c.execute("DELETE FROM ic_system WHERE stream=?", (stream,))
                declared = _declared_roles(n)
                if declared:
                    c.execute("INSERT INTO ic_system (stream, roles) VALUES (?,?)",
                              (stream, orjson.dumps(declared)))
            roles = _load_roles(c)
            if roles != self.roles:
                self.roles = roles
                self._reread_identifiers(c)
        latest = newest(notifications, lambda n: n.originator_id.startswith(_PREFIX))
        self._put(c, (_row(stream, n, self.roles) for stream, n in latest.items()))

    def _reread_identifiers(self, c: Any, batch: int = 5000) -> None:
        """Every indexed Patient's unique and read identifiers again under ``self.roles``; those
        that change are written anew (keys included)."""
        last = 0
        while True:
            c.execute("SELECT pk, ref, version, f FROM ic_patient WHERE pk > ? ORDER BY pk LIMIT ?",
                      (last, batch))
            rows = c.fetchall()
            if not rows:
                return
            last = rows[-1][0]
            changed = []
            for _, ref, version, raw in rows:
                f = orjson.loads(raw)
                if "x" not in f:
                    continue  # indexed before identifiers were kept: a rebuild reads them
                uid, oid = identifiers.split(f["x"], self.roles)
                if uid != f.get("uid") or oid != f.get("oid"):
                    f = {k: v for k, v in f.items() if k != "k"}
                    f["uid"], f["oid"] = uid, oid
                    changed.append((ref, version, f))
            if changed:
                self._put(c, changed)

    # -- reading ---------------------------------------------------------------------------------

    def size(self) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT COUNT(*) FROM ic_patient")
            return c.fetchone()[0]

    def close(self) -> None:
        self.readers.close()
        super().close()

    def features_of(self, ref: str) -> dict | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT f FROM ic_patient WHERE ref=?", (ref,))
            row = c.fetchone()
        return orjson.loads(row[0]) if row else None

    def name_count(self, name: str) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT n FROM ic_name WHERE name=?", (name,))
            row = c.fetchone()
        return row[0] if row else 0

    def lookup(self, keys: Sequence[tuple[str, int]], names: Iterable[str] = ()) -> tuple[
            list[tuple[int, dict]], dict[str, int], int]:
        """Candidates sharing a key: ([(pk, features)], {term: count} of ``names`` and of the
        candidates' counted terms (``compare.count_terms``), Patients indexed). One indexed read per key; a block over its cap is
        cut to the cap and counted in ``alerts``."""
        pks: dict[int, None] = {}
        with self.readers.snapshot() as c:
            for kind, h in keys:
                cap = self.caps.get(kind, 100)
                c.execute("SELECT pk FROM ic_key WHERE h=? LIMIT ?", (h, cap + 1))
                rows = c.fetchall()
                if len(rows) > cap:
                    self.alerts.over_cap(kind, cap)
                    rows = rows[:cap]
                for (pk,) in rows:
                    pks[pk] = None
            out: list[tuple[int, dict]] = []
            if pks:
                ids = list(pks)
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    c.execute(f"SELECT pk, f FROM ic_patient WHERE pk IN ({','.join('?' * len(chunk))})", chunk)
                    out.extend((pk, orjson.loads(f)) for pk, f in c.fetchall())
            wanted = list(set(names) | {t for _, f in out for t in count_terms(f)})
            counts = dict.fromkeys(wanted, 0)
            for i in range(0, len(wanted), 500):
                name_chunk = wanted[i:i + 500]
                c.execute(f"SELECT name, n FROM ic_name WHERE name IN ({','.join('?' * len(name_chunk))})",
                          name_chunk)
                counts.update(c.fetchall())
            c.execute("SELECT MAX(pk) FROM ic_patient")  # O(1); a bound of the count, good for shares
            total = c.fetchone()[0] or 0
        return out, counts, total

    def iter_all(self, batch: int = 5000) -> Iterator[tuple[int, dict]]:
        """Every indexed Patient as (pk, features), in pk order, read in batches."""
        last = 0
        while True:
            with self.datastore.transaction(commit=False) as c:
                c.execute("SELECT pk, f FROM ic_patient WHERE pk > ? ORDER BY pk LIMIT ?", (last, batch))
                rows = c.fetchall()
            if not rows:
                return
            for pk, f in rows:
                yield pk, orjson.loads(f)
            last = rows[-1][0]

    def sample(self, n: int, seed: int = 1) -> list[dict]:
        """About ``n`` Patients' features chosen at random (deterministic for a seed)."""
        import random

        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT MAX(pk) FROM ic_patient")
            top = c.fetchone()[0] or 0
            if not top:
                return []
            rng = random.Random(seed)
            picks = sorted({rng.randint(1, top) for _ in range(min(n * 2, top * 2))})[: n * 2]
            out: list[dict] = []
            for i in range(0, len(picks), 500):
                chunk = picks[i:i + 500]
                c.execute(f"SELECT f FROM ic_patient WHERE pk IN ({','.join('?' * len(chunk))})", chunk)
                out.extend(orjson.loads(f) for (f,) in c.fetchall())
        rng.shuffle(out)
        return out[:n]

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "blocks_over_cap": sum(self.alerts.counts.values())}


def _load_roles(c: Any) -> identifiers.Roles:
    c.execute("SELECT roles FROM ic_system ORDER BY rowid")
    overrides: dict[str, str] = {}
    for (raw,) in c.fetchall():
        overrides.update(orjson.loads(raw))
    return identifiers.Roles(overrides)


def _declared_roles(n: Notification) -> dict[str, str]:
    if KIND_OF_TOPIC.get(n.topic) == "deleted":
        return {}
    try:
        d = orjson.loads(n.state.partition(b"\n")[2])
    except orjson.JSONDecodeError:
        return {}
    return identifiers.naming_system_roles(d) if isinstance(d, dict) else {}


def _row(stream: str, n: Notification,
         roles: identifiers.Roles = identifiers.DEFAULT) -> tuple[str, int, dict | None]:
    if KIND_OF_TOPIC.get(n.topic) == "deleted":
        return stream, n.originator_version, None
    _, _, body = n.state.partition(b"\n")
    try:
        d = orjson.loads(body)
    except orjson.JSONDecodeError:
        return stream, n.originator_version, None
    if not isinstance(d, dict):
        return stream, n.originator_version, None
    d.setdefault("id", stream[len(_PREFIX):])
    return stream, n.originator_version, patient_features(d, roles)
