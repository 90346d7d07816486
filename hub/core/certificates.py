"""What the hub's servers and the connectors' listeners tell of the certificate they serve."""

from __future__ import annotations

import datetime
from typing import Any


def expired_on(certificate: Any) -> datetime.datetime | None:
    """The notAfter of an X.509 certificate (``cryptography``'s) whose validity has ended, else
    None: served, every peer that checks it refuses the handshake, and the server says nothing
    of it unless told at start."""
    ends = certificate.not_valid_after_utc
    return ends if ends < datetime.datetime.now(datetime.timezone.utc) else None
