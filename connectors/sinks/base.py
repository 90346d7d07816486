"""What a sink is: ``deliver(units) -> one error (dict) or None per unit``.

A sink raises ``Unavailable`` when the target cannot take the batch now (connection refused, 5xx,
broker down, timeout): the delivery loop keeps the units and retries with backoff. An error
returned for a unit means the target refused it for good: the unit is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from connectors.spool import Unit
from hub.core.errors import HubError


class Unavailable(HubError):
    error_code = "unavailable"


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


RETRY_STATUS = {408, 409, 425, 429}  # worth sending again: timeouts, conflicts, throttling


def unit_errors(entries: list[dict], positions: list[list[int]],
                answers: list[dict]) -> list[dict[str, Any] | None]:
    """Per unit, None or why the hub refused it, from the batch-response ``answers`` to
    ``entries`` (``positions``: each unit's entries, see ``http.dedupe_entries``). Raises
    ``Unavailable`` when an entry should be tried again (5xx, conflict, throttling)."""
    out: list[dict[str, Any] | None] = []
    for pos in positions:
        failed = []
        for i in pos:
            resp = answers[i].get("response") or {}
            status = int(str(resp.get("status", "500"))[:3])
            if status >= 500 or status in RETRY_STATUS:
                raise Unavailable(f"entry {entries[i]['request']['url']}: {resp.get('status')}")
            if status >= 300:
                issue = ((resp.get("outcome") or {}).get("issue") or [{}])[0]
                where = (issue.get("expression") or [None])[0]
                failed.append({"entry": entries[i]["request"]["url"], "status": status,
                               "reason": (issue.get("diagnostics") or issue.get("code")
                                          or str(status)) + (f" at {where}" if where else ""),
                               "outcome": resp.get("outcome")})
        out.append({"reason": "; ".join(f"{f['entry']}: {f['reason']}" for f in failed)[:2000],
                    "code": "AE", "rule": "hub.rejected", "entries": failed} if failed else None)
    return out
