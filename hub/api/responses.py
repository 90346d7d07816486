"""HTTP details of FHIR: formats, Prefer, ETag/If-Match, building responses from stored bytes."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import cast

import orjson
from fastapi import Request
from fastapi.responses import Response

from hub.api import fhirxml
from hub.core import jsontext
from hub.core.errors import FhirError, Issue, operation_outcome
from hub.core.fhirtime import http_date, parse_range
from hub.core.ingest import ANY_VERSION, IfMatch

FHIR_JSON = fhirxml.FHIR_JSON
# FHIR says ids are at most 64 characters, but official R4B examples carry longer ones (68);
# like HAPI (100) the hub is lenient on length, strict on the characters.
# R4 id: letters, digits, '-' and '.'; not dots alone ('.', '..' name no resource in a URL:
# clients normalise Patient/.. away, so one written so could never be read)
ID_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9\-.]{1,128}$")
_OPAQUE = re.compile(r'^\s*(?:W/)?"(?!\d+")[!#-~]*"\s*$')  # a quoted tag that is no version
_ETAG = re.compile(r'^\s*(?:(?:W/)?"(\d+)"|(\d+))\s*$')  # W/"3", "3" or a bare 3


def check_format(request: Request) -> None:
    """FHIR JSON or FHIR XML; say so clearly when something else is asked for."""
    if fhirxml.answer_type(request) is not None:
        return
    fmt = request.query_params.get("_format")
    if fmt is not None:
        raise FhirError(406, "not-supported", f"Unknown _format {fmt!r}; json or xml")
    raise FhirError(406, "not-supported",
                    f"Cannot answer in {request.headers.get('accept', '')!r}; this server speaks "
                    "application/fhir+json and application/fhir+xml")


def check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    base = ctype.split(";")[0].strip().lower()
    if base not in ("application/fhir+json", "application/json", "application/json+fhir") and \
            base not in fhirxml.XML_FORMATS:
        raise FhirError(
            415, "not-supported",
            f"Content-Type {ctype or '(none)'!r} is not supported; send application/fhir+json "
            "or application/fhir+xml",
        )
    for param in ctype.split(";")[1:]:
        name, _, value = param.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"').strip()
        if name == "fhirversion" and not value.startswith(("4.0", "4.3")):
            raise FhirError(415, "not-supported", f"A body of FHIR {value[:20]!r} is not "
                            "read here: this server takes FHIR R4 (fhirVersion=4.0)")
        if name == "charset" and value.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise FhirError(415, "not-supported", f"charset {value[:40]!r}: FHIR bodies are "
                            "UTF-8 (RFC 8259, FHIR http.html#mime-type)")


def pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "false").lower() == "true"


def prefer_return(request: Request) -> str:
    # RFC 7240: preferences are separated by commas, a preference's parameters by semicolons
    for part in re.split(r"[,;]", request.headers.get("prefer", "")):
        part = part.strip()
        if part.startswith("return="):
            value = part.split("=", 1)[1].strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def prefer_strict(request: Request) -> bool:
    return "handling=strict" in request.headers.get("prefer", "").replace(" ", "")


def parse_etag(value: str | None, header: str = "If-Match") -> int | None:
    if value is None:
        return None
    m = _ETAG.match(value)
    if not m:
        raise FhirError(400, "invalid", f"{header} {value!r} is not a version ETag like W/\"3\"")
    return int(m.group(1) or m.group(2))


def parse_if_match(value: str | None, header: str = "If-Match") -> IfMatch:
    """An If-Match version; ``*`` (RFC 9110 13.1.1: true when a current representation exists)
    is ``ANY_VERSION``, which the hub holds true of a resource that exists and is not deleted;
    a list of ETags (``W/"1", W/"2"``, RFC 9110 13.1.1) the versions it names, any of which
    matches."""
    if value is None:
        return None
    if value.strip() == "*":
        return ANY_VERSION
    tags = [tag for tag in value.split(",") if tag.strip()]  # a list's empty items are none
    if not tags:
        return parse_etag(value, header)  # no tag at all: a 400
    versions = {cast(int, parse_etag(tag, header)) for tag in tags}
    return versions.pop() if len(versions) == 1 else tuple(sorted(versions))


def create_only(value: str | None, where: str | None = None) -> bool:
    """Does a PUT's If-None-Match ask that it only create (``*``, RFC 9110 13.1.2)? Entity
    tags there (which a read's cache sends) are refused rather than ignored: the hub does not
    judge them on a write."""
    if value is None:
        return False
    if value.strip() == "*":
        return True
    raise FhirError(400, "not-supported", f"If-None-Match {value[:100]!r} on a write: only * "
                    "(create only, never over a current resource) is supported", where)


def none_match(value: str, version: int) -> bool:
    """Does an If-None-Match value (``*`` or a list of ETags) match this version? (RFC 9110 13.1.2)"""
    if value.strip() == "*":
        return True
    # an entity tag this server never gave (an opaque "abc" a cache holds) matches nothing: not
    # a 400; what is no entity tag at all still is
    return any(parse_etag(v, "If-None-Match") == version for v in value.split(",")
               if not _OPAQUE.match(v))


def client_holds(if_none_match: str | None, if_modified_since: str | None, version: int,
                 last_updated: str | None, *, since_instant: bool = False) -> bool:
    """Does a conditional read's client hold this version already (304)? ``If-None-Match``
    decides when given; ``If-Modified-Since`` only without it (RFC 9110 13.2.2). A Bundle
    entry's ``ifModifiedSince`` is a FHIR instant (``since_instant``), the header an HTTP-date."""
    if if_none_match:
        return none_match(if_none_match, version)
    if not (if_modified_since and last_updated):
        return False
    if since_instant:
        return not_modified_since_instant(if_modified_since, last_updated)
    return not_modified_since(if_modified_since, last_updated)


def not_modified_since(value: str, last_updated: str) -> bool:
    """If-Modified-Since (RFC 9110 13.1.3): was the version last modified at or before the date
    the client holds? Second resolution, as Last-Modified; a value that is no HTTP-date, or a
    date later than now (a client's clock ahead, or a typo), is ignored: the full answer."""
    try:
        since = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:  # "-0000": no zone said; an HTTP-date is GMT
        since = since.replace(tzinfo=UTC)
    if since > datetime.now(UTC):
        return False
    return parse_range(last_updated)[0] // 1_000_000 <= int(since.timestamp())


def not_modified_since_instant(value: str, last_updated: str) -> bool:
    """A Bundle entry's ``ifModifiedSince`` (R4: an instant): was the version last modified at
    or before it? Compared to the microsecond, as ``lastUpdated`` keeps milliseconds; an instant
    later than now is ignored, as the header's date is."""
    try:
        since = parse_range(value.strip())[0]
    except ValueError:
        return False
    if since > int(datetime.now(UTC).timestamp() * 1_000_000):
        return False
    return parse_range(last_updated)[0] <= since


def etag(version: int) -> str:
    return f'W/"{version}"'


def view_etag(body: dict) -> str:
    """The weak ETag of a view made from several resources (a golden Person): its own version
    and a hash of what it shows, as its Patients' identifiers and demographics change it
    without a version of its own."""
    digest = hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
                             digest_size=8).hexdigest()
    return f'W/"{(body.get("meta") or {}).get("versionId", "0")}.{digest}"'


def view_tag_matches(value: str, tag: str) -> bool:
    """If-None-Match (``*`` or a list of ETags, weak comparison) against a view's ETag."""
    opaque = tag.removeprefix("W/")
    return any(v.strip() == "*" or v.strip().removeprefix("W/") == opaque
               for v in value.split(","))


def fhir_response(body: bytes | dict | None, status: int = 200, *, request: Request | None = None,
                  headers: dict[str, str] | None = None) -> Response:
    """Answer with FHIR JSON; stored bytes pass through untouched unless ``_pretty`` asks otherwise.
    Asked for XML (``hub.api.fhirxml``), the answer is written out as FHIR XML."""
    answer = (fhirxml.answer_type(request) or FHIR_JSON) if request is not None else FHIR_JSON
    if body is not None and "xml" in answer:
        raw = orjson.dumps(body) if isinstance(body, dict) else body
        return Response(content=fhirxml.json_to_xml(raw, request is not None and pretty(request)),
                        status_code=status,
                        media_type=answer, headers=headers)
    if isinstance(body, dict):
        body = orjson.dumps(body)
    if body is not None and request is not None and pretty(request):
        # read back and written again: stored resources spliced into a Bundle as they are
        # (orjson.Fragment) are indented too, each number kept as written
        body = orjson.dumps(jsontext.loads_exact(body), option=orjson.OPT_INDENT_2)
    return Response(content=body or b"", status_code=status, media_type=answer if body else None,
                    headers=headers)


def version_headers(base: str, rtype: str, rid: str, version: int, last_updated: str,
                    location: bool = False) -> dict[str, str]:
    out = {"ETag": etag(version), "Last-Modified": http_date(last_updated)}
    if location:
        out["Location"] = f"{base}/{rtype}/{rid}/_history/{version}"
    return out


def outcome_response(issues: list[Issue], status: int, request: Request | None = None) -> Response:
    return fhir_response(operation_outcome(issues), status, request=request)


def base_url(request: Request, configured: str | None) -> str:
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir"
