"""The identity service: every MPI decision, by the matcher or by a named user, as identity events.

Decisions are taken against the person projection brought up to the end of the log, and committed
as the next versions of the identity stream (``hub/core/identity_events.py``); a concurrent decider elsewhere
makes the commit fail on the stream's unique key and the decision is taken again on fresh state.
After a commit the projection is brought up to date before the call returns (read-your-writes).

Rules:

- every known Patient belongs to exactly one person (its own, if nobody else's);
- **linking is clustering**: the matcher's link joins the Patient's cluster with each certain
  candidate's (``_join``: a ``Merged`` event by the matcher, the person with the least id
  surviving); a person the matcher founds takes its id from its Patient (``own_person_id``), so
  the same decisions give the same persons, ids included, in any order as long as none is
  refused; ``hub mpi rematch`` hands its decisions over in a canonical order
  (``hub.mpi.incremental.canonical``), so a re-match from scratch gives the same persons
  whatever order the Patients were loaded in;
- **no person holds two valid numbers of a unique identifier system or two sexes**
  (``hub.mpi.conflicts``), checked on the whole clusters, not the pair: the matcher's join is
  refused and goes to the review queue, a steward's link, merge or accepted review is a 409
  naming the Patients and the system;
- **manual decisions win**: once a user decided about a Patient (link, unlink, not-duplicate, a
  review accepted or rejected, a merge or unmerge of its person), ``auto_decide`` leaves it alone;
  the matcher never moves a Patient out of a person holding a user's decision either, and joins
  such a person only with a single Patient (a whole cluster could undo a steward's split);
- a pair marked not-duplicate is never linked by the matcher: ``link``/``review`` become ``new``;
  nor is it, or a pair held for a steward as two people (twins, names or births apart: an open
  review or a hold in the record's ranking saying so), united through a third record: such a
  join goes to the review queue (``_apart``);
- a deleted Patient's open reviews close (outcome ``withdrawn``, the matcher's ``deleted``
  decision), as do those left with no live candidate: no steward is asked about a record gone;
- assurance of a link: ``level4`` a user decided, ``level3`` the matcher linked (or the Patient
  founded its own person), ``level2`` the Patient waits in its own person for a review.

``IdentityService.auto_decide`` and ``blocked_pairs`` are the matcher's interface.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from hub.core.errors import FhirError, bad_request, conflict, not_found
from hub.core.identity_events import MATCHER, STREAM, USER, IdentityEvent, to_stored
from hub.core.ingest import now_instant
from hub.core.store import ConflictError, ResourceStore
from hub.mpi import conflicts
from hub.mpi.identifiers import DEFAULT as DEFAULT_ROLES
from hub.mpi.identifiers import Roles
from hub.mpi.matcher import two_people
from projections.person import PersonProjection
from projections.runner import Runner

DECISIONS = ("link", "review", "new", "deleted")
ASSURANCE_USER, ASSURANCE_MATCH, ASSURANCE_REVIEW = "level4", "level3", "level2"
_REF = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,128}$")
_PERSON_ID = re.compile(r"^[A-Za-z0-9\-.]{1,128}$")
RETRIES = 20
BATCH_DECISIONS, BATCH_EVENTS = 1000, 5000  # auto_decide_many: one append at most
MAX_TEXT = 512
# a steward refused a union because of a record it may not see: told so, not which nor why
_HIDDEN_CONFLICT = "that person holds a record this caller may not see that conflicts with it"


def own_person_id(person: Any, c: Any, patient: str) -> str:
    """The id of a new person founded for ``patient``: derived from the Patient, so the same
    decisions give the same ids in any order (a cluster's id is the least of its Patients' own
    ids, see ``_join``); a suffix when a person of that id exists already (the Patient founded one
    before and left it)."""
    n = 0
    while True:
        pid = hashlib.sha256(f"{patient}#{n}".encode() if n else patient.encode()).hexdigest()[:32]
        if person.person_row(c, pid) is None:
            return pid
        n += 1


def patient_ref(value: Any, what: str = "patient") -> str:
    """``Patient/id`` from ``Patient/id`` or a bare id; a 400 OperationOutcome otherwise."""
    if isinstance(value, str) and "/" not in value and _PERSON_ID.match(value):
        value = f"Patient/{value}"
    if not isinstance(value, str) or not _REF.match(value):
        raise bad_request(f"{what} must be a Patient reference like Patient/123")
    return value


def person_id(value: Any, what: str = "person") -> str:
    if isinstance(value, str) and value.startswith("Person/"):
        value = value[len("Person/"):]
    if not isinstance(value, str) or not _PERSON_ID.match(value):
        raise bad_request(f"{what} must be a Person reference like Person/abc or an id")
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isprintable():
        raise bad_request("reason and user names must be printable text")
    return value[:MAX_TEXT]


class IdentityService:
    """Decides and records identity events; reads come from ``self.person``."""

    def __init__(self, store: ResourceStore, person: PersonProjection,
                 runner: Runner | None = None,
                 clock: Callable[[], tuple[str, int]] = now_instant):
        self.store = store
        self.person = person
        self.runner = runner or Runner(store, person)
        self.clock = clock
        self._lock = threading.Lock()
        # which identifier systems are unique (hard keys): the candidate index's configuration
        # where one runs beside the service (it follows stored NamingSystems), else the shipped
        self.roles: Callable[[], Roles] = lambda: DEFAULT_ROLES
        # where automatic matching runs (hub.api.match): the log position its decisions are
        # taken up to, given the position wanted (the matcher in this process steps towards it)
        self.matched_up_to: Callable[[int], int] | None = None

    @classmethod
    def open(cls, store: ResourceStore, data_dir) -> IdentityService:
        """The service over the person projection in ``data_dir`` (hub.readmodels)."""
        from pathlib import Path

        from hub.readmodels import open_model

        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return cls(store, cast(PersonProjection, open_model("person", data_dir)))

    def close(self) -> None:
        self.person.close()

    # -- following the log ----------------------------------------------------------------------

    def sync(self, timeout: float = 5.0) -> bool:
        """Bring the person projection up to the log's end as of now."""
        return self.runner.sync(timeout)

    def await_decided(self, refs: list[str], timeout: float = 5.0) -> None:
        """Read-your-writes for Patients just written: when one of ``refs`` has no person yet
        (the matcher has not decided about it), wait, at most ``timeout`` seconds, until
        automatic matching has taken the log as of now, or each has its person. No wait, and
        nothing read but the persons, when every one has its person (every Patient matched)."""
        if self.matched_up_to is None or not refs:
            return
        P = self.person
        with P.read() as c:
            missing = [r for r in refs if P.person_of(c, r) is None]
        if not missing:
            return
        target = self.store.max_notification_id()
        deadline = time.monotonic() + timeout
        while True:
            done = self.matched_up_to(target) >= target
            self.sync(max(0.0, deadline - time.monotonic()))
            if done:
                return
            with P.read() as c:  # another node's matcher may have decided (the log is shared)
                if all(P.person_of(c, r) is not None for r in missing):
                    return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def _decide(self, plan: Callable[[Any], list[IdentityEvent]]) -> list[IdentityEvent]:
        """Run ``plan`` against fresh state and commit its events as the stream's next versions;
        again on a concurrent decision. ``plan`` raises FhirError to refuse."""
        with self._lock:
            for _ in range(RETRIES):
                self.sync()
                with self.person.read() as c:
                    version = self.person.stream_version(c)
                    events = plan(c)
                if not events:
                    return []
                stored = [to_stored(ev, version + i + 1) for i, ev in enumerate(events)]
                try:
                    self.store.append(stored)
                except ConflictError:
                    continue
                self.sync()
                return events
            raise FhirError(409, "transient", "Too many concurrent identity decisions; retry")

    def _base(self, by_type: str, name: str | None, **extra: Any) -> dict[str, Any]:
        at, _ = self.clock()
        d: dict[str, Any] = {"at": at, "by": {"type": by_type, "name": name or by_type}}
        d.update({k: v for k, v in extra.items() if v is not None})
        return d

    def _exists(self, refs: list[str]) -> None:
        ids = [r.split("/", 1)[1] for r in refs]
        found = set(self.store.current_ids("Patient", ids))
        missing = [r for r, i in zip(refs, ids) if i not in found]
        if missing:
            raise not_found(f"{missing[0]} is not known (or was deleted)")

    def _own_person(self, c: Any, patient: str, base: dict, assurance: str) -> IdentityEvent:
        return IdentityEvent("Linked", {**base, "patient": patient,
                                        "person": own_person_id(self.person, c, patient),
                                        "previous": None, "created": True,
                                        "assurance": assurance})

    def _keys(self, refs: Iterable[str], cache: dict[str, conflicts.Keys]
              ) -> list[tuple[str, conflicts.Keys]]:
        """(ref, hard keys) of the Patients, read from their current versions (``cache`` keeps
        them for one plan: a batch reads each Patient once)."""
        refs = list(refs)
        missing = [r.split("/", 1)[1] for r in refs if r not in cache]
        if missing:
            found = self.store.latest_many("Patient", missing)
            roles = self.roles()
            for rid in missing:
                hit = found.get(rid)
                cache[f"Patient/{rid}"] = conflicts.keys_of_stored(hit[1], roles) if hit else \
                    conflicts.NONE
        return [(r, cache[r]) for r in refs]

    def _cluster_conflict(self, c: Any, xs: list[str], ys: list[str],
                          cache: dict[str, conflicts.Keys]) -> str | None:
        """Why the Patients ``xs`` and ``ys`` cannot be one person (hard keys), or None."""
        return conflicts.conflict(self._keys(xs, cache), self._keys(ys, cache))

    def _refuse_union(self, xs: list[str], ys: list[str], blocked: tuple[str, str] | None,
                      what: str, veiled: str) -> None:
        """A steward's union of ``xs`` and ``ys`` refused (``conflicts.PatientsConflict``) when a
        pair of them is marked not-duplicate (``blocked``) or their hard keys conflict: ``what``
        cannot be, because of the Patients named; ``veiled`` for a caller who may not see one."""
        if blocked is not None:
            raise conflicts.PatientsConflict(
                f"{what}: {blocked[0]} and {blocked[1]} are marked as not the same person",
                blocked, f"{what}: {veiled}")
        found = conflicts.conflict_between(self._keys(xs, {}), self._keys(ys, {}))
        if found is not None:
            raise conflicts.PatientsConflict(f"{what}: {found[0]}", found[1], f"{what}: {veiled}")

    # -- the matcher's interface ------------------------------------------------------------------

    def auto_decide(self, patient_ref: str, decision: str, candidate_refs: list[str],
                    score: float, evidence: dict, ruleset: str) -> list[IdentityEvent]:
        """Record the matcher's decision about ``patient_ref`` (see the module's rules).

        ``link``: the Patient's cluster joins that of each candidate (``_join``; a join the
        clusters' hard keys forbid goes to the review queue instead); ``review``: the pairs go on
        the review queue, the Patient gets its own person meanwhile; ``new``: its own person.
        Nothing happens if a user decided about the Patient; a not-duplicate pair turns
        ``link``/``review`` into ``new``. Re-deciding the same is a no-op (the matcher delivers
        at least once). A deleted or unknown Patient is skipped, deleted candidates are dropped.
        Malformed arguments raise ValueError. Returns the events recorded."""
        out: list[IdentityEvent] = []
        self._auto_decide_many([(patient_ref, decision, candidate_refs, score, evidence, ruleset)],
                               out)
        return out

    def auto_decide_many(self, items: Iterable[tuple[str, str, list[str], float, dict, str]],
                         held: Mapping[str, set[str]] | None = None) -> int:
        """``auto_decide`` for each ``(patient_ref, decision, candidate_refs, score, evidence,
        ruleset)`` in order, batched; the number of events recorded.

        Up to ``BATCH_DECISIONS`` decisions (``BATCH_EVENTS`` events) are planned against one
        snapshot of the person projection and committed in one append (then one sync). Each
        decision is planned after the events of those before it were applied to the snapshot
        (``_plan_batch``), so it sees their effect exactly as one call each would. A malformed
        item raises ValueError after the items before it are recorded; ``items`` is read
        lazily. ``held``: Patient -> the Patients the matcher held apart from it (``hub mpi
        rematch`` knows them all before the first join: see ``_apart``), read as planned."""
        return self._auto_decide_many(items, None, held)

    def _auto_decide_many(self, items: Iterable, keep: list[IdentityEvent] | None,
                          held: Mapping[str, set[str]] | None = None) -> int:
        recorded = 0
        it = iter(items)
        while True:
            chunk: list[tuple[str, str, list[str], dict]] = []
            error: Exception | None = None
            for item in it:
                try:
                    chunk.append(_auto_item(*item))
                except (ValueError, TypeError) as e:
                    error = e
                    break
                if len(chunk) >= BATCH_DECISIONS:
                    break
            if chunk:
                recorded += self._auto_chunk(chunk, keep, held)
            if error is not None:
                raise error
            if len(chunk) < BATCH_DECISIONS:
                return recorded

    def _auto_chunk(self, chunk: list[tuple[str, str, list[str], dict]],
                    keep: list[IdentityEvent] | None,
                    held: Mapping[str, set[str]] | None = None) -> int:
        """Plan one chunk of validated decisions against one snapshot and commit them in one
        append (more if over ``BATCH_EVENTS``); again from fresh state on a concurrent one."""
        # the matcher follows the log: a Patient deleted since it was matched is no one's now
        # (nothing to decide), a deleted candidate no candidate (no exception: it would stall
        # the matcher's projection)
        ids = sorted({x.split("/", 1)[1] for p, _, cands, _ in chunk for x in (p, *cands)})
        alive: set[str] = set()
        for i in range(0, len(ids), 900):
            alive.update(self.store.current_ids("Patient", ids[i:i + 900]))
        todo: list[tuple[str, str, list[str], dict]] = []
        for p, decision, cands, extra in chunk:
            if decision == "deleted":
                if p.split("/", 1)[1] not in alive:  # not re-created since
                    todo.append((p, decision, [], extra))
                continue
            if p.split("/", 1)[1] not in alive:
                continue
            cands = [x for x in cands if x.split("/", 1)[1] in alive]
            todo.append((p, decision if cands else "new", cands, extra))
        recorded = 0
        with self._lock:
            retries = 0
            while todo:
                self.sync()
                version, planned, events = self._plan_batch(todo, held)
                if events:
                    stored = [to_stored(ev, version + i + 1) for i, ev in enumerate(events)]
                    try:
                        self.store.append(stored)
                    except ConflictError:
                        retries += 1
                        if retries >= RETRIES:
                            raise FhirError(409, "transient", "Too many concurrent identity "
                                            "decisions; retry") from None
                        continue  # a concurrent decider: plan the same decisions again
                    recorded += len(events)
                    if keep is not None:
                        keep.extend(events)
                retries = 0
                todo = todo[planned:]
            if recorded:
                self.sync()
        return recorded

    def _plan_batch(self, todo: list, held: Mapping[str, set[str]] | None = None
                    ) -> tuple[int, int, list[IdentityEvent]]:
        """Plan the decisions of ``todo`` in order against one snapshot of the person projection
        until the batch is full: (stream version planned against, decisions planned, events).

        Each decision's events are applied to the snapshot as they are planned (inside a
        savepoint rolled back at the end: the rows are written for real when the committed events
        are synced), so every decision sees those before it, as one ``auto_decide`` call each
        would. The savepoint starts with a write: the projection's write lock is held while
        planning, so the snapshot cannot go stale under it."""
        P = self.person
        events: list[IdentityEvent] = []
        keys: dict[str, conflicts.Keys] = {}
        n = 0
        with P.datastore.transaction(commit=True) as c:
            c.execute("SAVEPOINT plan")
            try:
                c.execute("UPDATE p_meta SET value = value WHERE key = 'writer'")  # the lock
                version = P.stream_version(c)
                # the hard keys of the batch's Patients in a few reads (joins and checks need them)
                self._keys({x for p, _, cands, _ in todo[:BATCH_DECISIONS] for x in (p, *cands)},
                           keys)
                for p, decision, cands, extra in todo:
                    if n >= BATCH_DECISIONS or len(events) >= BATCH_EVENTS:
                        break
                    events += self._plan_auto(c, p, decision, cands, extra, keys, held)
                    n += 1
            finally:
                c.execute("ROLLBACK TO plan")
                c.execute("RELEASE plan")
        return version, n, events

    def _plan_auto(self, c, p: str, decision: str, cands: list[str], extra: dict,
                   keys: dict[str, conflicts.Keys],
                   held: Mapping[str, set[str]] | None = None) -> list[IdentityEvent]:
        """The events of the matcher's decision about ``p`` against the snapshot ``c``, each
        applied to it as planned."""
        P = self.person
        out: list[IdentityEvent] = []

        def emit(*evs: IdentityEvent) -> None:
            for ev in evs:
                P._apply_one(c, ev)
            out.extend(evs)

        base = self._base(MATCHER, MATCHER, **extra)
        if decision == "deleted":
            emit(*self._withdraw(c, p, base))
            return out
        if not cands:
            decision = "new"
        link = P.link_of(c, p)
        if link is not None and link["manual"]:
            return []  # a user decided: the matcher does not override
        if link is not None:
            # the Patient changed (a number or sex added or corrected) and now contradicts the
            # person the matcher put it in: out first, then decided like a new one
            current = P.person_of(c, p)
            assert current is not None  # linked: it has a person
            mates = [q for q in P.patients(c, current) if q != p]
            if mates and not P.has_manual(c, current) and \
                    self._cluster_conflict(c, [p], mates, keys) is not None:
                emit(IdentityEvent("Unlinked", {**base, "patient": p, "person": link["person"],
                                                "new_person": own_person_id(P, c, p),
                                                "assurance": ASSURANCE_MATCH,
                                                "reason": "conflicting identifiers or sexes"}))
                link = P.link_of(c, p)
        alive = [x for x in cands if not P.blocked(c, p, x)]
        if decision in ("link", "review") and not alive:
            decision = "new"
        if decision == "link" and alive[0] != cands[0]:
            decision = "new"  # the first candidate is blocked: no link to someone else
        if decision == "link":
            # linking is clustering: p's cluster and each certain candidate's become one
            # the Patients the matcher held apart from p (its ranking's holds, e.g. a twin)
            mine = {x for x, e in (extra.get("evidence") or {}).items() if x not in cands
                    and two_people(e)}
            outcomes = [self._join(c, p, x, base, keys, emit, mine, held) for x in cands]
            vetoed = [x for x, o in zip(cands, outcomes) if o == "veto"]
            shaped = [x for x, o in zip(cands, outcomes) if o == "held"]
            apart = [x for x, o in zip(cands, outcomes) if o == "apart"]
            if any(o in ("joined", "together") for o in outcomes):
                emit(*self._supersede(c, p, base, "superseded"))
            for asked, reason in ((vetoed, "the clusters carry conflicting identifiers or sexes"),
                                  (shaped, "certain by the pair, but a person a steward shaped "
                                           "is joined only by a steward"),
                                  (apart, "certain by the pair, but the clusters hold a pair "
                                          "held for a steward or marked not the same person")):
                if not asked:
                    continue
                # certain by the pair, impossible or not the matcher's to do by the clusters:
                # a steward decides (a held join was dropped without a word: two persons of
                # one resident ID, and no review)
                if P.link_of(c, p) is None:
                    emit(self._own_person(c, p, base, ASSURANCE_REVIEW))
                if not any(sorted(r["candidates"]) == sorted(asked)
                           for r in P.open_reviews(c, p)):
                    emit(IdentityEvent("ReviewOpened", {
                        **base, "review": uuid.uuid4().hex, "patient": p, "candidates": asked,
                        "reason": reason}))
            if all(o == "blocked" for o in outcomes):
                decision = "new"
            else:
                if P.link_of(c, p) is None:  # nothing joined (a held cluster): its own person
                    emit(self._own_person(c, p, base, ASSURANCE_MATCH))
                return out
        if decision == "review":
            if link is None:
                emit(self._own_person(c, p, base, ASSURANCE_REVIEW))
            for r in P.open_reviews(c, p):
                if sorted(r["candidates"]) == sorted(alive):
                    return out  # already waiting for a steward
            emit(IdentityEvent("ReviewOpened", {
                **base, "review": uuid.uuid4().hex, "patient": p, "candidates": alive}))
            return out
        # new: its own person
        link = P.link_of(c, p)
        if link is None:
            emit(self._own_person(c, p, base, ASSURANCE_MATCH))
            return out
        current = P.person_of(c, p)
        assert current is not None  # linked: it has a person
        if P.has_manual(c, current) or len(P.patients(c, current)) <= 1:
            return out  # never move a Patient out of a person a user decided about
        emit(IdentityEvent("Unlinked", {**base, "patient": p, "person": link["person"],
                                        "new_person": own_person_id(P, c, p),
                                        "assurance": ASSURANCE_MATCH}))
        return out

    def _join(self, c: Any, p: str, x: str, base: dict, keys: dict[str, conflicts.Keys],
              emit: Callable[..., None], mine: set[str] | None = None,
              held: Mapping[str, set[str]] | None = None) -> str:
        """Join the cluster of ``p`` with that of candidate ``x`` (the matcher's link): every
        Patient of both ends in one person. Returns ``joined``, ``together`` (already),
        ``blocked`` (``p`` and ``x`` marked not-duplicate), ``apart`` (another pair across them
        held for a steward or marked not-duplicate: ``_apart``), ``held`` (a user's decision
        stands in the way) or ``veto`` (the union would hold conflicting hard keys).

        The survivor is the person with the least id; since a person founded by the matcher
        takes its id from its Patient (``own_person_id``), a cluster's id is the least own id
        of its Patients whatever the order of the decisions that formed it. A join is a
        ``Merged`` event by the matcher (the loser points to the survivor, so its id still
        resolves and an unmerge splits exactly what it held); a Patient without a person yet is
        linked straight into the other cluster's person when that has the lesser id. The work is
        proportional to the two clusters' sizes."""
        P = self.person
        pp, xp = P.person_of(c, p), P.person_of(c, x)
        if pp is not None and pp == xp:
            return "together"
        ps = P.patients(c, pp) if pp is not None else [p]
        xs = P.patients(c, xp) if xp is not None else [x]
        if P.blocked(c, p, x):
            return "blocked"
        if P.blocked_across(c, ps, xs) is not None or \
                self._apart(c, p, x, ps, xs, mine or set(), held or {}):
            return "apart"  # a steward decides: a detour through p never unites such a pair
        # the matcher adds single Patients to a person a steward shaped, never whole clusters
        # (that could undo an unlink or unmerge)
        if (pp is not None and len(xs) > 1 and P.has_manual(c, pp)) or \
                (xp is not None and len(ps) > 1 and P.has_manual(c, xp)):
            return "held"
        if self._cluster_conflict(c, ps, xs, keys) is not None:
            return "veto"
        if pp is None and xp is None:  # found the one whose id survives, link the other in
            if own_person_id(P, c, p) < own_person_id(P, c, x):
                founder = self._own_person(c, p, base, ASSURANCE_MATCH)
                emit(founder)
                pp = founder.data["person"]
            else:
                founder = self._own_person(c, x, base, ASSURANCE_MATCH)
                emit(founder)
                xp = founder.data["person"]
        if pp is None and xp is not None and xp < own_person_id(P, c, p):
            emit(IdentityEvent("Linked", {
                **base, "patient": p, "person": xp, "previous": None, "created": False,
                "assurance": ASSURANCE_MATCH, "candidates": [x]}))
            return "joined"
        if xp is None and pp is not None and pp < own_person_id(P, c, x):
            emit(IdentityEvent("Linked", {
                **base, "patient": x, "person": pp, "previous": None, "created": False,
                "assurance": ASSURANCE_MATCH, "candidates": [p]}))
            return "joined"
        if pp is None:
            founder = self._own_person(c, p, base, ASSURANCE_MATCH)
            emit(founder)
            pp = founder.data["person"]
        if xp is None:
            founder = self._own_person(c, x, base, ASSURANCE_MATCH)
            emit(founder)
            xp = founder.data["person"]
        survivor, loser = (pp, xp) if pp < xp else (xp, pp)
        emit(IdentityEvent("Merged", {**base, "source": loser, "target": survivor,
                                      "patient": p, "candidate": x}))
        return "joined"

    def _apart(self, c: Any, p: str, x: str, ps: list[str], xs: list[str], mine: set[str],
               held: Mapping[str, set[str]]) -> bool:
        """Whether a pair across the clusters ``ps`` (``p``'s) and ``xs`` is one the matcher held
        for a steward as two people (a hold of a kind that says so: twins, newborns, names or
        births apart, siblings; ``matcher.TWO_PEOPLE``): one of ``mine`` (held in ``p``'s own
        ranking) in ``xs``; a pair of ``held`` (every such hold of a re-match, known before its
        first join, so its persons do not depend on the order of its links); or a pair of
        an open review whose evidence holds it so (a level2 waits for its review in its own
        person: no third record answers it by joining both), but ``p`` and ``x`` themselves, now
        certain (a corrected record settles its own question). A merely probable pair, or
        namesakes held for want of their own evidence (``no-own-evidence``), is a question, not
        two people: a third record whose own evidence agrees with both joins them (on the
        second noise model such vetoes cost 1-2 % of true links and saved none)."""
        other = set(xs)
        if mine & other:
            return True
        small, big = (ps, other) if len(ps) <= len(xs) else (xs, set(ps))
        for q in small:
            if held.get(q, set()) & big:
                return True
            for r in self.person.reviews_involving(c, q):
                # (the other Patient, the candidate whose evidence says why it was held)
                pairs = [(y, y) for y in r["candidates"] if y in big] if q == r["patient"] \
                    else [(r["patient"], q)] if r["patient"] in big else []
                if any({q, y} != {p, x} and two_people((r["evidence"] or {}).get(cand))
                       for y, cand in pairs):
                    return True
        return False

    def blocked_pairs(self) -> set[frozenset[str]]:
        """Pairs of Patient references marked "not the same person"."""
        self.sync()
        return self.person.blocked_pairs()

    def _withdraw(self, c, patient: str, base: dict) -> list[IdentityEvent]:
        """Close the reviews about a deleted Patient: those it is the subject of, and those whose
        candidates are all deleted now (with live ones left, the review stays: accepting the
        deleted candidate is refused)."""
        out = []
        for r in self.person.reviews_involving(c, patient):
            if r["patient"] != patient:
                rest = [x.split("/", 1)[1] for x in r["candidates"] if x != patient]
                if rest and self.store.current_ids("Patient", rest):
                    continue
            out.append(IdentityEvent("ReviewClosed", {**base, "review": r["id"],
                                                      "outcome": "withdrawn"}))
        return out

    def _settle(self, c, one: list[str], other: list[str], base: dict) -> list[IdentityEvent]:
        """Close the open reviews a decision joining ``one`` and ``other`` answers: each whose
        Patient is on one side and whose candidates are all on the other (they stayed open and
        a later reject was refused as contradicting the decision)."""
        a, b = set(one), set(other)
        closing: dict[str, IdentityEvent] = {}  # review id -> its closing, each once
        for x in sorted(a if len(a) <= len(b) else b):  # every such review involves that side
            for r in self.person.reviews_involving(c, x):
                cands = set(r["candidates"])
                if cands and ((r["patient"] in a and cands <= b)
                              or (r["patient"] in b and cands <= a)):
                    closing[r["id"]] = IdentityEvent("ReviewClosed", {
                        **base, "review": r["id"], "outcome": "superseded"})
        return list(closing.values())

    def _supersede(self, c, patient: str, base: dict, outcome: str) -> list[IdentityEvent]:
        return [IdentityEvent("ReviewClosed", {**base, "review": r["id"], "outcome": outcome})
                for r in self.person.open_reviews(c, patient)]

    # -- manual decisions (data stewards) --------------------------------------------------------

    def decision_point(self) -> int:
        """The identity stream's version now, read from the log: what a steward's decision
        arriving now is taken against (``link``'s ``seen``)."""
        last = self.store.latest(*STREAM.split("/", 1))
        return last.originator_version if last is not None else 0

    def _moved_meanwhile(self, c: Any, patient: str, link: dict | None, seen: int) -> None:
        """A 409 when another user's decision moved ``patient`` to the person it is in now after
        version ``seen`` of the identity stream (when this decision arrived): two stewards
        deciding about one Patient at once, in one process or in two colliding on the stream's
        version, are not both told their decision stands, the later silently undoing the
        earlier. The matcher's moves are not asked about: a steward's decision overrides them."""
        if link is None:
            return
        by = self.person.moved_by_user_since(c, patient, link["person"], seen)
        if by is not None:
            raise conflict(f"{patient} was just linked to Person/"
                           f"{self.person.survivor(c, link['person'])} by {by} while this "
                           "decision was being taken; read the Person again and decide on what "
                           "it shows now")

    def link(self, patient: str, person: str | None, user: str, reason: str | None = None,
             seen: int | None = None) -> list[IdentityEvent]:
        """Link a Patient to a person (``None``: a new person of its own), as ``user``; refused
        (409) if another user moved the Patient after version ``seen`` of the identity stream
        (``decision_point``, taken as the request arrived; by default now)."""
        if seen is None:
            seen = self.decision_point()
        p = patient_ref(patient)
        target_in = person_id(person) if person is not None else None
        self._exists([p])
        user, reason = _user(user), _text(reason)

        def plan(c) -> list[IdentityEvent]:
            P = self.person
            base = self._base(USER, user, reason=reason)
            link = P.link_of(c, p)
            events: list[IdentityEvent] = []
            if target_in is None:
                self._moved_meanwhile(c, p, link, seen)
                events.append(IdentityEvent("Linked", {
                    **base, "patient": p, "person": own_person_id(P, c, p),
                    "previous": link["person"] if link else None, "created": True,
                    "assurance": ASSURANCE_USER}))
            else:
                if P.person_row(c, target_in) is None:
                    raise not_found(f"Person/{target_in} is not known")
                target = P.survivor(c, target_in)
                if link is not None and P.survivor(c, link["person"]) != target:
                    self._moved_meanwhile(c, p, link, seen)
                others = [q for q in P.patients(c, target) if q != p]
                blocked = next(((p, q) for q in others if P.blocked(c, p, q)), None)
                self._refuse_union([p], others, blocked, f"{p} cannot join Person/{target}",
                                   _HIDDEN_CONFLICT)
                if link is not None and link["person"] == target and link["manual"] \
                        and link["assurance"] == ASSURANCE_USER:
                    return []  # decided so already
                events.append(IdentityEvent("Linked", {
                    **base, "patient": p, "person": target,
                    "previous": link["person"] if link else None, "created": False,
                    "assurance": ASSURANCE_USER}))
                # the question asked the other way (another's review naming p) is answered too
                events += self._settle(c, [p], others, base)
            return events + self._supersede(c, p, base, "superseded")

        return self._decide(plan)

    def unlink(self, patient: str, user: str, reason: str | None = None,
               seen: int | None = None) -> list[IdentityEvent]:
        """Take a Patient out of its person into a new person of its own; refused (409) as
        ``link`` is if another user moved the Patient after version ``seen``."""
        if seen is None:
            seen = self.decision_point()
        p = patient_ref(patient)
        user, reason = _user(user), _text(reason)
        # a deleted Patient may be unlinked (not linked): its records stay current in its
        # person's shared record, and a steward must be able to take them out of a wrong one

        def plan(c) -> list[IdentityEvent]:
            P = self.person
            link = P.link_of(c, p)
            if link is None:
                raise not_found(f"{p} is not linked to any person")
            self._moved_meanwhile(c, p, link, seen)  # never out of a person just decided
            current = P.survivor(c, link["person"])
            if len(P.patients(c, current)) <= 1:
                raise conflict(f"{p} is the only Patient of Person/{current}; nothing to unlink")
            base = self._base(USER, user, reason=reason)
            return [IdentityEvent("Unlinked", {**base, "patient": p, "person": link["person"],
                                               "new_person": own_person_id(P, c, p),
                                               "assurance": ASSURANCE_USER}),
                    *self._supersede(c, p, base, "superseded")]

        return self._decide(plan)

    def merge(self, source: str, target: str, user: str,
              reason: str | None = None) -> list[IdentityEvent]:
        """Merge person ``source`` into ``target`` (undone by ``unmerge``)."""
        s_in, t_in = person_id(source, "source"), person_id(target, "target")
        user, reason = _user(user), _text(reason)

        def plan(c) -> list[IdentityEvent]:
            P = self.person
            for x in (s_in, t_in):
                if P.person_row(c, x) is None:
                    raise not_found(f"Person/{x} is not known")
            row = P.person_row(c, s_in)
            assert row is not None  # known: checked above
            if row["merged_into"] is not None:
                raise conflict(f"Person/{s_in} is already merged into Person/{row['merged_into']}")
            t = P.survivor(c, t_in)
            if t == s_in:
                raise conflict("A person cannot be merged into itself")
            sp, tp = P.patients(c, s_in), P.patients(c, t)
            self._refuse_union(sp, tp, P.blocked_across(c, sp, tp),
                               f"Person/{s_in} and Person/{t} cannot be one person",
                               "one of them holds a record this caller may not see that "
                               "conflicts with the other")
            base = self._base(USER, user, reason=reason)
            # reviews asking whether a Patient of one is one of the other: answered by the merge
            return [IdentityEvent("Merged", {**base, "source": s_in, "target": t}),
                    *self._settle(c, sp, tp, base)]

        return self._decide(plan)

    def unmerge(self, source: str, user: str, reason: str | None = None) -> list[IdentityEvent]:
        """Undo the merge of ``source``: it has its Patients (and those linked to it) again."""
        s_in = person_id(source, "source")
        user, reason = _user(user), _text(reason)

        def plan(c) -> list[IdentityEvent]:
            row = self.person.person_row(c, s_in)
            if row is None:
                raise not_found(f"Person/{s_in} is not known")
            if row["merged_into"] is None:
                raise conflict(f"Person/{s_in} is not merged into another person")
            base = self._base(USER, user, reason=reason)
            return [IdentityEvent("Unmerged", {**base, "source": s_in,
                                               "target": row["merged_into"]})]

        return self._decide(plan)

    def not_duplicate(self, a: str, b: str, user: str,
                      reason: str | None = None) -> list[IdentityEvent]:
        """Mark two Patients as not the same person; they must not share a person now."""
        pa, pb = patient_ref(a, "patient"), patient_ref(b, "other")
        if pa == pb:
            raise bad_request("A Patient is always the same person as itself")
        self._exists([pa, pb])
        user, reason = _user(user), _text(reason)

        def plan(c) -> list[IdentityEvent]:
            P = self.person
            if P.blocked(c, pa, pb):
                return []
            xa, xb = P.person_of(c, pa), P.person_of(c, pb)
            if xa is not None and xa == xb:
                raise conflict(f"{pa} and {pb} share Person/{xa}; unlink (or unmerge) first")
            base = self._base(USER, user, reason=reason)
            events = [IdentityEvent("NotDuplicate", {**base, "patients": sorted([pa, pb])})]
            for r in P.reviews_involving(c, pa) + P.reviews_involving(c, pb):
                others = [r["patient"], *r["candidates"]]
                if {pa, pb} <= set(others) and len(r["candidates"]) == 1:
                    events.append(IdentityEvent("ReviewClosed", {**base, "review": r["id"],
                                                                 "outcome": "rejected"}))
            seen, out = set(), []
            for ev in events:  # a review can involve both
                key = (ev.event, ev.data.get("review"))
                if key not in seen:
                    seen.add(key)
                    out.append(ev)
            return out

        return self._decide(plan)

    def accept_review(self, review: str, user: str, candidate: str | None = None,
                      reason: str | None = None) -> list[IdentityEvent]:
        """A steward confirms: the Patient joins the person of the named candidate (the only one
        if it has one; with several, naming none is a 400: linking the first listed would
        decide for the steward)."""
        user, reason = _user(user), _text(reason)
        chosen = patient_ref(candidate, "candidate") if candidate is not None else None

        def plan(c) -> list[IdentityEvent]:
            P = self.person
            r = P.review(c, review)
            if r is None:
                raise not_found(f"Review {review} is not known")
            if r["status"] != "open":
                raise conflict(f"Review {review} is closed ({r['outcome']})")
            if chosen is None and len(r["candidates"]) > 1:
                raise bad_request(f"Review {review} has {len(r['candidates'])} candidates ("
                                  + ", ".join(r["candidates"]) + "); name one as candidate")
            cand = chosen or r["candidates"][0]
            if cand not in r["candidates"]:
                raise bad_request(f"{cand} is not a candidate of review {review}")
            p = r["patient"]
            self._exists([p, cand])  # a record deleted since the review opened joins no one
            base = self._base(USER, user, reason=reason)
            events: list[IdentityEvent] = []
            target = P.person_of(c, cand)
            others = [q for q in P.patients(c, target) if q != p] if target else [cand]
            blocked = next(((p, q) for q in others if P.blocked(c, p, q)), None)
            self._refuse_union([p], others, blocked, f"{p} cannot join the person of {cand}",
                               _HIDDEN_CONFLICT)
            if target is None:
                founder = self._own_person(c, cand, base, ASSURANCE_USER)
                events.append(founder)
                target = founder.data["person"]
            link = P.link_of(c, p)
            events.append(IdentityEvent("Linked", {
                **base, "patient": p, "person": target,
                "previous": link["person"] if link else None, "created": False,
                "assurance": ASSURANCE_USER, "review": review}))
            # the candidate waited for this review too (its mirror): a steward decided it now
            held = P.link_of(c, cand)
            if held and held["person"] == target and held["assurance"] == ASSURANCE_REVIEW:
                events.append(IdentityEvent("Linked", {
                    **base, "patient": cand, "person": target, "previous": target,
                    "created": False, "assurance": ASSURANCE_USER, "review": review}))
            events.append(IdentityEvent("ReviewClosed", {**base, "review": review,
                                                         "outcome": "accepted"}))
            events += [IdentityEvent("ReviewClosed", {**base, "review": m, "outcome": "accepted"})
                       for m in self._mirrors(c, p, [cand])]
            return events

        return self._decide(plan)

    def reject_review(self, review: str, user: str,
                      reason: str | None = None) -> list[IdentityEvent]:
        """A steward refutes: the pairs are marked not-duplicate, the Patient keeps its person."""
        user, reason = _user(user), _text(reason)

        def plan(c) -> list[IdentityEvent]:
            P = self.person
            r = P.review(c, review)
            if r is None:
                raise not_found(f"Review {review} is not known")
            if r["status"] != "open":
                raise conflict(f"Review {review} is closed ({r['outcome']})")
            mine = P.person_of(c, r["patient"])
            shared = [q for q in r["candidates"] if mine is not None and P.person_of(c, q) == mine]
            if shared:
                raise conflict(f"{r['patient']} and {shared[0]} share Person/{mine} now; unlink "
                               "(or unmerge) first")
            base = self._base(USER, user, reason=reason)
            events = [IdentityEvent("NotDuplicate", {**base, "patients": sorted([r["patient"], q])})
                      for q in r["candidates"] if not P.blocked(c, r["patient"], q)]
            events.append(IdentityEvent("ReviewClosed", {**base, "review": review,
                                                         "outcome": "rejected"}))
            events += [IdentityEvent("ReviewClosed", {**base, "review": m, "outcome": "rejected"})
                       for m in self._mirrors(c, r["patient"], r["candidates"])]
            return events

        return self._decide(plan)

    def _mirrors(self, c: Any, p: str, others: list[str]) -> list[str]:
        """The open reviews asking the same question the other way round (each of ``others``
        against ``p`` alone): two records arriving together were each proposed against the
        other, and deciding one left the other open."""
        return [r["id"] for q in others for r in self.person.open_reviews(c, q)
                if r["candidates"] == [p]]

    def dismiss_review(self, review: str, user: str,
                       reason: str | None = None) -> list[IdentityEvent]:
        """A steward sets a proposal aside without deciding (not enough to say either way): the
        review is closed, nothing is linked or marked, the matcher may propose the pair again."""
        user, reason = _user(user), _text(reason)

        def plan(c) -> list[IdentityEvent]:
            r = self.person.review(c, review)
            if r is None:
                raise not_found(f"Review {review} is not known")
            if r["status"] != "open":
                raise conflict(f"Review {review} is closed ({r['outcome']})")
            return [IdentityEvent("ReviewClosed", {**self._base(USER, user, reason=reason),
                                                   "review": review, "outcome": "dismissed"})]

        return self._decide(plan)


def _auto_item(patient_ref: str, decision: str, candidate_refs: list[str], score: float,
               evidence: dict, ruleset: str) -> tuple[str, str, list[str], dict]:
    """A matcher's decision checked: (Patient, decision, candidates, event fields)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
    p = patient_ref_strict(patient_ref)
    cands = [patient_ref_strict(x) for x in candidate_refs if x != p]
    if decision == "deleted" and cands:
        raise ValueError("a deleted decision has no candidates")
    if decision in ("link", "review") and not cands:
        raise ValueError(f"a {decision} decision needs candidates")
    extra = {"score": float(score) if score is not None else None,
             "evidence": evidence or {}, "ruleset": str(ruleset)}
    return p, decision, cands, extra


def patient_ref_strict(value: Any) -> str:
    if not isinstance(value, str) or not _REF.match(value):
        raise ValueError(f"{value!r} is not a Patient reference like Patient/123")
    return value


def _user(user: Any) -> str:
    if not isinstance(user, str) or not user.strip():
        raise FhirError(400, "security", "A manual identity decision needs a named user "
                        "(X-Hub-User header)")
    u = _text(user.strip())
    assert u is not None
    return u
