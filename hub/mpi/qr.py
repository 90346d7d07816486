"""Electronic health card QR payloads -> the card's identifier.

Two payload forms (the card is identified in ``urn:oid:2.16.156.10011.1.19``):

- static ``cardId:1``: the card number, valid until revoked;
- dynamic ``cardId:0:expiry``: shown by an app for a short while. ``expiry`` is either Unix epoch
  seconds (1 to 10 digits, UTC) or ``yyyyMMddHHmmss`` (14 digits) in China Standard Time
  (+08:00, the region's time, as card issuers print it). An expired payload is refused.

Anything else (wrong number of parts, a flag other than 0/1, a card id outside ``[A-Za-z0-9-]``
up to 64 characters, an unreadable expiry) is a ``QrError`` (the API answers 400).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from hub.core.errors import HubError

HEALTH_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.19"
CST = timezone(timedelta(hours=8))
MAX_PAYLOAD = 256
_CARD = re.compile(r"^[A-Za-z0-9\-]{1,64}$")


class QrError(HubError, ValueError):
    """A payload that is malformed or expired."""

    error_code = "invalid"


@dataclass(frozen=True, slots=True)
class Card:
    card_id: str
    dynamic: bool
    expires: int | None  # epoch seconds (UTC), dynamic payloads only

    @property
    def identifier(self) -> tuple[str, str]:
        return HEALTH_CARD_SYSTEM, self.card_id


def parse(payload: str, now: float | None = None) -> Card:
    if not isinstance(payload, str) or not payload or len(payload) > MAX_PAYLOAD:
        raise QrError("the QR payload must be 1 to 256 characters")
    parts = payload.strip().split(":")
    card = parts[0]
    if not _CARD.match(card):
        raise QrError("the card id must be 1 to 64 letters, digits or hyphens")
    if len(parts) == 2 and parts[1] == "1":
        return Card(card, False, None)
    if len(parts) == 3 and parts[1] == "0":
        expires = _expiry(parts[2])
        if expires <= (time.time() if now is None else now):
            raise QrError("the dynamic QR code has expired")
        return Card(card, True, expires)
    raise QrError("a QR payload is cardId:1 (static) or cardId:0:expiry (dynamic)")


def _expiry(raw: str) -> int:
    if re.fullmatch(r"[0-9]{1,10}", raw):
        return int(raw)
    if re.fullmatch(r"[0-9]{14}", raw):
        try:
            dt = datetime.strptime(raw, "%Y%m%d%H%M%S").replace(tzinfo=CST)
        except ValueError:
            raise QrError("the expiry is not a valid yyyyMMddHHmmss time") from None
        return int(dt.timestamp())
    raise QrError("the expiry must be epoch seconds or yyyyMMddHHmmss (+08:00)")
