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

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from eventsourcing.persistence import StoredEvent

from hub.core.access import OPEN, Action, Actor, Policy
from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub, Op, Result
from hub.core.store import ResourceStore, VersionRow
from projections.search.backend import Page, Row
from projections.search.query import Include, Query


class Searcher(Protocol):
    """What answers searches (``hub.api.search.SearchService``)."""

    def parse(self, rtype: str, params: list[tuple[str, str]], strict: bool,
              base: str | None = None) -> Query: ...

    def sync(self) -> bool: ...

    @property
    def backend(self) -> Any: ...


def forbidden(diagnostics: str) -> FhirError:
    return FhirError(403, "forbidden", diagnostics)


def _write_action(op: Op) -> Action:
    if op.method == "POST":
        return Action("create", op.rtype)
    kind = "update" if op.method == "PUT" else "delete"
    if op.query is not None:
        return Action(f"conditional-{kind}", op.rtype)
    return Action(kind, op.rtype, op.rid)


class Repository:
    """Reads, searches and writes of resources on behalf of the actor in each ``Context``."""

    def __init__(self, hub: Hub, *, search: Searcher | None = None, policy: Policy = OPEN):
        self._hub = hub
        self._search = search
        self.policy = policy
        self._open = policy is OPEN  # nothing to filter: no copies of what is handed out

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
        return self._open or self.policy.visible(actor, rtype, rid, state.partition(b"\n")[2])

    def shown(self, ctx: Context,
              entries: list[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes]]:
        """The (type, id, resource JSON) entries an operation found that the caller may see."""
        if self._open:
            return entries
        return [e for e in entries if self.policy.visible(ctx.actor, *e)]

    def _hand_out(self, ctx: Context, stored: StoredEvent, rtype: str, rid: str) -> StoredEvent:
        if not self._shown(ctx.actor, rtype, rid, stored.state):
            raise forbidden(f"{rtype}/{rid} is not shown to this caller")
        return stored

    # -- reads ----------------------------------------------------------------------------------

    def read(self, ctx: Context, rtype: str, rid: str) -> StoredEvent:
        self.policy.check(ctx.actor, Action("read", rtype, rid))
        return self._hand_out(ctx, self._hub.read(rtype, rid), rtype, rid)

    def vread(self, ctx: Context, rtype: str, rid: str, version: int) -> StoredEvent:
        self.policy.check(ctx.actor, Action("vread", rtype, rid))
        return self._hand_out(ctx, self._hub.vread(rtype, rid, version), rtype, rid)

    def latest(self, ctx: Context, rtype: str, rid: str) -> StoredEvent | None:
        """The current version, a deletion included; None when unknown or not shown."""
        self.policy.check(ctx.actor, Action("read", rtype, rid))
        stored = self._hub.store.latest(rtype, rid)
        if stored is None or not self._shown(ctx.actor, rtype, rid, stored.state):
            return None
        return stored

    def latest_many(self, ctx: Context, rtype: str,
                    rids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """rid -> (version, stored state) of the current versions; deleted, unknown and
        not-shown ones left out."""
        self.policy.check(ctx.actor, Action("read", rtype))
        found = self._hub.store.latest_many(rtype, rids)
        return {rid: v for rid, v in found.items() if self._shown(ctx.actor, rtype, rid, v[1])}

    def current_bodies(self, ctx: Context,
                       rows: Iterable[Row]) -> dict[tuple[str, str], tuple[int, bytes]]:
        """(type, id) -> (version, stored state) of index rows' resources, one query per type."""
        by_type: dict[str, list[str]] = {}
        for row in rows:
            by_type.setdefault(row.rtype, []).append(row.rid)
        return {(rtype, rid): found for rtype, rids in by_type.items()
                for rid, found in self.latest_many(ctx, rtype, rids).items()}

    def find_by_identifier(self, ctx: Context, rtype: str, system: str | None,
                           value: str) -> list[str]:
        self.policy.check(ctx.actor, Action("search-type", rtype))
        return self._hub.store.find_by_identifier(rtype, system, value)

    def history(self, ctx: Context, *, rtype: str | None = None, rid: str | None = None,
                **window: Any) -> list[VersionRow]:
        self.policy.check(ctx.actor, Action(_history_kind(rtype, rid), rtype, rid))
        rows = self._hub.store.history(rtype=rtype, rid=rid, **window)
        return [r for r in rows if self._shown(ctx.actor, r.rtype, r.rid, r.state)]

    def count_history(self, ctx: Context, *, rtype: str | None = None, rid: str | None = None,
                      since_us: int | None = None) -> int:
        self.policy.check(ctx.actor, Action(_history_kind(rtype, rid), rtype, rid))
        return self._hub.store.count_history(rtype=rtype, rid=rid, since_us=since_us)

    def exists(self, ctx: Context, rtype: str, rid: str) -> bool:
        """Whether ``rtype/rid`` was ever written (a deletion counts), as far as shown."""
        return self.latest(ctx, rtype, rid) is not None

    # -- search ---------------------------------------------------------------------------------

    def _searcher(self) -> Searcher:
        if self._search is None:
            raise FhirError(503, "transient", "Search is not running")
        return self._search

    def plan(self, ctx: Context, rtype: str, params: list[tuple[str, str]], strict: bool,
             base: str | None = None) -> Query:
        self.policy.check(ctx.actor, Action("search-type", rtype))
        return self._searcher().parse(rtype, params, strict, base)

    def page(self, ctx: Context, q: Query, count: int, with_total: bool | str) -> Page:
        """One page of a planned search, after the index caught up with the log
        (read-your-writes); the rows' resources come from ``current_bodies``."""
        searcher = self._searcher()
        searcher.sync()
        return searcher.backend.page(q, count, with_total)

    def included(self, ctx: Context, rows: list[Row], include: list[Include],
                 revinclude: list[Include], base: str | None = None) -> list[Row]:
        # what is added is handed out through ``current_bodies``, checked there
        return list(self._searcher().backend.included(rows, include, revinclude, base=base))

    # -- writes ---------------------------------------------------------------------------------

    def execute(self, ops: list[Op], ctx: Context, *, atomic: bool) -> list[Result | FhirError]:
        """``Hub.execute`` after the policy allowed every write; with ``atomic`` one refusal
        refuses all, else the refused writes answer 403 and the rest go on."""
        refused = self._refusals(ops, ctx)
        if not refused:
            return self._hub.execute(ops, ctx, atomic=atomic)
        if atomic:
            raise next(iter(refused.values()))
        return self._merge(ops, refused, lambda allowed: self._hub.execute(allowed, ctx,
                                                                           atomic=False))

    def execute_batch(self, ops: list[Op], ctx: Context) -> list[Result | FhirError]:
        refused = self._refusals(ops, ctx)
        return self._merge(ops, refused, lambda allowed: self._hub.execute_batch(allowed, ctx))

    def complete(self, result: Result) -> Result:
        return self._hub.complete(result)

    def _refusals(self, ops: list[Op], ctx: Context) -> dict[int, FhirError]:
        refused: dict[int, FhirError] = {}
        for i, op in enumerate(ops):
            try:
                self.policy.check(ctx.actor, _write_action(op))
            except FhirError as e:
                refused[i] = e
        return refused

    @staticmethod
    def _merge(ops: list[Op], refused: dict[int, FhirError],
               run: Any) -> list[Result | FhirError]:
        allowed = [op for i, op in enumerate(ops) if i not in refused]
        done = iter(run(allowed) if allowed else [])
        return [refused[i] if i in refused else next(done) for i in range(len(ops))]


def _history_kind(rtype: str | None, rid: str | None) -> str:
    if rid is not None:
        return "history-instance"
    return "history-type" if rtype is not None else "history-system"
