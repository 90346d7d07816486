"""Documents and quality: the quality counts per institution, rule and document type over a
period, their trend per day (drawn with ECharts), each count drilled down to the documents behind
it, and one document's report with its findings marked in the source XML (read through the
repository: checked and audited)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api.caller import authorize, context_of, repository
from hub.console.common import page, router
from hub.console.intake import findings_of, marked_lines
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.events import resource_bytes
from hub.core.fhirtime import local_zone
from projections.errors import QueryError

DAYS = (7, 30, 90, 365)
SHOWN = 100  # documents listed behind a count


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    return {k: q.get(k, "").strip()[:200] for k in ("institution", "document_type", "rule")}


@router.api_route("/console/quality", methods=["GET", "HEAD"], name="console-quality",
                  include_in_schema=False)
def quality_page(request: Request) -> Response:
    ctx = authorize(request, Action("operation", None, None, "$console-quality"))
    model = request.app.state.quality
    runner = request.app.state.quality_runner
    if model is None or runner is None:
        raise FhirError(503, "transient", "The quality projection is not running")
    days = int(request.query_params.get("days", "30")) \
        if request.query_params.get("days", "30") in {str(d) for d in DAYS} else 30
    since = (datetime.now(local_zone()) - timedelta(days=days - 1)).date()
    f = _filters(request)
    chosen = {k: v or None for k, v in f.items()}
    try:
        tables = {g: model.counts(since=since, group_by=(g,), **{
            k: v for k, v in chosen.items() if k != g}) for g in ("institution", "rule",
                                                               "document_type")}
        trend = model.counts(since=since, group_by=("day",), **chosen)
        documents = model.reports(since=since, limit=2 * SHOWN, **chosen)
    except QueryError as e:
        raise FhirError(400, "invalid", str(e)) from None
    documents = _openable(repository(request), ctx, documents)[:SHOWN]
    chart = {"days": [r["day"][5:] for r in trend],
             "series": [{"key": k, "data": [r[k] for r in trend]}
                        for k in ("documents", "rejected", "findings")]}
    return page(request, "quality.html", "quality", tables=tables, chart=chart,
                documents=documents, filters=f, days=days, all_days=DAYS)


def _openable(repo: Any, ctx: Any, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents whose report (and document) the caller may read: one a consent hides from
    it is not listed, as its report does not open."""
    refs = {"OperationOutcome": [d["rid"] for d in documents],
            "DocumentReference": [d["document_ref"].split("/", 1)[1] for d in documents
                                  if str(d.get("document_ref")).startswith("DocumentReference/")]}
    hidden: set[str] = set()
    for rtype, rids in refs.items():
        held = set(repo.store.current_ids(rtype, rids)) if rids else set()
        seen = repo.latest_many(ctx, rtype, sorted(held)) if held else {}
        hidden |= {f"{rtype}/{r}" for r in held - set(seen)}
    return [d for d in documents if f"OperationOutcome/{d['rid']}" not in hidden
            and d.get("document_ref") not in hidden]


@router.api_route("/console/quality/report/{rid}", methods=["GET", "HEAD"],
                  name="console-quality-report", include_in_schema=False)
async def report_page(request: Request, rid: str) -> Response:
    """One document's quality report: its findings, and the document as sent with the lines the
    findings point at marked (its Binary, through its DocumentReference)."""
    authorize(request, Action("operation", None, None, "$console-quality-document"))
    ctx = context_of(request, feed="console")
    repo = repository(request)

    def answer() -> dict[str, Any]:
        try:
            report = orjson.loads(resource_bytes(repo.read(ctx, "OperationOutcome", rid)))
        except FhirError as e:  # said as the reader asked, not as the resource it is stored as
            if e.status in (404, 410):
                raise FhirError(e.status, e.issues[0].code, f"No quality report {rid}") from None
            raise
        found = findings_of(report)
        ext = {e.get("url", "").rsplit("/", 1)[-1]: e for e in report.get("extension") or []}
        doc_ref = (ext.get("quality-document", {}).get("valueReference") or {}).get("reference")
        lines: list[tuple[str, bool]] = []
        if isinstance(doc_ref, str) and doc_ref.startswith("DocumentReference/"):
            doc = orjson.loads(resource_bytes(repo.read(ctx, "DocumentReference",
                                                        doc_ref.split("/", 1)[1])))
            url = next((c.get("attachment", {}).get("url", "") for c in doc.get("content") or []),
                       "")
            if url.startswith("Binary/"):
                binary = orjson.loads(resource_bytes(repo.read(ctx, "Binary", url[7:])))
                text = base64.b64decode(binary.get("data", "")).decode("utf-8", "replace")
                lines = marked_lines(text, found)
        return {"report": report, "findings": found, "ext": ext, "document": doc_ref,
                "lines": lines}

    shown = await run_in_threadpool(answer)
    return page(request, "quality_report.html", "quality", rid=rid, **shown)
