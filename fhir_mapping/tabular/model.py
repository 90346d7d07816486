"""The compiled form of a tabular mapping file, shared by ``loader`` (which checks a file and builds
it) and ``mapping`` (which runs it), and the error for a wrong file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.core.errors import HubError

__all__ = ["DELETED", "DELETED_AT", "MappingFileError", "Resource", "Rule"]

# a row that says its source row was deleted (a tombstone: its key columns and this, true); no
# column can bear the name (columns are lower-case identifiers)
DELETED = "@deleted"
# beside it: when the row was deleted (the deletion log's time), the deletes' source order
DELETED_AT = "@deleted_at"


class MappingFileError(HubError, ValueError):
    """The mapping file itself is wrong; the message names the file and the rule."""

    error_code = "config"


# -- compiled form ---------------------------------------------------------------------------------

@dataclass(slots=True)
class Rule:
    where: str  # "resources.patient.rules[3]" for messages
    path: list[tuple[str, int | None]]
    source: str
    spec: Any
    transform: str = "string"
    targs: dict = field(default_factory=dict)
    default: Any = None
    when: tuple[str, ...] = ()
    when_any: tuple[str, ...] = ()  # applies only when one of these has a value
    skip_on_error: bool = False
    alternatives: list[Rule] = field(default_factory=list)
    columns: tuple[str, ...] = ()  # read by this rule (for error locations)
    # fills an Identifier (object:) or an Identifier's value (column:): a filler value or an
    # invalid resident ID number is left out of it (fhir_mapping.identifiers)
    identifier: str = ""  # "" | "object" | "value"


@dataclass(slots=True)
class Resource:
    name: str
    type: str
    id_kind: str
    id_columns: tuple[str, ...]
    emit: bool
    when: tuple[str, ...]
    rules: list[Rule]
    # the next keys when a key column holds a filler or an invalid resident ID number: (kind, columns)
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    when_any: tuple[str, ...] = ()  # emitted only when one of these has a value
