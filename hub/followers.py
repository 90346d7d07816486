"""The read models following the event log, and automatic matching, as one set per process.

``hub projections follow`` runs them in a process of their own. ``hub serve`` starts one such
process beside the API by default, so that a stream of writes is taken into the read models on
the other core instead of sharing the API's interpreter (and its lock) with the requests. An
API process reads the same files and, before answering a read that must see its own write,
brings the model up to date itself (``Runner.sync``). Two followers of one file never apply a
batch twice: each batch takes the file's write lock and re-reads the position first
(``projections.sqlite_model``), and identity decisions are versioned on their stream.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from hub.core.config import Settings
from hub.core.jobs import alive, process_mark
from hub.core.lease import PgLease
from hub.core.redact import redact_url
from hub.core.store import ResourceStore
from hub.mpi import weights as W
from hub.mpi.candidates import IdentityCandidates
from hub.mpi.identity import IdentityService
from hub.mpi.incremental import IncrementalMatcher
from hub.mpi.matcher import Matcher
from hub.readmodels import names as read_model_names
from hub.readmodels import open_model
from projections.contract import ReadModel
from projections.person import PersonProjection
from projections.runner import LogWatch, Runner
from projections.search.backends import open_es_index

log = logging.getLogger("hub.followers")
# what a follower process's read models are failing on, for the API processes' /ready: they
# follow nothing themselves and would show only a growing lag ({"pid", "errors": {model: text}});
# one file per follower of all the models, or of the ones named (followers-search.json)
STATUS_FILE = "followers.json"


def follower_errors(data_dir: Path) -> dict[str, str]:
    """The failures the follower processes of ``data_dir`` last reported, by read model; none
    from one that is no longer running (its successor writes its own)."""
    found: dict[str, str] = {}
    for path in sorted(data_dir.glob("followers*.json")):
        try:
            status = orjson.loads(path.read_bytes())
            # the followers of a data directory run on its host (whose name a new container
            # may change): judged by pid and mark alone
            if not alive(int(status["pid"]), os.uname().nodename, status.get("mark")):
                continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
            continue
        errors = status.get("errors")
        if isinstance(errors, dict):
            found.update((str(k), str(v)) for k, v in errors.items())
    return found


class Followers:
    """The runners of the read models ``names`` (all by default) over ``store``, and, when the
    candidate index is among them and automatic matching is on, the incremental matcher with
    the identity service recording its decisions."""

    def __init__(self, store: ResourceStore, settings: Settings, names: Iterable[str] | None = None):
        self.store = store
        chosen = list(names) if names else read_model_names()
        unknown = [n for n in chosen if n not in read_model_names()]
        if unknown:
            raise ValueError(f"unknown read model(s): {', '.join(unknown)}; "
                             f"known: {', '.join(read_model_names())}")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.models: dict[str, ReadModel] = {}
        self.runners: list[Runner] = []
        self._watch = LogWatch(store)  # one reader of the log's end for all of them
        self._identity: IdentityService | None = None
        self._person: PersonProjection | None = None
        self._status = settings.data_dir / (
            STATUS_FILE if not names else f"followers-{'-'.join(sorted(chosen))}.json")
        self._reported: dict[str, str] | None = None
        try:
            for name in chosen:
                self.models[name] = open_model(name, settings.data_dir)
            index = self.models.get("identity-candidates")
            for model in self.models.values():
                if model is index and settings.mpi_automatch:
                    continue  # the incremental matcher below brings the index up itself
                self.runners.append(Runner(store, model, lease=self._lease(settings, model.name)))
            if isinstance(index, IdentityCandidates) and settings.mpi_automatch:
                self.runners.append(self._matching(index, settings))
            if settings.search == "elasticsearch" and (not names or "search" in chosen):
                # the search index on Elasticsearch follows beside the SQLite one
                es = open_es_index(settings.es_url, settings.es_prefix, settings.es_analyzer)
                self.models["search-es"] = es
                self.runners.append(Runner(store, es, lease=self._lease(
                    settings, es.name, f"{redact_url(settings.es_url)}|{es.prefix}")))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _lease(settings: Settings, name: str, where: str | None = None) -> PgLease | None:
        """With PostgreSQL, the lease that lets one follower of a model apply at a time: of
        this machine's files for a model in the data directory, of the whole region for one
        shared by every node (``where``: the Elasticsearch index; the identity decisions)."""
        if not settings.database_url:
            return None  # the embedded default: the SQLite file's own lock is enough
        if where is None:
            where = f"{socket.gethostname()}:{settings.data_dir.resolve()}"
        return PgLease(settings.database_url, f"hub-follower|{where}|{name}")

    def _matching(self, index: IdentityCandidates, settings: Settings) -> Runner:
        person = self.models.get("person")
        if not isinstance(person, PersonProjection):  # decisions are planned on persons
            person = self._person = PersonProjection(settings.data_dir / "person.sqlite")
        identity = self._identity = IdentityService(self.store, person, Runner(self.store, person))
        matcher = Matcher(index, W.load(settings.data_dir))
        # the decisions are the region's: one matcher at a time across every node
        return Runner(self.store, IncrementalMatcher.recording_with(index, matcher, identity),
                      lease=self._lease(settings, "mpi-incremental", "region"))

    def start(self) -> None:
        self._watch.start()
        for r in self.runners:
            r.start(watch=self._watch)

    def run_until(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set (a signal), then stop the runners; meanwhile, what they
        fail on is written for the API processes' /ready (``STATUS_FILE``) as it changes."""
        self.start()
        try:
            self._report()
            while not stop.wait(1.0):
                self._report()
        finally:
            self.stop()
            self._report({})

    def _report(self, errors: dict[str, str] | None = None) -> None:
        errors = self.errors() if errors is None else errors
        if errors == self._reported:
            return
        try:
            tmp = self._status.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(orjson.dumps({"pid": os.getpid(), "mark": process_mark(),
                                          "errors": errors}))
            os.replace(tmp, self._status)
            self._reported = errors
        except OSError as e:  # a full disk: the lag still shows on /ready
            log.warning("could not write %s: %s", self._status, e)

    def stop(self) -> None:
        for r in self.runners:
            r.stop()
        self._watch.stop()

    def errors(self) -> dict[str, str]:
        return {r.model.name: f"{type(r.error).__name__}: {r.error}"[:300]
                for r in self.runners if r.error is not None}

    def close(self) -> None:
        self.stop()
        for m in self.models.values():
            m.close()
        if self._person is not None:
            self._person.close()


class FollowerProcess:
    """``hub projections follow`` as a child process of ``hub serve``, started again (after a
    pause that grows to 30 s) whenever it stops on its own, stopped with the server."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="follower-process", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        pause = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "projections", "follow"],
                                         env=self.env)
            code = self.proc.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            log.warning("the read-model follower process stopped (exit %s); starting it again in "
                        "%.0f s", code, pause)
            pause = 1.0 if time.monotonic() - started > 60 else min(pause * 2, 30.0)
            self._stop.wait(pause)

    def stop(self) -> None:
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout=15)
