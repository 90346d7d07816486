"""The read models' errors, under the hub's error root."""

from __future__ import annotations

from hub.core.errors import HubError

__all__ = ["QueryError"]


class QueryError(HubError, ValueError):
    """A filter or grouping a read model cannot answer (a user mistake: 400 / exit 2); one class for
    the quality report and the unmapped-codes worklist."""

    error_code = "invalid"
