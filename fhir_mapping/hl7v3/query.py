"""Query interactions: the v3 query as FHIR search criteria (``parse_query``), and the v3 response
built from the FHIR resources the hub found (``respond``)."""

from __future__ import annotations

import copy
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from lxml import etree

from fhir_mapping.base import MappingError, SourceInfo

from .ack import E, ack_element, id_items, wrapper
from .common import (
    Ctx,
    attr,
    fhir_date,
    first,
    first_of,
    ids,
    parse,
    q,
    service_spec,
    table,
    text_parts,
)
from .registrations import LOCAL_PATIENT_ROOT


def _gender(code: str) -> str | None:
    spec = table("codes")["sex"]["codes"].get(code)
    return spec["gender"] if spec else None


def _token(ctx: Ctx, root: str, ext: str) -> str:
    system, _ = ctx.system(root)
    return f"{system}|{ext}" if system else ext


def _range(params: list[tuple[str, str]], name: str, low: str, high: str) -> None:
    lo, hi = fhir_date(low[:8]) if low else None, fhir_date(high[:8]) if high else None
    if lo:
        params.append((name, f"ge{lo}"))
    if hi:
        params.append((name, f"le{hi}"))


def _ivl_range(params: list[tuple[str, str]], name: str, ivl: etree._Element | None) -> None:
    """A v3 interval (``low``, ``high``) as ``ge``/``le`` criteria on ``name``; none: nothing."""
    if ivl is not None:
        _range(params, name, attr(first(ivl, "low"), "value"), attr(first(ivl, "high"), "value"))


def parse_query(payload: bytes, source: SourceInfo | None = None, service: str = ""
                ) -> dict[str, Any]:
    """A query message -> ``{"interaction", "response_interaction", "resource_type", "header",
    "query_id", "limit", "params" [(name, value)], "search" (the query string), "criteria" (what the
    message asked, by v3 parameter name), "echo" (the queryByParameter XML, for the response)}``.

    Identifier tokens use the same systems as ``convert`` (local numbers under the institution's OID
    when ``source.oid`` is given). Several values of one identifier parameter are ORed (comma-joined).
    ``service`` names the service called when several share the interaction (``service_spec``).
    """
    msg = parse(payload)
    spec = service_spec(msg.interaction, service)
    if spec["kind"] != "query":
        raise MappingError(f"{msg.interaction} is not a query", code="AR", location="/", rule="v3.not-a-query")
    ctx = Ctx(msg, source or SourceInfo(institution="query"))
    qbp = first_of(msg.control, "queryByParameter", "queryByParameterPayload")
    if qbp is None:
        raise MappingError("no controlActProcess/queryByParameter", code="AE",
                           location="/*/hl7:controlActProcess", rule="v3.query.parameters-missing")
    params: list[tuple[str, str]] = []
    criteria: dict[str, Any] = {}
    searches: list[tuple[str, list[tuple[str, str]]]] | None = None
    handler = spec["handler"]
    if handler == "patient_query":
        _patient_params(ctx, qbp, params, criteria)
    elif handler == "organization_query":
        _organization_params(ctx, qbp, params, criteria)
    elif handler == "practitioner_query":
        _practitioner_params(ctx, qbp, params, criteria)
    elif handler == "visit_query":
        _visit_params(ctx, qbp, params, criteria)
    elif handler == "appointment_query":
        _appointment_params(ctx, qbp, params, criteria)
    elif handler == "slot_query":
        _slot_params(ctx, qbp, params, criteria)
    elif handler == "order_query":
        searches = _order_params(ctx, qbp, params, criteria)
    elif handler == "terminology_query":
        _terminology_params(ctx, qbp, params, criteria)
    else:
        _document_params(ctx, qbp, params, criteria, retrieve=handler == "document_retrieve")
    limit = attr(first(qbp, "initialQuantity"), "value")
    if limit.isdigit() and int(limit) > 0:
        params.append(("_count", limit))
        for _, search in searches or []:
            search.append(("_count", limit))
    qid = first(qbp, "queryId")
    types = _resource_types(spec)
    return {
        "interaction": msg.interaction,
        "response_interaction": spec["response"],
        "handler": handler,
        "resource_type": types[0],
        "resource_types": types,
        # one FHIR search per resource type the response carries
        "searches": searches if searches is not None else [(types[0], params)],
        "header": msg.header(),
        "query_id": {"root": attr(qid, "root"), "extension": attr(qid, "extension")},
        "limit": int(limit) if limit.isdigit() else None,
        "params": params,
        "search": urlencode(params),
        "criteria": criteria,
        "echo": _echo(qbp),
        "findings": ctx.findings,
    }


def _resource_types(spec: dict[str, Any]) -> list[str]:
    res = spec["resource"]
    return list(res) if isinstance(res, list) else [res]


def _echo(qbp: etree._Element) -> bytes:
    """The queryByParameter to repeat in the response, without comments."""
    clone = copy.deepcopy(qbp)
    for c in list(clone.iter(etree.Comment)):
        if c.getparent() is not None:
            c.getparent().remove(c)
    return etree.tostring(clone, encoding="utf-8")


def _or_tokens(ctx: Ctx, pairs: list[tuple[str, str]]) -> str:
    return ",".join(_token(ctx, r, e) for r, e in pairs if e)


def _patient_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict) -> None:
    pl = first(qbp, "parameterList")
    local = [(r, e) for r, e in ids(first(pl, "id")) if e]
    living = [(r, e) for el in q(pl, "livingSubjectId") for r, e in ids(first(el, "value")) if e]
    if local or living:
        params.append(("identifier", _or_tokens(ctx, local + living)))
        criteria["identifier"] = local + living
    g = attr(first(pl, "livingSubjectAdministrativeGender/value"), "code")
    if g:
        criteria["gender"] = g
        if _gender(g):
            params.append(("gender", _gender(g)))
    name = text_parts(first(pl, "livingSubjectName/value"))
    if name:
        params.append(("name", name))
        criteria["name"] = name
    bt = first(pl, "livingSubjectBirthTime/value")
    if bt is not None:
        v = attr(bt, "value")
        if v and fhir_date(v[:8]):
            params.append(("birthdate", fhir_date(v[:8])))
        _ivl_range(params, "birthdate", bt)
    md = attr(first(qbp, "matchCriterionList/minimumDegreeMatch/value"), "value")
    if md:
        criteria["minimum_degree_match"] = md


def _organization_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict) -> None:
    oid = [(attr(v, "root"), attr(v, "extension")) for v in q(qbp, "organizationID/value")]
    if any(e for _, e in oid):
        params.append(("identifier", _or_tokens(ctx, oid)))
        criteria["identifier"] = oid
    name = text_parts(first(qbp, "organizationName/value"))
    if name:
        params.append(("name", name))
        criteria["name"] = name
    status = attr(first(qbp, "status/value"), "code")
    if status:
        criteria["status"] = status
        params.append(("active", "true" if status == "active" else "false"))


def _practitioner_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict) -> None:
    pid = [(attr(v, "root"), attr(v, "extension")) for v in q(qbp, "providerID/value")]
    if any(e for _, e in pid):
        params.append(("identifier", _or_tokens(ctx, pid)))
        criteria["identifier"] = pid
    g = attr(first(qbp, "administrativeGender/value"), "code")
    if g:
        criteria["gender"] = g
        if _gender(g):
            params.append(("gender", _gender(g)))
    dob = first(qbp, "dOB/value")
    if dob is not None:
        _ivl_range(params, "birthdate", dob)
        criteria["birth"] = [attr(first(dob, "low"), "value"), attr(first(dob, "high"), "value")]
    name = text_parts(first(qbp, "providerName/value"))
    if name:
        params.append(("name", name))
        criteria["name"] = name


def _ids_param(ctx: Ctx, qbp: etree._Element, path: str, param: str, key: str, params: list,
               criteria: dict) -> None:
    """The ids at ``path`` (ORed) as the search parameter ``param``, and as criterion ``key``."""
    found = [(r, e) for r, e in ids(first(qbp, path)) if e]
    if found:
        params.append((param, _or_tokens(ctx, found)))
        criteria[key] = found


def _visit_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict) -> None:
    """PRPA_IN900300UV: the visit's ids, its time frame, the patient, the department, the
    institution, the patient type (tables/visits.yaml)."""
    t = table("visits")
    visit = [(r, e) for r, e in ids(first(qbp, "careEventID/value"))
             if e and r != t["count_root"]]  # the visit count is no identifier
    if visit:
        params.append(("identifier", _or_tokens(ctx, visit)))
        criteria["visit"] = visit
    _ivl_range(params, "date", first(qbp, "encounterTimeframe/value"))
    _patient_param(ctx, qbp, "subject:identifier", params, criteria)
    _ids_param(ctx, qbp, "patientLocationID/value", "location:identifier", "department", params,
               criteria)
    _ids_param(ctx, qbp, "responsibleOrganization/value", "service-provider:identifier",
               "organization", params, criteria)
    kind = attr(first(qbp, "typeOfEncounter/value/item"), "code") or \
        attr(first(qbp, "typeOfEncounter/value"), "code")
    if kind:
        criteria["type"] = kind
        klass = t["classes"].get(kind)
        if klass is None:
            raise MappingError(f"typeOfEncounter {kind!r} is not in the table {t['type_system']}",
                               code="AE", location="/*/hl7:controlActProcess/hl7:queryByParameter/"
                               "hl7:typeOfEncounter", rule="v3.query.visit-type-unknown")
        params.append(("class", f"{t['class_system']}|{klass['code']}"))


def _patient_param(ctx: Ctx, qbp: etree._Element, local_param: str, params: list,
                   criteria: dict) -> None:
    """``patientId``: the local patient id on the resource's own reference (``local_param``: it is
    found before the patient is registered); other ids (a resident ID number) through the
    registered Patient."""
    pat = [(r, e) for r, e in ids(first(qbp, "patientId/value")) if e]
    if not pat:
        return
    local = [(r, e) for r, e in pat if r == LOCAL_PATIENT_ROOT]
    if local:
        params.append((local_param, _or_tokens(ctx, local)))
    else:
        params.append(("patient.identifier", _or_tokens(ctx, pat)))
    criteria["patient"] = pat


def _appointment_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict) -> None:
    """The outpatient appointment status query (PRPA_IN900300UV, the visit query's parameters):
    the appointment's number (``careEventID``), its time frame, the patient, the department.
    An appointment names no institution: ``responsibleOrganization`` is refused, not ignored."""
    t = table("appointments")
    cat = t["categories"]["outpatient"]
    params.append(("service-category", f"{t['category_system']}|{cat['code']}"))
    _ids_param(ctx, qbp, "careEventID/value", "identifier", "appointment", params, criteria)
    _ivl_range(params, "date", first(qbp, "encounterTimeframe/value"))
    _patient_param(ctx, qbp, "actor:identifier", params, criteria)
    _ids_param(ctx, qbp, "patientLocationID/value", "actor:identifier", "department", params,
               criteria)
    if any(e for _, e in ids(first(qbp, "responsibleOrganization/value"))):
        raise MappingError("an appointment names no institution: responsibleOrganization cannot "
                           "be applied to the appointment query", code="AE",
                           location="/*/hl7:controlActProcess/hl7:queryByParameter/"
                           "hl7:responsibleOrganization", rule="v3.query.criterion-unsupported")


def _slot_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict) -> None:
    """PRSC_IN100000UV, our reading (no sample at hand): the session's number (``scheduleID``),
    the doctor (``providerID``), the clinic (``locationID``), the kind of slot (``code``), the
    time frame (``effectiveTime``) and the slots' status (``statusCode``: only slots with it are
    answered). Parameters as tables/appointments.yaml ``slot_query`` names them."""
    names = table("appointments")["slot_query"]

    def el(key: str) -> etree._Element | None:
        return first_of(qbp, *(f"{n}/value" for n in names[key]))

    number = [e for _, e in ids(el("schedule")) if e]
    if number:
        params.append(("identifier", ",".join(number)))
        criteria["schedule"] = number
    doctor = [(r, e) for r, e in ids(el("doctor")) if e]
    if doctor:
        params.append(("actor:Practitioner.identifier", _or_tokens(ctx, doctor)))
        criteria["doctor"] = doctor
    clinic = [e for _, e in ids(el("clinic")) if e]
    if clinic:  # the clinic is named on the session by its number alone
        params.append(("actor:identifier", ",".join(clinic)))
        criteria["clinic"] = clinic
    kind = attr(el("kind"), "code")
    if kind:
        params.append(("service-type", kind))
        criteria["kind"] = kind
    _ivl_range(params, "date", el("time"))
    status = attr(el("status"), "code")
    if status:
        slot = table("appointments")["slot_status"].get(status)
        if slot is None:
            raise MappingError(f"slot status {status!r} is none of "
                               f"{', '.join(table('appointments')['slot_status'])}", code="AE",
                               location="/*/hl7:controlActProcess/hl7:queryByParameter",
                               rule="v3.query.slot-status-unknown")
        criteria["slot_status"] = slot


def _order_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict
                  ) -> list[tuple[str, list[tuple[str, str]]]]:
    """QUMT_IN020030UV01 (orders and requests alike): the order, request form, visit and specimen
    numbers (``actId``), the author, the time frame and the patient (tables/orders.yaml). Drug
    orders (MedicationRequest) and other orders and requests (ServiceRequest) are searched
    apart; a criterion only a request has (its form, its specimen) leaves drug orders out."""
    t = table("orders")
    visits = table("visits")
    # the parameters sit in queryByParameterPayload (its schema), or in queryByParameter itself
    payload = first(qbp, "queryByParameterPayload")
    qbp = payload if payload is not None else qbp
    shared: list[tuple[str, str]] = []
    request_only: list[tuple[str, str]] = []
    dates: list[tuple[str, str]] = []
    acts = [(r, e) for r, e in ids(first(qbp, "actId/value")) if e]
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for r, e in acts:
        kind = ("order" if r == t["order_root"] else "form" if r == t["requisition_root"]
                else "specimen" if r == t["specimen_root"]
                else "visit" if r in visits["number_roots"] or r == visits["serial_root"]
                else "order")
        by_kind.setdefault(kind, []).append((r, e))
    # each kind of number: the search parameter, and whether a drug order can have one
    for kind, param, to in (("order", "identifier", shared),
                            ("visit", "encounter.identifier", shared),
                            ("form", "requisition", request_only),
                            ("specimen", "specimen.accession", request_only)):
        if by_kind.get(kind):
            to.append((param, _or_tokens(ctx, by_kind[kind])))
            criteria[kind] = by_kind[kind]
    author = [(r, e) for r, e in ids(first(qbp, "authorId/value")) if e]
    if author:
        shared.append(("requester.identifier", _or_tokens(ctx, author)))
        criteria["author"] = author
    _ivl_range(dates, "authored", first(qbp, "effectiveTime/value"))
    _patient_param(ctx, qbp, "subject:identifier", shared, criteria)  # as for visits
    params += shared + request_only + dates
    searches = [("ServiceRequest", shared + request_only + dates)]
    if not request_only:
        searches.insert(0, ("MedicationRequest",
                            shared + [("authoredon", v) for _, v in dates]))
        # diet orders: the same criteria under NutritionOrder's names
        names = {"subject:identifier": "patient:identifier",
                 "requester.identifier": "provider.identifier"}
        searches.insert(1, ("NutritionOrder", [(names.get(n, n), v) for n, v in shared]
                            + [("datetime", v) for _, v in dates]))
    # the status of what is asked about by number (an order's, a form's: hl7v3.status)
    if (by_kind.get("order") or by_kind.get("form")) and not author and not by_kind.get("specimen"):
        task = [(n, v) for n, v in shared if n in ("identifier", "subject:identifier",
                                                   "patient.identifier", "encounter.identifier")]
        if by_kind.get("form"):
            task.append(("group-identifier", _or_tokens(ctx, by_kind["form"])))
        searches.append(("Task", task + [("modified", v) for _, v in dates]))
    # the examination appointments and surgery schedules booked for a form (hl7v3.appointments)
    if by_kind.get("form") and not author and not by_kind.get("specimen"):
        booked = [(n, v) for n, v in shared if n in ("subject:identifier", "patient.identifier")]
        booked = [("actor:identifier" if n == "subject:identifier" else "patient.identifier", v)
                  for n, v in booked]
        searches.append(("Appointment", booked + [("based-on:identifier",
                                                   _or_tokens(ctx, by_kind["form"]))]
                         + [("date", v) for _, v in dates]))
    return searches


def _terminology_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict) -> None:
    """PRVS_IN000003UV01: the dictionary by its code (or OID), its version, and the items asked
    for (the response carries only those)."""
    vs = first(qbp, "valueSet")
    root, ext = next(((r, e) for r, e in ids(first(vs, "id"))), ("", ""))
    if ext:
        params.append(("name:exact", re.sub(r"[^A-Za-z0-9_]", "_", ext)))
        criteria["dictionary"] = ext
    elif root:
        params.append(("url", f"urn:oid:{root}"))
        criteria["dictionary"] = root
    version = attr(first(vs, "version"), "code")
    if version:
        params.append(("version", version))
        criteria["version"] = version
    codes = [attr(first(item, "code"), "code") for item in q(vs, "valueSetItems")]
    codes = [c for c in codes if c]
    if codes:
        params.append(("code", ",".join(codes)))
        criteria["codes"] = codes


def _document_params(ctx: Ctx, qbp: etree._Element, params: list, criteria: dict, retrieve: bool) -> None:
    codes = table("codes")["document_type"]
    _ids_param(ctx, qbp, "patient.id/value", "patient.identifier", "patient", params, criteria)
    _ids_param(ctx, qbp, "clinicalDocument.id/value", "identifier", "document", params, criteria)
    code = first(qbp, "clinicalDocument.code/value")
    if attr(code, "code"):
        system = attr(code, "codeSystem")
        if system in ("", codes["v3_system"]):
            system = codes["cda_system"]
        params.append(("type", f"urn:oid:{system}|{attr(code, 'code')}"))
        criteria["type"] = attr(code, "code")
    _ivl_range(params, "date", first(qbp, "clinicalDocument.effectiveTime/value"))
    _ivl_range(params, "period", first(qbp, "encompassingEncounter.effectiveTime/value"))
    _ids_param(ctx, qbp, "encompassingEncounter.id/value", "related:identifier", "encounter",
               params, criteria)
    _ids_param(ctx, qbp, "assignedAuthor.id/value", "author.identifier", "author", params,
               criteria)
    reg = first(qbp, "executionAndDeliveryTime")
    if reg is not None:
        _range(params, "_lastUpdated", attr(reg, "validTimeLow"), attr(reg, "validTimeHigh"))


# -- responses ---------------------------------------------------------------------------------------

def respond(query: dict[str, Any], resources: list[dict[str, Any]], *, now: datetime | None = None,
            message_id: str | None = None, error: str | None = None, total: int | None = None) -> bytes:
    """The v3 response to ``query`` (from ``parse_query``) carrying ``resources`` (FHIR dicts the hub
    found: Patients, Organizations, Practitioners (+ PractitionerRoles), DocumentReferences (+ the
    Binary of a retrieved document)). ``error`` answers AE with that text; no match answers AA with
    queryResponseCode NF. ``now`` is the response's creationTime (else the query's); ``message_id``
    its id (else derived from the query's id and the results, so the same answer has the same id)."""
    header = query["header"]
    types = query.get("resource_types") or [query["resource_type"]]
    primary = [r for r in resources if r.get("resourceType") in types]
    salt = ",".join(f"{r.get('resourceType')}/{r.get('id')}" for r in primary) + (error or "")
    root = wrapper(query["response_interaction"], header, now=now, message_id=message_id, salt=salt)
    ack_element(root, header, "AE" if error else "AA", error or ("" if primary else "no match"))
    cap = E(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    E(cap, "code", code=query["response_interaction"].replace("_IN", "_TE"), codeSystem="2.16.840.1.113883.1.6")
    if not error:
        builder = _BUILDERS[query["handler"]]
        by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}
        for res in primary:
            builder(cap, res, by_ref, query)
    qa = E(cap, "queryAck")
    qid = query.get("query_id") or {}
    if qid.get("root") or qid.get("extension"):
        E(qa, "queryId", root=qid.get("root") or None, extension=qid.get("extension") or None)
    E(qa, "queryResponseCode", code="AE" if error else ("OK" if primary else "NF"))
    n = len(primary)
    tot = total if total is not None else n
    E(qa, "resultTotalQuantity", value=str(0 if error else tot))
    E(qa, "resultCurrentQuantity", value=str(0 if error else n))
    E(qa, "resultRemainingQuantity", value=str(0 if error else max(0, tot - n)))
    if query.get("echo"):
        try:
            cap.append(etree.fromstring(query["echo"]))
        except etree.XMLSyntaxError:
            pass
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _oid_of(system: str) -> str:
    return system[8:] if system.startswith("urn:oid:") else ""


def _ii(parent: etree._Element, name: str, identifiers: list[dict[str, Any]], want: tuple[str, ...] = ()
        ) -> None:
    pairs = []
    for i in identifiers or []:
        root = _oid_of(i.get("system", ""))  # local numbers: root = the institution's namespace OID
        if i.get("value") and root and (not want or root in want):
            pairs.append((root, i["value"]))
    if pairs:
        id_items(parent, name, pairs)


def _interval(parent: etree._Element, start: str | None, end: str | None
              ) -> etree._Element | None:
    """A FHIR period's ends as the v3 ``effectiveTime`` (``low``, ``high``); neither: none."""
    if not start and not end:
        return None
    eff = E(parent, "effectiveTime")
    if start:
        E(eff, "low", value=_ts(start))
    if end:
        E(eff, "high", value=_ts(end))
    return eff


def _name(parent: etree._Element, names: Any, xsi_type: str = "LIST_EN") -> None:
    if isinstance(names, str):
        text = names
    else:
        n = (names or [{}])[0]
        text = n.get("text") or "".join([n.get("family", ""), *n.get("given", [])])
    if text:
        el = E(parent, "name")
        el.set("{http://www.w3.org/2001/XMLSchema-instance}type", xsi_type)
        E(E(el, "item"), "part", value=text)


def _ts(fhir: str | None) -> str:
    if not fhir:
        return ""
    return fhir.replace("-", "").replace(":", "").replace("T", "")[:14]


def _gb_sex(res: dict[str, Any]) -> tuple[str, str]:
    for ext in res.get("extension") or []:
        if ext.get("url", "").endswith("/gb-sex"):
            c = ext.get("valueCoding") or {}
            return c.get("code", ""), c.get("display", "")
    return {"male": ("1", "男性"), "female": ("2", "女性"), "unknown": ("0", "未知的性别"),
            "other": ("9", "未说明的性别")}.get(res.get("gender", ""), ("", ""))


def _person_elements(parent: etree._Element, res: dict[str, Any]) -> None:
    _name(parent, res.get("name"))
    tel = [t["value"] for t in res.get("telecom") or [] if t.get("value")]
    if tel:
        t = E(parent, "telecom")
        t.set("{http://www.w3.org/2001/XMLSchema-instance}type", "DSET_TEL")
        for v in tel:
            E(t, "item", value=v)
    code, disp = _gb_sex(res)
    if code:
        g = E(parent, "administrativeGenderCode", code=code, codeSystem="2.16.156.10011.2.3.3.4")
        if disp:
            E(g, "displayName", value=disp)
    if res.get("birthDate"):
        E(parent, "birthTime", value=res["birthDate"].replace("-", ""))


def _patient(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    subj = E(cap, "subject", typeCode="SUBJ")
    ev = E(subj, "registrationEvent", classCode="REG", moodCode="EVN")
    E(ev, "statusCode", code="active")
    s1 = E(ev, "subject1", typeCode="SBJ")
    pat = E(s1, "patient", classCode="PAT")
    idents = res.get("identifier") or []
    national = ("2.16.156.10011.1.3", "2.16.156.10011.1.19", "2.16.156.10011.1.2")
    _ii(pat, "id", [i for i in idents if _oid_of(i.get("system", "")) not in national])
    E(pat, "statusCode", code="active" if res.get("active", True) else "nullified")
    person = E(pat, "patientPerson", classCode="PSN", determinerCode="INSTANCE")
    _ii(person, "id", [i for i in idents if _oid_of(i.get("system", "")) == national[0]])
    _person_elements(person, res)
    for i in idents:
        if _oid_of(i.get("system", "")) in national[1:] and i.get("value"):
            other = E(person, "asOtherIDs", classCode="PAT")
            id_items(other, "id", [(_oid_of(i["system"]), i["value"])])
    obs = E(E(pat, "subjectOf1", typeCode="SBJ"), "queryMatchObservation", classCode="COND", moodCode="EVN")
    E(obs, "code", code="IHE_PDQ")
    v = E(obs, "value", value="100")
    v.set("{http://www.w3.org/2001/XMLSchema-instance}type", "INT")


def _organization(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    ev = E(E(cap, "subject", typeCode="SUBJ"), "registrationEvent", classCode="REG", moodCode="EVN")
    E(ev, "statusCode", code="active")
    ent = E(E(ev, "subject1", typeCode="SBJ"), "assignedEntity", classCode="ASSIGNED")
    _ii(ent, "id", res.get("identifier") or [])
    for t in res.get("type") or []:
        c = next((c for c in t.get("coding") or [] if c.get("system", "").startswith("urn:oid:")), None)
        if c:
            code = E(ent, "code", code=c.get("code"), codeSystem=_oid_of(c["system"]))
            if c.get("display"):
                E(code, "displayName", value=c["display"])
            break
    if res.get("alias"):
        _name(ent, res["alias"][0])
    E(ent, "statusCode", code="active" if res.get("active", True) else "terminated")
    org = E(ent, "assignedPrincipalOrganization", classCode="ORG", determinerCode="INSTANCE")
    _name(org, res.get("name") or "")
    parent = refs.get((res.get("partOf") or {}).get("reference", ""))
    if parent is not None:
        aff = E(org, "asAffiliate", classCode="AFFL")
        p = E(aff, "affiliatedPrincipalOrganization", classCode="ORG", determinerCode="INSTANCE")
        _ii(p, "id", parent.get("identifier") or [])
        _name(p, parent.get("name") or "")


def _practitioner(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    ev = E(E(cap, "subject", typeCode="SUBJ"), "registrationEvent", classCode="REG", moodCode="EVN")
    E(ev, "statusCode", code="active")
    prov = E(E(ev, "subject1", typeCode="SBJ"), "healthCareProvider", classCode="PROV")
    idents = res.get("identifier") or []
    _ii(prov, "id", [i for i in idents if _oid_of(i.get("system", "")) != "2.16.156.10011.1.3"])
    ref = f"Practitioner/{res.get('id')}"
    role = next((r for r in refs.values() if r.get("resourceType") == "PractitionerRole"
                 and (r.get("practitioner") or {}).get("reference") == ref), None)
    if role:
        c = next((c for cc in role.get("code") or [] for c in cc.get("coding") or []), None)
        if c:
            code = E(prov, "code", code=c.get("code"), codeSystem=_oid_of(c.get("system", "")) or None)
            if c.get("display"):
                E(code, "displayName", value=c["display"])
    E(prov, "statusCode", code="active" if res.get("active", True) else "terminated")
    person = E(prov, "healthCarePrincipalPerson", classCode="PSN", determinerCode="INSTANCE")
    _ii(person, "id", [i for i in idents if _oid_of(i.get("system", "")) == "2.16.156.10011.1.3"])
    _person_elements(person, res)
    org = refs.get(((role or {}).get("organization") or {}).get("reference", ""))
    if org is not None:
        aff = E(person, "asAffiliate", classCode="AFFL")
        p = E(aff, "affiliatedPrincipalOrganization", classCode="ORG", determinerCode="INSTANCE")
        _ii(p, "id", org.get("identifier") or [])
        _name(p, org.get("name") or "")


def _document(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    doc = E(E(cap, "subject", typeCode="SUBJ"), "clinicalDocument", classCode="DOCCLIN", moodCode="EVN")
    _ii(doc, "id", res.get("identifier") or [])
    t = res.get("type") or {}
    c = next((c for c in t.get("coding") or [] if c.get("system") == "urn:oid:2.16.156.10011.2.5.1.23"), None) \
        or next(iter(t.get("coding") or []), None)
    if c:
        code = E(doc, "code", code=c.get("code"), codeSystem="2.16.156.10011.2.5.1.23", codeSystemName="文档类型代码")
        if c.get("display") or t.get("text"):
            E(code, "displayName", value=c.get("display") or t.get("text"))
    E(doc, "statusCode", code="completed" if res.get("status") == "current" else "obsolete")
    if res.get("date"):
        E(doc, "effectiveTime", value=_ts(res["date"]))
    sec = next((c.get("code") for s in res.get("securityLabel") or [] for c in s.get("coding") or []), None)
    if sec:
        E(doc, "confidentialityCode", code=sec, codeSystem="2.16.156.10011.2.5.1.25")
    if query["handler"] == "document_retrieve":
        att = next((c.get("attachment") or {} for c in res.get("content") or []), {})
        data = att.get("data")
        if not data and att.get("url"):
            binary = refs.get(att["url"])
            data = (binary or {}).get("data")
        storage = E(doc, "storageCode")
        if data:
            E(storage, "originalText", value=data)
        else:
            E(storage, "originalText", nullFlavor="NA")
        E(storage, "translation", code=att.get("contentType") or "application/hl7-cda+xml")
    patient = refs.get((res.get("subject") or {}).get("reference", ""))
    if patient is not None:
        rt = E(doc, "recordTarget", typeCode="RCT")
        pat = E(rt, "patient", classCode="PAT")
        idents = patient.get("identifier") or []
        _ii(pat, "id", [i for i in idents if _oid_of(i.get("system", "")) != "2.16.156.10011.1.3"])
        person = E(pat, "patientPerson", classCode="PSN", determinerCode="INSTANCE")
        _ii(person, "id", [i for i in idents if _oid_of(i.get("system", "")) == "2.16.156.10011.1.3"])
        _name(person, patient.get("name"), "DSET_EN")
    for a in res.get("author") or []:
        who = refs.get(a.get("reference", ""))
        au = E(doc, "author", typeCode="AUT")
        aa = E(au, "assignedAuthor", classCode="ASSIGNED")
        _ii(aa, "id", (who or {}).get("identifier") or [])
        if who is not None or a.get("display"):
            ap = E(aa, "assignedPerson", classCode="PSN", determinerCode="INSTANCE")
            _name(ap, (who or {}).get("name") or a.get("display") or "", "DSET_EN")
    cust = refs.get((res.get("custodian") or {}).get("reference", ""))
    if cust is not None:
        ro = E(E(E(doc, "custodian", typeCode="CST"), "assignedCustodian", classCode="ASSIGNED"),
               "representedOrganization", classCode="ORG", determinerCode="INSTANCE")
        _ii(ro, "id", cust.get("identifier") or [])
        _name(ro, cust.get("name") or "", "DSET_EN")


def _visit(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    t = table("visits")
    ev = E(E(cap, "subject", typeCode="SUBJ"), "encounterEvent", classCode="ENC", moodCode="EVN")
    _ii(ev, "id", res.get("identifier") or [])
    kind = next((c for cc in res.get("type") or [] for c in cc.get("coding") or []
                 if c.get("system") == f"urn:oid:{t['type_system']}"), None)
    if kind is None:  # from the class: the first patient type the table maps to it
        code = next((k for k, v in t["classes"].items()
                     if v["code"] == (res.get("class") or {}).get("code")), "")
        kind = {"code": code} if code else None
    if kind is not None:
        c = E(ev, "code", code=kind["code"], codeSystem=t["type_system"])
        if kind.get("display"):
            E(c, "displayName", value=kind["display"])
    status = {v: k for k, v in t["act_status"].items()}.get(res.get("status", ""), "active")
    E(ev, "statusCode", code=status)
    period = res.get("period") or {}
    _interval(ev, period.get("start"), period.get("end"))
    for r in res.get("reasonCode") or []:
        if r.get("text"):
            E(E(E(ev, "reasonCode"), "item"), "originalText", value=r["text"])
    subject = res.get("subject") or {}
    pat = E(E(ev, "subject", typeCode="SBJ"), "patient", classCode="PAT")
    ident = subject.get("identifier")
    if ident:
        _ii(pat, "id", [ident])
    if subject.get("display"):
        _name(E(pat, "patientPerson", classCode="PSN", determinerCode="INSTANCE"),
              subject["display"], "DSET_EN")
    roles = {v: k for k, v in t["participants"].items()}
    for part in res.get("participant") or []:
        code = next((c.get("code") for ty in part.get("type") or [] for c in ty.get("coding") or []),
                    "")
        role = roles.get(code)
        who = refs.get((part.get("individual") or {}).get("reference", ""))
        if role is None or who is None:
            continue
        ap = E(E(ev, role, typeCode=code), "assignedPerson", classCode="ASSIGNED")
        _ii(ap, "id", who.get("identifier") or [])
        _name(E(ap, "assignedPerson", classCode="PSN", determinerCode="INSTANCE"),
              who.get("name") or "", "DSET_EN")
    for loc in (res.get("location") or [])[-1:]:  # where the visit is (or ended)
        place = loc.get("location") or {}
        sdl = E(E(ev, "location", typeCode="LOC"), "serviceDeliveryLocation", classCode="SDLOC")
        pl = E(sdl, "location", classCode="PLC", determinerCode="INSTANCE")
        if place.get("identifier"):
            _ii(pl, "id", [place["identifier"]])
        if place.get("display"):
            _name(pl, place["display"], "DSET_EN")


def _task(cap: etree._Element, res: dict[str, Any]) -> None:
    """An order's or a request form's status (hl7v3.status): the item with its number, the
    status as the sender coded it (``component1/processStep``), the operator and the time."""
    item = E(E(E(cap, "subject", typeCode="SUBJ"), "placerGroup", classCode="GROUPER",
               moodCode="RQO"), "component2")
    act = E(item, "procedureRequest", classCode="PROC", moodCode="RQO")
    _ii(act, "id", [*(res.get("identifier") or []),
                    *([res["groupIdentifier"]] if res.get("groupIdentifier") else [])])
    E(act, "statusCode", code={"completed": "completed", "cancelled": "cancelled",
                               "rejected": "aborted"}.get(res.get("status", ""), "active"))
    if res.get("lastModified"):
        E(E(E(act, "performer", typeCode="PRF"), "time"), "low", value=_ts(res["lastModified"]))
    business = res.get("businessStatus") or {}
    step = E(E(act, "component1", contextConductionInd="true"), "processStep", classCode="PROC")
    if business.get("coding"):
        _cd(step, "code", business)
    else:
        E(E(step, "code"), "displayName", value=business.get("text") or res.get("status", ""))


def _appointment(cap: etree._Element, res: dict[str, Any], element: str = "actAppointment",
                 class_code: str = "ACT") -> None:
    """An examination appointment or surgery schedule as the actAppointment it came as (an
    outpatient one as its encounterAppointment)."""
    act = E(E(cap, "subject", typeCode="SUBJ"), element, classCode=class_code, moodCode="APT")
    ident: dict[str, Any] = next(iter(res.get("identifier") or []), {})
    if ident.get("value"):
        E(act, "id", root=_oid_of(ident.get("system", "")) or None, extension=ident["value"])
    E(act, "statusCode", code={v: k for k, v in reversed(list(
        table("appointments")["status"].items()))}.get(res.get("status", ""), "active"))
    eff = _interval(act, res["start"], res.get("end")) if res.get("start") else None
    if eff is not None:
        eff.set("{http://www.w3.org/2001/XMLSchema-instance}type", "IVL_TS")
    for part in res.get("participant") or []:
        actor = part.get("actor") or {}
        role = next((t.get("text") for t in part.get("type") or []), "")
        if actor.get("reference", "").startswith("Patient/"):
            pat = E(E(act, "subject", typeCode="SBJ"), "patient", classCode="PAT")
            if actor.get("identifier"):
                _ii(pat, "id", [actor["identifier"]])
            if actor.get("display"):
                _name(E(pat, "patientPerson"), actor["display"], "BAG_EN")
        elif actor.get("reference", "").startswith("Practitioner/"):
            person = E(E(act, "performer", typeCode="PRF"), "assignedPerson", classCode="ASSIGNED")
            if role:
                E(E(person, "code"), "displayName", value=role)
            if actor.get("display"):
                _name(E(person, "assignedPerson", classCode="PSN", determinerCode="INSTANCE"),
                      actor["display"], "BAG_EN")
        elif role == "location" and actor.get("display"):
            sdl = E(E(act, "location", typeCode="LOC"), "serviceDeliveryLocation", classCode="SDLOC")
            if actor.get("identifier"):
                _ii(sdl, "id", [actor["identifier"]])
            place = E(sdl, "location", classCode="PLC", determinerCode="INSTANCE")
            _name(place, actor["display"], "BAG_EN")
    for based in res.get("basedOn") or []:
        form = based.get("identifier") or {}
        if form.get("value"):
            E(E(E(act, "referencedOrder", typeCode="OREF"), "actOrder", classCode="ACT",
                moodCode="RQO"), "id", root=_oid_of(form.get("system", "")) or None,
              extension=form["value"])


def _outpatient_appointment(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict
                            ) -> None:
    _appointment(cap, res, "encounterAppointment", "ENC")


def _schedule(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    """A clinic session as the ``schedule`` act it was registered as (hl7v3.schedules): its
    number, kind, status, time, the doctor and the clinic, then its slots (those of the status
    asked for, if one was)."""
    t = table("appointments")
    act = E(E(cap, "subject", typeCode="SUBJ"), "schedule", classCode="ACT", moodCode="SLOT")
    ident: dict[str, Any] = next(iter(res.get("identifier") or []), {})
    if ident.get("value"):
        E(act, "id", extension=ident["value"])
    _cd(act, "code", next(iter(res.get("serviceType") or []), None))
    E(act, "statusCode", code="active" if res.get("active", True) else "cancelled")
    horizon = res.get("planningHorizon") or {}
    _interval(act, horizon.get("start"), horizon.get("end"))
    for actor in res.get("actor") or []:
        entity = E(E(E(E(act, "component", typeCode="COMP"), "resourceSlot", classCode="ACT",
                       moodCode="SLOT"), "directTarget", typeCode="DIR"), "identifiedEntity",
                   classCode="IDENT")
        if actor.get("reference", "").startswith("Practitioner/"):  # the doctor
            who = refs.get(actor["reference"]) or {}
            person = E(entity, "identifiedPerson", classCode="PSN")
            _ii(person, "id", who.get("identifier") or [])
            _name(person, who.get("name") or actor.get("display") or "", "BAG_EN")
        else:  # the clinic, named by its number
            place = E(entity, "identifiedPlace", classCode="PLC")
            number = (actor.get("identifier") or {}).get("value")
            if number:
                E(E(place, "id"), "item", extension=number)
            if actor.get("display"):
                _name(place, actor["display"], "BAG_EN")
    back = {v: k for k, v in reversed(list(t["slot_status"].items()))}
    wanted = query.get("criteria", {}).get("slot_status")
    me = f"Schedule/{res.get('id')}"
    slots = sorted((r for r in refs.values() if r.get("resourceType") == "Slot"
                    and (r.get("schedule") or {}).get("reference") == me
                    and (not wanted or r.get("status") == wanted)),
                   key=lambda r: r.get("start", ""))
    for slot in slots:
        rs = E(E(act, "component", typeCode="COMP"), "resourceSlot", classCode="ACT",
               moodCode="SLOT")
        number = next((i.get("value") for i in slot.get("identifier") or [] if i.get("value")), "")
        if number:
            E(rs, "id", extension=number)
        E(rs, "statusCode", code=back.get(slot.get("status", ""), "normal"))
        _interval(rs, slot.get("start"), slot.get("end"))


def _order(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    """A drug order as a placerGroup of one substanceAdministrationRequest; another order or a
    request as the request (observationRequest, or procedureRequest for a transfusion or a
    surgery) with its form's number (tables/orders.yaml); a status, as ``_task``."""
    if res["resourceType"] == "Task":
        _task(cap, res)
        return
    if res["resourceType"] == "Appointment":
        _appointment(cap, res)
        return
    if res["resourceType"] == "NutritionOrder":  # answered as the other orders that are no drug
        res = {"resourceType": "ServiceRequest", "identifier": res.get("identifier"),
               "status": res.get("status"), "subject": res.get("patient"),
               "encounter": res.get("encounter"), "authoredOn": res.get("dateTime"),
               "requester": res.get("orderer"),
               "code": next(iter((res.get("oralDiet") or {}).get("type") or []), None)}
    t = table("orders")
    subject = E(cap, "subject", typeCode="SUBJ")
    back = {v: k for k, v in reversed([*t["status"].items(), *t["medication_status"].items()])}
    status = back.get(res.get("status", ""), "active")
    if res["resourceType"] == "MedicationRequest":
        holder = E(subject, "placerGroup", classCode="GROUPER", moodCode="RQO")
    else:
        kind = next((k for k, v in t["categories"].items()
                     for cc in res.get("category") or [] for c in cc.get("coding") or []
                     if c.get("code") == v["code"]), "")
        element = "procedureRequest" if kind in ("surgery", "transfusion") else "observationRequest"
        holder = E(subject, element, classCode="PROC" if element == "procedureRequest" else "OBS",
                   moodCode="RQO")
        if res.get("requisition"):
            _ii(holder, "id", [res["requisition"]])
        E(holder, "statusCode", code=status)
    _order_author(holder, res, refs)
    comp = E(holder, "component2")
    if res["resourceType"] == "MedicationRequest":
        act = E(comp, "substanceAdministrationRequest", classCode="SBADM", moodCode="RQO")
        _ii(act, "id", res.get("identifier") or [])
        dosage = (res.get("dosageInstruction") or [{}])[0]
        if dosage.get("text"):
            E(act, "text", value=dosage["text"])
        E(act, "statusCode", code=status)
        validity = (res.get("dispenseRequest") or {}).get("validityPeriod") or {}
        eff = E(act, "effectiveTime", validTimeLow=_ts(validity.get("start")) or None,
                validTimeHigh=_ts(validity.get("end")) or None)
        eff.set("{http://www.w3.org/2001/XMLSchema-instance}type", "QSC_TS")
        _cd(eff, "code", ((dosage.get("timing") or {}).get("code")))
        _cd(act, "routeCode", dosage.get("route"))
        dose = next(((d.get("doseQuantity") or {}) for d in dosage.get("doseAndRate") or []), {})
        if dose.get("value") is not None:
            E(act, "doseQuantity", value=str(dose["value"]), unit=dose.get("unit") or None)
        product = E(E(E(act, "consumable2", typeCode="CSM"), "manufacturedProduct1",
                      classCode="MANU"), "manufacturedProduct", classCode="MMAT",
                    determinerCode="KIND")
        drug = res.get("medicationCodeableConcept") or {}
        _cd(product, "code", drug, with_display=False)
        if drug.get("text"):
            _name(product, drug["text"], "BAG_EN")
    else:
        act = E(comp, "observationRequest" if holder.tag.endswith("observationRequest")
                else "procedureRequest", classCode="OBS", moodCode="RQO")
        _ii(act, "id", res.get("identifier") or [])
        _cd(act, "code", res.get("code"))
        E(act, "statusCode", code=status)
    encounter = refs.get((res.get("encounter") or {}).get("reference", "")) or {}
    enc = E(E(holder, "componentOf1", contextConductionInd="false"), "encounter", classCode="ENC",
            moodCode="EVN")
    _ii(enc, "id", encounter.get("identifier") or [])
    subj = res.get("subject") or {}
    pat = E(E(enc, "subject", typeCode="SBJ"), "patient", classCode="PAT")
    if subj.get("identifier"):
        _ii(pat, "id", [subj["identifier"]])
    if subj.get("display"):
        _name(E(pat, "patientPerson", classCode="PSN", determinerCode="INSTANCE"),
              subj["display"], "BAG_EN")


def _order_author(holder: etree._Element, res: dict[str, Any], refs: dict) -> None:
    if not res.get("authoredOn") and not res.get("requester"):
        return
    author = E(holder, "author", typeCode="AUT")
    if res.get("authoredOn"):
        E(author, "time", value=_ts(res["authoredOn"]))
    requester = res.get("requester") or {}
    who = refs.get(requester.get("reference", "")) or {}
    entity = E(author, "assignedEntity", classCode="ASSIGNED")
    _ii(entity, "id", who.get("identifier") or [])
    name = who.get("name") or requester.get("display") or ""
    if name:
        _name(E(entity, "assignedPerson", classCode="PSN", determinerCode="INSTANCE"), name,
              "BAG_EN")


def _cd(parent: etree._Element, name: str, cc: dict[str, Any] | None,
        with_display: bool = True) -> None:
    """A CodeableConcept's first coding as a v3 CD (its OID system; its display or text)."""
    coding = next(iter((cc or {}).get("coding") or []), None)
    if coding is None or not coding.get("code"):
        if with_display and (cc or {}).get("text"):  # a concept in words only: its words
            E(E(parent, name), "originalText", value=cc["text"])  # type: ignore[index]
        return
    el = E(parent, name, code=coding["code"], codeSystem=_oid_of(coding.get("system", "")) or None)
    label = coding.get("display") or (cc or {}).get("text")
    if with_display and label:
        E(el, "displayName", value=label)


def _dictionary(cap: etree._Element, res: dict[str, Any], refs: dict, query: dict) -> None:
    """A registered dictionary as the registry's valueSet (only the items asked for, if any)."""
    reg = E(E(cap, "subject", typeCode="SUBJ"), "registrationRequest", classCode="REG",
            moodCode="RQO")
    E(reg, "statusCode")
    vs = E(E(reg, "subject1", typeCode="SBJ"), "valueSet")
    ident = next(iter(res.get("identifier") or []), None)
    if ident:
        E(vs, "id", root=_oid_of(ident.get("system", "")) or None, extension=ident.get("value"))
    elif res.get("url", "").startswith("urn:oid:"):
        E(vs, "id", root=_oid_of(res["url"]))
    else:
        E(vs, "id", extension=res.get("url", "").rsplit("/", 1)[-1])
    if res.get("title"):
        E(vs, "desc", value=res["title"])
    E(vs, "statusCode", code="1" if res.get("status") == "active" else "0")
    if res.get("version"):
        E(vs, "version", code=res["version"])
    wanted = set(query.get("criteria", {}).get("codes") or ())
    for concept in res.get("concept") or []:
        if wanted and concept.get("code") not in wanted:
            continue
        item = E(vs, "valueSetItems")
        code = E(item, "code", code=concept.get("code"))
        if concept.get("display"):
            E(code, "displayName", value=concept["display"])
        status = next((p.get("valueCode") for p in concept.get("property") or []
                       if p.get("code") == "status"), "active")
        E(item, "statusCode", code="1" if status == "active" else "0")


_BUILDERS = {
    "patient_query": _patient,
    "organization_query": _organization,
    "practitioner_query": _practitioner,
    "document_search": _document,
    "document_retrieve": _document,
    "visit_query": _visit,
    "appointment_query": _outpatient_appointment,
    "slot_query": _schedule,
    "order_query": _order,
    "terminology_query": _dictionary,
}

__all__ = ["parse_query", "respond"]
