"""PV1/PV2 -> Encounter (class, status from the trigger, period, locations, participants) and the
Location and Practitioner resources it points to."""

from __future__ import annotations

from typing import Any

from fhir_mapping.ids import encounter_id, stable_id

from . import datatypes as dt
from .context import Ctx
from .message import Seg
from .people import identifier, practitioner
from .tables import table

_CODES = table("codes")
_CLASS = _CODES["patient_class"]
_STATUS = _CODES["encounter_status"]
_PART = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"),
                 (17, "ADM", "admitter"))


def location(ctx: Ctx, rep: list[list[str]]) -> dict[str, str] | None:
    text = dt.location_text(rep)
    if not text:
        return None
    parts = [dt.comp(rep, i) for i in (4, 1, 2, 3, 7, 8)]
    res: dict[str, Any] = {"resourceType": "Location", "id": ctx.id("Location", *parts), "status": "active",
                           "name": text, "mode": "instance"}
    bed, room, poc = dt.comp(rep, 3), dt.comp(rep, 2), dt.comp(rep, 1)
    kind = "bd" if bed else "ro" if room else "wa" if poc else None
    if kind:
        res["physicalType"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                                           "code": kind}]}
    res["managingOrganization"] = ctx.org_ref
    return dict(ctx.add(res), display=text)


def visit_key(ctx: Ctx, pv1: Seg) -> tuple[str | None, dict | None]:
    """The visit number (PV1-19, else PV1-50 alternate visit id) and its Identifier; a placeholder
    is neither (finding from ``identifier``), and the next one is tried."""
    for f in (19, 50):
        rep = pv1.rep(f)
        if dt.comp(rep, 1):
            ident = identifier(ctx, rep, pv1.loc(f), "visit")
            if ident is None:
                continue
            if "system" not in ident and not dt.comp(rep, 4):
                sysuri = ctx.local_system("visit")
                if sysuri:
                    ident["system"] = sysuri
            return ident["value"], ident
    return None, None


# roles of tables 0443 / 0912 that have a v3 participation type; others keep the sender's coding
_ROLE_TYPES = {"AD": "ADM", "AT": "ATND", "CP": "CON", "RP": "REF", "RT": "REFT", "DP": "DIS"}


def role_participants(ctx: Ctx, enc: dict) -> None:
    """ROL (v2.3-2.6) and PRT (v2.7+) sent with the visit, before any order: their people as Encounter
    participants, the role (tables 0443 / 0912) as participation type, begin and end as period."""
    added = enc.setdefault("participant", [])
    for seg in ctx.msg.segments:
        if seg.name in ("ORC", "OBR", "RXA", "SCH", "TXA", "FT1", "PRB", "RXO", "RXE"):
            break
        if seg.name not in ("ROL", "PRT"):
            continue
        person_f, role_f, begin_f, end_f = (4, 3, 5, 6) if seg.name == "ROL" else (5, 4, 11, 12)
        role = dt.concept(seg.rep(role_f))
        code = _ROLE_TYPES.get(dt.comp(seg.rep(role_f), 1).upper())
        begin, end = dt.datetime(seg.get(begin_f)), dt.datetime(seg.get(end_f))
        period = {k: v for k, v in (("start", begin), ("end", end)) if v}
        for i, rep in enumerate(seg.field(person_f), 1):
            ref = practitioner(ctx, rep, seg.loc(person_f, i))
            if ref is None:
                continue
            part: dict[str, Any] = {}
            if code:
                part["type"] = [{"coding": [{"system": _PART, "code": code}]}]
            elif role:
                part["type"] = [role]
            if period:
                part["period"] = period
            part["individual"] = ref
            added.append(part)
    if not added:
        del enc["participant"]


def encounter(ctx: Ctx, pv1: Seg, pv2: Seg | None) -> dict | None:
    key, ident = visit_key(ctx, pv1)
    admit = dt.datetime(pv1.get(44))
    scope = ""
    if key is not None:
        # the shared convention (fhir_mapping.ids): one hospital's feeds meet on this visit, and
        # another patient's visit of the same number is another Encounter
        rid = encounter_id(ctx.inst, ctx.patient_key or "", key)
        # order and result keys carry the patient already: their visit scope stays the visit
        # number under the institution, so the ids of stored orders and results stay put
        scope = stable_id("Encounter", ctx.inst, "VN", key)
    elif admit:
        rid = ctx.id("Encounter", ctx.patient_key, "admit", admit)
        ctx.find("warning", "v2.pv1-19.missing", "no visit number (PV1-19): the Encounter is keyed by "
                 "patient and admit time (PV1-44)", "PV1-19")
    else:
        if not pv1.get(2) and not pv1.has(3):
            return None  # an empty PV1 (A28, A31 send "PV1|1|N")
        rid = ctx.id("Encounter", ctx.patient_key, "message", ctx.msg.msh.get(10))
        ctx.find("warning", "v2.pv1-19.missing", "no visit number (PV1-19) nor admit time (PV1-44): "
                 "the Encounter is keyed by this message and later messages cannot update it", "PV1-19")
    discharge = dt.datetime(pv1.get(45))
    status = _STATUS.get(ctx.trigger, _STATUS["default"])
    if status == "pv1":
        status = "finished" if discharge else "in-progress"
    pclass = pv1.get(2).upper()
    code, display = _CLASS["map"].get(pclass, _CLASS["default"])
    if pclass and pclass not in _CLASS["map"]:
        ctx.find("information", "v2.pv1-2.unmapped", f"patient class {pclass!r} not in the table; "
                 f"Encounter.class set to {code}", "PV1-2")
    res: dict[str, Any] = {"resourceType": "Encounter", "id": rid}
    if ident:
        res["identifier"] = [ident]
    res["status"] = status
    res["class"] = {"system": _CLASS["system"], "code": code, "display": display}
    adm_type = dt.concept(pv1.rep(4))
    if adm_type:
        res["type"] = [adm_type]
    service = dt.concept(pv1.rep(10))
    if service:
        res["serviceType"] = service
    res["subject"] = ctx.patient_ref
    participants = []
    for f, code_, _name in _PARTICIPANTS:
        for i, rep in enumerate(pv1.field(f), 1):
            ref = practitioner(ctx, rep, pv1.loc(f, i))
            if ref:
                participants.append({"type": [{"coding": [{"system": _PART, "code": code_}]}], "individual": ref})
    if participants:
        res["participant"] = participants
    if admit or discharge:
        res["period"] = {k: v for k, v in (("start", admit), ("end", discharge)) if v}
    if pv2 is not None:
        reason = dt.concept(pv2.rep(3))
        if reason:
            res["reasonCode"] = [reason]
    hosp: dict[str, Any] = {}
    src = dt.concept(pv1.rep(14))
    if src:
        hosp["admitSource"] = src
    readm = dt.concept(pv1.rep(13))
    if readm:
        hosp["reAdmission"] = readm
    disp = dt.concept(pv1.rep(36))
    if disp:
        hosp["dischargeDisposition"] = disp
    if hosp:
        res["hospitalization"] = hosp
    locs = []
    cur = location(ctx, pv1.rep(3))
    if cur:
        locs.append({"location": cur, "status": "completed" if status == "finished" else "active"})
    if ctx.trigger in ("A02", "A12"):
        prior = location(ctx, pv1.rep(6))
        if prior and (not cur or prior["reference"] != cur["reference"]):
            locs.append({"location": prior, "status": "completed"})
    if locs:
        res["location"] = locs
    res["serviceProvider"] = ctx.org_ref
    ref = ctx.add(res)
    ctx.encounter_ref = ref
    ctx.visit = scope or rid
    return res
