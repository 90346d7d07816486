"""Status changes of orders and requests -> Task (tables ``orders.yaml``: ``task_status``).

Execution, examination and surgery status travel as an order update (POOR_IN200902UV) whose item
carries ``component1/processStep/code``; laboratory status as POLB_IN224000UV01 (an
``observationReport`` naming the request form). Each becomes the one Task of its order (keyed
by the order number: ``focus`` is the order the same institution's new-order message wrote) or
of its request form (``groupIdentifier``, the form's number, as the form's requests carry it in
``requisition``); each change a new version of it, so the Task's history is the status timeline.
The senders' status codes are local: ``businessStatus`` keeps theirs, ``status`` is what the
table's words make of it.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from fhir_mapping.base import MappingError

from .common import (
    Ctx,
    attr,
    concept,
    display,
    fhir_datetime,
    first,
    ids,
    local_name,
    table,
    text_parts,
)
from .registrations import _keys, _practitioner, _where, patient_ref

SUBJECT = "/*/hl7:controlActProcess/hl7:subject"


def task_status(code: str, name: str, t: dict[str, Any]) -> str | None:
    """The Task.status of the first rule whose words the status's name or code holds; None."""
    text = f"{name} {code}".lower()
    for rule in t["task_status"]:
        if any(w.lower() in text for w in rule["words"]):
            return str(rule["status"])
    return None


def _business(ctx: Ctx, code_el: etree._Element | None, where: str) -> tuple[str, dict | None]:
    """(Task.status, businessStatus) of a status code element (a CD, or the platforms' variant
    with ``@value`` as its name); unmatched: the default, reported."""
    t = table("orders")
    code, name = attr(code_el, "code"), display(code_el) or attr(code_el, "value")
    if not code and not name:
        raise MappingError("the status change names no status (its code)", code="AE",
                           location=where, rule="v3.status.missing")
    business = concept(code_el) if code else None
    if business is None:
        business = {"text": name}
    elif name:
        business["text"] = name
        business["coding"][0]["display"] = name
    status = task_status(code, name, t)
    if status is None:
        status = str(t["task_default_status"])
        ctx.find("information", "v3.status.unmapped", f"status {code or name!r} is none the table "
                 f"knows: the Task is {status}, the sender's status kept as businessStatus", where)
    return status, business


def _task(ctx: Ctx, key: str, status: str, business: dict | None, subject: dict | None,
          when: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Task", "id": ctx.id("Task", "status", key),
                           "status": status, "intent": "order"}
    if business:
        res["businessStatus"] = business
    if subject:
        res["for"] = subject
    if when:
        res["lastModified"] = when
    return res


def item_status(ctx: Ctx, item: etree._Element, common: dict[str, Any]) -> dict[str, str] | None:
    """An order update's item that is a status change (``component1/processStep``)."""
    t = table("orders")
    step = first(item, "component1/processStep/code")
    where = _where(ctx, step) or SUBJECT
    status, business = _business(ctx, step, where)
    idl = ids(first(item, "id"))
    usable = dict(_keys(idl))
    order = usable.get(t["order_root"])
    form = usable.get(t["requisition_root"])
    if not order and not form:
        raise MappingError("the status change names no order or request form number (id root "
                           f"{t['order_root']} or {t['requisition_root']})", code="AE",
                           location=_where(ctx, first(item, "id")) or where,
                           rule="v3.status.id-missing")
    performer = first(item, "performer")
    when = fhir_datetime(attr(first(performer, "time/low"), "value")) or \
        fhir_datetime(attr(first(performer, "time"), "value")) or \
        fhir_datetime(ctx.msg.creation_time)
    res = _task(ctx, f"order|{order}" if order else f"form|{form}", status, business,
                common.get("subject"), when)
    id_where = _where(ctx, first(item, "id"))
    if order:
        rtype = t["acts"].get(local_name(item), "ServiceRequest")
        res["focus"] = {"reference": f"{rtype}/{ctx.id(rtype, 'order', order)}"}
        ident = ctx.identifier(t["order_root"], order, id_where)
        if ident:
            res["identifier"] = [ident]
    if form:
        ident = ctx.identifier(t["requisition_root"], form, id_where)
        if ident:
            res["groupIdentifier"] = ident
    if "encounter" in common:
        res["encounter"] = common["encounter"]
    low = fhir_datetime(attr(first(item, "effectiveTime/low"), "value"))
    high = fhir_datetime(attr(first(item, "effectiveTime/high"), "value"))
    period = {k: v for k, v in (("start", low), ("end", high)) if v}
    if period:
        res["executionPeriod"] = period
    owner = _practitioner(ctx, first(performer, "assignedEntity"))
    if owner is not None:
        res["owner"] = owner
    dept = text_parts(first(item, "location/serviceDeliveryLocation/serviceProviderOrganization/name"))
    if dept:
        res["location"] = {"display": dept}
    ctx.add(res)
    return owner


def lab_status(ctx: Ctx) -> list[dict[str, str]]:
    """POLB_IN224000UV01 (检验状态): the laboratory request form's status."""
    t = table("orders")
    report = first(ctx.msg.control, "subject/observationReport")
    if report is None:
        raise MappingError("no subject/observationReport in the message", code="AE",
                           location=SUBJECT, rule="v3.status.missing")
    idl = ids(first(report, "id"))
    usable = dict(_keys(idl))
    form = usable.get(t["requisition_root"]) or next((e for _, e in _keys(idl)), "")
    if not form:
        raise MappingError("the status names no request form number (id root "
                           f"{t['requisition_root']})", code="AE",
                           location=_where(ctx, first(report, "id")) or SUBJECT,
                           rule="v3.status.id-missing")
    status_el = first(report, "statusCode")
    status, business = _business(ctx, status_el, _where(ctx, status_el) or SUBJECT)
    patient = first(report, "recordTarget/patient")
    subject = patient_ref(ctx, patient, _where(ctx, patient) or SUBJECT) \
        if patient is not None and ids(first(patient, "id")) else None
    when = fhir_datetime(attr(first(report, "time"), "value")) or \
        fhir_datetime(ctx.msg.creation_time)
    res = _task(ctx, f"form|{form}", status, business, subject, when)
    ident = ctx.identifier(t["requisition_root"], form, _where(ctx, first(report, "id")))
    if ident:
        res["groupIdentifier"] = ident
    reason = attr(first(status_el, "originalText"), "value")
    if reason:
        res["statusReason"] = {"text": reason}
    who = attr(first(report, "performer"), "displayName")
    if who:
        res["owner"] = {"display": who}
    place = first(report, "location")
    if attr(place, "displayName"):
        res["location"] = {"display": attr(place, "displayName")}
    specimen = next((e for _, e in ids(first(report, "specimen/id")) if e), "")
    if specimen:
        res.setdefault("input", []).append({
            "type": {"text": "specimen"},
            "valueIdentifier": ctx.identifier(t["specimen_root"], specimen) or {"value": specimen}})
    ctx.add(res)
    return []
