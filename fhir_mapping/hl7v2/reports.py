"""Order groups that carry results (ORU, OUL, and the OBR/OBX that BAR and DFT messages send): each OBR
becomes a ServiceRequest (the order) and a DiagnosticReport based on it, its OBX Observations based on
the same order and pointing to the group's Specimen (SPM, or OBR-15 before v2.5)."""

from __future__ import annotations

from .context import Ctx
from .financial import charges
from .orders import service_request
from .patient_context import patient_context
from .results import diagnostic_report, group_specimens, loose_observations, report_key, specimen, split_groups


def results(ctx: Ctx, *, require: bool) -> int:
    """Map every order group and every OBX outside one; returns the number of order groups. With
    ``require``, a message without OBR is refused (a result message must carry a report)."""
    groups, loose, early_spm = split_groups(ctx)
    if require and not groups:
        raise ctx.error(f"{ctx.kind} has no OBR segment: there is no report to map", "OBR", "v2.obr.missing")
    loose_observations(ctx, loose)
    early = [r for r in (specimen(ctx, s) for s in early_spm) if r]
    for g in groups:
        keyed = report_key(ctx, g.obr, g.orc)
        specimens = group_specimens(ctx, g, early, keyed[0])
        order = service_request(ctx, g, early, with_observations=False, keyed=keyed, specimens=specimens,
                                reported=True)
        diagnostic_report(ctx, g, early, keyed=keyed, specimens=specimens,
                          based_on=[{"reference": order["reference"]}])
    return len(groups)


def build(ctx: Ctx) -> None:
    patient_context(ctx)
    results(ctx, require=True)
    charges(ctx, require=False)
