"""``hub v3 subscribe|subscriptions|unsubscribe|route|dead-letters|redeliver``: the platform bus
(``hub.v3routing``): who takes which accepted HL7 v3 messages, and their delivery."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from hub.core.commandline import UsageError, existing_data_dir, positive
from hub.core.config import Settings
from hub.core.signals import stop_on_signals

log = logging.getLogger("hub.v3routing")


def add_parsers(sub: Any, common: Any) -> None:
    p = sub.add_parser("v3", parents=[common],
                       help="the HL7 v3 bus: subscriptions to accepted messages and their delivery")
    vsub = p.add_subparsers(dest="v3_action", required=True)
    s = vsub.add_parser("subscribe", parents=[common],
                        help="a system takes the accepted messages of these interactions")
    s.add_argument("--subscriber", required=True, help="who takes them (a system's name)")
    s.add_argument("--interaction", action="append", required=True,
                   help="an interaction id (repeat for several; * for every one)")
    s.add_argument("--kind", action="append", default=[],
                   help="only messages about this (drug, lab, exam, pathology, transfusion, "
                        "surgery; repeat for several)")
    s.add_argument("--institution", default="", help="only from this institution")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--http", metavar="URL", help="POST each message to this URL")
    target.add_argument("--kafka", metavar="BOOTSTRAP", help="a Kafka cluster (with --topic)")
    s.add_argument("--topic", help="the Kafka topic")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds per delivery")
    ls = vsub.add_parser("subscriptions", parents=[common],
                         help="the subscriptions with their deliveries: pending, delivered, dead")
    ls.add_argument("--all", action="store_true", help="ended ones too")
    ls.add_argument("--json", action="store_true")
    u = vsub.add_parser("unsubscribe", parents=[common], help="end a subscription")
    u.add_argument("id", type=int)
    r = vsub.add_parser("route", parents=[common],
                        help="deliver to the subscribers until stopped (SIGTERM)")
    r.add_argument("--once", action="store_true",
                   help="deliver what can be delivered now, then exit")
    r.add_argument("--interval", type=positive(3600), default=0.5,
                   help="seconds between passes (at most an hour)")
    r.add_argument("--retention-days", type=positive(36500), default=7.0,
                   help="forget delivered messages after this many days")
    d = vsub.add_parser("dead-letters", parents=[common],
                        help="messages a subscriber refused, with its reason")
    d.add_argument("--subscription", type=int)
    d.add_argument("--json", action="store_true")
    rd = vsub.add_parser("redeliver", parents=[common], help="dead letters back to pending")
    rd.add_argument("subscription", type=int)
    rd.add_argument("seq", type=int, nargs="*", help="these messages (default: all)")


def _routes(settings: Settings, synchronous: str = "FULL"):
    from hub.v3routing import Routes

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Routes(settings.data_dir / "v3routes.sqlite", synchronous)


def cmd_v3(args: Any, settings: Settings) -> int:
    if args.v3_action != "subscribe":
        # what reads, changes or delivers what is there (a subscription may precede the hub's
        # first message, as a client's registration its first token)
        existing_data_dir(settings)
    # the router's marks need not survive an OS crash: a lost one repeats a delivery
    routes = _routes(settings, "NORMAL" if args.v3_action == "route" else "FULL")
    try:
        return _ACTIONS[args.v3_action](args, routes)
    finally:
        routes.close()


def _subscribe(args: Any, routes: Any) -> int:
    if args.kafka and not args.topic:
        raise UsageError("--kafka needs --topic")
    # what can never be delivered is refused here: a timeout of -5 or nan stopped `hub v3
    # route` for every subscriber, a URL of another scheme stayed pending for ever
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= 3600):
        raise UsageError(f"--timeout {args.timeout}: seconds, more than 0 and at most 3600")
    if args.http and urlsplit(args.http).scheme not in ("http", "https") or \
            (args.http and not urlsplit(args.http).netloc):
        raise UsageError(f"--http {args.http[:100]!r} is not an http(s) URL")
    from fhir_mapping.hl7v3.common import interactions

    unknown = [i for i in args.interaction if i != "*" and i not in interactions()]
    if unknown:  # no message of it is ever routed: the subscription would wait for nothing
        raise UsageError(f"--interaction {unknown[0][:60]!r} is no interaction the hub takes "
                         "(see /v3/metadata); * for every one")
    from hub.v3intake import known_kinds

    kinds = known_kinds()
    odd = [k for k in args.kind if k not in kinds]
    if odd:  # kinds match exactly: a subscription of another would never get a message
        raise UsageError(f"--kind {odd[0][:60]!r} is no kind of message: one of "
                         f"{', '.join(kinds)}")
    sink: dict[str, Any] = ({"type": "http", "url": args.http} if args.http else
                            {"type": "kafka", "bootstrap_servers": args.kafka, "topic": args.topic})
    sink["timeout_s"] = args.timeout
    try:
        sid = routes.subscribe(args.subscriber, args.interaction, sink, args.kind,
                               args.institution)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(sid)
    return 0


def _subscriptions(args: Any, routes: Any) -> int:
    rows = [r for r in routes.stats() if args.all or r["active"]]
    if args.json:
        for r in rows:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        return 0
    for r in rows:
        where = r["sink"].get("url") or f"{r['sink'].get('bootstrap_servers')}/{r['sink'].get('topic')}"
        print(f"{r['id']:>4} {r['subscriber']:16} {','.join(r['interactions']):40} "
              f"{','.join(r['kinds']) or '-':12} {where}  pending {r['pending']} delivered "
              f"{r['delivered']} dead {r['dead']}" + ("" if r["active"] else "  (ended)")
              + (f"  last error: {r['last_error']}" if r["last_error"] else ""))
    return 0


def _unsubscribe(args: Any, routes: Any) -> int:
    if not routes.unsubscribe(args.id):
        raise UsageError(f"no active subscription {args.id}")
    return 0


def _dead_letters(args: Any, routes: Any) -> int:
    for d in routes.dead_letters(args.subscription, limit=10_000):
        if args.json:
            sys.stdout.write(json.dumps(d, ensure_ascii=False) + "\n")
        else:
            print(f"{d['subscription']:>4} {d['seq']:>8} {d['interaction']:20} {d['message_id']:30}"
                  f" {d['reason']}")
    return 0


def _redeliver(args: Any, routes: Any) -> int:
    print(routes.redeliver(args.subscription, args.seq or None))
    return 0


def _route(args: Any, routes: Any) -> int:
    """Deliver until SIGTERM/SIGINT: a pass over the subscriptions, a pause, again; the sinks
    follow the subscriptions (one added or ended is seen at the next pass)."""
    from connectors.sinks import messages
    from connectors.sinks.base import Unavailable
    from hub.v3routing import route_once

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    if not args.once:
        stop_on_signals(stop.set)
    sinks: dict[int, Any] = {}
    pruned_at = 0.0
    try:
        while True:
            subs = {s.id: s for s in routes.subscriptions()}
            for sid in set(sinks) - set(subs):
                sinks.pop(sid).close()
            for sid, sub in subs.items():
                if sid not in sinks:
                    try:
                        sinks[sid] = messages.build(sub.sink)
                    except Exception as e:  # noqa: BLE001 - a broker unreachable at start: later
                        log.warning("subscription %s: sink not ready: %s", sid, e)
            done = route_once(routes, sinks, Unavailable)
            if any(done[k] for k in ("delivered", "retried", "dead")):
                log.info("routed: %s", done)
            if time.time() - pruned_at > 60:
                routes.prune(args.retention_days * 86400)
                pruned_at = time.time()
            if stop.is_set():
                return 0
            if done["delivered"] or done["dead"]:
                continue  # more may be waiting behind this pass's batch: at once
            if args.once or stop.wait(args.interval):
                return 0
    finally:
        for sink in sinks.values():
            sink.close()


_ACTIONS = {"subscribe": _subscribe, "subscriptions": _subscriptions,
            "unsubscribe": _unsubscribe, "route": _route, "dead-letters": _dead_letters,
            "redeliver": _redeliver}
