"""Source slots (号源排班: PRSC_IN030101UV new, PRSC_IN030102UV update) -> Schedule + Slot
(tables ``appointments.yaml``: ``slot_status``).

The ``schedule`` act (the HL7 v3 scheduling model's, moodCode SLOT) is a clinic session: its
number keys the Schedule, its code is the kind of slot (普通号, 专家号), its effectiveTime the
session (``planningHorizon``). Its ``component/resourceSlot`` entries either name a resource
(``directTarget/identifiedEntity``: the doctor as a Practitioner, the clinic as a display-only
actor) or, with a time of their own, are the session's slots (号源), each a Slot of the Schedule
with its status. An update re-sends the session: the slots it names change, the others stay.
"""

from __future__ import annotations

from typing import Any

from fhir_mapping.base import MappingError

from .common import Ctx, attr, concept, fhir_datetime, first, ids, q, table, text_parts
from .registrations import _keys, _practitioner, _where

SUBJECT = "/*/hl7:controlActProcess/hl7:subject/hl7:schedule"


def schedule(ctx: Ctx) -> list[dict[str, str]]:
    t = table("appointments")
    act = first(ctx.msg.control, "subject/schedule")
    if act is None:
        raise MappingError("no subject/schedule in the message", code="AE",
                           location="/*/hl7:controlActProcess/hl7:subject",
                           rule="v3.schedule.missing")
    keys = _keys(ids(first(act, "id")))
    if not keys:
        raise MappingError("the schedule has no usable number (schedule/id)", code="AE",
                           location=_where(ctx, first(act, "id")) or SUBJECT,
                           rule="v3.schedule.id-missing")
    res: dict[str, Any] = {"resourceType": "Schedule", "id": ctx.id("Schedule", keys[0][1]),
                           "identifier": [{"value": keys[0][1]}], "active": True}
    code = attr(first(act, "statusCode"), "code")
    if code in ("cancelled", "aborted", "nullified", "obsolete"):
        res["active"] = False
    kind = concept(first(act, "code"))
    if kind:
        res["serviceType"] = [kind]
    low = fhir_datetime(attr(first(act, "effectiveTime/low"), "value"), instant=True)
    high = fhir_datetime(attr(first(act, "effectiveTime/high"), "value"), instant=True)
    horizon = {k: v for k, v in (("start", low), ("end", high)) if v}
    if horizon:
        res["planningHorizon"] = horizon
    actors: list[dict[str, Any]] = []
    agents: list[dict[str, str]] = []
    slots = []
    for slot in q(act, "component/resourceSlot"):
        entity = first(slot, "directTarget/identifiedEntity")
        person = first(entity, "identifiedPerson")
        place = first(entity, "identifiedPlace")
        if person is not None:
            actor = _person(ctx, person)
            if actor is not None:
                actors.append(actor)
                agents.append(actor)
        elif place is not None:
            label = text_parts(first(place, "name"))
            number = next((e for _, e in ids(first(place, "id")) if e), "")
            if label or number:
                actors.append({k: v for k, v in (("display", label),
                                                 ("identifier", {"value": number} if number else None))
                               if v})
        if first(slot, "effectiveTime") is not None:
            slots.append(slot)
    if not actors:
        raise MappingError("the schedule names no doctor or clinic (component/resourceSlot/"
                           "directTarget/identifiedEntity)", code="AE",
                           location=_where(ctx, act) or SUBJECT, rule="v3.schedule.actor-missing")
    res["actor"] = actors
    ref = ctx.add(res)
    for i, slot in enumerate(slots, 1):
        _slot(ctx, slot, ref, res, i, t)
    return agents


def _person(ctx: Ctx, person: Any) -> dict[str, str] | None:
    """The doctor of a session: the identifiedPerson's own id and name."""
    return _practitioner(ctx, person, "")


def _slot(ctx: Ctx, slot: Any, schedule: dict[str, str], res: dict[str, Any], n: int,
          t: dict[str, Any]) -> None:
    number = next((e for _, e in _keys(ids(first(slot, "id")))), "") or str(n)
    start = fhir_datetime(attr(first(slot, "effectiveTime/low"), "value"), instant=True)
    end = fhir_datetime(attr(first(slot, "effectiveTime/high"), "value"), instant=True)
    if not start or not end:
        raise MappingError("a slot needs its start and end (resourceSlot/effectiveTime low and "
                           "high, with their time of day)", code="AE",
                           location=_where(ctx, first(slot, "effectiveTime")) or SUBJECT,
                           rule="v3.schedule.slot-time")
    code = attr(first(slot, "statusCode"), "code") or "normal"
    status = t["slot_status"].get(code)
    if status is None:
        raise MappingError(f"slot statusCode {code!r} is none of {', '.join(t['slot_status'])}",
                           code="AE", location=_where(ctx, first(slot, "statusCode")) or SUBJECT,
                           rule="v3.schedule.slot-status")
    out: dict[str, Any] = {"resourceType": "Slot",
                           "id": ctx.id("Slot", res["identifier"][0]["value"], number),
                           "identifier": [{"value": number}], "schedule": schedule,
                           "status": status, "start": start, "end": end}
    if res.get("serviceType"):
        out["serviceType"] = res["serviceType"]
    ctx.add(out)
