"""Which mapper handles which payload kind.

A kind names the mapper and, after a colon, its argument: ``hl7v2``; ``hl7v3`` (interaction
messages: registrations, updates, merges); ``cda`` (a clinical document: quality control, then
mapping); ``row:<mapping>`` (one JSON
object, a row of a HIS view) and ``csv:<mapping>`` (a CSV export, one unit per row), where
``<mapping>`` is the name of a shipped tabular mapping or a path to a mapping file.
Every converter returns a list of Conversions (a CSV file holds many units).

``validate`` is the hub's resource validation for the self-test of a tabular mapping file (its row
of column examples; see ``fhir_mapping.tabular.mapping.Validate``): the caller passes it in, as
``connectors.kinds`` does; the other kinds ignore it.
"""

from __future__ import annotations

from collections.abc import Callable

from fhir_mapping.base import Conversion, MappingError, SourceInfo

Converter = Callable[[bytes, SourceInfo], list[Conversion]]
Validate = Callable[[str, bytes, dict], None]  # as fhir_mapping.tabular.mapping.Validate


def converter(kind: str, validate: Validate | None = None) -> Converter:
    name, _, arg = kind.partition(":")
    if name == "hl7v2":
        from fhir_mapping.hl7v2 import convert

        return lambda payload, source: [convert(payload, source)]
    if name == "hl7v3":
        from fhir_mapping.hl7v3 import convert as convert_v3

        return lambda payload, source: [convert_v3(payload, source)]
    if name == "cda":  # quality control, then mapping; the check time is the connector's clock
        from datetime import datetime, timedelta, timezone

        from fhir_mapping.documents import for_connector

        china = timezone(timedelta(hours=8))
        return lambda payload, source: for_connector(payload, source, datetime.now(china))
    if name in ("row", "csv"):
        from fhir_mapping.tabular import load_mapping

        mapping = load_mapping(arg, validate)
        return mapping.convert_row_json if name == "row" else mapping.convert_csv
    raise MappingError(f"no mapper for payload kind {kind!r}", code="AR", rule="kind")
