"""One TLS context per process for the HTTP calls the hub, its daemons and its commands make.

httpx builds an SSL context for every Client it makes and every module-level call (``httpx.get``),
a plain ``http://`` URL included, and building one reads and parses the CA bundle: about 40 ms of
CPU. The console's connector pages poll each daemon's status, ``hub connector status`` asks a
running daemon, a token source renews its token: each paid it per call. httpx's default trust
(``verify=True``) is served here by one context, made on first use and shared (an
``ssl.SSLContext`` is safe to share between connections and threads); a context of the caller's
own (a CA to trust, a client certificate for mutual TLS) is used as given.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

import httpx

__all__ = ["default_context", "get", "post", "verify"]


@lru_cache(maxsize=1)
def default_context() -> ssl.SSLContext:
    """httpx's own default context (its CA bundle, ``SSL_CERT_FILE`` honoured), made once."""
    return httpx.create_ssl_context()


def verify(value: Any = True) -> Any:
    """httpx's ``verify``: ``True`` as the shared default context, anything else as given."""
    return default_context() if value is True else value


def get(url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.get`` with the shared context for the default trust."""
    return httpx.get(url, verify=verify(kwargs.pop("verify", True)), **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.post`` with the shared context for the default trust."""
    return httpx.post(url, verify=verify(kwargs.pop("verify", True)), **kwargs)
