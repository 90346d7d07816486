"""The part every message structure shares: PID -> Patient with what travels with it (NK1, PV1/PV2,
AL1/IAM, DG1, PR1, IN1). Below the builders and the segment modules that call it, so no two of them
import each other."""

from __future__ import annotations

from .clinical import allergy, condition, coverage, procedure
from .context import Ctx
from .encounter import encounter, role_participants
from .message import Seg
from .people import as_annotations, patient, primary_care, related_person
from .tables import table

_NOTE = "http://hl7.org/fhir/StructureDefinition/note"
_SECOND_PATIENT = frozenset(table("messages")["second_patient_segments"]["segments"])


def patient_context(ctx: Ctx, *, with_encounter: bool = True, every_pid_mapped: bool = False) -> dict:
    """The message's (first) patient and what the message says of it. ``every_pid_mapped``: the
    builder maps each further PID itself (a merge's PID/MRG pairs), so none is said left out."""
    msg = ctx.msg
    pid = msg.first("PID")
    if pid is None:
        raise ctx.error(f"{ctx.kind} has no PID segment", "PID", "v2.pid.missing")
    end = _first_patient_end(ctx, every_pid_mapped)
    pat = patient(ctx, pid)
    _patient_notes(ctx, pid, pat)
    pd1 = msg.first("PD1")
    if pd1 is not None:
        primary_care(ctx, pd1, pat)
    for n, nk1 in enumerate(msg.all("NK1"), 1):
        related_person(ctx, nk1, n)
    if with_encounter:
        pv1, pv2 = msg.first("PV1"), msg.first("PV2")
        if pv1 is not None and pv1.index < end:  # never the second patient's visit
            enc = encounter(ctx, pv1, pv2 if pv2 is not None and pv2.index < end else None)
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


def _first_patient_end(ctx: Ctx, every_pid_mapped: bool = False) -> int:
    """Where the first patient's segments end: at a second PID, after which only the segments of
    ``messages.json`` ``second_patient_segments`` may come (a merge's PID/MRG pairs, a link's two
    patients), which are not mapped. A second patient's results, orders or diagnoses would be
    written to the first: such a message is refused (kept for replay), never mapped."""
    pids = ctx.msg.all("PID")
    if len(pids) < 2:
        return len(ctx.msg.segments)
    second = pids[1]
    other = next((s for s in ctx.msg.segments[second.index + 1:] if s.name not in _SECOND_PATIENT), None)
    if other is not None:
        raise ctx.error(f"{ctx.kind} carries more than one patient (a second PID, followed by "
                        f"{other.name}): the mapper maps one patient per message and does not attach "
                        "another patient's data to the first; send one message per patient",
                        f"PID[{second.ordinal}]", "v2.pid.repeated")
    if not every_pid_mapped:
        ctx.find("information", "v2.pid.repeated", "only the first PID (patient) of the message is mapped", "PID")
    return second.index


def patient_notes(ctx: Ctx, pid: Seg) -> list[Seg]:
    """The NTE segments of the patient group: after the PID, among its PD1 and PRT (ORU_R01's
    PATIENT group, and ADT senders who write them there)."""
    out = []
    for seg in ctx.msg.segments[pid.index + 1:]:
        if seg.name == "NTE":
            out.append(seg)
        elif seg.name not in ("PD1", "PRT"):
            break
    return out


def _patient_notes(ctx: Ctx, pid: Seg, pat: dict) -> None:
    """A note about the patient (NTE after PID) -> the Patient's ``note`` extension (an Annotation,
    from the FHIR extensions pack). The v2-to-FHIR IG maps the patient group's NTE nowhere, and R4's
    Patient has no note element; a Flag would make every remark an alert, and a note on another
    resource would tie it to a visit or order it is not about. The note keeps its text and its
    NTE-5 author and NTE-6 time where sent."""
    notes = [{"url": _NOTE, "valueAnnotation": a} for a in as_annotations(ctx, patient_notes(ctx, pid))]
    if notes:
        pat.setdefault("extension", []).extend(notes)
