"""The parts a connector daemon is made of, and the contracts between them.

    Source ──Envelope──> Intake (convert, spool durably, dead-letter) ──> delivery loop ──> Sink

A ``Source`` receives payloads (MLLP, folder, database rows, a Kafka topic) and hands each to
``Intake.accept`` together with the checkpoint it reached; ``accept`` converts the payload with the
mapper for its ``kind``, stores the conversion (or a dead letter) and the checkpoint in the
connector's local spool in one transaction, and only then returns, so a source acknowledges its
sender (an MLLP ACK, moving a file to done/, committing a Kafka offset) only for what is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hub.core.errors import HubError


class CannotStart(HubError):
    """A source cannot start where it is configured (its address in use, a host that does not
    resolve): the daemon stops with this one line rather than retrying a mistake for ever."""

    error_code = "config"


@dataclass(slots=True)
class Envelope:
    """One payload as received, with where it came from (kept verbatim for dead letters)."""

    payload: bytes
    kind: str  # mapper: "hl7v2", "row:<mapping name>", "csv:<mapping name>", "fhir"
    source: str  # the connector source's name
    meta: dict[str, Any] = field(default_factory=dict)  # peer, file name, row key, offset…


@dataclass(slots=True)
class Accepted:
    """What ``Intake.accept`` decided for one envelope."""

    ok: bool  # converted and spooled; False: dead-lettered
    unit_ids: list[str] = field(default_factory=list)  # source ids of the converted units
    error: dict[str, Any] | None = None  # MappingError.to_dict() when not ok
    deadletter_id: int | None = None


class Intake(Protocol):
    def checkpoint(self, key: str) -> str | None:
        """The last checkpoint stored under ``key`` (None at first start)."""

    def accept(self, envelopes: Sequence[Envelope],
               checkpoint: tuple[str, str] | None = None) -> list[Accepted]:
        """Convert, spool and record ``checkpoint`` in one transaction; one answer per envelope."""

    def keep(self, envelope: Envelope, error: dict[str, Any]) -> int:
        """Keep a payload the source refused before conversion (an MLLP block cut off or too
        large) as a dead letter, to read and replay; its id."""


class Source(Protocol):
    name: str

    def run(self, intake: Intake, stop: Any) -> None:
        """Receive until ``stop`` (a threading.Event) is set; blocking, called in its own thread."""
