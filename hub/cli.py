"""The ``hub`` command: serve, ingest, demo, generate, show, history.

User mistakes (a missing file, a bad reference, an unreachable database) end with one clear line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

import orjson

from hub.config import Settings
from hub.errors import FhirError


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hub", description="Regional FHIR integration hub")
    parser.add_argument("--data-dir", help="data directory (default $HUB_DATA_DIR or ./var)")
    parser.add_argument("--database-url", help="postgresql://… event store instead of SQLite")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the FHIR REST API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir", dest="data_dir_sub")
    p.add_argument("--workers", type=int, default=1)

    p = sub.add_parser("ingest", help="validate and store FHIR JSON, Bundles and NDJSON")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--institution", help="source institution recorded on every event")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="generate a synthetic demo region and load it")
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("generate", help="write a synthetic region as NDJSON files")
    p.add_argument("out", type=Path)
    p.add_argument("--people", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("show", help="print a resource (or one version of it)")
    p.add_argument("reference", help="Type/id or Type/id/_history/N")

    p = sub.add_parser("history", help="list the versions of a resource with their sources")
    p.add_argument("reference", help="Type/id")

    args = parser.parse_args(argv)
    settings = Settings()
    data_dir = getattr(args, "data_dir_sub", None) or args.data_dir
    if data_dir:
        settings.data_dir = Path(data_dir)
    if args.database_url:
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
    print(f"FHIR API on http://{settings.host}:{settings.port}/fhir "
          f"(data: {settings.database_url and 'PostgreSQL' or settings.data_dir})", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", access_log=False)
    return 0


# -- ingest ----------------------------------------------------------------------------------------


def iter_inputs(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(where, raw JSON) for every resource or Bundle in files and folders, NDJSON line by line."""
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.suffix == ".ndjson" or f.name.endswith(".ndjson.gz"):
                with _open(f) as fh:
                    for n, line in enumerate(fh, 1):
                        if line.strip():
                            yield f"{f}:{n}", line
            elif f.suffix == ".json" or f.name.endswith(".json.gz"):
                with _open(f) as fh:
                    yield str(f), fh.read()


def _open(f: Path):
    if f.name.endswith(".gz"):
        import gzip

        return gzip.open(f, "rb")
    return f.open("rb")


def ingest_paths(hub, paths: list[Path], ctx, batch_size: int, progress: bool, rejected_dir: Path):
    """Feed files through the hub; returns (Counter of outcomes, list of (where, reason))."""
    from tqdm import tqdm

    from hub.api import bundles
    from hub.resource import parse_json

    counts: Counter[str] = Counter()
    problems: list[tuple[str, str]] = []
    rejected_dir.mkdir(parents=True, exist_ok=True)
    rejected_path = rejected_dir / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.ndjson"
    rejected_file = None
    wheres: deque[str] = deque()

    def reject(where: str, raw: bytes, err: FhirError) -> None:
        nonlocal rejected_file
        counts["rejected"] += 1
        problems.append((where, err.issues[0].diagnostics + (
            f" at {err.issues[0].expression}" if err.issues[0].expression else "")))
        if rejected_file is None:
            rejected_file = rejected_path.open("ab")
        rejected_file.write(orjson.dumps({"where": where, "outcome": err.outcome(),
                                          "input": raw.decode("utf-8", "replace")}) + b"\n")

    def resources() -> Iterator[tuple[bytes, object]]:
        for where, raw in iter_inputs(paths):
            try:
                d = parse_json(raw)
            except FhirError as e:
                reject(where, raw, e)
                continue
            if isinstance(d, dict) and d.get("resourceType") == "Bundle":
                btype = d.get("type")
                if btype in ("transaction", "batch"):
                    try:
                        out = bundles.process(d, hub, ctx, "", False, _no_get)
                        for entry in out["entry"]:
                            status = entry["response"]["status"]
                            counts["accepted" if status[0] == "2" else "rejected"] += 1
                    except FhirError as e:
                        reject(where, raw, e)
                    continue
                if btype == "collection":
                    for i, entry in enumerate(d.get("entry") or []):
                        r = entry.get("resource") if isinstance(entry, dict) else None
                        wheres.append(f"{where}#entry[{i}]")
                        yield orjson.dumps(r), r
                    continue
            wheres.append(where)
            yield raw, d

    bar = tqdm(unit=" res", disable=not progress, smoothing=0.1, mininterval=0.5)
    raws: deque[bytes] = deque()
    try:
        def remembering():
            for raw, d in resources():
                raws.append(raw)
                yield raw, d

        for result in hub.ingest(remembering(), ctx, batch_size=batch_size):
            where, raw = wheres.popleft(), raws.popleft()
            if isinstance(result, FhirError):
                reject(where, raw, result)
            elif result.status == 201:
                counts["created"] += 1
            elif result.issues:
                counts["unchanged"] += 1
            else:
                counts["updated"] += 1
            bar.update(1)
    finally:
        bar.close()
        if rejected_file is not None:
            rejected_file.close()
    return counts, problems, (rejected_path if rejected_file else None)


def _no_get(path: str, query: str):
    raise FhirError(400, "not-supported", "GET entries are not run by hub ingest")


def cmd_ingest(args, settings: Settings) -> int:
    from hub.ingest import Context, Hub

    ctx = Context(source={"feed": "file", "institution": args.institution} if args.institution
                  else {"feed": "file"})
    hub = Hub(settings.open_store())
    t0 = time.perf_counter()
    try:
        counts, problems, rejected_path = ingest_paths(
            hub, args.paths, ctx, args.batch_size, not args.quiet and sys.stderr.isatty(),
            settings.data_dir / "rejected")
    finally:
        hub.store.close()
    elapsed = time.perf_counter() - t0
    total = sum(counts.values())
    accepted = counts["created"] + counts["updated"] + counts["unchanged"] + counts["accepted"]
    print(f"{total} inputs in {elapsed:.1f}s: {accepted} accepted ({counts['created']} created, "
          f"{counts['updated']} updated, {counts['unchanged']} unchanged"
          + (f", {counts['accepted']} bundle entries" if counts["accepted"] else "")
          + f"), {counts['rejected']} rejected")
    for where, reason in problems[:20]:
        print(f"  rejected {where}: {reason}")
    if len(problems) > 20:
        print(f"  … and {len(problems) - 20} more")
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

    from hub.ingest import Context, Hub
    from hub.synth import Region

    region = Region(seed=args.seed, people=args.people)
    hub = Hub(settings.open_store())
    counts: Counter[str] = Counter()
    try:
        items = ((orjson.dumps(d), d) for d in region.iter_resources())
        with tqdm(unit=" res", disable=not sys.stderr.isatty(), desc="demo region") as bar:
            for result in hub.ingest(items, Context(source={"feed": "demo"})):
                counts["rejected" if isinstance(result, FhirError) else "stored"] += 1
                bar.update(1)
    finally:
        hub.store.close()
    print(f"demo region (seed {args.seed}, {args.people} people): {counts['stored']} resources "
          f"stored, {counts['rejected']} rejected, in {settings.database_url and 'PostgreSQL' or settings.data_dir}")
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
    from hub.events import resource_bytes
    from hub.ingest import Hub

    rtype, rid, version = _parse_ref(args.reference)
    hub = Hub(settings.open_store())
    try:
        stored = hub.vread(rtype, rid, version) if version else hub.read(rtype, rid)
    finally:
        hub.store.close()
    sys.stdout.write(orjson.dumps(orjson.loads(resource_bytes(stored)),
                                  option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_history(args, settings: Settings) -> int:
    from hub.events import from_stored
    from hub.ingest import Hub

    rtype, rid, _ = _parse_ref(args.reference)
    hub = Hub(settings.open_store())
    try:
        versions = hub.store.versions(rtype, rid)
    finally:
        hub.store.close()
    if not versions:
        raise UsageError(f"{rtype}/{rid} is not known")
    print(f"{'version':>7}  {'kind':8} {'last updated':28} {'request':28} source")
    for stored in versions:
        ev = from_stored(stored)
        req = f"{ev.request.get('method', '')} {ev.request.get('url', '')}".strip()
        src = ", ".join(f"{k}={v}" for k, v in ev.source.items())
        print(f"{ev.version:>7}  {ev.kind:8} {ev.last_updated:28} {req[:28]:28} {src}")
    return 0


COMMANDS = {"serve": cmd_serve, "ingest": cmd_ingest, "demo": cmd_demo, "generate": cmd_generate,
            "show": cmd_show, "history": cmd_history}

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
