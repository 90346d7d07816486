"""Examination and test reports (WS/T 500 检查报告 C0006, 检验报告 C0007) as a DiagnosticReport over
their results.

WS/T 500 writes one test item as an organizer of data elements (项目代码, 定量结果 with its unit,
结果代码 正常/异常, 标本类别 with collection and receipt times): that item is ONE Observation, with
a Specimen; an organizer holding several items (K, then Na) gives one Observation for each. The
report's own data elements (报告结果 as conclusion, 检验方法, 检验类别) go into the DiagnosticReport,
whose ``result`` lists the document's result Observations.

Tables: ``documents.yaml`` ``report`` (the v2-0074 service section of a report document),
``entries.yaml`` ``result_item`` and ``report_facts``. Imports only ``context``.
"""

from __future__ import annotations

import copy
from typing import Any

from fhir_mapping.cda import dt
from fhir_mapping.cda.context import (
    DAR,
    NULL_TO_DAR,
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
    interpretations,
    reference_ranges,
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


def _unread_quantity(ctx: Ctx, nodes: list, res: dict[str, Any]) -> Any:
    """A quantitative result that is no PQ the mapper reads, kept rather than dropped: a titre
    (RTO) as valueRatio, a range (IVL_PQ) as valueRange, anything else (``<0.5``, a text) as the
    text written, with a finding; never the interpretation in its place. The node used, if any."""
    for n in nodes:
        val = child(n, "value")
        if val is None or absent_value(n):
            continue
        if dt.value_type(val).startswith("RTO"):
            ratio = ctx.ratio(val)
            if ratio:
                res["valueRatio"] = ratio
                return n
        low, high = (ctx.quantity(child(val, side)) for side in ("low", "high"))
        if low or high:
            res["valueRange"] = {k: q for k, q in (("low", low), ("high", high)) if q}
            return n
        written = " ".join(x for x in (dt.text(val) or dt.clean_str(val.get("value")),
                                       dt.clean_str(val.get("unit"))) if x)
        if written:
            res["valueString"] = written
            ctx.find("warning", "cda.value.invalid-quantity", "a quantitative result "
                     "(DE04.30.015.00) is no number the mapper reads: kept as its text", val)
            return n
    return None


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


_SPECIMEN_KINDS = ("specimen", "specimen-condition")


def _test_items(ctx: Ctx, st) -> tuple[list[list], dict[str, list]]:
    """The test items of a cluster, in document order, each the list of its component statements
    (a component with what it nests: the unit in its result, the specimen in its item code); and
    the specimen statements written beside the items, shared by those without their own. One
    organizer may hold several items (K, then Na): a data element the current item already has
    (a second 项目代码, 定量结果 or 结果代码) begins the next one, whichever order the items are
    written in."""
    table = ctx.t.entries["result_item"]
    items: list[list] = []
    kinds: set[str] = set()
    shared: dict[str, list] = {}
    for top in _nested(st):
        how = table.get(_code(top)[0] or "")
        group = [top] + members(top)
        if how in _SPECIMEN_KINDS:
            shared.setdefault(how, []).extend(group)
            continue
        if how and (not items or how in kinds):
            items.append([])
            kinds = set()
        if how:
            kinds.add(how)
        if not items:
            items.append([])
        items[-1] += group
    return items, shared


def build_result_item(ctx: Ctx, sec: Section, st, pos: str) -> tuple[list[str], dict]:
    """Each test item of a cluster -> one Observation (with its value, unit, interpretation and
    reference range, and its Specimen), a result of the report. Returns the refs and, for each
    member, the Observation of its item. What no item takes in (a member the table does not know,
    a second specimen, an item without its code) is left for the caller to map: not in ctx.trace."""
    table = ctx.t.entries["result_item"]
    items, shared = _test_items(ctx, st)
    refs: list[str] = []
    specs: list[str] = []
    item_of: dict = {}
    first_id = _entry_id(ctx, "Observation", st, pos)
    for group in items:
        by: dict[str, list] = {}
        for n in group:
            how = table.get(_code(n)[0] or "")
            if how:
                by.setdefault(how, []).append(n)
        if "code" not in by:
            continue  # results without their item code: mapped by the caller, about the item before
        oid = first_id if not refs else stable_id("Observation", first_id, f"item{len(refs)}")
        ref = _result_observation(ctx, sec, st, oid, by, shared, pos, f"{pos}.item{len(refs)}" if refs else pos,
                                  specs)
        refs.append(ref)
        item_of.update({n: ref for n in group})
    last = refs[0]
    for group in items:
        last = item_of.get(group[0], last)
        item_of.update({n: last for n in group if n not in item_of})
    ctx.trace[st] = refs[0] if len(refs) == 1 else "wrap"
    return refs + specs, item_of


def _result_observation(ctx: Ctx, sec: Section, st, oid: str, by: dict[str, list], shared: dict[str, list],
                        pos: str, item_pos: str, specs: list[str]) -> str:
    ref = f"Observation/{oid}"
    used: list = []
    item = by["code"][0]
    used.append(item)
    val = child(item, "value")
    why = absent_value(item)
    code = ctx.concept(val) if val is not None and not why else None
    if why:
        said = "a filler" if why == "filler" else f"null ({why})"
        ctx.find("information", "cda.entry.absent-value",
                 f"test item code is {said}: the result is named by its data element", item)
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
    quantities = by.get("quantity", [])
    for n in quantities:
        q = ctx.quantity(child(n, "value"))
        if q is None:
            continue
        units = [u for u in by.get("unit", []) if u in members(n)] or by.get("unit", [])[:1]
        unit = _text(units[0]) if units else None
        if unit and "unit" not in q:
            q["unit"] = unit
            ucum = ctx.t.header["ucum"].get(unit)
            if ucum:
                q.update({"system": "http://unitsofmeasure.org", "code": ucum})
        if units and q.get("unit") == unit:
            used.append(units[0])  # the unit it gives, or the one it repeats
        res["valueQuantity"] = q
        used.append(n)
        break
    if "valueQuantity" not in res:
        n = _unread_quantity(ctx, quantities, res)
        if n is not None:
            used.append(n)
    for u in by.get("unit", []):
        if u not in used and not _text(u):  # a unit left empty or null says nothing
            _absent(ctx, sec, u, absent_value(u) or "empty")
    if not any(k in res for k in ("valueQuantity", "valueRatio", "valueRange", "valueString")):
        txt = next(((t, n) for t, n in ((_text(n), n) for n in by.get("text-result", [])) if t), None)
        if txt:
            res["valueString"] = txt[0]
            used.append(txt[1])
    interp = []
    for n in by.get("interpretation", []):
        why = absent_value(n)
        c = None if why else ctx.concept(child(n, "value"))
        if c:
            interp.append(c)
            used.append(n)
        elif why:
            _absent(ctx, sec, n, why)
    rr: list[dict] = []
    for m in (m for ms in by.values() for m in ms):  # its statements' interpretationCode, referenceRange
        interp += [c for c in interpretations(ctx, m) if c not in interp]
        rr += [r for r in reference_ranges(ctx, m) if r not in rr]
    res["interpretation"] = interp
    res["referenceRange"] = rr
    if not any(k in res for k in ("valueQuantity", "valueRatio", "valueRange", "valueString")):
        nulls = [why for n in quantities if (why := absent_value(n))]
        res["dataAbsentReason"] = {"coding": [{"system": DAR, "code": NULL_TO_DAR.get(nulls[0] if nulls else "",
                                                                                     "unknown")}]}
        used += [n for n in quantities if absent_value(n)]
    own = {k: by[k] for k in _SPECIMEN_KINDS if k in by}
    spec = _specimen(ctx, own, st, item_pos, used) if own else _specimen(ctx, shared, st, pos, used)
    if spec:
        res["specimen"] = {"reference": spec}
        if spec not in specs:
            specs.append(spec)
    for n in used:
        ctx.trace[n] = f"absorbed:{ref}"
    ctx.add(res)
    if ctx.report is not None:
        ctx.report.results.append(ref)
    return ref


def _specimen(ctx: Ctx, by: dict, st, pos: str, used: list) -> str | None:
    kinds = [n for n in by.get("specimen", []) if _text(n)]
    if not kinds:
        return None
    n = kinds[0]
    used.append(n)
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
    cond = []
    for m in by.get("specimen-condition", []):
        t = _text(m)
        if t:
            cond.append({"text": t})
            used.append(m)
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
