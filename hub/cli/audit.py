"""``hub audit verify|export|anchor|emergency``: check the hash chain of the AuditEvents in the
audit log (``hub.access.auditlog``, ``hub.access.chain``), export them, write anchors of the chain
heads to a file kept outside the log, and list the break-the-glass accesses for review.

``verify`` exits 0 when every AuditEvent is intact, 1 when it found problems (each printed, or the
whole report as JSON with ``--json``). ``--anchors FILE`` also requires every head anchored in FILE
to be present (this closes the one gap a chain cannot: its newest events removed). ``anchor``
verifies, then appends the heads as one JSON line to ``--out`` (or prints it); it writes nothing,
and exits 1, when the log fails verification.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from hub.core.commandline import UsageError, open_store
from hub.core.fhirtime import parse_range


def add_parsers(sub: Any, common: Any) -> None:
    p = sub.add_parser("audit", parents=[common],
                       help="the AuditEvents' hash chain: verify, export, anchor the heads")
    asub = p.add_subparsers(dest="audit_action", required=True)
    v = asub.add_parser("verify", parents=[common],
                        help="check every AuditEvent against its chain (exit 1 on problems)")
    v.add_argument("--json", action="store_true", help="the report as one JSON object")
    v.add_argument("--anchors", type=Path,
                   help="a file of anchors (hub audit anchor): each anchored head must be there")
    e = asub.add_parser("export", parents=[common], help="AuditEvents as NDJSON in commit order")
    e.add_argument("--since", help="only those recorded at or after this FHIR date or instant")
    e.add_argument("--out", type=Path, help="write to this file (default: standard output)")
    a = asub.add_parser("anchor", parents=[common],
                        help="verify, then append the chain heads as a JSON line to a file kept "
                             "outside the audit log")
    a.add_argument("--out", type=Path, help="append to this file (default: standard output)")
    g = asub.add_parser("emergency", parents=[common],
                        help="break-the-glass accesses (purpose ETREAT or BTG) to review: who, "
                             "when, whose record, with what outcome")
    g.add_argument("--since", help="only those recorded at or after this FHIR date or instant")
    g.add_argument("--json", action="store_true", help="one JSON object per line")


def cmd_audit(args: Any, settings: Any) -> int:
    since_us = None
    if args.audit_action in ("export", "emergency") and args.since:
        try:
            since_us = parse_range(args.since.strip())[0]
        except ValueError:
            raise UsageError(f"--since must be a FHIR date or instant, not {args.since!r}") from None
    anchors = _anchors(args.anchors) if getattr(args, "anchors", None) else None
    open_store(settings, existing=True).close()  # a data directory or database that is there
    # here, not at the top: the parser above is built for every `hub` command, and the audit
    # log's engine (SQLAlchemy) and the search index it reads take most of a second to import
    from hub.access.auditlog import open_audit_log
    from hub.access.chain import anchor_line, verify
    from hub.core.ingest import now_instant

    log = open_audit_log(settings.data_dir, settings.database_url)
    log.move_spooled()  # what a process that died left in the spool (a running one moves its own)
    try:
        if args.audit_action == "export":
            return _export(log, since_us, args.out)
        if args.audit_action == "emergency":
            return _emergency(log, since_us, args.json)
        report = verify(log, anchors)
    finally:
        log.close()
    if args.audit_action == "anchor":
        if not report.ok:
            _print_problems(report, sys.stderr)
            print("hub audit anchor: the audit log fails verification; nothing anchored",
                  file=sys.stderr)
            return 1
        line = orjson.dumps(anchor_line(report, now_instant()[0])) + b"\n"
        if args.out:
            with open(args.out, "ab") as f:
                f.write(line)
        else:
            sys.stdout.buffer.write(line)
        return 0
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _print_problems(report, sys.stdout)
        print(f"{report.events} AuditEvents in {report.chains} chains: "
              + ("intact" if report.ok else f"{len(report.problems)} problems"))
    return 0 if report.ok else 1


def _print_problems(report: Any, out: Any) -> None:
    for p in report.problems:
        print(f"{p.kind:10} AuditEvent/{p.rid or '-'}  chain {p.chain or '-'}  seq {p.seq or '-'}  "
              f"pos {p.pos or '-'}: {p.detail}", file=out)


def _anchors(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
            for head in d["chains"].values():
                int(head["seq"]), str(head["hash"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise UsageError(f"{path}:{n} is not an anchor line (hub audit anchor)") from None
        out.append(d)
    return out


def _export(log: Any, since_us: int | None, path: Path | None) -> int:
    from hub.access.chain import audit_events

    n = 0
    with (open(path, "wb") if path else open(sys.stdout.fileno(), "wb", closefd=False)) as f:
        for body in audit_events(log, since_us):
            f.write(body + b"\n")
            n += 1
    if path:
        print(f"{n} AuditEvents written to {path}", file=sys.stderr)
    return 0


def _emergency(log: Any, since_us: int | None, as_json: bool) -> int:
    from hub.access.chain import emergency_accesses

    found = emergency_accesses(log, since_us)
    for a in found:
        if as_json:
            sys.stdout.write(orjson.dumps(a).decode() + "\n")
        else:
            print(f"{a['recorded']}  {a['who']}  {a['purpose']}  outcome {a['outcome']}  "
                  f"{'/'.join(a['access'])}  {', '.join(a['what'][:5])}")
    if not as_json:
        print(f"{len(found)} break-the-glass accesses to review", file=sys.stderr)
    return 0
