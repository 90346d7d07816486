"""``hub terminology unmapped`` and ``hub terminology renormalise``.

``unmapped`` prints the worklist (``projections.unmapped``, brought up to date first): local codes
carried by current resources without a standard code, most frequent first.

``renormalise`` re-normalises by replay: for every resource the worklist lists (of one institution
with ``--institution``), the current version is read, the ConceptMaps applied
(``terminology.normalise``), and, where a standard coding was added, a new version written through
the hub's normal write path (``Hub.execute``, an update with the read version as If-Match, the
event's source institution kept, feed ``terminology-renormalise``). The maps come from
``--concept-maps`` files or, without it, from the current ConceptMap resources of the store.
A second run finds nothing to change.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from hub.core.commandline import UsageError, open_store
from terminology.renormalise import mapped_codes, outcome, renormalise


def add_parsers(tsub, common) -> None:
    p = tsub.add_parser("unmapped", parents=[common],
                        help="local codes without a standard code, most frequent first")
    p.add_argument("--institution", help="the sending institution's code (or its OID)")
    p.add_argument("--system", help="one local code system (urn:oid:…)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    p.add_argument("--json", action="store_true", help="JSON rows on stdout")
    p.set_defaults(terminology_func=cmd_unmapped)

    p = tsub.add_parser("renormalise", parents=[common],
                        help="apply ConceptMaps to the resources the worklist lists (new versions)")
    p.add_argument("--concept-maps", nargs="+", type=Path, metavar="FILE",
                   help="FHIR JSON / Bundle / NDJSON files (default: the store's ConceptMaps)")
    p.add_argument("--institution", help="only this institution's resources")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(terminology_func=cmd_renormalise)


def _usage(msg: str) -> UsageError:
    return UsageError(msg)


def _open(settings):
    from projections.unmapped import UnmappedProjection

    store = open_store(settings, existing=True)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        model = UnmappedProjection(settings.data_dir / "unmapped.sqlite")
    except BaseException:
        store.close()
        raise
    return store, model


def _catch_up(store, model, quiet: bool) -> None:
    from tqdm import tqdm

    from projections.runner import Runner

    runner = Runner(store, model)
    lag = runner.lag()
    with tqdm(total=lag, unit=" events", desc="unmapped-codes projection",
              disable=quiet or not lag or not sys.stderr.isatty()) as bar:
        runner.catch_up(progress=bar.update)


def _terminology(store, settings, quiet: bool):
    from tqdm import tqdm

    from projections.runner import Runner
    from projections.terminology import TerminologyProjection
    from terminology.service import TerminologyService

    path = settings.data_dir / "terminology.sqlite"
    model = TerminologyProjection(path)
    try:
        runner = Runner(store, model)
        lag = runner.lag()
        with tqdm(total=lag, unit=" events", desc="terminology read model",
                  disable=quiet or not lag or not sys.stderr.isatty()) as bar:
            runner.catch_up(progress=bar.update)
    finally:
        model.close()
    return TerminologyService(path)


def cmd_unmapped(args, settings) -> int:
    from projections.unmapped import QueryError, to_csv, to_table

    if args.limit is not None and args.limit < 1:
        raise _usage("--limit must be at least 1")
    store, model = _open(settings)
    try:
        _catch_up(store, model, args.csv or args.json)
        try:
            rows = model.worklist(args.institution, args.system, args.limit)
        except QueryError as e:
            raise _usage(str(e)) from None
    finally:
        model.close()
        store.close()
    if args.csv:
        sys.stdout.write(to_csv(rows))
    elif args.json:
        for r in rows:
            sys.stdout.write(orjson.dumps(r).decode() + "\n")
    elif not rows:
        print("no unmapped local codes" + (" for this filter" if args.institution or args.system
                                           else ""))
    else:
        sys.stdout.write(to_table(rows))
        print(f"{len(rows)} codes in {sum(r['resources'] for r in rows)} resource references")
    return 0


def cmd_renormalise(args, settings) -> int:
    from tqdm import tqdm

    from hub.core.ingest import Hub
    from hub.core.jobs import Jobs, both
    from terminology.conceptmaps import read_concept_maps
    from terminology.normalise import Normaliser, StoredMaps

    store, model = _open(settings)
    service = None
    try:
        # the terminology read model: a map's current version, a code system's OID and URL
        service = _terminology(store, settings, args.quiet)
        if args.concept_maps:
            maps = []
            for path in args.concept_maps:
                try:
                    maps.extend(read_concept_maps(path))
                except ValueError as e:
                    raise _usage(str(e)) from None
        else:
            maps = None
        normaliser = (StoredMaps(service, store)() if maps is None else None) \
            or Normaliser.from_concept_maps(maps or [], aliases=service.system_aliases)
        if not len(normaliser):
            raise _usage("no usable mappings in the ConceptMaps"
                         + ("" if args.concept_maps else " of the store (give --concept-maps)"))
        _catch_up(store, model, args.quiet)
        hub = Hub(store)
        total = len(model.streams(args.institution,
                                  mapped_codes(model, normaliser, args.institution)))
        with tqdm(total=total, unit=" resources", desc="renormalise",
                  disable=args.quiet or not sys.stderr.isatty()) as bar, \
                Jobs(settings.data_dir).start(
                    "renormalise", "renormalisation" + (f" of {args.institution}"
                                                        if args.institution else ""),
                    total) as job:
            counts = renormalise(hub, model, normaliser, args.institution,
                                 both(bar.update, job.advance))
            job.finish(outcome(counts))
        _catch_up(store, model, True)
        left = model.worklist(args.institution)
    finally:
        if service is not None:
            service.close()
        model.close()
        store.close()
    print(f"{normaliser.maps} ConceptMaps, {len(normaliser)} mapped codes; "
          f"{counts['read']} listed resources read: {counts['updated']} updated, "
          f"{counts['unchanged']} unchanged, {counts['conflict']} changed meanwhile, "
          f"{counts['invalid'] + counts['failed']} failed; still unmapped: {len(left)} codes in "
          f"{sum(r['resources'] for r in left)} resource references")
    return 1 if counts["invalid"] or counts["failed"] else 0
