"""What a read model is to the machinery that runs it (``projections.runner.Runner``).

A read model follows the event log: it applies notifications in order and records, in the same
transaction as its own rows, the id of the last one applied (its tracking position). That makes
it exactly-once (a batch delivered again, or a restart mid-way, applies nothing twice), resumable
(it picks up from its position), rebuildable (``reset`` then a replay gives the same state) and
measurable (the runner's lag is the log's end minus the position).

Every read model in ``hub.readmodels`` declares the whole contract; most inherit it from
``projections.sqlite_model.SQLiteReadModel``. ``tests/test_read_model_contract.py`` checks the
behaviour for each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from eventsourcing.persistence import Notification


@runtime_checkable
class ReadModel(Protocol):
    name: str
    """Its tracking name: the row of the tracking table that holds its position."""

    types: tuple[str, ...]
    """The resource types it follows; empty for every event. With types, the runner reads only
    those types' events (the type index) and may record a position beyond the last of them
    (``apply``'s ``up_to``)."""

    @property
    def bulk(self) -> bool:
        """True while a bulk load (a rebuild) runs: the runner takes bigger batches and calls
        ``caught_up`` at the log's end. False for a model without a bulk mode."""
        ...

    def position(self) -> int:
        """The last notification id applied (0 when empty)."""
        ...

    def apply(self, notifications: Sequence[Notification], up_to: int | None = None,
              since: int | None = None) -> None:
        """Apply in order, and record the last id, in one transaction. Nothing is applied twice:
        notifications at or below the recorded position are skipped (another follower applied
        them), or the whole batch is refused with eventsourcing's ``IntegrityError`` and rolled
        back (the tracking row refuses a position that does not advance). ``up_to``: the
        position to record when it is beyond the last notification (the events between were of
        types the model does not follow). ``since``: the position the batch was read after;
        when the recorded one is below it now (a rebuild reset the model meanwhile), nothing is
        applied: the batch would skip everything between and record a position past it."""
        ...

    def caught_up(self) -> None:
        """The runner reached the log's end during a bulk load (the model builds its indexes
        now); nothing to do for a model without a bulk mode."""
        ...

    def reset(self) -> None:
        """Forget everything, position included (a rebuild starts from here)."""
        ...

    def close(self) -> None:
        """Release its files and connections."""
        ...

    def followed_log(self) -> str | None:
        """The identity of the event log it was built from (``ResourceStore.log_id``); None
        when it has recorded none (a model from before they were recorded)."""
        ...

    def follow_log(self, log_id: str) -> None:
        """Record ``log_id`` as the log it follows (an empty model, or one adopting its log)."""
        ...

    def stale(self) -> str | None:
        """Why its answers fall short of what the hub would now give: rows holding times of
        values without a zone read in another zone than ``HUB_TIMEZONE``, or written under an
        older release's rules (until a rebuild), resources its engine refused to index whole,
        term counts that are incomplete (the candidate index); None when it answers fully.
        ``/ready`` (a warning) and ``hub projections status`` say it."""
        ...


def nothing_to_apply(last: int, done: int, since: int | None) -> bool:
    """Whether a batch ending at ``last`` applies nothing to a model at position ``done``: all of
    it was applied (by another follower), or it was read after ``since`` and the model was reset
    below that meanwhile (applied, it would skip everything between)."""
    return last <= done or (since is not None and done < since)
