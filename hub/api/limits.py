"""Refuse oversized request bodies before reading them whole, oversized request headers, and
query strings holding control characters (pure ASGI middleware).

Headers: uvicorn (h11) holds at most HUB_MAX_HEADER bytes of a request's head while it is still
incomplete (``h11_max_incomplete_event_size``, answered 400), but a head that arrives whole in one
read is parsed whatever its size; here any head over the limit is answered 431.

Memory: a body is at most HUB_MAX_BODY bytes, and parsed it takes several times that. A body over
HUB_LARGE_BODY bytes, or one sent without a length, is read only while fewer than HUB_MAX_LARGE
such requests are in flight in this process; another waits for its turn up to HUB_LARGE_WAIT
seconds, then is answered 503 with ``Retry-After``. So what a process's requests hold at once is
bounded by HUB_MAX_LARGE large bodies plus the small ones, however many clients send large
documents together."""

from __future__ import annotations

import asyncio
import re

from hub.core.errors import FhirError, Issue, outcome_bytes

# A control character in the query string, sent raw or percent-encoded: none of the FHIR strings
# a parameter stands for may hold one (tab, line feed and carriage return aside), and PostgreSQL
# refuses a NUL outright (a 500 where an identifier or an id reached the event store)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|%(?:0[0-8bBcCeEfF]|1[0-9a-fA-F]|7[fF])")


class BodyTooLarge(FhirError):
    error_code = "too-large"

    def __init__(self, limit: int):
        super().__init__(413, "too-costly", f"The request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """``answers``: per request path, a function of the limit and the request's headers giving
    (status, content type, body) of the refusal, for endpoints that do not speak FHIR JSON
    (``/v3`` answers an HL7 v3 AR, or a SOAP Fault to a SOAP request)."""

    def __init__(self, app, limit: int, answers: dict | None = None, max_header: int | None = None,
                 large: int | None = None, max_large: int = 2, large_wait: float = 10.0):
        self.app = app
        self.limit = limit
        self.answers = answers or {}
        self.max_header = max_header
        self.large = large
        self._large_slots = asyncio.Semaphore(max(1, max_large))
        self.large_wait = large_wait

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers", ())
        if self.max_header is not None:
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(name) + len(value) + 4 for name, value in headers)
            if size > self.max_header:
                return await _refuse_headers(send, self.max_header)
        if _CONTROL.search(scope.get("query_string") or b""):
            return await _refuse_query(send)
        length = None
        for name, value in headers:
            if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                # the hub reads bodies as sent: a gzip body failed as "not valid UTF-8", and a
                # plain one labelled br was stored as if decoded (RFC 9110 15.5.16)
                return await _refuse_encoding(send, value)
            if name == b"content-length":
                if not (value.isascii() and value.isdigit()) or int(value) > self.limit:
                    return await _refuse(send, self.limit, self.answers.get(scope.get("path", "")),
                                         headers)
                length = int(value)
        has_body = length is not None and length > 0 or any(
            name == b"transfer-encoding" for name, _ in headers)
        if self.large is not None and has_body and (length is None or length > self.large):
            try:
                await asyncio.wait_for(self._large_slots.acquire(), self.large_wait)
            except asyncio.TimeoutError:
                return await _busy(send)
            try:
                return await self._limited(scope, receive, send)
            finally:
                self._large_slots.release()
        return await self._limited(scope, receive, send)

    async def _limited(self, scope, receive, send):
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


FHIR_JSON = b"application/fhir+json; charset=utf-8"


async def _answer(send, status: int, body: bytes, ctype: bytes = FHIR_JSON,
                  *headers: tuple[bytes, bytes]) -> None:
    """Answer from the middleware itself, before the application has seen the request."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send, limit: int, answer=None, headers=()) -> None:
    status = 413
    if answer is not None:
        status, ctype, body = answer(limit, headers)
    else:
        ctype = FHIR_JSON
        body = outcome_bytes([Issue("too-costly",
                                    f"The request body exceeds the limit of {limit} bytes")])
    await _answer(send, status, body, ctype, (b"connection", b"close"))


async def _busy(send) -> None:
    body = outcome_bytes([Issue("transient", "Too many large requests are being read at once; "
                                "retry shortly (HUB_MAX_LARGE)")])
    await _answer(send, 503, body, FHIR_JSON, (b"retry-after", b"2"), (b"connection", b"close"))


async def _refuse_encoding(send, value: bytes) -> None:
    body = outcome_bytes([Issue("not-supported", "Content-Encoding "
                                f"{value[:40].decode('latin-1')!r} is not supported: send the "
                                "body as it is (identity)")])
    await _answer(send, 415, body, FHIR_JSON, (b"accept-encoding", b"identity"))


async def _refuse_query(send) -> None:
    body = outcome_bytes([Issue("invalid", "The query string holds a control character")])
    await _answer(send, 400, body)


async def _refuse_headers(send, limit: int) -> None:
    body = outcome_bytes([Issue("too-costly",
                                f"The request line and headers exceed the limit of {limit} bytes "
                                "(HUB_MAX_HEADER)")])
    await _answer(send, 431, body, FHIR_JSON, (b"connection", b"close"))
