"""The CDA header -> Patient, Organization (custodian, department chain), Location (bed, room),
Practitioner / PractitionerRole and Encounter. Identity keys follow fhir_mapping.identifiers: no
filler and no identifier failing its check digit is ever a key or stored (Ctx.checked_ident).
Imports only ``context``; ``mapper`` (and ``entries``, for performers) call in here."""

from __future__ import annotations

from typing import Any

from fhir_mapping import source_order
from fhir_mapping.base import MappingError
from fhir_mapping.cda import dt
from fhir_mapping.cda.context import XSI_NULL, Ctx
from fhir_mapping.cda.dt import child, children
from fhir_mapping.identifiers import RESIDENT_ID_OID, is_filler, is_resident_id_system, resident_id_conflicts
from fhir_mapping.ids import stable_id


def _doc_ids(ctx: Ctx, root) -> tuple[tuple[str, str], tuple[str, str] | None, int | None]:
    doc_id = dt.ii(child(root, "id"))
    if doc_id is None:
        raise MappingError("ClinicalDocument/id is missing or has no root: the document has no identity",
                           code="AE", location="/ClinicalDocument/id", rule="cda.header.id-missing")
    set_id = dt.ii(child(root, "setId"))
    vn = child(root, "versionNumber")
    version = source_order.version_number(vn.get("value")) if vn is not None else None
    return doc_id, set_id, version


def _patient(ctx: Ctx, root, custodian_ref: str | None) -> str:
    rts = children(root, "recordTarget")
    if not rts:
        raise MappingError("ClinicalDocument has no recordTarget (patient)", code="AE",
                           location="/ClinicalDocument/recordTarget", rule="cda.header.record-target-missing")
    if len(rts) > 1:
        # a mother and her newborn, two people of one visit: nothing in the entries says whose each
        # fact is, and put on one of them they would be that person's record without anyone deciding
        raise MappingError(f"ClinicalDocument has {len(rts)} recordTargets (patients): the hub does not "
                           "tell whose each entry is, so it files none of them", code="AE",
                           location=dt.xpath(rts[1]), rule="cda.header.multiple-record-targets")
    role = child(rts[0], "patientRole")
    pat = child(role, "patient")
    h = ctx.t.header
    types = h["identifier_types"]
    idents: list[dict] = []
    keyed: dict[str, str] = {}  # root -> usable value: fillers and failed check digits never get here
    refused = 0
    residents: list[tuple[Any, dict]] = []  # (element, Identifier) of the usable resident ID numbers
    record_roots = {str(k): v for k, v in (h.get("record_roots") or {}).items()}
    record_types = {str(k): v for k, v in (h.get("record_types") or {}).items()}
    bt = child(pat, "birthTime")
    born = dt.clean_str(bt.get("value")) if bt is not None else None
    for el in children(role, "id") + children(pat, "id"):
        key = dt.ii(el)
        if key and key[0] in record_roots:
            kind = record_roots[key[0]]
            if kind not in ctx.record_idents:
                ident = ctx.checked_ident(el, record_types.get(key[0]))[0]
                if ident is not None:
                    ctx.record_idents[kind] = ident
            continue
        ident, problem = ctx.checked_ident(el, types.get(key[0]) if key else None, born)
        refused += problem is not None
        if ident is None or key is None:  # an identifier only comes from a key
            continue
        if is_resident_id_system(key[0]):
            residents.append((el, ident))
        if ident not in idents:
            idents.append(ident)
        if key[1]:
            keyed.setdefault(key[0], ident["value"])
    others = resident_id_conflicts((i["value"] for _, i in residents), born)
    if others:
        # two people's numbers on one record: the one the birth date bears out stays, if one does
        dropped = [i for _, i in residents if str(i["value"]).strip().upper() in others]
        for el, i in residents:
            if i in dropped:
                ctx.find("warning", "cda.identifier.resident-id-conflict",
                         "resident ID number differs from another valid one of this patient and is not the "
                         "one whose encoded birth date is birthTime's (two people's numbers): not used as a "
                         "key and not stored (value not logged)", el)
        idents = [i for i in idents if i not in dropped]
        kept = [i["value"] for _, i in residents if i not in dropped]
        keyed.pop(RESIDENT_ID_OID, None)
        if kept:
            keyed[RESIDENT_ID_OID] = kept[0]
    if not idents:
        # Name + birth date is no key: in a region two people share both often enough, and linking
        # people on demographics is the master patient index's decision (with its evidence), not a
        # mapper's. The refused document is kept and can be replayed once the sender fixes the id.
        raise MappingError("recordTarget/patientRole carries no usable identifier"
                           + (f" ({refused} refused: placeholder or failed check digit)" if refused else ""),
                           code="AE",
                           location=dt.xpath(role) if role is not None else "/ClinicalDocument/recordTarget",
                           rule="cda.header.patient-id-missing")
    key_parts: tuple[str, ...] | None = None
    for r in h["patient_key_roots"]:
        r = str(r)
        if keyed.get(r):
            key_parts = (r, keyed[r])
            break
    if key_parts is None:
        first = idents[0]
        key_parts = (first.get("system", ""), first["value"])
    pid = stable_id("Patient", ctx.institution, *key_parts)
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid, "identifier": idents, "active": True}
    names = [n for n in (dt.human_name(e) for e in children(pat, "name")) if n]
    res["name"] = names
    g = child(pat, "administrativeGenderCode")
    if g is not None and not g.get(XSI_NULL):
        code = dt.clean_str(g.get("code"))
        system = dt.clean_str(g.get("codeSystem"))
        if code and (system == h["sex_system"] or (system is None and ctx.family.startswith("wst"))) \
                and code in h["sex"]:
            row = h["sex"][code]
            res["gender"] = row["gender"]
            res["extension"] = [{"url": h["sex_extension"], "valueCoding": {
                "system": f"urn:oid:{h['sex_system']}", "code": code, "display": row["display"]}}]
        elif code and system == h["hl7_gender_system"] and code in h["hl7_gender"]:
            res["gender"] = h["hl7_gender"][code]
        elif code:
            ctx.find("warning", "cda.patient.sex-unknown",
                     f"administrativeGenderCode {code!r} in {system or 'no code system'} is not a known sex code", g)
    b = _birth_date(ctx, root, child(pat, "birthTime"))
    if b:
        res["birthDate"] = b
    res["address"] = [a for a in (dt.address(e) for e in children(role, "addr")) if a]
    tel = []
    for e in children(role, "telecom"):
        c = dt.telecom(e)
        if c and c not in tel:
            tel.append(c)
    res["telecom"] = tel
    ms = ctx.concept(child(pat, "maritalStatusCode"))
    if ms:
        res["maritalStatus"] = ms
    eth = ctx.coding(child(pat, "ethnicGroupCode"))
    if eth:
        res.setdefault("extension", []).append({"url": h["ethnicity_extension"], "valueCoding": eth})
    dec = child(pat, "deceasedInd")
    if dec is not None and dec.get("value") in ("true", "false"):
        res["deceasedBoolean"] = dec.get("value") == "true"
    if custodian_ref:
        res["managingOrganization"] = {"reference": custodian_ref}
    # patientRole/providerOrganization: the department and institution that own the record
    prov = child(role, "providerOrganization")
    if prov is not None:
        _org_chain(ctx, prov)
    ctx.patient_ref = ctx.add(res)
    ctx.patient_keyed = keyed
    return ctx.patient_ref


EARLIEST_BIRTH_YEAR = 1880  # as terminology.resident_id: nobody alive was born earlier


def _birth_date(ctx: Ctx, root, bt) -> str | None:
    """The birth date, or None with a finding when it is no real date (19990231), lies after the
    document was written, or before 1880: such a value is a typing error, and kept it would decide
    age-dependent rules and the identity matcher's comparisons. The document's own time is the
    "now" (the mapper reads no clock)."""
    if bt is None or bt.get(XSI_NULL) or not (bt.get("value") or "").strip():
        return None
    b = dt.ts(bt.get("value"), ctx.offset, date_only=True)
    doc = dt.ts(dt.attr(child(root, "effectiveTime"), "value"), None, date_only=True)
    if b is None:
        why = "is not a real date"
    elif int(b[:4]) < EARLIEST_BIRTH_YEAR:
        why = f"is before {EARLIEST_BIRTH_YEAR}"
    elif doc and b > doc[:len(b)]:
        why = "is after the document's own date"
    else:
        return b
    ctx.find("warning", "cda.patient.birth-date-invalid", f"birthTime {why}; no birthDate (value not logged)", bt)
    return None


def _organization(ctx: Ctx, el, part_of: str | None = None) -> str | None:
    """Organization from a CDA organization element (id, name, telecom, addr)."""
    if el is None:
        return None
    ids, _ = ctx.checked_idents(children(el, "id"))
    name = dt.text(child(el, "name"))
    if name and is_filler(name):
        name = None
    if not ids and not name:
        return None  # nothing but fillers: no Organization keyed on them
    key = ("Organization", ids[0].get("system", ""), ids[0]["value"]) if ids else \
        ("Organization", ctx.institution, "name", name)
    oid = stable_id(*key)
    res = {"resourceType": "Organization", "id": oid, "identifier": ids, "active": True, "name": name,
           "telecom": [c for c in (dt.telecom(e) for e in children(el, "telecom")) if c],
           "address": [a for a in (dt.address(e) for e in children(el, "addr")) if a]}
    if part_of:
        res["partOf"] = {"reference": part_of}
    return ctx.add(res)


def _org_chain(ctx: Ctx, el) -> tuple[str | None, list[str]]:
    """An organization and its asOrganizationPartOf/wholeOrganization ancestors (department chain:
    bed -> room -> department -> ward -> hospital). Beds and rooms become Locations. Returns the
    first Organization (the most specific department) and the Locations."""
    chain = []
    cur = el
    depth = 0
    while cur is not None and depth < 12:
        chain.append(cur)
        cur = dt.path(cur, "asOrganizationPartOf", "wholeOrganization")
        depth += 1
    locroots = ctx.t.header["location_roots"]
    refs: list[tuple[str, str | None]] = []
    parent: str | None = None
    for org in reversed(chain):  # from the institution down
        key = dt.ii(child(org, "id"))
        if key and str(key[0]) in locroots:
            refs.append(("loc", _location(ctx, org, locroots[str(key[0])], parent)))
            continue
        ref = _organization(ctx, org, part_of=parent)
        if ref:
            parent = ref
            refs.append(("org", ref))
    orgs = [r for k, r in refs if k == "org" and r]
    locs = [r for k, r in refs if k == "loc" and r]
    return (orgs[-1] if orgs else None), locs


def _location(ctx: Ctx, el, row: dict, managing: str | None) -> str | None:
    ident, _ = ctx.checked_ident(child(el, "id"))
    name = dt.text(child(el, "name"))
    if ident is None and not name:
        return None
    lid = stable_id("Location", ctx.institution, managing, ident and ident.get("system"),
                    ident and ident["value"], name)
    res = {"resourceType": "Location", "id": lid, "identifier": [ident] if ident else None, "name": name,
           "status": "active", "mode": "instance",
           "physicalType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                                        "code": row["physicalType"]}], "text": row["display"]},
           "managingOrganization": {"reference": managing} if managing else None}
    return ctx.add(res)


def _practitioner(ctx: Ctx, entity, org_ref: str | None) -> tuple[str | None, str | None]:
    """(Practitioner ref, PractitionerRole ref) from an assignedAuthor / assignedEntity."""
    if entity is None:
        return None, None
    person = child(entity, "assignedPerson")
    ids, refused = ctx.checked_idents(children(entity, "id"))
    found = [n for n in (dt.human_name(e) for e in children(person, "name"))] if person is not None else []
    names = [n for n in found if n and not is_filler(n.get("text"))]
    if ids:
        key: tuple = ("Practitioner", ctx.institution, ids[0].get("system", ""), ids[0]["value"])
    elif names:
        # an id that is a filler ("-", "医务人员编码") names nobody: within the institution the name does
        key = ("Practitioner", ctx.institution, "name", names[0].get("text") or str(names[0]))
    elif refused:
        # only a filler: someone took part, but nothing says who; one Practitioner per place in this
        # document rather than one for every author the filler stands for
        key = ("Practitioner", *ctx.doc_key, dt.xpath(entity))
    else:
        return None, None
    pid = stable_id(*key)
    pr = {"resourceType": "Practitioner", "id": pid, "identifier": ids, "active": True, "name": names,
          "telecom": [c for c in (dt.telecom(e) for e in children(entity, "telecom")) if c],
          "address": [a for a in (dt.address(e) for e in children(entity, "addr")) if a]}
    pref = ctx.add(pr)
    code = ctx.concept(child(entity, "code"))
    rep = child(entity, "representedOrganization")
    rep_ref = _org_chain(ctx, rep)[0] if rep is not None else None
    org = rep_ref or org_ref
    role_key = (code or {}).get("text") or ((code or {}).get("coding") or [{}])[0].get("code")
    rid = stable_id("PractitionerRole", pid, org, role_key)
    role = {"resourceType": "PractitionerRole", "id": rid, "active": True,
            "practitioner": {"reference": pref}, "organization": {"reference": org} if org else None,
            "code": [code] if code else None}
    return pref, ctx.add(role)


def _encounter(ctx: Ctx, root, custodian_ref: str | None) -> str | None:
    h = ctx.t.header
    keyed = ctx.patient_keyed
    ee = dt.path(root, "componentOf", "encompassingEncounter")
    visit_ids: list[dict[str, Any]] = []
    for r in [str(x) for x in h["inpatient_roots"] + h["outpatient_roots"]]:
        if keyed.get(r):
            visit_ids.append({"system": f"urn:oid:{r}", "value": keyed[r],
                              "type": {"text": h["identifier_types"].get(r, r)}})
    if ee is None and not visit_ids:
        return None
    ids = ctx.checked_idents(children(ee, "id"))[0] if ee is not None else []
    idents = ids + [v for v in visit_ids if v not in ids]
    # a visit number keys the visit of its patient only: two patients' documents that carry the
    # same number (a counter reset, a typo) make two visits, never one whose subject moves
    key: tuple[str, ...]
    if ids:
        key = ("Encounter", ctx.institution, ids[0].get("system", ""), ids[0]["value"],
               ctx.patient_ref or "")
    elif visit_ids:
        key = ("Encounter", ctx.institution, visit_ids[0]["system"], visit_ids[0]["value"],
               ctx.patient_ref or "")
    else:
        key = ("Encounter", *ctx.doc_key)
    eid = stable_id(*key)
    cls: dict[str, Any] | None = None
    etype = None
    if ee is not None:
        code_el = child(ee, "code")
        c = ctx.coding(code_el)
        if c and c.get("system") == "http://terminology.hl7.org/CodeSystem/v3-ActCode":
            cls = c
        else:
            etype = ctx.concept(code_el)
    if cls is None:
        if any(keyed.get(str(r)) for r in h["inpatient_roots"]):
            cls = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient encounter"}
        elif any(keyed.get(str(r)) for r in h["outpatient_roots"]):
            cls = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"}
        else:
            cls = {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"}
    res: dict[str, Any] = {"resourceType": "Encounter", "id": eid, "identifier": idents, "status": "unknown",
                           "class": cls, "type": [etype] if etype else None,
                           "subject": {"reference": ctx.patient_ref}}
    if ee is not None:
        eff = child(ee, "effectiveTime")
        p = dt.period(eff, ctx.offset)
        if p:
            res["period"] = p
            if "end" in p:
                res["status"] = "finished"
        fac = dt.path(ee, "location", "healthCareFacility")
        spo = child(fac, "serviceProviderOrganization")
        dept, locs = _org_chain(ctx, spo) if spo is not None else (None, [])
        if dept:
            res["serviceProvider"] = {"reference": dept}
        elif custodian_ref:
            res["serviceProvider"] = {"reference": custodian_ref}
        res["location"] = [{"location": {"reference": r}} for r in reversed(locs)]
        parts = []
        for ep in children(ee, "encounterParticipant") + [child(ee, "responsibleParty")]:
            if ep is None:
                continue
            pref, _ = _practitioner(ctx, child(ep, "assignedEntity"), dept or custodian_ref)
            if pref:
                parts.append({"individual": {"reference": pref}})
        res["participant"] = parts
    elif custodian_ref:
        res["serviceProvider"] = {"reference": custodian_ref}
    ctx.encounter_ref = ctx.add(res)
    return ctx.encounter_ref
