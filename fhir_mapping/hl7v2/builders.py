"""Per message structure: which segments become which resources. The table ``messages.json`` names
the builder of each type^trigger; every builder starts from the patient context (PID, PV1, NK1,
AL1/IAM, DG1, PR1, IN1) and adds what its structure carries."""

from __future__ import annotations

from collections.abc import Callable

from .context import Ctx
from .financial import charges
from .message import Seg
from .patient_context import patient_context
from .people import merge, patient
from .reports import results
from .results import loose_observations


def adt(ctx: Ctx) -> None:
    patient_context(ctx)
    loose_observations(ctx)


def person(ctx: Ctx) -> None:
    patient_context(ctx, with_encounter=False)
    loose_observations(ctx)  # A28/A31 carry OBX (weight, blood group) as A01/A08 do


def merge_patients(ctx: Ctx) -> None:
    """Every PID/MRG pair (A40 may merge several): each MRG retires the patient it names into the
    PID before it, each pair judged as the first; a PID without its MRG (or an MRG without a PID)
    refuses the message rather than merging some pairs and not the others."""
    pat = patient_context(ctx, with_encounter=False, every_pid_mapped=True)
    if not ctx.msg.all("MRG"):
        raise ctx.error(f"{ctx.kind} has no MRG segment naming the patient to merge", "MRG", "v2.mrg.missing")
    key, ref = ctx.patient_key, ctx.patient_ref
    pairs: list[list[Seg]] = []
    for seg in ctx.msg.segments:
        if seg.name == "PID":
            pairs.append([seg])
        elif seg.name == "MRG":
            if not pairs or len(pairs[-1]) > 1:
                raise ctx.error("an MRG follows no PID of its own: the patient it merges into is not "
                                "named", seg.loc(1), "v2.mrg.unpaired")
            pairs[-1].append(seg)
    for n, pair in enumerate(pairs, 1):
        if len(pair) < 2:
            raise ctx.error(f"PID {n} of {len(pairs)} has no MRG naming the patient to merge into it: "
                            "no pair of the message is merged", pair[0].loc(3), "v2.mrg.unpaired")
        merge(ctx, pair[1], pat if n == 1 else patient(ctx, pair[0]))
    ctx.patient_key, ctx.patient_ref = key, ref  # the message's patient stays the first PID's


def financial(ctx: Ctx) -> None:
    patient_context(ctx)
    charges(ctx, require=True)
    results(ctx, require=False)  # the orders and results (OBR/OBX) a charge is for


def billing(ctx: Ctx) -> None:
    patient_context(ctx)
    results(ctx, require=False)  # BAR carries OBX (and OBR) the bill rests on: kept, not dropped


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
    "results": _lazy("reports", "build"),
    "orders": _lazy("orders", "build_service_requests"),
    "pharmacy": _lazy("orders", "build_medications"),
    "immunization": _lazy("orders", "build_immunizations"),
    "schedule": _lazy("scheduling", "build"),
    "document": _lazy("documents", "build"),
    "financial": financial,
    "problem": _lazy("problems", "build"),
}
