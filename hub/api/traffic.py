"""Where a request comes from and how often: the client's address behind trusted proxies only,
and a per-caller rate limit.

- ``client_address``: the peer's address, unless the peer is one of the trusted proxies
  (``HUB_TRUSTED_PROXIES``: addresses or networks); then the nearest address in
  ``X-Forwarded-For`` that is not a trusted proxy. A header from anyone else is ignored, so a
  caller cannot put another address into the audit.
- ``RateLimiter``: a token bucket per caller (the token's subject, else the address):
  ``HUB_RATE_LIMIT`` requests per second, bursts of twice that; over it, 429 with Retry-After.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_BUCKETS = 100_000  # callers remembered at once; the idlest are forgotten first


def networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """The trusted proxies as networks (a bare address is a network of one)."""
    return tuple(ipaddress.ip_network(s.strip(), strict=False) for s in specs if s.strip())


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(peer: str | None, forwarded_for: str | None,
                   proxies: tuple[Network, ...]) -> str | None:
    if peer is None or not proxies or not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):  # the right end was added by the proxy nearest to us
        if not _trusted(hop, proxies):
            return hop[:64]
    return hops[0][:64] if hops else peer


class RateLimiter:
    def __init__(self, per_second: float, burst: float | None = None):
        self.rate = float(per_second)
        self.burst = float(burst if burst is not None else 2 * per_second)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def wait_for(self, key: str) -> float:
        """0 when ``key`` may go now (one token taken), else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
            if len(self._buckets) > MAX_BUCKETS:
                idlest = sorted(self._buckets.items(), key=lambda kv: kv[1][1])
                for k, _ in idlest[:MAX_BUCKETS // 10]:
                    del self._buckets[k]
        return wait
