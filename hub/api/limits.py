"""Refuse oversized request bodies before reading them whole (pure ASGI middleware)."""

from __future__ import annotations

from hub.core.errors import FhirError, Issue, outcome_bytes


class BodyTooLarge(FhirError):
    error_code = "too-large"

    def __init__(self, limit: int):
        super().__init__(413, "too-costly", f"The request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """``answers``: per request path, a function of the limit giving (content type, body) of the
    refusal, for endpoints that do not speak FHIR JSON (``/v3`` answers an HL7 v3 AR)."""

    def __init__(self, app, limit: int, answers: dict | None = None):
        self.app = app
        self.limit = limit
        self.answers = answers or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
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
