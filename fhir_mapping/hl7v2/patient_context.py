"""The part every message structure shares: PID -> Patient with what travels with it (NK1, PV1/PV2,
AL1/IAM, DG1, PR1, IN1). Below the builders and the segment modules that call it, so no two of them
import each other."""

from __future__ import annotations

from .clinical import allergy, condition, coverage, procedure
from .context import Ctx
from .encounter import encounter, role_participants
from .people import patient, primary_care, related_person


def patient_context(ctx: Ctx, *, with_encounter: bool = True) -> dict:
    msg = ctx.msg
    pid = msg.first("PID")
    if pid is None:
        raise ctx.error(f"{ctx.kind} has no PID segment", "PID", "v2.pid.missing")
    pat = patient(ctx, pid)
    pd1 = msg.first("PD1")
    if pd1 is not None:
        primary_care(ctx, pd1, pat)
    if len(msg.all("PID")) > 1:
        ctx.find("information", "v2.pid.repeated", "only the first PID (patient) of the message is mapped", "PID")
    for n, nk1 in enumerate(msg.all("NK1"), 1):
        related_person(ctx, nk1, n)
    if with_encounter:
        pv1 = msg.first("PV1")
        if pv1 is not None:
            enc = encounter(ctx, pv1, msg.first("PV2"))
            if enc is not None:
                role_participants(ctx, enc)
    for seg in msg.segments:
        if seg.name in ("AL1", "IAM"):
            allergy(ctx, seg)
    for n, dg1 in enumerate(msg.all("DG1"), 1):
        condition(ctx, dg1, n)
    for n, pr1 in enumerate(msg.all("PR1"), 1):
        procedure(ctx, pr1, n)
    for n, in1 in enumerate(msg.all("IN1"), 1):
        coverage(ctx, in1, n)
    return pat
