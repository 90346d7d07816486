"""The root of every error the hub raises on purpose, with a stable short code.

``HubError.error_code`` names the kind of failure for logs, exit statuses and callers that do not
want to know each class: ``usage`` (a command line mistake), ``invalid`` (input that breaks a rule),
``not-found``, ``conflict`` (a concurrent change; retry), ``unavailable`` (a store, broker or peer
cannot be reached now; retry), ``unsupported`` (valid but not handled here), ``config`` (a wrong
configuration or rule file), ``mapping`` (a payload that cannot be converted to FHIR), ``refused``
(an answer decided while handling a message) and ``too-large``. Subclasses keep their historical
bases too (``ValueError``, ``LookupError``), so ``except ValueError`` keeps catching them.

The attribute is ``error_code``, not ``code``: ``code`` already means the HL7 acknowledgment code on
mapping errors (AE / AR) and the FHIR issue type on terminology errors, and both go out on the wire.
"""

from __future__ import annotations

__all__ = ["ERROR_CODES", "HubError"]

ERROR_CODES = frozenset({"error", "usage", "invalid", "not-found", "conflict", "unavailable",
                         "unsupported", "config", "mapping", "refused", "too-large"})


class HubError(Exception):
    """Root of the hub's errors; ``error_code`` is one of ``ERROR_CODES``."""

    error_code: str = "error"
