"""The person projection: golden persons, their Patients, merges, not-duplicate pairs, reviews.

Fed only by identity events (``hub/core/identity_events.py``), read from the log by topic
(``notifications_of(["Identity"])``), never edited by hand: ``hub projections rebuild person``
replays the events and gives the same rows. Rows and the tracking position are written in one
transaction (``$HUB_DATA_DIR/person.sqlite``). ``p_meta.stream_version`` is the number of identity
events applied: the identity service decides against it and commits the next version.

Tables:

- ``p_person``: every golden person, ``merged_into`` the surviving person while a merge stands
  (an unmerge clears it), ``version``/``updated`` for the Person view's ``meta``;
- ``p_patient``: each Patient's own person (before merges) with the link's assurance, whether a
  user decided about it (``manual``: the matcher leaves it alone), the deciding score and who;
- ``p_block``: pairs of Patients a user (or a rejected review) marked "not the same person"
  (indexed from both sides: a join checks every Patient of the smaller cluster);
- ``p_review``: the review queue for data stewards, with score, evidence and rule-set version.

A person's Patients are those of the person and of every person merged into it, transitively
(one recursive query): merges are never copied into link rows, so an unmerge restores exactly the
Patients the merged person had, plus any linked to it meanwhile. The matcher's links are merges
too (joins of two clusters, ``hub.mpi.identity``); the surviving person has the least id, and ids
are hashes of Patients, so the depth of a cluster's merge tree grows with the number of times its
least id changed, about the logarithm of its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from hub.core.identity_events import STREAM_KIND, USER, from_state, is_identity_topic
from projections.sqlite_model import SQLiteReadModel

NAME = "person"

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS p_meta (key TEXT PRIMARY KEY, value)",
    "INSERT OR IGNORE INTO p_meta (key, value) VALUES ('writer', 0)",
    "INSERT OR IGNORE INTO p_meta (key, value) VALUES ('stream_version', 0)",
    "CREATE TABLE IF NOT EXISTS p_person (id TEXT PRIMARY KEY, merged_into TEXT, "
    "version INTEGER NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS p_person_merged ON p_person (merged_into)",
    "CREATE TABLE IF NOT EXISTS p_patient (patient TEXT PRIMARY KEY, person TEXT NOT NULL, "
    "assurance TEXT NOT NULL, manual INTEGER NOT NULL, score REAL, decided_by TEXT, "
    "updated TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS p_patient_person ON p_patient (person)",
    "CREATE TABLE IF NOT EXISTS p_block (a TEXT NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b))",
    # a cluster's not-duplicate marks are read from either side of the pair
    "CREATE INDEX IF NOT EXISTS p_block_b ON p_block (b)",
    "CREATE TABLE IF NOT EXISTS p_review (id TEXT PRIMARY KEY, patient TEXT NOT NULL, "
    "candidates TEXT NOT NULL, score REAL, evidence TEXT, ruleset TEXT, status TEXT NOT NULL, "
    "opened TEXT NOT NULL, closed TEXT, outcome TEXT, decided_by TEXT, seq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS p_review_status ON p_review (status, seq)",
    "CREATE INDEX IF NOT EXISTS p_review_patient ON p_review (patient, status)",
    # each person's link, unlink, merge, unmerge and not-duplicate decisions, one row per person
    # concerned: the history a steward reads and undoes. ``a`` and ``b``: Linked to a from b,
    # Unlinked from a into b, Merged and Unmerged source a and target b, NotDuplicate Patients
    "CREATE TABLE IF NOT EXISTS p_history (person TEXT NOT NULL, seq INTEGER NOT NULL, "
    "event TEXT NOT NULL, patient TEXT, a TEXT, b TEXT, by_type TEXT, by_name TEXT, at TEXT, "
    "reason TEXT, PRIMARY KEY (person, seq, event))",
]
HISTORY_EVENTS = ("Linked", "Unlinked", "Merged", "Unmerged", "NotDuplicate")


def best_first(candidates: list[str], evidence: Any) -> list[str]:
    """A review's candidates, the likeliest first: by score, then the number of fields that
    agree exactly (scores of held pairs are capped alike), then weight; a steward reads the
    list top down."""
    def key(ref: str) -> tuple:
        e = evidence.get(ref) if isinstance(evidence, dict) else None
        e = e if isinstance(e, dict) else {}
        fields = e.get("fields")
        exact = sum(1 for v in fields.values() if isinstance(v, dict)
                    and v.get("level") in ("exact", "same")) if isinstance(fields, dict) else 0
        return (-float(e.get("score") or 0.0), -exact, -float(e.get("weight") or 0.0), ref)
    return sorted(candidates, key=key)


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class PersonProjection(SQLiteReadModel):
    name = NAME
    meta_table = "p_meta"  # its 'writer' row: the write lock
    schema = SCHEMA
    types = (STREAM_KIND,)  # the runner hands over identity events only (read by topic)

    tables = ("p_person", "p_patient", "p_block", "p_review", "p_history")

    def clear(self, c: Any) -> None:
        super().clear(c)
        c.execute("UPDATE p_meta SET value = 0 WHERE key = 'stream_version'")

    # -- applying events ---------------------------------------------------------------------------

    def apply_new(self, c: Any, notifications: list[Notification]) -> None:
        c.execute("SELECT value FROM p_meta WHERE key='stream_version'")
        version = int(c.fetchone()[0])
        for n in notifications:
            if not is_identity_topic(n.topic):
                continue
            if n.originator_version <= version:
                continue  # already applied (the stream is one sequence)
            ev = from_state(n.topic, n.state)
            if ev.event in HISTORY_EVENTS:
                self._remember(c, n.originator_version, ev)
            self._apply_one(c, ev)
            version = n.originator_version
        c.execute("UPDATE p_meta SET value=? WHERE key='stream_version'", (version,))

    @staticmethod
    def _touch(c: Any, person: str | None, at: str) -> None:
        if not person:
            return
        c.execute("INSERT INTO p_person (id, merged_into, version, created, updated) "
                  "VALUES (?, NULL, 1, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                  "version = version + 1, updated = excluded.updated", (person, at, at))

    def _mark_manual(self, c: Any, persons: list[str]) -> None:
        # a user merging (or unmerging) persons has decided about every Patient they hold: each
        # link is now a user's, the highest assurance
        for p in persons:
            fam = self._family(c, p)
            c.executemany("UPDATE p_patient SET manual=1, assurance='level4' WHERE person=?",
                          [(x,) for x in fam])

    def _remember(self, c: Any, seq: int, ev) -> None:
        """The decision in the history of each person it concerns (read before it applies)."""
        d = ev.data
        by = d.get("by") or {}
        patient = d.get("patient")
        if ev.event == "Linked":
            a, b = d["person"], d.get("previous")
            persons = [a, b]
        elif ev.event == "Unlinked":
            a, b = d["person"], d["new_person"]
            persons = [a, b]
        elif ev.event == "NotDuplicate":
            a, b = d["patients"]
            persons = [self.person_of(c, a), self.person_of(c, b)]
        else:  # Merged, Unmerged
            a, b = d["source"], d["target"]
            persons = [a, b]
        c.executemany(
            "INSERT OR IGNORE INTO p_history (person, seq, event, patient, a, b, by_type, "
            "by_name, at, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(person, seq, ev.event, patient, a, b, by.get("type"), by.get("name"),
              d.get("at"), d.get("reason")) for person in dict.fromkeys(persons) if person])

    def history(self, c: Any, person: str, limit: int = 200) -> list[dict]:
        """The decisions about a person and those merged into it, the newest first."""
        fam = self._family(c, person)
        marks = ",".join("?" * len(fam))
        c.execute(f"SELECT DISTINCT seq, event, patient, a, b, by_type, by_name, at, reason "
                  f"FROM p_history WHERE person IN ({marks}) ORDER BY seq DESC LIMIT ?",
                  (*fam, limit))
        return [{"seq": r[0], "event": r[1], "patient": r[2], "a": r[3], "b": r[4],
                 "by": {"type": r[5], "name": r[6]}, "at": r[7], "reason": r[8]}
                for r in c.fetchall()]

    def _apply_one(self, c: Any, ev) -> None:
        d, at = ev.data, ev.data.get("at", "")
        by = d.get("by") or {}
        who = f"{by.get('type', '?')}:{by.get('name', '')}"
        manual = 1 if ev.by_user else 0
        if ev.event in ("Linked", "Unlinked"):
            patient = d["patient"]
            person = d["person"] if ev.event == "Linked" else d["new_person"]
            previous = d.get("previous") if ev.event == "Linked" else d.get("person")
            c.execute("SELECT manual FROM p_patient WHERE patient=?", (patient,))
            row = c.fetchone()
            keep_manual = row[0] if row else 0
            # the person the Patient leaves, as it lives now (its own person may have been
            # merged into another: the Patients left with it are there)
            left = self.survivor(c, previous) if previous else None
            c.execute(
                "INSERT INTO p_patient (patient, person, assurance, manual, score, decided_by, "
                "updated) VALUES (?,?,?,?,?,?,?) ON CONFLICT (patient) DO UPDATE SET "
                "person=excluded.person, assurance=excluded.assurance, manual=excluded.manual, "
                "score=excluded.score, decided_by=excluded.decided_by, updated=excluded.updated",
                (patient, person, d.get("assurance", "level3"), max(manual, keep_manual),
                 d.get("score"), who, at))
            self._touch(c, person, at)
            if previous and previous != person:
                self._touch(c, previous, at)
            if manual and left and left != self.survivor(c, person):
                # a user took this Patient out of that person (an unlink, or a link elsewhere):
                # what stays there is held too, so the matcher cannot join the two again, by
                # the next update of a Patient left there or through a third like both (it did:
                # the family of the Patient's own person was marked, not the one it lived in)
                for x in self._family(c, left):
                    c.execute("UPDATE p_patient SET manual=1 WHERE person=?", (x,))
        elif ev.event == "Merged":
            self._touch(c, d["source"], at)
            self._touch(c, d["target"], at)
            c.execute("UPDATE p_person SET merged_into=? WHERE id=?", (d["target"], d["source"]))
            if manual:
                self._mark_manual(c, [d["target"]])  # the family now holds the source too
        elif ev.event == "Unmerged":
            c.execute("UPDATE p_person SET merged_into=NULL WHERE id=?", (d["source"],))
            self._touch(c, d["source"], at)
            self._touch(c, d["target"], at)
            if manual:
                self._mark_manual(c, [d["source"], d["target"]])
        elif ev.event == "NotDuplicate":
            a, b = pair(*d["patients"])
            c.execute("INSERT OR IGNORE INTO p_block (a, b) VALUES (?, ?)", (a, b))
            if manual:
                c.executemany("UPDATE p_patient SET manual=1 WHERE patient=?", [(a,), (b,)])
        elif ev.event == "ReviewOpened":
            c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM p_review")
            seq = c.fetchone()[0]
            c.execute(
                "INSERT OR IGNORE INTO p_review (id, patient, candidates, score, evidence, "
                "ruleset, status, opened, seq) VALUES (?,?,?,?,?,?,'open',?,?)",
                (d["review"], d["patient"], orjson.dumps(d.get("candidates") or []).decode(),
                 d.get("score"), orjson.dumps(d.get("evidence") or {}).decode(),
                 d.get("ruleset"), at, seq))
        elif ev.event == "ReviewClosed":
            c.execute("UPDATE p_review SET status='closed', closed=?, outcome=?, decided_by=? "
                      "WHERE id=?", (at, d.get("outcome"), who, d["review"]))
            c.execute("SELECT patient FROM p_review WHERE id=?", (d["review"],))
            row = c.fetchone()
            if row and manual:
                c.execute("UPDATE p_patient SET manual=1 WHERE patient=?", (row[0],))
            if row:
                # level2 says "waits for a review": with its last one closed the Patient waits no
                # more. Closed by a steward who decided (accepted, rejected, or answered by a link
                # or merge) the link is a user's, level4; by the matcher (it linked the Patient,
                # the question gone) or set aside undecided (dismissed, withdrawn), level3
                decided = manual and d.get("outcome") in ("accepted", "rejected", "superseded")
                # level4 names the steward as who decided (the export read the matcher's link)
                c.execute("UPDATE p_patient SET assurance=?, decided_by=CASE WHEN ? THEN ? "
                          "ELSE decided_by END WHERE patient=? AND "
                          "assurance='level2' AND NOT EXISTS (SELECT 1 FROM p_review "
                          "WHERE patient=? AND status='open')",
                          ("level4" if decided else "level3", bool(decided), who, row[0],
                           row[0]))

    # -- reads (inside a transaction ``c`` or on their own) --------------------------------------

    def _family(self, c: Any, person: str) -> list[str]:
        """The person and every person merged into it, transitively."""
        # at any depth: UNION keeps each person once, so the walk ends (a merge chain of a
        # hundred persons is one family; the walk stopped at 64 and dropped the rest)
        c.execute(
            "WITH RECURSIVE fam(id) AS (SELECT ? UNION "
            "SELECT p.id FROM p_person p JOIN fam ON p.merged_into = fam.id) SELECT id FROM fam",
            (person,))
        return [r[0] for r in c.fetchall()]

    def read(self):
        """A read-only transaction for several reads against one snapshot."""
        return self.datastore.transaction(commit=False)

    def stream_version(self, c: Any | None = None) -> int:
        if c is None:
            with self.read() as c2:
                return self.stream_version(c2)
        c.execute("SELECT value FROM p_meta WHERE key='stream_version'")
        return int(c.fetchone()[0])

    def person_row(self, c: Any, person: str) -> dict | None:
        c.execute("SELECT id, merged_into, version, created, updated FROM p_person WHERE id=?",
                  (person,))
        r = c.fetchone()
        if r is None:
            return None
        return {"id": r[0], "merged_into": r[1], "version": r[2], "created": r[3],
                "updated": r[4]}

    def survivor(self, c: Any, person: str) -> str:
        """The person a (possibly merged) person now lives in, at the end of its merge chain
        however long (a merge that would close a loop is refused, ``IdentityService.merge``)."""
        seen = {person}
        while True:
            c.execute("SELECT merged_into FROM p_person WHERE id=?", (person,))
            r = c.fetchone()
            if r is None or r[0] is None or r[0] in seen:
                return person
            person = r[0]
            seen.add(person)

    def link_of(self, c: Any, patient: str) -> dict | None:
        c.execute("SELECT person, assurance, manual, score, decided_by, updated FROM p_patient "
                  "WHERE patient=?", (patient,))
        r = c.fetchone()
        if r is None:
            return None
        return {"person": r[0], "assurance": r[1], "manual": bool(r[2]), "score": r[3],
                "decided_by": r[4], "updated": r[5]}

    def moved_by_user_since(self, c: Any, patient: str, person: str, seq: int) -> str | None:
        """Who (a user's name) put ``patient`` into ``person`` (its link now) by a decision
        after version ``seq`` of the identity stream, or None (one indexed read of the person's
        history)."""
        c.execute("SELECT by_name FROM p_history WHERE person=? AND seq>? AND patient=? "
                  "AND event IN ('Linked', 'Unlinked') AND by_type='user' "
                  "ORDER BY seq DESC LIMIT 1", (person, seq, patient))
        r = c.fetchone()
        return None if r is None else (r[0] or "another user")

    def person_of(self, c: Any, patient: str) -> str | None:
        """The (surviving) person of a Patient, or None if the index does not know it."""
        link = self.link_of(c, patient)
        return None if link is None else self.survivor(c, link["person"])

    def links(self, c: Any, person: str) -> list[dict]:
        """The Patients of a person (through merges), each with its assurance, in ref order."""
        fam = self._family(c, person)
        marks = ",".join("?" * len(fam))
        c.execute(f"SELECT patient, assurance, manual, person FROM p_patient "
                  f"WHERE person IN ({marks}) ORDER BY patient", fam)
        return [{"patient": r[0], "assurance": r[1], "manual": bool(r[2]), "via": r[3]}
                for r in c.fetchall()]

    def patients(self, c: Any, person: str) -> list[str]:
        return [x["patient"] for x in self.links(c, person)]

    def has_manual(self, c: Any, person: str) -> bool:
        return any(x["manual"] for x in self.links(c, person))

    def merged_into_me(self, c: Any, person: str) -> list[str]:
        c.execute("SELECT id FROM p_person WHERE merged_into=? ORDER BY id", (person,))
        return [r[0] for r in c.fetchall()]

    def blocked(self, c: Any, a: str, b: str) -> bool:
        c.execute("SELECT 1 FROM p_block WHERE a=? AND b=?", pair(a, b))
        return c.fetchone() is not None

    def blocked_across(self, c: Any, xs: Sequence[str], ys: Sequence[str]) -> tuple[str, str] | None:
        """A not-duplicate pair with one Patient in ``xs`` and the other in ``ys``, or None; one
        indexed read per Patient of the smaller side."""
        small, other = (xs, set(ys)) if len(xs) <= len(ys) else (ys, set(xs))
        for x in small:
            c.execute("SELECT a, b FROM p_block WHERE a=? UNION ALL "
                      "SELECT b, a FROM p_block WHERE b=?", (x, x))
            for mine, theirs in c.fetchall():
                if theirs in other:
                    return mine, theirs
        return None

    def blocked_pairs(self) -> set[frozenset[str]]:
        with self.read() as c:
            c.execute("SELECT a, b FROM p_block")
            return {frozenset((r[0], r[1])) for r in c.fetchall()}

    def open_reviews(self, c: Any, patient: str | None = None) -> list[dict]:
        if patient is None:
            c.execute("SELECT * FROM p_review WHERE status='open' ORDER BY seq")
        else:
            c.execute("SELECT * FROM p_review WHERE status='open' AND patient=? ORDER BY seq",
                      (patient,))
        return [self._review(r) for r in c.fetchall()]

    def reviews_involving(self, c: Any, patient: str) -> list[dict]:
        """Open reviews where the Patient is the subject or a candidate."""
        c.execute("SELECT * FROM p_review WHERE status='open' AND (patient=? OR candidates "
                  "LIKE ?) ORDER BY seq", (patient, f'%"{patient}"%'))
        return [self._review(r) for r in c.fetchall()]

    def review(self, c: Any, rid: str) -> dict | None:
        c.execute("SELECT * FROM p_review WHERE id=?", (rid,))
        r = c.fetchone()
        return None if r is None else self._review(r)

    def reviews(self, status: str | None = "open", limit: int = 100,
                after_seq: int = 0) -> list[dict]:
        with self.read() as c:
            if status is None:
                c.execute("SELECT * FROM p_review WHERE seq > ? ORDER BY seq LIMIT ?",
                          (after_seq, limit))
            else:
                c.execute("SELECT * FROM p_review WHERE status=? AND seq > ? ORDER BY seq LIMIT ?",
                          (status, after_seq, limit))
            return [self._review(r) for r in c.fetchall()]

    @staticmethod
    def _review(r) -> dict:
        evidence = orjson.loads(r["evidence"] or "{}")
        return {"id": r["id"], "patient": r["patient"],
                "candidates": best_first(orjson.loads(r["candidates"]), evidence),
                "score": r["score"], "evidence": evidence,
                "ruleset": r["ruleset"], "status": r["status"], "opened": r["opened"],
                "closed": r["closed"], "outcome": r["outcome"], "decided_by": r["decided_by"],
                "seq": r["seq"]}

    def persons_of(self, patients: Sequence[str]) -> dict[str, str]:
        """patient -> surviving person, for the Patients the index knows."""
        out = {}
        with self.read() as c:
            for p in patients:
                person = self.person_of(c, p)
                if person is not None:
                    out[p] = person
        return out

    def dump(self) -> dict[str, list[tuple]]:
        """Every row (tests: a rebuild gives the same)."""
        with self.read() as c:
            out = {}
            for table, order in (("p_person", "id"), ("p_patient", "patient"),
                                 ("p_block", "a, b"), ("p_review", "id")):
                c.execute(f"SELECT * FROM {table} ORDER BY {order}")
                out[table] = [tuple(r) for r in c.fetchall()]
            return out


__all__ = ["PersonProjection", "NAME", "pair", "USER"]
