"""What every mapper returns, and how it refuses.

A mapper is pure (DESIGN.md principle 2): payload bytes plus ``SourceInfo`` in, ``Conversion`` out.
No I/O, no clock, no randomness; ids come from ``fhir_mapping.ids.stable_id`` over the source's own
keys, so the same input twice yields the same resources and the hub's writes become no-ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from fhir_mapping import source_order
from hub.core.errors import HubError


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Who sent the payload, as the connector's configuration declares it.

    ``institution`` is the sending institution's code (used in ids and Provenance); ``oid`` its
    root OID, under which its own record numbers live (``urn:oid:{oid}.…``); ``feed`` names the
    connector or feed. Mappers fall back to what the payload says (MSH-4, a CDA custodian) when
    these are empty. ``record_number_types``: HL7 v2 identifier types (CX-5, e.g. ``PI``) the
    institution issues from its record-number register, so that they are its record number
    (system and Patient key); any other type is a register of its own.
    """

    institution: str = ""
    oid: str = ""
    name: str = ""
    feed: str = ""
    record_number_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # read back from JSON (a spool, the quarantine) as a list
        object.__setattr__(self, "record_number_types",
                           tuple(str(t).strip().upper() for t in self.record_number_types if str(t).strip()))


@dataclass(frozen=True, slots=True)
class Finding:
    """A data-quality observation about the input: kept, counted and reported, never fatal."""

    severity: str  # error | warning | information
    rule: str  # stable rule id, e.g. "v2.identifier.check-digit"
    message: str
    location: str | None = None  # "PID-3[2].1", an XPath, a column name


@dataclass(slots=True)
class Conversion:
    """The FHIR resources one source unit (message, document, row) becomes.

    ``resources`` each carry ``resourceType`` and a deterministic ``id``; they are written as
    ``PUT Type/id`` (idempotent). ``patient_key`` ("Patient/<id>") keys the unit for ordering
    (Kafka partitioning). ``unit_id`` is the source's own id of the unit (MSH-10, document id,
    row key) for Provenance, dead letters and logs.
    """

    resources: list[dict[str, Any]]
    unit_id: str = ""
    patient_key: str | None = None
    kind: str = ""  # e.g. "ADT^A01", "row:outpatient-visit"
    findings: list[Finding] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)  # "Type/id" to delete (rare: cancellations)
    # "Type/id" -> elements the mapper gave a default because the unit did not say (an order
    # update without a status): a store that holds the resource keeps its own value there
    unsaid: dict[str, list[str]] = field(default_factory=dict)
    # the source's own order (fhir_mapping.source_order): when it recorded the change (HL7 v2
    # EVN-2, else MSH-7), or a document set and its version; stamped on every resource, so the hub
    # leaves a stored state from a newer source in place, however late this unit arrives
    source_time: str | None = None
    source_series: str | None = None
    source_version: int | None = None

    def __post_init__(self) -> None:
        self.set_source(self.source_time, self.source_series, self.source_version)

    def set_source(self, time: str | None = None, series: str | None = None,
                   version: int | None = None) -> Conversion:
        """Record the source's order and stamp it on the resources (a document gets its version
        after mapping, from the header)."""
        self.source_time, self.source_series, self.source_version = time, series, version
        source_order.stamp(self.resources, source_order.Order(time, series, version))
        return self

    def order(self) -> source_order.Order:
        return source_order.Order(self.source_time, self.source_series, self.source_version)

    def entries(self) -> list[dict[str, Any]]:
        """Bundle entries (batch or transaction) writing this conversion. A delete carries the
        source's order on its request (it has no resource to stamp): the hub refuses it when
        the stored version came from a newer source, as it refuses an older write."""
        out = [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in self.resources]
        order = self.order()
        stamp = {"extension": [order.extension()]} if order else {}
        out += [{"request": {"method": "DELETE", "url": ref, **stamp}} for ref in self.deletes]
        return out

    def unit(self) -> dict[str, Any]:
        """What a spool or a queue keeps of this conversion: its resources (each stamped), its
        deletes and, with deletes, the source order they carry."""
        out: dict[str, Any] = {"resources": self.resources, "deletes": self.deletes}
        order = self.order()
        if self.deletes and order:
            out["order"] = order.extension()
        return out

    @classmethod
    def from_unit(cls, d: dict[str, Any], **kw: Any) -> Conversion:
        """A conversion again from ``unit()``'s form (its resources as stamped, not again)."""
        conv = cls(resources=d.get("resources") or [], deletes=d.get("deletes") or [], **kw)
        order = source_order.from_extensions([d.get("order")])
        if order:
            conv.source_time, conv.source_series, conv.source_version = \
                order.time, order.series, order.version
        return conv

    def write_keys(self) -> dict[str, bytes]:
        """"Type/id" -> content of what this conversion writes there (a batch must not carry two
        different writes to one resource: a re-sent batch must be a no-op, never a revert). The
        source-order stamp is not content: every message repeats its institution's Organization."""
        keys = {f"{r['resourceType']}/{r['id']}": orjson.dumps(source_order.strip(r),
                                                               option=orjson.OPT_SORT_KEYS)
                for r in self.resources}
        order = orjson.dumps(self.order().extension()) if self.deletes and self.order() else b""
        keys.update({ref: b"DELETE" + order for ref in self.deletes})
        return keys

    def bundle(self, type_: str = "transaction") -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": type_, "entry": self.entries()}


class MappingError(HubError):
    """The payload cannot be converted. ``code`` follows HL7 v2 MSA-1: AR = rejected (the
    message itself is unacceptable: framing, encoding, unsupported type), AE = application error
    (well-formed but its content cannot be mapped). The root of the mappers' errors."""

    error_code = "mapping"

    def __init__(self, reason: str, *, code: str = "AE", location: str | None = None,
                 rule: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.location = location
        self.rule = rule

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "code": self.code, "location": self.location,
                "rule": self.rule}
