"""One Provenance per message: every resource made as target, MSH-7 as recorded, the sending
institution as agent, MSH-10 as the source entity, the trigger as activity."""

from __future__ import annotations

from typing import Any

from . import datatypes as dt
from .context import Ctx
from .tables import table

_MSG = table("messages")


def provenance(ctx: Ctx, activity: str) -> dict:
    msh = ctx.msg.msh
    control_id = msh.get(10)
    recorded = dt.datetime(msh.get(7), instant=True)
    if recorded is None:
        evn = ctx.msg.first("EVN")
        recorded = dt.datetime(evn.get(2), instant=True) if evn is not None else None
        if recorded is None:
            raise ctx.error(f"MSH-7 (date/time of message) {msh.get(7)!r} is not a v2 date/time "
                            "with at least a day, and EVN-2 gives none either", "MSH-7", "v2.msh7.invalid")
        ctx.find("warning", "v2.msh7.invalid", "MSH-7 unusable; EVN-2 used as the recorded time", "MSH-7")
    targets = [{"reference": f"{r['resourceType']}/{r['id']}"} for r in ctx.resources()]
    codings: list[dict[str, Any]] = [{"system": _MSG["activity_system"], "code": activity}]
    if ctx.trigger:
        codings.append({"system": _MSG["event_system"], "code": ctx.trigger})
    what: dict[str, Any] = {"identifier": {"value": control_id}, "display": f"{ctx.kind} {control_id}"}
    msg_system = ctx.local_system("message")
    if msg_system:
        what["identifier"] = {"system": msg_system, "value": control_id}
    res = {
        "resourceType": "Provenance",
        # the control id with the message's time: a sender that starts its counter again (the
        # same MSH-10 for another message) overwrote the first message's lineage; a message
        # sent again keeps its one Provenance
        "id": ctx.id("Provenance", control_id, recorded),
        "target": targets,
        "recorded": recorded,
        "activity": {"coding": codings, "text": ctx.kind},
        "agent": [{"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
            "who": ctx.org_ref}],
        "entity": [{"role": "source", "what": what}],
    }
    ctx.add(res)
    return res
