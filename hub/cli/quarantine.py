"""``hub quarantine list|show|replay``: documents held back by the quality rules."""

from __future__ import annotations

import sys

import orjson

from hub.core.commandline import UsageError, existing_data_dir, open_store
from hub.core.config import Settings


def _quarantine(settings: Settings, create: bool = False):
    from hub.quarantine import Quarantine

    path = settings.data_dir / "quarantine.sqlite"
    if not create:
        existing_data_dir(settings)
        if not path.exists():
            return None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Quarantine(path)


def _report_lines(report: dict) -> list[str]:
    """One line per issue of a quality report: severity, rule, location, what was found."""
    out = []
    if "ack" in report:  # an HL7 v3 registration (hub.v3intake): its acknowledgement
        out.append(f"  {report['ack']:11} {report.get('rule') or '-':40} "
                   f"{_one_line_text(report.get('reason'), 200)}")
    for issue in report.get("issue") or ():
        details = issue.get("details") or {}
        rule = next((c.get("code") for c in details.get("coding") or () if c.get("code")), "-")
        where = (issue.get("location") or issue.get("expression") or [""])[0]
        text = details.get("text") or issue.get("diagnostics") or ""
        out.append(f"  {issue.get('severity', ''):11} {rule:40} {text}"
                   + (f"  [{where}]" if where else ""))
    return out


def _one_line_text(value: object, width: int) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def cmd_quarantine(args, settings: Settings) -> int:
    action = args.quarantine_action
    if action == "replay":
        return _quarantine_replay(args, settings)
    quarantine = _quarantine(settings)
    if action == "list":
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        status = None if args.all else "open"
        entries = [] if quarantine is None else quarantine.list(
            status=status, limit=args.limit, newest_first=not args.oldest)
        # the entries left out, said below the list (on stderr beside JSON lines)
        more = 0 if quarantine is None else max(0, quarantine.count(status) - len(entries))
        if quarantine is not None:
            quarantine.close()
        left = f"… {more} more ({'newer' if args.oldest else 'older'}): --limit" if more else ""
        if args.json:
            for e in entries:
                sys.stdout.write(orjson.dumps(e).decode() + "\n")
            if left:
                print(left, file=sys.stderr)
            return 0
        if not entries:
            print("the quarantine is empty" if args.all else "no open entries in the quarantine")
            return 0
        print(f"{'id':>6}  {'time':24} {'kind':5} {'institution':24} {'status':10} reason")
        for e in entries:
            inst = e["institution"] or "-"
            print(f"{e['id']:>6}  {e['time']:24} {e['kind']:5} {_one_line_text(inst, 24):24} "
                  f"{e['status']:10} {_one_line_text(e['reason'], 100)}")
        if left:
            print(left)
        return 0
    # show
    entry = None if quarantine is None else quarantine.get(args.id)
    if quarantine is not None:
        quarantine.close()
    if entry is None:
        raise UsageError(f"no quarantine entry {args.id}")
    payload = entry.pop("payload")
    if args.payload:
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
        return 0
    if args.json:
        sys.stdout.write(orjson.dumps({**entry, "payload_bytes": len(payload)},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    src = ", ".join(f"{k}={v}" for k, v in (entry.get("source") or {}).items() if v)
    print(f"quarantine entry {entry['id']}: {entry['kind']}, {len(payload)} bytes, kept "
          f"{entry['time']}, {entry['status']}"
          + (f" (replayed {entry['replayed']})" if entry.get("replayed") else ""))
    print(f"source: {src or '-'}")
    print(f"reason: {_one_line_text(entry['reason'], 300)}")
    print("quality report:")
    for line in _report_lines(entry.get("report") or {}):
        print(line)
    if entry.get("result"):
        print("last replay: " + ", ".join(f"{k}={v}" for k, v in entry["result"].items()))
    return 0


def _quarantine_replay(args, settings: Settings) -> int:
    if args.ids and args.all:
        raise UsageError("entries named (IDS) and --all exclude each other: give one of them")
    if not args.ids and not args.all:
        raise UsageError("name the entries to replay (IDS) or give --all")
    quarantine = _quarantine(settings)
    if quarantine is None:
        if args.all:
            print("no open entries in the quarantine")
            return 0
        raise UsageError(f"no quarantine entry {args.ids[0]} (the quarantine is empty)")
    try:
        if args.all:
            # every open entry as of now, in order (a refused replay adds a new entry after)
            ids = [e["id"] for e in quarantine.list(status="open", limit=1 << 62)]
        else:
            ids = list(dict.fromkeys(args.ids))
            for qid in ids:  # check them all before anything is replayed
                entry = quarantine.get(qid)
                if entry is None:
                    raise UsageError(f"no quarantine entry {qid}")
                if entry["status"] != "open":
                    raise UsageError(f"quarantine entry {qid} is {entry['status']}, not open")
        if not ids:
            print("no open entries in the quarantine")
            return 0
        from tqdm import tqdm

        from hub import v3intake
        from hub.core.ingest import Hub
        from hub.core.jobs import Jobs
        from hub.documents import DocumentService
        from hub.repository import Repository

        hub = Hub(open_store(settings))
        repo = Repository(hub)  # the operator at the console is trusted: the open policy
        # a progress bar on a terminal, the job where the console shows it
        bar = tqdm(total=len(ids), unit=" entries", desc="replay",
                   disable=args.json or not sys.stderr.isatty())
        out = print if bar.disable else bar.write
        job = Jobs(settings.data_dir).start("quarantine-replay",
                                            f"quarantine replay of {len(ids)} entries", len(ids))
        try:
            service = DocumentService(repo, quarantine)
            stored = refused = 0
            for qid in ids:
                bar.update(1)
                job.advance(1)
                if quarantine.get(qid)["kind"] == v3intake.KIND:  # an HL7 v3 registration
                    ok, what = v3intake.replay(repo, quarantine, qid)
                    stored += ok
                    refused += not ok
                    if args.json:
                        sys.stdout.write(orjson.dumps({"id": qid, "stored": ok,
                                                       "detail": what}).decode() + "\n")
                    else:
                        out(f"{qid}: " + (f"stored {what}" if ok else f"refused again ({what}); "
                                            "still open"))
                    continue
                result = service.replay(qid)
                ok = result.status != 422
                stored += ok
                refused += not ok
                if args.json:
                    sys.stdout.write(orjson.dumps({
                        "id": qid, "status": result.status, "decision": result.decision,
                        "document": result.document_ref,
                        "quarantine_id": result.quarantine_id}).decode() + "\n")
                elif ok:
                    out(f"{qid}: stored {result.document_ref or ''} ({result.decision}"
                          + (", unchanged" if result.status == 200 else "") + ")")
                else:
                    rules = sorted({c["code"] for i in result.report.get("issue") or ()
                                    for c in (i.get("details") or {}).get("coding") or ()
                                    if c.get("code")})
                    shown = ", ".join(rules[:3]) + (f" and {len(rules) - 3} more"
                                                     if len(rules) > 3 else "")
                    out(f"{qid}: refused again ({shown or 'reject'}); kept as "
                          f"quarantine entry {result.quarantine_id}")
            job.finish(f"{stored} stored, {refused} refused again")
        except BaseException as e:
            job.fail(f"{type(e).__name__}: {e}")
            raise
        finally:
            bar.close()
            hub.store.close()
    finally:
        quarantine.close()
    if not args.json:
        print(f"replayed {len(ids)}: {stored} stored, {refused} refused again")
    return 1 if refused else 0
