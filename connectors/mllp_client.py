"""A minimal blocking MLLP sender (tests, benchmarks, ``hub``-side tools).

``tls={"ca": ..., "cert": ..., "key": ...}`` (connectors.tls) wraps the connection in TLS: the
listener's certificate is checked against ``ca`` (and ``host``), ``cert``/``key`` are presented
for mutual TLS. ``tls`` may also be a ready ``ssl.SSLContext``.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from connectors.tls import client_context

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


class MLLPClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0, tls: Any = None):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            ctx = tls if isinstance(tls, ssl.SSLContext) else client_context(tls, "MLLP client")
            try:
                sock = ctx.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        self.sock: socket.socket = sock
        self.buf = bytearray()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: bytes | str) -> bytes:
        if isinstance(message, str):
            message = message.encode("utf-8")
        self.sock.sendall(VT + message + FS + CR)
        return self.read_ack()

    def read_ack(self) -> bytes:
        while True:
            start = self.buf.find(VT)
            end = self.buf.find(FS + CR, max(start, 0))
            if start >= 0 and end > start:
                msg = bytes(self.buf[start + 1:end])
                del self.buf[:end + 2]
                return msg
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the listener closed the connection")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK."""
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA"):
            return seg.decode("latin-1").split(seg.decode("latin-1")[3])[1]
    raise ValueError("no MSA segment in the ACK")


def ack_segment(ack: bytes, name: str) -> list[str] | None:
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(name.encode()):
            text = seg.decode("utf-8", "replace")
            return text.split("|")
    return None
