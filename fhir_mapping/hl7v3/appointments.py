"""Appointment interactions -> Appointment (tables ``appointments.yaml``).

Outpatient appointments (PRPA_IN410001UV new, PRPA_IN410002UV update) and examination
appointments and surgery scheduling (PRSC_IN010101UV01 new, PRSC_IN010201UV01 update) carry one
appointment act (``actAppointment``, ``encounterAppointment``): its number keys the Appointment;
its time (``effectiveTime`` low, and high or a width), the patient, the people (surgeon,
assistants, anaesthetist: ``performer``, their role as the participant's type), the device and
room booked, the department, and the request form it serves (``referencedOrder``). A surgery is
told from an examination by its words (tables), a cancellation by its status.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from lxml import etree

from fhir_mapping.base import MappingError

from .common import Ctx, attr, display, fhir_datetime, first, ids, local_name, q, table, text_parts
from .registrations import _keys, _practitioner, _where, patient_ref, place_ref

SUBJECT = "/*/hl7:controlActProcess/hl7:subject"


def _act(ctx: Ctx) -> etree._Element:
    subject = first(ctx.msg.control, "subject")
    act = next((c for c in (subject if subject is not None else [])
                if isinstance(c.tag, str) and local_name(c).endswith("Appointment")), None)
    if act is None:
        raise MappingError("no appointment in the message (subject/actAppointment or "
                           "encounterAppointment)", code="AE", location=SUBJECT,
                           rule="v3.appointment.missing")
    return act


def _end(start: str | None, width: etree._Element | None, t: dict[str, Any]) -> tuple[str | None, int | None]:
    """The end and the minutes of an appointment that gives a width instead of an end."""
    value, unit = attr(width, "value"), attr(width, "unit")
    factor = t["minutes"].get(unit)
    if not start or not value or factor is None or "T" not in start:
        return None, None
    try:
        minutes = int(round(float(value) * factor))
        began = datetime.fromisoformat(start)
        return (began + timedelta(minutes=minutes)).isoformat(), minutes
    except (ValueError, OverflowError):  # not a number, or beyond any calendar (1e400 min)
        return None, None


def appointment(ctx: Ctx) -> list[dict[str, str]]:
    t = table("appointments")
    act = _act(ctx)
    idl = ids(first(act, "id"))
    keys = _keys(idl)
    if not keys:
        raise MappingError("the appointment has no usable number (its id)", code="AE",
                           location=_where(ctx, first(act, "id")) or SUBJECT,
                           rule="v3.appointment.id-missing")
    res: dict[str, Any] = {"resourceType": "Appointment", "id": ctx.id("Appointment", keys[0][1])}
    where = _where(ctx, first(act, "id"))
    idents = [i for i in (ctx.identifier(r, e, where) if r else {"value": e} for r, e in idl) if i]
    if idents:
        res["identifier"] = idents
    code = attr(first(act, "statusCode"), "code")
    status = t["status"].get(code) if code else t["default_status"].get(ctx.msg.interaction)
    if code and status is None:
        raise MappingError(f"statusCode {code!r} is not an appointment status "
                           f"({', '.join(t['status'])})", code="AE",
                           location=_where(ctx, first(act, "statusCode")) or SUBJECT,
                           rule="v3.appointment.status-unknown")
    if status:
        res["status"] = status
    else:  # an update that does not say: the stored appointment's status stands
        ctx.default(res, "status", "booked")
    eff = first(act, "effectiveTime")
    start = fhir_datetime(attr(first(eff, "low"), "value"), instant=True)
    end = fhir_datetime(attr(first(eff, "high"), "value"), instant=True)
    minutes = None
    if start and not end:
        end, minutes = _end(start, first(eff, "width"), t)
    if start:
        res["start"] = start
    if end:
        res["end"] = end
    if minutes:
        res["minutesDuration"] = minutes
    words: list[str] = []  # what tells a surgery from an examination
    note = attr(first(eff, "originalText"), "value")
    if note:
        res["comment"] = note
        words.append(note)
    participants: list[dict[str, Any]] = []
    patient = first(act, "subject/patient")
    if patient is None:
        raise MappingError("the appointment names no patient (subject/patient)", code="AE",
                           location=_where(ctx, act) or SUBJECT, rule="v3.appointment.patient-missing")
    actor = patient_ref(ctx, patient, _where(ctx, patient) or SUBJECT)
    participants.append({"actor": actor, "status": "accepted"})
    agents = []
    for performer in q(act, "performer"):
        entity = first(performer, "assignedPerson")
        ref = _practitioner(ctx, entity)
        if ref is None:
            continue
        agents.append(ref)
        role = display(first(entity, "code")) or attr(first(entity, "code"), "code")
        part: dict[str, Any] = {"actor": ref, "status": "accepted"}
        if role:
            part["type"] = [{"text": role}]
            words.append(role)
        participants.append(part)
    device = first(act, "reusableDevice/manufacturedDevice/manufacturedDevice")
    if device is not None:
        label = text_parts(first(device, "name"))
        dev: dict[str, Any] = {"display": label} if label else {}
        number = next((e for _, e in ids(first(device, "id")) if e), "")
        if number:
            dev["identifier"] = {"value": number}
        if dev:
            participants.append({"actor": dev, "status": "accepted", "type": [{"text": "device"}]})
            words.append(label)
    sdl = first(act, "location/serviceDeliveryLocation")
    if sdl is not None:
        room = text_parts(first(sdl, "location/name"))
        dept = text_parts(first(sdl, "addr")) or text_parts(first(sdl, "serviceProviderOrganization/name"))
        place = place_ref(ctx, sdl, " ".join(p for p in (dept, room) if p))
        if place is not None and place.get("display"):
            participants.append({"actor": place, "status": "accepted",
                                 "type": [{"text": "location"}]})
            words.append(place["display"])
    res["participant"] = participants
    forms = [ctx.identifier(r or t["requisition_root"], e, _where(ctx, first(act, "referencedOrder")))
             for r, e in ids(first(act, "referencedOrder/actOrder/id")) if e]
    if any(forms):
        res["basedOn"] = [{"type": "ServiceRequest", "identifier":
                           {k: v for k, v in f.items() if k in ("system", "value", "type")}}
                          for f in forms if f]
    kind = t["by_interaction"].get(ctx.msg.interaction) or next(
        (r["kind"] for r in t["kinds"] if any(re.search(re.escape(w), " ".join(words), re.I)
                                              for w in r["words"])), t["default_kind"])
    cat = t["categories"][kind]
    res["serviceCategory"] = [{"coding": [{"system": t["category_system"], "code": cat["code"],
                                           "display": cat["display"]}], "text": cat["display"]}]
    ctx.add(res)
    return agents
