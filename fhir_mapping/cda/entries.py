"""Entry-level mapping: one CDA clinical statement (observation, organizer, diagnosis, drug, procedure,
allergy, immunization, encounter, order) -> FHIR resources, driven by ``tables/entries.yaml``.

Imports ``context``, ``header`` (performers) and the entry-builder modules (``orders``, ``reports``, ``charges``), never
``sections`` or ``mapper``: ``sections`` calls ``map_statement`` and ``pair_diagnoses`` in here, and the
tables are read from ``ctx.t``."""

from __future__ import annotations

import copy
from typing import Any

from fhir_mapping import medication_form, numbers
from fhir_mapping.cda import dt
from fhir_mapping.cda.charges import build_charge_item, is_money
from fhir_mapping.cda.context import (
    COND_CAT,
    DAR,
    OBS_CAT,
    Ctx,
    Section,
    _absent,
    _categories,
    _code,
    _describe,
    _entry_id,
    _nested,
    _obs_code,
    _set_value,
    _status,
    _subject,
    _templates,
    _unmapped,
    _value,
    absent_value,
    interpretations,
    reference_ranges,
)
from fhir_mapping.cda.dt import child, children
from fhir_mapping.cda.header import _practitioner
from fhir_mapping.cda.orders import build_service_request, medication_details
from fhir_mapping.cda.reports import build_result_item, is_result_item, members


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
        refs, item_of = build_result_item(ctx, sec, st, pos)
        for i, n in enumerate(members(st)):  # what the test items did not take in
            if n not in ctx.trace:
                r = map_statement(ctx, sec, n, f"{pos}.m{i}", item_of.get(n, refs[0]))
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
        charged = build_charge_item(ctx, sec, st, pos, _map_rest)
        if charged is not None:
            return charged
    builder = BUILDERS[kind]
    return builder(ctx, sec, st, rule, pos, focus)


def _map_rest(ctx: Ctx, sec: Section, st, pos: str, parent_ref: str) -> list[str]:
    return _nested_into(ctx, sec, st, pos, parent_ref, None, set())


_COMPONENT_VALUES = ("Quantity", "CodeableConcept", "String", "Boolean", "Integer", "Range", "Ratio",
                     "DateTime", "Period")


def _components(ctx: Ctx, st, code: dict, vals: list) -> list[dict]:
    """One component (``code``) per value element in ``vals``: the values of one observation."""
    comps = []
    for val in vals:
        comp: dict[str, Any] = {"code": copy.deepcopy(code)}
        v = _value(ctx, st, {}, val)
        if v is None or v[0] == "absent":
            comp["dataAbsentReason"] = {"coding": [{"system": DAR, "code": v[1] if v else "unknown"}]}
        elif v[0] in _COMPONENT_VALUES:
            comp["value" + v[0]] = v[1]
        comps.append(comp)
    return comps


def _component(ctx: Ctx, st) -> list[dict] | None:
    """A flat nested observation as components of its parent: one per value it writes."""
    code = ctx.concept(child(st, "code"))
    if not code:
        return None
    return _components(ctx, st, code, children(st, "value") or [None])


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
                and not _nested(n) and (why := absent_value(n)):
            _absent(ctx, sec, n, why)
            continue
        if components is not None and dt.local(n) == "observation" and not _nested(n) \
                and child(n, "code") is not None and not _templates(n):
            comp = _component(ctx, n)
            if comp is not None:
                components += comp
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
    res["interpretation"] = interpretations(ctx, st)
    res["referenceRange"] = reference_ranges(ctx, st)
    note = dt.text(child(st, "text"))
    if note and v is not None and v[0] != "String":
        res["note"] = [{"text": note}]
    ctx.trace[st] = ref
    # an observation written with several values (120 and 80 mmHg): the first is its value, each
    # further one a component with the observation's own code
    more = children(st, "value")[1:]
    comps: list = _components(ctx, st, code, more)
    if more:
        ctx.find("information", "cda.value.several", f"observation with {len(more) + 1} values: the "
                 "first is its value, the others are components with its code", more[0])
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


def _absorb_reasons(ctx: Ctx, res: dict, ab: dict[str, list], ref: str) -> set:
    """The absorbed reason observations as ``reasonCode``; the nodes used."""
    used = set()
    for n in ab.get("reasonCode", []):
        c = ctx.concept(child(n, "value"))
        if c:
            res.setdefault("reasonCode", []).append(c)
        ctx.trace[n] = f"absorbed:{ref}"
        used.add(n)
    return used


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
    used |= _absorb_reasons(ctx, res, ab, ref)
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
    admin_unit = ctx.concept(child(st, "administrationUnitCode"))
    au_rule = ctx.t.entries["administration_unit"]
    if admin_unit:  # Medication.form (C-CDA on FHIR), beside the drug's CodeableConcept
        res["extension"] = [medication_form.form_extension(admin_unit)]

    def counted(q: dict[str, Any] | None) -> dict[str, Any] | None:
        return medication_form.counted_in(q, admin_unit) if admin_unit and au_rule.get("unitless_dose") else q
    dq = child(st, "doseQuantity")
    dqv = dt.quantity(dq, ctx.t.header["ucum"])
    if dqv is None and dq is not None:
        lo = dt.quantity(child(dq, "low"), ctx.t.header["ucum"])
        hi = dt.quantity(child(dq, "high"), ctx.t.header["ucum"])
        if lo or hi:
            dose["doseAndRate"] = [{"doseRange": {"low": counted(lo), "high": counted(hi)}}]
    elif dqv:
        dose["doseAndRate"] = [{"doseQuantity": counted(dqv)}]
    rate = child(st, "rateQuantity")
    timing_txt = None
    timing_code: dict[str, Any] | None = None
    if rate is not None:
        tr = child(rate, "translation")
        timing_txt = dt.clean_str(tr.get("displayName")) if tr is not None else None
        # the frequency's code (WS/T 364 CV06.00.228: 03 每日三次) beside its words
        timing_code = ctx.concept(tr) if tr is not None and tr.get("code") else None
        rq = dt.quantity(rate, ctx.t.header["ucum"])
        if rq:
            dose.setdefault("doseAndRate", [{}])[0]["rateQuantity"] = rq
    rep: dict[str, Any] = {}
    for et in children(st, "effectiveTime"):
        typ = dt.value_type(et)
        if typ == "PIVL_TS":
            per = child(et, "period")
            pv = dt.decimal(per.get("value")) if per is not None else None
            raw_unit = dt.clean_str(per.get("unit")) if per is not None else None
            unit = _TIME_UNITS.get((raw_unit or "").lower(), raw_unit)
            if pv is not None and numbers.value_of(pv) > 0 and unit in _TIME_UNITS.values():
                rep.update({"frequency": 1, "period": pv, "periodUnit": unit})
            else:
                ctx.find("warning", "cda.medication.frequency",
                         f"a dosing period of {per.get('value') if per is not None else None!r} "
                         f"{raw_unit or ''} is no time: the frequency is not kept", et)
        elif typ == "EIVL_TS":
            event = child(et, "event")
            code = (event.get("code") or "").upper() if event is not None else ""
            if code in _EVENT_TIMING:
                rep["when"] = [code]
                off = child(et, "offset")  # an IVL_PQ: its width, or a value of its own
                width = child(off, "width") if off is not None else None
                minutes = _minutes(dt.quantity(width if width is not None else off,
                                               ctx.t.header["ucum"]))
                if minutes is not None:
                    rep["offset"] = minutes
            else:
                ctx.find("warning", "cda.medication.frequency",
                         f"a dosing event {code or 'without a code'} is none of HL7's timing "
                         "events: the frequency is not kept", et)
        else:
            p = dt.period(et, ctx.offset)
            if p:
                rep["boundsPeriod"] = p
    if rep or timing_txt or timing_code:
        code = dict(timing_code or {})
        if timing_txt:
            code["text"] = timing_txt
        dose["timing"] = {"repeat": rep or None, "code": code or None}
    if dt.prune(dose):
        res["dosageInstruction"] = [dose]
    if ctx.record_idents.get("prescription") and ctx.family.startswith("wst"):
        res["groupIdentifier"] = ctx.record_idents["prescription"]
    ab = _absorbed(ctx, st)
    used = _absorb_common(ctx, res, ab, ref) | medication_details(ctx, st, res, ref)
    used |= _absorb_reasons(ctx, res, ab, ref)
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


# UCUM units of time a dosing period is given in, and the spellings senders use for them
_TIME_UNITS = {"s": "s", "min": "min", "h": "h", "d": "d", "wk": "wk", "mo": "mo", "a": "a",
               "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "day": "d", "days": "d",
               "week": "wk", "weeks": "wk", "month": "mo", "months": "mo", "sec": "s",
               "mins": "min", "minute": "min", "minutes": "min"}
# HL7 v3 TimingEvent codes that R4's event-timing value set holds (Timing.repeat.when)
_EVENT_TIMING = {"HS", "WAKE", "C", "CM", "CD", "CV", "AC", "ACM", "ACD", "ACV", "PC", "PCM", "PCD",
                 "PCV", "ICM", "ICD", "ICV", "IC"}
_MINUTES = {"s": 1 / 60, "min": 1, "h": 60, "d": 1440}


def _minutes(q: dict | None) -> int | None:
    """A Quantity of time in whole minutes (Timing.repeat.offset), None if it is none."""
    if not q or q.get("value") is None:
        return None
    factor = _MINUTES.get(_TIME_UNITS.get(str(q.get("code") or q.get("unit") or "").lower(), ""))
    if factor is None:
        return None
    minutes = round(float(numbers.value_of(q["value"])) * factor)
    return minutes if minutes >= 0 else None


BUILDERS = {
    "Observation": build_observation, "panel": build_panel, "Condition": build_condition,
    "Procedure": build_procedure, "MedicationRequest": build_medication,
    "AllergyIntolerance": build_allergy, "Immunization": build_immunization, "Encounter": build_encounter,
    "ServiceRequest": build_service_request,
}
