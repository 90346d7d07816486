"""The read models' errors, under the hub's error root."""

from __future__ import annotations

from hub.core.errors import HubError

__all__ = ["NotThisLog", "QueryError"]


class QueryError(HubError, ValueError):
    """A filter or grouping a read model cannot answer (a user mistake: 400 / exit 2); one class for
    the quality report and the unmapped-codes worklist."""

    error_code = "invalid"


class NotThisLog(HubError):
    """A read model whose rows are not the event log's: its position is beyond the log's end,
    or it was built from another log. It is not followed until rebuilt (or the log restored)."""

    error_code = "config"
