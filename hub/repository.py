"""The one way in to the resources: every read and write the API, the document and message intake
and the operations make passes through ``Repository``.

It is where the access policy attaches (``hub.core.access.Policy``): each call is checked
against the caller in its ``Context`` before it runs, and every stored resource it hands out is
checked again, so a search page, an ``_include``, a history bundle or a batch entry shows only
what the caller may see. HTTP stays in ``hub.api`` (parsing, bundles, headers); the writing stays
in ``hub.core.ingest.Hub``; search planning and paging stay behind the search backend. This is the
split Medplum draws between its routers and its ``Repository``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import orjson
from eventsourcing.persistence import StoredEvent

from fhir_mapping.documents import is_quality_report
from hub.access.terminology import TerminologyGuard
from hub.core.access import OPEN, Action, Actor, Policy, own_base, patients_in
from hub.core.conditional import IdentifierResolver
from hub.core.errors import FhirError, bad_request, forbidden, not_found
from hub.core.events import institution_of
from hub.core.ingest import SETTLE_US, Authorize, Context, Foreign, Hub, Op, Result, Sees
from hub.core.resource import RESOURCE_TYPES
from hub.core.store import ResourceStore, VersionRow
from projections.search import canonical
from projections.search.backend import INCLUDE_DEPTH, Page, Row, cursor_after
from projections.search.compartment import patient_compartment
from projections.search.plan import local_target
from projections.search.query import Criterion, Has, Include, Query, parse_criteria

T = TypeVar("T")


class AccessLog(Protocol):
    """Where each access to patient data is recorded (``hub.access.audit.AccessAudit``)."""

    def record(self, ctx: Context, action: Action, outcome: str, patients: Sequence[str],
               handed: Sequence[tuple[str, str]], detail: str | None = None) -> None:
        """Record one access: ``outcome`` 0 (success), 4 (refused or not found), 8 (failed);
        ``patients`` the ``Patient/id`` whose data was handed out, ``handed`` what was."""


class AuditRecords(Protocol):
    """Where the hub's AuditEvents are kept, apart from the event store
    (``hub.access.auditlog.AuditLog``); each stored one has ``pos``, ``id`` and ``state`` (a
    header line and the resource JSON, like a stored version)."""

    def get_many(self, rids: Iterable[str]) -> dict[str, Any]: ...

    def rows(self, after: int = 0, page: int = 1000, since_us: int | None = None,
             newest_first: bool = False, limit: int | None = None) -> Iterable[Any]: ...

    def count(self, since_us: int | None = None) -> int: ...

    def page(self, q: Query, count: int, with_total: bool | str) -> Page: ...


AUDIT = "AuditEvent"


@lru_cache(maxsize=1)
def patient_data_types() -> frozenset[str]:
    """Types that hold patient data: those of the Patient compartment, Person, and the two that
    carry whole documents: Binary (a CDA document as sent, its patient in securityContext) and
    Bundle (a document Bundle)."""
    return frozenset(patient_compartment()) | {"Patient", "Person", "Binary", "Bundle"}


@dataclass
class Found:
    """A search's page: matches, what ``_include``/``_revinclude`` added, and the current stored
    state of each (those the caller may see)."""

    page: Page
    included: list[Row]
    bodies: dict[tuple[str, str], tuple[int, bytes]]


class Searcher(Protocol):
    """What answers searches (``hub.api.search.SearchService``)."""

    def parse(self, rtype: str, params: list[tuple[str, str]], strict: bool,
              base: str | None = None) -> Query: ...

    def sync(self) -> bool: ...

    @property
    def backend(self) -> Any: ...


APPEND_ONLY = frozenset({"AuditEvent"})
# The golden Person is the master patient index's view (hub.api.identity), rebuilt from identity
# events and never written through /fhir: a Person stored before such writes were refused is
# served by no generic read, search, include or history, lest a client get a second Person.
VIEW_TYPES = frozenset({"Person"})


def _security_proxy(body: bytes) -> tuple[str, str] | None:
    """The local resource a Binary's ``securityContext`` names (``Type/id``, or absolute on this
    server's base, ``HUB_BASE_URL``, as the compartment test takes references), when it is no
    Patient (one that is counts as the Binary's own reference) nor another Binary. Another
    server's resource is none: the Binary is judged by its own rules."""
    try:
        ref = ((orjson.loads(body) or {}).get("securityContext") or {}).get("reference")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    target = local_target(ref, (own_base(),)) if isinstance(ref, str) else None
    return None if target is None or target[0] in ("Patient", "Binary") else target


def refuse_view(rtype: str | None) -> None:
    """405 for a generic read, search or history of a type the MPI serves as a view."""
    if rtype in VIEW_TYPES:
        raise FhirError(405, "not-supported", f"{rtype} is the master patient index's view, "
                        f"rebuilt from identity events: read it at GET /fhir/{rtype}/{{id}} and "
                        f"search it at GET /fhir/{rtype}?identifier=|patient=|link=|_id=")


def _refuse_unanswered_audit(q: Query) -> None:
    """An AuditEvent search's parameter the audit log does not know (misspelt, another type's,
    or given no value) refused whatever the handling: ignored, it would hand an auditor more of
    the log than asked. An ``_elements`` name that is no element narrows nothing: warned."""
    unknown = [n for n in dict.fromkeys(q.ignored) if not n.startswith("_elements=")]
    if unknown:
        empty = [n for n in unknown if n in q.empty]
        raise FhirError(400, "not-supported", "; ".join(
            ([f"AuditEvent search does not support {', '.join(n for n in unknown if n not in empty)}"]
             if len(empty) < len(unknown) else [])
            + ([f"Search parameter(s) without a value: {', '.join(empty)}"] if empty else [])))


def _views_named(q: Query) -> list[str]:
    """The ``_include``/``_revinclude``/``_has`` of ``q`` that would bring in or test a view."""
    out = [f"_revinclude={i.source}:{i.param}" for i in q.revinclude if i.source in VIEW_TYPES]
    out += [f"_include={i.source}:{i.param}:{i.target}" for i in q.include
            if i.target in VIEW_TYPES]
    stack = [c for g in q.where for c in g]
    while stack:
        c = stack.pop()
        if isinstance(c.value, Has):
            if c.value.rtype in VIEW_TYPES:
                out.append(f"_has:{c.value.rtype}:{c.value.param}")
            stack.append(c.value.criterion)
    return out


# The quality reports (``document-quality`` OperationOutcomes) account for what a sender sent:
# anyone could erase a refusal (DELETE) or file reports of documents never sent.
_HUB_REPORT = ("A quality report is the account of what a sender sent, written by the hub or by "
               "a connector's quality control with the document it checked: it is not written "
               "otherwise, and never patched or deleted")


def _files_reports(actor: Actor) -> bool:
    """Who files quality reports: the hub, and connectors (whose quality control checks a
    document before it travels, its report with it)."""
    return actor.kind == "system" or "connector" in actor.roles


_PATIENT_IN_QUERY = re.compile(r"(?:^|[/=,|])Patient(?:/|%2F)([A-Za-z0-9\-.]{1,64})")


def _aimed_at(query: str | None, action: Action) -> list[str]:
    """The Patients an access names: ``Patient/x`` in its path or query, or the one it reads."""
    found = dict.fromkeys(f"Patient/{m}" for m in _PATIENT_IN_QUERY.findall(query or ""))
    if action.rtype == "Patient" and action.rid:
        found[f"Patient/{action.rid}"] = None
    return list(found)[:100]


def _write_action(op: Op) -> Action:
    if op.method == "POST":
        return Action("create", op.rtype)
    kind = {"PUT": "update", "PATCH": "patch"}.get(op.method, "delete")
    if op.query is not None:
        return Action(f"conditional-{kind}", op.rtype)
    return Action(kind, op.rtype, op.rid)


# A total for a caller from whom some matches may be hidden is counted one match at a time, up to
# this many matches (reading each one's current version); beyond, the Bundle carries no total.
VISIBLE_TOTAL_UP_TO = 2_000
# A page some of whose matches are hidden is filled from the matches after it, reading at most
# this many index rows for it, in reads growing up to FILL_BATCH rows.
FILL_SCAN = 5_000
FILL_BATCH = 500
# Without _total, a caller from whom matches may be hidden gets a total the index's statistics
# would withhold only when its visible matches are counted reading this few (``_count=0``).
CHEAP_VISIBLE = 100


def _depends(c: Criterion) -> bool:
    """A criterion that holds through other resources (``_has``, a chain)."""
    return c.type == "has" or c.chain is not None


def _looked_through(criteria: Iterable[Criterion]) -> list[str]:
    """The types chains and ``_has`` criteria (nested ones too) look through."""
    out: set[str] = set()
    stack = list(criteria)
    while stack:
        c = stack.pop()
        if c.chain is not None:
            out.update(c.chain.rtypes)
            stack.append(c.chain.criterion)
        if isinstance(c.value, Has):
            out.add(c.value.rtype)
            stack.append(c.value.criterion)
    return sorted(out)


def _dependent_groups(q: Query) -> list[list[Criterion]]:
    return [g for g in q.where if any(_depends(c) for c in g)]


class Repository:
    """Reads, searches and writes of resources on behalf of the actor in each ``Context``."""

    def __init__(self, hub: Hub, *, search: Searcher | None = None, policy: Policy = OPEN,
                 audit: AccessLog | None = None, audit_records: AuditRecords | None = None,
                 terminology: TerminologyGuard | None = None):
        """``terminology``: who may write which code systems, naming systems and concept maps
        (``hub.access.terminology``), judged with access control on or off."""
        self._hub = hub
        self._terminology = terminology
        self._search = search
        self.policy = policy
        self.audit = audit
        self._records = audit_records  # AuditEvents are read from here, not from the store
        self._open = policy is OPEN  # nothing to filter: no copies of what is handed out

    def own_current(self, rtype: str, rid: str) -> dict | None:
        """The current version of a record, read by the hub for a write of its own (a document's
        quality report to write again, the entries a new version of a document withdraws), never
        handed to a caller; None when there is none (or it is deleted)."""
        stored = self._hub.store.latest(rtype, rid)
        body = stored.state.partition(b"\n")[2] if stored is not None else b""
        return orjson.loads(body) if body.strip() else None

    def own_current_many(self, rtype: str, rids: Sequence[str]) -> dict[str, bytes]:
        """rid -> the current version's JSON of the records that have one (deleted and unknown
        ones left out), read by the hub for a write of its own (whose records a document's ids
        already name), never handed to a caller."""
        return {rid: state.partition(b"\n")[2]
                for rid, (_, state) in self._hub.store.latest_many(rtype, rids).items()}

    def shows(self, actor: Actor, rtype: str, rid: str, body: bytes) -> bool:
        """Whether a record the hub read for a write of its own (its JSON, from
        ``own_current_many``) may be shown to ``actor``: what the hub says of it to that caller
        (why a write is refused) tells nothing of one it may not read."""
        return self._body_shown(actor, rtype, rid, body)

    def own_ids_by_identifier(self, rtype: str, system: str, value: str) -> list[str]:
        """The ids of the current records with the identifier ``system|value``, read by the hub
        for a write of its own (the stored document a replacement names), never handed to a
        caller."""
        return self._hub.store.find_by_identifier(rtype, system, value)

    def listing_documents(self, ref: str) -> list[str] | None:
        """The ids of the current Compositions whose sections list ``ref`` (``Type/id``), read by
        the hub to decide whether a document may retire an entry it no longer lists, never handed
        to a caller; None when the hub cannot tell (search not running, or its index behind)."""
        return self.own_ids_referring("Composition", "entry", ref)

    def own_ids_referring(self, rtype: str, param: str, ref: str) -> list[str] | None:
        """The ids of the current ``rtype`` records whose reference search parameter ``param``
        names ``ref`` (``Type/id``), read by the hub for a write of its own, never handed to a
        caller; None when the hub cannot tell (search not running, or its index behind)."""
        return self.own_ids_matching(rtype, param, ref)

    def own_ids_matching(self, rtype: str, param: str, value: str) -> list[str] | None:
        """The ids of the current ``rtype`` records matching the search ``param=value`` (a
        reference, a token ``system|code``), read by the hub for a write of its own, never handed
        to a caller; None when the hub cannot tell (search not running, or its index behind)."""
        if self._search is None:
            return None
        q = self._search.parse(rtype, [(param, value)], True)
        if not self._search.sync():
            return None
        page = self._search.backend.page(q, 100, False)
        return [row.rid for row in page.rows]

    def record_own(self, ops: list[Op], ctx: Context) -> None:
        """Writes the hub makes itself about a caller's write (the report of the repairs lenient
        intake made to it): not the caller's records, so not held to its scopes."""
        self._hub.execute(ops, ctx, atomic=True)

    @property
    def store(self) -> ResourceStore:
        """The event store, for the wiring that builds read models and services on it; handlers
        never read resources from it."""
        return self._hub.store

    # -- checks ---------------------------------------------------------------------------------

    def authorize(self, ctx: Context, action: Action) -> None:
        """Check an action answered elsewhere (an operation with its own read model)."""
        self.policy.check(ctx.actor, action)

    def _shown(self, actor: Actor, rtype: str, rid: str, state: bytes) -> bool:
        """Whether a stored state (header line, resource JSON) may be handed out."""
        return self._open or self._body_shown(actor, rtype, rid, state.partition(b"\n")[2])

    def _owner_of(self, rtype: str, rid: str, stored: StoredEvent | None = None) -> str | None:
        """The institution a record is of: the one its earliest version naming an institution
        came from (its creator), whoever changed or deleted it since: a steward's or an
        administrator's edit, which may name another institution or none, hands it to no one.
        The same for what it may change and what a consent may hide from it. None: no write of
        it named one (loaded without an institution). Its first version is read (a lookup by
        key) unless ``stored`` is it; all of them only when it names none."""
        first = stored if stored is not None and stored.originator_version == 1 else \
            self._hub.store.version(rtype, rid, 1)
        if first is None:
            return None
        found = institution_of(first.state)
        if found is not None or (stored is not None and stored.originator_version == 1):
            return found
        for version in reversed(self._hub.store.versions(rtype, rid)):
            found = institution_of(version.state)
            if found is not None:
                return found
        return None

    def _body_shown(self, actor: Actor, rtype: str, rid: str, body: bytes) -> bool:
        """Whether a resource (its JSON) may be handed out. A Binary secured by another resource
        (R4 Binary.securityContext: "the Binary is treated as having the same security as the
        referenced resource") is shown exactly when that resource is, the Binary of a patient's
        DocumentReference to the patient, as the reference's labels and consents allow, and
        hidden as it is (a scope's query on Binary still has to select it); a deleted one is
        judged as the version it deleted, so deleting a document does not lay its content
        open. A Binary whose proxy was never written (or is another server's) is judged by its
        own rules, as one without a proxy."""
        if self._open:
            return True
        proxy = _security_proxy(body) if rtype == "Binary" else None
        behind = self._judged(*proxy, self._hub.store.latest(*proxy)) if proxy else None
        if proxy is None or behind is None:
            return self.policy.visible(actor, rtype, rid, body,
                                       lambda: self._owner_of(rtype, rid))
        return self.policy.scopes_select(actor, rtype, rid, body) and \
            self.policy.visible(actor, *proxy, behind.partition(b"\n")[2],
                                lambda: self._owner_of(*proxy))

    def _judged(self, rtype: str, rid: str, stored: StoredEvent | None) -> bytes | None:
        """The stored state a version is judged by (None: none): a deletion, which holds no
        resource (so names no patient), as the version it deleted."""
        if stored is None:
            return None
        state, version = stored.state, stored.originator_version
        while version > 1 and not state.partition(b"\n")[2].strip():
            version -= 1
            before = self._hub.store.version(rtype, rid, version)
            if before is None:
                break
            state = before.state
        return state

    def _stored_shown(self, actor: Actor, rtype: str, rid: str, stored: StoredEvent) -> bool:
        """Whether a stored version may be handed out, a deletion as the version it deleted:
        a hidden record's deletion tells no more than the hidden record would."""
        if self._open:
            return True
        state = self._judged(rtype, rid, stored) if rtype != AUDIT else stored.state
        return state is not None and self._shown(actor, rtype, rid, state)

    def _version_shown(self, actor: Actor, row: VersionRow) -> bool:
        """Whether a version in a history may be handed out (a deletion as the one it deleted)."""
        return self._stored_shown(actor, row.rtype, row.rid, StoredEvent(
            originator_id=f"{row.rtype}/{row.rid}", originator_version=row.version,
            topic="", state=row.state))

    def _refuse_hidden(self, ctx: Context, rtype: str, rid: str,
                       stored: StoredEvent | None) -> None:
        """403 when ``stored`` (a record's deletion, or its latest version when a version asked
        for is none) is not shown: a hidden record answers alike whatever is asked of it, never
        telling that it was deleted or how many versions it has."""
        if stored is not None and rtype != AUDIT \
                and not self._stored_shown(ctx.actor, rtype, rid, stored):
            raise forbidden(f"{rtype}/{rid} is not shown to this caller")

    def may_hide(self, ctx: Context, rtype: str = "*", *, narrowed: bool = True,
                 across: bool = False) -> bool:
        """May the policy leave out of an answer some of what was found for this caller? Then
        a count of what was found would tell how much is hidden (``Policy.hides_after_search``
        says what the flags mean). A Binary is shown as its security proxy, of any type."""
        return not self._open and (self.policy.hides_after_search(
            ctx.actor, rtype, narrowed=narrowed, across=across) or (
            rtype == "Binary" and self.policy.hides_after_search(ctx.actor, "*", across=True)))

    def shown(self, ctx: Context,
              entries: list[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes]]:
        """The (type, id, resource JSON) entries an operation found that the caller may see."""
        if self._open:
            return entries
        return [e for e in entries if self._body_shown(ctx.actor, *e)]

    def _hand_out(self, ctx: Context, stored: StoredEvent, rtype: str, rid: str) -> StoredEvent:
        if not self._shown(ctx.actor, rtype, rid, stored.state):
            raise forbidden(f"{rtype}/{rid} is not shown to this caller")
        return stored

    def audited(self, ctx: Context, action: Action, run: Callable[[], T],
                 handed: Callable[[T], Iterable[tuple[str, str, bytes]]] | None) -> T:
        """Run an access; record it (and a refused or failed one) when it is to patient data.
        ``handed`` None: only a refusal or failure is recorded (the access is recorded later)."""
        if (self.audit is None or ctx.actor.kind == "system"
                or (action.rtype is not None and action.rtype not in patient_data_types())):
            return run()
        try:
            result = run()
        except FhirError as e:
            # a refused access names the Patients it aimed at (a compartment path, a subject
            # in its query, a Patient read), so an auditor finds it by patient
            self._record(ctx, action, "4" if e.status < 500 else "8",
                         _aimed_at(ctx.query, action), [],
                         e.issues[0].diagnostics if e.issues else None)
            raise
        if handed is None:
            return result
        patients: dict[str, None] = {}
        out: list[tuple[str, str]] = []
        for rtype, rid, state in handed(result):
            out.append((rtype, rid))
            for p in patients_in(rtype, rid, state):
                patients[p] = None
        self._record(ctx, action, "0", list(patients), out)
        return result

    def _record(self, ctx: Context, action: Action, outcome: str, patients: list[str],
                handed: list[tuple[str, str]], detail: str | None = None) -> None:
        assert self.audit is not None
        if ctx.gathered is not None:  # a part of one access: recorded with it (``as_one``)
            ctx.gathered.append((outcome, patients, handed))
        else:
            self.audit.record(ctx, action, outcome, patients, handed, detail)

    def as_one(self, ctx: Context, action: Action, run: Callable[[], T],
               answered: bool = True) -> T:
        """Run an access made of several (a compartment search across its types, each type
        searched as alone) and record it as one: one AuditEvent naming what its parts handed
        out, outcome 0 when it was answered (a part refused, such as a type the caller may not
        search, was left out of the answer), else the refusal or failure that ended it.
        ``answered`` False: only checked, not answered (a transaction's GET before its writes),
        so only a refusal or failure is recorded."""
        if self.audit is None or ctx.actor.kind == "system" or ctx.gathered is not None:
            return run()
        gathered: list[Any] = []
        ctx.gathered = gathered
        try:
            result = run()
        except FhirError as e:
            ctx.gathered = None
            self.audit.record(ctx, action, "4" if e.status < 500 else "8",
                              _aimed_at(ctx.query, action), [],
                              e.issues[0].diagnostics if e.issues else None)
            raise
        finally:
            ctx.gathered = None
        if not answered or not gathered:  # nothing of patient data searched: nothing to record
            return result
        patients: dict[str, None] = {}
        out: dict[tuple[str, str], None] = {}
        for outcome, named, handed in gathered:
            if outcome == "0":
                patients.update(dict.fromkeys(named))
                out.update(dict.fromkeys(handed))
        self.audit.record(ctx, action, "0", list(patients), list(out))
        return result

    # -- reads ----------------------------------------------------------------------------------

    def read(self, ctx: Context, rtype: str, rid: str) -> StoredEvent:
        action = Action("read", rtype, rid)
        refuse_view(rtype)

        def run() -> StoredEvent:
            self.policy.check(ctx.actor, action)
            try:
                stored = self._stored(rtype, rid)
            except FhirError as e:
                if e.status == 410:  # deleted: told only to whoever may see what it deleted
                    self._refuse_hidden(ctx, rtype, rid, self._hub.store.latest(rtype, rid))
                raise
            return self._hand_out(ctx, stored, rtype, rid)
        return self.audited(ctx, action, run, lambda s: [(rtype, rid, s.state)])

    def _stored(self, rtype: str, rid: str) -> StoredEvent:
        if rtype != AUDIT or self._records is None:
            return self._hub.read(rtype, rid)
        found = self._records.get_many([rid]).get(rid)
        if found is None:
            raise not_found(f"{rtype}/{rid} is not known")
        return StoredEvent(originator_id=f"{AUDIT}/{rid}", originator_version=1,
                           topic="hub.resource:Created", state=found.state)

    def vread(self, ctx: Context, rtype: str, rid: str, version: int) -> StoredEvent:
        action = Action("vread", rtype, rid)
        refuse_view(rtype)

        def run() -> StoredEvent:
            self.policy.check(ctx.actor, action)
            if rtype == AUDIT and self._records is not None:
                stored = self._stored(rtype, rid)
                if version != 1:  # an AuditEvent is never changed
                    raise not_found(f"{rtype}/{rid} has no version {version}")
                return self._hand_out(ctx, stored, rtype, rid)
            try:
                stored = self._hub.vread(rtype, rid, version)
            except FhirError as e:
                if e.status == 410:  # a deletion: told only to whoever may see what it deleted
                    self._refuse_hidden(ctx, rtype, rid,
                                        self._hub.store.version(rtype, rid, version))
                elif e.status == 404 and rtype != AUDIT:
                    # no such version: told to whoever is shown the record's history (which
                    # lists its versions), else refused as its read is
                    self._require_history(ctx, rtype, rid)
                raise
            return self._hand_out(ctx, stored, rtype, rid)
        return self.audited(ctx, action, run, lambda s: [(rtype, rid, s.state)])

    def latest(self, ctx: Context, rtype: str, rid: str) -> StoredEvent | None:
        """The current version, a deletion included; None when unknown or not shown."""
        refuse_view(rtype)
        self.policy.check(ctx.actor, Action("read", rtype, rid))
        if rtype == AUDIT and self._records is not None:
            try:
                stored: StoredEvent | None = self._stored(rtype, rid)
            except FhirError:
                stored = None
        else:
            stored = self._hub.store.latest(rtype, rid)
        if stored is None or not self._stored_shown(ctx.actor, rtype, rid, stored):
            return None
        return stored

    def latest_many(self, ctx: Context, rtype: str,
                    rids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """rid -> (version, stored state) of the current versions; deleted, unknown and
        not-shown ones left out."""
        self.policy.check(ctx.actor, Action("read", rtype))
        found = self._latest_many(rtype, rids)
        return {rid: v for rid, v in found.items() if self._shown(ctx.actor, rtype, rid, v[1])}

    def current_bodies(self, ctx: Context,
                       rows: Iterable[Row]) -> dict[tuple[str, str], tuple[int, bytes]]:
        """(type, id) -> (version, stored state) of index rows' resources, one query per type."""
        by_type: dict[str, list[str]] = {}
        for row in rows:
            by_type.setdefault(row.rtype, []).append(row.rid)
        out: dict[tuple[str, str], tuple[int, bytes]] = {}
        for rtype, rids in by_type.items():
            try:  # an included type the caller may not search is left out, not an error
                self.policy.check(ctx.actor, Action("search-type", rtype))
            except FhirError:
                continue
            for rid, v in self._latest_many(rtype, rids).items():
                if self._shown(ctx.actor, rtype, rid, v[1]):
                    out[(rtype, rid)] = v
        return out

    def _latest_many(self, rtype: str, rids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        if rtype == AUDIT and self._records is not None:
            return {rid: (1, r.state) for rid, r in self._records.get_many(rids).items()}
        return self._hub.store.latest_many(rtype, rids)

    def find_by_identifier(self, ctx: Context, rtype: str, system: str | None,
                           value: str | None) -> list[str]:
        self.policy.check(ctx.actor, Action("search-type", rtype))
        return self._hub.store.find_by_identifier(rtype, system, value)

    def history(self, ctx: Context, *, rtype: str | None = None, rid: str | None = None,
                count: int, settle: bool = False, before_nid: int | None = None,
                **window: Any) -> tuple[list[VersionRow], int | None, int | None]:
        """The next ``count`` versions of a history the caller may see (newest first), the
        position to go on from (None: no more) and, with ``settle``, the time (µs) this history
        is complete up to (else None). Hidden versions are passed over, as a search's page is
        filled past hidden matches (``_fill``): reading on for at most ``FILL_SCAN`` versions a
        page, after which it is answered as it is (fewer, none even) with a next one.

        The time is the clock read under the writers' lock before the versions are, less
        SETTLE_US (as a bulk export's transactionTime): a write commits at most SETTLE_US after
        its lastUpdated, so every version stamped before it is committed and in this history,
        and one written later is in a history ``_since`` it. None for the audit log, which keeps
        no such bound."""
        refuse_view(rtype)
        action = Action(_history_kind(rtype, rid), rtype, rid)

        def run() -> tuple[list[VersionRow], int | None, int | None]:
            self.policy.check(ctx.actor, action)
            if rtype is not None and rid is not None:  # a refused or unknown one is recorded
                self._require_history(ctx, rtype, rid)
            settled = None
            audit = rtype == AUDIT and self._records is not None
            if settle and not audit:  # read before the versions: all stamped before it are
                settled = self._hub.store.settled_position()[1] - SETTLE_US  # committed

            def read(before: int | None, limit: int) -> list[VersionRow]:
                if audit:
                    return self._audit_history(rid, before_nid=before, limit=limit, **window)
                return self._hub.store.history(rtype=rtype, rid=rid, before_nid=before,
                                               limit=limit, not_types=tuple(VIEW_TYPES),
                                               **window)
            page, after = self._history_page(ctx, read, before_nid, count)
            return page, after, settled
        return self.audited(ctx, action, run,
                             lambda page: [(r.rtype, r.rid, r.state) for r in page[0]])

    def _history_page(self, ctx: Context, read: Callable[[int | None, int], list[VersionRow]],
                      before: int | None, count: int) -> tuple[list[VersionRow], int | None]:
        """The next ``count`` versions the caller sees, read (``read(before, limit)``, newest
        first) from position ``before`` on, and the position of the last version read when
        more follow (None: the history ends). Walking ``_count=1`` pages, an empty page for
        each hidden version told how many there were and, narrowing ``_since``, when each was
        written; versions are read on past hidden ones, a larger read after the first, up to
        ``FILL_SCAN`` of them."""
        if count <= 0:
            return [], None
        page: list[VersionRow] = []
        scanned, limit = 0, count + 1  # all shown: one read, as many as the page and one more
        while True:
            rows = read(before, limit)
            for row in rows:
                if len(page) == count or scanned >= FILL_SCAN:
                    return page, before  # this row follows: a next page
                scanned += 1
                before = row.nid
                if self._version_shown(ctx.actor, row):
                    page.append(row)
            if len(rows) < limit:
                return page, None
            limit = max(count - len(page), 100) + 1

    def plan_history(self, ctx: Context, *, rtype: str | None = None, rid: str | None = None,
                     at: bool = False) -> None:
        """What ``history`` refuses before it reads (the master patient index's view, a
        forbidden history, ``_at`` on the audit log), checked with nothing read: a refusal is
        recorded, as ``plan`` records a refused search."""
        refuse_view(rtype)
        action = Action(_history_kind(rtype, rid), rtype, rid)

        def run() -> None:
            self.policy.check(ctx.actor, action)
            if rtype is not None and rid is not None:
                self._require_history(ctx, rtype, rid)
            if at and rtype == AUDIT and self._records is not None:
                self._audit_history(rid, at_us=(0, 0), limit=0)  # refuses _at
        self.audited(ctx, action, run, None)

    def deletions(self, versions: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        """Which of these versions (type, id, version) are deletions; for a history page to tell a
        re-create, whose previous version is a deletion, wherever that deletion is listed."""
        return self._hub.store.deletions([v for v in versions if v[0] != AUDIT])

    def count_history(self, ctx: Context, *, rtype: str | None = None, rid: str | None = None,
                      since_us: int | None = None) -> int | None:
        """How many versions the history holds that the caller may see (None: more than
        ``VISIBLE_TOTAL_UP_TO`` to count one by one, some perhaps hidden)."""
        refuse_view(rtype)
        self.policy.check(ctx.actor, Action(_history_kind(rtype, rid), rtype, rid))
        views = tuple(VIEW_TYPES)
        if rtype == AUDIT and self._records is not None:
            return len(self._audit_history(rid, since_us=since_us)) if rid is not None \
                else self._records.count(since_us)
        if not self.may_hide(ctx, rtype or "*", narrowed=False):
            return self._hub.store.count_history(rtype=rtype, rid=rid, since_us=since_us,
                                                 not_types=views)
        seen = shown = 0
        before: int | None = None
        while True:
            rows = self._hub.store.history(rtype=rtype, rid=rid, since_us=since_us,
                                           before_nid=before, limit=500, not_types=views)
            seen += len(rows)
            if seen > VISIBLE_TOTAL_UP_TO:
                return None
            shown += sum(1 for r in rows if self._version_shown(ctx.actor, r))
            if len(rows) < 500:
                return shown
            before = rows[-1].nid

    def _audit_history(self, rid: str | None, *, since_us: int | None = None,
                       at_us: tuple[int, int] | None = None, before_nid: int | None = None,
                       limit: int = 50) -> list[VersionRow]:
        """AuditEvents as history rows: one version each, newest first (by position)."""
        assert self._records is not None
        if at_us is not None:
            raise bad_request("_at is not answered for AuditEvent: each has one version, "
                              "search by date instead")
        if rid is not None:
            found = self._records.get_many([rid]).get(rid)
            stored = [found] if found is not None else []
        else:
            stored = list(self._records.rows(after=before_nid or 0, since_us=since_us,
                                             newest_first=True, limit=limit))
        return [VersionRow(r.pos, "created", AUDIT, r.id, 1, r.state) for r in stored]

    def exists(self, ctx: Context, rtype: str, rid: str) -> bool:
        """Whether ``rtype/rid`` was ever written (a deletion counts), as far as shown."""
        return self.latest(ctx, rtype, rid) is not None

    def require(self, ctx: Context, rtype: str, rid: str) -> None:
        """404 for what was never written, 403 for what this caller is not shown, as a read
        answers (a hidden resource's history said it was unknown)."""
        if self.latest(ctx, rtype, rid) is not None:
            return
        stored = self._hub.store.latest(rtype, rid) if rtype != AUDIT else None
        if stored is not None:
            raise forbidden(f"{rtype}/{rid} is not shown to this caller")
        raise not_found(f"{rtype}/{rid} is not known")

    def _require_history(self, ctx: Context, rtype: str, rid: str) -> None:
        """``require`` for an instance's history, which judges each version as a type's history
        does: a record whose current version only a scope's query leaves out (its consents and
        compartment show it) is answered when the query selects one of its versions; one the
        caller sees no version of is refused as its read is."""
        try:
            self.require(ctx, rtype, rid)
        except FhirError as e:
            if e.status != 403 or not self._hidden_by_query(ctx.actor, rtype, rid) \
                    or not self._any_version_shown(ctx, rtype, rid):
                raise

    def _hidden_by_query(self, actor: Actor, rtype: str, rid: str) -> bool:
        """Is the record's current version (a deletion: the one it deleted) hidden only by what
        a scope's query selects of its content? A Binary judged through its security proxy is
        not: its proxy's current version decides, as for its read."""
        state = self._judged(rtype, rid, self._hub.store.latest(rtype, rid))
        body = state.partition(b"\n")[2] if state is not None else b""
        return state is not None and not (rtype == "Binary" and _security_proxy(body)) \
            and self.policy.hidden_by_query(actor, rtype, rid, body,
                                            lambda: self._owner_of(rtype, rid))

    def _any_version_shown(self, ctx: Context, rtype: str, rid: str) -> bool:
        before: int | None = None
        while True:
            rows = self._hub.store.history(rtype=rtype, rid=rid, before_nid=before, limit=500)
            if any(self._version_shown(ctx.actor, r) for r in rows):
                return True
            if len(rows) < 500:
                return False
            before = rows[-1].nid

    # -- bulk export ----------------------------------------------------------------------------

    def exportable(self, ctx: Context, types: Sequence[str] | None,
                   within: Sequence[str] | None = None) -> list[str]:
        """The types a bulk export by this caller reads: ``types`` (each one the policy lets it
        export, else 403), or without them every type (of ``within``, when given) it may
        export (none: 403). The audit log's AuditEvents and the master patient index's Person
        are no stored resources to export."""
        if types is not None:
            for rtype in types:
                self.policy.check(ctx.actor, Action("operation", rtype, None, "$export"))
            return list(types)
        self.policy.check(ctx.actor, Action("operation", None, None, "$export"))
        out = []
        for rtype in sorted(set(within or RESOURCE_TYPES) - VIEW_TYPES - {AUDIT}):
            try:
                self.policy.check(ctx.actor, Action("operation", rtype, None, "$export"))
            except FhirError:
                continue
            out.append(rtype)
        if not out:
            raise forbidden("No granted scope allows $export of any of the types asked for")
        return out

    def begin_export(self, ctx: Context, types: Sequence[str] | None,
                     within: Sequence[str] | None = None) -> tuple[list[str], int, int]:
        """Check and audit a bulk export's kick-off (one AuditEvent for the export, its
        parameters in its query; a refusal audited as any): the types it reads, the log
        position its snapshot is taken at and the clock (µs) read with it under the writers'
        lock (``ResourceStore.settled_position``)."""
        action = Action("operation", None, None, "$export")

        def run() -> tuple[list[str], int, int]:
            return (self.exportable(ctx, types, within), *self._hub.store.settled_position())
        return self.audited(ctx, action, run, lambda _: [])

    def export_file_judge(self, actor: Actor, rtype: str) -> Callable[[bytes], bool] | None:
        """403 unless the caller's token, now, may export ``rtype``; then which of a finished
        export's lines (resources of ``rtype``) it is handed: each judged as a search result
        for it, now (its scopes' queries, the patients' consents recorded since). A file was
        written under its owner's token at the kick-off: a narrower token of the owner, an
        administrator or a Consent recorded since may leave lines out. None: every line is
        shown (no consents in force, and a ``*`` scope without a query: a Binary is judged as
        the resource securing it, of any type)."""
        self.policy.check(actor, Action("operation", rtype, None, "$export"))
        if self._open or not self.policy.hides_after_search(actor, "*", across=True):
            return None

        def shown(line: bytes) -> bool:
            try:
                rid = orjson.loads(line).get("id")
            except (orjson.JSONDecodeError, AttributeError):
                return False
            return isinstance(rid, str) and self._body_shown(actor, rtype, rid, line)
        return shown

    def export_patient_ids(self, upto: int, after: int, limit: int = 1000
                           ) -> tuple[list[str], int | None]:
        """One page of the ids of the Patients current (not deleted) at log position ``upto``,
        and the position to go on from (None: done): whose data a patient- or group-level
        export holds (each resource is still judged by ``export_page``)."""
        rows = self._hub.store.snapshot("Patient", upto, after, None, limit)
        return ([r.rid for r in rows if r.kind != "deleted"],
                rows[-1].nid if len(rows) == limit else None)

    def export_page(self, ctx: Context, rtype: str, upto: int, after: int,
                    since_us: int | None, limit: int = 1000
                    ) -> tuple[list[tuple[str, bytes]], int | None]:
        """One page of a bulk export's snapshot of ``rtype`` (its current versions at log
        position ``upto``, none deleted, written after ``since_us``): the (id, resource JSON)
        the caller may see, and the position to go on from (None: the type is done)."""
        rows = self._hub.store.snapshot(rtype, upto, after, since_us, limit)
        out = [(r.rid, r.state.partition(b"\n")[2]) for r in rows
               if r.kind != "deleted" and self._shown(ctx.actor, rtype, r.rid, r.state)]
        return out, (rows[-1].nid if len(rows) == limit else None)

    # -- search ---------------------------------------------------------------------------------

    def _searcher(self) -> Searcher:
        if self._search is None:
            raise FhirError(503, "transient", "Search is not running")
        return self._search

    def plan(self, ctx: Context, rtype: str, params: list[tuple[str, str]], strict: bool,
             base: str | None = None) -> Query:
        refuse_view(rtype)
        action = Action("search-type", rtype)

        def run() -> Query:
            self.policy.check(ctx.actor, action)
            q = self._searcher().parse(rtype, params, strict, base)
            if rtype == AUDIT:
                _refuse_unanswered_audit(q)
            views = _views_named(q)
            if views:
                raise bad_request(f"{views[0]}: Person is the master patient index's view, "
                                  "searched at GET /fhir/Person?patient=|link=|identifier=")
            if not self._open:
                self._refuse_looked_through(ctx, q, strict)
                # a scope with a query: only what it selects (paged, counted)
                q.where.extend(self.policy.narrow_search(ctx.actor, rtype) or ())
            return q
        # a search refused (403) or malformed (400) is recorded here, before it runs; one that
        # runs is recorded by ``search``
        return self.audited(ctx, action, run, None)

    def _refuse_looked_through(self, ctx: Context, q: Query, strict: bool) -> None:
        """A chain or ``_has`` through a type the caller may not search holds through nothing
        (``_matches_seen``): said in the answer's outcome, lest it read as "no matches", and
        refused under strict handling. Told from the caller's scopes alone, never from what
        would match."""
        barred = set()
        for t in _looked_through(c for g in q.where for c in g):
            try:
                self.policy.check(ctx.actor, Action("search-type", t))
            except FhirError:
                barred.add(t)
        if not barred:
            return
        text = (f"No granted scope allows searching {', '.join(sorted(barred))}: criteria "
                "chained or _has through it hold through nothing for this caller")
        # strict: refused when a criterion can hold through nothing at all (an untyped chain
        # with one target type the caller may search is answered, with the warning)
        if strict and any(all(barred & set(_looked_through([c])) for c in g) for g in q.where):
            raise forbidden(text)
        q.notes.append(text)

    def page(self, ctx: Context, q: Query, count: int, with_total: bool | str, *,
             sync: bool = True) -> Page:
        """One page of a planned search, after the index caught up with the log
        (read-your-writes; ``sync`` False: a later read of a request that did); the rows'
        resources come from ``current_bodies``."""
        if q.rtype == AUDIT and self._records is not None:
            return self._records.page(q, count, with_total)
        searcher = self._searcher()
        caught_up = searcher.sync() if sync else True
        if canonical.unresolved(q):  # once: the plan is rewritten in place
            q.notes.extend(canonical.resolve(searcher.backend, self._parsed(ctx), q, None))
        page = searcher.backend.page(q, count, with_total)
        page.stale = not caught_up  # being rebuilt, or far behind a bulk load: the answer says so
        return page

    def search(self, ctx: Context, q: Query, count: int, with_total: bool | str,
               base: str | None = None, *, includes: bool = True) -> Found:
        """A planned search's page with its includes and their stored states: one access."""
        action = Action("search-type", q.rtype)

        def run() -> Found:
            page = self.page(ctx, q, count, with_total)
            bodies = None
            if self.may_hide(ctx, q.rtype, across=bool(_dependent_groups(q))):
                cheap = with_total == "if-cheap" and page.total is None
                if page.total is not None:
                    page.total = self._visible_total(ctx, q)
                if count:
                    bodies = self._fill(ctx, q, page, count)
                if cheap:
                    # the index's statistics count what may be hidden (a big record of
                    # someone else's under the criteria): the total is the visible matches
                    # when they are few, as for an empty answer
                    page.total = self._cheap_total(ctx, q, page, count)
            if bodies is None:
                bodies = self.current_bodies(ctx, page.rows)
            included: list[Row] = []
            if q.rtype == AUDIT and (q.include or q.revinclude):
                raise bad_request("_include and _revinclude are not answered for AuditEvent")
            if includes and (q.include or q.revinclude):
                included = self.included(ctx, page.rows, q.include, q.revinclude, base=base,
                                         bodies=bodies, notes=q.notes)
            return Found(page, included, bodies)

        return self.audited(ctx, action, run, lambda f: [
            (rtype, rid, state) for (rtype, rid), (_, state) in f.bodies.items()])

    def _fill(self, ctx: Context, q: Query, page: Page, count: int
              ) -> dict[tuple[str, str], tuple[int, bytes]]:
        """The page filled with what the caller sees, from the matches after it where some of
        its own are hidden (their bodies): a page emptied by hiding, with a ``next`` link after
        it, told how many hidden matches there were, one empty page each. Each read asks for
        as many as are still wanted, so none is passed over; after ``FILL_SCAN`` rows read the
        page is answered as it is."""
        rows, bodies = self._matches_seen(ctx, q, page.rows)
        scanned = len(page.rows)
        # reads grow while matches stay hidden; one that finds more than the page wants ends
        # the page at its last row kept, so no match is passed over (a backend whose rows carry
        # no cursor is read as many as are still wanted)
        keyed = all(r.key is not None for r in page.rows)
        batch = count
        while len(rows) < count and page.next_cursor is not None and scanned < FILL_SCAN:
            wanted = count - len(rows)
            batch = min(max(batch * 2, wanted), FILL_BATCH) if keyed else wanted
            more = self.page(ctx, dataclasses.replace(q, cursor=page.next_cursor), batch, False,
                             sync=False)
            scanned += len(more.rows)
            seen, found = self._matches_seen(ctx, q, more.rows)
            page.next_cursor = more.next_cursor
            if len(seen) > wanted and seen[wanted - 1].key is not None:
                seen = seen[:wanted]
                page.next_cursor = cursor_after(seen[-1])
            elif len(seen) > wanted:  # no cursor to end the page on: all that was read
                keyed = False
            rows += seen
            bodies.update({(r.rtype, r.rid): found[(r.rtype, r.rid)] for r in seen})
        page.rows = rows
        return bodies

    def _cheap_total(self, ctx: Context, q: Query, page: Page, count: int) -> int | None:
        """The visible total without counting: a first page holding every visible match, or
        (``_count=0``) at most ``CHEAP_VISIBLE`` matches read; else none."""
        if q.cursor is not None:
            return None
        if count:
            return len(page.rows) if page.next_cursor is None else None
        return self._visible_total(ctx, q, up_to=CHEAP_VISIBLE)

    def _visible_total(self, ctx: Context, q: Query, up_to: int | None = None) -> int | None:
        """How many of the matches the caller may see: counted one by one, up to
        ``VISIBLE_TOTAL_UP_TO`` matches; beyond, no total (the index's count would tell how
        many are hidden, as HAPI's consent service withholds it too). ``up_to``: a smaller
        bound, past which there is no total and nothing is said."""
        bound = VISIBLE_TOTAL_UP_TO if up_to is None else up_to
        seen = shown = 0
        cursor: str | None = None
        while True:
            page = self.page(ctx, dataclasses.replace(q, cursor=cursor), min(500, bound + 1),
                             False, sync=False)
            seen += len(page.rows)
            if seen > bound:
                if up_to is None:
                    q.notes.append(f"No total: more than {VISIBLE_TOTAL_UP_TO} matches, some "
                                   "of which may be hidden from this caller, are not counted "
                                   "one by one")
                return None
            shown += len(self._matches_seen(ctx, q, page.rows)[0])
            cursor = page.next_cursor
            if cursor is None:
                return shown

    def _matches_seen(self, ctx: Context, q: Query, rows: list[Row]
                      ) -> tuple[list[Row], dict[tuple[str, str], tuple[int, bytes]]]:
        """The rows the caller may see that match ``q`` by what it may see, with their current
        bodies: a ``_has`` or a chained criterion holds only through a resource shown to the
        caller (the index found the row through any resource; one hidden from the caller would
        otherwise be told of by the row it lets through)."""
        bodies = self.current_bodies(ctx, rows)
        groups = _dependent_groups(q)
        kept = [r for r in rows if (r.rtype, r.rid) in bodies
                and all(self._holds(ctx, q.rtype, r.rid, g) for g in groups)]
        return kept, {(r.rtype, r.rid): bodies[(r.rtype, r.rid)] for r in kept}

    def _holds(self, ctx: Context, rtype: str, rid: str, group: list[Criterion]) -> bool:
        """Does one of the OR alternatives hold for ``rtype/rid`` by what the caller sees?"""
        plain = [c for c in group if not _depends(c)]
        if plain and self._any_seen(ctx, Query(rtype, where=[plain, parse_criteria(
                rtype, "_id", rid)]), check=False):
            return True  # the resource's own values: it is shown, so they are
        for c in group:
            if c.type == "has":  # some resource shown refers here and matches
                has: Has = c.value
                inner = Query(has.rtype, where=[
                    parse_criteria(has.rtype, has.param, f"{rtype}/{rid}"), [has.criterion]])
            elif c.chain is not None:  # what this one refers to is shown and matches
                target = c.chain.rtypes[0]
                inner = Query(target, where=[
                    parse_criteria(target, f"_has:{rtype}:{c.param}:_id", rid),
                    [c.chain.criterion]])
            else:
                continue
            if self._any_seen(ctx, inner):
                return True
        return False

    def _any_seen(self, ctx: Context, q: Query, check: bool = True) -> bool:
        """Does ``q`` match something the caller sees (``check``: through what it sees; a
        nested ``_has`` or chain is judged again)? Up to ``VISIBLE_TOTAL_UP_TO`` candidates."""
        cursor: str | None = None
        looked = 0
        while looked <= VISIBLE_TOTAL_UP_TO:
            # asked while judging matches the index just found, caught up for them
            page = self.page(ctx, dataclasses.replace(q, cursor=cursor), 100, False,
                             sync=False)
            looked += len(page.rows)
            if page.rows and (not check or self._matches_seen(ctx, q, page.rows)[0]):
                return True
            cursor = page.next_cursor
            if cursor is None:
                return False
        return False  # too many hidden candidates to look through: not shown to hold

    def included(self, ctx: Context, rows: list[Row], include: list[Include],
                 revinclude: list[Include], base: str | None = None,
                 bodies: dict[tuple[str, str], tuple[int, bytes]] | None = None,
                 notes: list[str] | None = None) -> list[Row]:
        """What ``_include``/``_revinclude`` add to ``rows``, followed only through what the
        caller sees: a hidden match or included resource is no way to what it refers to, or
        to what refers to it. ``bodies``: the rows' current bodies the caller sees (read when
        not given), filled in with what is added. ``notes``: told when ``:iterate`` stopped at
        its depth with more to follow."""
        backend = self._searcher().backend
        # a view (a stored Person) is neither added nor followed: an iterated include goes
        # round by round so that none is on the way
        if self._open and not any(i.iterate for i in (*include, *revinclude)):
            added = [r for r in backend.included(rows, include, revinclude, base=base)
                     if r.rtype not in VIEW_TYPES]
            added += self._canonicals(ctx, rows, include, revinclude, base,
                                      {(r.rtype, r.rid) for r in (*rows, *added)})
            if bodies is not None:
                bodies.update(self.current_bodies(ctx, added))
            return added
        if bodies is None:
            bodies = self.current_bodies(ctx, rows)
        frontier = [r for r in rows if (r.rtype, r.rid) in bodies]
        seen = {(r.rtype, r.rid) for r in rows}
        out: list[Row] = []
        # as the search backends follow ``:iterate``; one round more only to tell whether the
        # depth cut what was still to follow
        for round_ in range(INCLUDE_DEPTH + 1):
            inc = include if round_ == 0 else [i for i in include if i.iterate]
            rev = revinclude if round_ == 0 else [i for i in revinclude if i.iterate]
            if not frontier or not (inc or rev):
                break
            found = [r for r in backend.included(frontier, inc, rev, rounds=1, base=base)
                     if (r.rtype, r.rid) not in seen and r.rtype not in VIEW_TYPES]
            found += self._canonicals(ctx, frontier, inc, rev, base,
                                      seen | {(r.rtype, r.rid) for r in found})
            seen.update((r.rtype, r.rid) for r in found)
            shown = self.current_bodies(ctx, found)
            if round_ == INCLUDE_DEPTH:
                if shown and notes is not None:
                    notes.append(f"_include:iterate and _revinclude:iterate follow at most "
                                 f"{INCLUDE_DEPTH} levels: there was more to include beyond "
                                 "them, left out")
                break
            bodies.update(shown)
            frontier = [r for r in found if (r.rtype, r.rid) in shown]
            out += frontier
        return out

    def _parsed(self, ctx: Context) -> Callable[[list[Row]], dict[tuple[str, str], dict]]:
        """The parsed current resources of index rows, of those the caller sees: what a
        canonical is followed through."""
        def parsed(of: list[Row]) -> dict[tuple[str, str], dict]:
            return {k: orjson.loads(v[1].partition(b"\n")[2])
                    for k, v in self.current_bodies(ctx, of).items()}
        return parsed

    def _canonicals(self, ctx: Context, rows: list[Row], include: list[Include],
                    revinclude: list[Include], base: str | None,
                    seen: set[tuple[str, str]]) -> list[Row]:
        """What the includes add through canonical references (``projections.search.canonical``:
        the index holds a canonical as its text, which the backends' includes do not follow),
        read through what the caller sees; none of ``seen``, each once."""
        if not canonical.involved(include, revinclude, {r.rtype for r in rows}):
            return []
        backend = self._searcher().backend
        parsed = self._parsed(ctx)
        out: list[Row] = []
        for r in (*canonical.forward(backend, parsed, rows, include, base),
                  *canonical.reverse(backend, parsed, rows, revinclude, base)):
            if (r.rtype, r.rid) not in seen and r.rtype not in VIEW_TYPES:
                seen.add((r.rtype, r.rid))
                out.append(r)
        return out

    # -- writes ---------------------------------------------------------------------------------

    def execute(self, ops: list[Op], ctx: Context, *, atomic: bool) -> list[Result | FhirError]:
        """``Hub.execute`` after the policy allowed every write; with ``atomic`` one refusal
        refuses all, else the refused writes answer 403 and the rest go on."""
        refused = self._refusals(ops, ctx)
        try:
            if not refused:
                return self._hub.execute(ops, ctx, atomic=atomic, authorize=self._owner(ctx),
                                         sees=self._sees(ctx), foreign=self._foreign(ctx))
            if atomic:
                raise next(iter(refused.values()))
            return self._merge(ops, refused, lambda allowed: self._hub.execute(
                allowed, ctx, atomic=False, authorize=self._owner(ctx), sees=self._sees(ctx),
                foreign=self._foreign(ctx)))
        finally:
            self.policy.written({op.rtype for op in ops})

    def execute_batch(self, ops: list[Op], ctx: Context) -> list[Result | FhirError]:
        refused = self._refusals(ops, ctx)
        try:
            return self._merge(ops, refused,
                               lambda allowed: self._hub.execute_batch(
                                   allowed, ctx, self._owner(ctx), self._sees(ctx),
                                   self._foreign(ctx)))
        finally:
            self.policy.written({op.rtype for op in ops})

    def complete(self, result: Result, ctx: Context) -> Result:
        """The version a write left, with its content only if the caller may read it: a
        conditional create that matched, or a write older than the stored one, answers with a
        version another may have written."""
        result = self._hub.complete(result)
        if result.body is not None and result.rid is not None and not self._open \
                and not self._body_shown(ctx.actor, result.rtype, result.rid, result.body):
            result.body = None
            if result.found:  # found by a key: where it is, but no version or time (each
                # write of it would be told), as a conditional update of it answers
                result.version = result.last_updated = None
                result.hidden = True
        return result

    def _refusals(self, ops: list[Op], ctx: Context) -> dict[int, FhirError]:
        refused: dict[int, FhirError] = {}
        for i, op in enumerate(ops):
            try:
                if op.rtype in APPEND_ONLY and (ctx.actor.kind != "system"
                                                or self._records is not None):
                    # whatever the policy: a forged or erased audit record would be worse than
                    # none (the hub seals its own into a hash chain, hub.access.chain)
                    raise forbidden(f"{op.rtype} is written by the hub only; it cannot be "
                                    "created, changed or deleted through the API")
                if not op.own and is_quality_report(op.d) and not _files_reports(ctx.actor):
                    raise forbidden(_HUB_REPORT)
                self.policy.check(ctx.actor, _write_action(op))
                if self._terminology is not None and op.d is not None:
                    self._terminology.check(ctx.actor, op.rtype, op.rid or op.target, op.d)
                if not self._open and op.d is not None:
                    self._check_content(ctx, "c" if op.method == "POST" else "u", op.rtype,
                                        op.d, "the resource written")
                    self._check_consent(ctx, op.rtype, op.d)
                if (not self._open or self._terminology is not None) and op.patch is not None:
                    # its result, once the hub has it
                    op.patch = self._checked_patch(ctx, op, op.patch)
            except FhirError as e:
                refused[i] = e
        return refused

    def _checked_patch(self, ctx: Context, op: Op, patch: Callable[[dict], tuple[dict, list]]
                       ) -> Callable[[dict], tuple[dict, list]]:
        """A PATCH whose result, too, must be selected by the scope that lets the caller update
        (a patch may change what the scope's query looks at), and be terminology it may write."""
        rtype = op.rtype

        def run(current: dict) -> tuple[dict, list]:
            d, warnings = patch(current)
            if self._terminology is not None:
                self._terminology.check(ctx.actor, rtype, op.target or op.rid, d)
            if not self._open:
                self._check_content(ctx, "u", rtype, d, "the patched resource")
                self._check_consent(ctx, rtype, d)
            return d, warnings
        return run

    def _check_consent(self, ctx: Context, rtype: str, d: dict) -> None:
        """A Consent written is recorded by the institution it is written under (the policy
        says who may record which)."""
        if rtype != "Consent":
            return
        recorded_by = ctx.source.get("institution")
        why = self.policy.consent_refusal(
            ctx.actor, recorded_by if isinstance(recorded_by, str) and recorded_by else None, d,
            lambda pid: self._owner_of("Patient", pid))
        if why is not None:
            raise forbidden(why)

    def _owner(self, ctx: Context) -> Authorize | None:
        """The check of what each write changes, made by the hub on the resource it reaches
        (named by id or found by criteria, in the attempt that commits): it must be one the
        caller may change."""
        if self._open:
            return None

        def check(op: Op, stored: StoredEvent) -> None:
            rid = op.target
            assert rid is not None  # the hub shows a write once its target is resolved
            state = stored.state
            if not state.partition(b"\n")[2].strip():  # a deletion, judged as the version it
                # deleted: a scope that may not change that one is refused as on the live
                # record, telling no deletion
                state = self._judged(op.rtype, rid, stored) or state
            body = state.partition(b"\n")[2]
            # a write to a record the caller is not shown goes on (a feed keeps its own records
            # current whoever a consent hides them from), its answer telling nothing of it
            op.hidden = not self._stored_shown(ctx.actor, op.rtype, rid, stored)
            # what criteria found is named only to whom it is shown (as a conditional create's
            # 412): its id is no less a disclosure than its content
            what = (f"The conditional {op.method}'s criteria match a {op.rtype} that"
                    if op.rid is None and op.hidden else f"{op.rtype}/{rid}")
            if not self.policy.may_change(ctx.actor, op.rtype, rid,
                                          lambda: self._owner_of(op.rtype, rid, stored)):
                raise forbidden(f"{what} was written by another institution; this "
                                "caller changes only its own institution's records")
            if op.method == "PATCH" and op.hidden:
                raise forbidden(f"{what} is not shown to this caller; a patch reads it")
            if not body.strip():
                return
            d = orjson.loads(body)
            if not op.own and op.rtype == "OperationOutcome" and is_quality_report(d) and (
                    op.method in ("DELETE", "PATCH") or not _files_reports(ctx.actor)):
                # deleted or patched, a refusal went uncounted: a report is replaced only by
                # the report of the same document checked again
                raise forbidden(_HUB_REPORT)
            # what it replaces must be one the caller may change
            self._check_content(ctx, "d" if op.method == "DELETE" else "u", op.rtype, d,
                                f"{op.rtype}/{rid} as stored")
        return check

    def _foreign(self, ctx: Context) -> Foreign | None:
        """Which stored records a conditional write of this caller must not take as its own
        (``Hub.execute``): patient data another institution wrote, for a caller of an
        institution that may not change it. Shared resources (Practitioner, Organization,
        Location, Medication, terminology) resolve across institutions."""
        if self._open or not ctx.actor.institution:
            return None
        data = patient_data_types()

        def foreign(rtype: str, rid: str) -> bool:
            if rtype not in data:
                return False
            stored = self._hub.store.latest(rtype, rid)
            if stored is None:  # written by this same request
                return False
            return not self.policy.may_change(
                ctx.actor, rtype, rid, lambda: self._owner_of(rtype, rid, stored))
        return foreign

    def _sees(self, ctx: Context) -> Sees | None:
        """What of a conditional write's matches the caller sees (``Hub.execute``)."""
        if self._open:
            return None

        def sees(rtype: str, rids: list[str], params: list[tuple[str, str]]
                 ) -> tuple[list[str], bool]:
            if all(n in KEY_PARAMETERS for n, _ in params):
                # a key (an identifier, an id) is one record's: another under the same key
                # would be the duplicate the key forbids, so a hidden match stays a match
                # (its content, version and time are not handed out: ``complete``), told only
                # to who names the key; how many there are is not (a 412 would count them)
                if len(rids) < 2 or not self.may_hide(ctx, rtype, narrowed=False):
                    return rids, False
                found = self._latest_many(rtype, rids)
                return rids, not all(r in found and self._shown(ctx.actor, rtype, r, found[r][1])
                                     for r in rids)
            # a _has or a chain holds only through what the caller sees, as in a search
            groups = _dependent_groups(self._searcher().parse(rtype, list(params), False)) \
                if any(n.startswith("_has:") or "." in n for n, _ in params) else []
            if not self.may_hide(ctx, rtype, narrowed=False, across=bool(groups)):
                return rids, False
            found = self._latest_many(rtype, rids)
            return [r for r in rids if r in found and self._shown(ctx.actor, rtype, r, found[r][1])
                    and all(self._holds(ctx, rtype, r, g) for g in groups)], False
        return sees

    def _check_content(self, ctx: Context, letter: str, rtype: str, d: dict, what: str) -> None:
        """A scope granting ``letter`` on ``rtype`` must select ``d`` (its query, if any)."""
        if not self.policy.admits(ctx.actor, letter, rtype, d):
            raise forbidden(f"No granted scope allows {letter!r} on {what}: the scopes that "
                            f"grant it on {rtype} have a query it does not match")

    @staticmethod
    def _merge(ops: list[Op], refused: dict[int, FhirError],
               run: Any) -> list[Result | FhirError]:
        allowed = [op for i, op in enumerate(ops) if i not in refused]
        done = iter(run(allowed) if allowed else [])
        return [refused[i] if i in refused else next(done) for i in range(len(ops))]


KEY_PARAMETERS = IdentifierResolver.supported  # criteria that name one record by its key


def _history_kind(rtype: str | None, rid: str | None) -> str:
    if rid is not None:
        return "history-instance"
    return "history-type" if rtype is not None else "history-system"
