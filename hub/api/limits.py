"""Refuse oversized request bodies before reading them whole, and oversized request headers
(pure ASGI middleware).

Headers: uvicorn (h11) holds at most HUB_MAX_HEADER bytes of a request's head while it is still
incomplete (``h11_max_incomplete_event_size``, answered 400), but a head that arrives whole in one
read is parsed whatever its size; here any head over the limit is answered 431."""

from __future__ import annotations

from hub.core.errors import FhirError, Issue, outcome_bytes


class BodyTooLarge(FhirError):
    error_code = "too-large"

    def __init__(self, limit: int):
        super().__init__(413, "too-costly", f"The request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """``answers``: per request path, a function of the limit giving (content type, body) of the
    refusal, for endpoints that do not speak FHIR JSON (``/v3`` answers an HL7 v3 AR)."""

    def __init__(self, app, limit: int, answers: dict | None = None, max_header: int | None = None):
        self.app = app
        self.limit = limit
        self.answers = answers or {}
        self.max_header = max_header

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers", ())
        if self.max_header is not None:
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(name) + len(value) + 4 for name, value in headers)
            if size > self.max_header:
                return await _refuse_headers(send, self.max_header)
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    return await _refuse(send, self.limit, self.answers.get(scope.get("path", "")))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # chunked upload without Content-Length
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


async def _refuse(send, limit: int, answer=None) -> None:
    if answer is not None:
        ctype, body = answer(limit)
    else:
        ctype = b"application/fhir+json; charset=utf-8"
        body = outcome_bytes([Issue("too-costly",
                                    f"The request body exceeds the limit of {limit} bytes")])
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


async def _refuse_headers(send, limit: int) -> None:
    body = outcome_bytes([Issue("too-costly",
                                f"The request line and headers exceed the limit of {limit} bytes "
                                "(HUB_MAX_HEADER)")])
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", b"application/fhir+json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
