"""Examination and test reports (WS/T 500 检查报告 C0006, 检验报告 C0007) as a DiagnosticReport over
their results.

WS/T 500 writes one test item as an organizer of data elements (项目代码, 定量结果 with its unit,
结果代码 正常/异常, 标本类别 with collection and receipt times): that cluster is ONE Observation, with
a Specimen. The report's own data elements (报告结果 as conclusion, 检验方法, 检验类别) go into the
DiagnosticReport, whose ``result`` lists the document's result Observations.

Tables: ``documents.yaml`` ``report`` (the v2-0074 service section of a report document),
``entries.yaml`` ``result_item`` and ``report_facts``. Imports only ``context``.
"""

from __future__ import annotations

import copy
from typing import Any

from fhir_mapping.cda import dt
from fhir_mapping.cda.context import (
    DAR,
    OBS_CAT,
    Ctx,
    Section,
    _absent,
    _code,
    _entry_id,
    _nested,
    _status,
    _subject,
    absent_value,
)
from fhir_mapping.cda.dt import child
from fhir_mapping.ids import stable_id

__all__ = ["Report", "is_result_item", "build_result_item", "members", "take_report_fact", "finish_report"]

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


class Report:
    """What one report document collects while its sections are mapped."""

    def __init__(self, ctx: Ctx, section_code: str):
        self.id = stable_id("DiagnosticReport", *ctx.doc_key)
        self.ref = f"DiagnosticReport/{self.id}"
        self.section_code = section_code
        self.results: list[str] = []
        self.specimens: list[str] = []
        self.facts: dict[str, Any] = {}


def _text(st) -> str | None:
    val = child(st, "value")
    if val is None or absent_value(st):
        return None
    return dt.text(val) or dt.clean_str(val.get("displayName")) or dt.clean_str(val.get("value"))


def _unread_quantity(ctx: Ctx, nodes: list, res: dict[str, Any]) -> None:
    """A quantitative result that is no PQ the mapper reads, kept rather than dropped: a range
    (IVL_PQ) as valueRange, anything else (``<0.5``, a text) as the text written, with a
    finding; never the interpretation in its place."""
    for n in nodes:
        val = child(n, "value")
        if val is None or absent_value(n):
            continue
        low, high = (dt.quantity(child(val, side), ctx.t.header["ucum"]) for side in ("low", "high"))
        if low or high:
            res["valueRange"] = {k: q for k, q in (("low", low), ("high", high)) if q}
            return
        written = " ".join(x for x in (dt.text(val) or dt.clean_str(val.get("value")),
                                       dt.clean_str(val.get("unit"))) if x)
        if written:
            res["valueString"] = written
            ctx.find("warning", "cda.value.invalid-quantity", "a quantitative result "
                     "(DE04.30.015.00) is no number the mapper reads: kept as its text", val)
            return


def members(st) -> list:
    """The statements of a cluster: its components and what they nest, in document order."""
    out = []
    for n in _nested(st):
        out.append(n)
        out.extend(members(n))
    return out


def is_result_item(ctx: Ctx, st) -> bool:
    table = ctx.t.entries.get("result_item") or {}
    return dt.local(st) == "organizer" and any(table.get(_code(n)[0] or "") == "code" for n in _nested(st))


def build_result_item(ctx: Ctx, sec: Section, st, pos: str) -> list[str]:
    """One test item's organizer -> one Observation (and its Specimen). Members the table does not know
    are left for the caller to map (returned unmapped: not in ctx.trace)."""
    table = ctx.t.entries["result_item"]
    by: dict[str, list] = {}
    for n in members(st):
        how = table.get(_code(n)[0] or "")
        if how:
            by.setdefault(how, []).append(n)
    item = by["code"][0]
    oid = _entry_id(ctx, "Observation", st, pos)
    ref = f"Observation/{oid}"
    val = child(item, "value")
    code = ctx.concept(val) if val is not None and not absent_value(item) else None
    de = ctx.concept(child(item, "code"))
    code = code or {"text": (de or {}).get("coding", [{}])[0].get("display") or "检验项目"}
    if de and de.get("coding"):
        code = dict(code)
        code.setdefault("coding", [])
        code["coding"] = code["coding"] + [c for c in de["coding"] if c not in code["coding"]]
    cat = "laboratory" if (ctx.report is None or ctx.report.section_code == "LAB") else "imaging"
    res: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": _status(ctx, st),
                           "category": [{"coding": [{"system": OBS_CAT, "code": cat}]}], "code": code,
                           "subject": _subject(ctx)}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    eff = ctx.effective(child(item, "effectiveTime")) or ctx.effective(child(st, "effectiveTime"))
    if eff:
        res["effective" + eff[0]] = eff[1]
    for n in by.get("quantity", []):
        q = dt.quantity(child(n, "value"), ctx.t.header["ucum"])
        if q is None:
            continue
        units = [u for u in by.get("unit", []) if u in members(n)] or by.get("unit", [])[:1]
        unit = _text(units[0]) if units else None
        if unit and "unit" not in q:
            q["unit"] = unit
            ucum = ctx.t.header["ucum"].get(unit)
            if ucum:
                q.update({"system": "http://unitsofmeasure.org", "code": ucum})
        res["valueQuantity"] = q
        break
    if "valueQuantity" not in res:
        _unread_quantity(ctx, by.get("quantity", []), res)
    if "valueQuantity" not in res and "valueRange" not in res and "valueString" not in res:
        txt = next((t for t in (_text(n) for n in by.get("text-result", [])) if t), None)
        if txt:
            res["valueString"] = txt
    interp = [c for c in (ctx.concept(child(n, "value")) for n in by.get("interpretation", []) if not absent_value(n)) if c]
    if interp:
        res["interpretation"] = interp
    if not any(k in res for k in ("valueQuantity", "valueRange", "valueString")):
        if interp:
            res["valueCodeableConcept"] = interp[0]
        else:
            res["dataAbsentReason"] = {"coding": [{"system": DAR, "code": "unknown"}]}
    spec = _specimen(ctx, by, st, pos)
    if spec:
        res["specimen"] = {"reference": spec}
    for ns in by.values():
        for n in ns:
            ctx.trace[n] = f"absorbed:{ref}"
    ctx.trace[st] = ref
    ctx.add(res)
    if ctx.report is not None:
        ctx.report.results.append(ref)
    refs = [ref] + ([spec] if spec else [])
    return refs


def _specimen(ctx: Ctx, by: dict, st, pos: str) -> str | None:
    kinds = [n for n in by.get("specimen", []) if _text(n)]
    if not kinds:
        return None
    n = kinds[0]
    sid = _entry_id(ctx, "Specimen", n, f"{pos}.specimen")
    res: dict[str, Any] = {"resourceType": "Specimen", "id": sid, "type": {"text": _text(n)},
                           "subject": _subject(ctx)}
    c = ctx.concept(child(n, "value"))
    if c and c.get("coding"):
        res["type"] = c
    eff = child(n, "effectiveTime")
    if eff is not None:
        lo = ctx.ts(child(eff, "low")) or (ctx.ts(eff) if eff.get("value") else None)
        hi = ctx.ts(child(eff, "high"))
        if lo:
            res["collection"] = {"collectedDateTime": lo}
        if hi:
            res["receivedTime"] = hi
    cond = [{"text": t} for t in (_text(m) for m in by.get("specimen-condition", [])) if t]
    if cond:
        res["condition"] = cond
    ref = ctx.add(res)
    if ctx.report is not None and ref not in ctx.report.specimens:
        ctx.report.specimens.append(ref)
    return ref


def take_report_fact(ctx: Ctx, sec: Section, st) -> bool:
    """A report-level data element (报告结果, 检验方法, 检验类别, 报告机构) of a report document: taken
    into the DiagnosticReport. False when ``st`` is none."""
    if ctx.report is None or _nested(st):
        return False
    how = (ctx.t.entries.get("report_facts") or {}).get(_code(st)[0] or "")
    if how is None:
        return False
    why = absent_value(st)
    if why:
        _absent(ctx, sec, st, why)
        return True
    txt = _text(st)
    if txt:
        ctx.report.facts.setdefault(how, []).append(txt)
    ctx.trace[st] = f"absorbed:{ctx.report.ref}"
    return True


def finish_report(ctx: Ctx, type_cc: dict, date: str) -> str | None:
    rep = ctx.report
    if rep is None:
        return None
    if not rep.results:  # results written as plain observations: the results sections' observations
        rep.results = [f"Observation/{rid}" for (rt, rid), r in ctx.resources.items() if rt == "Observation"
                       and any(c.get("code") in ("laboratory", "imaging") for cat in r.get("category", [])
                               for c in cat.get("coding", []))]
    facts = rep.facts
    times = [t for o in (ctx.resources.get(("Observation", r.split("/", 1)[1])) for r in rep.results)
             if o and (t := o.get("effectiveDateTime"))]
    numbers = ctx.record_idents
    if numbers.get("specimen") and len(rep.specimens) == 1:
        spec = ctx.resources.get(("Specimen", rep.specimens[0].split("/", 1)[1]))
        if spec is not None:
            spec["accessionIdentifier"] = numbers["specimen"]
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": rep.id, "status": "final",
        "identifier": [numbers["report"]] if numbers.get("report") else None,
        "basedOn": [{"type": "ServiceRequest", "identifier": numbers["requisition"]}]
        if numbers.get("requisition") else None,
        "category": [{"coding": [{"system": V2_0074, "code": rep.section_code}],
                      "text": "; ".join(facts.get("category", [])) or None}],
        "code": copy.deepcopy(type_cc), "subject": {"reference": ctx.patient_ref},
        "encounter": {"reference": ctx.encounter_ref} if ctx.encounter_ref else None,
        "effectiveDateTime": min(times) if times else date, "issued": date if "T" in date else None,
        "performer": [{"reference": ctx.author_ref}] if ctx.author_ref else None,
        "specimen": [{"reference": s} for s in rep.specimens],
        "result": [{"reference": r} for r in rep.results],
        "conclusion": "\n".join(facts.get("conclusion", [])) or None,
    }
    if facts.get("method"):
        for r in rep.results:
            obs = ctx.resources.get(("Observation", r.split("/", 1)[1]))
            if obs is not None and "method" not in obs:
                obs["method"] = {"text": "; ".join(facts["method"])}
    return ctx.add(res)
