"""The ``hub`` command: serve, ingest, demo, generate, show, history, projections, quality
report, quarantine (and the connector commands).

User mistakes (a missing file, a bad reference, an unreachable database) end with one clear line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from hub.core.commandline import UsageError, input_kind, iter_inputs, open_store
from hub.core.config import Settings
from hub.core.errors import FhirError
from hub.readmodels import names as read_model_names
from hub.readmodels import open_model

# the shared command helpers (hub.core.commandline) stay importable from hub.cli
__all__ = ["COMMANDS", "PROJECTIONS", "UsageError", "input_kind", "iter_inputs", "main",
           "open_store"]


def main(argv: list[str] | None = None) -> int:
    # The store options are accepted before and after the command (hub ingest --data-dir D ...).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="data directory (default $HUB_DATA_DIR or ./var)")
    common.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="postgresql://… event store instead of SQLite (default $HUB_DATABASE_URL)")
    parser = argparse.ArgumentParser(prog="hub", description="Regional FHIR integration hub",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the FHIR REST API", parents=[common])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1)

    p = sub.add_parser("ingest", help="validate and store FHIR JSON, Bundles and NDJSON",
                       parents=[common])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--institution", help="source institution recorded on every event")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="generate a synthetic demo region and load it", parents=[common])
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("generate", help="write a synthetic region as NDJSON files")
    p.add_argument("out", type=Path)
    p.add_argument("--people", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("show", help="print a resource (or one version of it)", parents=[common])
    p.add_argument("reference", help="Type/id or Type/id/_history/N")

    p = sub.add_parser("history", help="list the versions of a resource with their sources",
                       parents=[common])
    p.add_argument("reference", help="Type/id")

    sub.add_parser("reindex", parents=[common],
                   help="rebuild the store's write-side indexes from the event log (writers stopped)")

    p = sub.add_parser("projections", parents=[common],
                       help="read models that follow the event log: status, catch up, rebuild")
    p.add_argument("action", choices=["status", "run", "rebuild"])
    p.add_argument("name", nargs="?", default="search", choices=list(PROJECTIONS))

    p = sub.add_parser("quality", parents=[common], help="document quality: counts of findings")
    qsub = p.add_subparsers(dest="quality_action", required=True)
    q = qsub.add_parser("report", parents=[common],
                        help="documents and findings per institution, document type, rule and "
                             "day (brings the projection up to date first)")
    q.add_argument("--institution", action="append",
                   help="only this institution (repeat for several)")
    q.add_argument("--document-type", action="append", help="only this document type (C0005, …)")
    q.add_argument("--rule", action="append", help="only findings of this rule")
    q.add_argument("--since", help="checked on or after: YYYY[-MM[-DD]] (+08:00) or a date-time "
                                   "with its offset")
    q.add_argument("--until", help="checked on or before (same forms, inclusive)")
    q.add_argument("--group", default=",".join(QUALITY_DEFAULT_GROUP),
                   help="comma list of institution, document_type, rule, day, decision, severity "
                        "(default %(default)s; \"\" for totals only)")
    q.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    q.add_argument("--limit", type=int, help="at most this many rows")
    q.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("quarantine", parents=[common],
                       help="documents refused by quality control: list, show, replay")
    qsub = p.add_subparsers(dest="quarantine_action", required=True)
    q = qsub.add_parser("list", parents=[common], help="quarantined documents (open ones)")
    q.add_argument("--all", action="store_true", help="also the replayed and superseded ones")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q = qsub.add_parser("show", parents=[common], help="one entry with its quality report")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true", help="the entry as JSON (without the payload)")
    q.add_argument("--payload", action="store_true",
                   help="write the kept document, byte for byte, to stdout")
    q = qsub.add_parser("replay", parents=[common],
                        help="run quality control and mapping again; what passes is stored")
    q.add_argument("ids", nargs="*", type=int, metavar="ID")
    q.add_argument("--all", action="store_true", help="every open entry")
    q.add_argument("--json", action="store_true", help="one JSON result per line")

    # -- hub terminology: the command group (`load` and others join it) --
    p = sub.add_parser("terminology", parents=[common],
                       help="terminology: load code systems, value sets and maps; local "
                            "codes without a standard code, re-normalise")
    tsub = p.add_subparsers(dest="terminology_action", required=True)
    from terminology import cli_load, cli_normalise  # hub terminology unmapped|renormalise

    cli_load.add_parsers(tsub, common)  # hub terminology load FILE|DIR… [--builtin]
    cli_normalise.add_parsers(tsub, common)
    # -- end terminology --

    # -- hub mpi train|rematch (matching) --
    from hub.mpi import cli as mpi_cli

    mpi_cli.add_parsers(sub, common)
    # -- end mpi --

    # -- hub identity link|unlink|merge|unmerge|not-duplicate|review|show (identity) --
    p = sub.add_parser("identity", parents=[common],
                       help="master patient index decisions by a named user (identity events)")
    isub = p.add_subparsers(dest="identity_action", required=True)
    q = isub.add_parser("link", parents=[common], help="link a Patient to a person (or a new one)")
    q.add_argument("patient", help="Patient/id")
    q.add_argument("--person", help="Person id (default: a new person)")
    q = isub.add_parser("unlink", parents=[common], help="a Patient into a new person of its own")
    q.add_argument("patient")
    q = isub.add_parser("merge", parents=[common], help="merge person SOURCE into TARGET")
    q.add_argument("source")
    q.add_argument("target")
    q = isub.add_parser("unmerge", parents=[common], help="undo the merge of person SOURCE")
    q.add_argument("source")
    q = isub.add_parser("not-duplicate", parents=[common], help="mark two Patients as different")
    q.add_argument("patient")
    q.add_argument("other")
    q = isub.add_parser("review", parents=[common], help="the review queue: list, accept, reject")
    q.add_argument("review_action", choices=["list", "accept", "reject"])
    q.add_argument("review_id", nargs="?")
    q.add_argument("--candidate")
    q.add_argument("--status", default="open", choices=["open", "closed", "all"])
    q = isub.add_parser("show", parents=[common], help="print the Person of a person or Patient")
    q.add_argument("reference", help="Person id, Person/id or Patient/id")
    for q in isub.choices.values():
        q.add_argument("--user", default=os.environ.get("HUB_USER"),
                       help="who decides (default $HUB_USER); required for decisions")
        q.add_argument("--reason")
    # -- end identity --

    from connectors import cli as connector_cli  # hub connector|deadletter|ingest-worker

    connector_cli.add_parsers(sub, common)

    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as e:  # HUB_PORT=abc and the like
        print(f"hub: bad HUB_* environment setting: {e}", file=sys.stderr)
        return 2
    if getattr(args, "data_dir", None):
        settings.data_dir = Path(args.data_dir)
    if getattr(args, "database_url", None):
        settings.database_url = args.database_url
    try:
        return COMMANDS[args.command](args, settings)
    except (UsageError, FhirError, OSError) as e:
        print(f"hub {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - engines report connection problems in many types
        if type(e).__module__.startswith(("eventsourcing", "psycopg", "sqlite3")):
            print(f"hub {args.command}: event store error: {e}", file=sys.stderr)
            return 2
        raise


def cmd_serve(args, settings: Settings) -> int:
    import uvicorn

    from hub.api.app import create_app

    settings.host = args.host or settings.host
    settings.port = args.port or settings.port
    open_store(settings).close()  # fail now, with a clear line, if the store cannot be opened
    print(f"FHIR API on http://{settings.host}:{settings.port}/fhir "
          f"(data: {settings.database_url and 'PostgreSQL' or settings.data_dir})", flush=True)
    if args.workers > 1:
        # Worker processes build their own app from the environment: hand the settings on.
        os.environ.update(HUB_DATA_DIR=str(settings.data_dir), HUB_HOST=settings.host,
                          HUB_PORT=str(settings.port))
        if settings.database_url:
            os.environ["HUB_DATABASE_URL"] = settings.database_url
        uvicorn.run("hub.api.app:create_app", factory=True, workers=args.workers,
                    host=settings.host, port=settings.port, log_level="warning", access_log=False)
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False)
    return 0


# -- ingest ----------------------------------------------------------------------------------------

SHOW_PROBLEMS = 20


def outcome_kind(result) -> str:
    """created | updated | unchanged | rejected for one result of ``Hub.ingest``."""
    if isinstance(result, FhirError):
        return "rejected"
    if result.status == 201:
        return "created"
    return "unchanged" if result.issues else "updated"


def entry_kind(entry, response: dict) -> str:
    """created | updated | deleted | unchanged | rejected for one entry of a transaction/batch."""
    status = response["status"][:3]
    if status == "201":
        return "created"
    if not status.startswith("2"):
        return "rejected"
    method = entry["request"]["method"]
    if method == "DELETE":
        return "unchanged" if "outcome" in response else "deleted"  # nothing there to delete
    if method == "POST" or "outcome" in response:  # conditional create matched; same content
        return "unchanged"
    return "updated"


def ingest_paths(hub, paths: list[Path], ctx, batch_size: int, progress: bool, rejected_dir: Path):
    """Feed files through the hub, in input order.

    Returns (Counter of outcomes per input, the first problems as (where, reason) in input order,
    the number of problems, the file keeping the rejected inputs or None). Plain resources are
    stored in batches; a batch is committed before a transaction or batch Bundle runs, so later
    inputs always win over earlier ones.
    """
    from tqdm import tqdm

    from hub.api import bundles
    from hub.core.resource import parse_json

    counts: Counter[str] = Counter()
    shown: list[tuple[int, int, str, str]] = []  # max-heap (-seq, -n) of the first problems
    n_problems = 0
    rejected_dir.mkdir(parents=True, exist_ok=True)
    rejected_path = rejected_dir / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.ndjson"
    rejected_file = None
    bar = tqdm(unit=" res", disable=not progress, smoothing=0.1, mininterval=0.5)

    def count(kind: str, n: int = 1) -> None:
        counts[kind] += n
        bar.update(n)

    def reject(seq: int, where: str, raw: bytes, outcome: dict, n: int = 1) -> None:
        nonlocal rejected_file, n_problems
        count("rejected", n)
        n_problems += 1
        issue = outcome["issue"][0]
        reason = issue.get("diagnostics") or issue["code"]
        if issue.get("expression"):
            reason += f" at {issue['expression'][0]}"
        heapq.heappush(shown, (-seq, -n_problems, where, reason))
        if len(shown) > SHOW_PROBLEMS:
            heapq.heappop(shown)
        if rejected_file is None:
            rejected_file = rejected_path.open("ab")
        rejected_file.write(orjson.dumps({"where": where, "outcome": outcome,
                                          "input": raw.decode("utf-8", "replace")}) + b"\n")

    pending: list[tuple[int, str, bytes, object]] = []  # (seq, where, raw, parsed)

    def flush() -> None:
        if pending:
            results = hub.ingest(((raw, d) for _, _, raw, d in pending), ctx, batch_size=len(pending))
            for (seq, where, raw, _), result in zip(pending, results, strict=True):
                kind = outcome_kind(result)
                if kind == "rejected":
                    reject(seq, where, raw, result.outcome())
                else:
                    count(kind)
            pending.clear()

    def add(item: tuple[int, str, bytes, object]) -> None:
        pending.append(item)
        if len(pending) >= batch_size:
            flush()

    def run_bundle(seq: int, where: str, raw: bytes, d: dict) -> None:
        entries = d["entry"]
        flush()
        try:
            out = bundles.process(d, hub, ctx, "", False, _no_get)
        except FhirError as e:  # a transaction fails as a whole: every entry is rejected
            reject(seq, where, raw, e.outcome(), len(entries))
            return
        for i, (entry, answer) in enumerate(zip(entries, out["entry"], strict=True)):
            kind = entry_kind(entry, answer["response"])
            if kind == "rejected":  # kept as a one-entry Bundle of the same type, to replay
                reject(seq, f"{where}#entry[{i}]",
                       orjson.dumps({"resourceType": "Bundle", "type": d["type"], "entry": [entry]}),
                       answer["response"]["outcome"])
            else:
                count(kind)

    try:
        for seq, (where, raw, unreadable) in enumerate(iter_inputs(paths)):
            if unreadable is not None:
                reject(seq, where, b"", FhirError(400, "exception", unreadable).outcome())
                continue
            try:
                d = parse_json(raw)
            except FhirError as e:
                reject(seq, where, raw, e.outcome())
                continue
            btype = d.get("type") if isinstance(d, dict) and d.get("resourceType") == "Bundle" else None
            if btype not in ("transaction", "batch", "collection"):
                add((seq, where, raw, d))  # a resource (a document or other Bundle included)
                continue
            entries = d.get("entry", [])
            if not isinstance(entries, list) or not entries:  # every input gets an answer
                why = (f"The {btype} Bundle has no entries: nothing to store"
                       if isinstance(entries, list) else "Bundle.entry must be an array")
                reject(seq, where, raw, FhirError(400, "structure", why, "Bundle.entry").outcome())
            elif btype != "collection":
                run_bundle(seq, where, raw, d)
            else:
                for i, entry in enumerate(entries):
                    r = entry.get("resource") if isinstance(entry, dict) else None
                    add((seq, f"{where}#entry[{i}]", orjson.dumps(r), r))
        flush()
    finally:
        bar.close()
        if rejected_file is not None:
            rejected_file.close()
    problems = [(where, reason) for _, _, where, reason in sorted(shown, reverse=True)]
    return counts, problems, n_problems, (rejected_path if rejected_file else None)


def _no_get(path: str, query: str):
    raise FhirError(400, "not-supported", "GET entries are not run by hub ingest")


def summary(counts: Counter[str]) -> str:
    """"N accepted (N created, N updated, N unchanged[, N deleted]), N rejected"."""
    accepted = counts["created"] + counts["updated"] + counts["unchanged"] + counts["deleted"]
    return (f"{accepted} accepted ({counts['created']} created, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged"
            + (f", {counts['deleted']} deleted" if counts["deleted"] else "")
            + f"), {counts['rejected']} rejected")


def cmd_ingest(args, settings: Settings) -> int:
    from hub.core.ingest import Context, Hub

    for path in args.paths:  # before anything is stored
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        if not path.is_dir() and input_kind(path) is None:
            raise UsageError(f"{path} is not a .json or .ndjson file (optionally .gz)")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    ctx = Context(source={"feed": "file", "institution": args.institution} if args.institution
                  else {"feed": "file"})
    hub = Hub(open_store(settings))
    t0 = time.perf_counter()
    try:
        counts, problems, n_problems, rejected_path = ingest_paths(
            hub, args.paths, ctx, args.batch_size, not args.quiet and sys.stderr.isatty(),
            settings.data_dir / "rejected")
    finally:
        hub.store.close()
    elapsed = time.perf_counter() - t0
    print(f"{sum(counts.values())} inputs in {elapsed:.1f}s: {summary(counts)}")
    for where, reason in problems:
        print(f"  rejected {where}: {reason}")
    if n_problems > len(problems):
        print(f"  … and {n_problems - len(problems)} more")
    if rejected_path:
        print(f"rejected inputs kept for replay in {rejected_path}")
    return 1 if counts["rejected"] else 0


# -- demo and generator ------------------------------------------------------------------------------


def cmd_generate(args, settings: Settings) -> int:
    from hub.synth import write_ndjson

    counts = write_ndjson(args.out, seed=args.seed, people=args.people)
    print(f"wrote {sum(counts.values())} resources to {args.out}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_demo(args, settings: Settings) -> int:
    from tqdm import tqdm

    from hub.core.ingest import Context, Hub
    from hub.synth import Region

    region = Region(seed=args.seed, people=args.people)
    hub = Hub(open_store(settings))
    counts: Counter[str] = Counter()
    try:
        items = ((orjson.dumps(d), d) for d in region.iter_resources())
        with tqdm(unit=" res", disable=not sys.stderr.isatty(), desc="demo region") as bar:
            for result in hub.ingest(items, Context(source={"feed": "demo"})):
                counts[outcome_kind(result)] += 1
                bar.update(1)
    finally:
        hub.store.close()
    print(f"demo region (seed {args.seed}, {args.people} people): {sum(counts.values())} resources, "
          f"{summary(counts)}, in {settings.database_url and 'PostgreSQL' or settings.data_dir}")
    return 0 if not counts["rejected"] else 1


# -- operator views -------------------------------------------------------------------------------


def _parse_ref(ref: str) -> tuple[str, str, int | None]:
    parts = ref.strip("/").split("/")
    if len(parts) == 2:
        return parts[0], parts[1], None
    if len(parts) == 4 and parts[2] == "_history" and parts[3].isdigit():
        return parts[0], parts[1], int(parts[3])
    raise UsageError(f"{ref!r} is not Type/id or Type/id/_history/N")


def cmd_show(args, settings: Settings) -> int:
    from hub.core.events import resource_bytes
    from hub.core.ingest import Hub

    rtype, rid, version = _parse_ref(args.reference)
    hub = Hub(open_store(settings, existing=True))
    try:
        stored = hub.vread(rtype, rid, version) if version is not None else hub.read(rtype, rid)
    finally:
        hub.store.close()
    sys.stdout.write(orjson.dumps(orjson.loads(resource_bytes(stored)),
                                  option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_history(args, settings: Settings) -> int:
    from hub.core.events import from_stored
    from hub.core.ingest import Hub

    rtype, rid, _ = _parse_ref(args.reference)
    hub = Hub(open_store(settings, existing=True))
    try:
        versions = hub.store.versions(rtype, rid)
    finally:
        hub.store.close()
    if not versions:
        raise UsageError(f"{rtype}/{rid} is not known")
    print(f"{'version':>7}  {'kind':8} {'last updated':28} {'request':32} source")
    for stored in versions:
        if not stored.topic.startswith("hub.resource:"):  # an identity decision
            d = orjson.loads(stored.state)
            by = d.get("by") or {}
            what = d.get("patient") or d.get("source") or d.get("review") or d.get("patients")
            print(f"{stored.originator_version:>7}  {stored.topic.split(':')[-1]:8} "
                  f"{d.get('at', ''):28} {str(what):32} by {by.get('type')}:{by.get('name')}")
            continue
        ev = from_stored(stored)
        req = f"{ev.request.get('method', '')} {ev.request.get('url', '')}".strip()
        src = ", ".join(f"{k}={v}" for k, v in ev.source.items())
        print(f"{ev.version:>7}  {ev.kind:8} {ev.last_updated:28} {req:32} {src}")
    return 0


def cmd_reindex(args, settings: Settings) -> int:
    from tqdm import tqdm

    store = open_store(settings, existing=True)
    try:
        total = store.max_notification_id()
        with tqdm(total=total, unit=" events", disable=not sys.stderr.isatty()) as bar:
            done = store.rebuild_indexes(progress=bar.update)
    finally:
        store.close()
    print(f"reindexed {done} events")
    return 0


# read models by name (hub.readmodels): each opens its file in the data directory (on any
# event store)
PROJECTIONS = read_model_names()
QUALITY_DEFAULT_GROUP = ("institution", "document_type", "rule", "day")


def cmd_projections(args, settings: Settings) -> int:
    """status: position and lag; run: catch up (resumable, Ctrl-C safe); rebuild: from nothing."""
    from tqdm import tqdm

    from projections.runner import Runner

    store = open_store(settings, existing=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the index lives here on any event store
    try:
        model = open_model(args.name, settings.data_dir)
    except BaseException:
        store.close()
        raise
    runner = Runner(store, model)
    try:
        if args.action == "status":
            print(f"{model.name}: position {model.position()}, lag {runner.lag()} events")
            for table, n in model.stats().items():
                print(f"  {table:14} {n:>12,}")
            return 0
        total = store.max_notification_id() - (0 if args.action == "rebuild" else model.position())
        with tqdm(total=max(total, 0), unit=" events", disable=not sys.stderr.isatty(),
                  desc=f"{args.action} {model.name}") as bar:
            if args.action == "rebuild":
                done = runner.rebuild(progress=bar.update)
            else:
                done = runner.catch_up(progress=bar.update)
        print(f"{model.name}: applied {done} events, now at {model.position()}, lag {runner.lag()}")
        return 0
    finally:
        model.close()
        store.close()


# -- document quality and the quarantine ------------------------------------------------------------


def cmd_quality(args, settings: Settings) -> int:
    """``hub quality report``: the data-quality projection brought up to date, then its counts."""
    from tqdm import tqdm

    from projections.quality import QueryError, parse_group, to_csv, to_table
    from projections.runner import Runner

    try:
        group = parse_group(args.group)
    except QueryError as e:
        raise UsageError(str(e)) from None
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    store = open_store(settings, existing=True)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        model = open_model("quality", settings.data_dir)
        try:
            runner = Runner(store, model)
            lag = runner.lag()
            with tqdm(total=lag, unit=" events", desc="quality projection",
                      disable=args.quiet or not lag or not sys.stderr.isatty()) as bar:
                runner.catch_up(progress=bar.update)
            try:
                kw = {"document_type": args.document_type, "rule": args.rule}
                rows = model.counts(args.institution, args.since, args.until, group,
                                    limit=args.limit, **kw)
                totals = model.counts(args.institution, args.since, args.until, (), **kw)[0]
            except QueryError as e:
                raise UsageError(str(e)) from None
        finally:
            model.close()
    finally:
        store.close()
    if args.csv:
        sys.stdout.write(to_csv(rows, group))
        return 0
    if not totals["documents"]:
        print("no quality reports" + (" match" if any(
            (args.institution, args.document_type, args.rule, args.since, args.until)) else ""))
        return 0
    if group:
        sys.stdout.write(to_table(rows, group))
    print(f"total: {totals['documents']} documents ({totals['accepted']} accepted, "
          f"{totals['accepted_with_warnings']} accepted with warnings, {totals['rejected']} "
          f"rejected), {totals['findings']} findings ({totals['fatal']} fatal, "
          f"{totals['errors']} errors, {totals['warnings']} warnings, "
          f"{totals['information']} information); days in +08:00")
    return 0


def _quarantine(settings: Settings, create: bool = False):
    from hub.quarantine import Quarantine

    path = settings.data_dir / "quarantine.sqlite"
    if not create and not path.exists():
        return None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Quarantine(path)


def _report_lines(report: dict) -> list[str]:
    """One line per issue of a quality report: severity, rule, location, what was found."""
    out = []
    if "ack" in report:  # an HL7 v3 registration (hub.v3intake): its acknowledgement
        out.append(f"  {report['ack']:11} {report.get('rule') or '-':40} "
                   f"{_one_line_text(report.get('reason'), 200)}")
    for issue in report.get("issue") or ():
        details = issue.get("details") or {}
        rule = next((c.get("code") for c in details.get("coding") or () if c.get("code")), "-")
        where = (issue.get("location") or issue.get("expression") or [""])[0]
        text = details.get("text") or issue.get("diagnostics") or ""
        out.append(f"  {issue.get('severity', ''):11} {rule:40} {text}"
                   + (f"  [{where}]" if where else ""))
    return out


def _one_line_text(value: object, width: int) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def cmd_quarantine(args, settings: Settings) -> int:
    action = args.quarantine_action
    if action == "replay":
        return _quarantine_replay(args, settings)
    quarantine = _quarantine(settings)
    if action == "list":
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        entries = [] if quarantine is None else quarantine.list(
            status=None if args.all else "open", limit=args.limit)
        if quarantine is not None:
            quarantine.close()
        if args.json:
            for e in entries:
                sys.stdout.write(orjson.dumps(e).decode() + "\n")
            return 0
        if not entries:
            print("the quarantine is empty" if args.all else "no open entries in the quarantine")
            return 0
        print(f"{'id':>6}  {'time':24} {'kind':5} {'institution':24} {'status':10} reason")
        for e in entries:
            inst = (e.get("source") or {}).get("institution") or "-"
            print(f"{e['id']:>6}  {e['time']:24} {e['kind']:5} {_one_line_text(inst, 24):24} "
                  f"{e['status']:10} {_one_line_text(e['reason'], 100)}")
        return 0
    # show
    entry = None if quarantine is None else quarantine.get(args.id)
    if quarantine is not None:
        quarantine.close()
    if entry is None:
        raise UsageError(f"no quarantine entry {args.id}")
    payload = entry.pop("payload")
    if args.payload:
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
        return 0
    if args.json:
        sys.stdout.write(orjson.dumps({**entry, "payload_bytes": len(payload)},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    src = ", ".join(f"{k}={v}" for k, v in (entry.get("source") or {}).items() if v)
    print(f"quarantine entry {entry['id']}: {entry['kind']}, {len(payload)} bytes, kept "
          f"{entry['time']}, {entry['status']}"
          + (f" (replayed {entry['replayed']})" if entry.get("replayed") else ""))
    print(f"source: {src or '-'}")
    print(f"reason: {_one_line_text(entry['reason'], 300)}")
    print("quality report:")
    for line in _report_lines(entry.get("report") or {}):
        print(line)
    if entry.get("result"):
        print("last replay: " + ", ".join(f"{k}={v}" for k, v in entry["result"].items()))
    return 0


def _quarantine_replay(args, settings: Settings) -> int:
    if bool(args.ids) == bool(args.all):
        raise UsageError("name the entries to replay (IDS) or give --all")
    quarantine = _quarantine(settings)
    if quarantine is None:
        if args.all:
            print("no open entries in the quarantine")
            return 0
        raise UsageError(f"no quarantine entry {args.ids[0]} (the quarantine is empty)")
    try:
        if args.all:
            # every open entry as of now, in order (a refused replay adds a new entry after)
            ids = [e["id"] for e in quarantine.list(status="open", limit=1 << 62)]
        else:
            ids = list(dict.fromkeys(args.ids))
            for qid in ids:  # check them all before anything is replayed
                entry = quarantine.get(qid)
                if entry is None:
                    raise UsageError(f"no quarantine entry {qid}")
                if entry["status"] != "open":
                    raise UsageError(f"quarantine entry {qid} is {entry['status']}, not open")
        if not ids:
            print("no open entries in the quarantine")
            return 0
        from hub import v3intake
        from hub.core.ingest import Hub
        from hub.documents import DocumentService

        hub = Hub(open_store(settings))
        try:
            service = DocumentService(hub, quarantine)
            stored = refused = 0
            for qid in ids:
                if quarantine.get(qid)["kind"] == v3intake.KIND:  # an HL7 v3 registration
                    ok, what = v3intake.replay(hub, quarantine, qid)
                    stored += ok
                    refused += not ok
                    if args.json:
                        sys.stdout.write(orjson.dumps({"id": qid, "stored": ok,
                                                       "detail": what}).decode() + "\n")
                    else:
                        print(f"{qid}: " + (f"stored {what}" if ok else f"refused again ({what}); "
                                            "still open"))
                    continue
                result = service.replay(qid)
                ok = result.status != 422
                stored += ok
                refused += not ok
                if args.json:
                    sys.stdout.write(orjson.dumps({
                        "id": qid, "status": result.status, "decision": result.decision,
                        "document": result.document_ref,
                        "quarantine_id": result.quarantine_id}).decode() + "\n")
                elif ok:
                    print(f"{qid}: stored {result.document_ref or ''} ({result.decision}"
                          + (", unchanged" if result.status == 200 else "") + ")")
                else:
                    rules = sorted({c["code"] for i in result.report.get("issue") or ()
                                    for c in (i.get("details") or {}).get("coding") or ()
                                    if c.get("code")})
                    shown = ", ".join(rules[:3]) + (f" and {len(rules) - 3} more"
                                                     if len(rules) > 3 else "")
                    print(f"{qid}: refused again ({shown or 'reject'}); kept as "
                          f"quarantine entry {result.quarantine_id}")
        finally:
            hub.store.close()
    finally:
        quarantine.close()
    if not args.json:
        print(f"replayed {len(ids)}: {stored} stored, {refused} refused again")
    return 1 if refused else 0


COMMANDS = {"projections": cmd_projections, "serve": cmd_serve, "ingest": cmd_ingest,
            "demo": cmd_demo, "generate": cmd_generate, "show": cmd_show, "history": cmd_history,
            "reindex": cmd_reindex, "quality": cmd_quality, "quarantine": cmd_quarantine}


def _connector_command(name: str):
    def run(args, settings: Settings) -> int:
        from connectors import cli as connector_cli

        return getattr(connector_cli, name)(args, settings)
    return run


def cmd_terminology(args, settings: Settings) -> int:  # each subcommand names its function
    return args.terminology_func(args, settings)


COMMANDS["terminology"] = cmd_terminology


def cmd_mpi(args, settings: Settings) -> int:  # hub mpi train|rematch (hub/mpi/cli.py)
    from hub.mpi import cli as mpi_cli

    return mpi_cli.cmd_mpi(args, settings)


COMMANDS["mpi"] = cmd_mpi


def cmd_identity(args, settings: Settings) -> int:  # hub identity … (hub/mpi/identity.py)
    """Decisions as identity events, taken like the API's operations; prints the resulting Person
    (or the queue)."""
    from hub.mpi.everything import person_view
    from hub.mpi.identity import IdentityService

    store = open_store(settings, existing=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    identity = IdentityService.open(store, settings.data_dir)
    try:
        act, user, reason = args.identity_action, args.user, args.reason
        if act == "review" and args.review_action == "list":
            identity.sync()
            status = None if args.status == "all" else args.status
            for r in identity.person.reviews(status, 1000):
                print(orjson.dumps({k: r[k] for k in ("id", "status", "patient", "candidates",
                                                      "score", "evidence", "ruleset", "opened",
                                                      "outcome")}).decode())
            return 0
        if act != "show" and not user:
            raise UsageError("a decision needs --user (or $HUB_USER)")
        person = None
        if act == "link":
            evs = identity.link(args.patient, args.person, user, reason)
        elif act == "unlink":
            evs = identity.unlink(args.patient, user, reason)
        elif act == "merge":
            evs = identity.merge(args.source, args.target, user, reason)
        elif act == "unmerge":
            evs = identity.unmerge(args.source, user, reason)
            person = args.source.removeprefix("Person/")
        elif act == "not-duplicate":
            evs = identity.not_duplicate(args.patient, args.other, user, reason)
            print(f"{len(evs)} identity event(s) recorded")
            return 0
        elif act == "review":
            if not args.review_id:
                raise UsageError("review accept|reject needs the review id")
            if args.review_action == "accept":
                evs = identity.accept_review(args.review_id, user, args.candidate, reason)
            else:
                evs = identity.reject_review(args.review_id, user, reason)
                print(f"review {args.review_id} rejected")
                return 0
        else:  # show
            identity.sync()
            ref = args.reference
            if ref.startswith("Patient/"):
                with identity.person.read() as c:
                    person = identity.person.person_of(c, ref)
                if person is None:
                    raise UsageError(f"{ref} is not linked to any person")
            else:
                person = ref.removeprefix("Person/")
            evs = []
        if person is None:
            person = next((e.data.get("new_person") or e.data.get("target") or e.data["person"]
                           for e in reversed(evs) if e.event in ("Linked", "Unlinked", "Merged")),
                          None)
            if person is None and act in ("link", "review"):
                with identity.person.read() as c:
                    person = identity.person.person_of(c, getattr(args, "patient", "") or "")
        if person is not None:
            with identity.person.read() as c:
                person = identity.person.survivor(c, person)
            sys.stdout.write(orjson.dumps(person_view(identity, store, person),
                                          option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    finally:
        identity.close()
        store.close()


COMMANDS["identity"] = cmd_identity
COMMANDS.update({"connector": _connector_command("cmd_connector"),
                 "deadletter": _connector_command("cmd_deadletter"),
                 "ingest-worker": _connector_command("cmd_ingest_worker")})

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # commands living in other modules raise hub.core.commandline.UsageError, the class main catches
    # (it is not defined here, so `python -m hub.cli` makes no second copy of it)
    sys.exit(main())
