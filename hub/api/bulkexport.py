"""FHIR Bulk Data export (Bulk Data Access IG v2, ``$export``): kick-off, status, files.

- ``GET|POST /fhir/$export`` (system), ``/fhir/Patient/$export`` (every Patient and what refers to
  one), ``/fhir/Group/{id}/$export`` (the Group's member Patients and what refers to them), with
  ``Prefer: respond-async``: 202 and ``Content-Location`` of the status URL. Parameters
  ``_outputFormat`` (``application/fhir+ndjson``, ``application/ndjson``, ``ndjson``), ``_type``,
  ``_since`` (in the URL, or a Parameters body on POST); ``_typeFilter`` and the other optional
  ones are refused (400), not ignored.
- ``GET /fhir/$export-status/{id}``: 202 with ``X-Progress`` and ``Retry-After`` while it runs,
  200 with the manifest when done, 500 with an OperationOutcome when it failed; ``DELETE``
  cancels it (202) and removes its files.
- ``GET /fhir/$export-file/{id}/{name}``: one NDJSON file, streamed, each line judged again for
  the caller downloading it (``Repository.export_file_judge``).

Only the client that started an export (or an administrator) reads its status and files; the
work itself is ``hub.exports``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from hub.api.caller import actor_of, authorize, context_of, repository
from hub.api.methods import starts_work
from hub.api.opparams import parameter_list
from hub.api.responses import base_url, fhir_response
from hub.core import resource as res
from hub.core.access import Action, Actor, own_base
from hub.core.config import Settings
from hub.core.errors import FhirError, Issue, bad_request, operation_outcome
from hub.core.fhirtime import parse_range
from hub.exports import RETRY_AFTER_S, ExportRequest, Exports, Limits, compartment_types
from hub.repository import AUDIT, VIEW_TYPES
from projections.search.plan import local_target

router = APIRouter()

NDJSON = "application/fhir+ndjson"
FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
# a FHIR instant: a full date and time to the second, with its zone
_INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})")
_PARAMS = frozenset({"_outputFormat", "_type", "_since"})
# the IG's optional parameters this hub does not answer: refused rather than silently ignored
_NOT_ANSWERED = frozenset({"_typeFilter", "_elements", "patient", "includeAssociatedData",
                           "organizeOutputBy", "allowPartialManifests"})


def attach(app: FastAPI, settings: Settings) -> None:
    registry = getattr(app.state, "auth_registry", None)

    def revoked(owner: str) -> bool:  # a client of the hub's registry, revoked since
        client = registry.get(owner) if registry is not None else None
        return client is not None and client.status != "active"

    app.state.exports = Exports(settings.data_dir, app.state.repo, Limits(
        settings.export_max_running, settings.export_keep, settings.export_file_resources,
        settings.export_file_bytes), revoked)


def detach(app: FastAPI) -> None:
    exports = getattr(app.state, "exports", None)
    if exports is not None:
        exports.close()


def _exports(request: Request) -> Exports:
    return request.app.state.exports


# -- kick-off ---------------------------------------------------------------------------------------

async def _posted(request: Request) -> list[tuple[str, str]]:
    """A POST kick-off's parameters: a Parameters body (``_type`` may repeat), or none."""
    raw = await request.body()
    if not raw.strip():
        return []
    if len(raw) > 64 * 1024:
        raise FhirError(413, "too-costly", "An $export body is at most 65536 bytes")
    d = res.parse_json(raw, max_string=request.app.state.settings.max_string)
    res.check_type(d, "Parameters")
    out = []
    for i, p in enumerate(parameter_list(d)):
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if p["name"] not in _PARAMS:  # refused by its name, whatever its value's type
            out.append((p["name"], ""))  # (the IG's ``patient`` is a valueReference)
            continue
        if not isinstance(value, str):
            raise bad_request(f"Parameter {p['name'][:40]!r} has no string value",
                              f"Parameters.parameter[{i}]")
        out.append((p["name"], value))
    return out


def _request(level: str, params: list[tuple[str, str]], request: Request, base: str,
             members: frozenset[str] | None = None) -> ExportRequest:
    """The export asked for, its parameters checked (400 for what is malformed or unanswered)."""
    types: list[str] = []
    since_us: int | None = None
    for name, value in params:
        if name in _NOT_ANSWERED:
            raise FhirError(400, "not-supported", f"{name} is not supported by this server's "
                            f"$export; leave it out (filter the NDJSON files instead)")
        if name not in _PARAMS:
            raise bad_request(f"Unknown $export parameter {name[:40]!r}; use "
                              + ", ".join(sorted(_PARAMS)))
        if name == "_outputFormat" and value not in FORMATS:
            raise bad_request(f"_outputFormat {value[:60]!r} is not written here; use "
                              "application/fhir+ndjson")
        if name == "_since":
            if since_us is not None:
                raise bad_request("_since is given more than once")
            try:
                if not _INSTANT.fullmatch(value.strip()):  # the IG types it instant
                    raise ValueError(value)
                since_us = parse_range(value.strip())[0]
            except ValueError:
                raise bad_request(f"_since must be a FHIR instant, not {value[:40]!r}") from None
        if name == "_type":
            types += [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in res.RESOURCE_TYPES]
    if unknown:
        raise bad_request(f"Unknown resource type(s) in _type: {', '.join(unknown[:5])}")
    kept = [t for t in types if t in VIEW_TYPES or t == AUDIT]
    if kept:
        raise bad_request(f"_type={kept[0]}: {kept[0]} is not exported (the master patient "
                          "index's Person and the audit log's AuditEvent have their own searches)")
    if level != "system":
        compartment = compartment_types()
        outside = [t for t in types if t not in compartment]
        if outside:
            raise bad_request(f"_type={outside[0]}: not of the Patient compartment, which a "
                              f"{level}-level export is made of; export it at [base]/$export")
    query = urlencode(params)
    kicked = base + request.url.path[len("/fhir"):] + (f"?{query}" if query else "")
    return ExportRequest(level, tuple(dict.fromkeys(types)) or None, since_us, kicked, base,
                         members)


def _local_patient(ref: object, base: str) -> str | None:
    """The id of a Group member's Patient on this server: ``Patient/id`` or absolute on this
    server's base (the request's, or ``HUB_BASE_URL``), a version of it too; None for another
    server's."""
    target = local_target(ref, (base.rstrip("/") + "/", own_base())) \
        if isinstance(ref, str) else None
    return target[1] if target is not None and target[0] == "Patient" else None


def _current(member: dict, now_us: int) -> bool:
    """Is a Group member one now: not ``inactive`` (R4: "no longer in the group") and within
    its ``period``, when it has one (an end passed or a start to come: not a member)?"""
    if member.get("inactive") is True:
        return False
    period = member.get("period")
    if not isinstance(period, dict):
        return True
    try:
        start, end = period.get("start"), period.get("end")
        if isinstance(start, str) and parse_range(start)[0] > now_us:
            return False
        return not (isinstance(end, str) and parse_range(end)[1] <= now_us)
    except ValueError:  # a period that cannot be read places no one in the group
        return False


def _respond_async(request: Request) -> None:
    prefer = [p.strip().lower() for p in request.headers.get("prefer", "").split(",")]
    if "respond-async" not in prefer:
        raise bad_request("$export runs asynchronously: send Prefer: respond-async")


async def _kick_off(request: Request, level: str, group: str | None = None) -> Response:
    _respond_async(request)
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        params += await _posted(request)
    base = base_url(request, request.app.state.settings.base_url)
    ctx, repo = context_of(request), repository(request)
    members: frozenset[str] | None = None
    if group is not None:  # the Group is read as any read is: checked and audited
        stored = await run_in_threadpool(repo.read, ctx, "Group", group)
        d = orjson.loads(stored.state.partition(b"\n")[2])
        now_us = int(time.time() * 1_000_000)
        members = frozenset(filter(None, (
            _local_patient((m.get("entity") or {}).get("reference"), base)
            for m in d.get("member") or () if isinstance(m, dict) and _current(m, now_us))))
    req = _request(level, params, request, base, members)
    ctx.query = req.request  # the audit records the export's parameters, a POST's too
    eid = await run_in_threadpool(_exports(request).start, ctx, req)
    status = f"{base}/$export-status/{eid}"
    return fhir_response(operation_outcome([Issue(
        "informational", f"Export started; poll {status}", "information")]), 202,
        request=request, headers={"Content-Location": status})


@router.get("/fhir/$export", name="export")
@starts_work
async def export_system(request: Request) -> Response:
    return await _kick_off(request, "system")


@router.post("/fhir/$export", name="export-post")
async def export_system_post(request: Request) -> Response:
    return await _kick_off(request, "system")


@router.get("/fhir/Patient/$export", name="patient-export")
@starts_work
async def export_patients(request: Request) -> Response:
    return await _kick_off(request, "patient")


@router.post("/fhir/Patient/$export", name="patient-export-post")
async def export_patients_post(request: Request) -> Response:
    return await _kick_off(request, "patient")


@router.get("/fhir/Group/{gid}/$export", name="group-export")
@starts_work
async def export_group(request: Request, gid: str) -> Response:
    return await _kick_off(request, "group", gid)


@router.post("/fhir/Group/{gid}/$export", name="group-export-post")
async def export_group_post(request: Request, gid: str) -> Response:
    return await _kick_off(request, "group", gid)


# -- status, files, cancellation ----------------------------------------------------------------

def _exporter(request: Request) -> Actor:
    """The caller of a status, file or cancellation: one who may export at all (403 before any
    export is looked up), then its owner or an administrator (``Exports.get``)."""
    authorize(request, Action("operation", None, None, "$export"))
    return actor_of(request)


@router.get("/fhir/$export-status/{eid}", name="export-status")
async def export_status(request: Request, eid: str) -> Response:
    exports = _exports(request)
    out = await run_in_threadpool(exports.get, eid, _exporter(request))
    if out["status"] == "running":
        return Response(status_code=202, headers={
            "X-Progress": (out["progress"] or "starting")[:200],
            "Retry-After": str(RETRY_AFTER_S)})
    if out["status"] == "failed":
        raise FhirError(500, "exception", f"The export failed: {out['error']}")
    return Response(orjson.dumps(exports.manifest(out)), 200, media_type="application/json",
                    headers={"Expires": _http_date(out["expires"])})


@router.delete("/fhir/$export-status/{eid}", name="export-cancel")
async def export_cancel(request: Request, eid: str) -> Response:
    await run_in_threadpool(_exports(request).cancel, eid, _exporter(request))
    return fhir_response(operation_outcome([Issue(
        "informational", f"Export {eid} cancelled; its files are removed", "information")]), 202,
        request=request)


@router.get("/fhir/$export-file/{eid}/{name}", name="export-file")
async def export_file(request: Request, eid: str, name: str) -> Response:
    path, shown = await run_in_threadpool(_exports(request).file, eid, name,
                                         _exporter(request))
    # streamed from the file in chunks, never read whole
    if shown is None:
        return FileResponse(path, media_type=NDJSON)
    # each line judged for this caller, now: the iterator runs in the thread pool
    return StreamingResponse(_kept(path, shown), media_type=NDJSON)


def _kept(path: Path, shown: Callable[[bytes], bool], chunk: int = 64 * 1024
          ) -> Iterator[bytes]:
    """The lines of an export file the caller is shown, in chunks of about ``chunk`` bytes."""
    with open(path, "rb") as f:
        out: list[bytes] = []
        size = 0
        for line in f:
            if line.strip() and shown(line.rstrip(b"\n")):
                out.append(line)
                size += len(line)
                if size >= chunk:
                    yield b"".join(out)
                    out, size = [], 0
        if out:
            yield b"".join(out)


def _http_date(ts: float | None) -> str:
    from email.utils import formatdate

    return formatdate(ts or 0, usegmt=True)
