"""The connector daemon: sources in threads, a delivery loop, a health/status endpoint.

The status endpoint answers ``/health`` and ``/status`` (counters, the sink's state, the units
delivered per minute over the last five minutes) to anyone who reaches it: no patient data is in
them. With ``status.admin_token_file`` it also answers, to a caller sending that token as a bearer
token (the hub's console), ``GET /deadletters`` (``?status=all``), ``GET /deadletters/ID`` (with
the payload) and ``POST /deadletters/ID/replay`` or ``POST /deadletters/replay`` (every open one):
the replay converts with the daemon's own mappers and terminology and spools for delivery.

``Connector(config).run()`` blocks until SIGTERM/SIGINT (or ``stop()``): sources stop receiving
(messages in flight are answered), the delivery loop finishes its batch, the spool is closed.
Anything spooled but not delivered is delivered at the next start; a killed process loses nothing
that was acknowledged.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from connectors.base import CannotStart
from connectors.config import ConfigError, ConnectorConfig, admin_token, check_keys
from connectors.sinks.base import Unavailable, take_batch
from connectors.spool import Spool, is_cut
from connectors.statelock import StateDirLock
from connectors.tls import TlsConfigError
from fhir_mapping.base import MappingError
from hub.core.signals import stop_on_signals

log = logging.getLogger("connectors")
THROUGHPUT_WINDOW_S = 300.0


def build_source(cfg: dict):
    kind = cfg["type"]
    name = cfg["name"]
    payload = cfg.get("kind")
    if isinstance(payload, str):
        from connectors.kinds import converter

        try:
            converter(payload)
        except MappingError as e:
            raise ConfigError(f"sources {name!r}: kind: {e.reason}") from None
    if kind == "mllp":
        from connectors.sources.mllp import MLLPSource

        known_keys(MLLPSource, cfg, f"sources {name!r}")
        return MLLPSource.from_config(name, cfg)
    if kind == "folder":
        from connectors.sources.folder import FolderSource

        known_keys(FolderSource, cfg, f"sources {name!r}")
        path = Path(str(cfg.get("path", "")))
        if "path" in cfg and not path.is_dir():
            # made for it, a mistyped path waited for files that never came there
            raise ConfigError(f"sources {name!r}: path {path} is no folder (make it, or correct "
                              "the path)")
        return FolderSource.from_config(name, cfg)
    if kind == "kafka":
        from connectors.sources.kafka import KafkaSource

        known_keys(KafkaSource, cfg, f"sources {name!r}")
        return KafkaSource.from_config(name, cfg)
    if kind == "database":
        from connectors.sources.database import DatabaseSource

        known_keys(DatabaseSource, cfg, f"sources {name!r}")
        return DatabaseSource.from_config(name, cfg)
    raise ValueError(f"unknown source type {kind!r}")


def _built(make: Any, where: str) -> Any:
    """A source or sink built from its configuration, a mistake in which is a ConfigError naming
    where (it was a traceback, or a misspelt key was silently ignored)."""
    try:
        return make()
    except ConfigError:
        raise
    except TlsConfigError as e:  # it names its source or sink already
        raise ConfigError(str(e)) from None
    except (TypeError, ValueError, KeyError, AttributeError, OSError) as e:
        raise ConfigError(f"{where}: {e}") from None


def known_keys(cls: Any, cfg: dict, where: str, also: tuple[str, ...] = ()) -> None:
    """Refuse keys ``cls`` does not take (misspelt ones were swallowed by ``**_``); ``also``:
    keys the daemon reads itself."""
    params = inspect.signature(cls.__init__).parameters
    known = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    known |= set(also)
    check_keys({k: v for k, v in cfg.items() if k not in ("type", "name")},
               known - {"self", "name"}, where)


def build_sink(cfg: dict, config: ConnectorConfig):
    if cfg["type"] == "http":
        from connectors.sinks.http import HttpSink

        known_keys(HttpSink, cfg, "sink", also=("batch_size",))
        return HttpSink(source_info=config.source_info,
                        **{k: v for k, v in cfg.items() if k != "type"})
    from connectors.sinks.kafka import KafkaSink

    known_keys(KafkaSink, cfg, "sink", also=("batch_size",))
    return KafkaSink(connector=config.name, source_info=config.source_info,
                     **{k: v for k, v in cfg.items() if k != "type"})


class Connector:
    def __init__(self, config: ConnectorConfig, sink=None, sources=None):
        self.config = config
        # first: a sink that cannot work (its key, its TLS files) is the configuration's error,
        # said once here as a ConfigError, before the terminology reads the same settings
        self.sink = sink if sink is not None else _built(
            lambda: build_sink(config.sink, config), "sink")
        # then the sources, before the spool is made: a source refused leaves no state behind
        self.sources = sources if sources is not None else [
            _built(lambda s=s: build_source(s), f"sources {s['name']!r}") for s in config.sources]
        # then the state directory, held until join: a second daemon on it sent every unit twice
        self.state_lock = StateDirLock(config.state_dir)
        try:
            self._open(config)
        except BaseException:
            self.state_lock.release()
            raise

    def _open(self, config: ConnectorConfig) -> None:
        # -- terminology: conversions normalised after mapping, before spooling --
        from connectors.spool import default_converter_factory
        from connectors.terminology import Terminology

        self.terminology = Terminology.from_config(config)
        self.spool = Spool(config.spool_path, config.source_info, durable=config.durable,
                           converter_factory=self.terminology.converter_factory(
                               default_converter_factory))
        # -- end terminology --
        self.batch_size = int(config.sink.get("batch_size", 50))
        self.stop_event = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        self.source_errors: dict[str, str] = {}
        self.source_failed: dict[str, float] = {}  # when each source last failed
        self.fatal: str | None = None  # a source that cannot start: the daemon stops
        self.sink_state: dict[str, Any] = {"state": "idle", "error": None, "since": time.time(),
                                           "retries": 0}
        self.started = time.time()
        # (when, units delivered) of the last five minutes: the throughput the status reports
        self.recent: deque[tuple[float, int]] = deque()
        token_file = config.status.get("admin_token_file")
        self.admin_token = admin_token(token_file) if token_file else None
        self.http: ThreadingHTTPServer | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.terminology.start(self.stop_event)  # ConceptMaps from the hub, refreshed
        for src in self.sources:
            t = threading.Thread(target=self._run_source, args=(src,), name=f"source-{src.name}",
                                 daemon=True)
            self.threads[src.name] = t
            t.start()
        self._await_listeners()
        t = threading.Thread(target=self._deliver_loop, name="delivery", daemon=True)
        self.threads["<delivery>"] = t
        t.start()
        status = self.config.status
        if status.get("port") is not None:
            host, port = status.get("host", "127.0.0.1"), int(status["port"])
            try:
                self.http = ThreadingHTTPServer((host, port), _handler(self))
            except OSError as e:  # a port in use, a host that does not resolve: say which
                self.stop()
                self.join()
                raise CannotStart(f"connector {self.config.name}: its status page cannot listen "
                                  f"on {host}:{port}: {e.strerror or e}") from None
            self.http.daemon_threads = True
            threading.Thread(target=self.http.serve_forever, name="status-http",
                             daemon=True).start()
            self._write_status_file()
        log.info("connector %s started: %d sources", self.config.name, len(self.sources))

    def _await_listeners(self, timeout: float = 10.0) -> None:
        """Until each listener is bound and each database source has checked its view's columns
        (or ``timeout``): one that cannot bind, or a view without a mapped column, stops the
        daemon here, with CannotStart, before it says it has started."""
        deadline = time.monotonic() + timeout
        for src in self.sources:
            ready = getattr(src, "ready", None) or getattr(src, "checked", None)
            while ready is not None and not ready.is_set() and self.fatal is None \
                    and self.threads[src.name].is_alive() and time.monotonic() < deadline:
                ready.wait(0.02)
        if self.fatal is not None:
            self.stop()
            self.join()
            raise CannotStart(self.fatal)

    def _write_status_file(self) -> None:
        if self.http is not None:
            host, port = cast(tuple[str, int], self.http.server_address[:2])  # a TCP server's
            (self.config.state_dir / "status.url").write_text(f"http://{host}:{port}\n")

    def stop(self) -> None:
        self.stop_event.set()
        with self.spool.changed:
            self.spool.changed.notify_all()

    def join(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads.values():
            t.join(max(0.0, deadline - time.monotonic()))
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            try:
                (self.config.state_dir / "status.url").unlink()
            except OSError:
                pass
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001
            log.exception("closing the sink")
        self.spool.close()
        self.state_lock.release()

    def run(self, started: Callable[[], None] | None = None) -> None:
        """Until SIGTERM or SIGINT (in the main thread); ``started`` is called once every
        listener is bound. CannotStart when a source cannot start where it is configured."""
        stop_on_signals(self.stop)
        self.start()
        if started is not None:
            started()
        while not self.stop_event.wait(0.5):
            pass
        log.info("connector %s stopping", self.config.name)
        self.join()
        if self.fatal is not None:  # a listener that bound late failed (past start's wait)
            raise CannotStart(self.fatal)

    # -- sources --------------------------------------------------------------------------------

    def _run_source(self, src) -> None:
        delay = self.config.retry_initial_s
        while not self.stop_event.is_set():
            try:
                src.run(self.spool, self.stop_event)
                self.source_errors.pop(src.name, None)
                if self.stop_event.is_set():
                    return
            except CannotStart as e:  # its configuration is wrong: retrying changes nothing
                self.fatal = str(e)
                self.source_errors[src.name] = self.fatal
                self.stop()
                return
            except Exception as e:  # noqa: BLE001 - a source failing later is restarted
                error = f"{type(e).__name__}: {e}"
                if self.source_errors.get(src.name) != error:
                    log.exception("source %s failed; restarting in %.1f s", src.name, delay)
                else:  # the same failure again (a port in use, a host that does not resolve):
                    # one line each time, not a traceback flooding the log
                    log.warning("source %s failed again (%s); restarting in %.1f s", src.name,
                                error[:200], delay)
                self.source_errors[src.name] = error
                self.source_failed[src.name] = time.time()
            if self.stop_event.wait(delay):
                return
            delay = min(delay * 2, self.config.retry_max_s)

    # -- delivery -------------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        delay = self.config.retry_initial_s
        while not self.stop_event.is_set():
            try:
                delay = self._deliver_step(delay)
            except Exception as e:  # noqa: BLE001 - the spool failed (locked, disk full, I/O)
                # the thread must live on: it ended here, and nothing was delivered again until
                # a restart while the status still said "retrying"
                log.exception("delivery failed on the spool")
                self._retrying(f"spool: {type(e).__name__}: {e}")
                if self.stop_event.wait(delay * random.uniform(0.8, 1.2)):
                    return
                delay = min(delay * 2, self.config.retry_max_s)

    def _deliver_step(self, delay: float) -> float:
        """Deliver one batch (or wait for one); the retry delay to go on with."""
        units = self.spool.pending(self.batch_size)
        if not units:
            self.spool.wait(0.5)
            return delay
        batch = take_batch(units, self.batch_size)
        try:
            errors = self.sink.deliver(batch)
        except Unavailable as e:
            self._retrying(str(e))
            self.spool.attempted(batch)
            self.stop_event.wait(delay * random.uniform(0.8, 1.2))
            return min(delay * 2, self.config.retry_max_s)
        except Exception as e:  # noqa: BLE001 - a sink bug: keep the units, retry later
            log.exception("sink failed")
            self._retrying(f"{type(e).__name__}: {e}")
            self.stop_event.wait(delay)
            return min(delay * 2, self.config.retry_max_s)
        delay = self.config.retry_initial_s
        if self.sink_state["state"] != "ok":
            self.sink_state.update(state="ok", error=None, since=time.time(), retries=0)
        ok = [u for u, err in zip(batch, errors) if err is None]
        bad = [(u, err) for u, err in zip(batch, errors) if err is not None]
        self.spool.delivered(ok)
        self._delivered(len(ok))
        if bad:
            ids = self.spool.fail_units(bad)
            log.warning("%d units refused by the sink, dead letters %s", len(bad), ids)
        self.sink_state["delivered_at"] = time.time()
        return delay

    def _delivered(self, n: int) -> None:
        now = time.time()
        self.recent.append((now, n))
        while self.recent and self.recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self.recent.popleft()

    def throughput_per_min(self) -> float:
        now = time.time()
        window = min(THROUGHPUT_WINDOW_S, max(1.0, now - self.started))
        done = sum(n for t, n in list(self.recent) if t >= now - THROUGHPUT_WINDOW_S)
        return round(done * 60.0 / window, 1)

    def _retrying(self, error: str) -> None:
        if self.sink_state["state"] != "retrying":
            log.warning("sink unavailable, retrying with backoff: %s", error)
            self.sink_state.update(state="retrying", since=time.time(), retries=0)
        self.sink_state["error"] = error
        self.sink_state["retries"] += 1

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        sources = {}
        counters = self.spool.counters()
        for src in self.sources:
            t = self.threads.get(src.name)
            d = {"type": type(src).__name__, "alive": bool(t and t.is_alive()),
                 **counters.get(src.name, {})}
            ready = getattr(src, "ready", None)  # a listener: is it bound and accepting?
            if ready is not None:
                d["listening"] = ready.is_set()
                if d["listening"]:
                    self.source_errors.pop(src.name, None)  # an earlier failure to bind is over
                    self.source_failed.pop(src.name, None)
            if src.name in self.source_errors:
                d["error"] = self.source_errors[src.name]
            if hasattr(src, "port"):
                d["port"] = src.port
            if hasattr(src, "stats"):
                d["stats"] = dict(src.stats)
            sources[src.name] = d
        # a source failing again and again (its broker away, a topic it cannot read) is alive
        # only as a thread: it is not healthy until it has gone a while without failing
        window = max(60.0, 3 * self.config.retry_max_s)
        failing = {n for n, t in self.source_failed.items() if time.time() - t < window}
        for name in failing & set(sources):
            sources[name]["failing"] = True
        store_error = self.spool.store_error  # the spool could not keep what came in
        healthy = all(d["alive"] and d.get("listening", True) and not d.get("failing")
                      for d in sources.values()) and (
            self.sink_state["state"] != "retrying" or time.time() - self.sink_state["since"] < 300
        ) and store_error is None
        return {"connector": self.config.name, "healthy": healthy,
                **({"spool": {"error": store_error[1], "since": store_error[0]}}
                   if store_error else {}),
                "uptime_s": round(time.time() - self.started, 1), "sources": sources,
                "throughput_per_min": self.throughput_per_min(),
                "admin": self.admin_token is not None,
                "sink": {"type": self.config.sink.get("type"), **self.sink_state},
                **({"terminology": self.terminology.state} if self.terminology.enabled else {})}


def _handler(connector: Connector):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            path, _, query = self.path.partition("?")
            path = path.rstrip("/")
            if path in ("/health", "/healthz"):
                st = connector.status()
                self._send(200 if st["healthy"] else 503,
                           {"status": "ok" if st["healthy"] else "degraded"})
            elif path in ("/status", ""):
                self._send(200, connector.status())
            elif path == "/deadletters" and self._admin():
                every = "status=all" in query.split("&")
                self._send(200, connector.spool.deadletters(None if every else "open", 500))
            elif path.startswith("/deadletters/") and self._admin():
                dl = connector.spool.deadletter(_number(path.rsplit("/", 1)[1]))
                if dl is None:
                    self._send(404, {"error": "no such dead letter"})
                    return
                dl["payload"] = bytes(dl["payload"]).decode("utf-8", "replace")
                self._send(200, dl)
            elif not path.startswith("/deadletters"):
                self._send(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            path = self.path.partition("?")[0].rstrip("/")
            if not path.startswith("/deadletters/") or not path.endswith("/replay"):
                self._send(404, {"error": "not found"})
                return
            if not self._admin():
                return
            which = path[len("/deadletters/"):-len("/replay")]
            if which:
                ids = [_number(which)]
            else:
                ids = [d["id"] for d in connector.spool.deadletters("open", 10_000)
                       if not is_cut(d)]  # a fragment is never written
            results = []
            for i in ids:
                try:
                    a = connector.spool.replay(i)
                    results.append({"id": i, "ok": a.ok, "error": a.error,
                                    "deadletter_id": a.deadletter_id})
                except (KeyError, ValueError) as e:
                    results.append({"id": i, "ok": False,
                                    "error": {"reason": str(e).strip("'\"")}})
            self._send(200, {"results": results})

        def _admin(self) -> bool:
            """Whether the caller sent the admin token (answered 401 or 403 otherwise)."""
            if connector.admin_token is None:
                self._send(403, {"error": "the dead letters are not served: no "
                                          "status.admin_token_file is configured"})
                return False
            sent = self.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {connector.admin_token}".encode()):
                self._send(401, {"error": "the admin token is needed"})
                return False
            return True

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body, default=str, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json; charset=utf-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def _number(text: str) -> int:
    return int(text) if text.isdigit() and len(text) < 12 else -1
