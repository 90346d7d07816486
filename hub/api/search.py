"""Type and compartment search through the search-index projection, as searchset Bundles.

``SearchService`` owns the index, the runner that follows the log, and the SQL planner. Before it
answers, it brings the index up to the event store's position at request time (read-your-writes,
bounded). Unknown parameters are ignored with a warning in the bundle, or refused with
``Prefer: handling=strict``, as the FHIR search page asks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from hub.api.elements import (
    ALWAYS,
    below_top,
    mandatory_elements,
    selected_keys,
    summary_elements,
    unknown_elements,
    without_attachment_data,
)
from hub.api.paging import link
from hub.core import jsontext
from hub.core.config import Settings
from hub.core.errors import FhirError, Issue, bad_request
from hub.core.ingest import Context
from hub.core.pagetokens import page_tokens
from hub.core.store import ResourceStore
from hub.repository import Repository
from projections.runner import Runner
from projections.search import canonical
from projections.search.backend import SearchBackend
from projections.search.compartment import compartment_group
from projections.search.query import (
    TERMINOLOGY_MODIFIERS,
    Query,
    parse,
)
from projections.search.sqlite_index import SQLiteSearchIndex
from projections.search.sqlite_query import SQLiteSearch

RYW_TIMEOUT = 5.0


class SearchService:
    """Searches answered by a ``SearchBackend`` (``backend``, which
    ``projections.search.backends.open_backend`` builds; by default the SQLite index's). ``terminology``: the
    TerminologyService that answers :in, :not-in, :below, :above, ``terminology_sync`` its
    read-your-writes."""

    def __init__(self, store: ResourceStore, index: SQLiteSearchIndex, runner: Runner,
                 settings: Settings, *, backend: SearchBackend | None = None,
                 terminology=None, terminology_sync: Callable[[], object] | None = None,
                 backend_runner: Runner | None = None):
        self.store, self.index, self.runner, self.settings = store, index, runner, settings
        self.backend: SearchBackend = backend if backend is not None else SQLiteSearch(index)
        # the SQLite planner: the backend itself when that is the SQLite index's
        self._sqlite = self.backend if isinstance(self.backend, SQLiteSearch) \
            else SQLiteSearch(index)
        # the runner that feeds ``backend`` when that is not the SQLite index (Elasticsearch)
        self.backend_runner = backend_runner
        self.terminology = terminology
        self.terminology_sync = terminology_sync

    @property
    def sql(self) -> SQLiteSearch:
        """The SQLite index's planner, where SQLite-specific code reads the index tables itself
        (``hub.mpi.everything``) or tunes it (tests), whichever backend answers searches."""
        return self._sqlite

    def sync(self, timeout: float | None = None) -> bool:
        """Bring the index (and the backend's, if another) up to the log's end as of now
        (read-your-writes); False after ``timeout`` (``RYW_TIMEOUT``) seconds."""
        timeout = RYW_TIMEOUT if timeout is None else timeout
        ok = self.runner.sync(timeout)
        if self.backend_runner is not None:
            ok = self.backend_runner.sync(timeout) and ok
        return ok

    def parse(self, rtype: str, params: list[tuple[str, str]], strict: bool,
              base: str | None = None) -> Query:
        """The plan of a search; ``base`` (the request's base URL) makes absolute references to
        this server local (``{base}/Patient/1`` is ``Patient/1``)."""
        if self.terminology_sync is not None and any(
                name.rpartition(":")[2] in TERMINOLOGY_MODIFIERS for name, _ in params):
            self.terminology_sync()  # a value set or code system just written counts
        q = parse(rtype, params, self.settings.max_count, self.settings.default_count,
                  base=base or self.settings.base_url, terminology=self.terminology)
        if q.elements:
            check_elements(q, rtype, q.elements)
        if q.ignored and strict:
            empty = sorted(set(q.empty))
            other = sorted(set(q.ignored) - set(empty))
            raise FhirError(400, "not-supported", "; ".join(
                ([f"Unsupported search parameter(s): {', '.join(other)}"] if other else [])
                + ([f"Search parameter(s) without a value: {', '.join(empty)}"] if empty
                   else [])))
        return q

    def match_ids(self, rtype: str, params: list[tuple[str, str]],
                  base: str | None = None, limit: int = 1000) -> list[str]:
        """Ids matching a query (conditional interactions), at most ``limit``: every parameter
        must be understood."""
        q = self.parse(rtype, params, strict=True, base=base)
        if not q.where:
            raise bad_request("A conditional operation needs search criteria")
        if canonical.unresolved(q):  # followed through what a caller sees, which is not known here
            raise bad_request("A conditional operation's criteria cannot chain or _has through "
                              "a canonical reference; search its target by url instead")
        if not self.sync():  # decided on a lagging index, a conditional create would duplicate
            raise FhirError(503, "transient", "The search index lags the store (it is being "
                            "rebuilt, or is behind a bulk load); retry the conditional request")
        return self.backend.match_ids(q, limit)


# -- _summary and _elements -----------------------------------------------------------------------

def subset_filter(rtype: str, summary: str | None, elements: list[str] | None):
    """What a search's _summary or _elements keeps of each ``rtype`` resource (None: all)."""
    if summary == "true":
        return _Summary(rtype)
    if summary == "text":
        return (mandatory_elements(rtype) | {"text"}).__contains__
    if summary == "data":
        return lambda k: k != "text"
    if elements:
        return (mandatory_elements(rtype) | selected_keys(rtype, elements)).__contains__
    return None


class _Summary:
    """_summary=true's filter of ``rtype``'s top-level elements; ``subset`` leaves out the data
    of the Attachments in those it keeps."""

    def __init__(self, rtype: str) -> None:
        self.rtype = rtype
        self.keys = summary_elements(rtype)

    def __call__(self, key: str) -> bool:
        return key in self.keys


def check_elements(q: Query, rtype: str, elements: list[str]) -> None:
    """A search's _elements names that are no element of ``rtype``: ignored as an unsupported
    parameter is (a warning, or 400 when strict); those below the top level keep their top
    element, with a note saying so."""
    q.ignored += [f"_elements={name}" for name in unknown_elements(rtype, elements)]
    deep = below_top(rtype, elements)
    if deep:
        q.notes.append(f"_elements={','.join(deep)}: _elements selects top-level elements; "
                       "the whole of each named one is kept")


def read_subset(rtype: str, params: Mapping[str, str], strict: bool = False):
    """What a read's (or vread's) ``_summary`` or ``_elements`` keeps (R4 lets a read ask, as a
    search does; None: all): the mandatory elements and ``meta`` with the SUBSETTED tag. An
    _elements name that is no element of ``rtype`` is left out, or a 400 when ``strict``."""
    summary = params.get("_summary")
    if summary is not None and summary not in ("true", "text", "data", "false"):
        raise bad_request(f"_summary={summary[:20]!r}: true, text, data or false on a read")
    raw = params.get("_elements")
    elements = [e.strip() for e in raw.split(",") if e.strip()] if raw else None
    unknown = unknown_elements(rtype, elements) if elements and strict else None
    if unknown:
        raise FhirError(400, "not-supported", f"_elements: no element {', '.join(unknown)} "
                        f"in {rtype}")
    return subset_filter(rtype, None if summary == "false" else summary, elements)


def subset(raw: bytes, keep) -> dict:
    d = jsontext.loads_exact(raw)
    out = {k: v for k, v in d.items() if k in ALWAYS or keep(k)}
    if isinstance(keep, _Summary) and b'"data"' in raw:
        out = without_attachment_data(out, keep.rtype)
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}]
    out["meta"] = meta
    return out


# -- the bundle -----------------------------------------------------------------------------------

def plan_search(repo: Repository, ctx: Context, rtype: str, params: list[tuple[str, str]],
                base: str, settings: Settings, strict: bool) -> Query:
    """The caller's search planned (its page cursor unsealed): a malformed or forbidden search
    fails here, before anything is read."""
    tokens = page_tokens(settings.data_dir)
    return repo.plan(ctx, rtype, [(k, tokens.open(v) if k == "_cursor" else v)
                                  for k, v in params], strict, base)


def check_search(repo: Repository, ctx: Context, rtype: str, params: list[tuple[str, str]],
                 base: str, settings: Settings, strict: bool,
                 compartment: tuple[str, str] | None = None) -> None:
    """Whether ``search_bundle`` would fail, nothing read (a transaction's GET checked before
    its writes): the search planned, within its compartment."""
    plan_search(repo, ctx, rtype, params, base, settings, strict)
    if compartment is not None:
        compartment_group(*compartment, rtype, base)


def search_bundle(repo: Repository, ctx: Context, rtype: str, params: list[tuple[str, str]],
                  base: str, settings: Settings, strict: bool,
                  compartment: tuple[str, str] | None = None) -> dict:
    tokens = page_tokens(settings.data_dir)
    q = plan_search(repo, ctx, rtype, params, base, settings, strict)
    if compartment is not None:
        q.where.append(compartment_group(*compartment, rtype, base))
    count = q.count if q.count is not None else settings.default_count
    if q.summary == "count":
        count = 0
    if q.summary == "count":
        want_total: bool | str = "estimate" if q.total == "estimate" else "accurate"
    else:
        # Without _total, Bundle.total is given where counting is cheap (some criterion has at most
        # ~1,000 index rows, or none at all) and left out otherwise, so a broad search does not pay
        # for counting every match; _total=accurate always counts.
        want_total = "if-cheap" if q.total is None else q.total
    found = repo.search(ctx, q, count, False if want_total == "none" else want_total, base)
    page = found.page
    keep = subset_filter(rtype, q.summary, q.elements)

    entries = []

    seen: set[tuple[str, str]] = set()

    def add(row, mode: str, bodies: dict) -> None:
        found = bodies.get((row.rtype, row.rid))
        # deleted since the index row was read; or listed twice (while the index is rebuilt, an
        # updated resource has a row per version until the rebuild ends)
        if found is None or (row.rtype, row.rid) in seen:
            return
        seen.add((row.rtype, row.rid))
        raw = found[1].partition(b"\n")[2]  # the stored state: header line, resource JSON
        body: Any
        if mode == "match" and keep is not None:
            body = subset(raw, keep)
        elif mode == "include" and q.summary in ("true", "text", "data"):
            body = subset(raw, subset_filter(row.rtype, q.summary, None))
        else:
            body = orjson.Fragment(raw)
        entries.append({"fullUrl": f"{base}/{row.rtype}/{row.rid}", "resource": body,
                        "search": {"mode": mode}})

    for row in found.page.rows:
        add(row, "match", found.bodies)
    for row in found.included:
        add(row, "include", found.bodies)
    # a parameter given no value is one the server knows: ignored, said as such
    empty = sorted(set(q.empty))
    other = sorted(set(q.ignored) - set(empty))
    warnings = [Issue("not-supported", "Ignored unsupported search parameter(s): "
                      f"{', '.join(other)}", "warning")] if other else []
    warnings += [Issue("informational", "Ignored search parameter(s) without a value: "
                       f"{', '.join(empty)}", "warning")] if empty else []
    warnings += [Issue("informational", note, "warning") for note in q.notes]
    if page.stale:
        warnings.append(Issue("incomplete", "The search index lags the store (it is being "
                              "rebuilt, or is behind a bulk load): resources written lately may "
                              "be missing from these matches and the total; retry shortly",
                              "warning"))
    if warnings:
        entries.append({"resource": {"resourceType": "OperationOutcome",
                                     "issue": [w.to_json() for w in warnings]},
                        "search": {"mode": "outcome"}})
    path = f"{base}/{compartment[0]}/{compartment[1]}/{rtype}" if compartment else f"{base}/{rtype}"
    links = [{"relation": "self", "url": link(path, params)}]
    if page.next_cursor:
        links.append({"relation": "next",
                      "url": link(path, params, _cursor=tokens.seal(page.next_cursor))})
    if page.prev_cursor:
        links.append({"relation": "previous",
                      "url": link(path, params, _cursor=tokens.seal(page.prev_cursor))})
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        out["total"] = page.total
    out["link"] = links
    if entries:
        out["entry"] = entries
    return out
