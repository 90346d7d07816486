"""The platform bus: accepted HL7 v3 messages forwarded to the systems that subscribe to them.

A hospital platform's service bus forwards each service's messages to the systems that take them:
the laboratory system receives laboratory requests, the HIS their status. Here a subscription
names a subscriber, the interactions it takes (``POOR_IN200901UV``), optionally the kinds of
content (``lab``, ``exam``, ``drug``: what ``kinds_of`` finds in the mapped resources) and the
sending institution, and a sink (HTTP or Kafka: ``connectors.sinks.messages``).

One SQLite file in the data directory (``v3routes.sqlite``), like the quarantine: the messages
accepted (each once per institution, interaction and message id: a sender's retry is not routed
twice), each subscription's deliveries and the dead letters. ``POST /v3`` puts an accepted
message here before it answers AA, so a message acknowledged is a message routed (at least once:
a subscriber keys on the message id). ``hub v3 route`` delivers: per subscription in acceptance
order, one patient's messages never overtaking each other (a message waiting for a retry holds
back the later ones of its patient, not the others), an unreachable subscriber retried with
backoff for as long as it takes, a refusal (4xx, an AE/AR acknowledgement) dead-lettered with
its reason and redeliverable. A delivery is marked only after the sink confirms it, so a router
killed at any point delivers what it had not marked when it starts again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from hub.core.errors import HubError
from hub.core.sqlitefile import naming, refuse_empty

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscription (
    id INTEGER PRIMARY KEY AUTOINCREMENT, subscriber TEXT NOT NULL, interactions TEXT NOT NULL,
    kinds TEXT NOT NULL DEFAULT '', institution TEXT NOT NULL DEFAULT '', sink BLOB NOT NULL,
    active INTEGER NOT NULL DEFAULT 1, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, institution TEXT NOT NULL, interaction TEXT NOT NULL,
    message_id TEXT NOT NULL, patient TEXT NOT NULL, kinds TEXT NOT NULL, payload BLOB NOT NULL,
    accepted TEXT NOT NULL, UNIQUE (institution, interaction, message_id));
CREATE TABLE IF NOT EXISTS delivery (
    subscription INTEGER NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, error TEXT,
    done TEXT, PRIMARY KEY (subscription, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivery_state ON delivery (subscription, state, seq);
"""
STATES = ("pending", "delivered", "dead")

log = logging.getLogger("hub.v3routing")


class Refused(HubError):
    """A sink's answer that the subscriber will never take this message (dead-lettered)."""

    error_code = "refused"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    subscriber: str
    interactions: tuple[str, ...]
    kinds: tuple[str, ...]
    institution: str
    sink: dict[str, Any]
    active: bool

    def takes(self, interaction: str, kinds: Iterable[str], institution: str) -> bool:
        return (self.active and (interaction in self.interactions or "*" in self.interactions)
                and (not self.kinds or bool(set(self.kinds) & set(kinds)))
                and (not self.institution or self.institution == institution))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "subscriber": self.subscriber,
                "interactions": list(self.interactions), "kinds": list(self.kinds),
                "institution": self.institution or None, "sink": self.sink,
                "active": self.active}


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    institution: str
    interaction: str
    message_id: str
    patient: str
    payload: bytes
    attempts: int
    next_at: float


def kinds_of(resources: Sequence[dict[str, Any]], categories: dict[str, str]) -> list[str]:
    """What a message is about, for subscriptions that take only some of an interaction's
    messages: ``drug`` for a MedicationRequest, a request's kind (``categories``: the category
    code of each kind) for a ServiceRequest."""
    out: list[str] = []
    for r in resources:
        kind = None
        if r.get("resourceType") == "MedicationRequest":
            kind = "drug"
        elif r.get("resourceType") == "ServiceRequest":
            codes = {c.get("code") for cc in r.get("category") or [] for c in cc.get("coding") or []}
            kind = next((k for k, code in categories.items() if code in codes), None)
        if kind and kind not in out:
            out.append(kind)
    return out


def patient_of(resources: Sequence[dict[str, Any]]) -> str:
    """The patient a message is about (its Patient, else the first subject), the unit of order."""
    for r in resources:
        if r.get("resourceType") == "Patient":
            return f"Patient/{r.get('id')}"
    for r in resources:
        ref = (r.get("subject") or r.get("patient") or {}).get("reference")
        if isinstance(ref, str) and ref:
            return ref
    return ""


class Routes:
    """``synchronous``: SQLite's, for this connection. FULL (the default) for the API, whose
    acceptances must survive an OS crash once acknowledged; the router may use NORMAL (a
    delivery mark lost to an OS crash only repeats a delivery, which at least once allows)."""

    def __init__(self, path: Path | str, synchronous: str = "FULL"):
        self.path = str(path)
        self._lock = threading.Lock()
        refuse_empty(self.path, "the v3 subscriptions and routed messages")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        deadline = time.monotonic() + 30
        while True:  # processes opening a new file together: see hub.quarantine
            try:
                with naming(self.path):
                    self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.executescript(SCHEMA)
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous is FULL or NORMAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")

    def close(self) -> None:
        self._db.close()

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, subscriber: str, interactions: Sequence[str], sink: dict[str, Any],
                  kinds: Sequence[str] = (), institution: str = "") -> int:
        if not subscriber or not interactions:
            raise ValueError("a subscription names its subscriber and at least one interaction")
        if sink.get("type") not in ("http", "kafka"):
            raise ValueError("a subscription's sink is http (url) or kafka (bootstrap, topic)")
        row = (subscriber, ",".join(interactions), ",".join(kinds), institution,
               orjson.dumps(sink))
        with self._lock:
            # the same subscription again is the one there (twice, every message went twice to
            # the same system)
            same = self._db.execute(
                "SELECT id FROM subscription WHERE active AND subscriber=? AND interactions=? AND "
                "kinds=? AND institution=? AND sink=?", row).fetchone()
            if same:
                return int(same[0])
            cur = self._db.execute(
                "INSERT INTO subscription (subscriber, interactions, kinds, institution, sink, "
                "created) VALUES (?, ?, ?, ?, ?, ?)", (*row, _now()))
            return int(cur.lastrowid or 0)

    def unsubscribe(self, sid: int) -> bool:
        """Ends a subscription (its deliveries so far are kept, its pending ones are not sent)."""
        with self._lock:
            return self._db.execute("UPDATE subscription SET active = 0 WHERE id = ? AND active",
                                    (sid,)).rowcount == 1

    def subscriptions(self, active_only: bool = True) -> list[Subscription]:
        rows = self._db.execute("SELECT id, subscriber, interactions, kinds, institution, sink, "
                                "active FROM subscription" + (" WHERE active" if active_only else "")
                                + " ORDER BY id").fetchall()
        return [Subscription(r[0], r[1], tuple(r[2].split(",")),
                             tuple(k for k in r[3].split(",") if k), r[4], orjson.loads(r[5]),
                             bool(r[6])) for r in rows]

    # -- messages -------------------------------------------------------------------------------

    def accept(self, institution: str, interaction: str, message_id: str, patient: str,
               kinds: Sequence[str], payload: bytes) -> int:
        """Keep an accepted message with a delivery for each subscription that takes it, in one
        transaction; how many deliveries (0 for a message kept before: a sender's retry)."""
        subs = [s for s in self.subscriptions() if s.takes(interaction, kinds, institution)]
        if not subs:
            return 0  # nobody takes it: nothing kept
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO message (institution, interaction, message_id, patient, "
                    "kinds, payload, accepted) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (institution, interaction, message_id, patient, ",".join(kinds), payload,
                     _now()))
                if cur.rowcount != 1:
                    self._db.execute("COMMIT")
                    return 0
                seq = cur.lastrowid
                self._db.executemany("INSERT INTO delivery (subscription, seq) VALUES (?, ?)",
                                     [(s.id, seq) for s in subs])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(subs)

    def pending(self, sid: int, limit: int = 500) -> list[Pending]:
        rows = self._db.execute(
            "SELECT m.seq, m.institution, m.interaction, m.message_id, m.patient, m.payload, "
            "d.attempts, d.next_at FROM delivery d JOIN message m ON m.seq = d.seq "
            "WHERE d.subscription = ? AND d.state = 'pending' ORDER BY d.seq LIMIT ?",
            (sid, limit)).fetchall()
        return [Pending(*r) for r in rows]

    def _set(self, sid: int, seq: int, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(f"UPDATE delivery SET {sql} WHERE subscription = ? AND seq = ?",
                             (*args, sid, seq))

    def delivered(self, sid: int, seq: int) -> None:
        self._set(sid, seq, "state = 'delivered', attempts = attempts + 1, error = NULL, done = ?",
                  (_now(),))

    def retry(self, sid: int, seq: int, error: str, next_at: float) -> None:
        self._set(sid, seq, "attempts = attempts + 1, error = ?, next_at = ?", (error[:500], next_at))

    def dead(self, sid: int, seq: int, error: str) -> None:
        self._set(sid, seq, "state = 'dead', attempts = attempts + 1, error = ?, done = ?",
                  (error[:2000], _now()))

    def dead_letters(self, sid: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT d.subscription, s.subscriber, m.seq, m.institution, m.interaction, "
            "m.message_id, d.attempts, d.error, d.done FROM delivery d "
            "JOIN message m ON m.seq = d.seq JOIN subscription s ON s.id = d.subscription "
            "WHERE d.state = 'dead'" + (" AND d.subscription = ?" if sid is not None else "")
            + " ORDER BY d.subscription, d.seq LIMIT ?",
            ((sid, limit) if sid is not None else (limit,))).fetchall()
        keys = ("subscription", "subscriber", "seq", "institution", "interaction", "message_id",
                "attempts", "reason", "at")
        return [dict(zip(keys, r)) for r in rows]

    def redeliver(self, sid: int, seqs: Sequence[int] | None = None) -> int:
        """Dead letters back to pending (all of the subscription's when ``seqs`` is None)."""
        with self._lock:
            if seqs is None:
                return self._db.execute("UPDATE delivery SET state = 'pending', next_at = 0 "
                                        "WHERE subscription = ? AND state = 'dead'", (sid,)).rowcount
            return sum(self._db.execute("UPDATE delivery SET state = 'pending', next_at = 0 WHERE "
                                        "subscription = ? AND seq = ? AND state = 'dead'",
                                        (sid, s)).rowcount for s in seqs)

    def prune(self, older_than_s: float) -> int:
        """Forget messages accepted more than ``older_than_s`` ago whose every delivery is done
        (delivered; dead letters are kept until redelivered or their subscription ends)."""
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = [r[0] for r in self._db.execute(
                    "SELECT m.seq FROM message m WHERE m.accepted < ? AND NOT EXISTS (SELECT 1 "
                    "FROM delivery d JOIN subscription s ON s.id = d.subscription WHERE "
                    "d.seq = m.seq AND d.state != 'delivered' AND s.active)", (cutoff,))]
                self._db.executemany("DELETE FROM delivery WHERE seq = ?", [(g,) for g in gone])
                self._db.executemany("DELETE FROM message WHERE seq = ?", [(g,) for g in gone])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(gone)

    def stats(self) -> list[dict[str, Any]]:
        """Per subscription: deliveries by state, the oldest pending one's acceptance time and
        the last error met."""
        out = []
        for s in self.subscriptions(active_only=False):
            counts = dict(self._db.execute("SELECT state, COUNT(*) FROM delivery WHERE "
                                           "subscription = ? GROUP BY state", (s.id,)).fetchall())
            oldest = self._db.execute(
                "SELECT m.accepted, d.error FROM delivery d JOIN message m ON m.seq = d.seq "
                "WHERE d.subscription = ? AND d.state = 'pending' ORDER BY d.seq LIMIT 1",
                (s.id,)).fetchone()
            out.append({**s.to_json(), **{k: counts.get(k, 0) for k in STATES},
                        "oldest_pending": oldest[0] if oldest else None,
                        "last_error": oldest[1] if oldest else None})
        return out


# -- delivery ----------------------------------------------------------------------------------------

MessageSink = Any  # ``send(pending) -> None``; raises Refused, or Unavailable to retry later


def route_once(routes: Routes, sinks: dict[int, MessageSink], unavailable: type[Exception],
               now: Callable[[], float] = time.time, backoff: tuple[float, float] = (1.0, 300.0),
               limit: int = 500) -> dict[str, int]:
    """One pass over every active subscription's pending deliveries: counts of what happened.

    In acceptance order; a message held back (waiting for its retry, or failing now) holds back
    the later messages of its patient in this pass, so a patient's messages arrive in order.
    Three failures in a row end the subscription's pass (its subscriber is down, not one
    message)."""
    done = {"delivered": 0, "retried": 0, "dead": 0, "held": 0}
    for sub in routes.subscriptions():
        sink = sinks.get(sub.id)
        if sink is None:
            continue
        held: set[str] = set()
        failing = 0  # unavailable in a row: the subscriber is down, its pass ends
        for p in routes.pending(sub.id, limit):
            if failing >= 3:
                break
            if p.patient in held or p.next_at > now():
                held.add(p.patient)
                done["held"] += 1
                continue
            try:
                sink.send(p)
            except Refused as e:
                routes.dead(sub.id, p.seq, str(e))
                done["dead"] += 1
                continue
            except Exception as e:  # noqa: BLE001 - one subscriber's failure is its own
                # unavailable, or a sink that fails in a way of its own (a setting it cannot
                # use): retried later, logged; the other subscribers' deliveries go on (one
                # such sink stopped the router for every subscriber)
                if not isinstance(e, unavailable):
                    log.warning("v3 route: subscription %s failed: %s: %s", sub.id,
                                type(e).__name__, str(e)[:200])
                wait = min(backoff[0] * 2 ** min(p.attempts, 20), backoff[1])
                routes.retry(sub.id, p.seq, f"{type(e).__name__}: {e}"[:500], now() + wait)
                held.add(p.patient)
                done["retried"] += 1
                failing += 1
                continue
            failing = 0
            routes.delivered(sub.id, p.seq)
            done["delivered"] += 1
    return done
