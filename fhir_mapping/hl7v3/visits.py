"""Visit interactions (H07: outpatient registration, inpatient admission, their updates, discharge)
-> Encounter. The tables are ``tables/visits.yaml``.

``controlActProcess/subject/encounterEvent`` carries the visit: its ids (the serial number keys it,
else the outpatient or inpatient number with the visit count), its patient type (outpatient,
emergency, inpatient: ``Encounter.class``), start and end, reason, the patient (referred to by the
local patient id, as the patient registration keys it: the Patient itself is the patient
registration's to write, so a visit message never overwrites what was registered), the admitting
and attending doctors, the department, and the institution. The Encounter id is the one the HL7 v2
feed of that hospital gives its visit number (``fhir_mapping.ids.encounter_id``: the patient's key
and the visit number).
"""

from __future__ import annotations

from typing import Any

from fhir_mapping.base import MappingError
from fhir_mapping.ids import encounter_id

from .common import (
    Ctx,
    attr,
    concept,
    fhir_datetime,
    first,
    ids,
    local_name,
    q,
    table,
    text_parts,
)
from .registrations import _keys, _practitioner, _provider_org, _where, keyed_patient_ref, place_ref

EVENT = "/*/hl7:controlActProcess/hl7:subject/hl7:encounterEvent"


def _visit_key(ctx: Ctx, ev: Any, t: dict[str, Any]) -> str:
    idl = ids(first(ev, "id"))
    usable = dict(_keys(idl))  # no filler value is a key
    if usable.get(t["serial_root"]):
        return usable[t["serial_root"]]
    count = next((e for r, e in idl if r == t["count_root"] and e), "")
    for root in t["number_roots"]:
        if usable.get(root):
            return f"{usable[root]}-{count}" if count else usable[root]
    raise MappingError("the visit has no usable id (encounterEvent/id/item): a serial number "
                       f"({t['serial_root']}) or an outpatient or inpatient number",
                       code="AE", location=f"{EVENT}/hl7:id", rule="v3.visit.id-missing")


def _event(ctx: Ctx) -> Any:
    ev = first(ctx.msg.control, "subject/encounterEvent")
    if ev is None:
        raise MappingError("no subject/encounterEvent in the message", code="AE",
                           location="/*/hl7:controlActProcess/hl7:subject", rule="v3.visit.missing")
    return ev


def _encounter(ctx: Ctx, ev: Any, t: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Encounter with its id (the patient's key and ``_visit_key``) and identifiers (the visit
    count is none), and its subject."""
    visit = _visit_key(ctx, ev, t)
    pkey, subject = _subject(ctx, ev)
    res: dict[str, Any] = {"resourceType": "Encounter", "id": encounter_id(ctx.inst, pkey, visit)}
    where = _where(ctx, first(ev, "id"))
    idents = [i for i in (ctx.identifier(r, e, where) for r, e in ids(first(ev, "id"))
                          if r != t["count_root"]) if i]
    if idents:
        res["identifier"] = idents
    return res, subject


def _subject(ctx: Ctx, ev: Any) -> tuple[str, dict[str, Any]]:
    """The visit's patient as a Reference: keyed as the patient registration keys it, with the
    key as an identifier too (it resolves before the patient is registered) and the name."""
    patient = first(ev, "subject/patient")
    if patient is None:
        raise MappingError("the visit names no patient (subject/patient)", code="AE",
                           location=f"{EVENT}/hl7:subject", rule="v3.visit.patient-missing")
    return keyed_patient_ref(ctx, patient, f"{EVENT}/hl7:subject/hl7:patient")


def _place(ctx: Ctx, sdl: Any) -> dict[str, Any] | None:
    """A serviceDeliveryLocation as an Encounter.location's Reference: the department's id, and
    the department, ward, room and bed it names, outermost first, as its display."""
    place = first(sdl, "location")
    if place is None:
        return None
    names = [text_parts(first(place, "name"))]
    part = place
    while (part := first(part, "locatedEntityHasParts/locatedPlace")) is not None:
        names.append(text_parts(first(part, "name")))
    return place_ref(ctx, place, " ".join(n for n in names if n))


def transfer(ctx: Ctx) -> list[dict[str, str]]:
    """PRPA_IN302011UV / PRPA_IN302012UV (住院转科): the ward the patient left (``location2``) and
    the one they moved to (``location1``), each with its time; the rest of the visit is the stored
    one's (``hub.v3intake`` keeps it)."""
    t = table("visits")
    ev = _event(ctx)
    res, subject = _encounter(ctx, ev, t)
    # a transfer is between wards: an inpatient stay
    res["class"] = {"system": t["class_system"], **t["classes"]["3"]}
    res["status"] = "in-progress"
    res["subject"] = subject
    locations = []
    for element, status, bound in (("location2", "completed", "end"),
                                   ("location1", "active", "start")):
        loc = first(ev, element)
        place = _place(ctx, first(loc, "serviceDeliveryLocation"))
        if place is None:
            continue
        entry: dict[str, Any] = {"location": place, "status": status}
        when = fhir_datetime(attr(first(loc, "time/low"), "value"))
        if when:
            entry["period"] = {bound: when}
        locations.append(entry)
    if not any(e["status"] == "active" for e in locations):
        raise MappingError("the transfer names no ward moved to (location1)", code="AE",
                           location=f"{EVENT}/hl7:location1", rule="v3.transfer.destination-missing")
    res["location"] = locations
    res["serviceProvider"] = _provider_org(ctx, None)
    ctx.add(res)
    return []


def visit(ctx: Ctx) -> list[dict[str, str]]:
    """PRPA_IN400001UV (register), PRPA_IN400002UV (update), PRPA_IN400003UV (discharge)."""
    t = table("visits")
    ev = _event(ctx)
    res, subject = _encounter(ctx, ev, t)
    ptype = first(ev, "code")
    klass = t["classes"].get(attr(ptype, "code"))
    if klass is None:
        raise MappingError(f"patient type {attr(ptype, 'code')!r} is not one of the table "
                           f"{t['type_system']} ({', '.join(t['classes'])})", code="AE",
                           location=f"{EVENT}/hl7:code", rule="v3.visit.type-unknown")
    res["class"] = {"system": t["class_system"], **klass}
    kind = concept(ptype)
    if kind:
        res["type"] = [kind]
    status = t["act_status"].get(attr(first(ev, "statusCode"), "code"))
    if status is None:
        defaults = t["status"][ctx.msg.interaction]
        status = defaults.get(klass["code"], defaults["default"]) or "in-progress"
    res["status"] = status
    low = fhir_datetime(attr(first(ev, "effectiveTime/low"), "value"))
    high = fhir_datetime(attr(first(ev, "effectiveTime/high"), "value"))
    if attr(first(ev, "effectiveTime/low"), "value") and low is None:
        ctx.find("warning", "v3.visit.time-invalid", "effectiveTime/low is not an HL7 TS: no start",
                 f"{EVENT}/hl7:effectiveTime/hl7:low/@value")
    period = {k: v for k, v in (("start", low), ("end", high)) if v}
    if status == "finished" and "end" not in period:
        ctx.find("warning", "v3.visit.end-missing", "a discharge without effectiveTime/high: the "
                 "visit is finished with no end time", f"{EVENT}/hl7:effectiveTime")
    if period:
        res["period"] = period
    reasons: list[str] = []
    for item in q(ev, "reasonCode/item"):  # its text, and a code's text (or the code)
        coded = concept(item)
        reasons += [text for text in (attr(first(item, "originalText"), "value"),
                                      coded and (coded.get("text") or coded["coding"][0]["code"]))
                    if text]
    if reasons:
        res["reasonCode"] = [{"text": r} for r in dict.fromkeys(reasons)]
    if first(ev, "admissionReferralSourceCode") is not None:
        ctx.find("information", "v3.visit.unmapped", "admissionReferralSourceCode (the insurance "
                 "category in these messages) is not mapped: a Coverage needs the payer",
                 f"{EVENT}/hl7:admissionReferralSourceCode")
    res["subject"] = subject
    agents = []
    for role, code in t["participants"].items():
        ref = _practitioner(ctx, first(ev, f"{role}/assignedPerson"))
        if ref is None:
            continue
        agents.append(ref)
        res.setdefault("participant", []).append({
            "type": [{"coding": [{"system": t["participation_system"], "code": code}]}],
            "individual": ref})
    sdl = first(ev, "location/serviceDeliveryLocation")
    dept = _place(ctx, sdl)
    if dept is not None:
        res["location"] = [{"location": dept,
                            "status": "completed" if status == "finished" else "active"}]
    res["serviceProvider"] = _provider_org(ctx, first(sdl, "serviceProviderOrganization"))
    booked = _appointments(ctx, ev)
    if booked:
        res["appointment"] = booked
    ctx.add(res)
    return agents


def _appointments(ctx: Ctx, ev: Any) -> list[dict[str, Any]]:
    """The appointment a visit fulfils (``inFulfillmentOf/*Appointment/id``): the Appointment the
    appointment messages key by that number (hl7v3.appointments), with the number as its
    identifier, so it resolves whichever of the two messages comes first."""
    out = []
    for done in q(ev, "inFulfillmentOf"):
        act = next((c for c in done if isinstance(c.tag, str)
                    and local_name(c).endswith("Appointment")), None)
        idl = ids(first(act, "id"))
        keys = _keys(idl)
        if not keys:
            continue
        ref: dict[str, Any] = {"reference": f"Appointment/{ctx.id('Appointment', keys[0][1])}"}
        ident = next((ctx.identifier(r, e, _where(ctx, first(act, "id"))) for r, e in idl
                      if e == keys[0][1] and r), None)
        if ident:
            ref["identifier"] = {k: v for k, v in ident.items() if k in ("system", "value")}
        out.append(ref)
    return out
