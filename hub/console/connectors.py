"""The connectors page: each registered connector daemon's health, throughput and counters
(asked of the daemons at once, each with a short timeout); one daemon's sources, sink and dead
letters, a dead letter's reason and payload (shown audited: it holds a patient's data as sent),
replay of one or of every open one (by the daemon, with its own mappers)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub import daemons
from hub.access.policy import bound_to
from hub.api.caller import authorize
from hub.console import kept
from hub.console.common import check_csrf, notice_of, page, router, say, with_notice
from hub.core.access import Action
from hub.core.ingest import Context

COUNTS = daemons.COUNTS


def _registry(request: Request) -> daemons.DaemonRegistry:
    return daemons.DaemonRegistry(request.app.state.settings.data_dir)


def _daemon(request: Request, ctx: Context, name: str) -> daemons.Daemon:
    """A registered daemon the caller may watch: its institution's (``hub.console.kept``)."""
    daemon = _registry(request).get(name)
    kept.require_own(ctx, daemon.institution, f"connector {name!r} is registered")
    return daemon


def _summary(daemon: daemons.Daemon, st: dict[str, Any]) -> dict[str, Any]:
    sources = st.get("sources") or {}
    totals = {c: sum(int(s.get(c) or 0) for s in sources.values()) for c in COUNTS}
    sink = st.get("sink") or {}
    return {"name": daemon.name, "url": daemon.url, "reachable": st.get("reachable", False),
            "healthy": st.get("healthy", False), "error": st.get("error", ""),
            "uptime": _duration(st.get("uptime_s")), "throughput": st.get("throughput_per_min", 0),
            "sink": sink.get("state", ""), "sink_error": sink.get("error") or "",
            "admin": bool(daemon.token), **totals}


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600}h" if s >= 86400 else \
        f"{s // 3600}h {s % 3600 // 60}m" if s >= 3600 else f"{s // 60}m {s % 60}s"


@router.api_route("/console/connectors", methods=["GET", "HEAD"], name="console-connectors",
                  include_in_schema=False)
def connectors_page(request: Request) -> Response:
    ctx = authorize(request, Action("operation", None, None, "$console-connectors"))
    mine = bound_to(ctx.actor)  # an institution's people watch its own connectors
    registered = [d for d in _registry(request).list() if mine is None or d.institution == mine]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(registered)))) as pool:
        states = list(pool.map(daemons.status, registered))
    rows = [_summary(d, st) for d, st in zip(registered, states)]
    return page(request, "connectors.html", "connectors", rows=rows,
                notice=notice_of(request))


@router.api_route("/console/connectors/{name}", methods=["GET", "HEAD"],
                  name="console-connector", include_in_schema=False)
def connector_page(request: Request, name: str) -> Response:
    ctx = authorize(request, Action("operation", None, None, "$console-connectors"))
    daemon = _daemon(request, ctx, name)
    st = daemons.status(daemon)
    sources = [{"name": n, **s} for n, s in sorted((st.get("sources") or {}).items())]
    letters = daemons.deadletters(daemon, every=request.query_params.get("all") == "1") \
        if daemon.token and st.get("reachable") else []
    letters.reverse()  # the newest first
    return page(request, "connector.html", "connectors", c=_summary(daemon, st), sources=sources,
                sink=st.get("sink") or {}, letters=letters, counts=COUNTS,
                every=request.query_params.get("all") == "1",
                notice=notice_of(request))


@router.api_route("/console/connectors/{name}/deadletters/{dl_id}", methods=["GET", "HEAD"],
                  name="console-connector-deadletter", include_in_schema=False)
def deadletter_page(request: Request, name: str, dl_id: int) -> Response:
    action = Action("operation", None, None, "$console-connectors")
    ctx = authorize(request, action)
    letter, patients = _letter(request, ctx, action, _daemon(request, ctx, name), dl_id)
    # the payload is a patient's data as sent: its showing is audited like a read of it
    kept.audited(request, ctx, action, "0", patients,
                 f"dead letter {dl_id} of connector {name} shown")
    return page(request, "deadletter.html", "connectors", c={"name": name}, letter=letter)


def _letter(request: Request, ctx: Context, action: Action, daemon: daemons.Daemon,
            dl_id: int) -> tuple[dict[str, Any], list[str]]:
    """A dead letter the caller may open (``hub.console.kept``: the Patient of a payload the hub
    maps itself, a document or a v3 message, told by the daemon's institution), with the
    Patients its audit names."""
    letter = daemons.deadletter(daemon, dl_id)
    payload = letter.get("payload")
    patient = kept.patient_of(str(letter.get("kind") or ""), payload.encode("utf-8"),
                              {"institution": daemon.institution}) \
        if isinstance(payload, str) and daemon.institution else None
    return letter, kept.judge(request, ctx, action, f"dead letter {dl_id} of connector "
                              f"{daemon.name}", daemon.institution, patient)


@router.post("/console/connectors/{name}/replay", name="console-connector-replay-all",
             include_in_schema=False)
async def replay_all(request: Request, name: str) -> Response:
    return await _replay(request, name, None)


@router.post("/console/connectors/{name}/deadletters/{dl_id}/replay",
             name="console-connector-replay", include_in_schema=False)
async def replay_one(request: Request, name: str, dl_id: int) -> Response:
    return await _replay(request, name, dl_id)


async def _replay(request: Request, name: str, dl_id: int | None) -> Response:
    action = Action("operation", None, None, "$console-connectors-replay")
    ctx = authorize(request, action)
    check_csrf(request, await request.form())
    daemon = _daemon(request, ctx, name)
    if dl_id is not None:  # one it may open (a replay of every open one: the institution's)
        await run_in_threadpool(_letter, request, ctx, action, daemon, dl_id)
    results = await run_in_threadpool(daemons.replay, daemon, dl_id)
    ok = sum(1 for r in results if r.get("ok"))
    failed = [r for r in results if not r.get("ok")]
    notice = f"{say(request, 'replayed')}: {ok}"
    if failed:
        reason = str((failed[0].get("error") or {}).get("reason", ""))[:200]
        notice += f" · {say(request, 'refused_again')}: {len(failed)} ({reason})"
    return RedirectResponse(with_notice(request, f"/console/connectors/{quote(name)}", notice), 303)
