"""uvicorn's h11 protocol with a deadline for a request's head (request line and headers).

uvicorn times out an idle keep-alive connection (HUB_KEEP_ALIVE) but not a client that sends its
headers a byte at a time: each byte cancels the keep-alive timer, and the connection is held as
long as the client likes (slowloris). Here a connection whose head is not complete within
HUB_HEADER_TIMEOUT seconds of its opening (or of the previous response) is closed. A reverse
proxy in front of the hub sets its own (nginx: client_header_timeout); this is the guard for a
hub served directly.

Served by ``hub serve`` as ``http=`` (this class also pins h11 over httptools, so that
``h11_max_incomplete_event_size``, HUB_MAX_HEADER, applies). The deadline is read from
HUB_HEADER_TIMEOUT when this module is imported (worker processes) or set on the class.
"""

from __future__ import annotations

import asyncio
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadTimeoutH11Protocol(H11Protocol):
    head_timeout: float = float(os.environ.get("HUB_HEADER_TIMEOUT", "30") or 30)
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or the connection broke)
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the next request's head, on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.head_timeout > 0:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
