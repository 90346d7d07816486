"""The audit of access to patient data, written as FHIR AuditEvents to the audit log.

``AuditWriter`` writes AuditEvents to the audit log's spool (``hub.access.auditlog``); a request
is answered only after its event is there, so no answered read goes unaudited even if the
process dies right after. ``AccessAudit`` is the
repository's ``AccessLog``: each read, vread, search and history of patient data, and each
refused or failed attempt, becomes one AuditEvent shaped after IHE Basic Audit Log Patterns
(the RESTful interaction as subtype; the user or client as requesting agent, with its
institution and network address; the Patients whose data was handed out as entities; the
purpose of use).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from hub.access.auditlog import AuditLog, Entry
from hub.access.chain import AuditChain, seal_of
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.ingest import Context, now_instant

USER_SYSTEM = "https://fhir-region-hub.example/user"
INSTITUTION_EXT = "https://fhir-region-hub.example/StructureDefinition/agent-institution"
ACTREASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
READS = ("read", "vread", "history-instance", "history-type", "history-system")
MAX_ENTITIES = 100  # a page of a thousand matches names its Patients, not every resource


class AuditWriter:
    """Seals AuditEvents into this process's hash chain and spools them (``AuditLog.spool``):
    ``write`` returns once the event is in the spool file, which is what a crash of this
    process cannot undo; the log's background mover (``AuditLog.start``) commits spooled
    events to the tables in bulk. One lock keeps the spool in the chain's order."""

    def __init__(self, log: AuditLog, chain: AuditChain | None = None):
        self.log = log
        # each AuditEvent sealed into a hash chain (hub.access.chain), one chain per writer
        self.chain = chain if chain is not None else AuditChain.new()
        self._lock = threading.Lock()

    def write(self, d: dict) -> str:
        """Write AuditEvent ``d``; its id. Raises a ``FhirError`` for content that cannot be
        stored (the chain does not move), an ``OSError`` when the spool could not be written
        (the chain then starts afresh: whether a torn line was left is not known)."""
        with self._lock:
            before = self.chain.state()
            entry = self._entry(d)
            try:
                self.log.spool.write(entry)
            except (OSError, FhirError) as e:  # a FhirError before writing: the chain goes back
                self.chain = self.chain.failed(before, e)
                raise
            return entry.id

    def close(self) -> None:
        """Close the spool file and move what is spooled into the tables."""
        with self._lock:
            self.log.spool.close()
        self.log.move_spooled()

    def _entry(self, d: dict) -> Entry:
        """``d`` sealed into the chain, with its id and meta (neither is hashed)."""
        body = self.chain.seal(d)
        seal = seal_of(body)
        assert seal is not None
        # time first, so that ids arrive in order in the id index (a page, not a page per row)
        rid = f"{time.time_ns() // 1000:014x}{uuid.uuid4().hex[:18]}"
        recorded = d.get("recorded") if isinstance(d.get("recorded"), str) else now_instant()[0]
        out = {"resourceType": "AuditEvent", "id": rid,
               "meta": {"versionId": "1", "lastUpdated": recorded}}
        out.update((k, v) for k, v in body.items() if k not in out)
        return Entry(rid, out, seal.chain, seal.seq)


def access_event(ctx: Context, action: Action, outcome: str, patients: Sequence[str],
                 handed: Sequence[tuple[str, str]], detail: str | None = None) -> dict:
    """The AuditEvent of one access (IHE BALP: RESTful interaction, requesting agent,
    Patients and resources as entities)."""
    actor = ctx.actor
    human = actor.kind in ("user", "anonymous")
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                             "extra-security-role-type",
                             "code": "humanuser" if human else "dataprocessor",
                             "display": "human user" if human else "data processor"}]},
        "who": {"identifier": {"system": USER_SYSTEM, "value": actor.subject},
                "display": actor.subject},
        "requestor": True,
    }
    if actor.institution:
        agent["extension"] = [{"url": INSTITUTION_EXT, "valueString": actor.institution}]
    if ctx.address:
        agent["network"] = {"address": ctx.address[:64], "type": "2"}
    subtype = {"system": "http://hl7.org/fhir/restful-interaction", "code": action.interaction}
    if action.operation:
        subtype = {"system": "http://hl7.org/fhir/restful-interaction", "code": "operation",
                   "display": action.operation}
    recorded, _ = now_instant()
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "Restful Operation"},
        "subtype": [subtype],
        "action": "R" if action.interaction in READS else "E",
        "recorded": recorded,
        "outcome": outcome,
    }
    if detail:
        out["outcomeDesc"] = detail[:512]
    if actor.purpose:
        out["purposeOfEvent"] = [{"coding": [{"system": ACTREASON, "code": actor.purpose}]}]
    out["agent"] = [agent]
    out["source"] = {"observer": {"display": "fhir-region-hub"},
                     "type": [{"system": "http://terminology.hl7.org/CodeSystem/"
                               "security-source-type", "code": "4",
                               "display": "Application Server"}]}
    entities: list[dict] = []
    for p in patients[:MAX_ENTITIES]:
        entities.append({"what": {"reference": p},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/"
                                  "audit-entity-type", "code": "1", "display": "Person"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                  "code": "1", "display": "Patient"}})
    if action.interaction in ("read", "vread") or not patients:
        for rtype, rid in handed[:MAX_ENTITIES - len(entities)]:
            if rtype == "Patient" and f"Patient/{rid}" in patients:
                continue
            entities.append({"what": {"reference": f"{rtype}/{rid}"},
                             "type": {"system": "http://terminology.hl7.org/CodeSystem/"
                                      "audit-entity-type", "code": "2",
                                      "display": "System Object"},
                             "role": {"system": "http://terminology.hl7.org/CodeSystem/"
                                      "object-role", "code": "4", "display": "Domain Resource"}})
    if ctx.query:
        entities.append({"type": {"system": "http://terminology.hl7.org/CodeSystem/"
                                  "audit-entity-type", "code": "2", "display": "System Object"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                  "code": "24", "display": "Query"},
                         "description": ctx.query[:1024]})
    if action.rid and not handed and action.rtype:  # a refused read names what was asked for
        entities.append({"what": {"reference": f"{action.rtype}/{action.rid}"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                  "code": "4", "display": "Domain Resource"}})
    if entities:
        out["entity"] = entities
    return out


class AccessAudit:
    """The repository's access log: one AuditEvent per access, committed before the answer."""

    def __init__(self, writer: AuditWriter):
        self.writer = writer

    def record(self, ctx: Context, action: Action, outcome: str, patients: Sequence[str],
               handed: Sequence[tuple[str, str]], detail: str | None = None) -> None:
        try:
            self.writer.write(access_event(ctx, action, outcome, patients, handed, detail))
        except (FhirError, OSError) as e:
            raise FhirError(503, "transient", "The access could not be audited, so it is not "
                            "answered; retry") from e
