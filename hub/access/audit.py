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

import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from hub.access.auditlog import AuditLog, Entry
from hub.access.chain import AuditChain, prepared, sealed
from hub.core.access import Action, Actor
from hub.core.errors import FhirError
from hub.core.ingest import Context, now_instant

log = logging.getLogger("hub.audit")

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
        (the chain then starts afresh: whether a torn line was left is not known). What needs
        no chain is done before taking the writer's turn."""
        ready = self._prepare(d)
        with self._lock:
            before = self.chain.state()
            entry = self._sealed(d, *ready)
            try:
                self.log.spool.write(entry)
            except (OSError, FhirError) as e:  # a FhirError before writing: the chain goes back
                self.chain = self.chain.failed(before, e)
                raise
            return entry.id

    def close(self) -> None:
        """Close the spool file and move what is spooled into the tables (kept in the spool for
        the next start if the database is gone)."""
        with self._lock:
            self.log.spool.close()
        try:
            self.log.move_spooled()
        except Exception:  # noqa: BLE001 - nothing is lost: the spool stays
            log.exception("the audit spool stays in %s until the next start", self.log.spool.dir)

    def _entry(self, d: dict) -> Entry:
        """``d`` sealed into the chain, with its id and meta (neither is hashed)."""
        return self._sealed(d, *self._prepare(d))

    @staticmethod
    def _prepare(d: dict) -> tuple[bytes, str, str]:
        """(canonical form, id, recorded): an id with the time first, so that ids arrive in
        order in the id index (a page, not a page per row)."""
        # (random bits from the interpreter's generator: os.urandom would be a system call,
        # which hands the interpreter lock to another thread and back on every access)
        rid = f"{time.time_ns() // 1000:014x}{random.getrandbits(72):018x}"
        given = d.get("recorded")
        recorded = given if isinstance(given, str) else now_instant()[0]
        return prepared(d), rid, recorded

    def _sealed(self, d: dict, body: bytes, rid: str, recorded: str) -> Entry:
        seal = self.chain.advance(body)
        out = {"resourceType": "AuditEvent", "id": rid,
               "meta": {"versionId": "1", "lastUpdated": recorded}}
        out.update(sealed(d, seal))
        return Entry(rid, out, seal.chain, seal.seq)


# The constant parts of an access's AuditEvent, shared by every event (never changed in place)
_TERMS = "http://terminology.hl7.org/CodeSystem/"
_REST = "http://hl7.org/fhir/restful-interaction"
_HUMAN = {"coding": [{"system": f"{_TERMS}extra-security-role-type", "code": "humanuser",
                      "display": "human user"}]}
_PROCESSOR = {"coding": [{"system": f"{_TERMS}extra-security-role-type", "code": "dataprocessor",
                          "display": "data processor"}]}
_TYPE = {"system": f"{_TERMS}audit-event-type", "code": "rest", "display": "Restful Operation"}
_SOURCE = {"observer": {"display": "fhir-region-hub"},
           "type": [{"system": f"{_TERMS}security-source-type", "code": "4",
                     "display": "Application Server"}]}
_PERSON = {"system": f"{_TERMS}audit-entity-type", "code": "1", "display": "Person"}
_OBJECT = {"system": f"{_TERMS}audit-entity-type", "code": "2", "display": "System Object"}
_PATIENT_ROLE = {"system": f"{_TERMS}object-role", "code": "1", "display": "Patient"}
_RESOURCE_ROLE = {"system": f"{_TERMS}object-role", "code": "4", "display": "Domain Resource"}
_QUERY_ROLE = {"system": f"{_TERMS}object-role", "code": "24", "display": "Query"}
_SUBTYPES = {i: {"system": _REST, "code": i} for i in (
    "read", "vread", "search-type", "search-system", "history-instance", "history-type",
    "history-system")}


def agent_who(actor: Actor) -> dict:
    """An AuditEvent agent's ``who``: the hub's clients and users by their subject under
    ``USER_SYSTEM``, an external provider's users under that provider's issuer (a subject is
    one agent only with its issuer), so ``AuditEvent?agent:identifier=system|value`` tells them
    apart while ``agent=subject`` finds every agent of that subject."""
    return {"identifier": {"system": actor.issuer or USER_SYSTEM, "value": actor.subject},
            "display": actor.named}


REVIEW = {"system": "https://fhir-region-hub.example/CodeSystem/audit-review",
          "code": "emergency-access-review", "display": "Break-the-glass access reviewed"}


def review_event(ctx: Context, reviewed: str, finding: str, note: str) -> dict:
    """The AuditEvent of an auditor's review of a break-the-glass access (``reviewed``: that
    access's AuditEvent id; ``finding``: ``justified`` or ``unjustified``): an event of the
    append-only log like the access itself, so the review is as tamper-evident as what it
    reviews."""
    actor = ctx.actor
    return {
        "resourceType": "AuditEvent", "type": REVIEW, "subtype": [REVIEW], "action": "E",
        "recorded": now_instant()[0], "outcome": "0",
        "outcomeDesc": f"{finding}: {note}"[:512],
        "agent": [{"type": _HUMAN, "requestor": True, "who": agent_who(actor)}],
        "source": _SOURCE,
        "entity": [{"what": {"reference": f"AuditEvent/{reviewed}"}, "type": _OBJECT,
                    "description": finding}],
    }


def access_event(ctx: Context, action: Action, outcome: str, patients: Sequence[str],
                 handed: Sequence[tuple[str, str]], detail: str | None = None) -> dict:
    """The AuditEvent of one access (IHE BALP: RESTful interaction, requesting agent,
    Patients and resources as entities)."""
    actor = ctx.actor
    agent: dict[str, Any] = {
        "type": _HUMAN if actor.kind in ("user", "anonymous") else _PROCESSOR,
        "who": agent_who(actor),
        "requestor": True,
    }
    if actor.institution:
        agent["extension"] = [{"url": INSTITUTION_EXT, "valueString": actor.institution}]
    if ctx.address:
        agent["network"] = {"address": ctx.address[:64], "type": "2"}
    if action.operation:
        subtype = {"system": _REST, "code": "operation", "display": action.operation}
    else:
        subtype = _SUBTYPES.get(action.interaction) or {"system": _REST, "code": action.interaction}
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _TYPE,
        "subtype": [subtype],
        "action": "R" if action.interaction in READS else "E",
        "recorded": now_instant()[0],
        "outcome": outcome,
    }
    if detail:
        out["outcomeDesc"] = detail[:512]
    if actor.purpose:
        out["purposeOfEvent"] = [{"coding": [{"system": ACTREASON, "code": actor.purpose}]}]
    out["agent"] = [agent]
    out["source"] = _SOURCE
    entities: list[dict] = [{"what": {"reference": p}, "type": _PERSON, "role": _PATIENT_ROLE}
                            for p in patients[:MAX_ENTITIES]]
    if action.interaction in ("read", "vread") or not patients:
        for rtype, rid in handed[:MAX_ENTITIES - len(entities)]:
            if rtype == "Patient" and f"Patient/{rid}" in patients:
                continue
            entities.append({"what": {"reference": f"{rtype}/{rid}"}, "type": _OBJECT,
                             "role": _RESOURCE_ROLE})
    if ctx.query:
        entities.append({"type": _OBJECT, "role": _QUERY_ROLE, "description": ctx.query[:1024]})
    if action.rid and not handed and action.rtype:  # a refused read names what was asked for
        entities.append({"what": {"reference": f"{action.rtype}/{action.rid}"},
                         "role": _RESOURCE_ROLE})
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
            # every Patient handed out is named (an auditor searches by patient): an access
            # handing out more than one event holds is recorded in several, alike but for
            # their Patients (those past the 100th went unrecorded)
            for i in range(0, max(len(patients), 1), MAX_ENTITIES):
                self.writer.write(access_event(ctx, action, outcome,
                                               patients[i:i + MAX_ENTITIES],
                                               handed if i == 0 else (), detail))
        except (FhirError, OSError) as e:
            raise FhirError(503, "transient", "The access could not be audited, so it is not "
                            "answered; retry") from e
