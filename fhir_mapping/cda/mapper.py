"""CDA document (WS/T 500, WS/T 483, C-CDA) -> FHIR resources. See ``fhir_mapping/cda/__init__.py``.

The orchestrator: the header (``header``), the sections (``sections``, which map their entries through
``entries``), then the Composition, the Binary, the DocumentReference and the document Bundle."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from lxml import etree

from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.cda import dt
from fhir_mapping.cda.context import CONFIDENTIALITY, LOINC, STATEMENTS, VERSION_EXT, Ctx, _templates
from fhir_mapping.cda.dt import child, children, q
from fhir_mapping.cda.header import _doc_ids, _encounter, _org_chain, _organization, _patient, _practitioner
from fhir_mapping.cda.reports import Report, finish_report
from fhir_mapping.cda.sections import list_report, map_section
from fhir_mapping.cda.tables import tables
from fhir_mapping.identifiers import usable
from fhir_mapping.ids import stable_id
from fhir_mapping.xmlsafe import parse_xml

__all__ = ["STATEMENTS", "convert_document", "tables"]  # STATEMENTS: the tests' helpers read it from here


def patient_of(payload: bytes, source: SourceInfo) -> str | None:
    """``Patient/<id>`` of the document's recordTarget, keyed as ``convert_document`` keys it;
    None when it names none usable or is no document. Nothing else is mapped and no quality
    rule applied: the Patient a refused document is about."""
    try:
        root = parse_xml(payload)
        if root.tag != q("ClinicalDocument"):
            return None
        ctx = Ctx(root, source, tables())
        _custodian(ctx, root, source)
        return _patient(ctx, root, None)
    except MappingError:
        return None


def _custodian(ctx: Ctx, root, source: SourceInfo):
    """The custodian's organization element; the institution the ids are keyed by set: the
    connector's, else the custodian's id, else the sender's OID."""
    cust_org_el = dt.path(root, "custodian", "assignedCustodian", "representedCustodianOrganization")
    if not ctx.institution:
        ck = dt.ii(child(cust_org_el, "id")) if cust_org_el is not None else None
        if ck and not usable(ck[1], ck[0]):
            ck = None  # a filler custodian id would make one institution of every sender using it
        ctx.institution = (f"{ck[0]}|{ck[1]}" if ck else "") or source.oid
    return cust_org_el


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
    if ctx.offset is None:
        # a document that states its own zone (its effectiveTime, 201409161300-0500): a time
        # of it without one is read in that zone, not cut to its date (08:45 was lost)
        zone = re.search(r"[+-](\d{2})(\d{2})$", (child(root, "effectiveTime").get("value") or "")
                         if child(root, "effectiveTime") is not None else "")
        if zone:
            ctx.offset = f"{zone.group(0)[0]}{zone.group(1)}:{zone.group(2)}"
            ctx.find("information", "cda.time.document-zone", "times without a zone are read in "
                     f"the document's own zone ({ctx.offset}, its effectiveTime)",
                     child(root, "effectiveTime"))
    if dtype is None:
        ctx.find("warning", "cda.document.type-unknown",
                 f"document type (templateId {', '.join(tpls) or 'none'}, code {doc_code or 'none'}) is not in "
                 "the document table; header, Composition and sections mapped", code_el if code_el is not None else root)
    doc_id, set_id, version = _doc_ids(ctx, root)
    # custodian first: it names the institution when the connector did not
    cust_org_el = _custodian(ctx, root, source)
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
    attesters: list[dict[str, Any]] = []
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
        # an element of another namespace (xmlns="" on a component, a vendor's) is no CDA
        # section: said, not dropped in silence (its entries made nothing)
        for el in body:
            if isinstance(el.tag, str) and etree.QName(el).namespace != dt.V3:
                ctx.find("warning", "cda.section.namespace",
                         f"a {etree.QName(el).localname!r} of namespace "
                         f"{etree.QName(el).namespace or 'none'!r} in the body is no CDA section "
                         "(urn:hl7-org:v3): nothing in it is read", el)
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
        list_report(sections, report_ref, set(ctx.report.results))
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
    # the document is the patient's data: its Binary says so (securityContext), so access control,
    # consent and the access audit treat it as theirs
    binary = {"resourceType": "Binary", "id": bin_id, "contentType": "application/xml",
              "securityContext": {"reference": patient_ref},
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
                    # the request form the document answers (WS/T 500 电子申请单编号)
                    "related": [{"reference": comp_ref}] + (
                        [{"type": "ServiceRequest", "identifier": ctx.record_idents["requisition"]}]
                        if ctx.record_idents.get("requisition") else [])},
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


_ORDER = {"Organization": 0, "Location": 1, "Patient": 2, "Practitioner": 3, "PractitionerRole": 4,
          "Encounter": 4, "Binary": 7, "DocumentReference": 8}


def _first_after(resources: list[dict], rank: int) -> int:
    for i, r in enumerate(resources):
        if _ORDER.get(r["resourceType"], 5) > rank:
            return i
    return len(resources)
