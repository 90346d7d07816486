"""Orders: ORC/OBR -> ServiceRequest (ORM, OML, OMG, REF); ORC/RXO/RXE/RXR (+RXD) ->
MedicationRequest (+MedicationDispense) (RDE, RDS); RXA/RXR -> Immunization (VXU)."""

from __future__ import annotations

import copy
import re
from datetime import datetime, timedelta
from typing import Any

from . import datatypes as dt
from .context import Ctx
from .financial import charges
from .message import Seg
from .patient_context import patient_context
from .people import as_annotations, note_text, practitioner, provider
from .results import observation, occurrences, participants, report_key, specimen, split_groups
from .tables import table

_CODES = table("codes")
_ORDER = _CODES["order_status"]
_MEDSTATUS = _CODES["medication_status"]
_IMM = _CODES["immunization_status"]


def order_status(orc: Seg | None) -> str:
    if orc is None:
        return _ORDER["default"]
    return (_ORDER["orc5"].get(orc.get(5).upper()) or _ORDER["orc1"].get(orc.get(1).upper())
            or _ORDER["default"])


def _requester(ctx: Ctx, orc: Seg | None, obr: Seg | None = None) -> dict | None:
    for seg, f in ((orc, 12), (obr, 16)):
        if seg is not None:
            ref = practitioner(ctx, seg.rep(f), seg.loc(f))
            if ref:
                return ref
    return None


def build_service_requests(ctx: Ctx) -> None:
    """ORM/OML/OMG/REF: each order group by its detail segment: OBR -> ServiceRequest, RXO ->
    MedicationRequest, ODS -> NutritionOrder, RQD -> SupplyRequest."""
    patient_context(ctx)
    groups, loose, early_spm = split_groups(ctx)
    early = [r for r in (specimen(ctx, s) for s in early_spm) if r]
    orders = [service_request(ctx, g, early) for g in groups]
    referral_providers(ctx, orders)
    made = len(groups)
    for n, g in enumerate((g for g in _pharmacy_groups(ctx) if "RXO" in g), 1):
        medication_request(ctx, g, n)
        made += 1
    made += nutrition_orders(ctx) + supply_requests(ctx)
    if not made:
        raise ctx.error(f"{ctx.kind} has no OBR, RXO, ODS or RQD segment: there is no order to map", "OBR",
                        "v2.obr.missing")
    charges(ctx, require=False)


def service_request(ctx: Ctx, g: Any, early: list[dict] | None = None,
                    with_observations: bool = True, *, keyed: tuple[str, list[dict]] | None = None,
                    specimens: list[dict] | None = None, reported: bool = False) -> dict[str, str]:
    """One order group (ORC + OBR, its TQ1, OBX and SPM) -> ServiceRequest. ``reported``: a
    DiagnosticReport of the group keeps OBR-7 (results messages)."""
    obr, orc = g.obr, g.orc
    key, idents = keyed or report_key(ctx, obr, orc)
    res: dict[str, Any] = {"resourceType": "ServiceRequest", "id": ctx.id("ServiceRequest", key)}
    if idents:
        res["identifier"] = idents
    res["status"] = order_status(orc)
    res["intent"] = "order"
    if ctx.msg.first("RF1") is not None:
        res["category"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005",
                                        "display": "Patient referral"}]}]
    timing, tq1_prio = _timing(ctx, g.tq1[0]) if g.tq1 else (None, None)
    prio = obr.get(5).upper() or (dt.comp(orc.rep(7), 6).upper() if orc else "")
    if tq1_prio or prio in _PRIORITY:  # TQ1-9 before OBR-5 and ORC-7.6, which v2.5 keeps for old senders
        res["priority"] = tq1_prio or _PRIORITY[prio]
    code = dt.concept(obr.rep(4))
    if code:
        res["code"] = code
    order_notes: list[Seg | str] = []  # what the order's TQ1 and OBR say beside its NTE
    if g.tq1:
        _order_timing(ctx, g.tq1, res, order_notes)
    res["subject"] = ctx.patient_ref
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    when = dt.datetime(obr.get(7)) or dt.datetime(obr.get(6))
    occurrence = _occurrence(timing)
    if occurrence:
        res.update(occurrence)
        start = (timing or {}).get("repeat", {}).get("boundsPeriod", {}).get("start")
        f = 7 if dt.datetime(obr.get(7)) else 6
        if when and when != start and not (reported and f == 7):  # a report keeps OBR-7 as its effective time
            ctx.find("information", "v2.obr-time.beside-tq1", f"OBR-{f} beside the order's timing (TQ1): kept as "
                     "a note of the order", obr.loc(f))
            order_notes.append(f"{'observation' if f == 7 else 'requested'} date/time (OBR-{f}): {when}")
    elif when:
        res["occurrenceDateTime"] = when
    authored = dt.datetime(orc.get(9)) if orc else None
    if authored:
        res["authoredOn"] = authored
    parts = participants(ctx, g)
    req = _requester(ctx, orc, obr) or next(iter(parts["requester"]), None)
    if req:
        res["requester"] = req
    if parts["performer"]:
        res["performer"] = list(parts["performer"])
    reasons = [c for c in (dt.concept(r) for r in obr.field(31)) if c]
    if reasons:
        res["reasonCode"] = reasons
    clinical = _clinical_information(obr)
    if clinical:
        res["extension"] = clinical
    specs = specimens if specimens is not None else (
        [r for r in (specimen(ctx, s) for s in g.spm) if r] or list(early or []))
    if specs:
        res["specimen"] = specs
    sr_ref = {"reference": f"ServiceRequest/{res['id']}"}
    info = []
    if with_observations:
        for nth, (obx, notes) in zip(occurrences([s for s, _ in g.obx]), g.obx):
            ref = observation(ctx, obx, notes, key, nth, based_on=[sr_ref])
            if ref:
                info.append(ref)
    if info:
        res["supportingInfo"] = info
    notes = [*g.orc_notes, *g.notes, *order_notes]  # the ORC's comments, the OBR's, what TQ1/OBR say
    if notes:
        res["note"] = as_annotations(ctx, notes)
    return ctx.add(res)


def _occurrence(timing: dict[str, Any] | None) -> dict[str, Any]:
    """A TQ1's Timing as ServiceRequest.occurrence[x]: a start and end alone are a Period (a start
    alone a dateTime), anything more (a repeat pattern, times, counts) the Timing itself."""
    if not timing:
        return {}
    repeat = timing.get("repeat", {})
    if set(timing) == {"repeat"} and set(repeat) == {"boundsPeriod"}:
        period = repeat["boundsPeriod"]
        return {"occurrenceDateTime": period["start"]} if set(period) == {"start"} else {"occurrencePeriod": period}
    return {"occurrenceTiming": timing}


def _order_timing(ctx: Ctx, tq1s: list[Seg], res: dict[str, Any], notes: list[Seg | str]) -> None:
    """What a service order's TQ1 says besides its timing and priority, as the v2-to-FHIR IG's
    TQ1[ServiceRequest] map: TQ1-2 -> quantityQuantity, TQ1-11 text instruction -> a note, TQ1-10
    condition text -> asNeededCodeableConcept (R4: the pre-condition for performing the service).
    ServiceRequest has one occurrence: every further TQ1 (a sequence: every 15 minutes for an hour,
    then every 2 hours) is a note in its words, with a finding."""
    first = tq1s[0]
    qty = _quantity(first.rep(2))
    if qty is not None:
        res["quantityQuantity"] = qty
    elif first.get(2):
        notes.append(f"quantity (TQ1-2): {first.text(2)[:40]}")
    if first.text(10):
        res["asNeededCodeableConcept"] = {"text": first.text(10)}
    if first.text(11):
        notes.append(first.text(11))
    for tq1 in tq1s[1:]:
        ctx.find("information", "v2.tq1.further", "a further TQ1 of a service order (ServiceRequest has one "
                 "occurrence): kept as a note of the order", tq1.loc(1))
        notes.append(f"then (TQ1 {tq1.get(1) or tq1.ordinal}): {_tq1_words(tq1)}")


# TQ1 fields a further timing of a service order is told by, each with its words
_TQ1_WORDS = ((2, "quantity"), (3, "repeat"), (4, "at"), (5, "relative"), (6, "for"), (7, "from"), (8, "until"),
              (9, "priority"), (10, "condition"), (11, "instruction"), (13, "each lasting"), (14, "times"))


def _tq1_words(tq1: Seg) -> str:
    """The fields of a TQ1 in words: 1^D (a quantity and its unit) as "1 D", repetitions side by side."""
    return "; ".join(f"{word} " + " ".join(v for rep in tq1.field(f) for c in rep if c and (v := c[0].strip()))
                     for f, word in _TQ1_WORDS if tq1.get(f))


# R5's ServiceRequest.supportingInfo (a CodeableReference) as R4 carries its concept, the place the
# v2-to-FHIR IG's OBR[ServiceRequest] map gives OBR-13
_SUPPORTING_INFO = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ServiceRequest.supportingInfo"


def _clinical_information(obr: Seg) -> list[dict]:
    """OBR-13 relevant clinical information, every repetition: free text up to v2.6 (ST: 发热3天,
    kept whole as the concept's text, never read as a code), a CWE from v2.7."""
    out = []
    for r, rep in enumerate(obr.field(13), 1):
        coded = sum(1 for c in rep if any(x.strip() for x in c)) > 1
        concept = dt.concept(rep) if coded else None
        text = obr.text(13, r)
        if concept is None and text:
            concept = {"text": text}
        if concept:
            out.append({"url": _SUPPORTING_INFO, "valueCodeableConcept": concept})
    return out


def referral_providers(ctx: Ctx, orders: list[dict[str, str]]) -> None:
    """PRD (REF messages) -> Practitioners: the referring provider (PRD-1 RP) requests every order of
    the referral, the referred-to and consulting ones (RT, CP) perform it."""
    requesters: list[dict[str, str]] = []
    performers: list[dict[str, str]] = []
    for prd in ctx.msg.all("PRD"):
        ref = provider(ctx, prd)
        if ref is None:
            continue
        role = dt.comp(prd.rep(1), 1).upper()
        (requesters if role in ("RP", "PP") else performers).append(ref)
    for o in orders:
        res = ctx.get("ServiceRequest", o["reference"].split("/", 1)[1])
        assert res is not None  # the orders of this message
        if requesters and "requester" not in res:
            res["requester"] = requesters[0]
        if performers:
            res["performer"] = performers


def _pharmacy_groups(ctx: Ctx) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for seg in ctx.msg.segments:
        if seg.name == "ORC":
            cur = {"ORC": seg, "RXR": [], "owner": None}
            groups.append(cur)
        elif cur is not None and seg.name == "OBX":
            # the order's observations (RDE_O11, RDS_O13: a weight, a creatinine the dose
            # was judged by), each with the NTE notes after it
            cur.setdefault("OBXs", []).append((seg, []))
            cur["owner"] = "OBX"
        elif cur is not None and seg.name == "NTE":
            text = note_text(seg)
            if text and cur["owner"] == "OBX":
                cur["OBXs"][-1][1].append(seg)
            elif text and cur["owner"] in ("RXO", "RXE"):
                cur.setdefault("notes", []).append(seg)  # the prescriber's or pharmacist's
        elif cur is not None and seg.name in ("RXO", "RXE", "RXD", "RXA"):
            cur.setdefault(seg.name, seg)
            cur["owner"] = seg.name
        elif cur is not None and seg.name == "TQ1":
            # every TQ1 (a taper: 2 tablets three times a day for 3 days, then 1 a day): the
            # order's timing after ORC, the pharmacy's encoding of it after RXE
            cur.setdefault("TQ1:RXE" if cur["owner"] == "RXE" else "TQ1:order", []).append(seg)
        elif cur is not None and seg.name == "RXC":
            # RDS repeats the components after RXO, RXE and RXD: one compound, not three
            cur.setdefault(f"RXC:{cur['owner']}", []).append(seg)
        elif cur is not None and seg.name == "CDO":
            cur.setdefault("CDOs", []).append(seg)
        elif cur is not None and seg.name == "RXR":
            # RXR follows the segment it belongs to: RXO's route (as ordered), RXE's (as encoded)...
            cur["RXR"].append(seg)
            cur.setdefault(f"RXR:{cur['owner']}", []).append(seg)
        elif seg.name in ("RXA",) and cur is None:  # VXU without ORC
            cur = {"ORC": None, "RXR": [], "RXA": seg, "owner": "RXA"}
            groups.append(cur)
    return groups


def _order_key(ctx: Ctx, orc: Seg | None, n: int, fallback: str) -> tuple[str, list[dict]]:
    """Filler number, else placer, else patient + ``fallback``; placeholders are neither keys nor
    identifiers (the order is then scoped by this message)."""
    idents = []
    numbers = {}
    for kind, code, f in (("placer", "PLAC", 2), ("filler", "FILL", 3)):
        value = orc.get(f) if orc else ""
        if orc is None or not value:
            continue
        ident = ctx.local_identifier(kind, value, code, loc=orc.loc(f))
        numbers[kind] = value if ident else None
        if ident:
            idents.append(ident)
    # An order number belongs to one patient's visit and one thing ordered, whatever the sender's numbering
    # does: systems that restart at 1 in every message would otherwise overwrite one patient's order
    # with another's (a lost prescription). Updates of an order repeat both, so they still meet it.
    if numbers.get("filler"):
        return f"F:{ctx.patient_key}:{ctx.visit_scope()}:{numbers['filler']}:{fallback}", idents
    if numbers.get("placer"):
        return f"P:{ctx.patient_key}:{ctx.visit_scope()}:{numbers['placer']}:{fallback}", idents
    if numbers:
        assert orc is not None  # the numbers came from it
        return f"M:{ctx.msg.msh.get(10)}:{orc.index}", idents
    return f"X:{ctx.patient_key}:{fallback}:{n}", idents


def _route(rxr: list[Seg]) -> dict | None:
    """RXR-1 route; a code without a coding system is from HL7 table 0162."""
    if not rxr:
        return None
    return dt.table_concept(rxr[0].rep(1), "0162")


def build_medications(ctx: Ctx) -> None:
    patient_context(ctx)
    groups = [g for g in _pharmacy_groups(ctx) if "RXE" in g or "RXO" in g]
    if not groups:
        raise ctx.error(f"{ctx.kind} has no RXE or RXO segment: there is no medication order to map",
                        "RXE", "v2.rxe.missing")
    for n, g in enumerate(groups, 1):
        medication_request(ctx, g, n)
    charges(ctx, require=False)


def medication_request(ctx: Ctx, g: dict[str, Any], n: int) -> None:
    """ORC + RXO (as ordered) and/or RXE (as encoded by pharmacy), each with its own RXR route, and
    an RXD dispense -> MedicationRequest (+ MedicationDispense)."""
    orc, rxe, rxo = g["ORC"], g.get("RXE"), g.get("RXO")
    med = dt.concept(rxe.rep(2)) if rxe is not None else None
    med = med or (dt.concept(rxo.rep(1)) if rxo is not None else None)
    if med is None:
        raise ctx.error("RXE-2 (give code) and RXO-1 (requested give code) are empty: no medication",
                        "RXE-2", "v2.rxe-2.missing")
    src = rxe if rxe is not None else rxo
    assert src is not None  # the medication came from one of them
    key, idents = _order_key(ctx, orc, n, dt.comp(src.rep(2 if rxe else 1), 1))
    res: dict[str, Any] = {"resourceType": "MedicationRequest", "id": ctx.id("MedicationRequest", key)}
    if idents:
        res["identifier"] = idents
    res["status"] = _MEDSTATUS.get(order_status(orc), "active")
    res["intent"] = "order"
    rxcs: list[Seg] = next((g[k] for k in ("RXC:RXE", "RXC:RXO", "RXC:None", "RXC:RXD") if g.get(k)), [])
    compound = _compound(ctx, key, med, rxcs)
    strength = _give_strength(rxe)
    if compound is None and strength is not None:
        compound = ctx.add({"resourceType": "Medication", "id": ctx.id("Medication", key), "code": med,
                            "ingredient": [{"itemCodeableConcept": med, "strength": strength}]})
    elif rxe is not None and (rxe.get(25) or rxe.get(33)):
        # a compound's strength is its components' (RXC-5/6), and a strength or volume that is
        # no number (or a volume without its strength) fits no Ratio: kept as a note of the
        # order, never dropped nor read as per one
        why = ("was sent with RXC components" if strength is not None else
               "is no number" if rxe.get(25) and dt.decimal(rxe.get(25)) is None else
               "has a volume (RXE-33) that is no number" if rxe.get(25) else
               "is missing beside its volume (RXE-33/34)")
        ctx.find("information", "v2.rxe-25.as-note", f"RXE-25 (give strength) {why}: kept as a note "
                 "of the order", rxe.loc(25 if rxe.get(25) else 33))
        g.setdefault("notes", []).append("give strength (RXE-25/26, 33/34): " + " ".join(
            x for f in (25, 26, 33, 34) for x in (
                (dt.comp(rxe.rep(f), 2) or dt.comp(rxe.rep(f), 1)) if f in (26, 34) else rxe.get(f),)
            if x))
    if compound:
        res["medicationReference"] = compound
    else:
        res["medicationCodeableConcept"] = med
    res["subject"] = ctx.patient_ref
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    authored = dt.datetime(orc.get(9)) if orc else None
    if authored:
        res["authoredOn"] = authored
    req = _requester(ctx, orc)
    if req:
        res["requester"] = req
    # the indication: RXE-27 give indication (v2.3+; not the strength's volume, RXE-33/34), else
    # RXO-20
    reasons = [c for c in (dt.concept(r) for r in src.field(27 if rxe is not None else 20)) if c]
    if reasons:
        res["reasonCode"] = reasons
    dosage: dict[str, Any] = {}
    if rxe is not None:
        text = rxe.text(21) or dt.cwe_text(rxe.rep(7))
        amount, units = dt.decimal(rxe.get(3)), rxe.rep(5)
    else:  # src is the RXO
        text = dt.cwe_text(src.rep(6)) or dt.cwe_text(src.rep(7))
        amount, units = dt.decimal(src.get(2)), src.rep(4)
    if text:
        dosage["text"] = text
    # every repetition of the administration instructions (皮试阴性后使用~静脉滴注30分钟以上~避光)
    instructions = [x for x in (dt.cwe_text(rep) for rep in src.field(7)) if x]
    if len(instructions) > 1 or (instructions and instructions[0] != text):
        dosage["additionalInstruction"] = [{"text": x} for x in instructions]
    rxr = (g.get("RXR:RXE") if rxe is not None else None) or g.get("RXR:RXO") or g["RXR"]
    route = _route(rxr)
    if route:
        dosage["route"] = route
    site = dt.concept(rxr[0].rep(2)) if rxr else None
    if site:
        dosage["site"] = site
    if amount is not None:
        dosage["doseAndRate"] = [{"doseQuantity": _amount(amount, units)}]
    rate = dt.decimal(rxe.get(23)) if rxe is not None else None
    if rate is not None and rxe is not None:
        dosage.setdefault("doseAndRate", [{}])[0]["rateQuantity"] = _amount(rate, rxe.rep(24))
    # the pharmacy's own timing (the TQ1 after RXE) before the order's: each TQ1 a Dosage
    tq1s = (g.get("TQ1:RXE") if rxe is not None else None) or g.get("TQ1:order") or []
    dosages, priority = _dosages(ctx, dosage, tq1s, amount is not None, g)
    if priority:
        res["priority"] = priority
    course = dosages[0].get("timing", {}).get("repeat", {}).get("boundsDuration") if len(dosages) == 1 else None
    limits = _limits(ctx, g.get("CDOs", []), course, g)
    dosages = [d | limits for d in dosages]
    if dosages != [{}]:
        res["dosageInstruction"] = dosages
    if g.get("notes"):
        res["note"] = as_annotations(ctx, g["notes"])
    if rxe is not None and rxe.get(15):
        ident = ctx.local_identifier("prescription", rxe.get(15), None, rxe.loc(15))
        if ident and ident not in res.setdefault("identifier", []):
            ident["type"] = {"text": "prescription number"}
            res["identifier"].append(ident)
        if not res["identifier"]:
            del res["identifier"]
    found = []
    for nth, (obx, notes) in zip(occurrences([o for o, _ in g.get("OBXs", [])]), g.get("OBXs", [])):
        ref = observation(ctx, obx, notes, f"rx:{key}", nth,
                          based_on=[{"reference": f"MedicationRequest/{res['id']}"}])
        if ref:
            found.append(ref)
    if found:
        res["supportingInformation"] = found
    if rxe is not None:
        disp: dict[str, Any] = {}
        qty = dt.decimal(rxe.get(10))
        if qty is not None:
            disp["quantity"] = _amount(qty, rxe.rep(11))
        refills = rxe.get(12)
        if refills.isdigit() and len(refills) < 9:
            disp["numberOfRepeatsAllowed"] = int(refills)
        if disp:
            res["dispenseRequest"] = disp
    ref = ctx.add(res)
    rxd = g.get("RXD")
    if rxd is not None:
        dispense(ctx, rxd, g["RXR"], key, ref, src)


# HL7 table 0335 repeat patterns as FHIR Timing.repeat (others keep their code as the timing's)
_REPEATS = {"QD": (1, 1, "d"), "BID": (2, 1, "d"), "TID": (3, 1, "d"), "QID": (4, 1, "d"),
            "QOD": (1, 2, "d"), "QAM": (1, 1, "d"), "QPM": (1, 1, "d"), "QHS": (1, 1, "d"),
            "Q1H": (1, 1, "h"), "QW": (1, 1, "wk"), "QM": (1, 1, "mo")}
_EVERY = re.compile(r"^Q(\d{1,3})(S|M|H|D|W|L)$")
_EVERY_UNIT = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}
_PRIORITY = {"S": "stat", "A": "asap", "R": "routine"}  # HL7 table 0485
_TIME_UNITS: dict[str, str] = {k: v for k, v in _CODES["time_units"].items() if not k.startswith("_")}
_CDO_INTERVAL: dict[str, str] = {k: v for k, v in _CODES["cumulative_dose_interval"].items()
                                 if not k.startswith("_")}
_UCUM = "http://unitsofmeasure.org"
_STEP = {"s": timedelta(seconds=1), "min": timedelta(minutes=1), "h": timedelta(hours=1),
         "d": timedelta(days=1), "wk": timedelta(weeks=1)}


def _dosages(ctx: Ctx, base: dict[str, Any], tq1s: list[Seg], has_amount: bool,
             g: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """One Dosage per TQ1 (none: the order's dosage alone), each ``base`` with its timing and, when
    several TQ1s each give one or the order gives none, TQ1-2's quantity as its dose; in sequence,
    a TQ1 after one whose conjunction (TQ1-12) is A (at the same time) sharing its sequence.
    Returns (dosages, the first priority TQ1-9 gives)."""
    if not tq1s:
        return [base], None
    out: list[dict[str, Any]] = []
    priority: str | None = None
    seq = 0
    for i, tq1 in enumerate(tq1s):
        d = copy.deepcopy(base)
        if len(tq1s) > 1:
            if i == 0 or tq1s[i - 1].get(12).upper() != "A":
                seq += 1
            d["sequence"] = seq
        timing, prio = _timing(ctx, tq1)
        if timing:
            d["timing"] = timing
        priority = priority or prio
        _tq1_texts(tq1, d)
        qty = _quantity(tq1.rep(2))
        if qty is not None and (len(tq1s) > 1 or not has_amount):
            d["doseAndRate"] = [dict(d.get("doseAndRate", [{}])[0], doseQuantity=qty)]
        elif qty is not None and qty != d.get("doseAndRate", [{}])[0].get("doseQuantity"):
            ctx.find("information", "v2.tq1-2.as-note", "TQ1-2 (quantity) differs from the give amount "
                     "(RXE-3/RXO-2), the dose: kept as a note of the order", tq1.loc(2))
            g.setdefault("notes", []).append(f"quantity per service (TQ1-2): {_words(qty)}")
        out.append(d)
    return out, priority


def _tq1_texts(tq1: Seg, d: dict[str, Any]) -> None:
    """TQ1-11 text instruction -> the Dosage's text (after the order's own, RXE-21/RXO-6, when that
    says something else) and TQ1-10 condition text (e.g. "if pain") -> an additionalInstruction, as
    the v2-to-FHIR IG's TQ1[MedicationRequest] map gives them."""
    said = tq1.text(11)
    if said and said != d.get("text"):
        d["text"] = f"{d['text']}; {said}" if d.get("text") else said
    cond = tq1.text(10)
    if cond and {"text": cond} not in d.get("additionalInstruction", []):
        d.setdefault("additionalInstruction", []).append({"text": cond})


def _words(q: dict[str, Any]) -> str:
    return " ".join(str(x) for x in (q.get("value"), q.get("unit")) if x is not None)


def _duration(rep: list[list[str]]) -> dict[str, Any] | None:
    """A CQ time quantity (3^D&day&ISO, 7^天) as a UCUM Duration; None when it is no number of a
    listed time unit (a Duration must be one: drt-1)."""
    n = dt.decimal(dt.comp(rep, 1))
    unit = next((_TIME_UNITS.get(u) or _TIME_UNITS.get(u.upper()) for u in (dt.comp(rep, 2, 1), dt.comp(rep, 2, 2))
                 if u and (_TIME_UNITS.get(u) or _TIME_UNITS.get(u.upper()))), None)
    if n is None or unit is None:
        return None
    return {"value": n, "unit": unit, "system": _UCUM, "code": unit}


def _shifted(when: str, by: dict[str, Any], sign: int) -> str | None:
    """``when`` (a FHIR dateTime) moved by the Duration ``by``; None when that is no exact step
    (months, years, a day count from a time without its hour)."""
    step = _STEP.get(by["code"])
    if step is None:
        return None
    try:
        moved = datetime.fromisoformat(when) + sign * step * float(by["value"])
    except (ValueError, OverflowError):
        return None
    if "T" not in when:  # a date: only whole days move it
        return moved.date().isoformat() if by["code"] in ("d", "wk") and moved.time() == datetime.min.time() else None
    return moved.isoformat()


def _timing(ctx: Ctx, tq1: Seg | None) -> tuple[dict[str, Any] | None, str | None]:
    """TQ1 (v2.5+): the repeat pattern (TQ1-3), the course (TQ1-7 start, TQ1-8 end, TQ1-6 service
    duration), times and counts (TQ1-4/13/14) and the priority (TQ1-9) of an order: (Timing, the
    request's priority)."""
    if tq1 is None:
        return None, None
    timing: dict[str, Any] = {}
    repeat: dict[str, Any] = {}
    pattern = tq1.get(3).upper()
    if pattern:
        timing["code"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0335",
                                      "code": pattern}], "text": dt.comp(tq1.rep(3), 1, 2) or tq1.get(3)}
        every = _EVERY.match(pattern)
        if pattern in _REPEATS:
            repeat["frequency"], repeat["period"], repeat["periodUnit"] = _REPEATS[pattern]
        elif every:
            repeat.update(frequency=1, period=int(every.group(1)),
                          periodUnit=_EVERY_UNIT[every.group(2)])
    start, end = dt.datetime(tq1.get(7)), dt.datetime(tq1.get(8))
    course = _duration(tq1.rep(6)) if tq1.get(6) else None
    if tq1.get(6) and course is None:
        ctx.find("warning", "v2.tq1-6.unit-unknown", "TQ1-6 (service duration) is no number of a known "
                 "time unit: kept as the timing's text", tq1.loc(6))
    elif course is not None and start and not end:
        end = _shifted(start, course, 1)
    elif course is not None and end and not start:
        start = _shifted(end, course, -1)
    if course is not None and not (start and end) and (start or end):
        ctx.find("information", "v2.tq1-6.beside-period", "TQ1-6 (service duration) beside one end of the "
                 "course (TQ1-7/8) in months or years: kept as the timing's text", tq1.loc(6))
        course = None
    if start or end:
        repeat["boundsPeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    elif course is not None:
        repeat["boundsDuration"] = course
    if tq1.get(6) and course is None and not (start and end):
        _timing_text(timing, f"for {tq1.text(6)[:40]}")
    _times_and_counts(ctx, tq1, timing, repeat)
    if repeat:
        timing["repeat"] = repeat
    code = tq1.get(9).upper()
    priority = _PRIORITY.get(code)
    if code and priority is None:
        ctx.find("information", "v2.tq1-9.unmapped", f"TQ1-9 priority {code[:8]!r} has no FHIR "
                 "request priority: kept as the timing's text", tq1.loc(9))
        _timing_text(timing, f"priority {code[:8]}")
    return timing or None, priority


def _timing_text(timing: dict[str, Any], said: str) -> None:
    timing.setdefault("code", {})["text"] = " ".join(x for x in (timing.get("code", {}).get("text"), said) if x)


def _times_and_counts(ctx: Ctx, tq1: Seg, timing: dict[str, Any], repeat: dict[str, Any]) -> None:
    """TQ1-4 explicit times -> timeOfDay, TQ1-13 occurrence duration -> duration/durationUnit, TQ1-14
    total occurrences -> count (the IG's countMax, which is a range's upper end beside count); TQ1-5 (relative time) and
    a value that is none of these types -> the timing's text, with a finding."""
    times = []
    for r in range(1, len(tq1.field(4)) + 1):
        raw = tq1.get(4, r=r)
        t = dt.time(raw)
        if t:
            times.append(t)
        elif raw:
            ctx.find("warning", "v2.tq1-4.invalid", "TQ1-4 (explicit time) is no valid time: kept as the "
                     "timing's text", tq1.loc(4, r))
            _timing_text(timing, f"at {raw[:20]}")
    if times:
        repeat["timeOfDay"] = times
    if tq1.get(5):
        ctx.find("information", "v2.tq1-5.as-text", "TQ1-5 (relative time) has no place in a FHIR "
                 "Timing: kept as the timing's text", tq1.loc(5))
        _timing_text(timing, f"relative {tq1.text(5)[:40]}")
    if tq1.get(13):
        lasts = _duration(tq1.rep(13))
        if lasts is not None:  # its UCUM code is one of Timing's units (s, min, h, d, wk, mo, a)
            repeat["duration"], repeat["durationUnit"] = lasts["value"], lasts["code"]
        else:
            ctx.find("warning", "v2.tq1-13.unit-unknown", "TQ1-13 (occurrence duration) is no number of "
                     "a known time unit: kept as the timing's text", tq1.loc(13))
            _timing_text(timing, f"each lasting {tq1.text(13)[:40]}")
    total = tq1.get(14)
    if total.isascii() and total.isdigit() and 0 < int(total) < 2**31:
        repeat["count"] = int(total)
    elif total:
        ctx.find("warning", "v2.tq1-14.invalid", "TQ1-14 (total occurrences) is no positive number: kept "
                 "as the timing's text", tq1.loc(14))
        _timing_text(timing, f"{total[:20]} times")


def _amount(value: Any, units: list[list[str]]) -> dict[str, Any]:
    """A Quantity of ``value`` in a CE/CWE units field (its text, else its code)."""
    return {"value": value} | _unit_of(units)


def _quantity(rep: list[list[str]], amount_c: int = 1, unit_c: int = 2) -> dict | None:
    """CQ (quantity^units) or amount and units fields as a Quantity."""
    value = dt.decimal(dt.comp(rep, amount_c))
    if value is None:
        return None
    q: dict[str, Any] = {"value": value}
    unit = dt.comp(rep, unit_c, 2) or dt.comp(rep, unit_c, 1)
    if unit:
        q["unit"] = unit
    return q


def _give_strength(rxe: Seg | None) -> dict | None:
    """RXE-25/26 give strength and its units (with RXE-33/34, the volume it is in) -> the
    Medication's ingredient strength, as the v2-to-FHIR IG maps RXO-18/19 and RXO-25/26."""
    if rxe is None:
        return None
    value = dt.decimal(rxe.get(25))
    if value is None:
        return None
    volume = dt.decimal(rxe.get(33))
    if volume is None and rxe.get(33):
        return None  # a volume that is no number: no strength, five times too strong or weak
    return {"numerator": _amount(value, rxe.rep(26)),
            "denominator": _amount(volume, rxe.rep(34)) if volume is not None
            else _PER_ONE | _unit_of(rxe.rep(6))}


# a strength given without the amount it is in is per one of the medication (a tablet, the
# dosage form when sent): R4's Ratio has both parts or neither (rat-1)
_PER_ONE: dict[str, Any] = {"value": 1}


def _unit_of(units: list[list[str]]) -> dict[str, str]:
    unit = dt.comp(units, 2) or dt.comp(units, 1)
    return {"unit": unit} if unit else {}


def _compound(ctx: Ctx, key: str, med: dict, rxcs: list[Seg]) -> dict[str, str] | None:
    """RXC components (A additive, B base) -> a Medication with its ingredients: RXC-2 what, RXC-3/4 the
    amount, RXC-5/6 the strength; additives are the active ingredients."""
    ingredients = []
    for rxc in rxcs:
        item = dt.concept(rxc.rep(2))
        if item is None:
            continue
        ing: dict[str, Any] = {"itemCodeableConcept": item, "isActive": rxc.get(1).upper() == "A"}
        amount = _quantity([[rxc.get(3)], [dt.comp(rxc.rep(4), 2) or dt.comp(rxc.rep(4), 1)]])
        strength = _quantity([[rxc.get(5)], [dt.comp(rxc.rep(6), 2) or dt.comp(rxc.rep(6), 1)]])
        if strength or amount:
            ing["strength"] = {"numerator": strength or amount, "denominator": _PER_ONE}
        ingredients.append(ing)
    if not ingredients:
        return None
    return ctx.add({"resourceType": "Medication", "id": ctx.id("Medication", key), "code": med,
                    "ingredient": ingredients})


def _limits(ctx: Ctx, cdos: list[Seg], course: dict[str, Any] | None, g: dict[str, Any]) -> dict[str, Any]:
    """CDO (cumulative dosage, v2.8): CDO-3 the limit, CDO-4 the interval it holds over (HL7 0924,
    ``tables/codes.json`` ``cumulative_dose_interval``): ``7^D`` per 7 days, ``^D`` per day, ``^PL``
    the patient's lifetime; ``^O`` or none the order's course: per its service duration (TQ1-6) when
    known, else a note of the order. An interval in no known unit is a note too, never a lifetime."""
    out: dict[str, Any] = {}
    for cdo in cdos:
        limit = _quantity(cdo.rep(3))
        if limit is None:
            continue
        rep4 = cdo.rep(4)
        unit = dt.comp(rep4, 2, 1) or dt.comp(rep4, 2, 2)
        scope = _CDO_INTERVAL.get(unit.upper()) if dt.decimal(dt.comp(rep4, 1)) is None else None
        if not any(x for c in rep4 for x in c):
            scope = "order"
        if scope == "lifetime":
            out["maxDosePerLifetime"] = limit
            continue
        per = (course if scope == "order" else _duration(rep4) if scope is None
               else {"value": 1, "unit": scope, "system": _UCUM, "code": scope})
        if per is not None:
            out["maxDosePerPeriod"] = {"numerator": limit, "denominator": per}
            continue
        over = "the order's course" if scope == "order" else cdo.text(4)[:40]
        ctx.find("information", "v2.cdo-4.as-note", "CDO-4 (time interval) " + (
            "is the order's course, whose length TQ1-6 does not give" if scope == "order" else
            "is no number of a known time unit") + ": the limit is kept as a note of the order", cdo.loc(4))
        g.setdefault("notes", []).append(f"cumulative dosage limit (CDO): {_words(limit)} over {over}")
    return out


def _detail_groups(ctx: Ctx, name: str) -> list[tuple[Seg | None, list[Seg], list[Seg]]]:
    """(ORC, its ``name`` segments, the NTE after them) for every ORC group holding ``name``."""
    out: list[tuple[Seg | None, list[Seg], list[Seg]]] = []
    orc: Seg | None = None
    cur: tuple[Seg | None, list[Seg], list[Seg]] | None = None
    for seg in ctx.msg.segments:
        if seg.name == "ORC":
            orc, cur = seg, None
        elif seg.name == name:
            if cur is None:
                cur = (orc, [], [])
                out.append(cur)
            cur[1].append(seg)
        elif seg.name == "NTE" and cur is not None:
            if note_text(seg):
                cur[2].append(seg)
        elif seg.name in ("OBR", "RXO", "RXE", "ODS", "RQD", "PID"):
            cur = None
    return out


def nutrition_orders(ctx: Ctx) -> int:
    """ORC + ODS (ORM^O01 dietary order) -> NutritionOrder: ODS-1 D (diet) codes (ODS-3) are the oral
    diet, S the supplements, P the food preferences; ODS-4 the instructions."""
    made = 0
    for n, (orc, odss, notes) in enumerate(_detail_groups(ctx, "ODS"), 1):
        key, idents = _order_key(ctx, orc, n, "ODS")
        diet: list[dict[str, Any]] = []
        supplements: list[dict[str, Any]] = []
        preferences: list[dict[str, Any]] = []
        texts = []
        for ods in odss:
            codes = [c for c in (dt.concept(r) for r in ods.field(3)) if c]
            kind = ods.get(1).upper()
            (supplements if kind == "S" else preferences if kind == "P" else diet).extend(codes)
            texts += [ods.text(4, r) for r in range(1, len(ods.field(4)) + 1) if ods.text(4, r)]
        if not (diet or supplements or preferences or texts):
            ctx.find("warning", "v2.ods-3.missing", "ODS without a diet, supplement or preference code (3) "
                     "nor instructions (4) skipped", odss[0].loc(3))
            continue
        evn = ctx.msg.first("EVN")
        when = ((dt.datetime(orc.get(9)) if orc else None) or dt.datetime(ctx.msg.msh.get(7))
                or (dt.datetime(evn.get(2)) if evn is not None else None))
        if when is None:  # NutritionOrder.dateTime is required
            ctx.find("warning", "v2.ods.no-date", "diet order without a date (ORC-9, MSH-7, EVN-2) skipped",
                     orc.loc(9) if orc else "ORC-9")
            continue
        res: dict[str, Any] = {"resourceType": "NutritionOrder", "id": ctx.id("NutritionOrder", key)}
        if idents:
            res["identifier"] = idents
        res["status"] = order_status(orc)
        res["intent"] = "order"
        res["patient"] = ctx.patient_ref
        if ctx.encounter_ref:
            res["encounter"] = ctx.encounter_ref
        res["dateTime"] = when
        req = _requester(ctx, orc)
        if req:
            res["orderer"] = req
        if preferences:
            res["foodPreferenceModifier"] = preferences
        if diet or texts:
            oral: dict[str, Any] = {}
            if diet:
                oral["type"] = diet
            if texts:
                oral["instruction"] = "\n".join(texts)
            res["oralDiet"] = oral
        if supplements:
            res["supplement"] = [{"type": c} for c in supplements]
        if notes:
            res["note"] = as_annotations(ctx, notes)
        ctx.add(res)
        made += 1
    return made


_SUPPLY_STATUS = {"on-hold": "suspended", "revoked": "cancelled"}


def supply_requests(ctx: Ctx) -> int:
    """ORC + RQD (ORM^O01 supply order) -> SupplyRequest: the item from RQD-2 (internal code), RQD-3
    (external) or RQD-4 (hospital item), the quantity RQD-5 in RQD-6 units, needed by RQD-10."""
    made = 0
    for n, (orc, rqds, _notes) in enumerate(_detail_groups(ctx, "RQD"), 1):
        for rqd in rqds:
            item = dt.concept(rqd.rep(2)) or dt.concept(rqd.rep(3)) or dt.concept(rqd.rep(4))
            amount = dt.decimal(rqd.get(5))
            if item is None or amount is None:
                ctx.find("warning", "v2.rqd.incomplete", "RQD without an item code (2-4) or a quantity (5) "
                         "skipped: a SupplyRequest needs both", rqd.loc(2 if item is None else 5))
                continue
            key, idents = _order_key(ctx, orc, n, "RQD")
            res: dict[str, Any] = {"resourceType": "SupplyRequest",
                                   "id": ctx.id("SupplyRequest", key, rqd.get(1) or rqd.ordinal)}
            if idents:
                res["identifier"] = idents
            status = order_status(orc)
            res["status"] = _SUPPLY_STATUS.get(status, status)
            res["itemCodeableConcept"] = item
            res["quantity"] = _amount(amount, rqd.rep(6))
            needed = dt.datetime(rqd.get(10))
            if needed:
                res["occurrenceDateTime"] = needed
            authored = dt.datetime(orc.get(9)) if orc else None
            if authored:
                res["authoredOn"] = authored
            req = _requester(ctx, orc)
            if req:
                res["requester"] = req
            deliver = dt.concept(rqd.rep(9))
            if deliver:
                res["deliverTo"] = {"display": deliver.get("text") or deliver["coding"][0]["code"]}
            after = ctx.msg.segments[rqd.index + 1] if rqd.index + 1 < len(ctx.msg.segments) else None
            if after is not None and after.name == "RQ1":  # vendor (RQ1-5) or manufacturer (RQ1-3)
                supplier = dt.comp_text(after.rep(5), 1) or dt.comp_text(after.rep(3), 1)
                if supplier:
                    res["supplier"] = [{"display": supplier}]
            ctx.add(res)
            made += 1
    return made


def dispense(ctx: Ctx, rxd: Seg, rxr: list[Seg], key: str, request_ref: dict, src: Seg) -> None:
    med = dt.concept(rxd.rep(2))
    if med is None:
        ctx.find("warning", "v2.rxd-2.missing", "RXD without a dispense/give code (2) skipped", "RXD-2")
        return
    number = rxd.get(7)
    if number and not ctx.usable(number, None, rxd.loc(7), "prescription number"):
        number = ""
    res: dict[str, Any] = {"resourceType": "MedicationDispense",
                           "id": ctx.id("MedicationDispense", key, number or rxd.get(1)),
                           "status": "completed", "medicationCodeableConcept": med,
                           "subject": ctx.patient_ref, "authorizingPrescription": [request_ref]}
    if ctx.encounter_ref:
        res["context"] = ctx.encounter_ref
    qty = dt.decimal(rxd.get(4))
    if qty is not None:
        res["quantity"] = _amount(qty, rxd.rep(5))
    when = dt.datetime(rxd.get(3))
    if when:
        res["whenHandedOver"] = when
    notes = [x for x in (rxd.text(9, r) for r in range(1, len(rxd.field(9)) + 1)) if x]  # RXD-9 dispense notes
    if notes:
        res["note"] = [{"text": x} for x in notes]
    ctx.add(res)


def build_immunizations(ctx: Ctx) -> None:
    patient_context(ctx)
    groups = [g for g in _pharmacy_groups(ctx) if "RXA" in g]
    if not groups:
        raise ctx.error(f"{ctx.kind} has no RXA segment: there is no vaccination to map", "RXA", "v2.rxa.missing")
    for n, g in enumerate(groups, 1):
        orc, rxa = g["ORC"], g["RXA"]
        vaccine = dt.concept(rxa.rep(5))
        if vaccine is None:
            raise ctx.error("RXA-5 (administered code) is empty", "RXA-5", "v2.rxa-5.missing")
        when = dt.datetime(rxa.get(3))
        if when is None:
            raise ctx.error(f"RXA-3 (start of administration) {rxa.get(3)!r} is not a date/time",
                            "RXA-3", "v2.rxa-3.invalid")
        key, idents = _order_key(ctx, orc, n, f"{dt.comp(rxa.rep(5), 1)}:{rxa.get(3)}")
        if key.startswith(("X:", "M:")):  # no usable order number: the shot itself is the key
            key = f"{ctx.patient_key}:{dt.comp(rxa.rep(5), 1)}:{rxa.get(3)}"
        res: dict[str, Any] = {"resourceType": "Immunization", "id": ctx.id("Immunization", key)}
        if idents:
            res["identifier"] = idents
        res["status"] = _IMM.get(rxa.get(20).upper(), _IMM["default"])
        if res["status"] == "not-done":
            reason = dt.concept(rxa.rep(18))
            if reason:
                res["statusReason"] = reason
        res["vaccineCode"] = vaccine
        res["patient"] = ctx.patient_ref
        if ctx.encounter_ref:
            res["encounter"] = ctx.encounter_ref
        res["occurrenceDateTime"] = when
        res["primarySource"] = dt.comp(rxa.rep(9), 1) in ("00", "")
        mfr = dt.comp(rxa.rep(17), 2) or dt.comp(rxa.rep(17), 1)
        if mfr:
            res["manufacturer"] = {"display": mfr}
        lot = rxa.get(15)
        if lot:
            res["lotNumber"] = lot
        exp = dt.date(rxa.get(16))
        if exp:
            res["expirationDate"] = exp
        if g["RXR"]:
            route = _route(g["RXR"])
            site = dt.concept(g["RXR"][0].rep(2))
            if site:
                res["site"] = site
            if route:
                res["route"] = route
        amount = dt.decimal(rxa.get(6))
        if amount is not None and rxa.get(6) != "999":
            q: dict[str, Any] = {"value": amount}
            u = dt.comp(rxa.rep(7), 1)
            if u:
                q["unit"] = dt.comp(rxa.rep(7), 2) or u
                if dt.comp(rxa.rep(7), 3).upper() in ("UCUM", "ISO+") and " " not in u:
                    q["system"], q["code"] = "http://unitsofmeasure.org", u
            res["doseQuantity"] = q
        performers = []
        for i, rep in enumerate(rxa.field(10), 1):
            ref = practitioner(ctx, rep, rxa.loc(10, i))
            if ref:
                performers.append({"actor": ref})
        if performers:
            res["performer"] = performers
        ctx.add(res)
    from .results import loose_observations

    loose_observations(ctx)
