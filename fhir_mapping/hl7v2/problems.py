"""PPR^PC1/PC2/PC3 (problem add / update / delete): PRB -> Condition on the patient's problem list,
with the OBX that follow it as Observations (the Condition's evidence) and its NTE as notes.

A delete (PC3, or PRB-1 action DE) is not a FHIR delete: the Condition is written again with
verificationStatus ``entered-in-error`` and no clinicalStatus (FHIR invariant con-5), so the problem
leaves every problem list while its history (and who said what when) stays in the event log; "the
problem has gone" is a resolved clinical status, which PRB-14 says when the sender means it."""

from __future__ import annotations

from typing import Any

from . import datatypes as dt
from .context import Ctx
from .message import Seg
from .patient_context import patient_context
from .people import as_annotations, note_text
from .results import observation, occurrences
from .tables import table

_PROBLEM = table("codes")["problem"]
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                         "code": "problem-list-item", "display": "Problem List Item"}]}


def _groups(ctx: Ctx) -> list[tuple[Seg, list[Seg], list[Seg]]]:
    out: list[tuple[Seg, list[Seg], list[Seg]]] = []
    for seg in ctx.msg.segments:
        if seg.name == "PRB":
            out.append((seg, [], []))
        elif out and seg.name == "OBX":
            out[-1][1].append(seg)
        elif out and seg.name == "NTE" and not out[-1][1]:  # notes on the problem, not on an OBX
            if note_text(seg):
                out[-1][2].append(seg)
    return out


def build(ctx: Ctx) -> None:
    patient_context(ctx)
    groups = _groups(ctx)
    if not groups:
        raise ctx.error(f"{ctx.kind} has no PRB segment: there is no problem to map", "PRB", "v2.prb.missing")
    for prb, obxs, notes in groups:
        condition(ctx, prb, obxs, notes)


def condition(ctx: Ctx, prb: Seg, obxs: list[Seg], notes: list[Seg]) -> None:
    code = dt.concept(prb.rep(3))
    if code is None:
        raise ctx.error("PRB-3 (problem id) is empty: the Condition has no code", prb.loc(3), "v2.prb-3.missing")
    if dt.filler_concept(prb.rep(3)) and not obxs and not notes:
        # a problem "无" with nothing said of it is no problem (as CDA's cda.entry.absent-value);
        # with observations or notes after it, it is kept so that they stay tied to it
        ctx.find("information", "v2.prb-3.filler", "PRB-3 (problem) is a filler with no code "
                 "(无, -, 不详): no resource made of it", prb.loc(3))
        return
    instance = prb.get(4)
    if instance and not ctx.usable(instance, None, prb.loc(4), "problem instance id"):
        instance = ""
    key = ("I:" + instance) if instance else ("C:" + (dt.comp(prb.rep(3), 1) or code.get("text", "")))
    res: dict[str, Any] = {"resourceType": "Condition", "id": ctx.id("Condition", ctx.patient_key, "PRB", key)}
    if instance:
        ident = ctx.local_identifier("entity", instance)
        if ident:
            res["identifier"] = [ident]
    deleted = ctx.trigger == "PC3" or prb.get(1).upper() == "DE"
    abated = dt.datetime(prb.get(9))
    if deleted:
        res["verificationStatus"] = {"coding": [{"system": _VERIFICATION, "code": "entered-in-error"}]}
    else:
        clinical = _PROBLEM["clinical"].get(dt.comp(prb.rep(14), 1).upper()) or ("resolved" if abated else "active")
        res["clinicalStatus"] = {"coding": [{"system": _CLINICAL, "code": clinical}]}
        verification = _PROBLEM["verification"].get(dt.comp(prb.rep(13), 1).upper())
        if verification:
            res["verificationStatus"] = {"coding": [{"system": _VERIFICATION, "code": verification}]}
            if verification == "entered-in-error":
                del res["clinicalStatus"]
    res["category"] = [_CATEGORY]
    res["code"] = code
    res["subject"] = ctx.patient_ref
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    onset = dt.datetime(prb.get(16))
    if onset:
        res["onsetDateTime"] = onset
    elif prb.get(17):
        res["onsetString"] = prb.get(17)
    if abated and "clinicalStatus" in res and res["clinicalStatus"]["coding"][0]["code"] in (
            "resolved", "inactive", "remission"):
        res["abatementDateTime"] = abated
    recorded = dt.datetime(prb.get(7)) or dt.datetime(prb.get(2))
    if recorded:
        res["recordedDate"] = recorded
    evidence = [ref for nth, obx in zip(occurrences(obxs), obxs)
                if (ref := observation(ctx, obx, [], f"{res['id']}:PRB", nth))]
    if evidence:
        res["evidence"] = [{"detail": evidence}]
    if notes:
        res["note"] = as_annotations(ctx, notes)
    ctx.add(res)
