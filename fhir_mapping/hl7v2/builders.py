"""Per message structure: which segments become which resources. The table ``messages.json`` names
the builder of each type^trigger; every builder starts from the patient context (PID, PV1, NK1,
AL1/IAM, DG1, PR1, IN1) and adds what its structure carries."""

from __future__ import annotations

from collections.abc import Callable

from .clinical import allergy, condition, coverage, procedure
from .context import Ctx
from .encounter import encounter
from .people import merge, patient, related_person


def patient_context(ctx: Ctx, *, with_encounter: bool = True) -> dict:
    msg = ctx.msg
    pid = msg.first("PID")
    if pid is None:
        raise ctx.error(f"{ctx.kind} has no PID segment", "PID", "v2.pid.missing")
    pat = patient(ctx, pid)
    if len(msg.all("PID")) > 1:
        ctx.find("information", "v2.pid.repeated", "only the first PID (patient) of the message is mapped", "PID")
    for n, nk1 in enumerate(msg.all("NK1"), 1):
        related_person(ctx, nk1, n)
    if with_encounter:
        pv1 = msg.first("PV1")
        if pv1 is not None:
            encounter(ctx, pv1, msg.first("PV2"))
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


def adt(ctx: Ctx) -> None:
    patient_context(ctx)
    from .results import loose_observations

    loose_observations(ctx)


def person(ctx: Ctx) -> None:
    patient_context(ctx, with_encounter=False)


def merge_patients(ctx: Ctx) -> None:
    pat = patient_context(ctx, with_encounter=False)
    mrgs = ctx.msg.all("MRG")
    if not mrgs:
        raise ctx.error(f"{ctx.kind} has no MRG segment naming the patient to merge", "MRG", "v2.mrg.missing")
    for mrg in mrgs[:1]:
        merge(ctx, mrg, pat)


def billing(ctx: Ctx) -> None:
    patient_context(ctx)


def _lazy(module: str, name: str) -> Callable[[Ctx], None]:
    def run(ctx: Ctx) -> None:
        import importlib

        getattr(importlib.import_module(f"fhir_mapping.hl7v2.{module}"), name)(ctx)

    return run


BUILDERS: dict[str, Callable[[Ctx], None]] = {
    "adt": adt,
    "person": person,
    "merge": merge_patients,
    "billing": billing,
    "results": _lazy("results", "build"),
    "orders": _lazy("orders", "build_service_requests"),
    "pharmacy": _lazy("orders", "build_medications"),
    "immunization": _lazy("orders", "build_immunizations"),
    "schedule": _lazy("scheduling", "build"),
    "document": _lazy("documents", "build"),
    "financial": _lazy("financial", "build"),
}
