"""Deterministic resource ids from the source's own keys.

``stable_id("Patient", "H0001", "MR", "123456")`` is the same on every run and every machine, fits
FHIR's id rules ([A-Za-z0-9-.]{1,64}) and does not reveal the keys (ids appear in URLs and logs,
record numbers must not).
"""

from __future__ import annotations

import hashlib


def stable_id(*parts: object) -> str:
    """A 32-character hex id over ``parts`` (each part stringified; None as empty)."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
