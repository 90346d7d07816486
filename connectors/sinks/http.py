"""Deliver units to the hub's FHIR API as transaction Bundles (``POST {base}``).

Each unit's entries (PUT Type/id, idempotent) go into one transaction Bundle with the other units
of the batch: all of them are written, or none. A refusal (4xx) splits the batch in halves until
the refused unit is alone, which is dead-lettered with nothing of it written (as a batch Bundle,
a message with one refused resource was dead-lettered while its other resources were stored,
referring to what was not); a 5xx, 409, 429 or any transport error makes the whole batch retried
later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from connectors.sinks.base import RETRY_STATUS, Unavailable, unit_errors
from connectors.spool import Unit
from connectors.tls import http_verify, refuse_plain
from fhir_mapping.base import SourceInfo


def dedupe_entries(per_unit: list[list[dict]]) -> tuple[list[dict], list[list[int]]]:
    """One entry per request in the batch: units of one institution repeat its Organization,
    Location, Practitioners (same content: ``take_batch`` keeps different versions apart), and
    the hub commits writes naming one resource one after another, so repeats would split the
    batch into many commits. Returns the entries and, per unit, the positions of its entries."""
    entries: list[dict] = []
    index: dict[str, int] = {}
    positions: list[list[int]] = []
    for unit_entries in per_unit:
        pos = []
        for e in unit_entries:
            key = f"{e['request']['method']} {e['request']['url']}"
            if key not in index:
                index[key] = len(entries)
                entries.append(e)
            pos.append(index[key])
        positions.append(pos)
    return entries, positions


def hub_auth(url: str, client_id: str | None, private_key: str | None,
             token_url: str | None = None, scope: str = "system/*.cruds",
             verify: Any = True) -> httpx.Auth | None:
    """The connector's tokens for the hub at ``url`` (its FHIR base), when it has credentials.
    A key that cannot sign for the hub is an ``UnusableKey`` (a ValueError: the daemon's
    configuration error) now, not at every token request, each retried."""
    if not client_id:
        return None
    if not private_key:
        raise ValueError("an http sink with client_id needs private_key (a PEM file)")
    from hub.auth.backend_client import BackendServicesAuth, UnusableKey, load_private_key

    token_url = token_url or url.rstrip("/").removesuffix("/fhir") + "/auth/token"
    try:
        with open(private_key, "rb") as f:
            key = load_private_key(f.read(), f"private_key {private_key}")
    except OSError as e:
        raise UnusableKey(f"cannot read private_key {private_key}: {e.strerror or e}") from None
    return BackendServicesAuth(token_url, client_id, key, scope, verify=verify)


class HttpSink:
    """Batches to the hub's REST API. With ``client_id`` and ``private_key`` (a PEM file) the
    connector authenticates as a SMART Backend Services client of the hub (its tokens from
    ``token_url``, by default the hub's own ``/auth/token``); the hub then records the
    institution of its registration, whatever the headers say.

    ``tls: {ca, cert, key}`` (connectors.tls): the CA of a hub behind TLS (default: the system's),
    and a client certificate for a hub that requires one (mutual TLS); the token requests use
    the same TLS."""

    def __init__(self, url: str, timeout_s: float = 30.0, headers: dict | None = None,
                 batch_size: int = 50, source_info: SourceInfo | None = None,
                 client_id: str | None = None, private_key: str | None = None,
                 token_url: str | None = None, scope: str = "system/*.cruds",
                 tls: dict | None = None, **_: Any):
        self.url = url.rstrip("/")
        self.batch_size = int(batch_size)
        verify: Any = http_verify(url, tls, "http sink")
        if tls is not None and token_url:  # the signed client assertion goes there
            refuse_plain(token_url, "http sink", "token_url")
        auth = hub_auth(self.url, client_id, private_key, token_url, scope, verify)
        # where the writes come from, recorded by the hub in each event's source
        origin = {"x-hub-source-institution": source_info.institution,
                  "x-hub-source-feed": source_info.feed} if source_info else {}
        self.client = httpx.Client(timeout=float(timeout_s), auth=auth, verify=verify, headers={
            "content-type": "application/fhir+json", "accept": "application/fhir+json",
            "prefer": "return=minimal", **{k: v for k, v in origin.items() if v},
            **(headers or {})})

    def close(self) -> None:
        self.client.close()

    def deliver(self, units: Sequence[Unit]) -> list[dict[str, Any] | None]:
        entries, positions = dedupe_entries([u.entries() for u in units])
        if not entries:
            return [None] * len(units)
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        try:
            r = self.client.post(self.url, content=body)
        except httpx.HTTPError as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from None
        if r.status_code == 413 or (400 <= r.status_code < 500 and r.status_code not in
                                    (401, 403, 404, *RETRY_STATUS)) or _an_entrys(r):
            if len(units) > 1:  # find the culprit: split the batch
                half = len(units) // 2
                return self.deliver(units[:half]) + self.deliver(units[half:])
            return [{"reason": f"the hub refused the unit: HTTP {r.status_code}",
                     "status": r.status_code, "outcome": _json(r)}]
        if r.status_code != 200:
            raise Unavailable(f"HTTP {r.status_code} from {self.url}: {r.text[:200]}")
        try:
            answers = orjson.loads(r.content)["entry"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise Unavailable("the hub answered without a transaction-response Bundle") from None
        if len(answers) != len(entries):
            raise Unavailable("the transaction-response does not answer every entry")
        return unit_errors(entries, positions, answers)


def _an_entrys(r: httpx.Response) -> bool:
    """A 403 or 404 about one entry (a record of another institution, say), not about the
    caller (its token, its scopes): that entry's message is refused, the others go on."""
    if r.status_code not in (403, 404):
        return False
    outcome = _json(r)
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    return any(isinstance(i, dict) and any(str(x).startswith("Bundle.entry[")
                                           for x in i.get("expression") or ())
               for i in issues or ())


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text[:1000]
