"""HL7 v3 interaction messages of the hospital-platform interaction services -> FHIR, and back.

    convert(payload, source) -> Conversion       registrations (patients, merges, institutions and
                                                 departments, practitioners, document registrations,
                                                 visits, orders and requests)
    parse_query(payload, source=None) -> dict    queries (patient, organisation, practitioner,
                                                 document search / retrieve) as FHIR search criteria
    respond(query, resources, ...) -> bytes      the conformant v3 response to a query
    acknowledge(payload, code, text, ...) -> bytes   MCCI_IN000002UV01 (AA / AE / AR) for any message
    interaction_of(payload) -> (interaction id, table entry)

Pure (no clock, no I/O): ids come from ``stable_id`` over the message's own identifiers, so a replay
changes nothing; response and acknowledgement times and ids are parameters (or derived from the
request). Mapping tables are data in ``tables/*.yaml``.
"""

from __future__ import annotations

from typing import Any

from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.identifiers import usable
from fhir_mapping.ids import local_suffixes

from . import appointments, orders, registry, schedules, status, visits
from . import registrations as reg
from .ack import acknowledge
from .common import Ctx, Message, fhir_datetime, ids, interactions, parse, table
from .query import parse_query, respond

__all__ = ["acknowledge", "convert", "interaction_of", "is_query", "parse_query", "respond"]

_HANDLERS = {
    "patient": reg.register_patient,
    "patient_merge": reg.merge_patients,
    "organization": reg.organization,
    "practitioner": reg.practitioner,
    "document": reg.document,
    "visit": visits.visit,
    "transfer": visits.transfer,
    "order": orders.order,
    "lab_status": status.lab_status,
    "appointment": appointments.appointment,
    "terminology": registry.register,
    "schedule": schedules.schedule,
}


def interaction_of(payload: bytes) -> tuple[str, dict[str, Any]]:
    """The interaction id (the root element's name) and its table entry; MappingError AR otherwise."""
    msg = parse(payload)
    return msg.interaction, interactions()[msg.interaction]


def is_query(payload: bytes) -> bool:
    return interaction_of(payload)[1]["kind"] == "query"


def _org_code(msg: Message) -> str:
    """The institution's organisation code (root 2.16.156.10011.1.5) the message names, if any."""
    for el in msg.root.iter("{urn:hl7-org:v3}id"):
        for root, ext in ids(el):
            if root == reg.ORG_CODE_ROOT and usable(ext):  # a filler names no institution
                return ext
    return ""


def convert(payload: bytes, source: SourceInfo) -> Conversion:
    """A registration message -> its FHIR resources (+ one Provenance). Queries are refused (AR):
    use ``parse_query`` and ``respond``."""
    msg = parse(payload)
    spec = interactions()[msg.interaction]
    if spec["kind"] != "registration":
        raise MappingError(f"{msg.interaction} is a query: answer it with parse_query() and respond()",
                           code="AR", location="/", rule="v3.query-not-convertible")
    ctx = Ctx(msg, source, _org_code(msg))
    agents = _HANDLERS[spec["handler"]](ctx)
    _provenance(ctx, spec, agents)
    resources = list(ctx.resources.values())
    patient = next((r for r in resources if r["resourceType"] == "Patient" and r.get("active", True)), None)
    return Conversion(resources=resources, unit_id=msg.message_id, kind=msg.interaction,
                      patient_key=f"Patient/{patient['id']}" if patient else None, findings=ctx.findings,
                      unsaid=ctx.unsaid)


def _provenance(ctx: Ctx, spec: dict[str, Any], agents: list[dict[str, str]]) -> None:
    codes = table("codes")
    recorded = fhir_datetime(ctx.msg.creation_time, instant=True)
    if recorded is None:
        raise MappingError(f"creationTime {ctx.msg.creation_time!r} is not an HL7 TS with at least a day",
                           code="AE", location="/*/hl7:creationTime/@value", rule="v3.creation-time.invalid")
    targets = [{"reference": f"{r['resourceType']}/{r['id']}"} for r in ctx.resources.values()]
    org = reg.institution_org(ctx)
    ptype = codes["participant_type_system"]
    agent = [{"type": {"coding": [{"system": ptype, "code": "custodian"}]}, "who": org}]
    for a in agents:
        agent.append({"type": {"coding": [{"system": ptype, "code": "enterer"}]}, "who": a,
                      "onBehalfOf": org})
    what: dict[str, Any] = {"identifier": {"value": ctx.msg.message_id}, "display": f"{ctx.msg.interaction} {ctx.msg.message_id}"}
    if ctx.oid:
        what["identifier"]["system"] = f"urn:oid:{ctx.oid}.{local_suffixes()['message']}"
    ctx.add({
        "resourceType": "Provenance",
        "id": ctx.id("Provenance", ctx.msg.interaction, ctx.msg.message_id),
        "target": targets,
        "recorded": recorded,
        "activity": {"coding": [{"system": codes["activity_system"], "code": spec["activity"]}],
                     "text": f"{ctx.msg.interaction} {spec.get('name', '')}".strip()},
        "agent": agent,
        "entity": [{"role": "source", "what": what}],
    })

