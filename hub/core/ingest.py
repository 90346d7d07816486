"""The ingest service: turns requested writes into resource events, one transaction per group.

A group is one REST interaction, one transaction or batch Bundle, or one batch of ingested
resources. Every group goes through the same steps:

1. resolve targets (ids, conditional matches, server-assigned ids for creates); a PATCH is
   applied to the current version of its target here, and its result checked;
2. rewrite ``urn:uuid:`` and conditional (``Type?query``) references;
3. read the current heads of all targets in one query;
4. decide per write: no-op (same content as the current version), new version, 412 on a failed
   ``If-Match``; build canonical bytes and events;
5. commit everything in one transaction. A concurrent writer surfaces as ``ConflictError`` and the
   group is re-planned from fresh heads, each write as it was sent (so two updates of one
   resource never both win, and no retry writes back what an earlier attempt took from a
   version since replaced), and so
   does a conditional create, update or delete whose search a commit since changed (so none of
   them duplicates), and a conditional write or reference whose match a commit since changed (so
   none acts on a resource its criteria no longer name).

Validation happened before (``hub.resource.validate``), exactly once per resource.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

import orjson
import uuid6
from eventsourcing.persistence import OperationalError, StoredEvent

from fhir_mapping import cleared, partial, source_order
from fhir_mapping.fhir_types import TYPES, URI_ELEMENTS
from fhir_mapping.identifiers import RESIDENT_ID_SYSTEM, is_resident_id_system, someone_elses
from hub.core import jsontext
from hub.core import resource as res
from hub.core.access import ANONYMOUS, Actor
from hub.core.conditional import (
    MATCH_LIMIT,
    IdentifierResolver,
    Query,
    identifiers_match,
    parse_query,
    unmet_criterion,
)
from hub.core.errors import (
    FhirError,
    Issue,
    bad_request,
    conflict,
    gone,
    not_found,
    precondition_failed,
)
from hub.core.events import CREATED, DELETED, UPDATED, ResourceEvent, from_stored, resource_bytes
from hub.core.store import Commit, ConflictError, Head, QuietGuard, ResourceStore

RETRIES = 12
# Op.if_match of ``If-Match: *``: any version, so long as the resource exists and is not deleted
ANY_VERSION = -1
# an If-Match: a version, ANY_VERSION, or the versions of a list of ETags (any of them matches)
IfMatch = int | tuple[int, ...] | None
RETRY_SECONDS = 10.0
# the longest a write may take from reading its lastUpdated to taking the writers' lock (a
# write past it is planned again with a new lastUpdated): what a bulk export's transactionTime
# stays behind its snapshot by, so that no write falls between two exports
SETTLE_US = 30_000_000
BACKOFF = 0.001  # seconds; doubled per retry, jittered, at most 50 ms: racing writers spread out


@dataclass(slots=True)
class Context:
    """Who asked: the request id, the source (institution, feed, source message id) and the
    actor the access policy judges (``hub.repository``)."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    source: dict[str, Any] = field(default_factory=dict)
    actor: Actor = ANONYMOUS
    address: str | None = None  # the caller's network address, as the audit records it
    query: str | None = None  # the request (path and query) an access answers, for the audit
    # the accesses of one made of several, recorded as one when it ends (Repository.as_one)
    gathered: list[Any] | None = None


@dataclass(slots=True)
class Op:
    """One requested write. ``d`` is the validated resource (None for DELETE)."""

    method: str  # POST | PUT | PATCH | DELETE
    rtype: str
    rid: str | None = None
    d: dict | None = None
    query: Query | None = None  # conditional update/delete criteria
    if_none_exist: Query | None = None
    if_match: IfMatch = None
    # If-None-Match: * (RFC 9110 13.1.2): a PUT that only creates, 412 over a current resource
    create_only: bool = False
    full_url: str | None = None
    url: str = ""
    where: str | None = None  # FHIRPath of the Bundle entry it came from, for error locations
    warnings: list[Issue] = field(default_factory=list)  # of its checks: repairs, profiles
    # a PATCH: the resource to store and its warnings, from the current one (applied and checked)
    patch: Callable[[dict], tuple[dict, list[Issue]]] | None = None
    patched_from: int = 0  # the version the PATCH was applied to
    # written by the hub itself about what a caller sent (a document's quality report): a
    # caller may not write such a resource on its own (``hub.repository``)
    own: bool = False
    # a DELETE's source order (``fhir_mapping.source_order``; a write's is on its resource): an
    # older delete leaves the stored version in place, and the deletion keeps it
    order: source_order.Order | None = None
    # filled by planning
    target: str | None = None
    existing: bool = False  # conditional create matched: nothing to write
    matched: bool = False  # the target is what its criteria found (it must not change till commit)
    # the caller may change the target but not read it (``Authorize`` says so): the answer tells
    # nothing of it as stored (its version, its content, its deletion)
    hidden: bool = False


# Shown a write and the stored resource it would change; raises a FhirError to refuse it, and
# sets ``Op.hidden`` when the caller may not read what is stored.
Authorize = Callable[[Op, StoredEvent], None]
# Which of these ids of a type, found by the criteria, the caller sees (through what it sees,
# for a ``_has`` or a chain): a conditional write's criteria match only those. A match hidden
# from it would otherwise be told of by the answer: 403 or 412 where no match gives 200, 201
# or 404, a Location, a reference rewritten to its id. By a key the hidden matches stay (see
# ``Repository``), and the flag says some are hidden: how many is then not told.
Sees = Callable[[str, list[str], Query], tuple[list[str], bool]]
# Is this stored record (type, id) patient data another institution wrote, one the caller may
# not take as its own: a conditional create, a conditional reference or a create by criteria
# naming no key is refused rather than resolved to it or made beside it (412)
Foreign = Callable[[str, str], bool]


@dataclass(slots=True)
class Result:
    status: int
    rtype: str
    rid: str | None = None
    version: int | None = None
    last_updated: str | None = None
    body: bytes | None = None  # stored bytes of the resulting version, when known
    issues: list[Issue] = field(default_factory=list)
    # a write to a record the caller may not read (``Op.hidden``): answered alike whatever was
    # stored and whatever it did, with no version, time or content (``complete`` adds none)
    hidden: bool = False
    # this write stored a new version (or the deletion): not a write that left what is stored
    # as it was (the same content, older than what is stored, a conditional create matched)
    written: bool = False
    # a conditional create that found its record: one hidden from the caller (``hidden``, by a
    # key it named) is answered with where it is (``place``), never its version or time
    found: bool = False

    @property
    def place(self) -> str | None:
        """``Type/id`` of a hidden record a conditional create found, for its Location."""
        return f"{self.rtype}/{self.rid}" if self.found and self.hidden and self.rid else None

    @property
    def location(self) -> str | None:
        if self.rid is None or self.version is None:
            return None
        return f"{self.rtype}/{self.rid}/_history/{self.version}"


# the feeds whose writes are FHIR as their client wrote it: the REST API's (unless a connector
# names its feed), ``hub ingest``'s files and ``hub demo``'s region. An update from one replaces,
# as FHIR says; any other feed is a message feed (a connector's, the Kafka intake's, a
# document's), whose writes of a Patient keep what the message leaves unsaid
CLIENT_FEEDS = frozenset({"rest", "file", "demo"})


def message_feed(ctx: Context) -> bool:
    """Whether ``ctx``'s writes come from a message feed (not ``CLIENT_FEEDS``)."""
    return ctx.source.get("feed", "rest") not in CLIENT_FEEDS


def new_id() -> str:
    """The id of a resource the hub names (a create without one): a time-ordered UUID (version
    7, RFC 9562), so that a commit's new keys land at the end of every index keyed by id, not on
    a random page each (write-side indexes, event table, search index). 76 random bits keep
    concurrent processes apart. Under bursts of more than one id a millisecond, the library
    moves the time part ahead to keep the order, so it is an order, not a clock."""
    return str(uuid6.uuid7())


def now_instant() -> tuple[str, int]:
    """(FHIR instant in UTC, microseconds since the epoch)."""
    us = time.time_ns() // 1000
    return instant_of(us), us


def instant_of(us: int) -> str:
    """The FHIR instant (UTC, microseconds) of ``us`` microseconds since the epoch."""
    dt = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc)
    # isoformat, not strftime: the C library's strftime may look the time zone up every call
    return f"{dt.isoformat()[:19]}.{us % 1_000_000:06d}Z"


class Hub:
    def __init__(self, store: ResourceStore, clock: Callable[[], tuple[str, int]] = now_instant,
                 resolver: IdentifierResolver | None = None):
        self.store = store
        # what conditional interactions search with: the identifier index unless given one
        # (the API's SearchResolver, over the search index)
        self.resolver = resolver if resolver is not None else IdentifierResolver(store)
        self.clock = clock

    # -- reads ---------------------------------------------------------------------------------

    def read(self, rtype: str, rid: str) -> StoredEvent:
        stored = self.store.latest(rtype, rid)
        if stored is None:
            raise not_found(f"{rtype}/{rid} is not known")
        if stored.topic.endswith("Deleted"):
            raise gone(f"{rtype}/{rid} was deleted (version {stored.originator_version})")
        return stored

    def vread(self, rtype: str, rid: str, version: int) -> StoredEvent:
        stored = self.store.version(rtype, rid, version)
        if stored is None:
            if self.store.latest(rtype, rid) is None:
                raise not_found(f"{rtype}/{rid} is not known")
            raise not_found(f"{rtype}/{rid} has no version {version}")
        if stored.topic.endswith("Deleted"):
            raise gone(f"Version {version} of {rtype}/{rid} is its deletion")
        return stored

    # -- writes --------------------------------------------------------------------------------

    def execute(self, ops: list[Op], ctx: Context, *, atomic: bool,
                authorize: Authorize | None = None,
                sees: Sees | None = None,
                foreign: Foreign | None = None) -> list[Result | FhirError]:
        """Plan and commit ``ops`` as one transaction; with ``atomic`` any failure fails all.

        ``authorize`` is shown each write's target as stored when it is planned (criteria
        resolved), and raises a FhirError for one the caller may not change; criteria match
        only what ``sees`` keeps; what ``foreign`` says is another institution's is never
        taken as the caller's own (``_refuse_foreign``)."""
        undo: list[tuple[Any, Any, str]] = []  # reference rewrites, reverted before a retry
        # a few quick retries, then on for a while: a loaded machine slows every attempt down,
        # and a writer that lost a race this time is the likelier winner the next
        deadline = time.monotonic() + RETRY_SECONDS
        attempt = 0

        # each write as sent (criteria with their placeholders, the resource, its warnings):
        # every attempt plans from it. Planning edits no resource or warnings list it was
        # sent (a copy where it changes them) but for the reference rewrites, which ``undo``
        # reverts: what an attempt joined in from the stored version, or took off (a mark of
        # what the message clears or sends in part), would read to the next as sent.
        sent = [(op.if_none_exist, op.query, op.d, op.warnings) for op in ops]

        def replan() -> None:  # the plan's rewrites, resolutions and edits undone
            for node, key, old in reversed(undo):  # in the resources as sent
                node[key] = old
            undo.clear()
            for op, (if_none_exist, query, d, warnings) in zip(ops, sent):
                op.target, op.existing, op.matched = None, False, False
                op.if_none_exist, op.query, op.d, op.warnings = if_none_exist, query, d, warnings

        while attempt < RETRIES or time.monotonic() < deadline:
            attempt += 1
            try:
                return self._attempt(ops, ctx, atomic, undo, authorize, sees, foreign)
            except OperationalError as e:
                # no connection to be had (PostgreSQL's were cut, the pool replaces them): nothing
                # was written, so planned again a moment later rather than a 503 at once
                if not _no_connection(e) or time.monotonic() > deadline:
                    raise
                replan()
                time.sleep(0.1)
            except ConflictError:
                replan()
                time.sleep(random.uniform(0, min(0.05, BACKOFF * 2 ** min(attempt, 16))))
        raise FhirError(409, "conflict", "Too many concurrent changes to the same resources; retry")

    def execute_batch(self, ops: list[Op], ctx: Context, authorize: Authorize | None = None,
                      sees: Sees | None = None,
                      foreign: Foreign | None = None) -> list[Result | FhirError]:
        """Independent writes (a batch): as if run one after another, committed in few transactions.

        Writes that name the same resource (or the same conditional criteria) cannot share a
        commit, so each later one goes into a following commit, keeping their order.
        """
        results: list[Result | FhirError | None] = [None] * len(ops)
        todo = list(range(len(ops)))
        while todo:
            now: list[int] = []
            later: list[int] = []
            keys = set()
            for i in todo:
                key = _batch_key(ops[i])
                (later if key in keys else now).append(i)
                keys.add(key)
            for i, result in zip(now, self.execute([ops[i] for i in now], ctx, atomic=False,
                                                   authorize=authorize, sees=sees,
                                                   foreign=foreign)):
                results[i] = result
            todo = later
        return results  # type: ignore[return-value]

    def _attempt(self, ops: list[Op], ctx: Context, atomic: bool,
                 undo: list[tuple[Any, Any, str]],
                 authorize: Authorize | None = None,
                 sees: Sees | None = None,
                 foreign: Foreign | None = None) -> list[Result | FhirError]:
        results: list[Result | FhirError | None] = [None] * len(ops)

        def fail(i: int, err: FhirError) -> None:
            err = _located(err, ops[i])
            if atomic:
                raise err
            results[i] = err

        # the log position conditional writes searched from (their guard: nothing newer), read
        # before they search
        searched_at = (self.store.max_notification_id()
                       if any(_criteria(op) for op in ops) else None)

        # 1. targets
        planned: list[int] = []
        placed: dict[str, str] = {}  # fullUrl -> Type/id of the entries planned so far
        for i, op in enumerate(ops):
            try:
                if atomic and placed and (op.if_none_exist or op.query):
                    # an earlier entry's placeholder in the criteria (subject=urn:uuid:…) is that
                    # entry, as in its references: left as sent, a replay of the transaction
                    # matched nothing and created its resources again
                    op.if_none_exist = _placed(op.if_none_exist, placed)
                    op.query = _placed(op.query, placed)
                self._resolve_target(op, ops[:i] if atomic else [], sees, foreign)
                planned.append(i)
                if atomic and op.full_url and op.target and op.method in ("POST", "PUT"):
                    placed[op.full_url] = f"{op.rtype}/{op.target}"
            except FhirError as e:
                fail(i, e)
        seen: dict[tuple[str, str | None], int] = {}  # no target: a delete that matched nothing
        for i in list(planned):
            key = (ops[i].rtype, ops[i].target)
            j = seen.get(key)
            # two entries on one resource, unless neither writes (e.g. two matched creates)
            if j is not None and not (ops[i].existing and ops[j].existing):
                both = (f"{ops[j].where or f'Entry {j}'} and {ops[i].where or f'entry {i}'} "
                        f"both concern {key[0]}/{key[1]}")
                # a batch whose conditional entries meet on one resource: the later one fails
                fail(i, bad_request(both, ops[i].where) if atomic else conflict(
                    f"{both}; entries of a batch must be independent"))
                planned.remove(i)
                continue
            seen.setdefault(key, i)
        # the stored resource each write reaches, however it was named: shown to ``authorize``,
        # and patched (before the references: a patch may add one to an entry)
        for i in list(planned):
            op = ops[i]
            op.hidden = False  # of this attempt's target
            if (authorize is None and op.method != "PATCH") or op.existing or op.target is None:
                continue
            stored = self.store.latest(op.rtype, op.target)
            if op.matched and (stored is None or stored.topic.endswith("Deleted")):
                # deleted since its criteria matched it: planned again, they match what is left
                raise ConflictError(f"{op.rtype}/{op.target} was deleted meanwhile")
            try:
                if authorize is not None and stored is not None:
                    authorize(op, stored)
                if op.method == "PATCH":
                    self._apply_patch(op, stored)
            except FhirError as e:
                fail(i, e)
                planned.remove(i)
        # a source order ahead of the wall clock, or of a version no series reaches (a patch's
        # too, now applied): refused. Not the hub's stamping clock, which a write reads once,
        # when it is stamped
        now = datetime.now(timezone.utc)
        for i in list(planned):
            order = _order_of(ops[i])
            why = source_order.invalid(order) or source_order.ahead(order, now)
            if why:
                fail(i, FhirError(422, "invalid", f"{why}: every later write of the record "
                                  "would be left as older"))
                planned.remove(i)

        # 2. references
        pinned: list[QuietGuard] = []  # what conditional references resolved to
        if atomic:
            pinned = self._rewrite_references(ops, planned, undo, sees, searched_at, foreign)
        else:
            # entries of a batch are independent (R4): one that names another entry, or a
            # conditional reference (a transaction's only), fails alone; stored, it pointed
            # nowhere or at the query text
            for i in list(planned):
                body = ops[i].d
                if body is None:
                    continue
                try:
                    _rewrite(body, ops[i].rtype, _batch_reference, {}, [])
                except FhirError as e:
                    fail(i, e)
                    planned.remove(i)

        # 3. heads
        heads = self.store.heads(
            (ops[i].rtype, cast(str, ops[i].target)) for i in planned if not ops[i].existing
        )

        # 4. decide
        last_updated, ts = self.clock()
        commit = Commit(settle_by_us=ts + SETTLE_US, guards=list(pinned))
        pending: list[tuple[int, Result]] = []
        replaced: dict[int, tuple[int, Any]] = {}  # what each PUT replaces, read once
        older = self._older_than_stored(ops, planned, heads, replaced)
        feed = message_feed(ctx)
        if feed:
            self._keep_retirements(ops, planned, heads, replaced)
        self._join_partial(ops, planned, heads, replaced, feed)
        for i in planned:
            op = ops[i]
            if i in older:  # the stored state came from a newer source: kept, and said so
                pending.append((i, older[i]))
                continue
            try:
                head = heads.get((op.rtype, op.target)) if op.target is not None else None
                result = self._decide(op, head, ctx, commit, last_updated, ts)
            except FhirError as e:
                fail(i, e)
                continue
            pending.append((i, result))
            # a conditional write commits only while its search still holds: else two clients
            # that both found nothing both create, and the criteria match two resources forever
            criteria = _criteria(op)
            if criteria and not op.existing:
                assert searched_at is not None  # read for every group with criteria
                commit.guards += self.resolver.guards(op.rtype, criteria, searched_at)
                if op.matched:  # and only while what they matched still is as they found it
                    commit.guards.append(QuietGuard(op.rtype, searched_at, op.target))

        # 5. commit
        self.store.commit(commit)
        for i, result in pending:
            results[i] = result
        return results  # type: ignore[return-value]

    def _resolve_target(self, op: Op, earlier: list[Op], sees: Sees | None = None,
                        foreign: Foreign | None = None) -> None:
        if op.method == "POST":
            if op.if_none_exist:
                found, how_many = self._match(op.rtype, op.if_none_exist, earlier, sees)
                if len(found) > 1:
                    raise precondition_failed(
                        f"If-None-Exist matched {how_many} {op.rtype} resources; "
                        "need at most one"
                    )
                if found:
                    _refuse_foreign(foreign, op.rtype, found[0], "The If-None-Exist criteria match")
                    op.target, op.existing = found[0], True
                    return
            op.target = new_id()
            if op.if_none_exist:
                _meets_own_criteria(op, op.if_none_exist, "If-None-Exist")
                self._refuse_beside_foreign(op, op.if_none_exist, foreign)
        elif op.query is not None:
            found, how_many = self._match(op.rtype, op.query, earlier, sees)
            if len(found) > 1:
                raise precondition_failed(
                    f"The conditional {op.method} matched {how_many} "
                    f"{op.rtype} resources"
                )
            if op.method == "PATCH" and not found:
                raise not_found(f"The conditional PATCH matched no {op.rtype}")
            if op.method == "PUT":
                body_id = op.d.get("id") if op.d else None
                if found and body_id and body_id != found[0]:
                    raise bad_request(
                        f"The body's id {body_id!r} differs from the matched {op.rtype}/{found[0]}",
                        f"{op.rtype}.id",
                    )
                if not found and body_id and (
                        any(e.target == body_id and e.rtype == op.rtype for e in earlier)
                        or self.store.current_ids(op.rtype, [body_id])):
                    # no match with an id that exists: a conflict (R4B), never an update of
                    # the record that happens to carry the id (another person's Patient)
                    raise conflict(f"No {op.rtype} matched the conditional update's criteria, "
                                   f"and {op.rtype}/{body_id} exists: the body's id may only "
                                   "create a new resource")
                op.target = found[0] if found else (body_id or new_id())
                if not found:
                    _meets_own_criteria(op, op.query, "conditional update")
                    self._refuse_beside_foreign(op, op.query, foreign)
            else:
                op.target = found[0] if found else None
                op.existing = not found  # nothing to delete
            op.matched = bool(found)
        else:
            op.target = op.rid

    def _refuse_beside_foreign(self, op: Op, criteria: Query, foreign: Foreign | None) -> None:
        """412 for a conditional write about to create, by criteria naming no key, a resource
        carrying an identifier (``system|value``) that a record of its type another institution
        wrote holds: by such criteria that record may be hidden from the caller (a consent), so
        it matched nothing, and a second record under its key would make the owner's own
        conditional writes by that key match two. Criteria naming a key find the record
        themselves, hidden or not."""
        if foreign is None or op.d is None or any(
                name.partition(":")[0] in ("identifier", "_id") for name, _ in criteria):
            return
        for system, value in res.identifiers(op.d):
            if not system or not value:
                continue
            for rid in self.store.find_by_identifier(op.rtype, system, value):
                if rid != op.target:
                    _refuse_foreign(foreign, op.rtype, rid,
                                    f"The identifier {system}|{value} of the {op.rtype} "
                                    "it creates is held by")

    @staticmethod
    def _apply_patch(op: Op, stored: StoredEvent | None) -> None:
        """The PATCH applied to its target's current version, ``stored`` (the commit conflicts,
        and the patch is applied again, if another write makes a newer one meanwhile)."""
        assert op.patch is not None
        if stored is None:
            raise not_found(f"{op.rtype}/{op.target} is not known")
        version = stored.originator_version
        if stored.topic.endswith("Deleted"):
            raise gone(f"{op.rtype}/{op.target} was deleted (version {version})")
        if op.if_match not in (None, ANY_VERSION) and not _names_version(op.if_match, version):
            raise precondition_failed(f"{op.rtype}/{op.target} is at version {version}, not "
                                      f"{_versions_named(op.if_match)}")
        # exact: the decimals the patch does not touch keep their precision as stored
        op.d, op.warnings = op.patch(jsontext.loads_exact(from_stored(stored).resource))
        op.patched_from = version

    def _match(self, rtype: str, query: Query, earlier: list[Op],
               sees: Sees | None = None) -> tuple[list[str], str]:
        """The ids ``query`` matches, and how many to say they were (``_how_many``)."""
        matched = self.resolver.match(rtype, query)
        capped = len(matched) >= MATCH_LIMIT
        found, veiled = set(matched), False
        if found and sees is not None:
            shown, veiled = sees(rtype, sorted(found), query)
            found = set(shown)
        same = sorted(query)
        for e in earlier:  # writes of this same transaction count too
            if e.rtype != rtype or e.existing:
                continue
            if e.method == "DELETE":  # deleted before this entry runs: no longer a match
                found.discard(e.target)
            elif e.d is not None and e.target is not None and (
                    identifiers_match(query, res.identifiers(e.d), e.target)
                    # an earlier conditional create (or update) of the very same criteria made
                    # what they match, whatever they search by (name:exact=…: both created)
                    or (e.if_none_exist or e.query) and same == sorted(e.if_none_exist or e.query or ())):
                found.add(e.target)
        return sorted(found), _how_many(found, capped, veiled)

    def _rewrite_references(self, ops: list[Op], planned: list[int],
                            undo: list[tuple[Any, Any, str]], sees: Sees | None = None,
                            searched_at: int | None = None,
                            foreign: Foreign | None = None) -> list[QuietGuard]:
        """Rewrite the placeholders and conditional references of the planned writes; returns
        the guards that keep each resource a conditional reference resolved to unchanged until
        the commit (changed meanwhile, it may match no longer: the group is planned again)."""
        mapping = {}
        for i in planned:
            op = ops[i]
            if op.full_url and op.target and op.method in ("POST", "PUT"):
                mapping[op.full_url] = f"{op.rtype}/{op.target}"
        cache: dict[str, str] = {}
        pinned: list[QuietGuard] = []

        def resolve(ref: str, base: str | None = None, entry: bool = False) -> str:
            nonlocal searched_at
            if ref in mapping:
                return mapping[ref]
            if base and _RELATIVE.fullmatch(ref) and base + ref in mapping:
                # a relative reference in an entry with an absolute fullUrl names the entry of
                # that base (R4 bundle.html): Patient/p123 beside fullUrl …/fhir/Patient/p123
                # was kept, pointing at the server's own Patient/p123, another person
                return mapping[base + ref]
            if entry and (ref.startswith("urn:uuid:") or ref.startswith("urn:oid:")):
                # a transaction's placeholder no entry is (a resource written on its own, or a
                # Bundle stored as a resource, keeps its own urns: they are not the request's)
                raise bad_request(f"Reference {ref[:200]!r} names no entry of the Bundle (no "
                                  "fullUrl is it): stored, it would point nowhere")
            rtype, sep, query = ref.partition("?")
            if not sep:
                return ref
            if rtype not in res.RESOURCE_TYPES:
                # a query on anything but a type is no conditional reference, and no location
                # either: stored, it would be a link carrying whatever its writer put after "?"
                raise FhirError(422, "invalid", f"Reference {ref[:200]!r} is neither a "
                                "resource's location nor a conditional reference (Type?criteria)")
            if ref not in cache:
                earlier = [ops[i] for i in planned]
                if searched_at is None:  # the log position, read before the search
                    searched_at = self.store.max_notification_id()
                found, how_many = self._match(rtype, parse_query(query), earlier, sees)
                if len(found) > 1 and any(e.rtype == rtype and e.target in found and not e.existing
                                          and e.method == "POST" and e.if_none_exist is not None
                                          for e in earlier):
                    # this transaction's conditional create found nothing, and another write
                    # committed since made one: planned again, the create finds that one
                    raise ConflictError(f"{rtype} matching {query[:200]!r} was created meanwhile")
                if len(found) != 1:
                    raise precondition_failed(
                        f"Conditional reference {ref!r} matched {how_many} "
                        "resources; need one"
                    )
                _refuse_foreign(foreign, rtype, found[0], f"Conditional reference {ref[:200]!r} matches")
                cache[ref] = f"{rtype}/{found[0]}"
                pinned.append(QuietGuard(rtype, searched_at, found[0]))
            return cache[ref]

        for i in planned:
            d = ops[i].d
            if d is not None:
                base = _base_of(ops[i].full_url)

                def resolve_here(ref: str, base: str | None = base,
                                 entry: bool = ops[i].where is not None) -> str:
                    return resolve(ref, base, entry)
                try:
                    _rewrite(d, ops[i].rtype, resolve_here, mapping, undo)
                except FhirError as e:
                    raise _located(e, ops[i]) from None
        return pinned

    def _keep_retirements(self, ops: list[Op], planned: list[int],
                          heads: dict[tuple[str, str], Head],
                          replaced: dict[int, tuple[int, Any]]) -> None:
        """A Patient a merge retired (``active: false``, linked ``replaced-by`` its survivor, as
        an HL7 v2 A40 or ``$merge`` leave it) stays retired when a feed writes it again: a lab
        that has not caught up with the merge sends the old record number, and its message must
        not undo the merge on one side (the survivor still saying it ``replaces`` it). The write
        keeps the retirement and says so, to a caller that may read the stored record (what
        is kept of it describes it), and a write of the survivor keeps its ``replaces`` links
        (no message of it carries them). Asked of a feed's writes only (a connector's, the
        Kafka intake's): a client writing the Patient through the REST API or ``hub ingest``
        may undo it."""
        wanted: list[int] = []
        retiring: list[int] = []
        for i in planned:
            op = ops[i]
            if op.method != "PUT" or op.rtype != "Patient" or op.d is None:
                continue
            head = heads.get(("Patient", cast(str, op.target)))
            if head is not None and not head.deleted:
                (retiring if _replaced_by(op.d) else wanted).append(i)
        self._read_replaced(ops, wanted + retiring, replaced)
        kept = set(wanted)
        for i in planned:  # the mark of what a message clears is never stored (a tabular
            op = ops[i]    # row marks every resource it writes; only a Patient keeps the unsaid)
            if op.d is not None:
                gone, op.d = cleared.taken(op.d)
                if i in kept:
                    op.d, others = _keep_unsaid(op.d, replaced[i][1] if i in replaced else None,
                                                gone)
                    if others and not op.hidden:
                        op.warnings = [*op.warnings, *others]
        for i in retiring:
            self._keep_content(ops[i], replaced[i][1] if i in replaced else None)
        for i in wanted:
            op = ops[i]
            body = replaced[i][1] if i in replaced else None
            links = _replaced_by(body) if isinstance(body, dict) and body.get("active") is False \
                else []
            assert op.d is not None
            # the records a merge retired into this one: hub state, which no registration or
            # update of the survivor carries (the retired side keeps its ``replaced-by`` alike)
            had = [x for x in (body.get("link") or () if isinstance(body, dict) else ())
                   if isinstance(x, dict) and x.get("type") == "replaces"
                   and isinstance(x.get("other"), dict) and x not in (op.d.get("link") or ())]
            if had:
                op.d = {**op.d, "link": [*(op.d.get("link") or ()), *had]}
            # a later merge naming this record the survivor of the one it was merged into (A
            # into B, then B into A) reverses the first: it does not keep the retirement, or
            # both records would end retired, the patient with no active record at all
            replaces = {x["other"].get("reference") for x in op.d.get("link") or ()
                        if isinstance(x, dict) and x.get("type") == "replaces"
                        and isinstance(x.get("other"), dict)}
            if not links or any(x["other"].get("reference") in replaces for x in links):
                continue
            op.d = {**op.d, "active": False, "link": [*(op.d.get("link") or ()), *links]}
            if op.hidden:
                continue
            op.warnings = [*op.warnings, Issue(
                "business-rule", f"Patient/{op.target} was merged into "
                f"{links[0]['other'].get('reference')}: it stays retired (its record number is "
                "the retired one's; a later message from this feed does not undo the merge)",
                "warning", "Patient.active")]

    def _join_partial(self, ops: list[Op], planned: list[int], heads: dict[tuple[str, str], Head],
                      replaced: dict[int, tuple[int, Any]], feed: bool) -> None:
        """A feed's write that holds some elements in part (``fhir_mapping.partial``: a
        correction resending one result of a report) keeps the stored version's items of them
        beside its own. The mark is never stored; a REST client's write is taken as sent."""
        joining: dict[int, set[str]] = {}
        for i in planned:
            op = ops[i]
            if op.d is not None and op.method == "PUT":
                parts, op.d = partial.taken(op.d)
                head = heads.get((op.rtype, cast(str, op.target)))
                if parts and feed and head is not None and not head.deleted:
                    joining[i] = parts
        if not joining:
            return
        self._read_replaced(ops, list(joining), replaced)
        for i, parts in joining.items():
            stored = replaced[i][1] if i in replaced else None
            d = ops[i].d
            if not isinstance(stored, dict) or d is None:
                continue
            d = ops[i].d = dict(d)  # the resource as sent stays as it was
            for element in parts:
                joined = _joined(d.get(element), stored.get(element))
                if joined:
                    d[element] = joined

    @staticmethod
    def _keep_content(op: Op, body: Any) -> None:
        """A feed's merge retires a record; it does not erase it. An HL7 v2 A40 (or v3 merge)
        names the retired record by its number alone (MRG-1, the prior name), and written as it
        comes it would wipe the record's resident ID, birth date, sex and contacts: the
        evidence that it is the survivor's person, and facts of the record. The write keeps
        what the record held and adds the retirement: inactive, linked ``replaced-by``, with
        the identifiers and names the message brought besides its own; says so to a caller
        that may read the stored record."""
        if not isinstance(body, dict) or body.get("active") is False or op.d is None:
            return
        d = op.d
        kept: dict[str, Any] = {k: v for k, v in body.items() if k not in ("meta", "id")}
        for key in ("identifier", "name"):
            joined = _joined(kept.get(key), d.get(key))
            if joined:
                kept[key] = joined
        if kept.get("identifier"):  # MRG-1's numbers, checked against no birth date when the
            # message's PID has none, answer to the retired record's own
            kept["identifier"], others = _own_identifiers(kept["identifier"], kept.get("birthDate"))
            if not op.hidden:
                op.warnings = [*op.warnings, *others]
        survivors = {x["other"].get("reference") for x in _replaced_by(d)}
        # its own earlier links out: another retirement, and a ``replaces`` of the record now
        # named its survivor (A into B, then B into A)
        links = [x for x in kept.get("link") or () if isinstance(x, dict)
                 and x.get("type") != "replaced-by"
                 and not (x.get("type") == "replaces" and isinstance(x.get("other"), dict)
                          and x["other"].get("reference") in survivors)]
        kept["link"] = links + [x for x in _replaced_by(d) if x not in links]
        kept["active"] = False
        for key in ("managingOrganization", "meta"):
            if key in d:
                kept[key] = d[key]
        op.d = {"resourceType": "Patient", **({"id": d["id"]} if "id" in d else {}), **kept}
        if op.hidden:
            return
        op.warnings = [*op.warnings, Issue(
            "informational", f"Patient/{op.target} is retired into "
            f"{kept['link'][-1]['other'].get('reference')}; what the record held is kept",
            "information", "Patient.active")]

    def _read_replaced(self, ops: list[Op], idx: list[int],
                       replaced: dict[int, tuple[int, Any]]) -> None:
        """(stored version, resource as a dict, or None when unreadable) of what each of the
        ``idx`` writes replaces, into ``replaced``, for those not read yet: one query a type."""
        wanted: dict[str, list[int]] = {}
        for i in idx:
            if i not in replaced:
                wanted.setdefault(ops[i].rtype, []).append(i)
        for rtype, ii in wanted.items():
            stored = self.store.latest_many(rtype, [cast(str, ops[i].target) for i in ii])
            for i in ii:
                found = stored.get(cast(str, ops[i].target))
                if found is None:
                    continue
                try:
                    body = orjson.loads(found[1].partition(b"\n")[2] or found[1])
                except orjson.JSONDecodeError:
                    body = None
                replaced[i] = (found[0], body)

    def _older_than_stored(self, ops: list[Op], planned: list[int],
                           heads: dict[tuple[str, str], Head],
                           replaced: dict[int, tuple[int, Any]]) -> dict[int, Result]:
        """Writes and deletes whose source order (``fhir_mapping.source_order``, stamped by the
        mappers) is older than the stored version's: their results, the stored version left in
        place. A write older than a deletion's order (kept with the deletion) leaves the
        resource deleted. A concurrent newer write makes this commit conflict, and the retry
        reads it here."""
        wanted, revived = [], []
        for i in planned:
            op = ops[i]
            head = heads.get((op.rtype, op.target)) if op.target is not None else None
            if head is None or not _order_of(op) or _names_hidden_version(op) or (
                    op.create_only and (not head.deleted or op.hidden)):
                continue  # (refused whatever is stored: a version named of a hidden record, a
                # create-only write of one that is current)
            if head.deleted:
                if op.method == "PUT":
                    revived.append(i)
            elif op.method == "DELETE" or (op.method == "PUT" and op.d is not None):
                wanted.append(i)  # each has a stored head, so a target
        self._read_replaced(ops, wanted, replaced)
        out: dict[int, Result] = {}
        for i in wanted:
            op = ops[i]
            if i not in replaced or replaced[i][1] is None:
                continue
            version, body = replaced[i]
            why = source_order.older_than(_order_of(op), source_order.order_of(body))
            if why and op.hidden:  # the stored stamp, version and deletion untold: as written
                out[i] = Result(200, op.rtype, op.target, hidden=True)
            elif why:
                out[i] = Result(200, op.rtype, op.target, version, issues=[Issue(
                    "informational", f"{op.rtype}/{op.target} not "
                    f"{'deleted' if op.method == 'DELETE' else 'written'}: {why}; the stored "
                    f"version {version} stays", "information")])
        for i in revived:
            op = ops[i]
            stored = self.store.latest(op.rtype, cast(str, op.target))
            if stored is None or not stored.topic.endswith("Deleted"):
                continue  # deleted and written again since the heads were read: the commit conflicts
            ev = from_stored(stored)
            deletion = source_order.from_extensions([ev.request.get("sourceOrder")])
            why = source_order.older_than(_order_of(op), deletion)
            if why and op.hidden:
                out[i] = Result(200, op.rtype, op.target, hidden=True)
            elif why:  # (the deletion's time too: a version without one answered 500 over REST)
                out[i] = Result(200, op.rtype, op.target, ev.version, ev.last_updated, issues=[
                    Issue("informational", f"{op.rtype}/{op.target} not written: {why} (its "
                          f"deletion, version {stored.originator_version}); it stays deleted",
                          "information")])
        return out

    def _same_but_narrative_spelling(self, op: Op) -> bool:
        """Asked when the content hashes differ: whether the stored version differs only in how a
        narrative's XHTML is spelled, so a resource read as XML and sent back is no new version.
        The stored body is read (and narratives parsed) only for a write that holds one."""
        assert op.d is not None and op.target is not None
        if not res.holds_narrative(op.d):
            return False
        stored = self.store.latest(op.rtype, op.target)
        body = resource_bytes(stored) if stored is not None else b""
        return bool(body) and res.content_hash(op.d, True) == res.content_hash(orjson.loads(body), True)

    def _decide(self, op: Op, head: Head | None, ctx: Context, commit: Commit,
                last_updated: str, ts: int) -> Result:
        if op.existing:  # conditional create matched, or conditional delete matched nothing
            if op.method == "DELETE":
                return Result(200, op.rtype, issues=[Issue("not-found", "Nothing matched; nothing deleted", "information")])
            return Result(200, op.rtype, op.target, found=True)
        # only a conditional delete that matched nothing (existing, above) has no target
        assert op.target is not None
        current = head.version if head else 0
        if op.method == "PATCH" and current != op.patched_from:
            raise ConflictError(f"{op.rtype}/{op.target} changed while it was patched")
        if _names_hidden_version(op):  # right or wrong, a version named would be told apart
            raise precondition_failed(f"If-Match names a version of {op.rtype}/{op.target}, "
                                      "whose versions this caller is not shown")
        if op.if_match == ANY_VERSION:
            if head is None and op.query is not None:  # the target is one the hub would mint
                raise precondition_failed(f"If-Match: * but no {op.rtype} matched the criteria")
            # If-Match: * holds of a current resource only; a hidden one is current to its
            # caller, deleted or not (as its read, 403, answers alike)
            if head is None or (head.deleted and not op.hidden):
                raise precondition_failed(f"If-Match: * but {op.rtype}/{op.target} "
                                          f"{'does not exist' if head is None else 'is deleted'}")
        elif op.if_match is not None and (head is None or head.deleted):
            # a version tag holds of a current version only, as * does: the deletion's version,
            # or a version of what was never written, is none to update (nor to create from)
            raise precondition_failed(
                f"If-Match wanted version {_versions_named(op.if_match)} of "
                f"{op.rtype}/{op.target}, which {'does not exist' if head is None else 'is deleted'}")
        elif op.if_match is not None and not _names_version(op.if_match, current):
            raise precondition_failed(
                f"If-Match wanted version {_versions_named(op.if_match)} of "
                f"{op.rtype}/{op.target}, the current version is {current}")
        # If-None-Match: * holds where no current resource is; a hidden one is current to its
        # caller, deleted or not, as for If-Match: *
        if op.create_only and head is not None and (not head.deleted or op.hidden):
            raise precondition_failed(f"If-None-Match: * but {op.rtype}/{op.target} exists: "
                                      "the write only creates")
        request: dict[str, Any] = {"method": op.method, "url": op.url, "requestId": ctx.request_id}
        if op.method == "DELETE":
            if op.hidden and head is not None and head.deleted:
                return Result(200, op.rtype, op.target, hidden=True)  # as a live one's answers
            if head is None or head.deleted:
                return Result(200, op.rtype, op.target, issues=[
                    Issue("not-found", f"{op.rtype}/{op.target} does not exist or is already deleted",
                          "information")])
            if op.order:  # a later write older than the deletion does not bring it back
                request["sourceOrder"] = op.order.extension()
            event = ResourceEvent(DELETED, op.rtype, op.target, current + 1, last_updated, b"",
                                  ctx.source, request)
            commit.add(event, b"", [], ts)
            if op.hidden:  # its version would tell how many the hidden record had
                return Result(200, op.rtype, op.target, hidden=True, written=True)
            return Result(200, op.rtype, op.target, current + 1, last_updated, written=True)
        assert op.d is not None  # a POST or PUT carries its resource, a PATCH its result
        where = f"{op.where}.resource" if op.where else op.rtype
        try:
            h = res.content_hash(op.d)
        except TypeError:  # orjson cannot write it (a lone surrogate?): it was never validated
            jsontext.refuse_bad_text(op.d, where)
            raise bad_request("The resource cannot be written as JSON", where) from None
        # a caller that may not read the stored content is not told it sent the same: a new version
        if head is not None and not head.deleted and not op.hidden and (
                head.content_hash == h or self._same_but_narrative_spelling(op)):
            # Body and lastUpdated are filled in by complete() only if the caller shows them.
            return Result(200, op.rtype, op.target, head.version, issues=[
                Issue("informational", "Content unchanged; no new version", "information")])
        version = current + 1
        body = res.canonical(op.d, op.target, version, last_updated)
        # the last line before the log, for writes that reached it without hub.resource.validate
        # (a few hundred ns: a body with no backslash holds no escaped control character)
        jsontext.refuse_bad_text(op.d, where, body)
        kind = CREATED if head is None else UPDATED
        commit.add(ResourceEvent(kind, op.rtype, op.target, version, last_updated, body,
                                 ctx.source, request), h, res.identifiers(op.d), ts)
        if op.hidden:  # an update, the deletion, version, time and content untold
            return Result(200, op.rtype, op.target, hidden=True, written=True)
        created = head is None or head.deleted
        return Result(201 if created else 200, op.rtype, op.target, version, last_updated, body,
                      written=True)

    def complete(self, result: Result, ctx: Context | None = None) -> Result:
        """Fill in the current version's body and time where a write left the resource as it was.
        (``ctx``: whom for; the hub answers anyone, the repository hides what they may not read.)"""
        if result.rid is not None and result.body is None and result.status in (200, 201) \
                and not result.hidden:
            stored = self.store.latest(result.rtype, result.rid)
            if stored is not None and not stored.topic.endswith("Deleted"):
                ev = from_stored(stored)
                result.version, result.last_updated, result.body = (
                    ev.version, ev.last_updated, ev.resource)
        return result

    # -- bulk ingest ---------------------------------------------------------------------------

    def ingest(self, items: Iterable[tuple[bytes, Any]], ctx: Context,
               batch_size: int = 500) -> Iterable[Result | FhirError]:
        """Validate and store resources (update by id, or create without one), batch by batch.

        ``items`` yields (raw JSON, parsed dict); yields one result per item, in order.
        """
        batch: list[Op | FhirError] = []
        for raw, d in items:
            try:
                batch.append(self.op_for(raw, d))
            except FhirError as e:
                batch.append(e)
            if len(batch) >= batch_size:
                yield from self._ingest_batch(batch, ctx)
                batch = []
        if batch:
            yield from self._ingest_batch(batch, ctx)

    def op_for(self, raw: bytes, d: Any) -> Op:
        rtype = res.check_type(d)
        res.validate(rtype, raw, d)
        rid = d.get("id")
        if rid:
            return Op("PUT", rtype, rid, d, url=f"{rtype}/{rid}")
        return Op("POST", rtype, d=d, url=rtype)

    def _ingest_batch(self, batch: list[Op | FhirError], ctx: Context) -> list[Result | FhirError]:
        ops = [b for b in batch if isinstance(b, Op)]
        done = dict(zip(map(id, ops), self.execute_batch(ops, ctx)))
        return [done[id(b)] if isinstance(b, Op) else b for b in batch]


def _order_of(op: Op) -> source_order.Order | None:
    """The source order of a write (stamped on its resource) or of a delete (``Op.order``)."""
    if op.method == "DELETE":
        return op.order  # one that is no stamp (falsy) may still carry a malformed version
    return source_order.order_of(op.d) if op.d is not None else None


def _names_version(if_match: IfMatch, version: int) -> bool:
    """Does an If-Match (a version, or a list of them) name ``version``?"""
    return version in if_match if isinstance(if_match, tuple) else if_match == version


def _versions_named(if_match: IfMatch) -> str:
    if isinstance(if_match, tuple):
        return " or ".join(map(str, if_match))
    return str(if_match)


def _names_hidden_version(op: Op) -> bool:
    """Does a write to a record its caller may not read name a version of it (If-Match)?"""
    return op.hidden and op.if_match is not None and op.if_match != ANY_VERSION


def _meets_own_criteria(op: Op, query: Query, what: str) -> None:
    """400 for a conditional write about to create a resource its own criteria do not match
    (as HAPI refuses it): sent again, it would match nothing again and create a second one."""
    unmet = unmet_criterion(query, res.identifiers(op.d) if op.d else [], cast(str, op.target))
    if unmet is None:
        return
    name, value = unmet
    if name == "_id":
        why = (f"the {op.rtype} it creates gets the id {op.target!r}" if op.method == "PUT"
               and op.d and op.d.get("id") else f"the {op.rtype} it creates gets an id "
               "the server assigns")
    else:
        why = f"the {op.rtype} it creates carries no identifier {value!r}"
    raise bad_request(f"The resource does not meet the {what} criteria {name}={value!r}: "
                      f"{why}, so the same request sent again would match nothing and create "
                      f"another", f"{op.rtype}.{name.lstrip('_')}")


def _refuse_foreign(foreign: Foreign | None, rtype: str, rid: str, what: str) -> None:
    """412 when ``rtype/rid`` is a record of patient data another institution wrote (``foreign``):
    resolved to it, a conditional create would drop what the caller sent (its demographics, its
    value) and attach the caller's other entries to a person another institution controls. Not
    a 409, which a connector sends again for ever: refused, its message waits in the
    connector's dead letters for a steward. Neither the record's id nor its content is told."""
    if foreign is not None and foreign(rtype, rid):
        raise precondition_failed(
            f"{what} a record another institution wrote ({rtype}); a conditional write never "
            "takes another institution's record of patient data as this caller's own (a "
            "steward settles which person it is)")


def _criteria(op: Op) -> Query | None:
    """The search a conditional write decided on: If-None-Exist of a create, else its query."""
    return op.if_none_exist if op.method == "POST" else op.query


def _batch_key(op: Op) -> tuple:
    """What two writes of one batch must not share within a commit."""
    if op.rid is not None:
        return (op.rtype, op.rid)
    criteria = op.query if op.query is not None else op.if_none_exist
    if criteria is not None:
        return (op.rtype, "?", tuple(criteria))
    return (op.rtype, id(op))  # a plain create: a fresh id, shares with nothing


# what a feed's Patient keeps of the stored one when its message does not mention it (by the
# element's name, a choice type by its stem: deceased[x])
_KEPT_UNSAID = ("name", "birthDate", "gender", "address", "telecom", "maritalStatus",
                "deceased", "multipleBirth", "communication")


def _keep_unsaid(d: dict, stored: Any, gone: set[str]) -> tuple[dict, list[Issue]]:
    """A feed's message holds what its sender chose to send: a lab's PID may carry the record
    number alone, and the Patient written from it would erase the resident ID, birth date and
    sex an ADT gave. What the stored version has and the write does not mention is kept (its
    identifiers of the systems the write does not state, with the write's), unless the message
    cleared it (HL7's explicit null, ``fhir_mapping.cleared``). Returns the resource kept (a
    copy: ``d`` is left as it was) and the warnings: identifiers not kept because they are
    someone else's."""
    if not isinstance(stored, dict):
        return d, []
    d = dict(d)
    said = {_stem(k) for k in d}
    for k, v in stored.items():
        stem = _stem(k)
        if stem in _KEPT_UNSAID and stem not in said and stem not in gone:
            d[k] = v
    if "identifier" in gone:
        return d, []
    # A system the message states, it states whole: its values replace the stored ones of that
    # system. What a sender leaves out of a message is a system it does not carry (a lab knows
    # the record number, not the resident ID), never one value of a system it does carry: a
    # sender lists every value it holds of a system it sends (PID-3 repeats all of them), so a
    # stored value it no longer lists is one it corrected or retired (the old version keeps
    # it). Joined back, a corrected resident ID would leave the old one, another person's
    # number, keying this record: the master patient index and every search by identifier
    # would take the two people for one.
    stated = {_system_of(x) for x in d.get("identifier") or ()} - {None}
    joined = _joined(d.get("identifier"), [x for x in stored.get("identifier") or ()
                                           if _system_of(x) not in stated])
    joined, others = _own_identifiers(joined, d.get("birthDate"))
    if joined:
        d["identifier"] = joined
    elif others:
        d.pop("identifier", None)
    return d, others


def _system_of(identifier: Any) -> str | None:
    """The system of an identifier that has a value (the resident ID's two spellings as one)."""
    if not isinstance(identifier, dict) or "value" not in identifier:
        return None
    system = identifier.get("system")
    return RESIDENT_ID_SYSTEM if is_resident_id_system(system) else system


def _own_identifiers(identifiers: list, birth_date: Any) -> tuple[list, list[Issue]]:
    """``identifiers`` less the resident ID numbers whose encoded birth date is more than ten
    years from the record's ``birth_date`` (``fhir_mapping.identifiers.someone_elses``, the
    rule every mapper keys by): what a write keeps of the stored version answers to the
    record's birth date as the message's own identifiers do. A warning for each left out,
    never its value."""
    born = birth_date if isinstance(birth_date, str) else None
    own = [x for x in identifiers if _system_of(x) != RESIDENT_ID_SYSTEM
           or not someone_elses(str(x["value"]), born)]
    return own, [Issue(
        "business-rule", "a resident ID number encodes a birth date more than ten years from the "
        "record's birthDate (someone else's number): not stored", "warning", "Patient.identifier")
        for _ in range(len(identifiers) - len(own))]


def _joined(first: Any, then: Any) -> list:
    """The items of ``first``, then those of ``then`` not among them (an identifier counted
    as its system and value: the same number with another ``type`` or period is the same)."""
    def key(x: Any) -> Any:
        return (x.get("system"), x.get("value")) if isinstance(x, dict) and "value" in x else \
            orjson.dumps(x, option=orjson.OPT_SORT_KEYS)
    out = list(first or ())
    seen = {key(x) for x in out}
    for x in then or ():
        if key(x) not in seen:
            seen.add(key(x))
            out.append(x)
    return out


def _stem(key: str) -> str:
    for stem in ("deceased", "multipleBirth"):
        if key.startswith(stem):
            return stem
    return key


def _replaced_by(d: dict) -> list[dict]:
    """The ``replaced-by`` links of a Patient (to the survivor of a merge)."""
    return [x for x in d.get("link") or () if isinstance(x, dict) and x.get("type") == "replaced-by"
            and isinstance(x.get("other"), dict)]


def _located(err: FhirError, op: Op) -> FhirError:
    """Point the issues of ``err`` that say nothing about where at the Bundle entry of ``op``."""
    if op.where and any(i.expression is None for i in err.issues):
        err.issues = [i if i.expression else dataclasses.replace(i, expression=op.where)
                      for i in err.issues]
    return err


_NARRATIVE_LINK = re.compile(r"""(\b(?:href|src)\s*=\s*["'])([^"'<>\s]{1,2048})(["'])""")


# where R4's transaction rules replace a fullUrl: Reference.reference (which may also be a
# conditional reference), elements of type uri, url, oid and uuid, and the narrative's links;
# a string element (Identifier.value, a note's text) that happens to equal a fullUrl is kept
_LINKS: dict[str, frozenset[str]] = {
    t: frozenset(URI_ELEMENTS.get(t, ())) | ({"reference"} if t == "Reference" else frozenset())
    for t in set(URI_ELEMENTS) | {"Reference"}
}
_ELEMENT = {"extension": ["Extension", 1], "id": ["s", 0]}  # what a primitive's ``_name`` holds
_NOTHING: frozenset[str] = frozenset()


def _rewrite(node: dict, tname: str, resolve: Callable[[str], str], full_urls: dict[str, str],
             undo: list[tuple[Any, Any, str]]) -> None:
    """Replace, in place, the links naming an entry of the Bundle in ``node`` (an element of FHIR
    type ``tname``), noting each replaced value in ``undo``: a reference through ``resolve``, a
    uri-typed value only where it is an entry's fullUrl."""
    fields = TYPES.get(tname) or (_ELEMENT if tname == "Element" else {})
    links = _LINKS.get(tname, _NOTHING)
    if tname == "Bundle":  # a Bundle stored as a resource: its urns are its own entries'
        strict = resolve

        def resolve(ref: str) -> str:
            resolved = full_urls.get(ref)
            if resolved is None and ref.startswith(("urn:uuid:", "urn:oid:")):
                return ref
            return strict(ref)
    for k, v in node.items():
        if isinstance(v, str):
            if k in links:
                new = resolve(v) if k == "reference" and tname == "Reference" else full_urls.get(v, v)
                if new != v:
                    undo.append((node, k, v))
                    node[k] = new  # same keys: safe while iterating
            elif k == "div" and tname == "Narrative" and full_urls and ("href" in v or "src" in v):
                # R4: the narrative's <a href> and <img src> naming an entry are replaced too
                # (a link naming no entry is left as written: text, not a reference)
                new = _NARRATIVE_LINK.sub(
                    lambda m: m.group(1) + full_urls.get(m.group(2), m.group(2)) + m.group(3), v)
                if new != v:
                    undo.append((node, k, v))
                    node[k] = new
            continue
        if not isinstance(v, (dict, list)):
            continue
        child = "Element" if k.startswith("_") else str((fields.get(k) or ("",))[0])
        for i, item in enumerate(v) if isinstance(v, list) else ((None, v),):
            if isinstance(item, dict):
                _rewrite(item, item.get("resourceType", "") if child == "Resource" else child,
                         resolve, full_urls, undo)
            elif i is not None and isinstance(item, str) and k in links:  # repeating uri
                new = full_urls.get(item, item)
                if new != item:
                    undo.append((v, i, item))
                    v[i] = new


_RELATIVE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?")


def _base_of(full_url: str | None) -> str | None:
    """The service base of an entry's absolute RESTful fullUrl (``…/fhir/`` of
    ``…/fhir/Patient/p1``), None for a urn or anything else."""
    if not full_url or not full_url.startswith(("http://", "https://")):
        return None
    head, _, rid = full_url.rstrip("/").rpartition("/")
    base, _, rtype = head.rpartition("/")
    return base + "/" if base and rid and rtype in res.RESOURCE_TYPES else None


def _placed(query: Query | None, placed: dict[str, str]) -> Query | None:
    """``query`` with each value that is an entry's placeholder fullUrl replaced by the entry."""
    if not query or not placed:
        return query
    return [(name, placed.get(value, value)) for name, value in query]


def _batch_reference(ref: str) -> str:
    """A reference of a batch entry: refused if it names another entry or is conditional."""
    if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
        raise bad_request(f"Reference {ref[:200]!r} names another entry: entries of a batch are "
                          "independent (send a transaction)")
    if "?" in ref and ref.partition("?")[0] in res.RESOURCE_TYPES:
        raise bad_request(f"Conditional reference {ref[:200]!r}: resolved in a transaction only "
                          "(R4), not in a batch")
    return ref


def _no_connection(e: BaseException) -> bool:
    """Whether a store error is the pool finding no connection in time (nothing was sent)."""
    cause = e.__cause__ or e.__context__
    return type(cause).__name__ == "PoolTimeout" or "couldn't get a connection" in str(e)


def _how_many(found: Collection[str], capped: bool, veiled: bool = False) -> str:
    """How many a conditional interaction matched, as far as its search read: a search stopped
    at its cap says "at least" (the cap is no count); matches some of which are hidden from the
    caller (by a key) are not counted, the count would tell how many it may not see."""
    if veiled and len(found) > 1:
        return "more than one"
    return f"at least {len(found)}" if capped else str(len(found))
