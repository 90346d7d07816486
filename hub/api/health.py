"""Liveness and readiness for load balancers and orchestrators; open to any caller (they carry no
personal data).

- ``GET /health``: the process answers (liveness).
- ``GET /ready``: the event store answers within a few seconds and every read model's follower
  is alive and not failing (in this process, or in the follower process of ``hub serve``, which
  reports its failures in ``followers.json``); each one's lag (notifications not yet applied)
  is listed; a read model whose position is beyond the log's end, or that was built from
  another event log (``Runner.problem``), fails. 503 when not ready, so a balancer stops
  sending requests to a process whose database is gone or whose own read models fail. A read
  model in a shared engine failing (Elasticsearch away), or one whose rows need a rebuild
  (``stale``: built under another ``HUB_TIMEZONE`` or an older release's rules, a candidate
  index whose term counts are incomplete), makes the answer a 200 ``warn`` that says so: the
  node still serves. So does an event store whose last write found no room (a full disk,
  ``ResourceStore.write_failure``, until a write succeeds): it still answers reads, and out of
  the balancer no write could clear it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.followers import follower_errors

router = APIRouter()
STORE_TIMEOUT = 3.0
# read models kept in an engine every node shares: its outage is every node's alike, and taking
# them all out of the balancer would stop writes and reads too, so it is a warning, not a 503
SHARED = frozenset({"search-es"})
HEALTH_JSON = "application/health+json"


def runners(request: Request) -> dict[str, Any]:
    state = request.app.state
    out: dict[str, Any] = {}
    search = getattr(state, "search", None)
    if search is not None:
        out["search"] = search.runner
        if search.backend_runner is not None:  # the Elasticsearch index beside the SQLite one
            out[search.backend_runner.model.name] = search.backend_runner
    for name, attr in (("terminology", "terminology_runner"), ("quality", "quality_runner"),
                       ("identity-candidates", "mpi_candidates_runner"),
                       ("unmapped", "unmapped_runner"), ("intake", "intake_runner")):
        runner = getattr(state, attr, None)
        if runner is not None:
            out[name] = runner
    for runner in getattr(state, "mpi_runners", None) or ():
        out[getattr(runner.model, "name", type(runner.model).__name__)] = runner
    return out


@router.get("/health", name="health", include_in_schema=True)
async def health() -> Response:
    return JSONResponse({"status": "pass"}, media_type=HEALTH_JSON)


@router.get("/ready", name="ready", include_in_schema=True)
async def ready(request: Request) -> Response:
    checks: dict[str, Any] = {}
    status = "pass"
    repo = getattr(request.app.state, "repo", None)
    if repo is None:
        return JSONResponse({"status": "fail", "output": "starting"}, 503, media_type=HEALTH_JSON)
    try:
        head = await asyncio.wait_for(run_in_threadpool(repo.store.max_notification_id),
                                      STORE_TIMEOUT)
        checks["event-store"] = {"status": "pass", "position": head}
        failed = repo.store.write_failure
        if failed is not None:  # it reads, but writes fail until someone frees space
            at, why = failed
            checks["event-store"].update(status="warn", output=(
                f"the storage refused the last write, {int(time.time() - at)} s ago: {why}; "
                "writes fail until space is freed (a write that succeeds clears this)"))
            status = "warn"
    except Exception as e:  # noqa: BLE001 - any engine error means not ready
        checks["event-store"] = {"status": "fail",
                                 "output": "timed out" if isinstance(e, TimeoutError)
                                 else type(e).__name__}
        return JSONResponse({"status": "fail", "checks": checks}, 503, media_type=HEALTH_JSON)
    settings = getattr(request.app.state, "settings", None)
    # with the read models followed by another process (hub serve's default), what it fails on
    elsewhere = follower_errors(settings.data_dir) \
        if settings is not None and not settings.follows_here else {}
    for name, runner in runners(request).items():
        check: dict[str, Any] = {"status": "pass"}
        try:
            # beyond the log's end, or built from another log: rows that are not this log's,
            # which the follower refuses (never "lag 0")
            problem = runner.problem(head)
            check["lag"] = max(0, head - runner.model.position())
        except Exception as e:  # noqa: BLE001 - its engine away (an Elasticsearch cluster)
            problem = None
            check = {"status": "fail", "output": f"its position cannot be read: {type(e).__name__}"}
        if problem is not None:
            check.update(status="fail", output=problem)
        elif runner.error is not None:
            check.update(status="fail", output=type(runner.error).__name__)
        elif name in elsewhere:
            check.update(status="fail", output=f"the follower process: {elsewhere[name]}")
        elif check["status"] == "pass" and (stale := runner.model.stale()) is not None:
            # it answers, by rows an operator should rebuild (HUB_TIMEZONE changed under them,
            # term counts from before phones were counted)
            check.update(status="warn", output=stale)
        if check["status"] == "fail" and name not in SHARED:
            status = "fail"
        elif check["status"] != "pass" and status == "pass":
            status = "warn"
        checks[f"read-model:{name}"] = check
    return JSONResponse({"status": status, "checks": checks}, 503 if status == "fail" else 200,
                        media_type=HEALTH_JSON)
