"""``hub connector run|status|register|unregister|list``, ``hub deadletter list|show|replay`` and ``hub ingest-worker``.

Registered by ``hub.cli``; user mistakes raise ``hub.commandline.UsageError`` (one line on stderr,
exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import orjson

from hub.core.commandline import UsageError, at_least, existing_data_dir, kafka_topic


def add_parsers(sub, common) -> None:
    p = sub.add_parser("connector", parents=[common],
                       help="run a connector daemon, show its status, or register it with the "
                            "hub's console (register CONFIG [--url], unregister NAME, list)")
    # one parser per action, each with its own CONFIG: options go before or after it (with
    # CONFIG an optional positional beside the action, `status --json CONFIG` left it unparsed)
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_help = "the connector's YAML configuration"
    r = csub.add_parser("run", parents=[common], help="run the connector daemon")
    r.add_argument("config", type=Path, metavar="CONFIG", help=config_help)
    r.add_argument("--log-level", default="INFO")
    st = csub.add_parser("status", parents=[common],
                         help="its counters per source (from its spool) and whether it runs")
    st.add_argument("config", type=Path, metavar="CONFIG", help=config_help)
    st.add_argument("--json", action="store_true", help="status as JSON")
    rg = csub.add_parser("register", parents=[common],
                         help="record it for the hub's console: its status URL and admin token")
    rg.add_argument("config", type=Path, metavar="CONFIG", help=config_help)
    rg.add_argument("--url", help="its status endpoint as the hub reaches it (default: the "
                                  "configuration's status host and port)")
    u = csub.add_parser("unregister", parents=[common], help="forget a registered connector")
    u.add_argument("config", metavar="NAME", help="the connector's name")
    ls = csub.add_parser("list", parents=[common], help="the registered connectors")
    ls.add_argument("--json", action="store_true", help="the list as JSON")

    p = sub.add_parser("deadletter", parents=[common],
                       help="list, show and replay dead letters of a connector or the ingest worker")
    # a parser per action, as `hub connector`'s: `show --json 3` left the ids unparsed
    letters = argparse.ArgumentParser(add_help=False)
    where = letters.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="a connector's YAML configuration")
    where.add_argument("--worker", action="store_true",
                       help="the ingest worker's dead letters in the data directory")
    letters.add_argument("--json", action="store_true")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", parents=[common, letters], help="the open dead letters")
    dl.add_argument("--all", action="store_true", help="also those replayed")
    dl.set_defaults(ids=[])
    ds = dsub.add_parser("show", parents=[common, letters], help="dead letters with their payload")
    ds.add_argument("ids", nargs="+", type=int, metavar="ID", help="dead letter ids")
    ds.set_defaults(all=False)
    dr = dsub.add_parser("replay", parents=[common, letters],
                         help="send dead letters again (after the fix)")
    dr.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids")
    dr.add_argument("--all", action="store_true", help="every open one")

    p = sub.add_parser("ingest-worker", parents=[common],
                       help="consume connector units from Kafka and write them (a consumer group)")
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--topic", action="append", required=True, help="topic (repeatable)")
    p.add_argument("--group", default="hub-ingest-worker")
    p.add_argument("--max-records", type=at_least(1), default=500)
    p.add_argument("--session-timeout-ms", type=int, default=10000,
                   help="consumer group session timeout (a broker may hold joins for part of it)")
    p.add_argument("--log-level", default="INFO")


def _usage(msg: str) -> UsageError:
    return UsageError(msg)


def _load(config: Path):
    from connectors.config import ConfigError, ConnectorConfig

    if not config.exists():
        raise _usage(f"{config} does not exist")
    try:
        return ConnectorConfig.load(config)
    except ConfigError as e:
        raise _usage(str(e)) from None


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_connector(args, settings) -> int:
    if args.action in ("list", "unregister"):
        return _watched(args, settings)
    cfg = _load(args.config)
    if args.action == "register":
        return _register(cfg, args.url, settings)
    if args.action == "run":
        from connectors.base import CannotStart
        from connectors.config import ConfigError
        from connectors.daemon import Connector

        _logging(args.log_level)
        try:
            conn = Connector(cfg)
        except (ConfigError, CannotStart) as e:  # CannotStart: its state_dir in use
            raise _usage(str(e)) from None
        try:  # announced once its listeners are bound, as `hub serve` checks its port first
            conn.run(started=lambda: print(
                f"connector {cfg.name}: {len(conn.sources)} sources, sink {cfg.sink['type']}, "
                f"state in {cfg.state_dir}", flush=True))
        except CannotStart as e:  # a port in use, a host that does not resolve: one line
            raise _usage(str(e)) from None
        print(f"connector {cfg.name} stopped", flush=True)
        return 0
    return _status(cfg, args.json)


def _register(cfg, url: str | None, settings) -> int:
    """Record the daemon for the hub's console: its status URL, its admin token and its
    institution (whose people alone, with the region's, see its dead letters)."""
    from connectors.config import ConfigError, admin_token
    from hub.daemons import DaemonRegistry

    status = cfg.status
    if url is None:
        if status.get("port") in (None, 0):
            raise _usage("the configuration names no fixed status port: say where with --url")
        host = status.get("host", "127.0.0.1")
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{status['port']}"
    token_file = status.get("admin_token_file")
    try:
        token = admin_token(token_file) if token_file else None
    except ConfigError as e:
        raise _usage(str(e)) from None
    try:
        DaemonRegistry(settings.data_dir).add(cfg.name, url, token,
                                              cfg.source_info.institution)
    except ValueError as e:
        raise _usage(str(e)) from None
    print(f"connector {cfg.name} registered at {url}"
          + ("" if token else " (no admin_token_file: its dead letters are not reachable)"))
    return 0


def _watched(args, settings) -> int:
    from hub.daemons import DaemonRegistry

    existing_data_dir(settings)  # a mistyped --data-dir listed none, or removed none, exit 0
    registry = DaemonRegistry(settings.data_dir)
    if args.action == "unregister":
        if not registry.remove(str(args.config)):
            raise _usage(f"no connector {args.config} is registered")
        print(f"connector {args.config} unregistered")
        return 0
    daemons = registry.list()
    if args.json:
        print(json.dumps([{"name": d.name, "url": d.url, "admin": bool(d.token)}
                          for d in daemons], indent=2))
        return 0
    print(f"{len(daemons)} registered connectors")
    for d in daemons:
        print(f"  {d.name:24} {d.url}" + ("" if d.token else "  (no admin token)"))
    return 0


def _status(cfg, as_json: bool) -> int:
    from connectors.spool import Spool

    if not cfg.spool_path.exists():
        raise _usage(f"no spool in {cfg.state_dir}: the connector has not run yet")
    live = None
    url_file = cfg.state_dir / "status.url"
    if url_file.exists():
        import httpx  # here: the parsers of this module are built for every `hub` command

        from hub.core import httpclient

        try:
            live = httpclient.get(url_file.read_text().strip() + "/status", timeout=3).json()
        except (httpx.HTTPError, ValueError):
            live = None
    spool = Spool(cfg.spool_path, cfg.source_info)
    try:
        counters = spool.counters()
        checkpoints = spool.checkpoints()
    finally:
        spool.close()
    names = [s["name"] for s in cfg.sources]
    names += [n for n in counters if n not in names]
    out = {"connector": cfg.name, "running": live is not None,
           "sink": (live or {}).get("sink"), "sources": {}}
    for n in names:
        d = {"received": 0, "converted": 0, "delivered": 0, "failed": 0, "findings": 0, "lag": 0,
             "deadletters": 0, **counters.get(n, {})}
        if live and n in live.get("sources", {}):
            d["alive"] = live["sources"][n].get("alive")
        out["sources"][n] = d
    out["checkpoints"] = checkpoints
    if as_json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    state = "running" if live else "not running"
    sink = out["sink"] or {}
    print(f"connector {cfg.name}: {state}" + (f", sink {sink.get('state')}" if sink else "")
          + (f" ({sink.get('error')})" if sink.get("error") else ""))
    print(f"  {'source':16} {'received':>9} {'converted':>9} {'delivered':>9} {'failed':>7} "
          f"{'findings':>8} {'lag':>6} {'dead':>5}")
    for n, d in out["sources"].items():
        print(f"  {n:16} {d['received']:>9} {d['converted']:>9} {d['delivered']:>9} "
              f"{d['failed']:>7} {d['findings']:>8} {d['lag']:>6} {d['deadletters']:>5}")
    return 0


def _deadletter_store(args, settings):
    from connectors.spool import Spool

    if args.config:
        cfg = _load(args.config)
        if not cfg.spool_path.exists():
            raise _usage(f"no spool in {cfg.state_dir}")
        from connectors.spool import default_converter_factory
        from connectors.terminology import Terminology

        # a replay converts again, so it normalises local codes as the daemon does
        factory = Terminology.from_config(cfg).converter_factory(default_converter_factory)
        return Spool(cfg.spool_path, cfg.source_info, converter_factory=factory), None
    if args.worker:
        from hub.worker import deadletter_path

        path = deadletter_path(settings)
        if not path.exists():
            raise _usage(f"no ingest-worker dead letters in {settings.data_dir}")
        return Spool(path), "worker"
    raise _usage("say whose dead letters: --config CONNECTOR.yaml or --worker")


def cmd_deadletter(args, settings) -> int:
    store, who = _deadletter_store(args, settings)
    try:
        if args.action == "list":
            rows = store.deadletters(None if args.all else "open")
            if args.json:
                print(json.dumps(rows, indent=2, default=str))
                return 0
            print(f"{len(rows)} {'dead letters' if args.all else 'open dead letters'}")
            for r in rows:
                reason = (r["error"] or {}).get("reason", "")
                print(f"  #{r['id']:<5} {r['time']}  {r['status']:9} {r['stage']:8} {r['source']:12} "
                      f"{r['unit_id'] or '-':20} {reason[:100]}")
            return 0
        if args.action == "show":
            if not args.ids:
                raise _usage("show needs a dead letter id")
            for i in args.ids:
                dl = store.deadletter(i)
                if dl is None:
                    raise _usage(f"no dead letter {i}")
                payload = dl.pop("payload")
                if args.json:
                    dl["payload"] = payload.decode("utf-8", "replace")
                    print(json.dumps(dl, indent=2, default=str, ensure_ascii=False))
                    continue
                for k in ("id", "time", "status", "stage", "source", "kind", "unit_id"):
                    print(f"{k:9} {dl[k]}")
                print(f"error     {json.dumps(dl['error'], ensure_ascii=False)}")
                print(f"meta      {json.dumps(dl['meta'], ensure_ascii=False, default=str)}")
                if dl["replayed"]:
                    print(f"replayed  {dl['replayed']} {json.dumps(dl['replay_result'])}")
                print("payload:")
                print(payload.decode("utf-8", "replace").replace("\r", "\n"))
            return 0
        # replay
        # --all: what can be written again (a block refused as received is a fragment)
        from connectors.spool import is_cut

        ids = args.ids or ([r["id"] for r in store.deadletters("open") if not is_cut(r)]
                           if args.all else [])
        if not ids:
            raise _usage("replay needs dead letter ids or --all")
        from tqdm import tqdm

        from hub.core.jobs import Jobs, Unrecorded

        # a progress bar on a terminal, the job where the hub's console shows it (a connector's
        # host, with no hub data directory, has no console to show it)
        job = Jobs(settings.data_dir).start(
            "deadletter-replay", f"dead letter replay ({who or args.config.name}): {len(ids)}",
            len(ids)) if who == "worker" or settings.data_dir.is_dir() else Unrecorded(len(ids))
        with tqdm(total=len(ids), unit=" letters", desc="replay",
                  disable=not sys.stderr.isatty()) as bar, job:
            if who == "worker":
                from hub.worker import replay_deadletters

                results = replay_deadletters(store, ids, settings)
                bar.update(len(ids))
                job.advance(len(ids))
            else:
                results = []
                for i in ids:
                    try:
                        a = store.replay(i)
                        results.append((i, a.ok, a.error, a.deadletter_id))
                    except (KeyError, ValueError) as e:
                        results.append((i, False, {"reason": str(e).strip("'\"")}, None))
                    bar.update(1)
                    job.advance(1)
            job.finish(f"{sum(1 for r in results if r[1])} replayed, "
                       f"{sum(1 for r in results if not r[1])} failed")
        failed = 0
        for i, ok, error, new_id in results:
            if ok:
                print(f"  #{i}: replayed" + ("" if who == "worker" else
                                              ", spooled for delivery"))
            else:
                failed += 1
                print(f"  #{i}: failed again: {(error or {}).get('reason')}"
                      + (f" (dead letter #{new_id})" if new_id else ""))
        print(f"{len(results) - failed} replayed, {failed} failed")
        return 1 if failed else 0
    finally:
        store.close()


def cmd_ingest_worker(args, settings) -> int:
    from hub.worker import IngestWorker

    _logging(args.log_level)
    ms = args.session_timeout_ms
    for topic in args.topic:
        kafka_topic(topic)
    worker = IngestWorker(settings, args.bootstrap_servers, args.topic, group=args.group,
                          max_records=args.max_records,
                          consumer={"session_timeout_ms": ms,
                                    "heartbeat_interval_ms": max(100, ms // 10)})
    print(f"ingest worker: group {args.group}, topics {', '.join(args.topic)}, data "
          f"{settings.database_url and 'PostgreSQL' or settings.data_dir}", flush=True)
    worker.run()
    return 0


def dumps(d) -> str:
    return orjson.dumps(d, option=orjson.OPT_INDENT_2).decode()
