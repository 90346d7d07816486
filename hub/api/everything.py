"""Cross-institution record lookup (``$everything``), the patient timeline and the access audit.

Routes (before the generic ``/fhir/{type}/{id}/{compartment type}`` route, which would take them):

- ``GET /fhir/Patient/{id}/$everything``, ``GET /fhir/Person/{id}/$everything`` (or ``POST``
  with a Parameters body): the records of every Patient linked to the same person, from all
  institutions. ``start`` and ``end`` (care dates, as R4 asks: a resource whose care date,
  ``hub.mpi.everything.CARE_DATES``, meets the window, or that has none), ``_since`` (instant;
  resources updated since), ``_type`` (comma list of Patient-compartment types), ``_count``
  (page size, default 1000, at most 5000), ``institution`` (an operator's one-institution
  view), ``_cursor`` (paging; follow the ``next`` link). A searchset Bundle with ``total``.
- ``GET /fhir/Person/{id}/$timeline``, ``GET /fhir/Patient/{id}/$timeline``: the person's
  encounters, diagnoses, results, medications, procedures, documents, allergies and immunizations
  in time order. ``start`` (inclusive) and ``end`` (a date is its whole period: ``end=2024``
  ends with 2024), ``kind`` (comma list or repeated: encounter, diagnosis, result, medication,
  procedure, document, allergy, immunization), ``_count`` (default 1000, at most 5000), ``_cursor``.

**Audit.** Every read of a person's shared record (these, ``GET /fhir/Person/{id}``, Person search
and ``$resolve-identifier``) writes an ``AuditEvent`` to the audit log (``hub.access.auditlog``):
the caller (the token's subject), the person and the Patients read as entities, the purpose of
use from ``X-Purpose-Of-Use`` (a v3 PurposeOfUse code, e.g. ``TREAT``), the outcome (0 success,
4 refused or not found). Auditors search it like any resource (``AuditEvent?entity=Person/…``).
The answer is sent only once its AuditEvent is committed, so no read goes unaudited even if the
process dies right after; concurrent requests share one commit (``AuditWriter``: a group commit
of everything queued while the previous commit ran), so the cost is one short write per burst,
not per request, and the latency of a read grows by one commit (~1 ms on SQLite) at most.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.access.audit import AuditWriter, agent_who
from hub.api.caller import actor_of, audited_query, context_of, purpose_of, repository
from hub.api.opparams import read_parameters
from hub.api.paging import link
from hub.api.responses import base_url, check_format, fhir_response
from hub.core.access import Action, patients_in
from hub.core.errors import FhirError, bad_request, gone
from hub.core.fhirtime import parse_range
from hub.core.ingest import Context, now_instant
from hub.core.pagetokens import page_tokens
from hub.mpi.everything import Scope, SharedRecord, check_types, person_view
from hub.repository import VISIBLE_TOTAL_UP_TO, Repository
from projections.timeline import KINDS

log = logging.getLogger("hub.api.everything")
router = APIRouter()

DEFAULT_COUNT = 1000
MAX_COUNT = 5000
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,128}$")
ACTREASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACCESS_SYSTEM = "https://fhir-region-hub.example/CodeSystem/shared-record-access"
_PARAMS_EVERYTHING = {"start", "end", "_since", "_type", "_count", "_cursor", "institution",
                      "_format", "_pretty"}
_PARAMS_TIMELINE = {"start", "end", "kind", "_count", "_cursor", "institution", "_format",
                    "_pretty"}


# -- the audit --------------------------------------------------------------------------------------

def audit_event(request: Request, access: str, person: str | list[str] | None,
                patients: list[str],
                outcome: str = "0", description: str | None = None,
                purpose: str | None = None) -> dict:
    """The AuditEvent of one read of a shared record."""
    recorded, _ = now_instant()
    entities: list[dict] = []
    role_patient = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                    "display": "Patient"}
    for one in ([person] if isinstance(person, str) else person or []):
        entities.append({"what": {"reference": f"Person/{one}"},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/"
                                  "audit-entity-type", "code": "1", "display": "Person"},
                         "role": role_patient})
    for p in patients:
        entities.append({"what": {"reference": p},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/"
                                  "audit-entity-type", "code": "1", "display": "Person"},
                         "role": role_patient})
    query = audited_query(request)
    entities.append({"type": {"system": "http://terminology.hl7.org/CodeSystem/"
                              "audit-entity-type", "code": "2", "display": "System Object"},
                     "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                              "code": "24", "display": "Query"},
                     "query": base64.b64encode(query.encode("utf-8")[:4096]).decode("ascii")})
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                             "extra-security-role-type", "code": "humanuser",
                             "display": "human user"}]},
        # the token's subject and issuer (X-Hub-User without access control)
        "who": agent_who(actor_of(request)),
        "requestor": True,
    }
    if request.client is not None and request.client.host:
        agent["network"] = {"address": request.client.host[:64], "type": "2"}
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                 "display": "Patient Record"},
        "subtype": [{"system": ACCESS_SYSTEM, "code": access}],
        "action": "R" if access in ("person-read", "person-search") else "E",
        "recorded": recorded,
        "outcome": outcome,
    }
    if description:
        out["outcomeDesc"] = description[:512]
    if purpose:
        out["purposeOfEvent"] = [{"coding": [{"system": ACTREASON, "code": purpose}]}]
    out["agent"] = [agent]
    out["source"] = {"observer": {"display": "fhir-region-hub"},
                     "type": [{"system": "http://terminology.hl7.org/CodeSystem/"
                               "security-source-type", "code": "4",
                               "display": "Application Server"}]}
    out["entity"] = entities
    return out


async def audited(request: Request, access: str, answer: Callable[[str | None], Any],
                  scope_of: Callable[[Any], tuple[Any, list[str]]],
                  asked: tuple[Any, list[str]], action: Action | None = None) -> Any:
    """Check ``action`` with the access policy and run ``answer`` (in a thread), then write the
    AuditEvent and wait for its commit.

    ``scope_of(result)`` names the person and Patients read; ``asked`` what a failed request
    named. A refused read (4xx), by the policy or by ``answer``, is audited too, with outcome 4,
    and then answered."""
    purpose = purpose_of(request)
    writer: AuditWriter = request.app.state.audit
    try:
        if action is not None:
            repository(request).authorize(context_of(request), action)
        result = await run_in_threadpool(answer, purpose)
    except FhirError as e:
        person, patients = asked
        await run_in_threadpool(writer.write, audit_event(
            request, access, person, patients, "4",
            e.issues[0].diagnostics if e.issues else None, purpose))
        raise
    person, patients = scope_of(result)
    await run_in_threadpool(writer.write, audit_event(request, access, person, patients, "0",
                                                      purpose=purpose))
    return result


# -- parameters -------------------------------------------------------------------------------------

def _single(request: Request, allowed: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in request.query_params.multi_items():
        if k not in allowed:
            raise bad_request(f"Unknown parameter {k[:40]!r}; use " + ", ".join(sorted(allowed)))
        if len(v) > 1024:
            raise bad_request(f"{k} is too long")
        if k in out and k != "kind":
            raise bad_request(f"{k} is given more than once")
        out[k] = f"{out[k]},{v}" if k in out else v
    return out


def _count(params: dict[str, str]) -> int:
    raw = params.get("_count")
    if raw is None:
        return DEFAULT_COUNT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_COUNT:
        raise bad_request(f"_count must be a whole number from 1 to {MAX_COUNT}")
    return int(raw)


def _instant(raw: str, name: str, end: bool = False) -> int:
    try:
        lo, hi = parse_range(raw.strip())
    except ValueError:
        raise bad_request(f"{name} must be a FHIR date or dateTime, not {raw[:40]!r}") from None
    return hi if end else lo


def _id(rid: str, rtype: str) -> str:
    if not _ID.match(rid):
        raise bad_request(f"{rid[:40]!r} is not a valid FHIR id")
    return rid


def _shared(request: Request) -> SharedRecord:
    shared = getattr(request.app.state, "shared_record", None)
    if shared is None:
        raise FhirError(503, "transient", "The master patient index is not running")
    return shared


def _scope(shared: SharedRecord, repo: Repository, ctx: Context, rtype: str, rid: str,
           institution: str | None) -> Scope:
    """The record of ``rtype/rid``, once the caller may read it: what a read of that Patient
    or Person answers (404 unknown, 403 not shown, 410 deleted) is the answer here too, else
    the records of its person's other Patients would tell of a link to one the caller may not
    see."""
    if rtype == "Person":
        shared.identity.sync()

        def seen(t: str, i: str, body: bytes) -> bool:
            return bool(repo.shown(ctx, [(t, i, body)]))
        person_view(shared.identity, shared.store, rid, seen)
        scope = shared.scope_of_person(rid, institution)
        if scope.person is not None and scope.person != rid:  # merged: the survivor's record
            person_view(shared.identity, shared.store, scope.person, seen)
        return scope
    stored = repo.latest(ctx, "Patient", rid)
    if stored is None:
        repo.require(ctx, "Patient", rid)  # unknown, or not shown
    elif stored.topic.endswith("Deleted"):  # shown: its deletion too, as a read tells it
        raise gone(f"Patient/{rid} was deleted (version {stored.originator_version})")
    return shared.scope_of_patient(rid, institution)


def _named(scope: Scope, rtype: str, rid: str, entries: Sequence[tuple[str, str, bytes]]
           ) -> tuple[Any, list[str]]:
    """The person and the Patients an answer's AuditEvent names: the Patient asked for (which
    the caller may read), and those it handed out (a resource about each, or the Patient
    itself); not every Patient of the person, some hidden."""
    patients: dict[str, None] = {f"Patient/{rid}": None} if rtype == "Patient" else {}
    for rtype, rid, body in entries:
        for p in patients_in(rtype, rid, body):
            patients[p] = None
    return scope.person, list(patients)


UNDATED_EXT = "https://fhir-region-hub.example/StructureDefinition/timeline-undated"


def _bundle(entries: list[tuple[str, str, bytes]], base: str, links: list[dict],
            total: int | None = None,
            referenced: Sequence[tuple[str, str, bytes]] = ()) -> dict:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        out["total"] = total
    out["link"] = links
    found = [(rt, rid, body, "match") for rt, rid, body in entries]
    found += [(rt, rid, body, "include") for rt, rid, body in referenced]
    if found:
        out["entry"] = [{"fullUrl": f"{base}/{rt}/{rid}", "resource": orjson.Fragment(body),
                         "search": {"mode": mode}} for rt, rid, body, mode in found]
    return out


def _cursor_int(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise bad_request("_cursor is not one this server gave")
    return int(raw)


def timeline_cursor(raw: str | None) -> tuple[int, str, str] | None:
    """The position a timeline cursor names (time, type, id), opened; a 400 if it is none this
    server gave."""
    if raw is None:
        return None
    try:
        t, rtype, rid = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(t, int) or not isinstance(rtype, str) or not isinstance(rid, str):
            raise ValueError
        return t, rtype, rid
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise bad_request("_cursor is not one this server gave") from None


def encode_timeline_cursor(cur: tuple[int, str, str]) -> str:
    """A timeline position as the text a cursor seals (the API's and the console's pages)."""
    return base64.urlsafe_b64encode(orjson.dumps(list(cur))).decode().rstrip("=")


# -- routes -----------------------------------------------------------------------------------------

async def _everything(request: Request, rtype: str, rid: str,
                      posted: dict[str, str] | None = None) -> Response:
    check_format(request)
    params = _single(request, _PARAMS_EVERYTHING)
    if posted is not None:  # POST: the body's parameters, and the URL's (_format) beside them
        both = set(posted) & set(params)
        if both:
            raise bad_request(f"{sorted(both)[0]} is given in the URL and in the body")
        params.update(posted)
    _id(rid, rtype)
    count = _count(params)
    since = _instant(params["_since"], "_since") if "_since" in params else None
    # care dates (R4's start and end): a date is its whole period, end=2024 ends with 2024
    window = (_instant(params["start"], "start") if "start" in params else None,
              _instant(params["end"], "end", end=True) if "end" in params else None)
    types = check_types(params.get("_type"))
    # sealed, as every page link is: a cursor a client edits (another position) is refused
    tokens = page_tokens(request.app.state.settings.data_dir)
    after = _cursor_int(tokens.open(params["_cursor"])) if "_cursor" in params else None
    institution = params.get("institution")
    shared = _shared(request)
    base = base_url(request, request.app.state.settings.base_url)

    ctx, repo = context_of(request), repository(request)

    def answer(_purpose):
        scope = _scope(shared, repo, ctx, rtype, rid, institution)
        def shown(entries):
            return repo.shown(ctx, entries)
        entries, nxt, total, referenced = shared.everything(scope, since, types, count, after,
                                                            base, shown, window)
        referenced = repo.shown(ctx, referenced)
        if total and repo.may_hide(ctx):  # the total of what this caller sees, or none:
            # counted on the first page only (each resource read), not again on every page
            total = len(shared.everything(scope, since, types, total, None, base, shown,
                                          window)[0]) \
                if total <= VISIBLE_TOTAL_UP_TO and after is None else None
        path = f"{base}/{rtype}/{rid}/$everything"
        # the pages of a POST are GETs with its parameters in the URL
        plist = [(k, v) for k, v in params.items() if k != "_cursor"]
        links = [{"relation": "self", "url": link(path, list(params.items()))}]
        if nxt is not None:
            links.append({"relation": "next", "url": link(path, plist,
                                                          _cursor=tokens.seal(str(nxt)))})
        return _named(scope, rtype, rid, [*entries, *referenced]), _bundle(entries, base, links, total,
                                                                referenced)

    asked = (rid, []) if rtype == "Person" else (None, [f"Patient/{rid}"])
    _, body = await audited(request, "everything", answer, lambda r: r[0], asked,
                            Action("operation", rtype, rid, "$everything"))
    return fhir_response(body, request=request)


async def _timeline(request: Request, rtype: str, rid: str) -> Response:
    check_format(request)
    params = _single(request, _PARAMS_TIMELINE)
    _id(rid, rtype)
    count = _count(params)
    start = _instant(params["start"], "start") if "start" in params else None
    end = _instant(params["end"], "end", end=True) if "end" in params else None
    kinds = None
    if "kind" in params:
        kinds = sorted({k.strip() for k in params["kind"].split(",") if k.strip()})
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise bad_request(f"kind must be among {', '.join(KINDS)}")
    tokens = page_tokens(request.app.state.settings.data_dir)
    after = timeline_cursor(tokens.open(params["_cursor"])) if "_cursor" in params else None
    institution = params.get("institution")
    shared = _shared(request)
    base = base_url(request, request.app.state.settings.base_url)

    ctx, repo = context_of(request), repository(request)

    def answer(_purpose):
        scope = _scope(shared, repo, ctx, rtype, rid, institution)
        undated: set[tuple[str, str]] = set()
        entries, nxt = shared.timeline(scope, start, end, kinds, count, after, undated)
        entries = repo.shown(ctx, entries)
        path = f"{base}/{rtype}/{rid}/$timeline"
        plist = [(k, v) for k, v in request.query_params.multi_items() if k != "_cursor"]
        links = [{"relation": "self", "url": link(path, list(request.query_params.multi_items()))}]
        if nxt is not None:
            links.append({"relation": "next", "url": link(path, plist,
                                                            _cursor=tokens.seal(encode_timeline_cursor(nxt)))})
        body = _bundle(entries, base, links)
        # placed by when it was written: no clinical time of its own (a visit without its
        # PV1-44); the reader must not take its place for when it happened
        undated_urls = {f"{base}/{rt}/{rid}" for rt, rid in undated}
        for entry in body.get("entry", ()):
            if entry["fullUrl"] in undated_urls:
                entry["extension"] = [{"url": UNDATED_EXT, "valueBoolean": True}]
        return _named(scope, rtype, rid, entries), body

    asked = (rid, []) if rtype == "Person" else (None, [f"Patient/{rid}"])
    _, body = await audited(request, "timeline", answer, lambda r: r[0], asked,
                            Action("operation", rtype, rid, "$timeline"))
    return fhir_response(body, request=request)


@router.get("/fhir/Patient/{rid}/$everything", name="patient-everything")
async def patient_everything(request: Request, rid: str) -> Response:
    return await _everything(request, "Patient", rid)


@router.get("/fhir/Person/{rid}/$everything", name="person-everything")
async def person_everything(request: Request, rid: str) -> Response:
    return await _everything(request, "Person", rid)


async def _posted(request: Request) -> dict[str, str]:
    values = await read_parameters(request, ("valueDate", "valueDateTime", "valueInstant",
                                             "valueCode", "valueString", "valueInteger",
                                             "valuePositiveInt", "valueUnsignedInt"),
                                   "$everything's")
    unknown = sorted(set(values) - _PARAMS_EVERYTHING)
    if unknown:
        raise bad_request(f"Unknown parameter {unknown[0][:40]!r}; use "
                          + ", ".join(sorted(_PARAMS_EVERYTHING)))
    return {k: str(v) for k, v in values.items()}


@router.post("/fhir/Patient/{rid}/$everything", name="patient-everything-post")
async def patient_everything_post(request: Request, rid: str) -> Response:
    return await _everything(request, "Patient", rid, await _posted(request))


@router.post("/fhir/Person/{rid}/$everything", name="person-everything-post")
async def person_everything_post(request: Request, rid: str) -> Response:
    return await _everything(request, "Person", rid, await _posted(request))


@router.get("/fhir/Patient/{rid}/$timeline", name="patient-timeline")
async def patient_timeline(request: Request, rid: str) -> Response:
    return await _timeline(request, "Patient", rid)


@router.get("/fhir/Person/{rid}/$timeline", name="person-timeline")
async def person_timeline(request: Request, rid: str) -> Response:
    return await _timeline(request, "Person", rid)
