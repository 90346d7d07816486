"""What the access audit costs a read in the repository alone, without HTTP: CPU per read with
and without it, on one thread and on four contending for the interpreter.

A generated region in a fresh SQLite store; ``Repository.read`` of its Patients with the access
policy on, once with an ``AccessAudit`` writing to the audit log's spool and once without. The
background mover is not started (what it costs per event is measured apart: moving the spool
into the tables, and indexing it).

    .venv/bin/python -m bench.audit_cost [--people 30] [--reads 5000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
from pathlib import Path

import orjson

from bench.common import generated, record
from hub.access.audit import AccessAudit, AuditWriter
from hub.access.auditlog import open_audit_log
from hub.access.consent import ConsentIndex
from hub.access.policy import AccessPolicy
from hub.core.access import Actor
from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op
from hub.repository import Repository


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _per_read_us(repo: Repository, ctx: Context, pids: list[str], reads: int, threads: int) -> float:
    def run(n: int) -> None:
        for i in range(n):
            repo.read(ctx, "Patient", pids[i % len(pids)])

    start = _cpu()
    workers = [threading.Thread(target=run, args=(reads // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return round((_cpu() - start) / reads * 1e6, 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.audit_cost")
    p.add_argument("--people", type=int, default=30)
    p.add_argument("--reads", type=int, default=5000)
    args = p.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="hub-bench-audit-"))
    settings = Settings(data_dir=data)
    settings.database_url = None
    store = settings.open_store()
    hub = Hub(store)
    items = [orjson.loads(x) for x in generated(args.people)]
    hub.execute([Op("PUT", d["resourceType"], d["id"], d=d, url=f"{d['resourceType']}/{d['id']}")
                 for d in items], Context(), atomic=False)
    pids = [d["id"] for d in items if d["resourceType"] == "Patient"]
    log = open_audit_log(data, None)
    policy = AccessPolicy(ConsentIndex(store))
    plain = Repository(hub, policy=policy)
    audited = Repository(hub, policy=policy, audit=AccessAudit(AuditWriter(log)),
                         audit_records=log)
    ctx = Context(source={}, actor=Actor(subject="bench", kind="client",
                                         roles=frozenset({"admin"}), scopes=("system/*.cruds",)),
                  address="127.0.0.1")
    out: dict = {"people": args.people, "reads": args.reads}
    for threads in (1, 4):
        runs = {"without": [], "with": []}
        for _ in range(2):  # in turn, twice: the machine's drift falls on both
            runs["without"].append(_per_read_us(plain, ctx, pids, args.reads, threads))
            runs["with"].append(_per_read_us(audited, ctx, pids, args.reads, threads))
        out[f"threads_{threads}"] = {k: min(v) for k, v in runs.items()}
    # the mover's share, per event: the spool into the tables, then the search values
    start = _cpu()
    moved = log.move_spooled()
    middle = _cpu()
    indexed = 0
    while n := log.index_pending():
        indexed += n
    out["move_us_per_event"] = round((middle - start) / max(1, moved) * 1e6, 1)
    out["index_us_per_event"] = round((_cpu() - middle) / max(1, indexed) * 1e6, 1)
    log.close()
    store.close()
    record("audit_cost", out)
    print(out)
    return out


if __name__ == "__main__":
    main()
