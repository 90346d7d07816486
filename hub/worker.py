"""``hub ingest-worker``: the hub side of the Kafka intake, a consumer group.

Connectors with a Kafka sink publish one record per converted unit (``connectors.sinks.kafka``),
keyed by patient. Workers of one group share the partitions; each poll is written through the
in-process hub (``hub.api.bundles.process`` with a batch Bundle: validation, dedupe, versioning,
one store transaction per sub-batch) and the offsets are committed only after the hub committed.

Delivery is at least once, writes are idempotent (PUT of identical content is a no-op), and a
sub-batch never holds two different writes of one resource, so records processed again after a
crash or a rebalance change nothing. Units the hub refuses go to a dead-letter table in the data
directory (``ingest-deadletters.sqlite``): ``hub deadletter list|show|replay --worker``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import orjson

from connectors.kinds import two_under_one_id
from connectors.sinks.base import RETRY_STATUS
from fhir_mapping import source_order
from fhir_mapping.base import Conversion
from hub.core import resource as res
from hub.core.commandline import open_store
from hub.core.config import Settings
from hub.core.errors import FhirError, HubError
from hub.core.signals import stop_on_signals

log = logging.getLogger("hub.worker")



def deadletter_path(settings: Settings) -> Path:
    return settings.data_dir / "ingest-deadletters.sqlite"


def _no_get(path: str, query: str, check: bool = False):
    raise FhirError(400, "not-supported", "GET entries are not run by the ingest worker")


class Transient(HubError):
    error_code = "unavailable"


def _unavailable(e: BaseException) -> bool:
    """Whether an error writing a batch is the store being away or busy (a lost or refused
    connection, a locked database, a full disk, too many concurrent changes, a file that cannot
    be written): the batch is tried again later, its partition held. Any other (a statement the
    store refuses for a unit's content, a bug the unit runs into) would recur for that unit."""
    import sqlite3

    import psycopg
    from eventsourcing.persistence import InterfaceError, OperationalError

    from hub.core.store import too_complex, too_large

    if isinstance(e, Transient):
        return True
    if isinstance(e, FhirError):
        return e.status >= 500 or e.status in RETRY_STATUS
    if isinstance(e, (OperationalError, InterfaceError, sqlite3.OperationalError,
                      sqlite3.InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)):
        # the engine's limits met by what the unit holds fail the same way every time
        return not (too_large(e) or too_complex(e))
    return isinstance(e, OSError)


def _conversion(unit: dict) -> Conversion:
    return Conversion.from_unit(unit)


def write_units(hub, units: list[dict], source: dict[str, Any],
                actor: Any = None) -> list[dict | None]:
    """Write units (dicts with resources/deletes) as one batch through the repository (``hub``:
    one, or a ``Hub`` to wrap in the open policy's) as ``actor`` (the hub's own by default);
    per unit None or its error. Raises Transient when the batch should be tried again (store
    unavailable, conflicts)."""
    from connectors.sinks.base import Unavailable, unit_errors
    from connectors.sinks.http import dedupe_entries
    from hub.api import bundles
    from hub.core.access import SYSTEM
    from hub.core.ingest import Context
    from hub.repository import Repository

    repo = hub if isinstance(hub, Repository) else Repository(hub)

    entries, positions = dedupe_entries([_conversion(u).entries() for u in units])
    if not entries:
        return [None] * len(units)
    try:
        out = bundles.process({"resourceType": "Bundle", "type": "batch", "entry": entries}, repo,
                              Context(source=source, actor=actor or SYSTEM), "", False, _no_get)
    except FhirError as e:
        if e.status >= 500 or e.status in RETRY_STATUS:
            raise Transient(str(e)) from None
        if len(units) == 1:
            return [{"reason": str(e), "code": "AE", "outcome": e.outcome()}]
        return [r for u in units for r in write_units(hub, [u], source, actor)]
    try:
        return unit_errors(entries, positions, out["entry"])
    except Unavailable as e:
        raise Transient(str(e)) from None


class IngestWorker:
    def __init__(self, settings: Settings, bootstrap_servers: str, topics: list[str],
                 group: str = "hub-ingest-worker", max_records: int = 500,
                 consumer: dict | None = None):
        from connectors.spool import Spool
        from hub.access.policy import AccessPolicy
        from hub.access.terminology import TerminologyGuard
        from hub.core.ingest import Hub
        from hub.repository import Repository

        self.settings = settings
        self.topics = topics
        self.hub = Hub(open_store(settings))
        # consents do not judge a feed's writes; the rest of the policy does (who owns what)
        # a feed's CodeSystem, NamingSystem or ConceptMap is refused (no read model here to
        # judge it against): it would re-point other institutions' codes
        self.repo = Repository(self.hub, policy=AccessPolicy(), terminology=TerminologyGuard(None))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.deadletters = Spool(deadletter_path(settings))
        self.cfg = {"bootstrap_servers": bootstrap_servers, "group_id": group,
                    "enable_auto_commit": False, "auto_offset_reset": "earliest",
                    "max_poll_records": int(max_records), "session_timeout_ms": 10000,
                    "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 300000,
                    **(consumer or {})}
        self.stop_event = threading.Event()
        self.stats = {"records": 0, "written": 0, "failed": 0, "batches": 0, "retries": 0}

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, install_signals: bool = True) -> None:
        from kafka import KafkaConsumer

        if install_signals:
            stop_on_signals(self.stop)
        consumer = KafkaConsumer(*self.topics, **self.cfg)
        log.info("ingest worker: group %s, topics %s", self.cfg["group_id"], self.topics)
        delay = 0.2
        try:
            while not self.stop_event.is_set():
                polled = consumer.poll(timeout_ms=500)
                if not polled:
                    continue
                try:
                    self.process(consumer, polled)
                    delay = 0.2
                except Transient as e:
                    self.stats["retries"] += 1
                    log.warning("ingest worker: retrying after %.1f s: %s", delay, e)
                    if self.stop_event.wait(delay):
                        break
                    delay = min(delay * 2, 10.0)
        finally:
            consumer.close()
            self.hub.store.close()
            self.deadletters.close()

    def process(self, consumer, polled) -> None:
        from kafka import OffsetAndMetadata

        records = [(tp, r) for tp, rs in polled.items() for r in rs]
        done = 0
        try:
            while done < len(records):
                sub: list[tuple[Any, Any, dict]] = []  # (partition, record, unit)
                seen: dict[str, bytes] = {}
                for tp, r in records[done:]:
                    unit, keys = _read(r.value, self.settings.max_string)
                    if sub and any(k in seen and seen[k] != v for k, v in keys.items()):
                        break
                    seen.update(keys)
                    sub.append((tp, r, unit))
                self._write(sub)
                commit = {}
                for tp, r, _ in sub:
                    commit[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
                consumer.commit(commit)
                done += len(sub)
        except BaseException:
            # Not written or not committed: read again from the first record not done.
            first: dict = {}
            for tp, r in records[done:]:
                first.setdefault(tp, r.offset)
            for tp, offset in first.items():
                try:
                    consumer.seek(tp, offset)
                except Exception:  # noqa: BLE001 - partition revoked meanwhile
                    pass
            raise

    def _write(self, sub) -> None:
        good = [(tp, r, u) for tp, r, u in sub if "error" not in u]
        if good:
            self._write_good(good)
        # unreadable records are dead letters once the batch they came in is written: before,
        # a write that failed for a while (the store away) dead-lettered them again each retry
        for tp, r, u in sub:
            if "error" in u:
                self._dead(tp, r, u, {"reason": u["error"], "code": "AR", "rule": "record"})

    def _write_good(self, good) -> None:
        # each unit is written as its own connector and institution (units of several hospitals
        # share a topic and a poll): stored with its owner, and held to the rule that a
        # connector changes only what its institution wrote, as through the REST API
        groups: dict[tuple[str, str], list[tuple[Any, Any, dict]]] = {}
        for item in good:
            u = item[2]
            key = (str(u.get("connector") or ""), str(u.get("institution") or ""))
            groups.setdefault(key, []).append(item)
        errors: dict[int, dict | None] = {}
        for (connector, institution), items in groups.items():
            source = unit_source(items[0][0].topic, connector, institution)
            actor = _feed_actor(connector, institution)
            try:
                found = write_units(self.repo, [u for _, _, u in items], source, actor)
            except Exception as e:  # noqa: BLE001 - the store away, or one unit's failure
                if _unavailable(e):
                    raise Transient(f"{type(e).__name__}: {e}") from None
                # which unit: each written alone, the one that fails again a dead letter (it
                # held its partition for ever, retried as an outage is)
                found = [self._write_alone(u, source, actor) for _, _, u in items]
            errors.update({id(item): err for item, err in zip(items, found)})
        self.stats["batches"] += 1
        for item in good:
            tp, r, u = item
            err = errors[id(item)]
            self.stats["records"] += 1
            if err is None:
                self.stats["written"] += 1
                self.deadletters.count(tp.topic, "delivered")
            else:
                self._dead(tp, r, u, err)

    def _write_alone(self, unit: dict, source: dict[str, Any], actor: Any) -> dict | None:
        """One unit of a batch that failed in an unexpected way, written by itself: None, its
        refusal, or the error it fails with while the store answers (a dead letter's reason).
        Transient when the store does not answer: an outage never makes dead letters."""
        try:
            return write_units(self.repo, [unit], source, actor)[0]
        except Exception as e:  # noqa: BLE001 - as the batch's
            if _unavailable(e):
                raise Transient(f"{type(e).__name__}: {e}") from None
            try:
                self.hub.store.max_notification_id()
            except Exception as away:  # noqa: BLE001 - whatever the store raises
                raise Transient(f"{type(e).__name__}: {e}; the store does not answer: "
                                f"{type(away).__name__}: {away}") from None
            import traceback

            log.error("ingest worker: a unit failed to be written: %s", type(e).__name__)
            # where it failed, for a fix (with the data, in the dead letter, not in the log)
            return {"reason": f"the hub failed writing the unit: {type(e).__name__}: "
                              f"{str(e)[:500]}",
                    "code": "AE", "rule": "hub.write-failed",
                    "trace": "".join(traceback.format_exception(e))[-4000:]}

    def _dead(self, tp, r, unit, error) -> None:
        self.stats["failed"] += 1
        dl = self.deadletters.add_deadletter(
            tp.topic, "unit", r.value or b"", {"topic": tp.topic, "partition": tp.partition,
                                        "offset": r.offset, "connector": unit.get("connector")},
            unit.get("unit_id"), "ingest", error)
        # the reason may quote the data: it stays in the dead letter, out of the log
        log.warning("ingest worker: record %s/%s@%s refused (%s), dead letter %s", tp.topic,
                    tp.partition, r.offset, error.get("rule") or error.get("code"), dl)


def _decode(value: bytes | None, max_string: int | None = None) -> dict:
    """A record as a connector unit, or {"error": why not}."""
    return _read(value, max_string)[0]


def _read(value: bytes | None, max_string: int | None = None) -> tuple[dict, dict[str, bytes]]:
    """A record as a connector unit and what it writes ("Type/id" -> content), or
    ({"error": why not}, {}). A record is anyone's bytes: whatever in it fails the conversion
    (a shape no check below foresaw) makes it a dead letter, never a worker that stops on it at
    every restart, its partition stalled."""
    try:
        unit = _unit(value, max_string)
        if "error" in unit:
            return unit, {}
        conv = _conversion(unit)
        keys = conv.write_keys()
        conv.entries()
    except Exception as e:  # noqa: BLE001 - the record's shape, not the hub's state
        return {"error": f"the record is not a connector unit: {type(e).__name__}: {str(e)[:200]}"}, {}
    return unit, keys


def _unit(value: bytes | None, max_string: int | None = None) -> dict:
    """A record as a connector unit, or {"error": why not}. Read as the API reads a body: a key
    given twice (one of its values silently dropped) and a string over ``max_string``
    (HUB_MAX_STRING) are refused here as there."""
    if value is None:
        return {"error": "the record has no value (a tombstone)"}
    try:
        # a mapper's decimals as written (1.50 stays 1.50)
        d = res.parse_json(value, "record", max_string=max_string)
    except FhirError as e:
        return {"error": f"the record is not JSON a connector writes: {str(e)[:200]}"}
    except (orjson.JSONDecodeError, ValueError, TypeError, RecursionError) as e:
        return {"error": f"the record is not JSON a connector writes: {str(e)[:200]}"}
    if not isinstance(d, dict) or not isinstance(d.get("resources", []), list) \
            or not isinstance(d.get("deletes", []), list):
        return {"error": "the record is not a connector unit"}
    for r in d.get("resources") or []:
        if not isinstance(r, dict) or not r.get("resourceType") or not r.get("id"):
            return {"error": "every resource of a unit needs resourceType and id"}
    clash = two_under_one_id(d.get("resources") or [])
    if clash is not None:
        r = d["resources"][clash[1]]
        return {"error": f"the unit holds two different {r['resourceType']}/{r['id']}"}
    for x in d.get("deletes") or []:
        if not isinstance(x, str) or "/" not in x:
            return {"error": "every deletion of a unit is a reference Type/id"}
    if d.get("order") is not None and (not isinstance(d["order"], dict)
                                       or not source_order.from_extensions([d["order"]])):
        # an order that says nothing would let the unit's deletes pass a newer source's write
        return {"error": "a unit's order is a source-order extension"}
    for k in ("connector", "institution", "unit_id"):
        if d.get(k) is not None and not isinstance(d[k], str):
            return {"error": f"a unit's {k} is a string"}
    return d


def unit_source(topic: str, connector: str, institution: str) -> dict[str, Any]:
    """The source recorded on a unit's write (each event's, the quality and intake counts'):
    the feed it came by, its topic, connector and institution."""
    source: dict[str, Any] = {"feed": "kafka", "topic": topic}
    if connector:
        source["connector"] = connector
    if institution:
        source["institution"] = institution
    return source


def _feed_actor(connector: str, institution: str) -> Any:
    """Who a unit is written as: its connector of its institution, held to what that
    institution wrote; the hub itself for a unit naming no institution (its connector was
    configured without one: nothing to hold it to)."""
    from hub.core.access import SYSTEM, Actor

    if not institution:
        return SYSTEM
    return Actor(subject=f"kafka:{connector or 'connector'}"[:128], kind="client",
                 roles=frozenset({"connector"}), scopes=("system/*.cruds",),
                 institution=institution)


def replay_deadletters(store, ids: list[int], settings: Settings):
    """Write dead-lettered units again (after a fix); [(id, ok, error, None)]."""
    from hub.access.policy import AccessPolicy
    from hub.access.terminology import TerminologyGuard
    from hub.core.ingest import Hub
    from hub.repository import Repository

    hub = Hub(open_store(settings))
    # written as the unit's own connector and institution, as the worker writes it: a replay
    # is no way round the rule that an institution changes only what it wrote
    repo = Repository(hub, policy=AccessPolicy(), terminology=TerminologyGuard(None))
    out: list[tuple[int, bool, dict | None, None]] = []
    try:
        for i in ids:
            dl = store.deadletter(i)
            if dl is None or dl["status"] != "open":
                out.append((i, False, {"reason": "no open dead letter with this id"}, None))
                continue
            unit = _decode(dl["payload"], settings.max_string)
            if "error" in unit:
                out.append((i, False, {"reason": unit["error"]}, None))
                continue
            connector = str(unit.get("connector") or "")
            institution = str(unit.get("institution") or "")
            # recorded as the worker records the unit (a connector's replay is delivered as it
            # was), not as a feed "replay": the counts and history say where it came from
            topic = str((dl["meta"] or {}).get("topic") or dl["source"])
            source = {**unit_source(topic, connector, institution), "deadletter": i}
            try:
                [err] = write_units(repo, [unit], source, _feed_actor(connector, institution))
            except Exception as e:  # noqa: BLE001 - said for this letter, the others go on
                err = {"reason": f"the hub cannot write now: {e}" if _unavailable(e) else
                       f"the hub failed writing the unit: {type(e).__name__}: {str(e)[:500]}"}
            store.mark_replayed(i, {"ok": err is None, "error": err}, err is None)
            out.append((i, err is None, err, None))
    finally:
        hub.store.close()
    return out
