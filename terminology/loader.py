"""Loading terminology into the hub: FHIR JSON (a resource, a Bundle, NDJSON; .gz too) and CSV
(``terminology.csvformat``), files or folders, stored through the hub's normal ingest
(``Hub.ingest``: validated once, versioned, a reload of the same content changes nothing).

Only CodeSystem, ValueSet, ConceptMap and NamingSystem are taken; anything else is refused with
its reason (``hub ingest`` stores other resources). A resource without an id gets one derived
from its url and version, so loading a file again updates the same resource instead of adding
another. A file is stored whole or not at all: one entry rejected keeps its file out.
``hub terminology load --builtin`` loads the folder ``terminology/data/``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from hub.core.commandline import iter_inputs
from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub, Op
from terminology import csvformat
from terminology import rows as R
from terminology.aliases import alias_groups, names_of

TYPES = ("CodeSystem", "ValueSet", "ConceptMap", "NamingSystem")
BUILTIN = Path(__file__).resolve().parent / "data"
BATCH_BYTES = 16 << 20  # one commit holds at most about this much JSON
BATCH_ITEMS = 200
SHOW_PROBLEMS = 20


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)  # (type, created|updated|unchanged)
    concepts: int = 0
    map_elements: int = 0
    rejected: int = 0
    held: int = 0  # valid, not stored: another entry of their file was rejected
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, why), the first ones

    def reject(self, where: str, why: str) -> None:
        self.rejected += 1
        if len(self.problems) < SHOW_PROBLEMS:
            self.problems.append((where, why))

    def note(self, where: str, what: str) -> None:
        """Shown with the problems, counted as none."""
        if len(self.problems) < SHOW_PROBLEMS:
            self.problems.append((where, what))

    def summary(self) -> str:
        parts = []
        for rtype in TYPES:
            kinds = {k: n for (t, k), n in sorted(self.counts.items()) if t == rtype}
            if kinds:
                parts.append(f"{rtype} {sum(kinds.values())} ("
                             + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")")
        loaded = sum(self.counts.values())
        return (f"{loaded} loaded" + (": " + ", ".join(parts) if parts else "")
                + f"; {self.concepts} concepts, {self.map_elements} map elements; "
                  f"{self.rejected} rejected"
                + (f", {self.held} held back with them" if self.held else ""))


def input_kind(f: Path) -> str | None:
    name = f.name.lower()
    if name.endswith(".csv"):
        return "csv"
    name = name.removesuffix(".gz")
    return "ndjson" if name.endswith(".ndjson") else "json" if name.endswith(".json") else None


def files(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and input_kind(p))
        else:
            out.append(path)
    return out


def resource_id(d: dict) -> str:
    """A deterministic id from url and version (ids are [A-Za-z0-9-.]{1,64})."""
    import hashlib

    key = f"{d.get('url') or orjson.dumps(d).decode()}|{d.get('version') or ''}"
    tail = (d.get("url") or "").rstrip("/").rsplit("/", 1)[-1]
    slug = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-.") else "-" for ch in tail)
    slug = slug.strip("-.")[:40]
    digest = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    return f"{slug}-{digest}" if slug else digest


def iter_resources(path: Path, csv_options: dict[str, str | None]
                   ) -> Iterator[tuple[str, dict | None, str | None]]:
    """(where, resource, None) for every resource of a file, or (where, None, why not)."""
    kind = input_kind(path)
    if kind is None:
        yield str(path), None, "not a .json, .ndjson or .csv file"
        return
    if kind == "csv":
        try:
            yield str(path), csvformat.parse(path.read_bytes(), **csv_options), None
        except csvformat.CsvError as e:
            for line, why in e.problems:
                yield (f"{path}:{line}" if line else str(path)), None, why
        except OSError as e:
            yield str(path), None, f"Cannot read the file: {e}"
        return
    from hub.core.resource import parse_json

    for where, raw, unreadable in iter_inputs([path]):
        if unreadable is not None:
            yield where, None, unreadable
            continue
        assert isinstance(raw, bytes)  # iter_inputs gives the text or why it could not be read (no
        # stream of Bundle parts: not asked for)
        try:
            d = parse_json(raw)
        except FhirError as e:
            yield where, None, str(e)
            continue
        if isinstance(d, dict) and d.get("resourceType") == "Bundle":
            entries = d.get("entry")
            if not isinstance(entries, list):
                yield where, None, "Bundle.entry must be an array"
                continue
            for i, entry in enumerate(entries):
                r = entry.get("resource") if isinstance(entry, dict) else None
                yield f"{where}#entry[{i}]", r, None if isinstance(r, dict) else "no resource"
        else:
            yield where, d, None


def load(hub: Hub, paths: list[Path], ctx: Context | None = None, *,
         csv_options: dict[str, str | None] | None = None, progress: bool = False) -> Report:
    """Store the terminology resources of ``paths`` (files or folders), in file order.

    A file is one unit, as a CSV file is one resource: every entry of a Bundle or NDJSON file
    is validated first, and one rejected entry keeps the whole file out (a ValueSet stored
    without the CodeSystem it draws on would answer wrongly), each problem reported."""
    from tqdm import tqdm

    ctx = ctx or Context(source={"feed": "terminology"})
    report = Report()
    pending: list[tuple[str, Op, dict]] = []
    size = 0
    bar = tqdm(unit=" res", disable=not progress, desc="terminology", mininterval=0.5)

    def flush() -> None:
        nonlocal size
        if not pending:
            return
        results = hub.execute_batch([op for _, op, _ in pending], ctx)
        for (where, _, d), result in zip(pending, results, strict=True):
            if isinstance(result, FhirError):
                report.reject(where, _why(result))
                continue
            kind = ("created" if result.status == 201 else
                    "unchanged" if result.issues else "updated")
            report.counts[(d["resourceType"], kind)] += 1
            if d["resourceType"] == "CodeSystem":
                report.concepts += sum(1 for _ in R.iter_concepts(d.get("concept")))
            elif d["resourceType"] == "ConceptMap":
                report.map_elements += sum(len(R.as_list(g.get("element")))
                                           for g in R.as_list(d.get("group"))
                                           if isinstance(g, dict))
        bar.update(len(pending))
        pending.clear()
        size = 0

    try:
        for f in files(paths):
            ready, refused = _checked(hub, iter_resources(f, csv_options or {}))
            if refused:
                for where, why in refused:
                    report.reject(where, why)
                if ready:
                    report.held += len(ready)
                    report.note(str(f), f"nothing of the file stored: {len(ready)} valid "
                                        f"{'entry' if len(ready) == 1 else 'entries'} held "
                                        "back with the rejected")
                bar.update(len(ready) + len(refused))
                continue
            for where, op, d, n in ready:
                pending.append((where, op, d))
                size += n
                if size >= BATCH_BYTES or len(pending) >= BATCH_ITEMS:
                    flush()
        flush()
    finally:
        bar.close()
    return report


def _why(err: FhirError) -> str:
    issue = err.issues[0]
    return issue.diagnostics + (f" at {issue.expression}" if issue.expression else "")


def _checked(hub: Hub, found: Iterator[tuple[str, dict | None, str | None]]
             ) -> tuple[list[tuple[str, Op, dict, int]], list[tuple[str, str]]]:
    """The writes of one file's resources, validated (with their size), and (where, why) of
    those refused."""
    ready: list[tuple[str, Op, dict, int]] = []
    refused: list[tuple[str, str]] = []
    for where, d, why in found:
        if d is None:
            refused.append((where, why or "unreadable"))
            continue
        rtype = d.get("resourceType") if isinstance(d, dict) else None
        if rtype not in TYPES:
            refused.append((where, f"{rtype or 'this'} is not a terminology resource "
                                   "(CodeSystem, ValueSet, ConceptMap, NamingSystem); "
                                   "hub ingest stores the others"))
            continue
        if not d.get("id"):
            d = {"resourceType": rtype, "id": resource_id(d),
                 **{k: v for k, v in d.items() if k != "resourceType"}}
        raw = orjson.dumps(d)
        try:
            op = hub.op_for(raw, d)
        except FhirError as e:
            refused.append((where, _why(e)))
            continue
        ready.append((where, op, d, len(raw)))
    # names that would make two institutions' local code systems (or one and a standard) one
    # system are refused as the API refuses them (terminology.aliases.joins_apart); what the
    # store already holds is judged when the aliases are read
    named = [(i, names_of(d)) for i, (_, _, d, _) in enumerate(ready)
             if d["resourceType"] in ("CodeSystem", "NamingSystem")]
    apart: dict[int, str] = {}
    alias_groups([n for _, n in named], apart)
    if apart:
        bad = {named[j][0]: why for j, why in apart.items()}
        refused += [(ready[i][0], f"{ready[i][2]['resourceType']} not stored: {why}")
                    for i, why in bad.items()]
        ready = [r for i, r in enumerate(ready) if i not in bad]
    return ready, refused
