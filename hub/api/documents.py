"""``POST /cda``: a clinical document (WS/T 500, WS/T 483, C-CDA) as XML in, its quality report out.

Answers with the stored quality report (an OperationOutcome: one issue per finding, with the rule
id and an XPath) and:
  201  stored: a new document or a new version of it (``Location``: the DocumentReference);
  200  the same document again: nothing changed;
  422  refused by quality control or not mappable: quarantined (``X-Quarantine-Id``), replayable
       with ``hub quarantine replay``;
  415  not an XML content type.
The document, its resources and the report are written in one transaction.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_mapping.base import SourceInfo
from fhir_mapping.xmlsafe import declare_charset
from hub.api.caller import authorize, recorded_institution
from hub.api.responses import base_url, fhir_response
from hub.core.access import Action
from hub.core.errors import FhirError, bad_request
from hub.core.ingest import CLIENT_FEEDS

router = APIRouter()
XML_TYPES = ("application/xml", "text/xml", "application/hl7-cda+xml", "application/cda+xml",
             "application/hl7-v3+xml")


def source_of(request: Request) -> SourceInfo:
    """The sender, as a connector names it (headers), else unknown: mappers then read the document."""
    def header(name: str) -> str:
        value = request.headers.get(name, "")
        return value[:128] if value.isprintable() else ""

    institution = recorded_institution(request, header("x-hub-source-institution")) or ""
    # a document is a message whoever posts it: its header says what its author chose of the
    # patient, so the message-feed rules keep the rest (a REST feed name would replace it)
    feed = header("x-hub-source-feed")
    return SourceInfo(institution=institution, oid=header("x-hub-source-oid"),
                      feed=feed if feed and feed not in CLIENT_FEEDS else "cda")


@router.post("/cda", name="cda-document")
async def post_cda(request: Request) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in XML_TYPES:
        raise FhirError(415, "not-supported", f"Content-Type {ctype or '(none)'!r} is not supported;"
                        " send a CDA document as application/xml")
    # a document writes: a writer's role and scope, checked before anything is kept (a
    # quarantined document is replayed as the hub itself)
    ctx = authorize(request, Action("create", "DocumentReference"))
    payload = await request.body()
    if not payload.strip():
        raise bad_request("The request body is empty")
    payload = declare_charset(payload, request.headers.get("content-type", ""))
    service = request.app.state.documents
    result = await run_in_threadpool(service.ingest_cda, payload, source_of(request), ctx)
    headers = {}
    if result.document_ref:
        base = base_url(request, request.app.state.settings.base_url)
        headers["Location"] = f"{base}/{result.document_ref}"
    if result.quarantine_id is not None:
        headers["X-Quarantine-Id"] = str(result.quarantine_id)
    return fhir_response(result.report, result.status, request=request, headers=headers)
