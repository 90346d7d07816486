"""CDA -> FHIR conversion throughput: WS/T 500 documents per second per core, and where the time goes.

Documents: the well-formed WS/T 500 samples in ``../shared/samples/wst500-cda`` (23 types, 8-60 KB,
typical of what hospitals send) plus the project's own fixtures; without the samples folder, the
fixtures only. One thread, the whole mapper path (safe parse, header, entries through the tables,
narratives, Binary base64, DocumentReference, document Bundle).

Measured in the same run, on the same documents:

- ``parse``: ``fhir_mapping.xmlsafe.parse_xml`` alone (part of mapping);
- ``map``: ``fhir_mapping.cda.convert`` (includes the parse);
- ``hub_validate``: ``hub.resource.validate`` of what the hub validates: the document Bundle, and
  the resources it does not contain (Binary, DocumentReference, the quality report); the others
  were validated as part of the Bundle (``hub.documents.to_validate``);
- ``serialize``: ``orjson.dumps`` of every resource (the bytes the store writes);
- baseline ``validation_rate``: raw fhir.resources ``model_validate_json`` over the very resources
  produced (``bench.common.validation_rate``), resources per second; ``..._docs`` divides it by the
  resources per document, with and without the document Bundle (which repeats every resource).
  ``ratio_map_to_validation_docs``: documents mapped per second / documents whose output can be
  validated per second; > 1 means mapping costs less than the validation the hub pays anyway.

Shares are of map + hub_validate + serialize; ``end_to_end`` is what ``POST /cda`` does per document
(``hub.documents.DocumentService``: quality control, mapping, validation, one transaction into a
fresh SQLite event store), with the share of each step (``storage_and_rest`` = the remainder).

    python -m bench.cda --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import orjson

from bench.common import record, validation_rate
from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.cda import convert
from fhir_mapping.xmlsafe import parse_xml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples" / "wst500-cda"
FIXTURES = ROOT / "tests" / "fixtures" / "cda"
SRC = SourceInfo(institution="BENCH", feed="bench")


def documents() -> list[tuple[str, bytes]]:
    docs = []
    paths = sorted(SAMPLES.glob("*.xml")) if SAMPLES.is_dir() else []
    paths += sorted(FIXTURES.glob("C0*.xml"))
    for p in paths:
        data = p.read_bytes()
        try:
            convert(data, SRC)
        except MappingError:
            continue  # the known not-well-formed samples
        docs.append((p.name, data))
    return docs


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def _wall(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(repeats: int = 3, rounds: int = 5) -> dict:
    from hub.core.resource import validate

    docs = documents()
    payloads = [d for _, d in docs] * rounds
    convs = [convert(d, SRC) for _, d in docs]
    resources = [r for c in convs for r in c.resources]
    raw = [orjson.dumps(r) for r in resources]
    from hub.documents import to_validate

    # what the hub validates: the document Bundle, and what it does not already contain
    typed = [(orjson.dumps(c.resources[i]), c.resources[i]["resourceType"], c.resources[i])
             for c in convs for i in to_validate(c.resources)]
    n_docs = len(payloads)
    per_doc = len(resources) / len(docs)
    no_bundle = [orjson.dumps(r) for r in resources if r["resourceType"] != "Bundle"]

    def parse_all():
        for p in payloads:
            parse_xml(p)

    def map_all():
        for p in payloads:
            convert(p, SRC)

    def validate_all():
        for _ in range(rounds):
            for b, t, d in typed:
                validate(t, b, d)

    def serialize_all():
        for _ in range(rounds):
            for r in resources:
                orjson.dumps(r)

    from datetime import datetime, timezone

    from fhir_mapping.quality import evaluate

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def qc_all():
        for p in payloads:
            evaluate(p, now=now)

    def end_to_end():
        """What POST /cda does: quality control, mapping, validation, one transaction per
        document into a fresh SQLite event store per round (every document is new there)."""
        import shutil
        import tempfile

        from hub.documents import DocumentService
        from hub.repository import Repository
        from hub.core.ingest import Hub
        from hub.quarantine import Quarantine
        from hub.core.store import ResourceStore

        for _ in range(rounds):
            tmp = tempfile.mkdtemp(prefix="bench-cda-")
            store = ResourceStore.sqlite(f"{tmp}/events.sqlite")
            q = Quarantine(f"{tmp}/q.sqlite")
            service = DocumentService(Repository(Hub(store)), q)
            for _, d in docs:
                service.ingest_cda(d, SRC, now=now)
            q.close()
            store.close()
            shutil.rmtree(tmp)

    map_all()
    validate_all()  # warm: tables, model classes
    qc_all()
    runs = []
    for _ in range(repeats):
        gc.collect()
        row = {}
        for name, fn in (("parse", parse_all), ("map", map_all), ("hub_validate", validate_all),
                         ("serialize", serialize_all), ("quality", qc_all),
                         ("end_to_end", end_to_end)):
            row[f"{name}_cpu_s"] = round(_cpu(fn), 4)
        row["end_to_end_docs_per_s"] = round(n_docs / row["end_to_end_cpu_s"], 1)
        e2e = row["end_to_end_cpu_s"]
        row["end_to_end_share"] = {
            "quality_control": round(row["quality_cpu_s"] / e2e, 3),
            "mapping": round(row["map_cpu_s"] / e2e, 3),
            "validation": round(row["hub_validate_cpu_s"] / e2e, 3),
            "storage_and_rest": round(max(0.0, e2e - row["quality_cpu_s"] - row["map_cpu_s"]
                                          - row["hub_validate_cpu_s"]) / e2e, 3)}
        wall_map = _wall(map_all)
        row["map_docs_per_s"] = round(n_docs / row["map_cpu_s"], 1)
        row["map_docs_per_s_wall"] = round(n_docs / wall_map, 1)
        row["map_resources_per_s"] = round(n_docs * per_doc / row["map_cpu_s"])
        row["map_plus_validate_docs_per_s"] = round(n_docs / (row["map_cpu_s"] + row["hub_validate_cpu_s"]), 1)
        base = validation_rate(raw)  # resources per second, wall clock
        base_nb = validation_rate(no_bundle)
        row["baseline_validate_resources_per_s"] = round(base)
        row["baseline_validate_docs_per_s"] = round(base / per_doc, 1)
        row["baseline_validate_docs_per_s_without_bundle"] = round(base_nb / (len(no_bundle) / len(docs)), 1)
        row["ratio_map_to_validation_docs"] = round(row["map_docs_per_s"] / row["baseline_validate_docs_per_s"], 2)
        row["ratio_map_to_validation_resources"] = round(row["map_resources_per_s"] / base, 2)
        row["ratio_map_to_validation_docs_without_bundle"] = round(
            row["map_docs_per_s"] / row["baseline_validate_docs_per_s_without_bundle"], 2)
        total = row["map_cpu_s"] + row["hub_validate_cpu_s"] + row["serialize_cpu_s"]
        row["share"] = {"parse": round(row["parse_cpu_s"] / total, 3),
                        "map_excluding_parse": round((row["map_cpu_s"] - row["parse_cpu_s"]) / total, 3),
                        "hub_validate": round(row["hub_validate_cpu_s"] / total, 3),
                        "serialize": round(row["serialize_cpu_s"] / total, 3)}
        runs.append(row)
        print(row, flush=True)
    med = sorted(runs, key=lambda r: r["map_docs_per_s"])[len(runs) // 2]
    sizes = [len(d) for _, d in docs]
    return {"documents": len(docs), "rounds": rounds, "document_kinds": sorted({c.kind for c in convs}),
            "bytes_per_document": {"mean": round(sum(sizes) / len(sizes)), "min": min(sizes), "max": max(sizes)},
            "resources_per_document": round(per_doc, 1), "load_average_at_start": os.getloadavg()[0],
            "median": med, "runs": runs,
            "notes": "CPU-time rates (one core). share: of map + hub validation + JSON serialisation; "
                     "end_to_end_share: of what POST /cda does per document (quality control, "
                     "mapping, validation, storage in one SQLite transaction)."}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    result = run(args.repeats, args.rounds)
    print("wrote", record("cda", result))
    return result


if __name__ == "__main__":
    main()
