"""SIU^S12-S26: SCH (+TQ1, AIS/AIG/AIL/AIP) -> Appointment; each AIP/AIL resource with a start
and a duration also gets a Schedule and a busy Slot the Appointment points to."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from . import datatypes as dt
from .context import Ctx
from .encounter import location
from .message import Seg
from .patient_context import patient_context, patient_notes
from .people import practitioner
from .tables import table

_STATUS = table("codes")["appointment_status"]
_UNITS = {"MIN": 1, "M": 1, "MINUTES": 1, "H": 60, "HR": 60, "HOURS": 60, "S": 1 / 60, "D": 1440}


def _minutes(amount: str, units: list[list[str]]) -> float | None:
    a = dt.decimal(amount)
    if a is None or isinstance(a, bool):
        return None
    factor = _UNITS.get(dt.comp(units, 1).upper())
    if factor is None:
        return None
    try:
        return dt.to_float(a) * factor
    except ValueError:
        return None


def _plus(start: str, minutes: float) -> str | None:
    try:
        t = _dt.datetime.fromisoformat(start)
        if t.tzinfo is None or minutes <= 0 or minutes > 60 * 24 * 366:
            return None
        end = t + _dt.timedelta(minutes=minutes)
    except (ValueError, OverflowError):
        return None
    return end.isoformat(timespec="seconds") if end.microsecond == 0 else end.isoformat()


def build(ctx: Ctx) -> None:
    sch = ctx.msg.first("SCH")
    if sch is None:
        raise ctx.error(f"{ctx.kind} has no SCH segment", "SCH", "v2.sch.missing")
    patient_context(ctx)
    filler, placer = dt.comp(sch.rep(2), 1), dt.comp(sch.rep(1), 1)
    if not filler and not placer:
        raise ctx.error("SCH-1 (placer appointment id) and SCH-2 (filler appointment id) are both empty",
                        "SCH-2", "v2.sch-2.missing")
    idents = [i for i in (ctx.local_identifier("appointment", filler, "FILL", loc="SCH-2") if filler else None,
                          ctx.local_identifier("appointment", placer, "PLAC", loc="SCH-1") if placer else None) if i]
    usable = {i["type"]["coding"][0]["code"]: i["value"] for i in idents}
    key = ("F:" + usable["FILL"] if "FILL" in usable else "P:" + usable["PLAC"] if "PLAC" in usable
           else f"M:{ctx.msg.msh.get(10)}")  # only placeholders: scoped by this message
    res: dict[str, Any] = {"resourceType": "Appointment", "id": ctx.id("Appointment", key)}
    if idents:
        res["identifier"] = idents
    status = _STATUS.get(ctx.trigger, "booked")
    s25 = dt.comp(sch.rep(25), 1).upper()
    if s25 in _STATUS["sch25"]:
        status = _STATUS["sch25"][s25]
    res["status"] = status
    ais_all = ctx.msg.all("AIS")
    ais = ais_all[0] if ais_all else None
    services = [c for c in (dt.concept(s.rep(3)) for s in ais_all) if c]
    if services:
        res["serviceType"] = [c for i, c in enumerate(services) if c not in services[:i]]
    requests = [r for r in (_service_request(ctx, s, key, status) for s in ais_all) if r]
    if requests:
        res["basedOn"] = requests
    atype = dt.concept(sch.rep(8))
    if atype:
        res["appointmentType"] = atype
    reason = dt.concept(sch.rep(7))
    if reason:
        res["reasonCode"] = [reason]
    tq1 = ctx.msg.first("TQ1")
    start = end = None
    if tq1 is not None:
        start, end = dt.datetime(tq1.get(7), instant=True), dt.datetime(tq1.get(8), instant=True)
    if start is None:
        start, end = dt.datetime(dt.comp(sch.rep(11), 4), instant=True), dt.datetime(dt.comp(sch.rep(11), 5), instant=True)
    if start is None and ais is not None:
        start = dt.datetime(ais.get(4), instant=True)
    duration = _minutes(sch.get(9), sch.rep(10))
    if start and end is None and duration:
        end = _plus(start, duration)
    if start and end and end > start:
        res["start"], res["end"] = start, end
    elif start and status in ("proposed", "cancelled", "waitlist"):
        res["start"] = start
    if duration and duration == int(duration) and 0 < duration < 10 ** 6:
        res["minutesDuration"] = int(duration)
    pid = ctx.msg.first("PID")
    about_patient = {n.index for n in patient_notes(ctx, pid)} if pid is not None else set()
    notes = [n.text(3) for n in ctx.msg.all("NTE") if n.text(3) and n.index not in about_patient]
    if notes:
        res["comment"] = "\n".join(notes)
    pstatus = "declined" if status in ("cancelled", "noshow") else "accepted"
    participants: list[dict[str, Any]] = [{"actor": ctx.patient_ref, "status": pstatus}]
    slots = []
    for seg in ctx.msg.segments:
        ref = None
        if seg.name == "AIP":
            ref = practitioner(ctx, seg.rep(3), seg.loc(3))
            when, dur = seg.get(6), _minutes(seg.get(9), seg.rep(10))
        elif seg.name == "AIL":
            ref = location(ctx, seg.rep(3))
            when, dur = seg.get(6), _minutes(seg.get(9), seg.rep(10))
        elif seg.name == "AIG":
            label = dt.comp(seg.rep(3), 2) or dt.comp(seg.rep(3), 1)
            if label:
                participants.append({"actor": {"display": label}, "status": pstatus})
            continue
        else:
            continue
        if ref is None:
            continue
        participants.append({"actor": ref, "status": pstatus})
        s = dt.datetime(when, instant=True)
        e = _plus(s, dur) if s and dur else None
        if s and e:
            slots.append(_slot(ctx, ref, s, e, status))
    res["participant"] = participants
    if slots:
        res["slot"] = slots
    ctx.add(res)


def _service_request(ctx: Ctx, ais: Seg, key: str, status: str) -> dict | None:
    """AIS (a service the appointment is for) -> the ServiceRequest it fulfils: code AIS-3, when
    AIS-4 (start) and, from AIS-7/8, how long."""
    code = dt.concept(ais.rep(3))
    if code is None:
        return None
    res: dict[str, Any] = {"resourceType": "ServiceRequest",
                           "id": ctx.id("ServiceRequest", "AIS", key, ais.get(1) or ais.ordinal,
                                        dt.comp(ais.rep(3), 1)),
                           "status": "revoked" if status in ("cancelled", "noshow") else "active",
                           "intent": "order", "code": code, "subject": ctx.patient_ref}
    start = dt.datetime(ais.get(4))
    if start:
        res["occurrenceDateTime"] = start
    ref = ctx.add(res)
    return {"reference": ref["reference"]}


def _slot(ctx: Ctx, actor: dict, start: str, end: str, status: str) -> dict:
    actor_ref = {"reference": actor["reference"]}
    sched = {"resourceType": "Schedule", "id": ctx.id("Schedule", actor["reference"]), "active": True,
             "actor": [actor_ref]}
    sched_ref = ctx.add(sched)
    slot = {"resourceType": "Slot", "id": ctx.id("Slot", actor["reference"], start, end),
            "schedule": sched_ref, "status": "free" if status in ("cancelled", "noshow") else "busy",
            "start": start, "end": end}
    return ctx.add(slot)
