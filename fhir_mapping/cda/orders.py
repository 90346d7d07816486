"""Prescriptions and orders (WS/T 500 西药处方 C0004, 中药处方 C0005, 住院医嘱 C0052, the 出院医嘱 of
出院记录 / 出院小结): the details WS/T 500 writes as data elements beside or inside a drug become parts
of its MedicationRequest, and a non-drug order becomes a ServiceRequest.

Tables (``tables/entries.yaml``): ``medication_details`` (data element nested in a drug -> where it
goes), ``prescription_facts`` (data element of the prescription section -> what it sets on every
MedicationRequest of that section). Imports only ``context``; ``entries`` and ``sections`` call in here.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from fhir_mapping import numbers
from fhir_mapping.cda import dt
from fhir_mapping.cda.context import Ctx, Section, _code, _describe, _entry_id, _nested, _status, _subject, absent_value
from fhir_mapping.cda.dt import child

__all__ = ["medication_details", "prescription_facts", "build_service_request", "value_text"]


def value_text(st) -> str | None:
    val = child(st, "value")
    if val is None:
        return None
    return dt.text(val) or dt.clean_str(val.get("displayName")) or dt.clean_str(val.get("value"))


def _quantity(ctx: Ctx, st) -> dict | None:
    """A PQ as a Quantity: UCUM when the unit is one, else the unit as written (剂 has no UCUM code)."""
    val = child(st, "value")
    q = dt.quantity(val, ctx.t.header["ucum"])
    if q is None:
        return None
    if "code" not in q and val is not None and dt.clean_str(val.get("unit")):
        q["unit"] = dt.clean_str(val.get("unit"))
    return q


def _dose(res: dict) -> dict:
    if not res.get("dosageInstruction"):
        res["dosageInstruction"] = [{}]
    return res["dosageInstruction"][0]


def _same_quantity(a: dict, b: dict) -> bool:
    return numbers.value_of(a["value"]) == numbers.value_of(b["value"]) and \
        (a.get("code") or a.get("unit")) == (b.get("code") or b.get("unit"))


def _nested_dose(ctx: Ctx, n, res: dict, q: dict | None, txt: str | None) -> None:
    """A dose written as a data element inside the drug: the dose when the drug gives none (a rate
    alone is no dose); the same dose as the drug's says nothing more; a different one, or one that
    is no quantity, is kept as a note under its name, a different one with a finding."""
    dr = (res.get("dosageInstruction") or [{}])[0].get("doseAndRate") or [{}]
    given = dr[0].get("doseQuantity")
    if q and given is None and "doseRange" not in dr[0]:
        _dose(res)["doseAndRate"] = [{**dr[0], "doseQuantity": q}]
        return
    if q and given is not None and _same_quantity(q, given):
        return
    if q or txt:
        res.setdefault("note", []).append({"text": _describe(ctx, n)})
    if q:
        ctx.find("warning", "cda.medication.dose-differs",
                 "the drug's dose and the dose data element inside it differ: the drug's is the "
                 "dosage, the other is kept as a note", n)


def medication_details(ctx: Ctx, st, res: dict, ref: str) -> set:
    """Take the detail statements nested in a drug (规格, 总剂量, 频率, 剂数, 煎煮法, 用药法) into its
    MedicationRequest. Returns the statements taken (the caller maps the others)."""
    table = ctx.t.entries.get("medication_details") or {}
    used: set = set()
    for n in _nested(st):
        how = table.get(_code(n)[0] or "")
        if how is None or _nested(n) or n in ctx.trace:
            continue
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
        if absent_value(n):
            continue
        txt = value_text(n)
        if how == "dispense-quantity":
            q = _quantity(ctx, n)
            if q:
                res.setdefault("dispenseRequest", {})["quantity"] = q
            elif txt:
                res.setdefault("note", []).append({"text": _describe(ctx, n)})
        elif how == "frequency" and txt:
            timing = _dose(res).setdefault("timing", {})
            timing.setdefault("code", {"text": txt})
        elif how == "instruction" and txt:
            _dose(res).setdefault("additionalInstruction", []).append({"text": _describe(ctx, n)})
        elif how == "dosage-text" and txt:
            d = _dose(res)
            d["text"] = f"{d['text']}; {txt}" if d.get("text") else txt
        elif how == "dose":
            _nested_dose(ctx, n, res, _quantity(ctx, n), txt)
        else:  # note: 规格, 剂型 and the like, as the label and value the document gives
            res.setdefault("note", []).append({"text": _describe(ctx, n)})
    return used


def prescription_facts(ctx: Ctx, stmts: list, meds: list[dict]) -> list:
    """Section-level prescription data elements (处方有效天数, 处方类别) set on every MedicationRequest
    of the section; each such statement is absorbed by the first of them. Returns the statements that
    are no prescription facts (or all of them when the section has no MedicationRequest)."""
    table = ctx.t.entries.get("prescription_facts") or {}
    if not meds:
        return stmts
    ref = f"MedicationRequest/{meds[0]['id']}"
    rest = []
    for n in stmts:
        how = table.get(_code(n)[0] or "")
        if how is None or n in ctx.trace or _nested(n):
            rest.append(n)
            continue
        ctx.trace[n] = f"absorbed:{ref}"
        if absent_value(n):
            continue
        for res in meds:
            if how == "validity-days":
                q = _quantity(ctx, n)
                start = (res.get("authoredOn") or "")[:10]
                if q and len(start) == 10 and 0 < numbers.value_of(q["value"]) < 3660:
                    end = _dt.date.fromisoformat(start) + _dt.timedelta(days=int(q["value"]))
                    res.setdefault("dispenseRequest", {})["validityPeriod"] = {"start": start,
                                                                               "end": end.isoformat()}
            elif how == "category":
                c = ctx.concept(child(n, "value"))
                if c and c not in res.get("category", []):
                    res.setdefault("category", []).append(c)
    return rest


_SR_STATUS = {"completed": "completed", "active": "active", "aborted": "revoked", "cancelled": "revoked",
              "held": "on-hold", "suspended": "on-hold", "nullified": "entered-in-error", "new": "draft"}


def build_service_request(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    """A non-drug order: the order's content is its code (text as written), or for a free-text order
    such as 出院医嘱 (``instruction: true``) the patient instruction under the element's name."""
    txt = value_text(st)
    de = ctx.concept(child(st, "code"))
    if not txt:
        return None
    if rule.get("instruction"):
        code: dict[str, Any] = {"text": (de or {}).get("coding", [{}])[0].get("display") or rule.get("text") or "医嘱"}
        if de and de.get("coding"):
            code["coding"] = de["coding"]
    else:
        code = {"text": txt}
    sid = _entry_id(ctx, "ServiceRequest", st, pos)
    ref = f"ServiceRequest/{sid}"
    res: dict[str, Any] = {"resourceType": "ServiceRequest", "id": sid,
                           "status": _status(ctx, st, _SR_STATUS, "active"), "intent": "order",
                           "code": code, "subject": _subject(ctx)}
    if rule.get("instruction"):
        res["patientInstruction"] = txt
    elif de:
        res["category"] = [de]
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    eff = ctx.effective(child(st, "effectiveTime"))
    if eff:
        res["occurrence" + eff[0]] = eff[1]
    au = ctx.ts(dt.path(st, "author", "time")) or ctx.doc_time
    if au:
        res["authoredOn"] = au
    if ctx.author_ref:
        res["requester"] = {"reference": ctx.author_ref}
    ctx.trace[st] = ref
    ctx.add(res)
    return [ref]
