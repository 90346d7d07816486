"""``GET /fhir/$unmapped-codes``: the worklist of local codes without a standard code.

Answers from ``projections.unmapped``, first brought up to the log's end as of the request
(read-your-writes, bounded at 5 s). Parameters: ``institution`` (the sending institution's code, or
its OID), ``system`` (one local code system), ``_count`` (1–100000, default 1000), ``_format``
``json`` (default) or ``csv``, ``_pretty``. The JSON answer is a plain table::

    {"report": "unmapped-codes", "generated": "…Z", "position": 1234, "upToDate": true,
     "filters": {…}, "columns": [...], "rows": [{"institution": "H0001", "oid": "…",
     "system": "urn:oid:….7", "code": "GLU", "display": "血糖", "resources": 812,
     "first_seen": "…", "last_seen": "…"}], "total": 17, "truncated": false}

Rows are sorted by ``resources`` (current resources carrying the code), most first.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api.caller import authorize
from hub.api.quality import _wants_csv
from hub.api.responses import pretty
from hub.core.access import Action
from hub.core.config import Settings
from hub.core.errors import FhirError, bad_request
from hub.core.store import ResourceStore
from hub.readmodels import open_as
from projections.runner import Runner
from projections.unmapped import COLUMNS, MAX_TEXT, QueryError, UnmappedProjection, to_csv

router = APIRouter()
RYW_TIMEOUT = 5.0
DEFAULT_ROWS = 1000
MAX_ROWS = 100_000
_PARAMS = {"institution", "system", "_count", "_format", "_pretty"}


def attach(app: FastAPI, settings: Settings, store: ResourceStore,
           model: UnmappedProjection | None = None) -> None:
    """Follow the log with the worklist (``model``, or opened from the registry) in the
    background; ``detach`` closes it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = open_as(UnmappedProjection, "unmapped", settings.data_dir)
    runner = Runner(store, model)
    app.state.unmapped = model
    app.state.unmapped_runner = runner
    if settings.follows_here:
        runner.start()


def detach(app: FastAPI) -> None:
    runner = getattr(app.state, "unmapped_runner", None)
    model = getattr(app.state, "unmapped", None)
    if runner is not None:
        runner.stop()
    if model is not None:
        model.close()
    app.state.unmapped_runner = app.state.unmapped = None


def _params(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in _PARAMS:
            raise bad_request(f"Unknown parameter {key[:40]!r} for $unmapped-codes; use "
                              + ", ".join(sorted(_PARAMS)))
        if key in out:
            raise bad_request(f"{key} is given more than once")
        if len(value) > MAX_TEXT:
            raise bad_request(f"{key} is too long")
        out[key] = value
    return out


@router.get("/fhir/$unmapped-codes", name="unmapped-codes")
async def unmapped_codes(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$unmapped-codes"))
    params = _params(request)
    csv = _wants_csv(request, {k: [v] for k, v in params.items()})
    raw = params.get("_count", str(DEFAULT_ROWS))
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= MAX_ROWS:
        raise bad_request(f"_count must be a whole number from 1 to {MAX_ROWS}")
    limit = int(raw)
    model = getattr(request.app.state, "unmapped", None)
    runner = getattr(request.app.state, "unmapped_runner", None)
    if model is None or runner is None:
        raise FhirError(503, "transient", "The unmapped-codes projection is not running")
    institution, system = params.get("institution") or None, params.get("system") or None

    def answer():
        current = runner.sync(RYW_TIMEOUT)
        position = model.position()
        rows = model.worklist(institution, system)
        return current, position, rows

    try:
        current, position, rows = await run_in_threadpool(answer)
    except QueryError as e:
        raise bad_request(str(e)) from None
    total = len(rows)
    truncated = total > limit
    rows = rows[:limit]
    headers = {"X-Hub-Position": str(position)}
    if csv:
        headers["Content-Disposition"] = 'attachment; filename="unmapped-codes.csv"'
        return Response(to_csv(rows).encode("utf-8"), 200, headers=headers,
                        media_type="text/csv; charset=utf-8")
    body = {"report": "unmapped-codes",
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds").replace(
                "+00:00", "Z"),
            "position": position, "upToDate": current,
            "filters": {"institution": institution, "system": system}, "columns": list(COLUMNS),
            "rows": rows, "total": total, "truncated": truncated}
    option = orjson.OPT_INDENT_2 if pretty(request) else 0
    return Response(orjson.dumps(body, option=option), 200, headers=headers,
                    media_type="application/json")
