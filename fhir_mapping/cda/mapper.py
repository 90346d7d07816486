"""CDA document (WS/T 500, WS/T 483, C-CDA) -> FHIR resources. See ``fhir_mapping/cda/__init__.py``."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.cda import dt
from fhir_mapping.cda.charges import build_charge_item, is_money
from fhir_mapping.cda.context import (COND_CAT, CONFIDENTIALITY, DAR, LOINC, OBS_CAT, STATEMENTS, VERSION_EXT,
                                      Ctx, Section, _absent, _categories, _code, _describe, _entry_id, _nested,
                                      _obs_code, _set_value, _status, _subject, _templates, _unmapped, _value,
                                      absent_value)
from fhir_mapping.cda.dt import child, children, q
from fhir_mapping.cda.header import _doc_ids, _encounter, _org_chain, _organization, _patient, _practitioner
from fhir_mapping.cda.narrative import has_content, to_div
from fhir_mapping.cda.orders import build_service_request, medication_details, prescription_facts
from fhir_mapping.cda.reports import (Report, build_result_item, finish_report, is_result_item, members,
                                      take_report_fact)
from fhir_mapping.cda.tables import tables
from fhir_mapping.identifiers import usable
from fhir_mapping.ids import stable_id
from fhir_mapping.xmlsafe import parse_xml

# ====================================================================== entries

def _rule(ctx: Ctx, st) -> dict | None:
    ent = ctx.t.entries
    for tpl in _templates(st):
        r = ent["templates"].get(tpl)
        if r is not None:
            return r
    code, system = _code(st)
    r = ctx.t.element_rule(code)
    if r is not None:
        if system not in ent["data_element_systems"]:
            ctx.find("information", "cda.entry.data-element-system",
                     f"data element {code} is coded in {system or 'no code system'}, not the WS 363 "
                     "data-element catalogue 2.16.156.10011.2.2.1", child(st, "code"))
        return r
    name = dt.local(st)
    r = ent["statements"].get(name)
    if r is not None:
        return r
    if name in ("act", "organizer", "observation") and not code and _nested(st):
        return {"kind": "wrap"}  # an uncoded container: its nested statements carry the data
    return None


_VALUE_IS_CONTENT = frozenset({"Observation", "ServiceRequest"})  # kinds whose value is what they say


def map_statement(ctx: Ctx, sec: Section, st, pos: str, focus: str | None = None) -> list[str] | None:
    """Map one clinical statement; the refs it produced, or None when nothing maps it."""
    rule = _rule(ctx, st)
    if rule is None:
        return None
    kind = rule["kind"]
    if kind == "wrap" and is_result_item(ctx, st):
        refs = build_result_item(ctx, sec, st, pos)
        for i, n in enumerate(members(st)):  # what the test item's table does not know
            if n not in ctx.trace:
                r = map_statement(ctx, sec, n, f"{pos}.m{i}", refs[0])
                if r is None:
                    _unmapped(ctx, sec, n, "cda.entry.unmapped", "test item member not in the mapping tables")
                else:
                    refs += r
        return refs
    if kind == "wrap":
        return _wrap(ctx, sec, st, pos, focus)
    if (kind in _VALUE_IS_CONTENT or rule.get("code_from") == "value") \
            and st not in ctx.partners and not _nested(st):
        why = absent_value(st)
        if why:  # "无", "-", nullFlavor: nothing was observed or diagnosed, no resource says it was
            _absent(ctx, sec, st, why)
            return []
    if rule.get("if_money") == "ChargeItem" and is_money(st):
        refs = build_charge_item(ctx, sec, st, pos, _map_rest)
        if refs is not None:
            return refs
    builder = BUILDERS[kind]
    return builder(ctx, sec, st, rule, pos, focus)


def _map_rest(ctx: Ctx, sec: Section, st, pos: str, parent_ref: str) -> list[str]:
    return _nested_into(ctx, sec, st, pos, parent_ref, None, set())


def _component(ctx: Ctx, st) -> dict | None:
    code = ctx.concept(child(st, "code"))
    if not code:
        return None
    comp: dict[str, Any] = {"code": code}
    v = _value(ctx, st, {})
    if v is None or v[0] == "absent":
        comp["dataAbsentReason"] = {"coding": [{"system": DAR, "code": v[1] if v else "unknown"}]}
    elif v[0] in ("Quantity", "CodeableConcept", "String", "Boolean", "Integer", "Range", "DateTime", "Period"):
        comp["value" + v[0]] = v[1]
    return comp


def _nested_into(ctx: Ctx, sec: Section, st, pos: str, parent_ref: str, components: list | None,
                 absorbed: set) -> list[str]:
    """Map the statements nested in ``st``: into ``components`` (Observation parent, flat observations
    with a code), else as their own resources with focus on the parent. Returns extra refs."""
    extra: list[str] = []
    nested = _nested(st)
    pair_diagnoses(ctx, nested)
    for i, n in enumerate(nested):
        if n in absorbed or n in ctx.trace:
            continue
        if components is not None and n not in ctx.partners and dt.local(n) == "observation" \
                and not _nested(n) and absent_value(n):
            _absent(ctx, sec, n, absent_value(n))
            continue
        if components is not None and dt.local(n) == "observation" and not _nested(n) \
                and child(n, "code") is not None and not _templates(n):
            comp = _component(ctx, n)
            if comp is not None:
                components.append(comp)
                ctx.trace[n] = f"component:{parent_ref}"
                continue
        r = map_statement(ctx, sec, n, f"{pos}.{i}", focus=parent_ref)
        if r is None:
            _unmapped(ctx, sec, n, "cda.entry.unmapped", "nested statement not in the mapping tables")
        else:
            extra += r
    return extra


def build_observation(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    code = _obs_code(ctx, st, rule)
    if not code:
        return None
    oid = _entry_id(ctx, "Observation", st, pos)
    ref = f"Observation/{oid}"
    res: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": _status(ctx, st),
                           "category": _categories(rule, OBS_CAT), "code": code, "subject": _subject(ctx)}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    if focus:
        res["focus"] = [{"reference": focus}]
    eff = ctx.effective(child(st, "effectiveTime"))
    if eff:
        res["effective" + eff[0]] = eff[1]
    v = _value(ctx, st, rule)
    _set_value(res, v)
    interp = [c for c in (ctx.concept(e) for e in children(st, "interpretationCode")) if c]
    res["interpretation"] = interp
    rr = []
    for r in children(st, "referenceRange"):
        orng = child(r, "observationRange")
        val = child(orng, "value")
        ent: dict[str, Any] = {}
        if val is not None:
            ent["low"] = dt.quantity(child(val, "low"), ctx.t.header["ucum"])
            ent["high"] = dt.quantity(child(val, "high"), ctx.t.header["ucum"])
        t = dt.text(child(orng, "text"))
        if t:
            ent["text"] = t
        if dt.prune(ent):
            rr.append(ent)
    res["referenceRange"] = rr
    note = dt.text(child(st, "text"))
    if note and v is not None and v[0] != "String":
        res["note"] = [{"text": note}]
    ctx.trace[st] = ref
    comps: list = []
    extra = _nested_into(ctx, sec, st, pos, ref, comps, set())
    res["component"] = comps
    if res.get("valueQuantity") is None and res.get("dataAbsentReason") and comps:
        res.pop("dataAbsentReason")  # a panel-like observation: its values are the components
    ctx.add(res)
    return [ref] + extra


def build_panel(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    code = _obs_code(ctx, st, rule)
    if not code:
        return _wrap(ctx, sec, st, pos, focus)  # an organizer without a code is only a container
    oid = _entry_id(ctx, "Observation", st, pos)
    ref = f"Observation/{oid}"
    ctx.trace[st] = ref
    members: list[str] = []
    refs: list[str] = []
    for i, n in enumerate(_nested(st)):
        r = map_statement(ctx, sec, n, f"{pos}.{i}")
        if r is None:
            _unmapped(ctx, sec, n, "cda.entry.unmapped", "organizer component not in the mapping tables")
            continue
        refs += r
        members += [x for x in r if x.startswith("Observation/")][:1]
    res: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": _status(ctx, st),
                           "category": _categories(rule, OBS_CAT), "code": code, "subject": _subject(ctx),
                           "hasMember": [{"reference": m} for m in members]}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    eff = ctx.effective(child(st, "effectiveTime"))
    if eff:
        res["effective" + eff[0]] = eff[1]
    if not members:
        res["dataAbsentReason"] = {"coding": [{"system": DAR, "code": "unknown"}]}
    ctx.add(res)
    return [ref] + refs


def _wrap(ctx: Ctx, sec: Section, st, pos: str, focus: str | None) -> list[str] | None:
    nested = _nested(st)
    if not nested:
        return None
    ctx.trace[st] = "wrap"
    refs: list[str] = []
    pair_diagnoses(ctx, nested)
    for i, n in enumerate(nested):
        if n in ctx.trace:
            continue  # taken in by its diagnosis partner
        r = map_statement(ctx, sec, n, f"{pos}.{i}", focus)
        if r is None:
            _unmapped(ctx, sec, n, "cda.entry.unmapped", "entry not in the mapping tables")
        else:
            refs += r
    return refs


def _code_from(ctx: Ctx, st, rule: dict) -> dict | None:
    if rule.get("code_from") == "value":
        val = child(st, "value")
        if val is None:
            return None
        c = ctx.concept(val)
        return c
    return ctx.concept(child(st, "code"))


def _absorbed(ctx: Ctx, st) -> dict[str, list]:
    """C-CDA sub-statements the parent resource takes in (status, severity, reaction, age)."""
    table = ctx.t.entries["absorbed_templates"]
    out: dict[str, list] = {}
    for n in _nested(st):
        for tpl in _templates(n):
            if tpl in table:
                out.setdefault(table[tpl], []).append(n)
                break
    return out


_CLINICAL = {"55561003": "active", "73425007": "inactive", "413322009": "resolved", "246455001": "recurrence",
             "277022003": "remission"}
_SEVERITY = {"255604002": "mild", "6736007": "moderate", "24484000": "severe", "371923003": "mild",
             "371924009": "moderate"}


def _absorb_common(ctx: Ctx, res: dict, ab: dict[str, list], ref: str) -> set:
    used = set()
    for n in ab.get("note", []):
        t = dt.text(child(n, "text")) or _describe(ctx, n)
        res.setdefault("note", []).append({"text": t})
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    return used


def pair_diagnoses(ctx: Ctx, stmts: list, parent=None) -> None:
    """Register in ``ctx.partners`` each diagnosis name statement with its code statement (table
    ``diagnosis_pairs``): ``parent`` with the first matching statement nested in it, then a name with
    the neighbouring sibling (next, else previous) that carries one of its code elements."""
    names = ctx.t.entries["diagnosis_pairs"]
    if not names or not stmts:
        return
    codes = ctx.t.entries["diagnosis_code_names"]
    des = [_code(s)[0] for s in stmts]
    partners = ctx.partners
    if parent is not None and parent not in partners:
        pde = _code(parent)[0]
        for s, de in zip(stmts, des):
            if s not in partners and s not in ctx.trace and de and \
                    ((pde in names and de in names[pde]) or (pde in codes and codes[pde] == de)):
                partners[parent], partners[s] = s, parent
                break
    def own_pair(n, de) -> bool:  # it carries its partner nested in it: that one, not a sibling
        want = set(names.get(de, ())) | ({codes[de]} if de in codes else set())
        return any(_code(m)[0] in want for m in _nested(n))

    for i, de in enumerate(des):
        s = stmts[i]
        if de not in names or s in partners or s in ctx.trace or own_pair(s, de):
            continue
        for j in (i + 1, i - 1):
            if 0 <= j < len(stmts) and des[j] in names[de] and stmts[j] not in partners \
                    and stmts[j] not in ctx.trace and not own_pair(stmts[j], des[j]):
                partners[s], partners[stmts[j]] = stmts[j], s
                break


def _value_text(st) -> str | None:
    val = child(st, "value")
    if val is None:
        return None
    return dt.text(val) or dt.clean_str(val.get("value")) or dt.clean_str(val.get("displayName"))


def _paired_code(ctx: Ctx, st, partner) -> dict | None:
    """One diagnosis from its name and code statements: the code element's coding, the name as text."""
    codes = ctx.t.entries["diagnosis_code_names"]
    code_st, name_st = (st, partner) if _code(st)[0] in codes else (partner, st)
    code = None if absent_value(code_st) else ctx.concept(child(code_st, "value"))
    name = None if absent_value(name_st) else _value_text(name_st)
    if name:
        code = dict(code or {})
        code["text"] = name
    return code


def build_condition(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    pair_diagnoses(ctx, _nested(st), parent=st)
    partner = ctx.partners.get(st)
    if partner is not None and partner not in ctx.trace:
        code = _paired_code(ctx, st, partner)
        if not code:
            _absent(ctx, sec, st, "filler")
            _absent(ctx, sec, partner, "filler")
            return []
    else:
        partner = None
        code = _code_from(ctx, st, rule)
    if not code:
        if rule.get("code_from") == "value":
            ctx.find("warning", "cda.entry.no-value", "diagnosis entry has no diagnosis value", st)
        return None
    cid = _entry_id(ctx, "Condition", st, pos)
    ref = f"Condition/{cid}"
    cats = _categories(rule, COND_CAT) or []
    de = ctx.coding(child(st, "code"))
    if de:
        cats.append({"coding": [de]})
    res: dict[str, Any] = {"resourceType": "Condition", "id": cid, "category": cats, "code": code,
                           "subject": _subject(ctx)}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    if (st.get("negationInd") or "").strip() == "true":
        res["verificationStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                 "code": "refuted"}]}
    eff = child(st, "effectiveTime")
    if eff is not None:
        lo = ctx.ts(child(eff, "low")) or ctx.ts(eff)
        hi = ctx.ts(child(eff, "high"))
        if lo:
            res["onsetDateTime"] = lo
        if hi and (not lo or hi >= lo):
            res["abatementDateTime"] = hi
    ab = _absorbed(ctx, st)
    used = _absorb_common(ctx, res, ab, ref)
    if partner is not None:
        ctx.trace[partner] = f"absorbed:{ref}"
        used.add(partner)
    for n in ab.get("Condition.clinicalStatus", []):
        v = child(n, "value")
        cs = _CLINICAL.get((v.get("code") or "") if v is not None else "")
        if cs:
            res["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                 "code": cs}]}
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    for n in ab.get("Condition.onsetAge", []):
        qv = dt.quantity(child(n, "value"), ctx.t.header["ucum"])
        if qv and "onsetDateTime" not in res:
            res["onsetAge"] = qv
        else:
            res.setdefault("note", []).append({"text": _describe(ctx, n)})
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    if "abatementDateTime" in res and "clinicalStatus" not in res:
        res["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                             "code": "resolved"}]}
    ctx.trace[st] = ref
    extra = _nested_into(ctx, sec, st, pos, ref, None, used)
    if partner is not None and partner.getparent() is not None and partner not in st.iter():
        extra += _nested_into(ctx, sec, partner, f"{pos}.p", ref, None, used)  # what the partner holds
    ctx.add(res)
    return [ref] + extra


_PROC_STATUS = {"completed": "completed", "active": "in-progress", "aborted": "stopped", "cancelled": "not-done",
                "new": "preparation", "held": "on-hold", "suspended": "on-hold", "nullified": "entered-in-error"}


def build_procedure(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    code = _code_from(ctx, st, rule)
    if not code and not rule.get("code_from") and _nested(st) and sec.title:
        # WS/T 500 writes some procedures (transfusion) without a code: the section names them
        code = {"text": sec.title}
        ctx.find("information", "cda.entry.procedure-uncoded",
                 "procedure without a code; the section title names it", st)
    if not code:
        return None
    pid = _entry_id(ctx, "Procedure", st, pos)
    ref = f"Procedure/{pid}"
    status = rule.get("status") or _status(ctx, st, _PROC_STATUS, "completed")
    if (st.get("negationInd") or "").strip() == "true":
        status = "not-done"
    res: dict[str, Any] = {"resourceType": "Procedure", "id": pid, "status": status, "code": code,
                           "subject": _subject(ctx)}
    cat = rule.get("category")
    src = child(st, "value") if rule.get("code_from") == "value" else child(st, "code")
    sys = dt.clean_str(src.get("codeSystem")) if src is not None else None
    pc = ctx.t.entries["procedure_categories"].get(sys or "")
    if pc:
        res["category"] = {"text": pc["display"]}
    elif cat:
        res["category"] = {"text": {"anaesthesia": "麻醉", "operation": "手术"}.get(cat, cat)}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    eff = ctx.effective(child(st, "effectiveTime"))
    if eff:
        res["performed" + eff[0]] = eff[1]
    perf = []
    for p in children(st, "performer"):
        pref, _ = _practitioner(ctx, child(p, "assignedEntity"), None)
        if pref:
            perf.append({"actor": {"reference": pref}})
    res["performer"] = perf
    site = [c for c in (ctx.concept(e) for e in children(st, "targetSiteCode")) if c]
    res["bodySite"] = site
    ab = _absorbed(ctx, st)
    used = _absorb_common(ctx, res, ab, ref)
    for n in ab.get("reasonCode", []):
        c = ctx.concept(child(n, "value"))
        if c:
            res.setdefault("reasonCode", []).append(c)
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    if focus:
        res["partOf"] = [{"reference": focus}] if focus.startswith(("Procedure/", "Observation/")) else None
    ctx.trace[st] = ref
    extra = _nested_into(ctx, sec, st, pos, ref, None, used)
    ctx.add(res)
    return [ref] + extra


_MED_STATUS = {"completed": "completed", "active": "active", "aborted": "stopped", "cancelled": "cancelled",
               "held": "on-hold", "suspended": "on-hold", "nullified": "entered-in-error", "new": "draft"}


def build_medication(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    med = None
    if rule.get("code_from") == "value":
        med = _code_from(ctx, st, rule)
    else:
        prod = dt.path(st, "consumable", "manufacturedProduct")
        drug = None
        if prod is not None:
            drug = child(prod, "manufacturedLabeledDrug")
            if drug is None:
                drug = child(prod, "manufacturedMaterial")
        if drug is not None:
            name = dt.text(child(drug, "name"))
            med = ctx.concept(child(drug, "code"), fallback_text=name)
            if med is not None and name and "text" not in med:
                med["text"] = name
    if not med:
        return None
    mid = _entry_id(ctx, "MedicationRequest", st, pos)
    ref = f"MedicationRequest/{mid}"
    mood = (st.get("moodCode") or "").strip()
    status = _status(ctx, st, _MED_STATUS, "completed" if mood == "EVN" else "active")
    res: dict[str, Any] = {"resourceType": "MedicationRequest", "id": mid, "status": status,
                           "intent": "plan" if mood == "INT" and ctx.family == "ccda" else "order",
                           "medicationCodeableConcept": med, "subject": _subject(ctx)}
    cat = rule.get("category")
    if cat:
        res["category"] = [{"text": {"chinese-herbal": "中药饮片处方"}.get(cat, cat)}]
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    au = ctx.ts(dt.path(st, "author", "time")) or ctx.doc_time
    if au:
        res["authoredOn"] = au
    if ctx.author_ref:
        res["requester"] = {"reference": ctx.author_ref}
    dose: dict[str, Any] = {}
    t = dt.text(child(st, "text"))
    if t:
        dose["text"] = t
    route = ctx.concept(child(st, "routeCode"))
    if route:
        dose["route"] = route
    form = ctx.concept(child(st, "administrationUnitCode"))
    if form:
        dose["method"] = form
    dq = child(st, "doseQuantity")
    dqv = dt.quantity(dq, ctx.t.header["ucum"])
    if dqv is None and dq is not None:
        lo = dt.quantity(child(dq, "low"), ctx.t.header["ucum"])
        hi = dt.quantity(child(dq, "high"), ctx.t.header["ucum"])
        if lo or hi:
            dose["doseAndRate"] = [{"doseRange": {"low": lo, "high": hi}}]
    elif dqv:
        dose["doseAndRate"] = [{"doseQuantity": dqv}]
    rate = child(st, "rateQuantity")
    timing_txt = None
    if rate is not None:
        tr = child(rate, "translation")
        timing_txt = dt.clean_str(tr.get("displayName")) if tr is not None else None
        rq = dt.quantity(rate, ctx.t.header["ucum"])
        if rq:
            dose.setdefault("doseAndRate", [{}])[0]["rateQuantity"] = rq
    rep: dict[str, Any] = {}
    for et in children(st, "effectiveTime"):
        typ = dt.value_type(et)
        if typ in ("PIVL_TS", "EIVL_TS"):
            per = child(et, "period")
            pv = dt.decimal(per.get("value")) if per is not None else None
            unit = dt.clean_str(per.get("unit")) if per is not None else None
            if pv and pv > 0 and unit in ("s", "min", "h", "d", "wk", "mo", "a"):
                rep = {"frequency": 1, "period": pv, "periodUnit": unit}
        else:
            p = dt.period(et, ctx.offset)
            if p:
                rep["boundsPeriod"] = p
    if rep or timing_txt:
        dose["timing"] = {"repeat": rep or None, "code": {"text": timing_txt} if timing_txt else None}
    if dt.prune(dose):
        res["dosageInstruction"] = [dose]
    if ctx.order_ident and ctx.family.startswith("wst"):
        res["groupIdentifier"] = ctx.order_ident
    ab = _absorbed(ctx, st)
    used = _absorb_common(ctx, res, ab, ref) | medication_details(ctx, st, res, ref)
    for n in ab.get("reasonCode", []):
        c = ctx.concept(child(n, "value"))
        if c:
            res.setdefault("reasonCode", []).append(c)
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    ctx.trace[st] = ref
    extra = _nested_into(ctx, sec, st, pos, ref, None, used)
    res["supportingInformation"] = [{"reference": r} for r in extra if r.startswith("Observation/")]
    ctx.add(res)
    return [ref] + extra


def build_allergy(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    if rule.get("code_from") == "value":
        code = _code_from(ctx, st, rule)
    else:
        pe = dt.path(st, "participant", "participantRole", "playingEntity")
        code = ctx.concept(child(pe, "code"), fallback_text=dt.text(child(pe, "name"))) if pe is not None else None
        if not code:
            code = ctx.concept(child(st, "value"))
    if not code:
        return None
    aid = _entry_id(ctx, "AllergyIntolerance", st, pos)
    ref = f"AllergyIntolerance/{aid}"
    res: dict[str, Any] = {"resourceType": "AllergyIntolerance", "id": aid, "code": code, "patient": _subject(ctx)}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    if (st.get("negationInd") or "").strip() == "true":
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "refuted"}]}
    eff = child(st, "effectiveTime")
    if eff is not None:
        on = ctx.ts(child(eff, "low")) or ctx.ts(eff)
        if on:
            res["onsetDateTime"] = on
    ab = _absorbed(ctx, st)
    used = _absorb_common(ctx, res, ab, ref)
    for n in ab.get("AllergyIntolerance.clinicalStatus", []):
        v = child(n, "value")
        cs = _CLINICAL.get((v.get("code") or "") if v is not None else "")
        if cs in ("active", "inactive", "resolved"):
            res["clinicalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": cs}]}
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    reactions = []
    for n in ab.get("AllergyIntolerance.reaction", []):
        m = ctx.concept(child(n, "value"))
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
        if not m:
            continue
        rx: dict[str, Any] = {"manifestation": [m]}
        for s in _nested(n):
            if "2.16.840.1.113883.10.20.22.4.8" in _templates(s):
                sv = child(s, "value")
                sev = _SEVERITY.get((sv.get("code") or "") if sv is not None else "")
                if sev:
                    rx["severity"] = sev
                ctx.trace[s] = f"absorbed:{ref}"
                used.add(s)
        reactions.append(rx)
    res["reaction"] = reactions
    for key in ("AllergyIntolerance.reaction.severity", "AllergyIntolerance.criticality"):
        for n in ab.get(key, []):
            res.setdefault("note", []).append({"text": _describe(ctx, n)})
            ctx.trace[n] = f"absorbed:{ref}"
            used.add(n)
    ctx.trace[st] = ref
    extra = _nested_into(ctx, sec, st, pos, ref, None, used)
    ctx.add(res)
    return [ref] + extra


def build_immunization(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    mat = dt.path(st, "consumable", "manufacturedProduct", "manufacturedMaterial")
    vac = ctx.concept(child(mat, "code"), fallback_text=dt.text(child(mat, "name"))) if mat is not None else None
    if not vac:
        return None
    iid = _entry_id(ctx, "Immunization", st, pos)
    ref = f"Immunization/{iid}"
    occ = ctx.effective(child(st, "effectiveTime"))
    res: dict[str, Any] = {"resourceType": "Immunization", "id": iid,
                           "status": "not-done" if (st.get("negationInd") or "").strip() == "true" else "completed",
                           "vaccineCode": vac, "patient": _subject(ctx)}
    if occ and occ[0] == "DateTime":
        res["occurrenceDateTime"] = occ[1]
    elif occ:
        res["occurrenceDateTime"] = occ[1].get("start") or occ[1].get("end")
    else:
        res["occurrenceString"] = "unknown"
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    route = ctx.concept(child(st, "routeCode"))
    if route:
        res["route"] = route
    dq = dt.quantity(child(st, "doseQuantity"), ctx.t.header["ucum"])
    if dq:
        res["doseQuantity"] = dq
    lot = dt.text(child(mat, "lotNumberText"))
    if lot:
        res["lotNumber"] = lot
    ab = _absorbed(ctx, st)
    used = _absorb_common(ctx, res, ab, ref)
    ctx.trace[st] = ref
    extra = _nested_into(ctx, sec, st, pos, ref, None, used)
    ctx.add(res)
    return [ref] + extra


def build_encounter(ctx: Ctx, sec: Section, st, rule: dict, pos: str, focus: str | None) -> list[str] | None:
    eid = _entry_id(ctx, "Encounter", st, pos)
    ref = f"Encounter/{eid}"
    code_el = child(st, "code")
    etype = ctx.concept(code_el)
    cls = None
    for c in (etype or {}).get("coding", []):
        if c.get("system") == "http://terminology.hl7.org/CodeSystem/v3-ActCode":
            cls = c
    res: dict[str, Any] = {"resourceType": "Encounter", "id": eid, "status": "unknown",
                           "class": cls or {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
                                            "code": "UNK"},
                           "type": [etype] if etype else None, "subject": _subject(ctx)}
    p = dt.period(child(st, "effectiveTime"), ctx.offset)
    if p:
        res["period"] = p
        if "end" in p:
            res["status"] = "finished"
    ab = _absorbed(ctx, st)
    used = set()
    for n in ab.get("note", []):
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    ctx.trace[st] = ref
    extra = _nested_into(ctx, sec, st, pos, ref, None, used)
    diag = [{"condition": {"reference": r}} for r in extra if r.startswith("Condition/")]
    res["diagnosis"] = diag
    ctx.add(res)
    return [ref] + extra


BUILDERS = {
    "Observation": build_observation, "panel": build_panel, "Condition": build_condition,
    "Procedure": build_procedure, "MedicationRequest": build_medication,
    "AllergyIntolerance": build_allergy, "Immunization": build_immunization, "Encounter": build_encounter,
    "ServiceRequest": build_service_request,
}


# ====================================================================== sections and document

def _map_entry(ctx: Ctx, sec: Section, st, epos: str) -> None:
    if st in ctx.trace or take_report_fact(ctx, sec, st):
        return  # taken in by its diagnosis partner, or by the report
    refs = map_statement(ctx, sec, st, epos)
    if refs is None:
        if st not in ctx.trace:
            uncoded = child(st, "code") is None or not dt.clean_str(child(st, "code").get("code"))
            _unmapped(ctx, sec, st, "cda.entry.uncoded" if uncoded else "cda.entry.unmapped",
                      "entry has no code" if uncoded else "entry not in the mapping tables")
    else:
        for r in refs:
            if r not in sec.refs:
                sec.refs.append(r)


def map_section(ctx: Ctx, sec_el, pos: str, depth: int = 0) -> dict:
    code_el = child(sec_el, "code")
    code = ctx.concept(code_el)
    c = dt.clean_str(code_el.get("code")) if code_el is not None else None
    title = dt.text(child(sec_el, "title")) or (code or {}).get("text") or \
        ((code or {}).get("coding") or [{}])[0].get("display") or \
        (ctx.t.sections.get(c or "", {}).get("title"))
    sec = Section(pos, title)
    entries = [[s for s in entry if s.tag in STATEMENTS] for entry in children(sec_el, "entry")]
    pair_diagnoses(ctx, [st for stmts in entries for st in stmts])  # name and code in neighbouring entries
    facts = ctx.t.entries.get("prescription_facts") or {}
    placed = [(f"{pos}.e{i}.{j}", st) for i, stmts in enumerate(entries) for j, st in enumerate(stmts)]
    # prescription facts (处方有效天数…) wait for the section's drugs, whichever entry comes first
    deferred = [(p, st) for p, st in placed if (_code(st)[0] or "") in facts]
    for epos, st in [x for x in placed if x not in deferred]:
        _map_entry(ctx, sec, st, epos)
    if deferred:
        meds = [ctx.resources[("MedicationRequest", r.split("/", 1)[1])] for r in sec.refs
                if r.startswith("MedicationRequest/")]
        rest = prescription_facts(ctx, [st for _, st in deferred], meds)
        for epos, st in deferred:
            if st in rest:
                _map_entry(ctx, sec, st, epos)
    out: dict[str, Any] = {"title": title, "code": code}
    div = to_div(child(sec_el, "text"), sec.unmapped or None,
                 "未映射条目 / entries not mapped:" if sec.unmapped else None)
    if div:
        orig = child(sec_el, "text")
        out["text"] = {"status": "additional" if has_content(orig) else "generated", "div": div}
    out["entry"] = [{"reference": r} for r in sec.refs]
    subs = []
    if depth < 20:
        for k, comp in enumerate(children(sec_el, "component")):
            s = child(comp, "section")
            if s is not None:
                subs.append(map_section(ctx, s, f"{pos}.s{k}", depth + 1))
    out["section"] = subs
    out = dt.prune(out)
    if not any(k in out for k in ("text", "entry", "section")):
        out["emptyReason"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                                          "code": "unavailable"}]}
    return out


def convert_document(payload: bytes, source: SourceInfo) -> tuple[Conversion, dict]:
    root = parse_xml(payload)
    if root.tag != q("ClinicalDocument"):
        raise MappingError(f"root element is {dt.local(root) or root.tag!r} in namespace "
                           f"{(root.tag.split('}')[0][1:] if isinstance(root.tag, str) and '}' in root.tag else 'none')!r}, "
                           "not an HL7 v3 ClinicalDocument", code="AR", location="/" + (dt.local(root) or ""),
                           rule="cda.not-clinical-document")
    t = tables()
    ctx = Ctx(root, source, t)
    tpls = _templates(root)
    code_el = child(root, "code")
    doc_code = dt.clean_str(code_el.get("code")) if code_el is not None else None
    dtype = t.document_type(tpls, doc_code)
    fam = (dtype or {}).get("family") or t.family(tpls) or (
        "wst" if (dt.attr(child(root, "realmCode"), "code") or "") == "CN" else "cda")
    ctx.family = fam
    ctx.offset = t.header["default_offset"].get(fam)
    if dtype is None:
        ctx.find("warning", "cda.document.type-unknown",
                 f"document type (templateId {', '.join(tpls) or 'none'}, code {doc_code or 'none'}) is not in "
                 "the document table; header, Composition and sections mapped", code_el if code_el is not None else root)
    doc_id, set_id, version = _doc_ids(ctx, root)
    # custodian first: it names the institution when the connector did not
    cust_org_el = dt.path(root, "custodian", "assignedCustodian", "representedCustodianOrganization")
    if not ctx.institution:
        ck = dt.ii(child(cust_org_el, "id")) if cust_org_el is not None else None
        if ck and not usable(ck[1], ck[0]):
            ck = None  # a filler custodian id would make one institution of every sender using it
        ctx.institution = (f"{ck[0]}|{ck[1]}" if ck else "") or source.oid
    custodian_ref = _organization(ctx, cust_org_el) if cust_org_el is not None else None
    # document ids are unique within an institution (WS/T 500 roots are namespaces shared by every
    # hospital): the key is (institution, document type, setId or id)
    ctx.doc_key = ("cda-set", ctx.institution, doc_code or "", *set_id) if set_id else \
        ("cda-doc", ctx.institution, doc_code or "", *doc_id)
    patient_ref = _patient(ctx, root, custodian_ref)
    if dtype is not None and dtype.get("report"):
        ctx.report = Report(ctx, dtype["report"])
    ctx.doc_time = ctx.ts(child(root, "effectiveTime"), what="document effectiveTime")
    encounter_ref = _encounter(ctx, root, custodian_ref)
    authors = []
    for a in children(root, "author"):
        pref, _ = _practitioner(ctx, child(a, "assignedAuthor"), custodian_ref)
        if pref:
            authors.append(pref)
        else:
            dev = dt.path(a, "assignedAuthor", "assignedAuthoringDevice")
            rep = dt.path(a, "assignedAuthor", "representedOrganization")
            org = _org_chain(ctx, rep)[0] if rep is not None else None
            if org:
                authors.append(org)
            elif dev is not None and custodian_ref:
                authors.append(custodian_ref)
    ctx.author_ref = authors[0] if authors else None
    if not authors:
        if custodian_ref:
            authors = [custodian_ref]
            ctx.find("warning", "cda.header.author-missing", "document has no usable author; the custodian "
                     "stands as Composition.author", child(root, "author") if child(root, "author") is not None else root)
        else:
            raise MappingError("document has neither an author nor a custodian", code="AE",
                               location="/ClinicalDocument/author", rule="cda.header.author-missing")
    attesters = []
    la = child(root, "legalAuthenticator")
    for mode, el in [("legal", la)] + [("professional", e) for e in children(root, "authenticator")]:
        if el is None:
            continue
        pref, _ = _practitioner(ctx, child(el, "assignedEntity"), custodian_ref)
        tm = ctx.ts(child(el, "time"), what="signature time")
        if pref or tm:
            attesters.append({"mode": mode, "time": tm, "party": {"reference": pref} if pref else None})
    # body
    sections = []
    body = dt.path(root, "component", "structuredBody")
    if body is not None:
        for i, comp in enumerate(children(body, "component")):
            s = child(comp, "section")
            if s is not None:
                sections.append(map_section(ctx, s, f"s{i}"))
    else:
        nb = dt.path(root, "component", "nonXMLBody")
        if nb is not None:
            ctx.find("information", "cda.body.non-xml", "nonXMLBody: the content is kept in the Binary only", nb)
    # Composition
    comp_id = stable_id("Composition", *ctx.doc_key)
    type_cc = ctx.concept(code_el) or {}
    if dtype is not None:
        type_cc.setdefault("text", dtype["name"])
        if dtype.get("loinc"):
            lc = {"system": LOINC, "code": dtype["loinc"]}
            type_cc.setdefault("coding", []).append(lc)
        for cd in type_cc.get("coding", []):
            if cd.get("code") == dtype["code"] and "display" not in cd:
                cd["display"] = dtype["name"]
    if not type_cc:
        type_cc = {"text": dt.text(child(root, "title")) or "clinical document"}
    title = dt.text(child(root, "title")) or type_cc.get("text") or "临床文档"
    date = ctx.doc_time or (ctx.ts(dt.path(root, "author", "time")))
    if not date:
        raise MappingError("document has no valid effectiveTime (nor author time)", code="AE",
                           location="/ClinicalDocument/effectiveTime", rule="cda.header.time-missing")
    report_ref = finish_report(ctx, type_cc, date)
    if report_ref:
        _list_report(sections, report_ref, set(ctx.report.results))
    doc_ident = ctx.ident(child(root, "id")) or {"value": "^".join(doc_id)}
    set_ident = ctx.ident(child(root, "setId")) if set_id else None
    conf = dt.clean_str(dt.attr(child(root, "confidentialityCode"), "code"))
    relates = []
    rdoc_ids = []
    for rd in children(root, "relatedDocument"):
        if (rd.get("typeCode") or "").strip() not in ("RPLC", "APND", "XFRM"):
            continue
        pd = child(rd, "parentDocument")
        pid_ = ctx.ident(child(pd, "id")) if pd is not None else None
        if pid_:
            code = {"RPLC": "replaces", "APND": "appends", "XFRM": "transforms"}[(rd.get("typeCode") or "").strip()]
            relates.append({"code": code, "targetIdentifier": pid_})
            rdoc_ids.append((code, pid_))
    composition = {
        "resourceType": "Composition", "id": comp_id, "identifier": doc_ident, "status": "final",
        "type": type_cc, "subject": {"reference": patient_ref},
        "encounter": {"reference": encounter_ref} if encounter_ref else None,
        "date": date, "author": [{"reference": a} for a in dict.fromkeys(authors)], "title": title,
        "confidentiality": conf if conf in CONFIDENTIALITY else None,
        "attester": attesters, "custodian": {"reference": custodian_ref} if custodian_ref else None,
        "relatesTo": relates, "section": sections,
        "extension": [{"url": VERSION_EXT, "valueString": str(version)}] if version is not None else None,
    }
    comp_ref = ctx.add(composition)
    lang = dt.attr(child(root, "languageCode"), "code")
    if lang and dt.code_ok(lang) and len(lang) <= 20:
        ctx.resources[("Composition", comp_id)]["language"] = lang
    # the original bytes
    bin_id = stable_id("Binary", "cda", ctx.institution, doc_code or "", *doc_id)
    binary = {"resourceType": "Binary", "id": bin_id, "contentType": "application/xml",
              "data": base64.b64encode(payload).decode("ascii")}
    ctx.add(binary)
    instant = date if "T" in date else None
    docref = {
        "resourceType": "DocumentReference", "id": stable_id("DocumentReference", *ctx.doc_key),
        "masterIdentifier": doc_ident, "identifier": [set_ident] if set_ident else None,
        "status": "current", "docStatus": "final", "type": type_cc,
        "subject": {"reference": patient_ref}, "date": instant,
        "author": [{"reference": a} for a in dict.fromkeys(authors)],
        "authenticator": {"reference": attesters[0]["party"]["reference"]}
        if attesters and attesters[0]["mode"] == "legal" and attesters[0].get("party") else None,
        "custodian": {"reference": custodian_ref} if custodian_ref else None,
        "relatesTo": [{"code": c, "target": {"identifier": i}} for c, i in rdoc_ids],
        "description": title,
        "content": [{"attachment": {"contentType": "application/xml", "url": f"Binary/{bin_id}",
                                    "size": len(payload),
                                    "hash": base64.b64encode(hashlib.sha1(payload).digest()).decode("ascii"),
                                    "title": title, "creation": date},
                     "format": {"system": "urn:oid:2.16.156.10011.2.4" if fam.startswith("wst")
                                else "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                                "code": (tpls[0] if tpls else "urn:hl7-org:v3:POCD_MT000040") if fam.startswith("wst")
                                else "urn:hl7-org:sdwg:ccda-structuredBody:2.1"}}],
        "context": {"encounter": [{"reference": encounter_ref}] if encounter_ref else None,
                    "related": [{"reference": comp_ref}]},
    }
    if conf in CONFIDENTIALITY:
        docref["securityLabel"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                                "code": conf}]}]
    ctx.add(docref)
    # the document Bundle: Composition first, then everything the document describes
    bundle_entries = [r for (rt, _), r in ctx.resources.items() if rt not in ("Binary", "DocumentReference")]
    bundle_entries.sort(key=lambda r: r["resourceType"] != "Composition")
    bundle = {"resourceType": "Bundle", "id": stable_id("Bundle", *ctx.doc_key),
              "identifier": doc_ident, "type": "document",
              "timestamp": instant}
    bundle = dt.prune(bundle)
    # the entries are the very dicts written one by one (already pruned), so what is done to those
    # after mapping (the terminology normaliser adds standard codings in place) is in the Bundle too
    bundle["entry"] = [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in bundle_entries]
    resources = [r for (rt, _), r in ctx.resources.items() if rt != "Composition"]
    resources.sort(key=lambda r: _ORDER.get(r["resourceType"], 5))
    resources.insert(_first_after(resources, 5), ctx.resources[("Composition", comp_id)])
    resources.append(bundle)
    conv = Conversion(resources=resources, unit_id="^".join(x for x in doc_id if x), patient_key=patient_ref,
                      kind=f"cda:{(dtype or {}).get('code') or doc_code or 'unknown'}", findings=ctx.findings)
    return conv, ctx.trace


def _list_report(sections: list[dict], report_ref: str, results: set[str]) -> bool:
    """Put the DiagnosticReport first in the (sub)section that lists its first result."""
    for sec in sections:
        refs = [e["reference"] for e in sec.get("entry", [])]
        if results & set(refs):
            sec["entry"].insert(0, {"reference": report_ref})
            return True
        if _list_report(sec.get("section", []), report_ref, results):
            return True
    return False


_ORDER = {"Organization": 0, "Location": 1, "Patient": 2, "Practitioner": 3, "PractitionerRole": 4,
          "Encounter": 4, "Binary": 7, "DocumentReference": 8}


def _first_after(resources: list[dict], rank: int) -> int:
    for i, r in enumerate(resources):
        if _ORDER.get(r["resourceType"], 5) > rank:
            return i
    return len(resources)
