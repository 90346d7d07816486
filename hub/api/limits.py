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
documents together. The turn is taken when the application first reads the body, not as the
request arrives: a caller without a valid token, or refused the interaction whatever its body
holds, is answered before it takes one. A body must then arrive within HUB_BODY_TIMEOUT seconds
(408, the connection closed): sent a byte at a time, it held its turn as long as its sender liked.

Under ``pages`` (the console) a refusal is no FHIR answer but the application's own page: the
request goes on without its query (the language aside), its body or its other headers, carrying
the refusal in its scope (``REFUSAL``), which the first step of every route raises."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote_to_bytes

from hub.core.errors import FhirError, Issue, outcome_bytes

REFUSAL = "hub.refusal"  # the scope key of a refusal the application answers (``pages``)

# A control character in the query string, sent raw or percent-encoded: none of the FHIR strings
# a parameter stands for may hold one (tab, line feed and carriage return aside), and PostgreSQL
# refuses a NUL outright (a 500 where an identifier or an id reached the event store)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|%(?:0[0-8bBcCeEfF]|1[0-9a-fA-F]|7[fF])")


# an encoded "/" in a FHIR path: decoded, it split a segment (Patient/p%2f_history answered p's
# history); no type, id (FHIR's id pattern) or operation name holds one
_ENCODED_SLASH = re.compile(rb"%2[fF]")


def _malformed(scope) -> str | None:
    """Why the request's target cannot be read as sent, if it cannot: an encoded "/" in a FHIR
    path, a query that is not UTF-8 once percent-decoded (its bytes were read as U+FFFD and
    searched for)."""
    if scope.get("path", "").startswith("/fhir") and \
            _ENCODED_SLASH.search(scope.get("raw_path") or b""):
        return "The path holds an encoded '/' (%2F): no resource type, id or operation has one"
    try:
        unquote_to_bytes(scope.get("query_string") or b"").decode("utf-8")
    except UnicodeDecodeError:
        return "The query string is not UTF-8 (once percent-decoded)"
    return None


class BodyTooLarge(FhirError):
    error_code = "too-large"

    def __init__(self, limit: int):
        super().__init__(413, "too-costly", f"The request body exceeds the limit of {limit} bytes")


class BodyTimeout(FhirError):
    def __init__(self, seconds: float):
        super().__init__(408, "timeout", f"The request body did not arrive within {seconds:g} s "
                                         "(HUB_BODY_TIMEOUT)")


class BodyLimit:
    """``answers``: per request path, a function of the limit and the request's headers giving
    (status, content type, body) of the refusal, for endpoints that do not speak FHIR JSON
    (``/v3`` answers an HL7 v3 AR, or a SOAP Fault to a SOAP request). ``pages``: the path
prefix whose refusals the application answers itself (as pages, the console's)."""

    def __init__(self, app, limit: int, answers: dict | None = None, max_header: int | None = None,
                 large: int | None = None, max_large: int = 2, large_wait: float = 10.0,
                 body_timeout: float = 60.0, pages: str | None = None):
        self.app = app
        self.limit = limit
        self.answers = answers or {}
        self.pages = pages
        self.max_header = max_header
        self.large = large
        self._large_slots = asyncio.Semaphore(max(1, max_large))
        self.large_wait = large_wait
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers", ())
        page = self.pages is not None and scope.get("path", "").startswith(self.pages) and \
            not scope.get("path", "").startswith(self.pages + "static/")
        if self.max_header is not None:
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(name) + len(value) + 4 for name, value in headers)
            if size > self.max_header:
                if page:
                    return await self._as_page(scope, send, _headers_error(self.max_header),
                                               close=True)
                return await _refuse_headers(send, self.max_header)
        if _CONTROL.search(scope.get("query_string") or b""):
            if page:
                return await self._as_page(scope, send, FhirError(400, "invalid", QUERY_CONTROL))
            return await _refuse_query(send)
        malformed = _malformed(scope)
        if malformed is not None:
            if page:
                return await self._as_page(scope, send, FhirError(400, "invalid", malformed))
            return await _answer(send, 400, outcome_bytes([Issue("invalid", malformed)]))
        length = None
        for name, value in headers:
            if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                # the hub reads bodies as sent: a gzip body failed as "not valid UTF-8", and a
                # plain one labelled br was stored as if decoded (RFC 9110 15.5.16)
                if page:
                    return await self._as_page(scope, send, _encoding_error(value))
                return await _refuse_encoding(send, value)
            if name == b"content-length":
                if not (value.isascii() and value.isdigit()) or int(value) > self.limit:
                    if page:
                        return await self._as_page(scope, send, BodyTooLarge(self.limit),
                                                   close=True)
                    return await _refuse(send, self.limit, self.answers.get(scope.get("path", "")),
                                         headers)
                length = int(value)
        has_body = length is not None and length > 0 or any(
            name == b"transfer-encoding" for name, _ in headers)
        large = self.large is not None and has_body and (length is None or length > self.large)
        return await self._limited(scope, receive, send, has_body, large)

    async def _as_page(self, scope, send, error: FhirError, close: bool = False) -> None:
        """``error`` answered by the application, as its pages answer (its session read from
        the cookie): the request without what was refused, nor anything else it sent (its query
        but the language, its body, its headers but the host and a cookie within the limits)."""
        keep = self.max_header // 4 if self.max_header else 8192
        headers = [(n, v) for n, v in scope.get("headers", ())
                   if n in (b"host", b"cookie") and len(v) <= keep]
        lang = [p for p in (scope.get("query_string") or b"").split(b"&")
                if p in (b"lang=zh", b"lang=en")][:1]
        inner = {**scope, "headers": headers, "query_string": b"".join(lang), REFUSAL: error}
        sent = False

        async def nothing():  # the body is not read: an empty one, then the client gone
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def closing(message):  # the unread body: the connection is not reused
            if close and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"connection", b"close")]}
            await send(message)

        await self.app(inner, nothing, closing)

    async def _limited(self, scope, receive, send, has_body: bool, large: bool):
        """The application with a ``receive`` that holds the body to the limits: a large one
        read in its turn, taken at its first read and kept till the application is done (parsed,
        it takes several times its size); the whole body within HUB_BODY_TIMEOUT of that read."""
        seen = 0
        done = not has_body  # the whole body was read (or the client went away)
        answered = False
        held = False
        deadline: float | None = None
        loop = asyncio.get_running_loop()

        async def limited_receive():
            nonlocal seen, done, held, deadline
            if done or answered:  # after the body: a wait for the client's disconnect, untimed
                return await receive()
            if large and not held:
                try:
                    await asyncio.wait_for(self._large_slots.acquire(), self.large_wait)
                except asyncio.TimeoutError:
                    raise _busy_error() from None
                held = True
            if deadline is None:
                deadline = loop.time() + self.body_timeout
            try:
                message = await (asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                                 if self.body_timeout > 0 else receive())
            except asyncio.TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # chunked upload without Content-Length
                    raise BodyTooLarge(self.limit)
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        async def closing_send(message):
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                if not done:  # answered before its body was read (refused, timed out): the
                    # rest of it is not read, so the connection is not reused
                    message = {**message, "headers": [*message.get("headers", ()),
                                                      (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, closing_send)
        finally:
            if held:
                self._large_slots.release()


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


BUSY = "Too many large requests are being read at once; retry shortly (HUB_MAX_LARGE)"
QUERY_CONTROL = "The query string holds a control character"


def _busy_error() -> FhirError:
    error = FhirError(503, "transient", BUSY)
    error.retry_after = 2  # type: ignore[attr-defined]
    return error


def _encoding_error(value: bytes) -> FhirError:
    return FhirError(415, "not-supported", f"Content-Encoding {value[:40].decode('latin-1')!r} "
                                           "is not supported: send the body as it is (identity)")


def _headers_error(limit: int) -> FhirError:
    return FhirError(431, "too-costly", f"The request line and headers exceed the limit of "
                                        f"{limit} bytes (HUB_MAX_HEADER)")


async def _refuse_encoding(send, value: bytes) -> None:
    body = outcome_bytes(_encoding_error(value).issues)
    await _answer(send, 415, body, FHIR_JSON, (b"accept-encoding", b"identity"))


async def _refuse_query(send) -> None:
    body = outcome_bytes([Issue("invalid", QUERY_CONTROL)])
    await _answer(send, 400, body)


async def _refuse_headers(send, limit: int) -> None:
    body = outcome_bytes(_headers_error(limit).issues)
    await _answer(send, 431, body, FHIR_JSON, (b"connection", b"close"))
