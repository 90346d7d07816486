"""``hub mpi train|rematch|export``: weights from the platform's own data, a re-match of everything,
and the whole index for stewards.

``train [--sample N]`` brings the identity-candidates read model up to the log's end, estimates
Fellegi-Sunter weights from a sample of it (``hub.mpi.train``), writes them as the next version into
``$HUB_DATA_DIR/mpi/weights-<version>.json`` and prints the m/u table. ``rematch`` matches every
indexed Patient again and hands the decisions (link / review / new) to the identity service
(``IdentityService.auto_decide_many``: batched, one commit per up to 1,000 decisions), with a
progress bar; ``--dry-run`` only counts, ``--out FILE``
writes the decisions as JSON lines.

``export [--format csv|ndjson] [--out FILE] [--no-sync]`` writes every Patient the index knows with
the person it belongs to now, its own person before merges, the link's assurance and the decision
that made it (who: ``user`` or ``matcher`` and the name, the matcher's score, when), in Patient
order, streamed from the person projection batch by batch (``hub.mpi.listing``): memory stays flat
whatever the region's size. The projection is first brought up to the log's end unless
``--no-sync`` (then it is what the projection holds, and the lag is said on stderr).
"""

from __future__ import annotations

import csv
import io
import sys
from typing import TYPE_CHECKING, Any, cast

import orjson

from hub.core.commandline import UsageError, open_store
from hub.core.jobs import Jobs, both

if TYPE_CHECKING:
    from projections.person import PersonProjection


def add_parsers(sub: Any, common: Any) -> None:
    p = sub.add_parser("mpi", parents=[common], help="master patient index: train weights, re-match")
    msub = p.add_subparsers(dest="mpi_action", required=True)
    t = msub.add_parser("train", parents=[common],
                        help="estimate matching weights from the indexed Patients (new version)")
    t.add_argument("--sample", type=int, default=20000, help="Patients sampled (default 20000)")
    r = msub.add_parser("rematch", parents=[common], help="match every Patient again")
    r.add_argument("--dry-run", action="store_true", help="count the decisions, record nothing")
    r.add_argument("--out", help="also write each decision as a JSON line to this file")
    r.add_argument("--weights", help="weights version (default: the newest)")
    e = msub.add_parser("export", parents=[common],
                        help="every Patient -> Person link with assurance and decision (CSV or NDJSON)")
    e.add_argument("--format", choices=("csv", "ndjson"), default="csv", help="default csv")
    e.add_argument("--out", help="write to this file (default: standard output)")
    e.add_argument("--no-sync", action="store_true",
                   help="export what the person projection holds, without catching up first")


def _index(settings: Any, store: Any):
    from tqdm import tqdm

    from hub.readmodels import open_model
    from projections.runner import Runner

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = open_model("identity-candidates", settings.data_dir)
    runner = Runner(store, index)
    lag = runner.lag()
    with tqdm(total=lag, unit=" events", desc="identity-candidates", disable=not sys.stderr.isatty()) as bar:
        runner.catch_up(progress=bar.update)
    if index.bulk:
        index.caught_up()
    return index


def _steward_decisions(settings: Any, store: Any) -> list:
    """The decisions data stewards made (``hub.mpi.train.steward_decisions``), the person
    projection brought up to the log's end first."""
    from hub.mpi.train import steward_decisions
    from hub.readmodels import open_model
    from projections.runner import Runner

    person = open_model("person", settings.data_dir)
    try:
        Runner(store, person).catch_up()
        return steward_decisions(person)
    finally:
        person.close()


def _identity_decide(settings: Any, store: Any, index: Any = None):
    """``(auto_decide_many, blocked_pairs, close)`` of the identity service
    (hub.mpi.identity), or None when it is not there."""
    try:
        from hub.mpi.identity import IdentityService
        from hub.readmodels import open_model
        from projections.runner import Runner
    except ImportError:
        return None
    person = cast("PersonProjection", open_model("person", settings.data_dir))
    service = IdentityService(store, person, Runner(store, person))
    if index is not None:
        service.roles = lambda: index.roles  # the unique systems stored NamingSystems declare
    return service.auto_decide_many, service.blocked_pairs, person.close


def cmd_mpi(args: Any, settings: Any) -> int:
    from tqdm import tqdm

    from hub.mpi import train, weights
    from hub.mpi.incremental import blocked_from_pairs, rematch_all
    from hub.mpi.matcher import Matcher

    store = open_store(settings, existing=True)
    if args.mpi_action == "export":
        try:
            return _export(args, settings, store)
        finally:
            store.close()
    index = None
    try:
        index = _index(settings, store)
        if args.mpi_action == "train":
            if args.sample < 100:
                raise UsageError("--sample must be at least 100")
            with tqdm(total=min(args.sample, index.size()), unit=" Patients", desc="sampled pairs",
                      disable=not sys.stderr.isatty()) as bar:
                try:
                    w, path = train.run(index, settings.data_dir, args.sample, progress=bar.update,
                                        decisions=_steward_decisions(settings, store))
                except ValueError as e:
                    raise UsageError(str(e)) from None
            print(w.table_text())
            if path.parent.name == "rejected":
                print(f"not activated (worse on stewards' decisions than version {w.version}): {path}")
            else:
                print(f"written {path}")
            return 0
        try:
            w = weights.load(settings.data_dir, args.weights)
        except ValueError as e:
            raise UsageError(str(e)) from None
        matcher = Matcher(index, w)
        out = open(args.out, "wb") if args.out else None
        service = None if args.dry_run else _identity_decide(settings, store, index)
        if service is None and not args.dry_run:
            print("no identity service here: decisions are counted, not recorded", file=sys.stderr)

        def written(decisions):
            for d in decisions:
                ref, decision, candidates, score, _, ruleset = d
                out.write(orjson.dumps({"patient": ref, "decision": decision, "candidates": candidates,
                                        "score": score, "ruleset": ruleset}) + b"\n")
                yield d

        def decide_many(decisions, held=None):
            if out is not None:
                decisions = written(decisions)
            if service is not None:
                service[0](decisions, held)  # batched: one commit per up to 1,000 decisions
            else:
                for _ in decisions:
                    pass

        blocked = blocked_from_pairs(service[1]) if service is not None else None
        try:
            with tqdm(total=index.size(), unit=" Patients", desc="rematch",
                      disable=not sys.stderr.isatty()) as bar, \
                    Jobs(settings.data_dir).start("rematch", "re-matching every Patient",
                                                  index.size()) as job:
                counts = rematch_all(index, matcher, None, blocked,
                                     progress=both(bar.update, job.advance),
                                     decide_many=decide_many)
                job.finish(f"{counts['link']} linked, {counts['review']} to review, "
                           f"{counts['new']} new")
        finally:
            if out is not None:
                out.close()
            if service is not None:
                service[2]()
        print(f"rematch with weights {w.version}: {counts['link']} linked, {counts['review']} to review, "
              f"{counts['new']} new; blocks over their cap: {dict(index.alerts.counts)}")
        return 0
    finally:
        if index is not None:
            index.close()
        store.close()


def _export(args: Any, settings: Any, store: Any) -> int:
    from hub.mpi.listing import EXPORT_COLUMNS, link_rows
    from hub.readmodels import open_model
    from projections.runner import Runner

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    person = open_model("person", settings.data_dir)
    try:
        runner = Runner(store, person)
        if not args.no_sync:
            runner.catch_up()
        lag = runner.lag()
        if lag:
            print(f"the person projection lags the log by {lag} events", file=sys.stderr)
        out = open(args.out, "wb") if args.out else sys.stdout.buffer
        n = 0
        try:
            if args.format == "ndjson":
                for row in link_rows(person):
                    out.write(orjson.dumps(row) + b"\n")
                    n += 1
            else:
                text = io.StringIO()
                w = csv.writer(text, lineterminator="\n")
                w.writerow(EXPORT_COLUMNS)
                for row in link_rows(person):
                    w.writerow([_cell(row[k]) for k in EXPORT_COLUMNS])
                    n += 1
                    if text.tell() > 1 << 16:  # written in 64 KiB pieces, never the whole region
                        out.write(text.getvalue().encode())
                        text.seek(0)
                        text.truncate()
                out.write(text.getvalue().encode())
        finally:
            if args.out:
                out.close()
            else:
                out.flush()
        print(f"{n} Patients exported", file=sys.stderr)
        return 0
    finally:
        person.close()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v
