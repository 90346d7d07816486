"""Registration interactions -> FHIR resources: patients (register, update, merge), institutions and
departments, practitioners, document registrations."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from lxml import etree

from fhir_mapping import cleared
from fhir_mapping.base import MappingError
from fhir_mapping.identifiers import key_problem, resident_id_conflicts, someone_elses, usable
from fhir_mapping.ids import patient_id, stable_id
from terminology import resident_id

from .common import (
    V3,
    Ctx,
    address,
    attr,
    coding,
    concept,
    display,
    fhir_date,
    fhir_datetime,
    first,
    first_of,
    human_name,
    ids,
    q,
    table,
    telecoms,
    text_parts,
)

RESIDENT_ROOT = "2.16.156.10011.1.3"
LOCAL_PATIENT_ROOT = "2.16.156.10011.2.5.1.4"
ORG_CODE_ROOT = "2.16.156.10011.1.5"
CARD_ROOT = "2.16.156.10011.2.5.1.6"  # 就诊卡号


def _where(ctx: Ctx, el: etree._Element | None) -> str | None:
    """The element's XPath by name, as a sender reads it (``/*/hl7:controlActProcess/…/hl7:id``);
    a position only where siblings share the name (``hl7:component2[2]``)."""
    if el is None:
        return None
    if el is ctx.msg.root:
        return "/*"
    return "/*/" + ctx.msg.root.getroottree().getelementpath(el).replace(_CLARK, "hl7:")


_CLARK = "{" + V3 + "}"


def _keys(idl: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ids that may key a resource, institution-scoped ones first (a local patient id, a
    record or visit number, a staff number), then national ones: never a filler value or a
    resident ID number failing its check digit (``fhir_mapping.identifiers``)."""
    ok = [(r, e) for r, e in idl if e and key_problem(e, r) is None]
    roots = table("identifiers")["roots"]
    local = [p for p in ok if (roots.get(p[0]) or {}).get("scope") == "local"]
    return local + [p for p in ok if p not in local]


# -- organisations -----------------------------------------------------------------------------------

def institution_org(ctx: Ctx, code: str = "", name: str = "") -> dict[str, str]:
    """The sending institution's Organization (the id the HL7 v2 mapper gives it too)."""
    org: dict[str, Any] = {"resourceType": "Organization", "id": stable_id("Organization", ctx.oid or ctx.inst),
                           "active": True}
    idents = []
    if ctx.oid:
        idents.append({"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{ctx.oid}"})
    if code:
        idents.append({"system": f"urn:oid:{ORG_CODE_ROOT}", "value": code})
    if not idents:
        idents.append({"value": ctx.inst})
    org["identifier"] = idents
    nm = name or ctx.source.name
    if nm:
        org["name"] = nm
    ref = ctx.add(org)
    return dict(ref, display=nm) if nm else ref


def _provider_org(ctx: Ctx, el: etree._Element | None) -> dict[str, str]:
    code = next((ext for root, ext in ids(first(el, "id")) if root == ORG_CODE_ROOT and usable(ext)), "")
    return institution_org(ctx, code if code == ctx.inst or not ctx.source.institution else "",
                           text_parts(first(el, "name")))


def _practitioner(ctx: Ctx, entity: etree._Element | None, person_path: str = "assignedPerson"
                  ) -> dict[str, str] | None:
    """A minimal Practitioner for an author/custodian assignedEntity (registrar, operator)."""
    if entity is None:
        return None
    # the person's own element carries the name, or (person_path "") the entity itself does
    name = human_name(first(entity, f"{person_path}/name" if person_path else "name"))
    idl = [(r, e) for r, e in ids(first(entity, "id")) if e]
    where = _where(ctx, first(entity, "id"))
    idents = [i for i in (ctx.identifier(r, e, where) for r, e in idl) if i]
    keys = _keys(idl)
    if keys:
        key = keys[0]
    elif name:
        key = ("name", name["text"])
    else:
        return None
    res: dict[str, Any] = {"resourceType": "Practitioner", "id": ctx.id("Practitioner", *key)}
    if idents:
        res["identifier"] = idents
    if name:
        res["name"] = [name]
    ref = ctx.add(res)
    return dict(ref, display=name["text"]) if name else ref


def place_ref(ctx: Ctx, el: etree._Element | None, label: str) -> dict[str, Any] | None:
    """A place or department as a Reference by identifier (the first id of ``el``) with
    ``label`` as its display; None when it has neither."""
    out: dict[str, Any] = {}
    ident = next((ctx.identifier(r, e, _where(ctx, el)) for r, e in ids(first(el, "id")) if e),
                 None)
    if ident:
        out["identifier"] = {k: v for k, v in ident.items() if k in ("system", "value")}
    if label:
        out["display"] = label
    return out or None


# -- patients ----------------------------------------------------------------------------------------

def _gender(ctx: Ctx, el: etree._Element | None, res: dict[str, Any], where: str | None) -> None:
    code = attr(el, "code")
    if not code:
        return
    sex = table("codes")["sex"]
    spec = sex["codes"].get(code)
    if spec is None:
        ctx.find("warning", "v3.sex.unknown", f"sex code {code!r} is not in GB/T 2261.1", where)
        return
    res["gender"] = spec["gender"]
    if attr(el, "codeSystem") in ("", sex["system"]) and code.isdigit():
        res.setdefault("extension", []).append({"url": sex["extension"], "valueCoding": {
            "system": f"urn:oid:{sex['system']}", "code": code, "display": display(el) or spec.get("display", "")}})


def _check_resident_id(ctx: Ctx, value: str, where: str | None, person: dict[str, Any]) -> None:
    if resident_id.is_valid(value):
        enc_sex, enc_birth = resident_id.sex(value), resident_id.birth_date(value)
        if person.get("gender") in ("male", "female") and enc_sex != person["gender"]:
            ctx.find("warning", "v3.resident-id.sex-mismatch",
                     f"gender {person['gender']} contradicts the resident ID number ({enc_sex})", where)
        if person.get("birthDate") and enc_birth and person["birthDate"] != enc_birth.isoformat()[:len(person["birthDate"])]:
            ctx.find("warning", "v3.resident-id.birth-mismatch",
                     "birth date contradicts the resident ID number", where)
        return
    # not valid: Ctx.identifier left it out and reported it (v3.identifier.check-digit/placeholder)


def _not_own(ctx: Ctx, owner: etree._Element | None, idl: list[tuple[str, str]], where: str | None,
             born: str) -> list[tuple[str, str]]:
    """``idl`` (ids of ``owner`` or of its person) less the resident ID numbers the record may not
    keep because it carries two different valid ones (``fhir_mapping.identifiers.resident_id_conflicts``:
    the owner's ids, its person's and their other ids counted together), with a warning at ``where``."""
    person = first_of(owner, "patientPerson", "healthCarePrincipalPerson")
    every = ids(first(owner, "id")) + ids(first(person, "id")) + [
        p for other in q(person, "asOtherIDs") for p in ids(first(other, "id"))]
    others = resident_id_conflicts([e for r, e in every if r == RESIDENT_ROOT and not someone_elses(e, born)],
                                   born)
    out = [(r, e) for r, e in idl if not (r == RESIDENT_ROOT and e.strip().upper() in others)]
    if len(out) < len(idl) and ("resident-id-conflict", where, RESIDENT_ROOT) not in ctx.reported:
        ctx.reported.add(("resident-id-conflict", where, RESIDENT_ROOT))
        ctx.find("warning", "v3.identifier.resident-id-conflict", "resident ID number differs from another "
                 "valid one of this record and is not the one whose encoded birth date is birthTime's (two "
                 "people's numbers): not kept, and never a key", where)
    return out


def _person(ctx: Ctx, person: etree._Element | None, res: dict[str, Any]) -> None:
    """patientPerson / healthCarePrincipalPerson -> identifiers, name, telecom, gender, birth, address."""
    if person is None:
        return
    born = attr(first(person, "birthTime"), "value")
    own = _not_own(ctx, person.getparent(), ids(first(person, "id")), _where(ctx, first(person, "id")), born)
    for root, ext in own:
        if root == RESIDENT_ROOT and someone_elses(ext, born):
            # a parent's valid number on a newborn's registration: not this person's identifier
            ctx.find("warning", "v3.identifier.other-person", "resident ID number encodes a birth date more "
                     "than ten years from birthTime (someone else's number): not kept, and never a key",
                     _where(ctx, first(person, "id")))
            continue
        ident = ctx.identifier(root, ext, _where(ctx, first(person, "id")))
        if ident and ident not in res["identifier"]:
            res["identifier"].append(ident)
    name = human_name(first(person, "name"))
    if name:
        res["name"] = [name]
    tel = telecoms(first(person, "telecom"))
    if tel:
        res["telecom"] = tel
    _gender(ctx, first(person, "administrativeGenderCode"), res, _where(ctx, first(person, "administrativeGenderCode")))
    bt = attr(first(person, "birthTime"), "value")
    if bt:
        d = fhir_date(bt[:8])
        if d:
            res["birthDate"] = d
        else:
            ctx.find("warning", "v3.birth-time.invalid", f"birth time {bt!r} is not a date",
                     _where(ctx, first(person, "birthTime")))
    addr = address(first(person, "addr"))
    if addr:
        res["address"] = addr
    for root, ext in own:
        if root == RESIDENT_ROOT and ext and not someone_elses(ext, born):
            _check_resident_id(ctx, ext, _where(ctx, first(person, "id")), res)


def _patient_key(ctx: Ctx, patient: etree._Element | None, where: str) -> tuple[str, list[dict[str, Any]]]:
    """(key, identifiers): the local patient id, else the next usable institution-scoped id, else a
    usable national one; none usable: AE naming the element (keyed on a filler or an invalid
    resident ID number, different people would become one Patient)."""
    idl = ids(first(patient, "id"))
    id_where = _where(ctx, first(patient, "id")) or where
    born = attr(first(patient, "patientPerson/birthTime"), "value")
    if any(r == RESIDENT_ROOT and someone_elses(e, born) for r, e in idl):
        ctx.find("warning", "v3.identifier.other-person", "resident ID number encodes a birth date more than "
                 "ten years from birthTime (someone else's number): not kept, and never a key", id_where)
        idl = [(r, e) for r, e in idl if not (r == RESIDENT_ROOT and someone_elses(e, born))]
    idl = _not_own(ctx, patient, idl, id_where, born)
    idents = [i for i in (ctx.identifier(r, e, id_where) for r, e in idl) if i]
    local = [e for r, e in _keys(idl) if r == LOCAL_PATIENT_ROOT]
    keys = _keys(idl)
    key = local[0] if local else (keys[0][1] if keys else "")
    if not key:
        raise MappingError("the patient has no usable identifier (patient/id/item): none, or only "
                           "placeholders or resident ID numbers failing their check digit",
                           code="AE", location=id_where, rule="v3.patient.id-missing")
    return key, idents


def patient_ref(ctx: Ctx, patient: etree._Element, where: str) -> dict[str, Any]:
    """A Patient named by another message (a visit, an order, an appointment) as a Reference:
    keyed as the patient registration keys it, so it is the Patient that registration writes
    (never overwritten from here), with the key as an identifier too (it resolves before the
    patient is registered) and the name as display."""
    return keyed_patient_ref(ctx, patient, where)[1]


def keyed_patient_ref(ctx: Ctx, patient: etree._Element, where: str) -> tuple[str, dict[str, Any]]:
    """``patient_ref`` with the key the Patient's id is made of (a visit's id is scoped by it,
    ``fhir_mapping.ids.encounter_id``)."""
    pkey, pidents = _patient_key(ctx, patient, where)
    ref: dict[str, Any] = {"reference": f"Patient/{patient_id(ctx.inst, pkey)}"}
    local = next((i for i in pidents if i.get("value") == pkey), None)
    if local is not None:
        ref["identifier"] = {k: v for k, v in local.items() if k in ("system", "value")}
    name = text_parts(first(patient, "patientPerson/name"))
    if name:
        ref["display"] = name
    return pkey, ref


def patient(ctx: Ctx, subject: etree._Element | None = None) -> dict[str, Any]:
    """PRPA_IN201311UV02 / PRPA_IN201314UV02 (and the survivor of a merge)."""
    ca = ctx.msg.control
    if subject is None and len(q(ca, "subject")) > 1:
        # one registration per message, as the interaction defines it: the second was dropped
        raise MappingError(f"the message holds {len(q(ca, 'subject'))} patients "
                           "(controlActProcess/subject); a registration names one", code="AE",
                           location="/*/hl7:controlActProcess/hl7:subject[2]",
                           rule="v3.patient.several")
    reg = first_of(ca, "subject/registrationRequest", "subject/registrationEvent")
    pat = subject if subject is not None else first(reg, "subject1/patient")
    if pat is None:
        raise MappingError("no subject1/patient in the registration", code="AE",
                           location="/*/hl7:controlActProcess/hl7:subject", rule="v3.patient.missing")
    key, idents = _patient_key(ctx, pat, _where(ctx, pat) or "")
    status = attr(first(pat, "statusCode"), "code")
    res: dict[str, Any] = {"resourceType": "Patient", "id": patient_id(ctx.inst, key), "identifier": idents,
                           "active": status in ("", "active")}
    if any(r == CARD_ROOT for r, _ in ids(first(pat, "id"))):
        # a visit card's registration: the status and the time are the card's (a card returned
        # or voided is an old identifier of a patient who stays active)
        res["active"] = True
        _card(ctx, pat, res, status)
    person = first(pat, "patientPerson")
    _person(ctx, person, res)
    for other in q(person, "asOtherIDs"):
        scoper = next((e for r, e in ids(first(other, "scopingOrganization/id")) if e), "")
        for root, ext in _not_own(ctx, pat, ids(first(other, "id")), _where(ctx, other),
                                  attr(first(person, "birthTime"), "value")):
            ident = ctx.identifier(root, ext, _where(ctx, other))
            if ident:
                if scoper and "assigner" not in ident:
                    ident["assigner"] = {"identifier": {"system": f"urn:oid:{ORG_CODE_ROOT}", "value": scoper}}
                if ident not in res["identifier"]:
                    res["identifier"].append(ident)
    codes = table("codes")
    ms = first(person, "maritalStatusCode")
    if attr(ms, "code"):
        m = codes["marital"]
        cc = concept(ms)
        assert cc is not None  # it has a code
        fhir = m["codes"].get(attr(ms, "code"))
        if fhir and attr(ms, "codeSystem") in ("", m["system"]):
            cc["coding"].insert(0, {"system": m["fhir_system"], "code": fhir})
        res["maritalStatus"] = cc
    for item in q(person, "ethnicGroupCode/item") or q(person, "ethnicGroupCode"):
        if attr(item, "code"):
            res.setdefault("extension", []).append({"url": codes["ethnicity"]["extension"],
                                                    "valueCoding": coding(attr(item, "codeSystem") or
                                                                          codes["ethnicity"]["system"],
                                                                          attr(item, "code"), display(item))})
    for rel in q(person, "personalRelationship"):
        contact: dict[str, Any] = {}
        cc = concept(first(rel, "code"))
        if cc:
            contact["relationship"] = [cc]
        nm = human_name(first(rel, "relationshipHolder1/name"))
        if nm:
            contact["name"] = nm
        tel = telecoms(first(rel, "telecom"))
        if tel:
            contact["telecom"] = tel
        if contact.get("name") or contact.get("telecom"):
            res.setdefault("contact", []).append(contact)
    emp = first(person, "asEmployee")
    if emp is not None:
        ctx.find("information", "v3.patient.unmapped", "occupation and employer (asEmployee) are not mapped "
                 "to Patient", _where(ctx, emp))
    cov = first(pat, "coveredPartyOf")
    if cov is not None:
        ctx.find("information", "v3.patient.unmapped", "insurance (coveredPartyOf) is not mapped: a Coverage "
                 "needs the payer, which the message does not name", _where(ctx, cov))
    res["managingOrganization"] = _provider_org(ctx, first(pat, "providerOrganization"))
    # a registration states the patient's record whole: what it does not hold, it clears (a
    # partial mention of the patient elsewhere keeps what the hub holds: fhir_mapping.cleared)
    cleared.mark(res, ["identifier", "name", "birthDate", "gender", "address", "telecom",
                       "maritalStatus", "deceased", "multipleBirth", "communication"])
    return res


def _card(ctx: Ctx, pat: etree._Element, res: dict[str, Any], status: str) -> None:
    system, _ = ctx.system(CARD_ROOT)
    since = fhir_datetime(attr(first(pat, "effectiveTime/low"), "value"))
    until = fhir_datetime(attr(first(pat, "effectiveTime/high"), "value"))
    for ident in res["identifier"]:
        if ident.get("system") != system:
            continue
        period = {k: v for k, v in (("start", since), ("end", until)) if v}
        if status not in ("", "active"):
            ident["use"] = "old"
            period.setdefault("end", fhir_datetime(ctx.msg.creation_time) or since or "")
            period = {k: v for k, v in period.items() if v}
        if period:
            ident["period"] = period


def register_patient(ctx: Ctx) -> list[dict[str, str]]:
    res = patient(ctx)
    ctx.add(res)
    author = _practitioner(ctx, first(ctx.msg.control, "subject/registrationRequest/author/assignedEntity"))
    return [a for a in (author,) if a]


def merge_patients(ctx: Ctx) -> list[dict[str, str]]:
    """PRPA_IN201304UV02: the prior registration (replacementOf) is retired into the subject."""
    reg = first_of(ctx.msg.control, "subject/registrationEvent", "subject/registrationRequest")
    survivor = patient(ctx)
    # the merge names the survivor to say who survives, not to state its record anew: what it
    # leaves out stays as the hub holds it (the survivor kept only its name and one identifier)
    cleared.take(survivor)
    prior = first(reg, "replacementOf/priorRegistration/subject1/priorRegisteredRole")
    where = "/*/hl7:controlActProcess/hl7:subject/hl7:registrationEvent/hl7:replacementOf"
    if len(q(reg, "replacementOf")) > 1:  # the second retired record was dropped: refused
        raise MappingError(f"the merge names {len(q(reg, 'replacementOf'))} prior registrations "
                           "(replacementOf); merge them one message each", code="AE",
                           location=where + "[2]", rule="v3.merge.several")
    if prior is None:
        raise MappingError("merge without replacementOf/priorRegistration: nothing to merge", code="AE",
                           location=where, rule="v3.merge.prior-missing")
    key, idents = _patient_key(ctx, prior, where)
    retired_id = patient_id(ctx.inst, key)
    if retired_id == survivor["id"]:
        raise MappingError("the prior registration names the surviving patient: a patient cannot be merged "
                           "into itself", code="AE", location=where, rule="v3.merge.self")
    retired = {"resourceType": "Patient", "id": retired_id, "identifier": idents, "active": False,
               "link": [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}],
               "managingOrganization": survivor["managingOrganization"]}
    survivor.setdefault("link", []).append({"other": {"reference": f"Patient/{retired_id}"}, "type": "replaces"})
    ctx.add(survivor)
    ctx.add(retired)
    operator = _practitioner(ctx, first(reg, "custodian/assignedEntity"))
    return [a for a in (operator,) if a]


# -- institutions and departments --------------------------------------------------------------------

def organization(ctx: Ctx) -> list[dict[str, str]]:
    """PRPM_IN401030UV01 / PRPM_IN403010UV01: an institution or department (assignedEntity)."""
    reg = first_of(ctx.msg.control, "subject/registrationRequest", "subject/registrationEvent")
    ent = first(reg, "subject1/assignedEntity")
    if ent is None:
        raise MappingError("no subject1/assignedEntity in the registration", code="AE",
                           location="/*/hl7:controlActProcess/hl7:subject", rule="v3.organization.missing")
    all_ids = [(r, e) for r, e in ids(first(ent, "id")) if e]
    id_where = _where(ctx, first(ent, "id"))
    idents = [i for i in (ctx.identifier(r, e, id_where) for r, e in all_ids) if i]
    idl = _keys(all_ids)
    if not idl:
        raise MappingError("the organisation has no usable identifier (none, or only placeholders)",
                           code="AE", location=id_where or _where(ctx, ent),
                           rule="v3.organization.id-missing")
    inst_ref = institution_org(ctx)
    res: dict[str, Any] = {"resourceType": "Organization", "id": _org_id(ctx, *idl[0]),
                           "identifier": idents,
                           "active": attr(first(ent, "statusCode"), "code") in ("", "active")}
    types = []
    cc = concept(first(ent, "code"))
    if cc:
        types.append(cc)
    if idl[0][0] == "2.16.156.10011.1.26":
        types.append({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                  "code": "dept", "display": "Hospital Department"}]})
    if types:
        res["type"] = types
    name = text_parts(first(ent, "assignedPrincipalOrganization/name")) or text_parts(first(ent, "name"))
    if name:
        res["name"] = name
    role_name = text_parts(first(ent, "name"))
    if role_name and role_name != name:
        res["alias"] = [role_name]
    tel = telecoms(first(ent, "telecom"))
    if tel:
        res["telecom"] = tel
    addr = address(first(ent, "addr"))
    if addr:
        res["address"] = addr
    aff = first(ent, "assignedPrincipalOrganization/asAffiliate")
    parent = None
    for path in ("scoper2", "affiliatedPrincipalOrganization"):
        parent = first(aff, path)
        if parent is not None:
            break
    pall = [(r, e) for r, e in ids(first(parent, "id")) if e]
    pidl = _keys(pall)
    pidents = [i for i in (ctx.identifier(r, e, _where(ctx, first(parent, "id"))) for r, e in pall) if i]
    if pidl:
        pres: dict[str, Any] = {"resourceType": "Organization", "id": _org_id(ctx, *pidl[0]),
                                "identifier": pidents,
                                "partOf": inst_ref}
        pname = text_parts(first(parent, "name"))
        if pname:
            pres["name"] = pname
        res["partOf"] = ctx.add(pres)
    elif res["id"] != inst_ref["reference"].split("/")[1]:
        res["partOf"] = inst_ref
    ctx.add(res)
    _extension_items(ctx, reg)
    author = _practitioner(ctx, first(reg, "author/assignedEntity"))
    return [a for a in (author,) if a]


def _org_id(ctx: Ctx, root: str, ext: str) -> str:
    if root == ORG_CODE_ROOT:
        return stable_id("Organization", f"urn:oid:{root}", ext)
    return ctx.id("Organization", root, ext)


def _extension_items(ctx: Ctx, reg: etree._Element | None, mapped: tuple[str, ...] = ()) -> None:
    for item in q(reg, "extension/item"):
        code = attr(item, "code")
        if code and code not in mapped:
            ctx.find("information", "v3.extension.unmapped",
                     f"extension item {code!r} is not mapped", _where(ctx, item))


# -- practitioners -----------------------------------------------------------------------------------

def practitioner(ctx: Ctx) -> list[dict[str, str]]:
    """PRPM_IN301010UV01 / PRPM_IN303010UV01: healthCareProvider -> Practitioner + PractitionerRole."""
    reg = first_of(ctx.msg.control, "subject/registrationRequest", "subject/registrationEvent")
    prov = first(reg, "subject1/healthCareProvider")
    if prov is None:
        raise MappingError("no subject1/healthCareProvider in the registration", code="AE",
                           location="/*/hl7:controlActProcess/hl7:subject", rule="v3.practitioner.missing")
    person = first(prov, "healthCarePrincipalPerson")
    all_ids = [(r, e) for r, e in ids(first(prov, "id")) if e]
    id_where = _where(ctx, first(prov, "id"))
    idents = [i for i in (ctx.identifier(r, e, id_where) for r, e in all_ids) if i]
    # a filler staff number: keyed on the next usable id (the person's own, a valid resident ID)
    idl = _keys(all_ids) or _keys([(r, e) for r, e in ids(first(person, "id")) if e])
    if not idl:
        raise MappingError("the practitioner has no usable identifier (none, or only placeholders "
                           "or resident ID numbers failing their check digit)", code="AE",
                           location=id_where or _where(ctx, prov), rule="v3.practitioner.id-missing")
    active = attr(first(prov, "statusCode"), "code") in ("", "active")
    res: dict[str, Any] = {"resourceType": "Practitioner", "id": ctx.id("Practitioner", *idl[0]),
                           "identifier": idents, "active": active}
    _person(ctx, person, res)
    cert = next((attr(i, "value") for i in q(reg, "extension/item") if attr(i, "code") == "certificateNo"), "")
    if cert:
        res["qualification"] = [{"identifier": [{"value": cert}], "code": {"text": "执业证书"}}]
    ref = ctx.add(res)
    role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": ctx.id("PractitionerRole", *idl[0]),
                            "active": active, "practitioner": ref}
    cc = concept(first(prov, "code"))
    if cc:
        role["code"] = [cc]
    low = fhir_datetime(attr(first(prov, "effectiveTime/low"), "value"))
    high = fhir_datetime(attr(first(prov, "effectiveTime/high"), "value"))
    if low or high:
        role["period"] = {k: v for k, v in (("start", low), ("end", high)) if v}
    dept = first(person, "asAffiliate/affiliatedPrincipalOrganization")
    dall = [(r, e) for r, e in ids(first(dept, "id")) if e]
    didl = _keys(dall)
    if didl:
        dres: dict[str, Any] = {"resourceType": "Organization", "id": _org_id(ctx, *didl[0]),
                                "identifier": [i for i in (ctx.identifier(r, e, _where(ctx, first(dept, "id")))
                                                           for r, e in dall) if i],
                                "partOf": institution_org(ctx)}
        dname = text_parts(first(dept, "name"))
        if dname:
            dres["name"] = dname
        role["organization"] = ctx.add(dres)
    else:
        role["organization"] = institution_org(ctx)
    tel = telecoms(first(prov, "telecom"))
    if tel:
        role["telecom"] = tel
    ctx.add(role)
    _extension_items(ctx, reg, ("certificateNo",))
    author = _practitioner(ctx, first(reg, "author/assignedEntity"))
    return [a for a in (author,) if a]


# -- documents -----------------------------------------------------------------------------------------

def document(ctx: Ctx) -> list[dict[str, str]]:
    """RCMR_IN000002UV02: a document registration -> DocumentReference (+ Patient, author, custodian)."""
    doc = first(ctx.msg.control, "subject/clinicalDocument")
    if doc is None:
        raise MappingError("no subject/clinicalDocument in the registration", code="AE",
                           location="/*/hl7:controlActProcess/hl7:subject", rule="v3.document.missing")
    dall = [(r, e) for r, e in ids(first(doc, "id")) if e]
    didl = _keys(dall)
    if not didl:
        raise MappingError("the document has no usable id (none, or only placeholders)", code="AE",
                           location=_where(ctx, first(doc, "id")) or _where(ctx, doc),
                           rule="v3.document.id-missing")
    codes = table("codes")
    version = attr(first(doc, "versionNumber"), "value")
    # the patient, as the registration describes it
    pat_el = first(doc, "recordTarget/patient")
    pref = None
    if pat_el is not None:
        key, idents = _patient_key(ctx, pat_el, _where(ctx, pat_el) or "")
        pres: dict[str, Any] = {"resourceType": "Patient", "id": patient_id(ctx.inst, key), "identifier": idents}
        _person(ctx, first(pat_el, "patientPerson"), pres)
        pres["managingOrganization"] = _provider_org(ctx, first(pat_el, "providerOrganization"))
        pref = ctx.add(pres)
    res: dict[str, Any] = {"resourceType": "DocumentReference", "id": ctx.id("DocumentReference", *didl[0]),
                           "identifier": [i for i in (ctx.identifier(r, e, _where(ctx, first(doc, "id")))
                                                      for r, e in dall) if i],
                           "status": "current"}
    code_el = first(doc, "code")
    if attr(code_el, "code"):
        dt = codes["document_type"]
        cc = concept(code_el)
        assert cc is not None  # it has a code
        if attr(code_el, "codeSystem") == dt["v3_system"]:
            cc["coding"].insert(0, coding(dt["cda_system"], attr(code_el, "code"), display(code_el)))
        res["type"] = cc
    else:
        ctx.find("warning", "v3.document.code-missing", "the document has no type code", _where(ctx, doc))
    if pref:
        res["subject"] = pref
    eff = fhir_datetime(attr(first(doc, "effectiveTime"), "value"), instant=True)
    if eff:
        res["date"] = eff
    author = _practitioner(ctx, first(doc, "author/assignedAuthor"))
    if author:
        res["author"] = [author]
    cust = first(doc, "custodian/assignedCustodian/representedOrganization")
    if cust is not None:
        res["custodian"] = _provider_org(ctx, cust)
    conf = first(doc, "confidentialityCode")
    if attr(conf, "code"):
        cm = codes["confidentiality"]
        fhir = cm["codes"].get(attr(conf, "code"))
        if fhir:
            res["securityLabel"] = [{"coding": [{"system": cm["fhir_system"], "code": fhir}]}]
    attachment: dict[str, Any] = {"contentType": "application/hl7-cda+xml"}
    title = display(code_el)
    if title:
        attachment["title"] = title
    stored = attr(first(doc, "storageCode/originalText"), "value")
    if stored:
        try:
            raw = base64.b64decode(stored, validate=True)
            attachment["data"] = base64.b64encode(raw).decode("ascii")
            attachment["size"] = len(raw)
        except (binascii.Error, ValueError):
            ctx.find("warning", "v3.document.content-not-base64", "storageCode/originalText is not base64: the "
                     "document content is not kept", _where(ctx, first(doc, "storageCode/originalText")))
    res["content"] = [{"attachment": attachment}]
    context: dict[str, Any] = {}
    low = fhir_datetime(attr(first(pat_el, "effectiveTime/low"), "value"))
    if low:
        context["period"] = {"start": low}
    enc_ids = [(r, e) for r, e in ids(first(pat_el, "id")) if r in ("2.16.156.10011.1.11", "2.16.156.10011.1.12") and e]
    if enc_ids:
        context["related"] = [{"identifier": i} for i in (ctx.identifier(r, e) for r, e in enc_ids) if i]
    dept = [(r, e) for r, e in ids(first(pat_el, "providerOrganization/organizationContains/id")) if e]
    if dept:
        context["facilityType"] = {"coding": [{"system": ctx.system(dept[0][0])[0] or "", "code": dept[0][1]}]}
    if context:
        res["context"] = context
    if version:
        res["description"] = f"{title or 'document'}, version {version}"
    ctx.add(res)
    return []
