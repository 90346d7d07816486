"""``hub projections status|run|rebuild|follow`` and ``hub quality report``: the read models."""

from __future__ import annotations

import os
import sys
from typing import cast

from hub.core.commandline import UsageError, kafka_topic, open_store
from hub.core.config import Settings
from hub.core.fhirtime import zone_name
from hub.readmodels import names as read_model_names
from hub.readmodels import open_model

# read models by name (hub.readmodels): each opens its file in the data directory (on any
# event store)
PROJECTIONS = [*read_model_names(), "search-es"]  # search-es: the index on Elasticsearch
QUALITY_DEFAULT_GROUP = ("institution", "document_type", "rule", "day")


def cmd_projections(args, settings: Settings) -> int:
    """status: position and lag; run: catch up (resumable, Ctrl-C safe); rebuild: from nothing.
    Without a NAME, status and run are of every read model; rebuild needs one."""
    if args.action == "follow":
        if getattr(args, "from_stream", None):
            return _follow_stream(args, settings)
        return _follow(args, settings)
    if getattr(args, "from_stream", None):
        raise UsageError("--from-stream is for follow")
    if args.name is None and args.action == "rebuild":  # from nothing: never all by accident
        raise UsageError(f"rebuild needs the NAME of the read model to rebuild from nothing: "
                         f"one of {', '.join(PROJECTIONS)}")
    # no NAME: every read model (search-es too when it is the search backend)
    names = [args.name] if args.name else [
        *read_model_names(), *(["search-es"] if settings.search == "elasticsearch" else [])]
    store = open_store(settings, existing=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the index lives here on any event store
    try:
        if args.action == "status" and args.name is None:
            return _status_table(store, names, settings)
        sound = True
        for name in names:
            sound = _one(args.action, store, name, settings) and sound
        return 0 if sound else 1
    finally:
        store.close()


def _open(name: str, settings: Settings):
    if name == "search-es":  # at HUB_ES_URL, whatever HUB_SEARCH says
        from projections.search.backends import open_es_index

        return open_es_index(settings.es_url, settings.es_prefix, settings.es_analyzer)
    return open_model(name, settings.data_dir)


def _status_table(store, names: list[str], settings: Settings) -> int:
    """One line per read model: position, lag and whether it is sound (``status NAME`` adds
    its tables' sizes); exit status 1 when one is not (not this log's, unreadable)."""
    from hub.core.sqlitefile import UnreadableDatabase
    from hub.followers import follower_errors
    from projections.runner import Runner

    failing = follower_errors(settings.data_dir)
    end = store.max_notification_id()
    sound = True
    print(f"{'read model':20} {'position':>12} {'lag':>12}  state")
    for name in names:
        try:
            model = _open(name, settings)
        except UnreadableDatabase as e:
            print(f"{name:20} {'-':>12} {'-':>12}  FAILED: {e}")
            sound = False
            continue
        try:
            runner = Runner(store, model)
            state = "ok"
            if (stale := model.stale()) is not None:
                state = f"stale: {stale}"
            if (error := failing.get(model.name)) is not None:
                state = f"failing in the follower process: {error}"
            if (problem := runner.problem(end)) is not None:  # beyond the log, another log's
                state = f"FAILED: {problem}"
                sound = False
            print(f"{name:20} {model.position():>12} {max(0, end - model.position()):>12}  "
                  f"{state}")
        finally:
            model.close()
    return 0 if sound else 1


def _open_for_rebuild(name: str, settings: Settings):
    """The read model ``name`` to rebuild: a file that is no database (or a corrupt one) is
    derived data, moved aside (``NAME.sqlite.corrupt-<time>``, kept for a look) and made new."""
    import time

    from hub.core.sqlitefile import UnreadableDatabase

    try:
        return _open(name, settings)
    except UnreadableDatabase as e:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        moved = e.path.with_name(f"{e.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):  # its journal goes with it
            part = e.path.with_name(e.path.name + suffix)
            if part.exists():
                part.rename(moved.with_name(moved.name + suffix))
        print(f"{name}: {e.path} is unreadable ({e.cause}); moved aside to {moved}, rebuilt "
              "in a new file", file=sys.stderr)
    return _open(name, settings)


def _one(action: str, store, name: str, settings: Settings) -> bool:
    """status, run (catch up: resumable, Ctrl-C safe) or rebuild (from nothing) of one model;
    whether it is sound (status: False for one that is not this log's)."""
    from tqdm import tqdm

    from hub.core.jobs import Jobs, both
    from hub.mpi.candidates import IdentityCandidates
    from hub.mpi.incremental import forget_another_log
    from projections.runner import Runner

    model = _open_for_rebuild(name, settings) if action == "rebuild" else _open(name, settings)
    runner = Runner(store, model)
    try:
        if action == "status":
            print(f"{model.name}: position {model.position()}, lag {runner.lag()} events")
            if (problem := runner.problem()) is not None:
                print(f"  FAILED: {problem}")
            if (stale := model.stale()) is not None:
                print(f"  stale: {stale}")
            from hub.followers import follower_errors

            if (failing := follower_errors(settings.data_dir).get(model.name)) is not None:
                print(f"  failing in the follower process: {failing}")
            for table, n in model.stats().items():
                print(f"  {table:14} {n:>12,}")
            return problem is None
        total = store.max_notification_id() - (0 if action == "rebuild" else model.position())
        with tqdm(total=max(total, 0), unit=" events", disable=not sys.stderr.isatty(),
                  desc=f"{action} {model.name}") as bar, \
                Jobs(settings.data_dir).start(f"projection-{action}",
                                              f"{action} {model.name}", max(total, 0)) as job:
            progress = both(bar.update, job.advance)
            if action == "rebuild":
                done = runner.rebuild(progress=progress)
                if isinstance(model, IdentityCandidates) and forget_another_log(
                        model, store.max_notification_id(), store.log_id()):
                    print("identity-candidates: the automatic matching was of another event "
                          "log: it matches this log's Patients from the start")
            else:
                done = runner.catch_up(progress=progress)
            job.finish(f"applied {done} events")
        print(f"{model.name}: applied {done} events, now at {model.position()}, lag {runner.lag()}")
        return True
    finally:
        model.close()


def _follow(args, settings: Settings) -> int:
    """Follow the log into the read models until SIGTERM or Ctrl-C."""
    import threading

    from hub.core.parentwatch import watch_parent
    from hub.core.signals import stop_on_signals
    from hub.followers import Followers

    # the store must be there: at a mistyped --data-dir it made an empty one and followed it
    # for ever (`hub serve` makes the store before it starts this process)
    store = open_store(settings, existing=True)
    stop = threading.Event()
    stop_on_signals(stop.set)
    parent = os.environ.get("HUB_FOLLOW_PARENT")
    if parent:  # started by `hub serve`: stop with it, however it ended
        watch_parent(int(parent), stop.set, stop)
    try:
        if args.name == "search-es":
            settings.search = "elasticsearch"
        names = ["search"] if args.name == "search-es" else [args.name] if args.name else None
        followers = Followers(store, settings, names)
        try:
            followers.run_until(stop)
        finally:
            followers.close()
    finally:
        store.close()
    return 0


def _follow_stream(args, settings: Settings) -> int:
    """Follow the change stream into the read models (all, or the one named) until SIGTERM or
    Ctrl-C, without the event store."""
    import hashlib
    import socket
    import threading

    from hub.core.signals import stop_on_signals
    from hub.streamfollow import StreamFollower

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    names = [args.name] if args.name else read_model_names()
    models = []
    try:
        for name in names:
            if name == "search-es":
                from projections.search.backends import open_es_index

                models.append(open_es_index(settings.es_url, settings.es_prefix,
                                            settings.es_analyzer))
            else:
                models.append(open_model(name, settings.data_dir))
        where = hashlib.blake2b(str(settings.data_dir.resolve()).encode(),
                                digest_size=4).hexdigest()
        group = args.group or f"hub-follow-{socket.gethostname()}-{where}"
        follower = StreamFollower(args.from_stream, models, group, topic=kafka_topic(args.topic))
        stop = threading.Event()
        stop_on_signals(stop.set)
        try:
            follower.run_until(stop)
        finally:
            follower.close()
    finally:
        for m in models:
            m.close()
    return 0


# -- document quality and the quarantine ------------------------------------------------------------


def cmd_quality(args, settings: Settings) -> int:
    """``hub quality report``: the data-quality projection brought up to date, then its counts."""
    from tqdm import tqdm

    from projections.quality import QualityProjection, QueryError, parse_group, to_csv, to_table
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
        model = cast(QualityProjection, open_model("quality", settings.data_dir))
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
          f"{totals['information']} information); days in {zone_name()}")
    return 0
