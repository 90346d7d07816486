"""Incremental matching: each new or updated Patient is matched as it arrives, not by nightly batch.

``IncrementalMatcher`` is a read model over the Patient events (``types``). It shares the candidate
index's SQLite file and tracking table (``hub.mpi.candidates``), and for each batch:

1. brings the candidate index up to the batch (the index skips what it already applied), so a new
   Patient's own features are indexed before it is matched;
2. matches the newest version of every Patient of the batch against the index (itself excluded,
   pairs for which ``blocked(a, b)`` holds left out: marks of "not a duplicate");
3. calls ``decide(patient_ref, decision, candidate_refs, score, evidence, ruleset)`` with the
   matcher's decision: ``link`` (certain candidates: linked automatically), ``review`` (probable
   ones: the review queue) or ``new``; or, given ``decide_many``, hands the batch's decisions
   (those tuples, in order) to it in one call;
4. records its position.

The callback is the identity service's ``IdentityService.auto_decide`` (``decide_many``:
``auto_decide_many``, the same decisions batched; ``hub.mpi.identity``), which
records the decision as an identity event unless a person already decided about that Patient; it
must be idempotent, since a crash between 3 and 4 calls it again for the same batch (at least once).
A deleted Patient is removed from the index and not matched; the ``deleted`` decision closes its
open reviews. ``rematch_all`` runs the same decisions
over every indexed Patient (``hub mpi rematch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC
from hub.mpi.candidates import IdentityCandidates
from hub.mpi.matcher import Candidate, Matcher, decision, two_people
from projections.contract import nothing_to_apply
from projections.sqlite_model import follow_log, followed_log, record_position

NAME = "mpi-incremental"
Decide = Callable[[str, str, list, float, dict, str], object]
Decision = tuple[str, str, list, float, dict, str]  # decide's arguments
DecideMany = Callable[..., object]  # (decisions, held pairs): IdentityService.auto_decide_many
Blocked = Callable[[str, str], bool]


def blocked_from_pairs(pairs: Callable[[], set[frozenset[str]]]) -> Blocked:
    """A ``blocked(a, b)`` test over ``IdentityService.blocked_pairs`` (read once per call of the
    returned function's ``refresh``; the matcher asks per pair)."""
    state = {"pairs": pairs()}

    def blocked(a: str, b: str) -> bool:
        return frozenset((a, b)) in state["pairs"]

    blocked.refresh = lambda: state.update(pairs=pairs())  # type: ignore[attr-defined]
    return blocked


def _decision(matcher: Matcher, f: dict, blocked: Blocked | None,
              min_pk: int = 0) -> tuple[str, list[Candidate], Decision]:
    """Match one Patient: (kind, chosen candidates, the arguments of ``decide``)."""
    ranked = matcher.match(f, blocked=blocked, min_pk=min_pk)
    kind, chosen = decision(ranked)
    merged = _merged_by_institution(matcher, f, blocked)
    if merged:
        # the institution merged these records itself: they are one person, whatever the
        # scores (its merge message names the retired record by number alone); joined as the
        # matcher joins, so conflicting hard keys still go to a steward
        links = [c.ref for c in chosen] if kind == "link" else []
        refs = merged + [r for r in links if r not in merged]
        evidence = {r: {"weight": 0.0, "score": 1.0, "fields": {"link": "merged by its institution"}}
                    for r in merged}
        return "link", chosen, (f["ref"], "link", refs, 1.0, evidence, matcher.weights.ruleset)
    best = chosen[0] if chosen else (ranked[0] if ranked else None)
    # a link carries the candidates held apart from the Patient as two people too (a twin, a
    # name apart): its join never unites it with one of them through another record
    # (``IdentityService._apart``)
    held = [c for c in ranked if kind == "link" and c not in chosen and two_people(c.evidence)]
    # the decision point: "link" is linked automatically, "review" goes to the review queue
    args = (f["ref"], {"link": "link", "review": "review", "new": "new"}[kind],
            [c.ref for c in chosen], best.score if best else 0.0,
            {c.ref: {"weight": round(c.weight, 3), "score": round(c.score, 6), "fields": c.evidence}
             for c in [*chosen, *held]} if chosen else {}, matcher.weights.ruleset)
    return kind, chosen, args


def held_apart(args: Decision, into: dict[str, set[str]]) -> None:
    """Add the pairs a decision says the matcher held for a steward as two people (a hold of
    such a kind in a candidate's evidence: ``matcher.TWO_PEOPLE``) to ``into``, from both
    sides."""
    for ref, e in (args[4] or {}).items():
        if two_people(e):
            into.setdefault(args[0], set()).add(ref)
            into.setdefault(ref, set()).add(args[0])


def _merged_by_institution(matcher: Matcher, f: dict, blocked: Blocked | None) -> list[str]:
    """The Patients ``f``'s own institution says it was merged with (Patient.link), where the
    other record is of that same institution and the pair is not marked not-duplicate."""
    if not f.get("merged") or not f.get("org"):
        return []
    out = []
    for ref in f["merged"]:
        g = matcher.index.features_of(ref)
        if g is not None and g.get("org") == f["org"] and \
                (blocked is None or not blocked(f["ref"], ref)):
            out.append(ref)
    return out


def forget_another_log(index: IdentityCandidates, end: int, log_id: str) -> bool:
    """After a rebuild of the candidate index: the automatic matching's position, kept by a
    rebuild, is forgotten too when it is not this log's (beyond its ``end``, or recorded with
    another log id), so it matches this log's Patients from the start. Whether it was."""
    position = index.tracking.max_tracking_id(NAME) or 0
    followed = followed_log(index.datastore, NAME)
    if position <= end and followed in (None, log_id):
        return False
    with index.datastore.transaction(commit=True) as c:
        c.execute("DELETE FROM tracking WHERE application_name=?", (NAME,))
        c.execute("DELETE FROM followed_log WHERE name=?", (NAME,))
    return True


class IncrementalMatcher:
    name = NAME
    rebuilt_by = "identity-candidates"  # hub projections rebuild (forget_another_log)
    types = IdentityCandidates.types  # the index it brings up follows NamingSystems too

    def __init__(self, index: IdentityCandidates, matcher: Matcher, decide: Decide,
                 blocked: Blocked | None = None, decide_many: DecideMany | None = None):
        self.index = index
        self.matcher = matcher
        self.decide = decide
        self.decide_many = decide_many
        self.blocked = blocked
        self.tracking = index.tracking
        self.decisions: dict[str, int] = {"link": 0, "review": 0, "new": 0}

    @classmethod
    def recording_with(cls, index: IdentityCandidates, matcher: Matcher,
                       identity: Any) -> IncrementalMatcher:
        """The matcher whose decisions ``identity`` (an ``IdentityService``) records, in batches,
        leaving out the pairs it holds marked not-duplicate; the roles of the identifier
        systems it judges by are the index's (those stored NamingSystems declare)."""
        identity.roles = lambda: index.roles
        return cls(index, matcher, identity.auto_decide, blocked_from_pairs(identity.blocked_pairs),
                   decide_many=identity.auto_decide_many)

    def position(self) -> int:
        return self.tracking.max_tracking_id(NAME) or 0

    def followed_log(self) -> str | None:
        return followed_log(self.index.datastore, NAME)  # in the index's file, by its own name

    def follow_log(self, log_id: str) -> None:
        follow_log(self.index.datastore, NAME, log_id)

    def stale(self) -> str | None:
        return None  # it keeps no times

    def reset(self) -> None:
        """Match every Patient again from the start of the log (the index is left as it is)."""
        with self.index.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM tracking WHERE application_name=?", (NAME,))

    bulk = False  # no bulk mode of its own (it ends the index's, below)

    def caught_up(self) -> None:
        pass  # the ReadModel contract: nothing to build at the log's end

    def close(self) -> None:
        pass  # the index is closed by its owner

    def apply(self, notifications: Sequence[Notification], up_to: int | None = None,
              since: int | None = None) -> None:
        last = max(notifications[-1].id if notifications else 0, up_to or 0)
        done = self.position()
        if nothing_to_apply(last, done, since):
            return  # applied already, or read before a reset
        if self.index.position() < last:
            self.index.apply(notifications, up_to=up_to)
        if self.index.bulk:
            self.index.caught_up()  # matching needs the key index
        newest: dict[str, Notification] = {}
        for n in notifications:
            if n.id > done:
                newest[str(n.originator_id)] = n
        refresh = getattr(self.blocked, "refresh", None)
        if refresh is not None and newest:
            refresh()
        batch: list[Decision] = []
        for stream, n in newest.items():
            if KIND_OF_TOPIC.get(n.topic) == "deleted":
                # its open reviews close: no steward is asked about a record gone
                args: Decision = (stream, "deleted", [], 0.0, {}, self.matcher.weights.ruleset)
                if self.decide_many is None:
                    self.decide(*args)
                else:
                    batch.append(args)
                continue
            f = self.index.features_of(stream)
            if f is None:
                continue
            kind, _, args = _decision(self.matcher, f, self.blocked)
            if self.decide_many is None:
                self.decide(*args)
            else:
                batch.append(args)
            self.decisions[kind] += 1
        if batch:
            assert self.decide_many is not None
            self.decide_many(batch)  # the batch's decisions in one call (one commit, mostly)
        with self.index.datastore.transaction(commit=True) as c:
            c.execute("UPDATE ic_meta SET value = value + 1 WHERE key = 'writer'")  # lock first
            c.execute("SELECT notification_id FROM tracking WHERE application_name=?", (NAME,))
            row = c.fetchone()
            if row is None or row[0] < last:
                record_position(self.tracking, c, NAME, last)


def rematch_all(index: IdentityCandidates, matcher: Matcher, decide: Decide | None,
                blocked: Blocked | None = None,
                progress: Callable[[int], object] | None = None,
                decide_many: DecideMany | None = None) -> dict[str, int]:
    """Match every indexed Patient again and call ``decide`` for each; counts per decision.
    With ``decide_many``, all decisions go to it instead, as one lazy iterable, with every pair
    any ranking held for a steward as two people (``held_apart``, complete before the first
    decision is read): no join unites such a pair through a third record, whichever of its links comes first.

    The decisions are handed over in a canonical order (``canonical``), not in the index's:
    where links conflict (two people with different ID numbers both certain of a third record
    without one), which join is refused depends on the order, and a re-match from scratch must
    give the same persons whatever order the Patients were loaded in."""
    counts = {"link": 0, "review": 0, "new": 0}
    held: dict[str, set[str]] = {}

    def decisions() -> Iterator[Decision]:
        for _, f in index.iter_all():
            kind, _, args = _decision(matcher, f, blocked)
            held_apart(args, held)
            counts[kind] += 1
            if progress is not None:
                progress(1)
            yield args

    ordered = canonical(decisions())
    if decide_many is not None:
        decide_many(ordered, held)
    else:
        assert decide is not None
        for args in ordered:
            decide(*args)
    return counts


_RANK = {"new": 0, "link": 1, "review": 2}


def canonical(decisions: Iterable[Decision]) -> Iterator[Decision]:
    """The decisions sorted by a key of their own content: first every ``new`` (each Patient's own
    person), then the links, most certain first, then the reviews; ties by Patient reference.
    Each decision is spooled to a temporary file as it is made and read back in that order, so
    memory holds only the sort keys (about 230 bytes a Patient: 227 MB for a million), not the
    evidence."""
    import tempfile

    import orjson

    keys: list[tuple[int, float, str, int, int]] = []
    with tempfile.TemporaryFile() as spool:
        for d in decisions:
            raw = orjson.dumps(d)
            keys.append((_RANK[d[1]], -float(d[3] or 0.0), d[0], spool.tell(), len(raw)))
            spool.write(raw)
        keys.sort()
        for *_, offset, size in keys:
            spool.seek(offset)
            ref, kind, cands, score, evidence, ruleset = orjson.loads(spool.read(size))
            yield ref, kind, cands, score, evidence, ruleset
