"""``GET /fhir/$quality-report``: document-quality counts for operators' dashboards.

Answers from the data-quality projection (``projections.quality``), first brought up to the event
log's end as of the request (read-your-writes, bounded at 5 s like search). Parameters:

==============  ==================================================================================
institution     only these institutions (repeat the parameter for several)
document_type   only these document types (C0005, …; repeatable)
rule            only findings of these rules, and the documents having them (repeatable)
since, until    check time, both inclusive: a date (YYYY, YYYY-MM, YYYY-MM-DD) is that period in
                the region's time (+08:00); a date-time needs its offset
group           comma list of institution, document_type, rule, day, decision, severity
                (default ``institution,document_type,rule,day``; ``group=`` alone: totals only)
_count          at most this many rows (1–100000, default 10000); ``truncated`` says if cut
_format         ``json`` (default) or ``csv`` (``text/csv``); ``Accept: text/csv`` works too
_pretty         indented JSON
==============  ==================================================================================

The JSON answer is a plain table, not a FHIR resource (a dashboard draws it as it comes)::

    {"report": "document-quality", "generated": "…Z", "position": 1234, "upToDate": true,
     "timezone": "+08:00", "filters": {…}, "group": [...], "columns": [...],
     "rows": [{"institution": …, "documents": 3, "accepted": 1, …, "findings": 5, …}],
     "totals": {"documents": …, …}, "truncated": false}

CSV has the same columns with a header line. Mistakes (unknown parameters or groups, malformed
dates) are 400 OperationOutcomes like every error of the API.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api.caller import authorize
from hub.api.responses import pretty
from hub.core.access import Action
from hub.core.config import Settings
from hub.core.errors import FhirError, bad_request
from hub.core.fhirtime import zone_name
from hub.core.store import ResourceStore
from hub.readmodels import open_as
from projections.quality import (
    COUNT_COLUMNS,
    MAX_TEXT,
    QualityProjection,
    QueryError,
    columns,
    parse_group,
    to_csv,
)
from projections.runner import Runner

router = APIRouter()

RYW_TIMEOUT = 5.0
DEFAULT_ROWS = 10_000
MAX_ROWS = 100_000
_REPEATABLE = {"institution", "document_type", "rule", "group"}
_SINGLE = {"since", "until", "_count", "_format", "_pretty"}
_MAX_VALUES = 100  # of one repeatable parameter
_JSON = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_CSV = {"csv", "text/csv"}
_XML = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}


# -- wiring --------------------------------------------------------------------------------------


def attach(app: FastAPI, settings: Settings, store: ResourceStore,
           model: QualityProjection | None = None) -> None:
    """Follow the log with the projection (``model``, or opened from the registry) in the
    background (``store``: the follower's store); ``detach`` closes it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = open_as(QualityProjection, "quality", settings.data_dir)
    runner = Runner(store, model)
    app.state.quality = model
    app.state.quality_runner = runner
    if settings.follows_here:
        runner.start()


def detach(app: FastAPI) -> None:
    runner: Runner | None = getattr(app.state, "quality_runner", None)
    model: QualityProjection | None = getattr(app.state, "quality", None)
    if runner is not None:
        runner.stop()
    if model is not None:
        model.close()
    app.state.quality_runner = app.state.quality = None


# -- the operation ---------------------------------------------------------------------------------


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key not in _REPEATABLE and key not in _SINGLE:
            raise bad_request(f"Unknown parameter {key[:40]!r} for $quality-report; use "
                              + ", ".join(sorted(_REPEATABLE | _SINGLE)))
        values = out.setdefault(key, [])
        values.append(value)
        if key in _SINGLE and len(values) > 1:
            raise bad_request(f"{key} is given more than once")
        if len(values) > _MAX_VALUES:
            raise bad_request(f"{key} is given more than {_MAX_VALUES} times")
        if len(value) > 4 * MAX_TEXT:
            raise bad_request(f"{key} is too long")
    return out


def _wants_csv(request: Request, params: dict[str, list[str]]) -> bool:
    fmt = params.get("_format")
    if fmt:
        base = fmt[0].split(";")[0].strip().lower()
        if base in _CSV:
            return True
        if base in _JSON:
            return False
        if base in _XML:
            raise FhirError(406, "not-supported", "$quality-report answers in JSON or CSV, not XML")
        raise FhirError(406, "not-supported", f"Unknown _format {fmt[0][:40]!r}; use json or csv")
    accept = request.headers.get("accept", "").lower()
    if "text/csv" in accept and "json" not in accept:
        return True
    if accept and not any(t in accept for t in ("json", "*/*", "application/*")):
        raise FhirError(406, "not-supported",
                        f"Cannot answer in {accept[:60]!r}; use application/json or text/csv")
    return False


def _count(params: dict[str, list[str]]) -> int:
    raw = params.get("_count", [str(DEFAULT_ROWS)])[0]
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= MAX_ROWS:
        raise bad_request(f"_count must be a whole number from 1 to {MAX_ROWS}")
    return int(raw)


@router.get("/fhir/$quality-report", name="quality-report")
async def quality_report(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$quality-report"))
    params = _params(request)
    csv = _wants_csv(request, params)
    limit = _count(params)
    try:
        group = parse_group(params["group"]) if "group" in params else parse_group(None)
    except QueryError as e:
        raise bad_request(str(e)) from None
    model: QualityProjection | None = getattr(request.app.state, "quality", None)
    runner: Runner | None = getattr(request.app.state, "quality_runner", None)
    if model is None or runner is None:
        raise FhirError(503, "transient", "The data-quality projection is not running")
    filters = {"institution": params.get("institution"),
               "document_type": params.get("document_type"), "rule": params.get("rule"),
               "since": params.get("since", [None])[0], "until": params.get("until", [None])[0]}

    def answer() -> tuple[bool, int, list[dict], dict[str, Any]]:
        current = runner.sync(RYW_TIMEOUT)
        position = model.position()
        rows = model.counts(filters["institution"], filters["since"], filters["until"], group,
                            document_type=filters["document_type"], rule=filters["rule"],
                            limit=limit + 1)
        totals = model.counts(filters["institution"], filters["since"], filters["until"], (),
                              document_type=filters["document_type"], rule=filters["rule"])
        return current, position, rows, totals[0] if totals else dict.fromkeys(COUNT_COLUMNS, 0)

    try:
        current, position, rows, totals = await run_in_threadpool(answer)
    except QueryError as e:
        raise bad_request(str(e)) from None
    truncated = len(rows) > limit
    rows = rows[:limit]
    headers = {"X-Hub-Position": str(position)}
    if truncated:
        headers["X-Hub-Truncated"] = "true"
    if csv:
        headers["Content-Disposition"] = 'attachment; filename="quality-report.csv"'
        return Response(to_csv(rows, group).encode("utf-8"), 200,
                        media_type="text/csv; charset=utf-8", headers=headers)
    body = {
        "report": "document-quality",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "position": position,
        "upToDate": current,
        "timezone": zone_name(),
        "filters": {k: v for k, v in filters.items() if v is not None},
        "group": list(group),
        "columns": columns(group),
        "rows": rows,
        "totals": totals,
        "truncated": truncated,
    }
    return Response(orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty(request) else 0), 200,
                    media_type="application/json", headers=headers)
