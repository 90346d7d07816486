"""Order and request interactions (H08 orders, H09 requests) -> MedicationRequest / ServiceRequest /
NutritionOrder (+ Specimen, BiologicallyDerivedProduct). The tables are ``tables/orders.yaml``.

One interaction pair carries both: POOR_IN200901UV (new) and POOR_IN200902UV (update, which is
also how a stop or a cancellation travels: its statusCode). An order message's subject is a
``placerGroup`` whose ``component2`` are the orders (a drug: ``substanceAdministrationRequest`` ->
MedicationRequest; a diet, told by its words -> NutritionOrder; anything else ->
ServiceRequest); a request message's subject is the request form itself
(``observationRequest`` or ``procedureRequest``: laboratory, examination, pathology, transfusion
or surgery, told apart by its content), each of its ``component2`` items one ServiceRequest
sharing the form's number as ``requisition``; a transfusion's blood products are
BiologicallyDerivedProducts naming its request.

Every order and item is keyed by its order number (医嘱号), else by the form's number with the
item's code, so an update or a cancellation lands on the resource the new order wrote. The patient
and the visit are references, keyed as the patient registration and the visit registration key
them: an order never overwrites what those registered.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from fhir_mapping import medication_form, numbers
from fhir_mapping.base import MappingError
from fhir_mapping.ids import encounter_id

from . import status as status_changes
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
from .registrations import _keys, _practitioner, _where, keyed_patient_ref, place_ref
from .visits import _visit_key

SUBJECT = "/*/hl7:controlActProcess/hl7:subject"


def _acts(el: etree._Element | None) -> list[etree._Element]:
    """The element children of ``el`` (comments and processing instructions skipped)."""
    return [c for c in el if isinstance(c.tag, str)] if el is not None else []


def _refusal(ctx: Ctx, el: etree._Element | None, message: str, rule: str) -> MappingError:
    return MappingError(message, code="AE", location=_where(ctx, el) or SUBJECT, rule=rule)


def order(ctx: Ctx) -> list[dict[str, str]]:
    """POOR_IN200901UV / POOR_IN200902UV: a placerGroup of orders, or one request form."""
    t = table("orders")
    subject = first(ctx.msg.control, "subject")
    act = next(iter(_acts(subject)), None)
    if act is None:
        raise _refusal(ctx, subject, "no order in the message (subject/placerGroup, "
                       "observationRequest or procedureRequest)", "v3.order.missing")
    encounter = first(act, "componentOf1/encounter")
    common = _context(ctx, act, encounter)
    verifier = _practitioner(ctx, first(act, "verifier/assignedEntity"))
    agents = [a for a in (common.get("requester"), verifier) if a]
    if local_name(act) == "placerGroup":
        items = [c for comp in q(act, "component2") for c in _acts(comp)
                 if local_name(c) != "sequenceNumber"]
        if not items:
            raise _refusal(ctx, act, "the placerGroup has no order (component2)", "v3.order.empty")
        for item in items:
            if first(item, "component1/processStep") is not None:  # a status change
                owner = status_changes.item_status(ctx, item, common)
                if owner:
                    agents.append(owner)
            else:
                _order_item(ctx, item, common, t)
        return agents
    if local_name(act) not in ("observationRequest", "procedureRequest"):
        raise _refusal(ctx, act, f"{local_name(act)} is neither a placerGroup of orders nor a "
                       "request (observationRequest, procedureRequest)", "v3.order.act-unknown")
    _request(ctx, act, common, t)
    return agents


def _context(ctx: Ctx, act: etree._Element, encounter: etree._Element | None) -> dict[str, Any]:
    """What every order of the message shares, as the elements of each request: the patient, the
    visit, the author (requester and time)."""
    if encounter is None:
        raise _refusal(ctx, act, "the order names no visit and patient (componentOf1/encounter)",
                       "v3.order.encounter-missing")
    patient = first(encounter, "subject/patient")
    if patient is None:
        raise _refusal(ctx, encounter, "the order's visit names no patient (subject/patient)",
                       "v3.order.patient-missing")
    pkey, subject = keyed_patient_ref(ctx, patient, _where(ctx, patient) or SUBJECT)
    common: dict[str, Any] = {"subject": subject}
    try:
        visit = _visit_key(ctx, encounter, table("visits"))
    except MappingError:
        visit = ""  # an order outside a registered visit: the patient is enough
        ctx.find("warning", "v3.order.visit-unknown", "the order's visit has no usable id: it is "
                 "kept without its Encounter", _where(ctx, first(encounter, "id")))
    if visit:
        common["encounter"] = {"reference": f"Encounter/{encounter_id(ctx.inst, pkey, visit)}"}
    author = first(act, "author")
    when = fhir_datetime(attr(first(author, "time"), "value"))
    if when:
        common["authoredOn"] = when
    requester = _practitioner(ctx, first(author, "assignedEntity"))
    if requester is not None:
        common["requester"] = requester
    return common


def _status(ctx: Ctx, act: etree._Element, t: dict[str, Any], fallback: str | None,
            rtype: str = "ServiceRequest") -> str | None:
    code = attr(first(act, "statusCode"), "code")
    if code:
        status = (t["medication_status"].get(code) if rtype == "MedicationRequest" else None) \
            or t["status"].get(code)
        if status is None:
            raise _refusal(ctx, first(act, "statusCode"), f"statusCode {code!r} is not an order "
                           f"status ({', '.join(t['status'])})", "v3.order.status-unknown")
        return status
    return fallback or t["default_status"].get(ctx.msg.interaction)


def _key(ctx: Ctx, act: etree._Element, t: dict[str, Any], form: str = "") -> tuple[str, list]:
    """(key, identifiers) of one order or request item: its order number, else the form's number
    with the item's code; neither: AE naming the element (two orders would become one)."""
    idl = ids(first(act, "id"))
    where = _where(ctx, first(act, "id"))
    idents = [i for i in (ctx.identifier(r, e, where) for r, e in idl) if i]
    usable = dict(_keys(idl))
    if usable.get(t["order_root"]):
        return usable[t["order_root"]], idents
    code = attr(first(act, "code"), "code")
    if form and code:
        return f"{form}|{code}", idents
    if form and not q(act, "component2"):
        return form, idents
    other = next((e for r, e in _keys(idl)), "")
    if other:
        return other, idents
    raise _refusal(ctx, first(act, "id") if first(act, "id") is not None else act,
                   f"the {local_name(act)} has no usable order number (id root {t['order_root']})",
                   "v3.order.id-missing")


def _base(ctx: Ctx, rtype: str, key: str, idents: list, common: dict[str, Any],
          status: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": rtype, "id": ctx.id(rtype, "order", key)}
    if idents:
        res["identifier"] = idents
    if status:
        res["status"] = status
    else:  # an update that does not say: the stored order's status stands (hub.v3intake)
        ctx.default(res, "status", "active")
    res["intent"] = "order"
    res.update(common)
    return res


def _notes(act: etree._Element) -> list[dict[str, str]]:
    return [{"text": text} for a in q(act, "subjectOf6/annotation")
            if (text := attr(first(a, "text"), "value"))]


def _performer(ctx: Ctx, act: etree._Element) -> dict[str, Any] | None:
    """The executing department (location/serviceDeliveryLocation) as a Reference by identifier."""
    sdl = first(act, "location/serviceDeliveryLocation")
    place = first(sdl, "location")
    if place is None:
        place = first(sdl, "serviceProviderOrganization")
    if place is None:
        return None
    return place_ref(ctx, place, text_parts(first(place, "name")).strip())


def _order_item(ctx: Ctx, item: etree._Element, common: dict[str, Any], t: dict[str, Any]) -> None:
    rtype = t["acts"].get(local_name(item))
    if rtype is None:
        raise _refusal(ctx, item, f"{local_name(item)} is not an order the hub maps "
                       f"({', '.join(t['acts'])})", "v3.order.act-unknown")
    key, idents = _key(ctx, item, t)
    kind = concept(first(item, "code"))  # 医嘱项目类型: a drug, an examination, nursing …
    content = attr(first(item, "text"), "value")
    category = [c for c in (kind, _order_category(item, t)) if c]
    if rtype == "ServiceRequest" and _is_diet(kind, content, t):
        _diet(ctx, item, key, idents, common, category, content, t)
        return
    res = _base(ctx, rtype, key, idents, common, _status(ctx, item, t, None, rtype))
    if rtype == "MedicationRequest":
        _medication(ctx, item, res, content)
        if category:
            res["category"] = category
    else:
        if category:
            res["category"] = category
        res["code"] = {"text": content} if content else (kind or {"text": local_name(item)})
        _timing(item, res, "occurrencePeriod")
        performer = _performer(ctx, item)
        if performer is not None:
            res["performer"] = [performer]
    parent = next((e for _, e in ids(first(item, "occurrenceOf/parentRequestReference/id")) if e),
                  "")
    if parent:
        res["groupIdentifier"] = {"value": parent}
    notes = _notes(item) + res.pop("note", [])  # the order's, then what the mapping kept as text
    if notes:
        res["note"] = notes
    ctx.add(res)


def _is_diet(kind: dict[str, Any] | None, content: str, t: dict[str, Any]) -> bool:
    words = " ".join([(kind or {}).get("text") or "",
                      *((c.get("display") or "") for c in (kind or {}).get("coding") or [])])
    return any(w in words for w in t["diet_words"]) or \
        re.search(t["diet_text"], content.strip(), re.I) is not None


def _diet(ctx: Ctx, item: etree._Element, key: str, idents: list, common: dict[str, Any],
          category: list[dict[str, Any]], content: str, t: dict[str, Any]) -> None:
    """A diet order (膳食医嘱) -> NutritionOrder: the diet as ``oralDiet.type`` (its text), its
    time as the schedule, the order's patient, visit, orderer and time (the message's when the
    order has none: R4 requires one)."""
    res: dict[str, Any] = {"resourceType": "NutritionOrder", "id": ctx.id("NutritionOrder", "order", key)}
    if idents:
        res["identifier"] = idents
    status = _status(ctx, item, t, None)
    if status:
        res["status"] = status
    else:  # as for the other orders: an update that does not say keeps the stored status
        ctx.default(res, "status", "active")
    res["intent"] = "order"
    res["patient"] = common["subject"]
    if common.get("encounter"):
        res["encounter"] = common["encounter"]
    sent = fhir_datetime(ctx.msg.creation_time)
    if common.get("authoredOn"):
        res["dateTime"] = common["authoredOn"]
    elif sent:  # the message's time; an update's leaves the stored order's standing
        ctx.default(res, "dateTime", sent)
    else:
        raise _refusal(ctx, item, "the diet order has no time (author/time, or the message's "
                       "creationTime)", "v3.order.time-missing")
    if common.get("requester"):
        res["orderer"] = common["requester"]
    diet: dict[str, Any] = {"type": [{"text": content}] if content else category[:1] or
                            [{"text": local_name(item)}]}
    period: dict[str, Any] = {}
    _timing(item, period, "p")
    if period:
        diet["schedule"] = [{"repeat": {"boundsPeriod": period["p"]}}]
    res["oralDiet"] = diet
    notes = [*({"text": c["text"]} for c in category if c.get("text")), *_notes(item)]
    if notes:
        res["note"] = notes
    ctx.add(res)


def _order_category(item: etree._Element, t: dict[str, Any]) -> dict[str, Any] | None:
    """The order's category (长期医嘱 / 临时医嘱), carried as a pertinent observation."""
    for obs in q(item, "pertinentInformation/observation"):
        if attr(first(obs, "code"), "code") == t["order_category_element"]:
            return concept(first(obs, "value"))
    return None


def _timing(item: etree._Element, res: dict[str, Any], element: str) -> None:
    eff = first(item, "effectiveTime")
    low = attr(eff, "validTimeLow") or attr(first(eff, "low"), "value")
    high = attr(eff, "validTimeHigh") or attr(first(eff, "high"), "value")
    period = {k: v for k, v in (("start", fhir_datetime(low)), ("end", fhir_datetime(high))) if v}
    if period:
        res[element] = period


def _quantity(el: etree._Element | None) -> dict[str, Any] | None:
    value = attr(el, "value")
    # as written: 1.50 stays 1.50, and 1.5e2 (a PQ may carry an exponent)
    number = numbers.decimal(value, exponent=True)
    if number is None:
        return None
    out: dict[str, Any] = {"value": number}
    if attr(el, "unit"):
        out["unit"] = attr(el, "unit")
    return out


def _unread(ctx: Ctx, item: etree._Element, path: str) -> str | None:
    """The quantity at ``path`` as written, when it is there but no number (``<0.5``): kept as
    text by the caller, with a finding, never dropped."""
    el = first(item, path)
    written = " ".join(x for x in (attr(el, "value"), attr(el, "unit")) if x)
    if not written or attr(el, "value") is None:
        return None
    ctx.find("warning", "v3.value.invalid-quantity", f"{path} {written!r} is no number: kept as "
             "text", path)
    return written


def _medication(ctx: Ctx, item: etree._Element, res: dict[str, Any], content: str) -> None:
    """A drug order: the drug, the dose (text, frequency, route, single dose, form), the validity
    period and the quantity to dispense."""
    product = first(item, "consumable2/manufacturedProduct1/manufacturedProduct")
    drug = concept(first(product, "code")) or {}
    name = text_parts(first(product, "name"))
    if name:
        drug["text"] = name
    if not drug:
        drug = {"text": content} if content else {}
    if not drug:
        raise _refusal(ctx, item, "the drug order names no drug (consumable2/manufacturedProduct1/"
                       "manufacturedProduct code or name)", "v3.order.drug-missing")
    res["medicationCodeableConcept"] = drug
    dosage: dict[str, Any] = {}
    if content:
        dosage["text"] = content
    freq = concept(first(item, "effectiveTime/code"))
    if freq:
        dosage["timing"] = {"code": freq}
    route = concept(first(item, "routeCode"))
    if route:
        dosage["route"] = route
    # the unit one dose is counted in (片): the drug's form, as the CDA mapper has it
    form = concept(first(item, "administrationUnitCode"))
    if form:
        res["extension"] = [*res.get("extension", ()), medication_form.form_extension(form)]
    dose = _quantity(first(item, "doseQuantity"))
    if dose:
        dosage["doseAndRate"] = [{"doseQuantity": medication_form.counted_in(dose, form)
                                  if form else dose}]
    elif (written := _unread(ctx, item, "doseQuantity")):
        dosage["text"] = "; ".join(x for x in (dosage.get("text"), f"单次剂量 {written}") if x)
    if dosage:
        res["dosageInstruction"] = [dosage]
    dispense: dict[str, Any] = {}
    period: dict[str, Any] = {}
    _timing(item, period, "p")
    if period:
        dispense["validityPeriod"] = period["p"]
    supply = _quantity(first(item, "component2/supplyRequest/quantity"))
    if supply:
        dispense["quantity"] = supply
    elif (written := _unread(ctx, item, "component2/supplyRequest/quantity")):
        res.setdefault("note", []).append({"text": f"发药数量 {written}"})
    performer = _performer(ctx, item)
    if performer is not None:
        dispense["performer"] = performer
    if dispense:
        res["dispenseRequest"] = dispense


def _request_kind(act: etree._Element, t: dict[str, Any]) -> str:
    for rule in t["request_kinds"]:
        if local_name(act) == rule["element"] and (not rule.get("has") or
                                                    first(act, rule["has"]) is not None):
            return str(rule["kind"])
    raise AssertionError("the last rule of each element matches")  # pragma: no cover


def _request(ctx: Ctx, act: etree._Element, common: dict[str, Any], t: dict[str, Any]) -> None:
    """One request form (申请单): a ServiceRequest per item, the form's number as requisition."""
    kind = _request_kind(act, t)
    cat = t["categories"][kind]
    category = [{"coding": [{"system": t["category_system"], "code": cat["code"],
                             "display": cat["display"]}], "text": cat["text"]}]
    form_ids = ids(first(act, "id"))
    usable = dict(_keys(form_ids))
    form = usable.get(t["requisition_root"]) or next((e for _, e in _keys(form_ids)), "")
    if not form:
        raise _refusal(ctx, first(act, "id") if first(act, "id") is not None else act,
                       f"the request form has no usable number (id root {t['requisition_root']})",
                       "v3.request.id-missing")
    where = _where(ctx, first(act, "id"))
    requisition = next((i for i in (ctx.identifier(r, e, where) for r, e in form_ids) if i), None)
    status = _status(ctx, act, t, None)
    priority = t["priority"].get(attr(first(act, "priorityCode"), "code"))
    description = attr(first(act, "text"), "value")
    reasons = _reasons(act)
    notes = _notes(act)
    specimens = _specimens(ctx, act, common, t)
    items = [c for comp in q(act, "component2") for c in _acts(comp)]
    if not items:
        items = [act]  # a transfusion: the form is the one request
    for item in items:
        key, idents = _key(ctx, item, t, form) if item is not act else (form, [])
        item_status = _status(ctx, item, t, status) if item is not act else status
        res = _base(ctx, "ServiceRequest", key, idents, common, item_status)
        if requisition:
            res["requisition"] = {k: v for k, v in requisition.items() if k != "assigner"}
        res["category"] = category
        if priority:
            res["priority"] = priority
        code = concept(first(item, "code")) if item is not act else None
        if code is None:
            products = [p for p in (concept(first(e, "code")) for e in
                        q(act, "pertinentInformation/observation")) if p]
            code = products[0] if products else None
            if kind == "transfusion":
                _blood_products(ctx, act, res, form, t)
        res["code"] = code or {"text": description or cat["text"]}
        method = concept(first(item, "methodCode/item")) or concept(first(act, "methodCode/item"))
        if method:
            res.setdefault("orderDetail", []).append(method)
        site = concept(first(item, "targetSiteCode/item")) or concept(first(item, "targetSiteCode"))
        if site:
            res["bodySite"] = [site]
        _timing(act, res, "occurrencePeriod")
        performer = _performer(ctx, item)
        if performer is not None:
            res["performer"] = [performer]
        if reasons:
            res["reasonCode"] = reasons
        if specimens:
            res["specimen"] = specimens
        item_notes = notes + ([{"text": description}] if description else [])
        if item_notes:
            res["note"] = item_notes
        ctx.add(res)


def _blood_products(ctx: Ctx, act: etree._Element, request: dict[str, Any], form: str,
                    t: dict[str, Any]) -> None:
    """A transfusion request's blood products (``pertinentInformation/observation``: the product
    as code, the amount as value) -> BiologicallyDerivedProduct, each naming the request;
    its category by the words of the table (red cells and platelets are cells, plasma fluid)."""
    for obs in q(act, "pertinentInformation/observation"):
        code = concept(first(obs, "code"))
        if code is None:
            continue
        label = " ".join([code.get("text") or "", *(c.get("display") or "" for c in code["coding"])])
        category = next((r["category"] for r in t["blood_products"]
                         if any(w in label for w in r["words"])), t["blood_product_default"])
        product: dict[str, Any] = {
            "resourceType": "BiologicallyDerivedProduct",
            "id": ctx.id("BiologicallyDerivedProduct", "order", form, code["coding"][0]["code"]),
            "productCategory": category, "productCode": code,
            "request": [{"reference": f"ServiceRequest/{request['id']}"}]}
        amount = _quantity(first(obs, "value"))
        if amount and isinstance(amount["value"], int) and amount.get("unit") in t["blood_units"]:
            product["quantity"] = amount["value"]  # a count of units (袋, U), not a volume
        ctx.add(product)


def _reasons(act: etree._Element) -> list[dict[str, Any]]:
    """The diagnoses the request gives as its reason (the visit's observationDx, and reason)."""
    out: list[dict[str, Any]] = []
    for dx in (q(act, "componentOf1/encounter/pertinentInformation1/observationDx")
               + q(act, "reason/observationDx")):
        value = first(dx, "value")
        cc = concept(value)
        if cc is not None:
            cc["coding"][0]["code"] = cc["coding"][0]["code"].strip()
            if cc.get("text"):
                cc["text"] = cc["text"].strip()
            out.append(cc)
    return out


def _specimens(ctx: Ctx, act: etree._Element, common: dict[str, Any], t: dict[str, Any]
               ) -> list[dict[str, str]]:
    """Each specimen of the request (its barcode and kind) as a Specimen."""
    refs = []
    for spec in q(act, "specimen/specimen"):
        idl = ids(first(spec, "id"))
        keys = _keys(idl)
        if not keys:
            continue  # no barcode: nothing to key it by, the request keeps its kind in its text
        where = _where(ctx, first(spec, "id"))
        res: dict[str, Any] = {"resourceType": "Specimen", "id": ctx.id("Specimen", *keys[0])}
        idents = [i for i in (ctx.identifier(r, e, where) for r, e in idl) if i]
        if idents:
            res["accessionIdentifier"] = idents[0]
            if len(idents) > 1:
                res["identifier"] = idents[1:]
        kind = concept(first(spec, "code"))
        if kind:
            res["type"] = kind
        res["subject"] = common["subject"]
        refs.append(ctx.add(res))
    return refs
