"""The shared record: find a person, read their timeline across institutions with a purpose."""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response
from lxml import etree
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from fhir_mapping.base import MappingError
from fhir_mapping.xmlsafe import parse_xml
from hub.access.policy import EMERGENCY
from hub.api.caller import PURPOSES, actor_of, authorize, context_of, repository
from hub.api.everything import audit_event, encode_timeline_cursor, timeline_cursor
from hub.console.common import btg_value, page, router, say, signed_by_session
from hub.core import jsontext
from hub.core.access import Action, patients_in
from hub.core.errors import FhirError
from hub.core.events import resource_bytes
from hub.core.pagetokens import page_tokens
from hub.core.resource import RESOURCE_TYPES
from hub.mpi import qr
from projections.timeline import KINDS

# -- shared record ----------------------------------------------------------------------------

def _looks_like_identifier(q: str) -> bool:
    return bool(re.fullmatch(r"[\w.:|/-]+", q)) and any(ch.isdigit() for ch in q)


def _criterion(q: str) -> tuple[str, str]:
    """What the finder's text is: a health card's QR payload (its card number; an expired or
    malformed one is refused as such), an identifier, or a name."""
    if re.fullmatch(r"[A-Za-z0-9-]{1,64}:[01](:\d{1,14})?", q):
        try:
            card = qr.parse(q)
        except qr.QrError as e:
            raise FhirError(400, "invalid", f"Health card QR payload: {e}") from None
        return "identifier", f"{qr.HEALTH_CARD_SYSTEM}|{card.card_id}"
    return ("identifier" if _looks_like_identifier(q) else "name"), q


@router.api_route("/console/record", methods=["GET", "HEAD"], name="console-record",
                  include_in_schema=False)
def record_page(request: Request) -> Response:
    """Find a person by name or any identifier: the Patients the search finds (a search of
    Patients by the logged-in person: audited like the API's)."""
    ctx = authorize(request, Action("operation", None, None, "$console-record"))
    q = request.query_params.get("q", "").strip()[:300]
    patients = []
    if q:
        repo = repository(request)
        params = [_criterion(q), ("_count", "20")]
        base = request.app.state.settings.fhir_base
        plan = repo.plan(ctx, "Patient", params, True, base)
        found = repo.search(ctx, plan, 20, "none", base, includes=False)
        for row in found.page.rows:
            body = found.bodies.get((row.rtype, row.rid))
            if body is None:
                continue  # not shown to this reader
            p: dict[str, Any] = orjson.loads(body[1].partition(b"\n")[2])  # header, JSON
            name: dict[str, Any] = (p.get("name") or [{}])[0]
            org: dict[str, Any] = p.get("managingOrganization") or {}
            patients.append({
                "id": row.rid, "gender": p.get("gender", ""), "birthDate": p.get("birthDate", ""),
                "name": name.get("text") or "".join([name.get("family", ""),
                                                     *(g for g in name.get("given", [])
                                                       if isinstance(g, str))]) or row.rid,
                "organization": org.get("display") or org.get("reference", "")})
    return page(request, "record.html", "record", q=q, patients=patients)


def _purpose(request: Request) -> str:
    """The purpose of use the reader gave (``""``: none yet, to be asked), made the request's
    actor's, so every read it does is checked and audited with it. Breaking the glass is the
    reader's own choice on this console's form: an emergency purpose counts only with the
    session's value (``btg``: made from the session's secret, not its CSRF value, and left out
    of what the audit records), which the form and the pages' own links carry; a link from
    anywhere else (a reference a feed wrote, a message) asks again."""
    purpose = request.query_params.get("purpose", "").upper()
    if purpose and purpose not in PURPOSES:
        raise FhirError(400, "invalid", "purpose is a v3 PurposeOfUse code (TREAT, ETREAT)")
    if purpose in EMERGENCY and not signed_by_session(request, "break-the-glass",
                                                      request.query_params.get("btg", "")):
        return ""
    if purpose:
        request.state.actor = replace(actor_of(request), purpose=purpose)
    return purpose


def _purpose_query(request: Request, purpose: str) -> str:
    """The query that keeps ``purpose`` on the links of a page (with the session's value when
    it breaks the glass)."""
    if purpose in EMERGENCY:
        return urlencode({"purpose": purpose, "btg": btg_value(request)})
    return urlencode({"purpose": purpose})


_PATIENT_REF = re.compile(r"Patient/([A-Za-z0-9\-.]{1,128})(?:/_history/\d{1,18})?")


def _patient_of(d: dict[str, Any]) -> str | None:
    """The id of the Patient a resource is of, where its reference is a plain local one (a
    link is built from it: nothing else a feed wrote goes into one)."""
    for key in ("subject", "patient"):
        ref = d.get(key)
        if isinstance(ref, dict):
            m = _PATIENT_REF.fullmatch(str(ref.get("reference") or ""))
            if m:
                return m.group(1)
    return None


TIMELINE_PAGE = 200


@router.api_route("/console/record/Patient/{rid}", methods=["GET", "HEAD"],
                  name="console-record-timeline", include_in_schema=False)
async def record_timeline(request: Request, rid: str) -> Response:
    """A person's timeline across institutions, once the reader gave a purpose of use (asked
    first; break the glass is one); the read is audited as the API's $timeline is."""
    authorize(request, Action("operation", None, None, "$console-record"))
    purpose = _purpose(request)
    if not purpose:
        return page(request, "timeline.html", "record", who=f"Patient/{rid}", purpose="")
    ctx = context_of(request)
    kind = request.query_params.get("kind", "")
    kind = kind if kind in KINDS else ""
    since = request.query_params.get("since", "")[:10]
    start = None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", since):
        try:
            start = int(datetime.fromisoformat(since).replace(tzinfo=UTC).timestamp() * 1_000_000)
        except ValueError:  # 2024-13-45, year 0
            raise FhirError(400, "invalid", f"since {since!r} is no date") from None
    # the next page's place, sealed as the API's timeline links are: the last row read may be
    # one the reader is not shown
    tokens = page_tokens(request.app.state.settings.data_dir)
    cursor = request.query_params.get("cursor", "")
    after = timeline_cursor(tokens.open(cursor)) if cursor else None
    shared = request.app.state.shared_record
    repo = repository(request)

    def answer() -> tuple[Any, list, list, Any]:
        repo.authorize(ctx, Action("operation", "Patient", rid, "$timeline"))
        # as a read of the Patient answers (403 not shown): else the records of its person's
        # other Patients would tell of a link to one the reader may not see
        repo.require(ctx, "Patient", rid)
        scope = shared.scope_of_patient(rid, None)
        # the newest first (what a clinician reads first), a page at a time
        entries, nxt = shared.timeline(scope, start, None, [kind] if kind else None,
                                       TIMELINE_PAGE, after, newest_first=True)
        # the records counted are those the reader may see: a count of the others would tell
        # that a record a consent hides exists
        seen = repo.latest_many(ctx, "Patient", [p.split("/", 1)[1] for p in scope.patients])
        entries = repo.shown(ctx, entries)
        return scope, entries, [p for p in scope.patients if p.split("/", 1)[1] in seen], nxt

    writer = request.app.state.audit
    try:
        scope, entries, patients, nxt = await run_in_threadpool(answer)
    except FhirError as e:
        await run_in_threadpool(writer.write, audit_event(
            request, "timeline", None, [f"Patient/{rid}"], "4",
            e.issues[0].diagnostics if e.issues else None, purpose))
        raise
    # the Patient asked for and those whose records the page shows, not every one of the
    # person's
    handed = dict.fromkeys([f"Patient/{rid}", *(p for e in entries for p in patients_in(*e))])
    await run_in_threadpool(writer.write, audit_event(
        request, "timeline", scope.person, list(handed), "0", purpose=purpose))
    purpose_q = _purpose_query(request, purpose)
    filters = urlencode({k: v for k, v in (("kind", kind), ("since", since)) if v})
    first_q = "&".join(q for q in (purpose_q, filters) if q)
    older_q = f"{first_q}&{urlencode({'cursor': tokens.seal(encode_timeline_cursor(nxt))})}" \
        if nxt is not None else ""
    return page(request, "timeline.html", "record", who=f"Patient/{rid}", purpose=purpose,
                 purpose_q=purpose_q, patients=patients, kinds=KINDS, kind=kind, since=since,
                 entries=[_timeline_row(e) for e in entries], first_q=first_q,
                 older_q=older_q, paged=after is not None)


_WHEN = ("effectiveDateTime", "authoredOn", "recordedDate", "onsetDateTime", "performedDateTime",
         "issued", "date", "occurrenceDateTime")


def _timeline_row(entry: tuple[str, str, bytes]) -> dict[str, str]:
    rtype, _, body = entry
    d = orjson.loads(body)
    when = next((d[k] for k in _WHEN if isinstance(d.get(k), str)), "") or \
        (d.get("period") or d.get("effectivePeriod") or {}).get("start", "")
    concept = d.get("code") or d.get("medicationCodeableConcept") or d.get("type") or {}
    if isinstance(concept, list):
        concept = concept[0] if concept else {}
    label = concept.get("text") or next((c.get("display") or c.get("code", "")
                                         for c in concept.get("coding") or []), "")
    if rtype == "Encounter":
        label = (d.get("class") or {}).get("display") or (d.get("class") or {}).get("code", "")
    patient = (d.get("subject") or d.get("patient") or {}).get("reference", "")
    return {"rtype": rtype, "id": entry[1], "when": when,
            "label": label, "patient": patient}


# -- one resource of the record -----------------------------------------------------------------

# what an encounter holds: the resources that name it, by type (searched by ``encounter``)
IN_ENCOUNTER = ("Condition", "Observation", "DiagnosticReport", "MedicationRequest", "Procedure",
                "DocumentReference")
_CDA = etree.XSLT(etree.parse(str(resources.files("hub.console").joinpath("cda.xsl"))),
                  access_control=etree.XSLTAccessControl.DENY_ALL)
_CDA_LOCK = threading.Lock()  # an XSLT object is not to be shared between threads at once


@router.api_route("/console/record/{rtype}/{rid}", methods=["GET", "HEAD"],
                  name="console-record-resource", include_in_schema=False)
async def record_resource(request: Request, rtype: str, rid: str) -> Response:
    """One resource of a person's record, opened from the timeline with the purpose given there:
    its elements; an encounter with what was recorded in it; a report with its results; a CDA
    document rendered. Each resource is read through the repository (checked and audited)."""
    authorize(request, Action("operation", None, None, "$console-record"))
    if rtype not in RESOURCE_TYPES or not re.fullmatch(r"[A-Za-z0-9\-.]{1,128}", rid):
        raise FhirError(404, "not-found", f"No resource {rtype}/{rid}")
    purpose = _purpose(request)
    if not purpose:
        return page(request, "timeline.html", "record", who=f"{rtype}/{rid}", purpose="")
    ctx = context_of(request)
    repo = repository(request)
    base = request.app.state.settings.fhir_base
    labels = {k: say(request, f"cda_{k}") for k in ("patient", "date", "author", "custodian")}

    def answer() -> dict[str, Any]:
        # decimals as written (1.50 mg, not 1.5 mg), as numbers the page shows by their text
        d = jsontext.as_numbers(jsontext.loads_exact(resource_bytes(repo.read(ctx, rtype, rid))))
        out: dict[str, Any] = {"resource": d, "fields": _fields(d), "related": [], "cda": None}
        if rtype == "Encounter":
            for t in IN_ENCOUNTER:
                plan = repo.plan(ctx, t, [("encounter", f"Encounter/{rid}"), ("_count", "50")],
                                 True, base)
                found = repo.search(ctx, plan, 50, "none", base, includes=False)
                for row in found.page.rows:
                    body = found.bodies.get((row.rtype, row.rid))
                    if body is not None:
                        out["related"].append(_timeline_row(
                            (row.rtype, row.rid, body[1].partition(b"\n")[2])))
        elif rtype == "DiagnosticReport":
            for ref in d.get("result") or []:
                t, _, i = str(ref.get("reference", "")).partition("/")
                if t == "Observation" and i:
                    try:
                        o = resource_bytes(repo.read(ctx, t, i))
                    except FhirError:
                        continue  # gone, or not shown to this reader
                    out["related"].append({**_timeline_row((t, i, o)),
                                           "value": _show(_value(jsontext.as_numbers(
                                               jsontext.loads_exact(o))))})
        elif rtype == "DocumentReference":
            out["cda"] = _rendered(repo, ctx, d, labels)
        return out

    shown = await run_in_threadpool(answer)
    return page(request, "resource.html", "record", rtype=rtype, rid=rid, purpose=purpose,
                purpose_q=_purpose_query(request, purpose), back=_patient_of(shown["resource"]),
                **shown)


def _value(d: dict[str, Any]) -> Any:
    return next((v for k, v in d.items() if k.startswith("value")), "")


def _show(v: Any) -> str:
    """An element's value as a person reads it."""
    if isinstance(v, list):
        return "; ".join(_show(x) for x in v)
    if not isinstance(v, dict):
        return str(v)
    if "coding" in v or "text" in v and len(v) <= 2:
        return v.get("text") or "; ".join(
            c.get("display") or f"{c.get('system', '')}|{c.get('code', '')}"
            for c in v.get("coding") or [])
    if "reference" in v or "display" in v and len(v) <= 2:
        return v.get("display") or v.get("reference", "")
    if "value" in v and ("unit" in v or "code" in v):
        return f"{v['value']} {v.get('unit') or v.get('code', '')}".strip()
    if "value" in v and isinstance(v["value"], str):  # an Identifier, a ContactPoint
        return f"{v['value']} ({v['system']})" if v.get("system") else v["value"]
    if "attachment" in v:
        att = v["attachment"]
        return " · ".join(str(att[k]) for k in ("title", "contentType", "url") if att.get(k))
    if "start" in v or "end" in v:
        return f"{v.get('start', '')} – {v.get('end', '')}"
    if "family" in v or "given" in v:
        return v.get("text") or "".join(  # a given name absent (null) beside its extensions
            [v.get("family", ""), *(g for g in v.get("given", []) if isinstance(g, str))])
    return orjson.dumps(jsontext.as_written(v)).decode()[:300]


def _fields(d: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, _show(v)[:1000]) for k, v in d.items()
            if k not in ("resourceType", "id", "meta", "text", "contained")]


def _rendered(repo: Any, ctx: Any, doc: dict[str, Any], labels: dict[str, str]) -> Markup | None:
    """The CDA document a DocumentReference points at (its Binary), rendered; ``None`` if it
    points at none the reader may read."""
    for content in doc.get("content") or []:
        att = content.get("attachment") or {}
        t, _, i = str(att.get("url", "")).partition("/")
        if t != "Binary" or not i or "xml" not in str(att.get("contentType", "xml")):
            continue
        try:
            binary = orjson.loads(resource_bytes(repo.read(ctx, "Binary", i)))
            root = parse_xml(base64.b64decode(binary.get("data", "")))
        except (FhirError, MappingError, ValueError):
            return None
        with _CDA_LOCK:
            html = _CDA(root, **{f"l_{k}": etree.XSLT.strparam(v) for k, v in labels.items()})
        return Markup(str(html))  # noqa: S704  the stylesheet escapes every text it copies
    return None
