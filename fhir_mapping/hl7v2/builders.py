"""Per message structure: which segments become which resources. The table ``messages.json`` names
the builder of each type^trigger; every builder starts from the patient context (PID, PV1, NK1,
AL1/IAM, DG1, PR1, IN1) and adds what its structure carries."""

from __future__ import annotations

from collections.abc import Callable

from .context import Ctx
from .financial import charges
from .patient_context import patient_context
from .people import merge
from .reports import results
from .results import loose_observations


def adt(ctx: Ctx) -> None:
    patient_context(ctx)
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
