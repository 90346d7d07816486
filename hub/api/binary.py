"""Binary in its native form (R4 http.html#binary).

A Binary is stored as FHIR (``contentType``, base64 ``data``, ``securityContext``) and read and
written as FHIR when a FHIR format is asked for or sent. Otherwise it is the content itself:

- a read or vread whose ``Accept`` names no FHIR format (``application/pdf``, ``image/png``; not
  ``*/*``, which is FHIR JSON here as for every type) answers the decoded ``data`` with the
  Binary's ``contentType`` (an ``ETag`` and ``Last-Modified`` as a FHIR read has, and its
  ``securityContext`` in ``X-Security-Context``), sandboxed: a browser runs none of it;
- a create or update of a body whose ``Content-Type`` is no FHIR format stores a Binary of that
  content type holding the body (``X-Security-Context``: the reference it takes as its
  ``securityContext``).

Access control, consent and audit are the FHIR read's and write's: only the bytes differ.
"""

from __future__ import annotations

import base64
import binascii

import orjson
from fastapi import Request
from fastapi.responses import Response

from hub.api import fhirxml
from hub.core.errors import FhirError, bad_request

# media types a body is taken as FHIR in (as check_content_type takes them)
_FHIR_BODIES = {"application/fhir+json", "application/json", "application/json+fhir",
                *fhirxml.XML_FORMATS}
# what a contentType or a security context may be: a media type, a reference
_MEDIA_MAX = 200


def wants_native(request: Request, rtype: str) -> bool:
    """A Binary read asking for no FHIR format (and no ``_format``): its content."""
    return rtype == "Binary" and "_format" not in request.query_params and \
        bool(request.headers.get("accept", "").strip()) and fhirxml.answer_type(request) is None


def sends_native(request: Request, rtype: str) -> bool:
    """A Binary write whose body is no FHIR resource but the content itself."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return rtype == "Binary" and bool(ctype) and ctype not in _FHIR_BODIES


def native_response(resource: bytes, headers: dict[str, str], status: int = 200) -> Response:
    """The stored Binary's content, with its own media type."""
    d = orjson.loads(resource)
    try:
        content = base64.b64decode(d.get("data", ""), validate=True)
    except (binascii.Error, ValueError):  # validated on write; never expected
        raise FhirError(500, "exception", "The stored Binary's data is not base64") from None
    # stored content of any type, served from the hub's own origin (the console's too): a
    # browser may neither run it (HTML, SVG) nor guess another type for it
    out = {**headers, "Content-Security-Policy": "sandbox; default-src 'none'",
           "X-Content-Type-Options": "nosniff"}
    if isinstance(d.get("securityContext"), dict) and d["securityContext"].get("reference"):
        out["X-Security-Context"] = d["securityContext"]["reference"]
    return Response(content, status, headers=out, media_type=d.get("contentType"))


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
    if len(value) > _MEDIA_MAX or not value.isascii() or not value.isprintable():
        raise bad_request(f"The {name} header is {what}")
    return value
