"""``hub serve|ingest|generate|demo|show|history|reindex``: the records themselves: serving them,
loading files of them, a synthetic region, one resource and its versions, the write-side indexes."""

from __future__ import annotations

import heapq
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from hub.core import jsontext
from hub.core.bundlestream import BundlePart
from hub.core.commandline import UsageError, input_kind, iter_inputs, open_store, others_can_read
from hub.core.config import Settings, is_loopback, url_host
from hub.core.errors import FhirError


def cmd_serve(args, settings: Settings) -> int:
    from hub.api.app import create_app

    settings.host = args.host or settings.host
    settings.port = args.port or settings.port
    settings.tls_cert = getattr(args, "tls_cert", None) or settings.tls_cert
    settings.tls_key = getattr(args, "tls_key", None) or settings.tls_key
    settings.tls_client_ca = getattr(args, "tls_client_ca", None) or settings.tls_client_ca
    if not settings.auth and not is_loopback(settings.host):
        raise UsageError(f"refusing to serve on {settings.host or 'every address'} without "
                         "access control: anyone on the network could read every record; unset "
                         "HUB_AUTH=0, or listen on 127.0.0.1")
    if settings.auth and not settings.base_url and not is_loopback(settings.host):
        # tokens name the FHIR base as their audience, and answers link to it: a wildcard
        # address is nowhere a client can reach (every token and link said http://0.0.0.0:…),
        # and an interface's address or a host name need not be the name clients use
        raise UsageError(f"serving on {settings.host or 'every address'} with access control "
                         "needs HUB_BASE_URL: the URL clients reach the hub at (tokens name it "
                         "as their audience, answers link to it), e.g. "
                         f"HUB_BASE_URL=https://hub.example.org/fhir")
    if (settings.tls_client_ca or settings.tls_key) and not settings.tls_cert:
        raise UsageError("HUB_TLS_KEY and HUB_TLS_CLIENT_CA (--tls-key, --tls-client-ca) need a "
                         "server certificate: set HUB_TLS_CERT (--tls-cert) too")
    if settings.auth_jwks_url and not settings.auth_issuer:  # whose keys they are is unknown
        raise UsageError("HUB_AUTH_JWKS_URL needs HUB_AUTH_ISSUER: the issuer whose tokens its "
                         "keys verify")
    if args.workers is not None:
        settings.workers = args.workers
    if settings.workers < 1:
        raise UsageError("--workers / HUB_WORKERS must be at least 1")
    loose = others_can_read(settings.data_dir)  # on PostgreSQL too: the indexes, keys, audit
    if loose:
        print(f"hub serve: warning: {loose}", file=sys.stderr, flush=True)
    _check_tls(settings)
    _check_port(settings)
    open_store(settings).close()  # fail now, with a clear line, if the store cannot be opened
    print(f"FHIR API on {settings.fhir_base} "
          f"(data: {settings.database_url and 'PostgreSQL' or settings.data_dir}"
          f"{', client certificates required' if settings.tls_client_ca else ''})", flush=True)
    options = server_options(settings)
    mode = getattr(args, "followers", "process")
    child = None
    if mode != "threads":  # the API processes only sync on demand; another process follows
        settings.follow = os.environ["HUB_FOLLOW"] = "none"
    if mode == "process":
        from hub.followers import FollowerProcess

        env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir),
               "HUB_FOLLOW_PARENT": str(os.getpid())}
        if settings.database_url:
            env["HUB_DATABASE_URL"] = settings.database_url
        child = FollowerProcess(env)
        child.start()
        # uvicorn shuts down on SIGTERM, then raises it again under the handler it found: this
        # one turns it into an exit that stops the follower on the way out
        signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        _run_server(args, settings, options, create_app)
    finally:
        if child is not None:
            child.stop()
    return 0


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _run_server(args, settings: Settings, options: dict, create_app) -> None:
    import uvicorn

    workers = settings.workers
    if workers > 1:
        # Worker processes build their own app from the environment: hand the settings on.
        os.environ.update(HUB_DATA_DIR=str(settings.data_dir), HUB_HOST=settings.host,
                          HUB_PORT=str(settings.port))
        if settings.rate_limit > 0:  # each worker keeps its share: together, the limit set
            os.environ["HUB_RATE_LIMIT"] = str(settings.rate_limit / workers)
        os.environ["HUB_SERVE_PARENT"] = str(os.getpid())  # the workers end with this process
        os.environ["HUB_HEADER_TIMEOUT"] = str(settings.header_timeout)
        for name, value in (("HUB_DATABASE_URL", settings.database_url),
                            ("HUB_TLS_CERT", settings.tls_cert), ("HUB_TLS_KEY", settings.tls_key),
                            ("HUB_TLS_CLIENT_CA", settings.tls_client_ca)):
            if value:
                os.environ[name] = value
        uvicorn.run("hub.api.app:create_worker_app", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(settings, serving=True), **options)


def _check_port(settings: Settings) -> None:
    """The address is free before the hub says it serves there (it said so, then exited 3 on
    "address already in use")."""
    import socket

    try:
        infos = socket.getaddrinfo(settings.host or None, settings.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {settings.host}: {e.strerror or e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(f"cannot serve on {url_host(settings.host)}:{settings.port}: "
                             f"{e.strerror or e}") from None


def _check_tls(settings: Settings) -> None:
    """The certificate, key and client CA load, before any worker starts: a missing or wrong
    file made every worker die at start and be started again for ever, the port closed."""
    if not settings.tls_cert:
        return
    import ssl

    for what, path in (("certificate (--tls-cert)", settings.tls_cert),
                       ("key (--tls-key)", settings.tls_key),
                       ("client CA (--tls-client-ca)", settings.tls_client_ca)):
        if path and not Path(path).is_file():
            raise UsageError(f"the TLS {what} {path} is not a readable file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"the TLS certificate {settings.tls_cert} and key "
                         f"{settings.tls_key or '(in the certificate file)'} do not load: "
                         f"{getattr(e, 'reason', None) or e}") from None
    if settings.tls_client_ca:
        try:
            ctx.load_verify_locations(settings.tls_client_ca)
        except (ssl.SSLError, OSError) as e:
            raise UsageError(f"the TLS client CA {settings.tls_client_ca} (--tls-client-ca, "
                             "HUB_TLS_CLIENT_CA) does not load: "
                             f"{getattr(e, 'reason', None) or e}") from None
    _warn_expired(settings.tls_cert)


def _warn_expired(path: str) -> None:
    """A warning, at start, that the server certificate (the first of its file) is past its
    notAfter: it served, and every client refused the handshake, the server saying nothing."""
    from cryptography import x509

    from hub.core.certificates import expired_on

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (ValueError, OSError):  # ssl loaded it: a form cryptography reads otherwise
        return
    ends = expired_on(cert)
    if ends is not None:
        print(f"hub: warning: the TLS certificate {path} expired on "
              f"{ends:%Y-%m-%d %H:%M:%S} UTC (notAfter): clients will refuse it",
              file=sys.stderr, flush=True)


def server_options(settings: Settings) -> dict:
    """uvicorn's options for ``settings``: where to listen, the header limits (size, and the
    deadline of hub.api.headtimeout), the keep-alive timeout, TLS.

    proxy_headers is off: uvicorn would believe X-Forwarded-For from localhost; the hub believes it
    from HUB_TRUSTED_PROXIES only (hub.api.traffic)."""
    import ssl

    from hub.api.headtimeout import HeadTimeoutH11Protocol

    HeadTimeoutH11Protocol.head_timeout = settings.header_timeout

    options: dict = dict(host=settings.host, port=settings.port, log_level="warning",
                         access_log=False, proxy_headers=False,
                         http="hub.api.headtimeout:HeadTimeoutH11Protocol",
                         timeout_keep_alive=settings.keep_alive,
                         h11_max_incomplete_event_size=settings.max_header)
    if settings.tls_cert:
        options.update(ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)
        if settings.tls_client_ca:  # mutual TLS: a client certificate signed by this CA
            options.update(ssl_ca_certs=settings.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


# -- ingest ----------------------------------------------------------------------------------------

SHOW_PROBLEMS = 20


def outcome_kind(result) -> str:
    """created | updated | unchanged | rejected for one result of ``Hub.ingest``: by what was
    stored (a warning comes with a write too; only a write that stored nothing is unchanged)."""
    if isinstance(result, FhirError):
        return "rejected"
    if not result.written:
        return "unchanged"
    return "created" if result.status == 201 else "updated"


def entry_kind(entry, response: dict, written: bool) -> str:
    """created | updated | deleted | unchanged | rejected for one entry of a transaction/batch;
    ``written``: whether it stored a new version or a deletion (``bundles.process``)."""
    status = response["status"][:3]
    if not status.startswith("2"):
        return "rejected"
    if not written:  # the same content, older than what is stored, nothing there to delete,
        return "unchanged"  # a conditional create that matched
    if status == "201":
        return "created"
    return "deleted" if entry["request"]["method"] == "DELETE" else "updated"


# the namespace of the ids `hub ingest` gives resources that come without one
_INGEST_IDS = uuid.UUID("6f1d6f3c-2f0b-5d8e-9a51-3c0b1f7e2a40")


def ingest_paths(hub, paths: list[Path], ctx, batch_size: int, progress: bool, rejected_dir: Path):
    """Feed files through the hub, in input order.

    Returns (Counter of outcomes per input, the first problems as (where, reason) in input order,
    the number of problems, the file keeping the rejected inputs or None, the files skipped as
    (name, the name they were read under) because the paths reached them again, how many
    inputs replayed from ``rejected_dir`` were rejected again). Plain
    resources are stored in batches; a batch is committed before a transaction or batch Bundle
    runs, so later inputs always win over earlier ones.

    Each rejected input is kept with its location and the source it was written under (the
    run's ``--institution``); a replay of that file writes each under its source again (unless
    the replay names an institution itself) and reports it at its first location. One rejected
    again is not kept a second time: its line in ``rejected_dir`` still holds it (a replay of the
    folder copied every line anew, doubling the folder each time it was run).
    """
    import dataclasses

    from tqdm import tqdm

    from hub.api import bundles
    from hub.core.resource import content_hash, parse_json
    from hub.core.store import StoreInputError

    counts: Counter[str] = Counter()
    shown: list[tuple[int, int, str, str]] = []  # max-heap (-seq, -n) of the first problems
    n_problems = 0
    rejected_dir.mkdir(parents=True, exist_ok=True)
    rejected_path = rejected_dir / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.ndjson"
    rejected_file = None
    kept_dir = rejected_dir.resolve()
    already_kept: set[int] = set()  # the inputs (by seq) replayed from a line of ``rejected_dir``
    n_kept_again = 0
    bar = tqdm(unit=" res", disable=not progress, smoothing=0.1, mininterval=0.5)

    def count(kind: str, n: int = 1) -> None:
        counts[kind] += n
        bar.update(n)

    def reject(seq: int, where: str, raw: bytes, outcome: dict, n: int = 1,
               source: dict | None = None) -> None:
        nonlocal rejected_file, n_problems, n_kept_again
        count("rejected", n)
        n_problems += 1
        issue = outcome["issue"][0]
        reason = issue.get("diagnostics") or issue["code"]
        if issue.get("expression"):
            reason += f" at {issue['expression'][0]}"
        heapq.heappush(shown, (-seq, -n_problems, where, reason))
        if len(shown) > SHOW_PROBLEMS:
            heapq.heappop(shown)
        if seq in already_kept:
            n_kept_again += n
            return
        if rejected_file is None:
            rejected_file = rejected_path.open("ab")
        rejected_file.write(orjson.dumps({"where": where, "outcome": outcome,
                                          "input": raw.decode("utf-8", "replace"),
                                          "source": source or ctx.source}) + b"\n")

    contexts: dict[tuple, object] = {}  # the run's context under each source a replay restores

    def replayed_ctx(kept: object):
        """The context of a rejected input replayed: under the source it was rejected under
        (its institution), the run's own source over it (an ``--institution`` given now)."""
        if not isinstance(kept, dict):
            return ctx
        source = {k: v[:128] for k, v in kept.items()
                  if isinstance(k, str) and isinstance(v, str) and v}
        source.update(ctx.source)
        key = tuple(sorted(source.items()))
        if key not in contexts:
            contexts[key] = dataclasses.replace(ctx, source=source)
        return contexts[key]

    pending: list[tuple[int, str, bytes, object]] = []  # (seq, where, raw, parsed)
    pending_ctx = ctx  # what the pending inputs are written under

    def alone(raw: bytes, d: object):
        try:
            return next(iter(hub.ingest([(raw, d)], pending_ctx, batch_size=1)))
        except StoreInputError as e:
            return e

    def flush() -> None:
        if pending:
            try:
                results = list(hub.ingest(((raw, d) for _, _, raw, d in pending), pending_ctx,
                                          batch_size=len(pending)))
            except StoreInputError:
                # a value the database refused fails the commit it is in: each input again on
                # its own, so the one that holds it is rejected (an outage still ends the run)
                results = [alone(raw, d) for _, _, raw, d in pending]
            for (seq, where, raw, _), result in zip(pending, results, strict=True):
                kind = outcome_kind(result)
                if kind == "rejected":
                    reject(seq, where, raw, result.outcome(), source=pending_ctx.source)
                else:
                    count(kind)
            pending.clear()

    seen: Counter[tuple[bytes, str | None]] = Counter()

    def content_id(d: dict, full_url: str | None = None) -> str | None:
        """The id of a resource that comes without one: of its content, of the fullUrl of the
        Bundle entry it came in (if any: two sends of the same content under different fullUrls
        stay two facts) and of how many times the same came before in this run, so that running
        an import again, after an interruption or by mistake, finds what it stored then
        (unchanged) instead of storing it twice."""
        try:
            h = content_hash(d)
        except (TypeError, ValueError, orjson.JSONEncodeError):
            return None
        seen[h, full_url] += 1
        name = f"{d['resourceType']}|{h.hex()}|{seen[h, full_url]}"
        return str(uuid.uuid5(_INGEST_IDS, name if full_url is None else f"{name}|{full_url}"))

    def add(item: tuple[int, str, bytes, object], item_ctx) -> None:
        nonlocal pending_ctx
        if item_ctx is not pending_ctx:  # a batch is written under one source
            flush()
            pending_ctx = item_ctx
        d = item[3]
        if isinstance(d, dict) and not d.get("id") and isinstance(d.get("resourceType"), str):
            rid = content_id(d)
            if rid:
                d["id"] = rid
        pending.append(item)
        if len(pending) >= batch_size:
            flush()

    def run_bundle(seq: int, where: str, raw: bytes, d: dict, ctx, replayed: bool,
                   at: list[int] | None = None) -> None:
        """``replayed``: a rejected entry kept as a one-entry Bundle, ``where`` its location;
        ``at``: the index of each entry in its file's Bundle (entries of a stream)."""
        entries = d["entry"]
        whole, at = at is None, at or list(range(len(entries)))
        flush()
        for entry in entries:
            # a create (the shape of an export: Synthea's POST entries with urn:uuid fullUrls)
            # is an update of the id of its content, as a plain resource is: run again, the
            # import stored every resource a second time. A conditional create stays one.
            request = entry.get("request") if isinstance(entry, dict) else None
            r = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(request, dict) and request.get("method") == "POST" and \
                    not request.get("ifNoneExist") and isinstance(r, dict) and \
                    request.get("url") == r.get("resourceType") and isinstance(r["resourceType"], str):
                r.pop("id", None)  # a create's id is not kept: the content names it
                full_url = entry.get("fullUrl")
                rid = content_id(r, full_url if isinstance(full_url, str) and full_url else None)
                if rid:
                    r["id"] = rid
                    entry["request"] = {**request, "method": "PUT", "url": f"{r['resourceType']}/{rid}"}
        written: set[int] = set()
        try:
            out = bundles.process(d, hub, ctx, "", False, _no_get, written=written)
        except FhirError as e:  # a transaction fails as a whole: every entry is rejected
            reject(seq, where if whole else f"{where}#entry[{at[0]}-{at[-1]}]",
                   raw, e.outcome() if whole else _renumbered(e.outcome(), at), len(entries),
                   ctx.source)
            return
        for i, (entry, answer) in enumerate(zip(entries, out["entry"], strict=True)):
            kind = entry_kind(entry, answer["response"], i in written)
            if kind == "rejected":  # kept as a one-entry Bundle of the same type, to replay
                reject(seq, where if replayed and len(entries) == 1 else f"{where}#entry[{at[i]}]",
                       orjson.dumps({"resourceType": "Bundle", "type": d["type"], "entry": [entry]}),
                       answer["response"]["outcome"] if whole
                       else _renumbered(answer["response"]["outcome"], at), source=ctx.source)
            else:
                count(kind)

    def run_part(seq: int, where: str, part: BundlePart) -> None:
        """Some entries of a large batch or collection Bundle, as the whole Bundle's would be
        run (its entries are independent), each rejected at its index in the whole."""
        entries: list[tuple[int, bytes, Any]] = []
        for i, (text, problem) in enumerate(part.entries, part.first):
            try:
                if problem is not None:
                    raise FhirError(400, "structure", problem, f"Bundle.entry[{i}]")
                entries.append((i, text, parse_json(text, "entry")))
            except FhirError as e:
                reject(seq, f"{where}#entry[{i}]", part.bundle([text]) if text else b"", e.outcome())
        if part.type == "collection":
            for i, _, entry in entries:
                r = entry.get("resource") if isinstance(entry, dict) else None
                add((seq, f"{where}#entry[{i}]", orjson.dumps(r), r), ctx)
            return
        if entries:
            run_bundle(seq, where, part.bundle([text for _, text, _ in entries]),
                       {"resourceType": "Bundle", "type": "batch", "entry": [e for _, _, e in entries]},
                       ctx, False, [i for i, _, _ in entries])

    skipped: list[tuple[str, str]] = []
    try:
        for seq, (where, raw, unreadable) in enumerate(
                iter_inputs(paths, lambda name, first: skipped.append((name, first)), stream=True)):
            if unreadable is not None:
                reject(seq, where, b"", FhirError(400, "exception", unreadable).outcome())
                continue
            assert raw is not None  # iter_inputs gives the text or why it could not be read
            if isinstance(raw, BundlePart):
                run_part(seq, where, raw)
                continue
            here, replayed = ctx, False
            try:
                d = parse_json(raw)
                if isinstance(d, dict) and "resourceType" not in d and \
                        isinstance(d.get("input"), str) and "outcome" in d:
                    # a line of a rejected-inputs file: what was sent, replayed as it was,
                    # under the source it was sent under, reported where it was first read
                    here, replayed = replayed_ctx(d.get("source")), True
                    if Path(where.rpartition(":")[0]).resolve().parent == kept_dir:
                        already_kept.add(seq)
                    if isinstance(d.get("where"), str) and d["where"]:
                        where = d["where"]
                    raw = d["input"].encode("utf-8")
                    d = parse_json(raw)
            except FhirError as e:
                reject(seq, where, raw, e.outcome(), source=here.source)
                continue
            btype = d.get("type") if isinstance(d, dict) and d.get("resourceType") == "Bundle" else None
            if btype not in ("transaction", "batch", "collection"):
                add((seq, where, raw, d), here)  # a resource (a document or other Bundle included)
                continue
            entries = d.get("entry", [])
            if not isinstance(entries, list) or not entries:  # every input gets an answer
                why = (f"The {btype} Bundle has no entries: nothing to store"
                       if isinstance(entries, list) else "Bundle.entry must be an array")
                reject(seq, where, raw, FhirError(400, "structure", why, "Bundle.entry").outcome(),
                       source=here.source)
            elif btype != "collection":
                run_bundle(seq, where, raw, d, here, replayed)
            else:
                for i, entry in enumerate(entries):
                    r = entry.get("resource") if isinstance(entry, dict) else None
                    add((seq, f"{where}#entry[{i}]", orjson.dumps(r), r), here)
        flush()
    finally:
        bar.close()
        if rejected_file is not None:
            rejected_file.close()
    problems = [(where, reason) for _, _, where, reason in sorted(shown, reverse=True)]
    return (counts, problems, n_problems, (rejected_path if rejected_file else None), skipped,
            n_kept_again)


_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")


def _renumbered(outcome: dict, at: list[int]) -> dict:
    """The OperationOutcome of some entries run as a Bundle of their own, naming each entry
    ``Bundle.entry[i]`` by ``at[i]``, its index in the whole Bundle."""
    def whole(m: re.Match) -> str:
        i = int(m[1])
        return f"Bundle.entry[{at[i]}]" if i < len(at) else m[0]

    for issue in outcome.get("issue", []):
        if isinstance(issue.get("diagnostics"), str):
            issue["diagnostics"] = _ENTRY.sub(whole, issue["diagnostics"])
        if isinstance(issue.get("expression"), list):
            issue["expression"] = [_ENTRY.sub(whole, x) for x in issue["expression"]]
    return outcome


def _no_get(path: str, query: str, check: bool = False):
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
        counts, problems, n_problems, rejected_path, skipped, kept_again = ingest_paths(
            hub, args.paths, ctx, args.batch_size, not args.quiet and sys.stderr.isatty(),
            settings.data_dir / "rejected")
    finally:
        hub.store.close()
    elapsed = time.perf_counter() - t0
    print(f"{sum(counts.values())} inputs in {elapsed:.1f}s: {summary(counts)}")
    for name, first in skipped:
        print(f"  skipped {name}: already read" + (f" as {first}" if first != name else ""))
    for where, reason in problems:
        print(f"  rejected {where}: {reason}")
    if n_problems > len(problems):
        print(f"  … and {n_problems - len(problems)} more")
    if rejected_path:
        print(f"rejected inputs kept for replay in {rejected_path}")
    if kept_again:
        print(f"{kept_again} replayed inputs rejected again, still kept where they were in "
              f"{settings.data_dir / 'rejected'}/")
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
    if len(parts) == 4 and parts[2] == "_history" and (parts[3].isascii() and parts[3].isdigit()) \
            and len(parts[3]) <= 18:
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
    sys.stdout.write(orjson.dumps(jsontext.loads_exact(resource_bytes(stored)),
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

    from hub.core.jobs import Jobs, both

    store = open_store(settings, existing=True)
    try:
        total = store.max_notification_id()
        with tqdm(total=total, unit=" events", disable=not sys.stderr.isatty()) as bar, \
                Jobs(settings.data_dir).start("reindex", "the store's indexes", total) as job:
            done = store.rebuild_indexes(progress=both(bar.update, job.advance))
            job.finish(f"reindexed {done} events")
    finally:
        store.close()
    print(f"reindexed {done} events")
    return 0

