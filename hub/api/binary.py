"""Binary in its native form (R4 http.html#binary).

A Binary is stored as FHIR (``contentType``, base64 ``data``, ``securityContext``) and read and
written as FHIR when a FHIR format is asked for or sent. Otherwise it is the content itself:

- a read or vread whose ``Accept`` names no FHIR format (``application/pdf``, ``image/png``; not
  ``*/*`` alone, which is FHIR JSON here as for every type), or ranks the Binary's own type
  above every FHIR one (a browser's ``image/*,*/*;q=0.8``), answers the decoded ``data`` with
  the Binary's ``contentType`` exactly as stored (``application/octet-stream`` for one no header
  can carry), an ``ETag`` and ``Last-Modified`` as a FHIR read has, and its ``securityContext``
  in ``X-Security-Context``; sandboxed: a browser runs none of it;
- a create or update of a body whose ``Content-Type`` is no FHIR format stores a Binary of that
  content type holding the body (``X-Security-Context``: the reference it takes as its
  ``securityContext``).

Access control, consent and audit are the FHIR read's and write's: only the bytes differ.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import Request
from fastapi.responses import Response

from hub.api import fhirxml
from hub.core.errors import FhirError, bad_request
from hub.core.jsontypes import compact_base64

# media types a body is taken as FHIR in (as check_content_type takes them)
_FHIR_BODIES = {"application/fhir+json", "application/json", "application/json+fhir",
                *fhirxml.XML_FORMATS}
# what a contentType or a security context may be: a media type, a reference
_MEDIA_MAX = 200


def may_be_native(request: Request, rtype: str) -> bool:
    """A Binary read that may answer its content (whether it does needs its contentType)."""
    return rtype == "Binary" and "_format" not in request.query_params and \
        bool(request.headers.get("accept", "").strip())


def wants_native(request: Request, content_type: str) -> bool:
    """Whether a Binary read answers its content of ``content_type`` rather than the FHIR
    resource: the ``Accept`` names no FHIR format, or it ranks the content type above every
    FHIR one (RFC 9110 12.5.1: the highest ``q`` of the ranges matching each; ``*/*`` matches
    both; on equal ``q`` a range naming the content type or its type beats ``*/*`` and
    ``application/*`` alone, and otherwise FHIR wins)."""
    if fhirxml.answer_type(request) is None:
        return True
    own = content_type.split(";")[0].strip().lower()
    kind = own.split("/")[0] + "/*"
    native, fhir = (0.0, 0), (0.0, 0)
    for media, q in fhirxml.accept_entries(request.headers.get("accept", "")):
        if q <= 0:
            continue
        if fhirxml.is_fhir_format(media):
            fhir = max(fhir, (q, _specificity(media)))
        if media in (own, kind, "*/*"):
            native = max(native, (q, _specificity(media)))
    return native > fhir


def _specificity(media: str) -> int:
    return 0 if media == "*/*" else 1 if media.endswith("/*") else 2


def served_type(d: dict) -> str:
    """The media type a stored Binary's content is answered with: its ``contentType``, unless
    that could not be sent as a header (a newline, a non-ASCII character): then plain bytes."""
    ctype = d.get("contentType")
    return ctype.strip() if isinstance(ctype, str) and _header_safe(ctype) and ctype.strip() \
        else "application/octet-stream"


def sends_native(request: Request, rtype: str) -> bool:
    """A Binary write whose body is no FHIR resource but the content itself."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return rtype == "Binary" and bool(ctype) and ctype not in _FHIR_BODIES


def native_response(d: dict, headers: dict[str, str], status: int = 200) -> Response:
    """The stored Binary's content, with its own media type (exactly as stored: no charset
    added to a text type, which would relabel a GB18030 text as UTF-8)."""
    data = d.get("data", "")
    try:  # base64 with the whitespace R4 allows in it (checked on write)
        content = base64.b64decode(compact_base64(data) if isinstance(data, str) else "",
                                   validate=True)
    except (binascii.Error, ValueError):  # stored before writes were checked: its FHIR form
        raise FhirError(406, "not-supported", "The stored Binary's data is not base64, so its "
                        "content cannot be given; read it as FHIR (Accept: application/fhir+json) "
                        "and write it again with valid data") from None
    # stored content of any type, served from the hub's own origin (the console's too): a
    # browser may neither run it (HTML, SVG) nor guess another type for it
    out = {**headers, "Content-Security-Policy": "sandbox; default-src 'none'",
           "X-Content-Type-Options": "nosniff"}
    context = d.get("securityContext")
    reference = context.get("reference") if isinstance(context, dict) else None
    if isinstance(reference, str) and reference and _header_safe(reference):
        out["X-Security-Context"] = reference  # one that cannot be a header is left out
    out["Content-Type"] = served_type(d)
    return Response(content, status, headers=out)


def native_resource(request: Request, body: bytes, rid: str | None = None) -> dict:
    """The Binary a native body is stored as."""
    if not body:
        raise bad_request("The request body is empty")
    d: dict = {"resourceType": "Binary",
               "contentType": _header(request, "content-type", "no media type a Binary can keep"),
               "data": base64.b64encode(body).decode("ascii")}
    if rid is not None:
        d["id"] = rid
    context = _header(request, "x-security-context", "no reference")
    if context:
        d["securityContext"] = {"reference": context}
    return d


def _header(request: Request, name: str, what: str) -> str:
    value = request.headers.get(name, "").strip()
    if len(value) > _MEDIA_MAX or not _header_safe(value):
        raise bad_request(f"The {name} header is {what}")
    return value


def _header_safe(value: str) -> bool:
    """Printable ASCII: what an HTTP header value can carry as it is."""
    return value.isascii() and value.isprintable()
