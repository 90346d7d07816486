"""The audit of access to patient data, written as FHIR AuditEvents in the hub's own log.

``AuditWriter`` group-commits AuditEvents (a request waits for the commit of its own, so no
answered read goes unaudited even if the process dies right after). ``AccessAudit`` is the
repository's ``AccessLog``: each read, vread, search and history of patient data, and each
refused or failed attempt, becomes one AuditEvent shaped after IHE Basic Audit Log Patterns
(the RESTful interaction as subtype; the user or client as requesting agent, with its
institution and network address; the Patients whose data was handed out as entities; the
purpose of use).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from hub.access.chain import AuditChain
from hub.core.access import SYSTEM, Action
from hub.core.errors import FhirError
from hub.core.ingest import Context, Op, now_instant

USER_SYSTEM = "https://fhir-region-hub.example/user"
INSTITUTION_EXT = "https://fhir-region-hub.example/StructureDefinition/agent-institution"
ACTREASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
READS = ("read", "vread", "history-instance", "history-type", "history-system")
MAX_ENTITIES = 100  # a page of a thousand matches names its Patients, not every resource
WAIT_SECONDS = 30.0


class AuditWriter:
    """Writes AuditEvents as the hub itself, through ``writer`` (anything with
    ``execute(ops, ctx, atomic=...)``: a repository or the hub); a request waits for its own
    commit, and whatever queued meanwhile goes in the next transaction together (group
    commit)."""

    def __init__(self, writer: Any, batch: int = 256, chain: AuditChain | None = None):
        self.repo = writer
        self.batch = batch
        # each AuditEvent sealed into a hash chain (hub.access.chain), one chain per writer
        self.chain = chain if chain is not None else AuditChain.new()
        self._q: queue.Queue[tuple[dict, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, d: dict) -> Future:
        fut: Future = Future()
        self._q.put((d, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                return
            items = [first]
            while len(items) < self.batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            # sealed in queue order, committed in that order by one transaction
            before, ops, sealed = self.chain.state(), [], []
            for d, fut in items:
                try:
                    ops.append(Op("POST", "AuditEvent", d=self.chain.seal(d), url="AuditEvent"))
                    sealed.append((d, fut))
                except FhirError as e:
                    fut.set_exception(e)
            items = sealed
            if not items:
                continue
            ctx = Context(source={"feed": "audit"}, actor=SYSTEM)
            try:
                results = self.repo.execute(ops, ctx, atomic=False)
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                self.chain = self.chain.failed(before, e)
                for _, fut in items:
                    fut.set_exception(e)
                continue
            self.chain.written(before, results)
            for (_, fut), r in zip(items, results):
                if isinstance(r, FhirError):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)


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

    def __init__(self, writer: AuditWriter, wait: float = WAIT_SECONDS):
        self.writer = writer
        self.wait = wait

    def record(self, ctx: Context, action: Action, outcome: str, patients: Sequence[str],
               handed: Sequence[tuple[str, str]], detail: str | None = None) -> None:
        fut = self.writer.submit(access_event(ctx, action, outcome, patients, handed, detail))
        try:
            fut.result(timeout=self.wait)
        except (FutureTimeout, FhirError, OSError) as e:
            raise FhirError(503, "transient", "The access could not be audited, so it is not "
                            "answered; retry") from e
