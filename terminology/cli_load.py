"""``hub terminology load FILE|DIR… [--builtin]``: code systems, value sets, concept maps and
naming systems into the hub (``terminology.loader``), then the terminology read model brought up
to date so the operations answer at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hub.core.commandline import UsageError, open_store
from terminology.csvformat import EQUIVALENCES


def add_parsers(tsub, common) -> None:
    p = tsub.add_parser("load", parents=[common],
                        help="load CodeSystem, ValueSet, ConceptMap, NamingSystem from FHIR JSON, "
                             "Bundles, NDJSON or CSV (files or folders)")
    p.add_argument("paths", nargs="*", type=Path, metavar="FILE|DIR")
    p.add_argument("--builtin", action="store_true",
                   help="also the content shipped in terminology/data/")
    g = p.add_argument_group("CSV files (win over their '# key: value' header comments; "
                             "format: terminology/csvformat.py)")
    g.add_argument("--kind", choices=["CodeSystem", "ConceptMap"])
    for name in ("url", "name", "title", "version", "id", "oid", "source", "target"):
        g.add_argument(f"--{name}")
    g.add_argument("--equivalence", choices=EQUIVALENCES,
                   help="concept maps: the equivalence of every row whose own cell is empty (a "
                        "map with neither is refused: a target without one means nothing)")
    p.add_argument("--institution", help="source institution recorded on every event")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(terminology_func=cmd_load)


def cmd_load(args, settings) -> int:
    from tqdm import tqdm

    from hub.core.ingest import Context, Hub
    from projections.runner import Runner
    from projections.terminology import TerminologyProjection
    from terminology.loader import BUILTIN, load

    paths = list(args.paths)
    if args.builtin:
        if not BUILTIN.is_dir():
            raise UsageError(f"no built-in terminology content in {BUILTIN}")
        paths.append(BUILTIN)
    if not paths:
        raise UsageError("name files or folders to load, or --builtin")
    for path in paths:  # before anything is stored
        if not path.exists():
            raise UsageError(f"{path} does not exist")
    csv_options = {k: getattr(args, k) for k in ("kind", "url", "name", "title", "version", "id",
                                                 "oid", "source", "target", "equivalence")}
    source = {"feed": "terminology"}
    if args.institution:
        source["institution"] = args.institution
    progress = not args.quiet and sys.stderr.isatty()
    store = open_store(settings)
    t0 = time.perf_counter()
    try:
        report = load(Hub(store), paths, Context(source=source), csv_options=csv_options,
                      progress=progress)
        elapsed = time.perf_counter() - t0
        print(f"{report.summary()} in {elapsed:.1f}s")
        for where, why in report.problems:
            print(f"  rejected {where}: {why}")
        if report.rejected > len(report.problems):
            print(f"  … and {report.rejected - len(report.problems)} more")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        model = TerminologyProjection(settings.data_dir / "terminology.sqlite")
        try:
            runner = Runner(store, model)
            with tqdm(total=runner.lag(), unit=" events", desc="terminology read model",
                      disable=not progress) as bar:
                runner.catch_up(progress=bar.update)
            stats = model.stats()
            print(f"terminology read model: {stats['t_cs']} code systems, {stats['t_concept']} "
                  f"concepts, {stats['t_vs']} value sets, {stats['t_cm']} concept maps "
                  f"({stats['t_map']} mappings)")
        finally:
            model.close()
    finally:
        store.close()
    return 1 if report.rejected else 0
