"""What a sink is: ``deliver(units) -> one error (dict) or None per unit``.

A sink raises ``Unavailable`` when the target cannot take the batch now (connection refused, 5xx,
broker down, timeout): the delivery loop keeps the units and retries with backoff. An error
returned for a unit means the target refused it for good: the unit is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from connectors.spool import Unit


class Unavailable(Exception):
    pass


class Sink(Protocol):
    def deliver(self, units: Sequence[Unit]) -> list[dict[str, Any] | None]: ...

    def close(self) -> None: ...


def take_batch(units: Sequence[Unit], limit: int) -> list[Unit]:
    """The longest prefix of ``units`` (at most ``limit``) in which no resource is written twice
    with different content. Delivery is at least once: a batch sent again after a crash (the hub
    committed it, the spool did not yet know) must change nothing, and it changes nothing only if
    it holds no older version of a resource that a later unit of the same batch overwrote."""
    batch: list[Unit] = []
    seen: dict[str, bytes] = {}
    for u in units[:limit]:
        keys = u.write_keys()
        if batch and any(k in seen and seen[k] != v for k, v in keys.items()):
            break
        seen.update(keys)
        batch.append(u)
    return batch
