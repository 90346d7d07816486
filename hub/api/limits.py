"""Refuse oversized request bodies before reading them whole (pure ASGI middleware)."""

from __future__ import annotations

from hub.errors import FhirError, Issue, outcome_bytes


class BodyTooLarge(FhirError):
    def __init__(self, limit: int):
        super().__init__(413, "too-costly", f"The request body exceeds the limit of {limit} bytes")


class BodyLimit:
    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    return await _refuse(send, self.limit)
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


async def _refuse(send, limit: int) -> None:
    body = outcome_bytes([Issue("too-costly", f"The request body exceeds the limit of {limit} bytes")])
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/fhir+json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
