"""Profiles a region enforces, and ``$validate``.

StructureDefinitions (constraint profiles) are stored through the API like any resource; the
``ProfileRegistry`` finds one by its canonical ``url`` in the search index (read-your-writes: one
stored a moment ago counts) and keeps its compiled form until a newer version is stored. A
resource is checked against (``hub.core.profiles``):

- the profiles its ``meta.profile`` declares and the hub holds (one it does not hold is a warning,
  or a 422 under ``Prefer: handling=strict``),
- and, for its type, the profiles ``HUB_REQUIRED_PROFILES`` names
  (``Patient=http://…/cn-patient,Observation=…``), whether it declares them or not.

A type with no required profile and a resource declaring none cost one dict lookup. Required
bindings are checked through the terminology service's value-set expansions.

``$validate`` (type and instance level, ``mode=create|update|delete``, ``profile``) answers an
OperationOutcome and stores nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api import fhirxml, intake
from hub.api.caller import context_of, repository
from hub.api.opparams import parameter_list
from hub.api.responses import check_format, fhir_response, prefer_strict
from hub.core import invariants, jsontext
from hub.core import resource as res
from hub.core.access import SYSTEM, Action
from hub.core.config import Settings
from hub.core.errors import FhirError, Issue, bad_request, operation_outcome, relocate
from hub.core.events import resource_bytes
from hub.core.ingest import Context
from hub.core.profiles import Profile
from hub.repository import APPEND_ONLY, VIEW_TYPES
from projections.search.canonical import version_key

_VALIDATE_MODES = ("create", "update", "delete")


class ProfileRegistry:
    def __init__(self, search: Any, repo: Any, terminology: Any, settings: Settings,
                 terminology_sync: Callable[[], object] | None = None):
        self.search, self.repo, self.terminology = search, repo, terminology
        # brings the terminology model up to the log before a binding is judged: a value set
        # written just before the resource must count (another process may follow the log)
        self.terminology_sync = terminology_sync
        self.required: dict[str, tuple[str, ...]] = {}
        for item in settings.required_profiles:
            rtype, _, url = item.partition("=")
            if rtype.strip() and url.strip():
                self.required.setdefault(rtype.strip(), ())
                self.required[rtype.strip()] += (url.strip(),)
        self._cache: dict[str, tuple[tuple[str, int], Profile]] = {}
        self._lock = threading.Lock()

    def profile(self, url: str) -> Profile | None:
        """The stored profile with this canonical URL, or None: of the version ``url|version``
        names, else the latest version held (by its version, compared as numbers where it is
        one; ties by id)."""
        base, _, version = url.partition("|")
        criteria = [("url", base)] + ([("version", version)] if version else [])
        ids = self.search.match_ids("StructureDefinition", criteria)
        if not ids:
            return None
        # the hub's own read of its configuration: through the repository, as the system
        found = [self.repo.read(Context(actor=SYSTEM), "StructureDefinition", rid)
                 for rid in sorted(ids)[:50]]
        bodies = [orjson.loads(resource_bytes(stored)) for stored in found]
        if version:
            pairs = [(s, b) for s, b in zip(found, bodies) if b.get("version") == version]
        else:
            pairs = list(zip(found, bodies))
        if not pairs:
            return None
        stored, body = max(pairs, key=lambda sb: version_key(sb[1].get("version")))
        key = (str(stored.originator_id), stored.originator_version)
        with self._lock:
            hit = self._cache.get(url)
            if hit is not None and hit[0] == key:
                return hit[1]
        p = Profile(body)
        with self._lock:
            self._cache[url] = (key, p)
        return p

    def binding_ok(self, valueset: str, system: str | None, code: str | None) -> bool | None:
        if self.terminology is None or code is None:
            return None
        if self.terminology_sync is not None:
            self.terminology_sync()
        try:
            codes = self.terminology.expand_codes(valueset, with_aliases=True)
        except Exception:  # noqa: BLE001 - a value set the terminology service does not know
            return None
        return any(c == code and (system is None or s == system) for s, c in codes)

    def applies(self, rtype: str, d: dict) -> bool:
        """Whether a write of ``d`` has anything to check (the write path's one lookup)."""
        return rtype in self.required or bool((d.get("meta") or {}).get("profile"))

    def check(self, rtype: str, d: dict, extra: tuple[str, ...] = (),
              strict: bool = False) -> list[Issue]:
        declared = (d.get("meta") or {}).get("profile") or []
        urls = list(dict.fromkeys([*self.required.get(rtype, ()), *extra,
                                   *(u for u in declared if isinstance(u, str))]))
        issues: list[Issue] = []
        for url in urls:
            p = self.profile(url)
            if p is None:
                required = url in self.required.get(rtype, ()) or url in extra
                issues.append(Issue("not-found", f"The profile {url} is not held by this server",
                                    "error" if required or strict else "warning",
                                    f"{rtype}.meta.profile"))
                continue
            issues += p.check(d, self.binding_ok)
        return issues


def enforce(registry: ProfileRegistry | None, rtype: str, d: dict, strict: bool,
            where: str = "") -> list[Issue]:
    """The warnings of a write that conforms; a 422 naming every error of one that does not."""
    if registry is None or not registry.applies(rtype, d):
        return []
    issues = relocate(registry.check(rtype, d, strict=strict), rtype, where)
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        raise FhirError(422, "processing", errors[0].diagnostics, issues=errors[:20])
    return [i for i in issues if i.severity == "warning"]


# -- $validate --------------------------------------------------------------------------------------


def _registry(request: Request) -> ProfileRegistry | None:
    return getattr(request.app.state, "profiles", None)


async def validate_type(request: Request, rtype: str) -> Response:
    return await _validate(request, rtype, None)


async def validate_instance(request: Request, rtype: str, rid: str) -> Response:
    return await _validate(request, rtype, rid)


def _write_refused(repo: Any, ctx: Context, rtype: str, rid: str | None,
                   mode: str | None) -> list[Issue]:
    """Why the write ``mode`` names would be refused to this caller, as an error issue (the
    refusal a create, update or delete itself meets: the resource may be valid, the write not)."""
    if mode is None:
        return []
    if rtype in VIEW_TYPES:
        return [Issue("not-supported", f"{rtype} is the master patient index's view, rebuilt from "
                      "identity events: it is never written through the API (use $link, $unlink, "
                      "$merge, $unmerge or $not-duplicate)", "error")]
    if rtype in APPEND_ONLY:
        return [Issue("forbidden", f"{rtype} is written by the hub only; it cannot be created, "
                      "changed or deleted through the API", "error")]
    try:
        repo.policy.check(ctx.actor, Action(mode, rtype, rid))
    except FhirError as e:
        if e.status != 403:
            raise
        return [Issue("forbidden", i.diagnostics, "error") for i in e.issues]
    return []


async def _validate(request: Request, rtype: str, rid: str | None) -> Response:
    check_format(request)
    if rtype not in res.RESOURCE_TYPES:
        raise FhirError(404, "not-found", f"Unknown resource type {rtype!r}")
    mode = request.query_params.get("mode")
    profiles = [p for k, p in request.query_params.multi_items() if k == "profile"]
    resource: dict | None = None
    repo, ctx = repository(request), context_of(request)
    # who may validate: whoever may search (and, for create/update, write) the type; asked
    # before the body is read, which takes a large body's turn (hub.api.limits)
    repo.policy.check(ctx.actor, Action("search-type", rtype, None))
    raw = fhirxml.json_body(request, await request.body()) if request.method == "POST" else b""
    if raw.strip():
        body = res.parse_json(raw)
        if not isinstance(body, dict):  # `null` was taken for no body: the stored one validated
            raise bad_request("The $validate body is a resource or a Parameters (a JSON object)")
        if body.get("resourceType") == "Parameters" and rtype != "Parameters":
            for p in parameter_list(body):
                if p.get("name") == "resource":
                    resource = p.get("resource")
                    if not isinstance(resource, dict):
                        raise bad_request("The 'resource' parameter of $validate holds a resource")
                elif p.get("name") == "mode":
                    mode = p.get("valueCode") or p.get("valueString")
                elif p.get("name") == "profile":
                    url = p.get("valueUri") or p.get("valueCanonical") or ""
                    if not isinstance(url, str):
                        raise bad_request("The profile parameter is a canonical URL "
                                          "(valueUri or valueCanonical)")
                    profiles.append(url)
        else:
            resource = body
    if mode is not None and mode not in _VALIDATE_MODES:
        raise bad_request(f"mode must be one of {', '.join(_VALIDATE_MODES)}, not {mode!r}")
    registry = _registry(request)

    def run() -> list[Issue]:
        issues: list[Issue] = _write_refused(repo, ctx, rtype, rid, mode)
        if rid is not None and (mode in ("update", "delete") or resource is None):
            repo.read(ctx, rtype, rid)  # 404/410 when there is none to update or delete
        if mode == "delete":
            if rid is None:
                return [*issues, Issue("required", "mode=delete needs an instance", "error")]
            return issues or [Issue("informational", f"{rtype}/{rid} may be deleted",
                                    "information")]
        target = resource
        if target is None:
            if rid is None:
                raise bad_request("$validate needs a resource (the body, or a Parameters "
                                  "'resource')")
            target = orjson.loads(resource_bytes(repo.read(ctx, rtype, rid)))
        if not isinstance(target, dict) or target.get("resourceType") != rtype:
            return [Issue("invalid", f"The resource to validate must be a {rtype}", "error", rtype)]
        if mode == "update" and rid is not None and target.get("id") != rid:
            issues.append(Issue("invalid", f"The resource's id must be {rid!r} to update it",
                                "error", f"{rtype}.id"))
        if mode == "update" and rid is None and not target.get("id"):
            issues.append(Issue("required", "An update names its resource: give the instance "
                                "($validate on Type/id) or the resource's id", "error",
                                f"{rtype}.id"))
        # what a write by this caller would do: its lenient intake (repairs are warnings), the
        # strictness it asks for (a profile not held is then an error)
        try:
            target, repairs = intake.validate(ctx, request.app.state.settings, rtype,
                                              jsontext.dumps(target, rtype), target)
            issues += repairs
            invariants.check(rtype, target, rtype, issues)
        except FhirError as e:
            issues += e.issues
        if registry is not None and (registry.applies(rtype, target) or profiles):
            issues += registry.check(rtype, target, tuple(p for p in profiles if p),
                                     strict=prefer_strict(request))
        return issues or [Issue("informational", "No issues: the resource is valid",
                                "information")]

    issues = await run_in_threadpool(run)
    return fhir_response(operation_outcome(issues), 200, request=request)
