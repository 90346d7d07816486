"""AL1/IAM -> AllergyIntolerance, DG1 -> Condition, PR1 -> Procedure, IN1 -> Coverage (+ payer)."""

from __future__ import annotations

from typing import Any

from fhir_mapping.identifiers import is_filler_text

from . import datatypes as dt
from .context import Ctx
from .message import Seg
from .people import annotation, identifier, practitioner
from .tables import table

_CODES = table("codes")
_ACAT = _CODES["allergy_category"]
_ACRIT = _CODES["allergy_criticality"]
_ACLIN = {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}
_CCLIN = {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
_CCAT = "http://terminology.hl7.org/CodeSystem/condition-category"


def allergy(ctx: Ctx, seg: Seg) -> None:
    """AL1 (type 2, allergen 3, severity 4, reaction 5, onset 6) or IAM (same up to 6; IAM-6 action)."""
    code = dt.concept(seg.rep(3))
    if code is None:
        ctx.find("warning", "v2.al1-3.missing", f"{seg.name} without an allergen (3) skipped", seg.loc(3))
        return
    if dt.filler_concept(seg.rep(3)):
        # an allergy "to 无" says the patient has none known: no AllergyIntolerance, as the CDA
        # mapper makes none of the same entry (cda.entry.absent-value)
        ctx.find("information", "v2.al1-3.filler", f"{seg.name}-3 (allergen) is a filler with no code "
                 "(无, -, 不详): no resource made of it", seg.loc(3))
        return
    key = dt.comp(seg.rep(3), 1) or code.get("text", "")
    if seg.name == "IAM" and dt.comp(seg.rep(7), 1) and ctx.usable(
            dt.comp(seg.rep(7), 1), None, seg.loc(7, c=1), "allergy unique identifier"):
        key = "IAM7:" + dt.comp(seg.rep(7), 1)
    res: dict[str, Any] = {"resourceType": "AllergyIntolerance",
                           "id": ctx.id("AllergyIntolerance", ctx.patient_key, key)}
    deleted = seg.name == "IAM" and seg.get(6).upper() == "D"
    if deleted:
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "code": "entered-in-error"}]}
    else:
        res["clinicalStatus"] = {"coding": [dict(_ACLIN)]}
    cat = _ACAT.get(seg.get(2).upper())
    if cat:
        res["category"] = [cat]
    crit = _ACRIT.get(seg.get(4).upper())
    if crit:
        res["criticality"] = crit
    res["code"] = code
    res["patient"] = ctx.patient_ref
    onset = dt.datetime(seg.get(6 if seg.name == "AL1" else 11))
    if onset:
        res["onsetDateTime"] = onset
    manifestations = []
    for rep in seg.field(5):
        # AL1-5 is free text up to v2.5 (皮疹, "hives"): one component is the reaction's text,
        # not a code without a system
        single = dt.comp(rep, 1) if len(rep) == 1 else None
        c = {"text": single} if single else dt.concept(rep)
        if c:
            manifestations.append(c)
    reactions = [{"manifestation": manifestations}] if manifestations else []
    notes: list[dict[str, Any]] = []
    if seg.name == "IAM":
        reactions += _iar_reactions(ctx, seg, notes)
    if notes:
        res["note"] = notes
    if reactions:
        res["reaction"] = reactions
    ctx.add(res)


_REACTION_SEVERITY = {"MI": "mild", "MO": "moderate", "SV": "severe"}


def _iar_reactions(ctx: Ctx, iam: Seg, notes: list[dict[str, Any]]) -> list[dict]:
    """The IAR segments after an IAM: each a reaction (IAR-1 what, IAR-2 severity, IAR-4 management).
    An NTE after the IAM is a note of the allergy (into ``notes``), one after an IAR the reaction's
    note, each an Annotation with its NTE-5 author and NTE-6 time (``people.annotation``)."""
    out: list[dict] = []
    reaction: dict[str, Any] | None = None  # the reaction an NTE follows; None: the allergy itself
    for seg in ctx.msg.segments[iam.index + 1:]:
        if seg.name == "NTE":
            note = annotation(ctx, seg)
            if note:
                (reaction.setdefault("note", []) if reaction is not None else notes).append(note)
            continue
        if seg.name != "IAR":
            break
        what = dt.concept(seg.rep(1))
        if what is None:
            ctx.find("warning", "v2.iar-1.missing", "IAR without the reaction (1) skipped; the NTE "
                     "after it are notes of the allergy", seg.loc(1))
            reaction = None
            continue
        reaction = {"manifestation": [what]}
        severity = _REACTION_SEVERITY.get(dt.comp(seg.rep(2), 1).upper())
        if severity:
            reaction["severity"] = severity
        if seg.get(4):
            reaction["note"] = [{"text": seg.text(4)}]
        out.append(reaction)
    return out


# DG1-6 diagnosis type (HL7 table 0052) and R4's diagnosis-role
_V2_0052 = "http://terminology.hl7.org/CodeSystem/v2-0052"
_DIAGNOSIS_TYPE = {k: v for k, v in _CODES["diagnosis_type"].items() if k != "_doc"}
_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"


_ASSERTED_DATE = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate"


def condition(ctx: Ctx, dg1: Seg, n: int) -> None:
    # a filler (无, -, 不详 with no code) says no diagnosis: DG1-4 may still name one
    filler3 = dt.filler_concept(dg1.rep(3))
    code = None if filler3 else dt.concept(dg1.rep(3))
    text = dg1.get(4)
    if text and is_filler_text(text):
        text = ""
    if code is None and not text and (filler3 or dg1.get(4)):
        ctx.find("information", "v2.dg1-3.filler", "DG1-3 (diagnosis) / DG1-4 (description) is a "
                 "filler with no code (无, -, 不详): no resource made of it", dg1.loc(3))
        return
    if code is None and text:
        code = {"text": text}
    if code is None:
        ctx.find("warning", "v2.dg1-3.missing", "DG1 without a diagnosis code (3) or text (4) skipped", "DG1-3")
        return
    ident = identifier(ctx, dg1.rep(20), dg1.loc(20), "entity") if dg1.get(20) else None
    key = (ident["value"] if ident else "") or ("" if filler3 else dt.comp(dg1.rep(3), 1)) or text
    res: dict[str, Any] = {"resourceType": "Condition",
                           "id": ctx.id("Condition", ctx.patient_key,
                                        f"Encounter/{ctx.visit_scope()}" if ctx.encounter_ref else "", key)}
    if ident:
        res["identifier"] = [ident]
    if dg1.get(21).upper() == "D":
        # DG1-21 action D (table 0206): the diagnosis is withdrawn, as IAM-6 D withdraws an
        # allergy; it stayed active (a clinical status is not given with entered-in-error)
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": "entered-in-error"}]}
    else:
        res["clinicalStatus"] = {"coding": [dict(_CCLIN)]}
    res["category"] = [{"coding": [{"system": _CCAT, "code": "encounter-diagnosis"}]}]
    kind = _DIAGNOSIS_TYPE.get(dg1.get(6).upper())
    if kind:  # DG1-6: admitting, working or final (table 0052)
        res["category"].append({"coding": [{"system": _V2_0052, "code": dg1.get(6).upper(),
                                             "display": kind}]})
    elif dg1.get(6):
        ctx.find("warning", "v2.dg1-6.unlisted", f"DG1-6 diagnosis type {dg1.get(6)[:8]!r} is "
                 "none of table 0052 (A, W, F): kept only as its text", dg1.loc(6))
        res["category"].append({"text": dg1.get(6)[:200]})
    if text and "text" not in code:
        code["text"] = text
    res["code"] = code
    res["subject"] = ctx.patient_ref
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    when = dt.datetime(dg1.get(5))
    if when:
        res["recordedDate"] = when
    attested = dt.datetime(dg1.get(19))
    if attested:  # DG1-19 attestation time: the v2-to-FHIR IG's DG1[Condition] asserted date
        res["extension"] = [{"url": _ASSERTED_DATE, "valueDateTime": attested}]
    who = practitioner(ctx, dg1.rep(16), "DG1-16")
    if who:
        res["asserter"] = who
    ref = ctx.add(res)
    _encounter_diagnosis(ctx, dg1, ref)


def _encounter_diagnosis(ctx: Ctx, dg1: Seg, ref: dict[str, str]) -> None:
    """The visit's list of diagnoses: each DG1 with its use (DG1-6; admitting is R4's
    admission diagnosis) and its rank (DG1-15, 1 the principal one)."""
    enc = ctx.get("Encounter", ctx.encounter_ref["reference"].split("/", 1)[1]) \
        if ctx.encounter_ref else None
    rank = dg1.get(15)
    if enc is None:
        if rank:
            ctx.find("warning", "v2.dg1-15.no-visit", "DG1-15 (priority) ranks a diagnosis among "
                     "a visit's, and this message maps no visit: not kept", dg1.loc(15))
        return
    item: dict[str, Any] = {"condition": ref}
    kind = dg1.get(6).upper()
    if kind in _DIAGNOSIS_TYPE:
        coding = [{"system": _V2_0052, "code": kind, "display": _DIAGNOSIS_TYPE[kind]}]
        if kind == "A":
            coding.insert(0, {"system": _ROLE, "code": "AD", "display": "Admission diagnosis"})
        item["use"] = {"coding": coding}
    if rank:
        if rank.isascii() and rank.isdigit() and 0 < int(rank) < 2**31:
            item["rank"] = int(rank)
        else:
            ctx.find("warning", "v2.dg1-15.invalid", f"DG1-15 (priority) {rank[:8]!r} is no "
                     "positive number: not kept as the diagnosis's rank", dg1.loc(15))
    listed = enc.setdefault("diagnosis", [])
    if all(d.get("condition") != ref for d in listed):
        listed.append(item)


def procedure(ctx: Ctx, pr1: Seg, n: int) -> None:
    code = dt.concept(pr1.rep(3))
    if code is None or dt.filler_concept(pr1.rep(3)):
        if not pr1.get(4) or is_filler_text(pr1.get(4)):
            if code is None:
                ctx.find("warning", "v2.pr1-3.missing", "PR1-3 (procedure) and PR1-4 (its "
                         "description) are empty: no Procedure", pr1.loc(3))
            else:
                ctx.find("information", "v2.pr1-3.filler", "PR1-3 (procedure) is a filler with "
                         "no code (无, -, 不详): no resource made of it", pr1.loc(3))
            return
        # the description (PR1-4) names the procedure: a procedure sent without a code (it was
        # dropped without a word) or with a filler in place of one
        code = {}
    when = dt.datetime(pr1.get(5))
    res: dict[str, Any] = {"resourceType": "Procedure",
                           "id": ctx.id("Procedure", ctx.patient_key, dt.comp(pr1.rep(3), 1), when or n),
                           "status": "completed", "code": code, "subject": ctx.patient_ref}
    desc = pr1.get(4)
    if desc and "text" not in code:
        code["text"] = desc
    elif desc and desc != code["text"]:
        res["note"] = [{"text": desc}]  # the sender's description beside the code's own display
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    if when:
        res["performedDateTime"] = when
    kind = dt.concept(pr1.rep(6))  # functional type: anesthesia, procedure for treatment, ...
    if kind:
        res["category"] = kind
    performers = []
    for f, role in _PR1_ROLES:
        for i, rep in enumerate(pr1.field(f), 1):
            ref = practitioner(ctx, rep, pr1.loc(f, i))
            if ref:
                performers.append({"function": {"text": role}, "actor": ref})
    if performers:
        res["performer"] = performers
    minutes = pr1.get(7)  # anesthesia minutes
    if minutes.isascii() and minutes.isdigit() and 0 < int(minutes) < 10 ** 5:
        res.setdefault("note", []).append({"text": f"anesthesia minutes: {int(minutes)}"})
    reason = dt.concept(pr1.rep(15))  # associated diagnosis code
    if reason:
        res["reasonCode"] = [reason]
    ctx.add(res)


# PR1 people and the part each played (they all became plain actors)
_PR1_ROLES = ((8, "anesthesiologist"), (11, "surgeon"), (12, "procedure practitioner"))


def coverage(ctx: Ctx, in1: Seg, n: int) -> dict[str, str] | None:
    """IN1 -> Coverage; the insurer (IN1-3 id, IN1-4 name) becomes an Organization."""
    company = identifier(ctx, in1.rep(3), in1.loc(3), "entity") if dt.comp(in1.rep(3), 1) else None
    company_id = company["value"] if company else ""
    company_name = dt.comp_text(in1.rep(4), 1)
    plan = dt.concept(in1.rep(2))
    group = in1.get(8)
    if group and not ctx.usable(group, None, in1.loc(8), "group number"):
        group = ""
    policy = in1.get(36)
    if policy and not ctx.usable(policy, None, in1.loc(36), "policy number"):
        policy = ""
    policy = policy or group
    if not company_id and not company_name and plan is None:
        ctx.find("warning", "v2.in1.empty", "IN1 without insurer (3, 4) or plan (2) skipped", "IN1-3")
        return None
    payer: dict[str, Any] = {"resourceType": "Organization",
                             "id": ctx.id("Organization", "payer", company_id or company_name)}
    if company:
        payer["identifier"] = [company]
    payer["active"] = True
    if company_name:
        payer["name"] = company_name
    payer["type"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                  "code": "ins", "display": "Insurance Company"}]}]
    payer_ref = ctx.add(payer)
    res: dict[str, Any] = {"resourceType": "Coverage",
                           "id": ctx.id("Coverage", ctx.patient_key, dt.comp(in1.rep(2), 1),
                                        company_id or company_name, policy)}
    if policy:
        res["identifier"] = [{"value": policy}]
    res["status"] = "active"
    ptype = dt.concept(in1.rep(15))
    if ptype:
        res["type"] = ptype
    if policy:
        res["subscriberId"] = policy
    res["beneficiary"] = ctx.patient_ref
    rel = dt.concept(in1.rep(17))
    if rel:
        res["relationship"] = rel
    start, end = dt.date(in1.get(12)), dt.date(in1.get(13))
    if start or end:
        res["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    res["payor"] = [payer_ref]
    if plan and dt.comp(in1.rep(2), 1):
        cls: dict[str, Any] = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                                  "code": "plan"}]},
                               "value": dt.comp(in1.rep(2), 1)}
        if dt.comp(in1.rep(2), 2):
            cls["name"] = dt.comp(in1.rep(2), 2)
        res["class"] = [cls]
    if group:
        res.setdefault("class", []).append({"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group"}]}, "value": group})
    return ctx.add(res)
