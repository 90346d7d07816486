"""The ``hub`` command: its parser and the table of commands. The commands live by concern in
``records`` (serve, ingest, generate, demo, show, history, reindex), ``readmodels`` (projections,
quality report), ``quarantine`` and ``identity``; terminology, the MPI and the connectors register
their own (``terminology.cli_*``, ``hub.mpi.cli``, ``connectors.cli``).

User mistakes (a missing file, a bad reference, an unreachable database) end with one clear line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from hub.cli.identity import cmd_identity
from hub.cli.quarantine import cmd_quarantine
from hub.cli.readmodels import PROJECTIONS, QUALITY_DEFAULT_GROUP, cmd_projections, cmd_quality
from hub.cli.records import cmd_demo, cmd_generate, cmd_history, cmd_ingest, cmd_reindex, cmd_serve, cmd_show
from hub.cli.stream import cmd_stream
from hub.core.commandline import UsageError, at_least, database_params, input_kind, iter_inputs, open_store, port, private_files
from hub.core.config import Settings, unknown_variables
from hub.core.errors import FhirError, HubError
from hub.core.redact import redact_url

# the shared command helpers (hub.core.commandline) stay importable from hub.cli
__all__ = ["COMMANDS", "PROJECTIONS", "UsageError", "input_kind", "iter_inputs", "main",
           "open_store"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fhir-region-hub")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """A mistake in the arguments (an unknown option, one missing, a bad choice) is one line and
    exit status 2, as the commands' own usage errors (argparse printed its usage block first);
    ``--help`` is unchanged. Subcommand parsers are of this class too (``add_subparsers`` makes
    its parser's class)."""

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_options()
        if unknown and message.startswith("the following arguments are required"):
            # `hub --bogus`: the option is the mistake, not the command that was never reached
            message = f"unrecognized arguments: {' '.join(unknown)}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _unknown_options(self) -> list[str]:
        """The options among this parser's arguments that it does not take (nor abbreviates)."""
        known = list(self._option_string_actions)
        return [a for a in getattr(self, "_hub_args", ()) if a.startswith("-") and a != "-"
                and not a.lstrip("-").replace(".", "").isdigit()
                and not any(o == a.split("=")[0] or (a.startswith("--") and o.startswith(a.split("=")[0]))
                            for o in known)]

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._hub_args = list(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(args, namespace)
        # the innermost subcommand's parser, set first (its parents' parses run around it): an
        # unknown option is named to it, whose --help lists the options it takes
        ns.__dict__.setdefault("_hub_parser", self)
        return ns, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extras = self.parse_known_args(args, namespace)
        parser = ns.__dict__.pop("_hub_parser", self)
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def main(argv: list[str] | None = None) -> int:
    # The store options are accepted before and after the command (hub ingest --data-dir D ...).
    common = Parser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="data directory (default $HUB_DATA_DIR or ./var)")
    common.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="postgresql://… event store instead of SQLite (default $HUB_DATABASE_URL)")
    parser = Parser(prog="hub", description="Regional FHIR integration hub", parents=[common])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the FHIR REST API", parents=[common])
    p.add_argument("--host")
    p.add_argument("--port", type=port)
    p.add_argument("--workers", type=at_least(1),
                   help="API processes behind the one port (default $HUB_WORKERS, else one per "
                        "core); none of them runs the read models")
    p.add_argument("--followers", choices=["process", "threads", "none"], default="process",
                   help="who keeps the read models current: a `hub projections follow` process "
                        "started beside the server (default), threads of each API process, or "
                        "none (run `hub projections follow` yourself)")
    p.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS (default $HUB_TLS_CERT)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert (default $HUB_TLS_KEY)")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed (mutual "
                   "TLS; default $HUB_TLS_CLIENT_CA)")

    p = sub.add_parser("ingest", help="validate and store FHIR JSON, Bundles and NDJSON",
                       parents=[common])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--institution", help="source institution recorded on every event")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="generate a synthetic demo region and load it", parents=[common])
    p.add_argument("--people", type=at_least(0), default=300)
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("generate", help="write a synthetic region as NDJSON files")
    p.add_argument("out", type=Path)
    p.add_argument("--people", type=at_least(0), default=1000)
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("show", help="print a resource (or one version of it)", parents=[common])
    p.add_argument("reference", help="Type/id or Type/id/_history/N")

    p = sub.add_parser("history", help="list the versions of a resource with their sources",
                       parents=[common])
    p.add_argument("reference", help="Type/id")

    sub.add_parser("reindex", parents=[common],
                   help="rebuild the store's write-side indexes from the event log, in one transaction: "
                        "writers wait for it, readers see the indexes as they were")

    p = sub.add_parser("projections", parents=[common],
                       help="read models that follow the event log: status, catch up, rebuild")
    p.add_argument("action", choices=["status", "run", "rebuild", "follow"],
                   help="follow: keep every read model (or the one named) current until stopped, "
                        "matching new Patients too (hub serve starts one such process)")
    p.add_argument("name", nargs="?", choices=list(PROJECTIONS),
                   help="the read model (default: every one; rebuild needs one)")
    p.add_argument("--from-stream", metavar="BOOTSTRAP", default=None,
                   help="follow: read the change stream on these Kafka brokers instead of the "
                        "event store (no store needed; no automatic matching)")
    p.add_argument("--topic", default="hub.events", help="follow --from-stream: its topic")
    p.add_argument("--group", default=None,
                   help="follow --from-stream: the consumer group (default: one per machine and "
                        "data directory)")

    p = sub.add_parser("stream", parents=[common],
                       help="the change stream: every committed event to a Kafka topic")
    p.add_argument("action", choices=["relay"],
                   help="relay: follow the event log into the topic until stopped (at least "
                        "once, in order per patient key; a relay killed mid-batch can send "
                        "events again)")
    p.add_argument("--bootstrap-servers", help="Kafka brokers (default $HUB_KAFKA_BOOTSTRAP)")
    p.add_argument("--topic", default="hub.events")
    p.add_argument("--partitions", type=at_least(1),
                   help="create the topic with this many partitions if it does not exist")
    p.add_argument("--batch", type=int, default=2000, help="events per acknowledged batch")
    p.add_argument("--part-bytes", type=int, default=512 * 1024,
                   help="the largest record value; a longer event is sent in parts (default "
                        "%(default)s, at most 1032192: a part with its key and headers within "
                        "the producer's 1 MiB requests and a broker's default limit of 1 MB)")
    p.add_argument("--once", action="store_true", help="up to the log's end, then stop")

    p = sub.add_parser("quality", parents=[common], help="document quality: counts of findings")
    qsub = p.add_subparsers(dest="quality_action", required=True)
    q = qsub.add_parser("report", parents=[common],
                        help="documents and findings per institution, document type, rule and "
                             "day (brings the projection up to date first)")
    q.add_argument("--institution", action="append",
                   help="only this institution (repeat for several)")
    q.add_argument("--document-type", action="append", help="only this document type (C0005, …)")
    q.add_argument("--rule", action="append", help="only findings of this rule")
    q.add_argument("--since", help="checked on or after: YYYY[-MM[-DD]] (in HUB_TIMEZONE) or a date-time "
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
    q.add_argument("--oldest", action="store_true", help="the oldest first (else the newest)")
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

    # -- hub audit verify|export|anchor (the AuditEvents' hash chain) --
    from hub.cli import audit as audit_cli

    audit_cli.add_parsers(sub, common)
    # -- end audit --

    # -- hub v3 subscribe|subscriptions|unsubscribe|route|dead-letters|redeliver (the v3 bus) --
    from hub.cli import v3 as v3_cli

    v3_cli.add_parsers(sub, common)
    # -- end v3 --

    # -- hub auth client add|list|revoke, rotate-key (access control) --
    from hub.cli import auth as auth_cli

    auth_cli.add_parsers(sub, common)
    # -- end auth --

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
    for name, q in isub.choices.items():
        if name == "show":  # reads, decides nothing
            continue
        q.add_argument("--user", default=os.environ.get("HUB_USER"),
                       help="who decides (default $HUB_USER); required for decisions")
        q.add_argument("--reason", help="why, recorded with the decision")
    # -- end identity --

    from connectors import cli as connector_cli  # hub connector|deadletter|ingest-worker

    connector_cli.add_parsers(sub, common)

    args = parser.parse_args(argv)
    garbled = _not_utf8(args)
    if garbled:  # a name or code that cannot be stored or printed (paths are taken as they are)
        print(f"hub {args.command}: --{garbled.replace('_', '-')} is not valid UTF-8 text",
              file=sys.stderr)
        return 2
    try:
        settings = Settings()
    except ValueError as e:  # HUB_PORT=abc and the like: the message names the variable
        print(f"hub: {e}", file=sys.stderr)
        return 2
    if not os.environ.get("HUB_FOLLOW_PARENT"):  # `hub serve`'s follower: the server said it
        for name, like in unknown_variables():
            print(f"hub: warning: {name} is not a setting of the hub (it is ignored"
                  f"{f'; did you mean {like}?' if like else ''})", file=sys.stderr)
    if getattr(args, "data_dir", None):
        settings.data_dir = Path(args.data_dir)
    if getattr(args, "database_url", None):
        settings.database_url = args.database_url
    private_files()
    try:
        if settings.database_url:  # whichever command: a URL that cannot be read is said here
            database_params(settings.database_url)
        return COMMANDS[args.command](args, settings)
    except BrokenPipeError:  # `hub mpi export | head -1`: the reader took all it wanted
        return _stdout_closed()
    except (UsageError, FhirError, OSError, HubError) as e:
        # HubError: a file of the data directory that cannot be used (named), a read model that
        # is not the event log's
        print(_masked(f"hub {args.command}: {e}", settings), file=sys.stderr)
        return 2
    except (ValueError, OverflowError) as e:  # a value no command can use (nan, 10**25, bad JSON)
        print(_masked(f"hub {args.command}: {type(e).__name__}: {e}", settings)[:500]
              .splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - engines report connection problems in many types
        if type(e).__module__.startswith(("eventsourcing", "psycopg")):
            print(_masked(f"hub {args.command}: event store error: {e}", settings),
                  file=sys.stderr)
            return 2
        if type(e).__module__.startswith("sqlite3"):
            # not always the event store's: every database of the data directory is SQLite
            # (an unreadable one is named where it is opened, hub.core.sqlitefile)
            print(f"hub {args.command}: database error: {e}", file=sys.stderr)
            return 2
        if type(e).__module__.startswith("sqlalchemy"):  # the audit log's engine
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"hub {args.command}: audit log database error: {first}"[:500],
                  file=sys.stderr)
            return 2
        if type(e).__module__.startswith(("elastic_transport", "elasticsearch")):
            print(_masked(f"hub {args.command}: Elasticsearch at {redact_url(settings.es_url)}: "
                          f"{type(e).__name__}: {e}", settings), file=sys.stderr)
            return 2
        if type(e).__module__.startswith("kafka"):  # a broker away, a topic name it refuses
            print(f"hub {args.command}: Kafka: {type(e).__name__}: {e}"[:500], file=sys.stderr)
            return 2
        raise


def _masked(line: str, settings: Settings) -> str:
    """An error line with the URLs that carry a password shown masked, wherever a library's
    message quoted them."""
    for url in (settings.database_url, settings.es_url):
        if url:
            line = line.replace(url, redact_url(url))
    return line


def _stdout_closed() -> int:
    """Quiet, as ``cat`` or ``git log`` piped into ``head``: standard output is pointed at
    /dev/null, so the interpreter's last flush does not fail again, and the status is the 141
    (128 + SIGPIPE) a shell shows for those, so a ``set -o pipefail`` script treats it alike."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout with no file (one captured in-process)
        pass
    return 141


def _not_utf8(args: argparse.Namespace) -> str | None:
    """The first text argument holding bytes that are no UTF-8 (a shell's $'H\\xff'): such an
    institution, client name or reference ended in a traceback where it was stored or shown."""
    for name, value in vars(args).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return name
    return None


COMMANDS = {"projections": cmd_projections, "serve": cmd_serve, "ingest": cmd_ingest,
            "demo": cmd_demo, "generate": cmd_generate, "show": cmd_show, "history": cmd_history,
            "reindex": cmd_reindex, "quality": cmd_quality, "quarantine": cmd_quarantine,
            "stream": cmd_stream}


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


def cmd_audit(args, settings: Settings) -> int:  # hub audit verify|export|anchor (hub/cli/audit.py)
    from hub.cli import audit as audit_cli

    return audit_cli.cmd_audit(args, settings)


COMMANDS["audit"] = cmd_audit


def cmd_v3(args, settings: Settings) -> int:  # hub v3 … (hub/cli/v3.py)
    from hub.cli import v3 as v3_cli

    return v3_cli.cmd_v3(args, settings)


COMMANDS["v3"] = cmd_v3


def cmd_auth(args, settings: Settings) -> int:  # hub auth client …|rotate-key (hub/cli/auth.py)
    from hub.cli import auth as auth_cli

    return auth_cli.cmd_auth(args, settings)


COMMANDS["auth"] = cmd_auth


COMMANDS["identity"] = cmd_identity
COMMANDS.update({"connector": _connector_command("cmd_connector"),
                 "deadletter": _connector_command("cmd_deadletter"),
                 "ingest-worker": _connector_command("cmd_ingest_worker")})
