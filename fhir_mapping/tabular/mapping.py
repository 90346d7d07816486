"""Declarative tabular mappings: a YAML file per HIS view, checked when loaded, applied per row.

The file format (the shipped files in ``mappings/`` are the worked examples)::

    name: outpatient-visit            # the kind is row:<name> / csv:<name>
    timezone: "+08:00"                # written on local date-times that carry no offset
    unit: [visit_no]                  # the row's own key: Conversion.unit_id = "<name>:<values>"
    patient: patient                  # the resource that is the row's patient (Conversion.patient_key)
    source_order: updated_at          # optional: the row's last change, its source-order stamp
    columns:                          # every column a rule may read, documented, with an example
      visit_no: {required: true, example: "MZ0001", doc: 门诊号 outpatient visit number}
    value_maps:                       # code -> code tables used by the `map` transform
      sex: {"1": male, "2": female, "9": unknown, "*": unknown}
    resources:
      patient:                        # a name rules use in `ref:`
        type: Patient
        id: {kind: MR, columns: [patient_id]}  # id = stable_id(type, institution, kind, *values)
                                      # + fallback: [{kind: VN, columns: [visit_no]}] when the key
                                      # is a filler or an invalid resident ID number
        emit: true                    # false: only referred to (another view sends it)
        when: patient_id              # emitted only when these columns have values
                                      # (when_any: [a, b]: when one of them has a value)
        rules:
          - {path: "identifier[0].value", column: patient_id}
          ...

A rule has a ``path`` (FHIR element names from the resource, ``[n]`` on repeating elements,
``_name`` for the extensions of a primitive) and exactly one source:

* ``column: c`` with ``transform:`` (``string`` default, with ``fillers: skip`` a filler left out
  with a finding, ``code``, ``integer``, ``decimal``, ``boolean``, ``date`` with ``not_after:
  [columns]`` a date later than theirs left out with a finding,
  ``date``/``datetime``/``instant`` with an optional ``format`` such as ``YYYYMMDD``
  or ``YYYY-MM-DD HH:MM:SS``, ``map`` with ``map: name``, ``resident_id``: GB 11643 check, left
  out with a finding when invalid) and an optional ``default`` constant for an empty cell;
* ``value:`` a constant (scalar or object); ``template: "urn:oid:{oid}.1"`` a string built from
  ``{oid}``, ``{institution}`` and columns;
* ``ref: <resource name>``: a Reference to another resource of the same row;
* ``coding: {code: c, system: template, display: c | display_map: m, code_map: m}``: a Coding;
* ``quantity: {value: c, unit: c | unit_value: "d", ucum: <map> | true, comparator: true}``: a
  Quantity (also Duration, Age, …); with ``comparator: true`` ``<0.5`` becomes comparator ``<``
  and value 0.5;
* ``object: {use: official, system: "urn:…", value: {column: c, transform: t}}``: a constant
  object with embedded ``{column: …}`` / ``{template: …}`` parts, left out as a whole when any
  embedded part is empty (an identifier without a number is no identifier);
* ``first: [rule, rule, …]``: the first alternative whose value converts (a lab result as a
  quantity, else as a string).

and optionally ``when: column | [columns]`` (applies only when they have values),
``when_any: [columns]`` (only when one of them has a value) and ``on_error: skip`` (a bad value
is left out with a warning finding instead of refusing the row). A ``coding:`` whose code is
empty beside a filled ``display`` column is left out with a ``tabular.uncoded`` information
finding (the name stays where a rule writes it as text).

A row is the whole record of what it owns (a resource keyed by ``unit`` columns alone). An element
its rules write that the row leaves empty, every column they read being in the row and empty (a bad
value left out by ``on_error: skip`` says nothing), is marked cleared (``fhir_mapping.cleared``):
the hub then drops it from a Patient instead of keeping the stored value as unsaid; a column the
row lacks says nothing of a Patient, and a resource the row shares (a visit view's Patient) is
never cleared by it. A column the row lacks that another resource of its own is written from (or
its ``source_order``) refuses it (``tabular.columns``, naming the columns; see ``row_columns``):
that resource's next version would lose what the column holds. Identifiers are never marked (the
hub joins a Patient's identifiers from every feed). A resource of the row's own (keyed by ``unit``
columns alone, or by them and more) whose ``when``/``when_any`` columns are in the row but empty is
deleted (``Conversion.deletes``: a withdrawn diagnosis). A tombstone row (``"@deleted": true``
beside the ``unit`` columns and the other columns such a resource is keyed by, as the database
poller's ``deleted_rows`` source sends it) deletes the resources of the row's own and writes
nothing; a resource keyed otherwise (the Patient, by record number) is shared with other rows and
stays. Deletes carry a source order as writes do (``Conversion.source_time``): a row's, its
``source_order`` column; a tombstone's, ``"@deleted_at"`` (the deletion log's time). The hub
refuses a delete older than the stored version and keeps the order with the deletion, so a row
re-sent older than it does not write the resources again.

A file is refused at load (``MappingFileError`` naming the file and rule; see ``loader.py``) for
unknown keys, columns, transforms, value maps or resource names, paths that are not elements of
the type, a source whose kind does not fit the element, codes outside a required binding, and
when the row of column examples does not convert into resources that pass the hub's validation
(``hub.core.resource.validate``, passed in by the caller that loads the file: see ``Validate``).

This module is the engine: it applies a checked mapping to one row.
"""

from __future__ import annotations

import csv
import io
import json
import string
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import yaml

from fhir_mapping import cleared
from fhir_mapping.base import Conversion, Finding, MappingError, SourceInfo
from fhir_mapping.identifiers import RESIDENT_ID_SYSTEM, key_problem
from fhir_mapping.ids import stable_id
from fhir_mapping.tabular import values as V
from fhir_mapping.tabular.loader import Loader
from fhir_mapping.tabular.model import DELETED, DELETED_AT, MappingFileError, Resource, Rule
from hub.core.errors import FhirError

__all__ = ["MappingFileError", "TabularMapping", "CsvRowsError", "Rule", "Resource", "Validate"]

SHIPPED = Path(__file__).parent / "mappings"
UCUM = "http://unitsofmeasure.org"
# what a feed's write of these leaves unsaid the hub keeps (fhir_mapping.cleared): a row without a
# column of theirs erases nothing
_KEPT_UNSAID = frozenset({"Patient"})

# The hub's resource validation, passed in by whoever loads a mapping file (the mappers import none
# of the hub's validation; ``connectors.kinds`` passes ``hub.core.resource.validate``):
# ``validate(resource type, resource JSON, resource)`` raises a ``FhirError`` listing the issues.
# Without it the self-test only converts the row of column examples.
Validate = Callable[[str, bytes, dict], None]


class CsvRowsError(MappingError):
    """Some rows of a CSV export could not be converted.

    ``errors`` lists ``(line, MappingError)``; ``conversions`` holds the rows that did convert, so
    a caller that can spool part of a file keeps them (the Spool dead-letters the whole file, and a
    replay after the fix rewrites the good rows as no-ops)."""

    def __init__(self, errors: list[tuple[int, MappingError]], conversions: list[Conversion],
                 rows: dict[int, bytes] | None = None):
        lines = "; ".join(f"line {n}: {e.reason}" for n, e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} of {len(errors) + len(conversions)} rows refused: "
                         f"{lines}{more}", code="AE",
                         location=f"line {errors[0][0]}" + (f", column {errors[0][1].location}"
                                                            if errors[0][1].location else ""),
                         rule="tabular.csv.rows")
        self.errors = errors
        self.conversions = conversions
        # each refused line as (line, row JSON, error): a spool keeps the good rows flowing and
        # dead-letters each bad line on its own, replayable as a ``row:<mapping>`` payload
        rows = rows or {}
        self.rejected = [(n, rows.get(n, b"{}"), e) for n, e in errors]

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["rows"] = [{"line": n, **e.to_dict()} for n, e in self.errors]
        return d


class _Seq(dict):
    """A repeating element while a resource is built: index -> item; becomes a list at the end."""


class _Ctx:
    __slots__ = ("timezone", "value_maps", "findings", "column", "reported")

    def __init__(self, timezone: str, value_maps: dict):
        self.timezone = timezone
        self.value_maps = value_maps
        self.findings: list[Finding] = []
        self.column = ""
        self.reported: set[tuple[str, str]] = set()  # (column, problem) of identifier findings

    def finding(self, severity: str, rule: str, message: str) -> None:
        self.findings.append(Finding(severity, rule, message, self.column or None))


class _Skip(Exception):
    """This rule has nothing to write (an empty cell, a resource not emitted)."""


# -- the mapping -----------------------------------------------------------------------------------

class TabularMapping:
    """One loaded, checked mapping file; ``convert_row_json`` and ``convert_csv`` are the
    converters the registry hands out for ``row:<name>`` and ``csv:<name>``."""

    def __init__(self, d: dict, origin: str, validate: Validate | None = None):
        self.origin = origin
        Loader(self, d, origin).load()
        self.row_columns = self._row_columns()
        self._selftest(validate)

    # attributes set by loader.Loader
    name: str
    timezone: str
    unit: tuple[str, ...]
    patient: str | None
    source_order: str | None  # the column saying when the row last changed (older never wins)
    columns: dict[str, dict]
    required: tuple[str, ...]
    resident_columns: frozenset[str]  # read with the resident_id transform: checked as such in keys
    code_columns: frozenset[str]  # the codes of codings: key parts, but no identifiers to check
    value_maps: dict[str, dict[str, str]]
    resources: dict[str, Resource]
    # the columns every row must have, empty or not: those the resources of the row's own are
    # written from, and its source order (a row without one of them would rewrite its resource
    # without the element, as if the HIS had cleared it)
    row_columns: tuple[str, ...]

    # ---- converting

    def convert_row(self, row: dict[str, Any], source: SourceInfo) -> Conversion:
        """One row (column -> value; names compared case-insensitively) to one Conversion.

        A refusal is a MappingError whose reason names the row (its ``unit`` key, when readable)
        and the column, and whose ``location`` is the column."""
        try:
            return self._convert_row(row, source)
        except MappingError as e:
            if e.rule in ("tabular.value", "tabular.required", "tabular.empty", "tabular.columns"):
                key = self._row_key(row)
                if key:
                    raise MappingError(f"row {key}: {e.reason}", code=e.code, location=e.location,
                                       rule=e.rule) from None
            raise

    def _row_key(self, row: dict[str, Any]) -> str:
        cells = {str(k).strip().lower(): v for k, v in row.items()}
        parts = []
        for c in self.unit:
            try:
                t = V.text(cells.get(c))
            except V.BadValue:
                t = None
            if t is None:
                return ""
            parts.append(f"{c}={t[:64]}")
        return ", ".join(parts)

    def _convert_row(self, row: dict[str, Any], source: SourceInfo) -> Conversion:
        if not source.institution:
            raise MappingError("the connector declares no institution code (ids are derived from"
                               " it)", code="AR", rule="tabular.source.institution")
        cells = {str(k).strip().lower(): v for k, v in row.items()}
        ctx = _Ctx(self.timezone, self.value_maps)
        texts: dict[str, str | None] = {}

        def cell_text(col: str) -> str | None:
            if col not in texts:
                try:
                    texts[col] = V.text(cells.get(col))
                except V.BadValue as e:
                    raise MappingError(f"column {col} {e}", location=col,
                                       rule="tabular.value") from None
            return texts[col]

        unit_id = f"{self.name}:" + "/".join(cell_text(c) or "" for c in self.unit)
        if cells.get(DELETED) is True:
            return self._deleted(unit_id, cell_text, source, ctx)
        for col in self.required:
            if cell_text(col) is None:
                raise MappingError(f"required column {col} is empty or missing", location=col,
                                   rule="tabular.required")
        lacking = [c for c in self.row_columns if c not in cells]
        if lacking:
            raise MappingError(self.lacking(lacking), location=lacking[0], rule="tabular.columns")
        ids: dict[str, str | None] = {}
        deletes: list[str] = []
        for res in self.resources.values():
            if _gated_off(res.when, res.when_any, cell_text):
                ids[res.name] = None
                # the row still there, the columns that make this resource cleared in it: what
                # an earlier version of the row wrote is no longer so (a diagnosis withdrawn).
                # Only a resource of the row's own, and only when the row has the columns (an
                # export without them says nothing of it)
                if self._owned(res) and all(c in cells for c in (*res.when, *res.when_any)):
                    rid = self._key(res, cell_text, source, ctx)
                    if rid is not None:
                        deletes.append(f"{res.type}/{rid}")
                continue
            ids[res.name] = self._key(res, cell_text, source, ctx)
        out: list[dict] = []
        for res in self.resources.values():
            if not res.emit or ids[res.name] is None:
                continue
            body: dict = {"resourceType": res.type, "id": ids[res.name]}
            for rule in res.rules:
                self._apply(rule, body, cells, cell_text, ids, source, ctx)
            body = _finish(body)
            # a view's row is the whole record of what it owns: an element whose columns the row
            # has, empty, is said to be empty now (a phone cleared in a patient view), not left
            # unsaid (fhir_mapping.cleared). Not so for a resource the row shares: a visit row's
            # empty phone does not say the patient has none (it was not taken at that visit, or
            # another feed keeps it)
            if self._owned(res):
                cleared.mark(body, self._said_empty(res, body, cells, cell_text))
            out.append(body)
        pkey = None
        if self.patient and ids.get(self.patient):
            pkey = f"Patient/{ids[self.patient]}"
        if not out:
            raise MappingError("the row yields no resource", rule="tabular.empty")
        # the row's last change stamps what it writes and deletes: a re-sent older export (or a
        # view read again from an older copy) never overwrites nor deletes what a newer row wrote
        when = self._when(self.source_order, cell_text, ctx)
        return Conversion(resources=out, unit_id=unit_id, patient_key=pkey,
                          kind=f"row:{self.name}", findings=ctx.findings, deletes=deletes,
                          source_time=when)

    def lacking(self, columns: list[str]) -> str:
        """What a row (a view, a CSV header) without ``columns`` of ``row_columns`` would lose."""
        owners = [r.type for r in self.resources.values()
                  if self._owned(r) and r.type not in _KEPT_UNSAID
                  and set(columns) & set(self._reads(r))]
        what = (f"the {' and '.join(owners)} of the row's own would be written without what they"
                " hold" if owners else "what the row writes would carry no source order")
        return (f"no column {', '.join(columns)}: {what} (a column not there is not an empty "
                "cell; name the columns as the mapping does, or take their rules out of it)")

    def _row_columns(self) -> tuple[str, ...]:
        cols = dict.fromkeys(self.required)
        if self.source_order:
            cols[self.source_order] = None
        for res in self.resources.values():
            if self._owned(res) and res.type not in _KEPT_UNSAID:
                cols.update(dict.fromkeys(self._reads(res)))
        return tuple(cols)

    def _reads(self, res: Resource) -> list[str]:
        """Every column the content of ``res`` depends on: its key, its gates, what its rules read
        (codes and their names, values and their units, templates) and the keys and gates of the
        resources it refers to."""
        out: dict[str, None] = {}

        def add(cols) -> None:
            out.update(dict.fromkeys(c for c in cols if c in self.columns))

        def of(r: Resource) -> None:
            add(r.id_columns)
            for _, cols in r.fallbacks:
                add(cols)
            add(r.when)
            add(r.when_any)

        def rule_reads(rule: Rule) -> None:
            add(rule.columns)
            add(rule.when)
            add(rule.when_any)
            spec = rule.spec
            if rule.source == "template":
                add(_template_fields(spec))
            elif rule.source == "coding":
                add(v for k, v in spec.items() if k in ("code", "display"))
                if "system" in spec:
                    add(_template_fields(spec["system"]))
            elif rule.source == "quantity":
                add(v for k, v in spec.items() if k in ("value", "unit"))
            elif rule.source == "ref":
                of(self.resources[spec])
            for alt in rule.alternatives:
                rule_reads(alt)

        of(res)
        for rule in res.rules:
            rule_reads(rule)
        return list(out)

    @staticmethod
    def _when(column: str | None, cell_text, ctx: _Ctx) -> str | None:
        """The row's source order: the date-time in ``column``, else None (a finding when the
        cell holds something else)."""
        changed = cell_text(column) if column else None
        if not changed:
            return None
        try:
            return V.t_datetime(changed, {}, ctx)
        except V.BadValue:
            ctx.findings.append(Finding("warning", "tabular.source-order", f"column {column} is "
                                        "no date-time: what the row writes and deletes carries "
                                        "no source order", column))
            return None

    def _owned(self, res: Resource) -> bool:
        """An emitted resource keyed by the row's own key alone, or by it and more (a visit view's
        Encounter, by record number and visit number): no other row writes it. A resource keyed
        otherwise (the Patient, by record number) is shared with other rows."""
        ids, unit = set(res.id_columns), set(self.unit)
        return res.emit and (ids <= unit or bool(unit) and unit <= ids)

    @staticmethod
    def _said_empty(res: Resource, body: dict, cells: dict, cell_text) -> list[str]:
        """The elements ``res``'s rules write that ``body`` lacks although the row has every
        column they read, each of them empty. A value left out as bad (``on_error: skip``: a
        birth date 1985-13-45) says nothing of the element: the stored one stays. Identifiers
        are not among them: the hub joins a Patient's identifiers from every feed, and one
        view's empty column does not retract the others'."""
        reads: dict[str, set[str]] = {}
        either: dict[str, set[str]] = {}  # the elements of one `first:` (a value[x]): one is said
        for rule in res.rules:
            alts = rule.alternatives if rule.source == "first" else (rule,)
            tops = {r.path[0][0] for r in alts}
            for r in alts:
                top = r.path[0][0]
                reads.setdefault(top, set()).update(r.columns, r.when, r.when_any, rule.when,
                                                    rule.when_any)
                either.setdefault(top, set()).update(tops)
        return sorted(e for e, cols in reads.items() if e != "identifier"
                      and not any(x in body for x in either[e])
                      and all(c in cells and cell_text(c) is None for c in cols))

    def _deleted(self, unit_id: str, cell_text, source: SourceInfo, ctx: _Ctx) -> Conversion:
        """A row deleted from its view (a tombstone: the key columns and ``@deleted``): the
        resources of the row's own are deleted. A delete, not a status: the mapper knows nothing
        but the key, and a new version saying ``entered-in-error`` would have to restate (or
        erase) the content it retracts; the hub's delete keeps every earlier version in the
        resource's history. The Patient, shared with the patient's other rows, stays."""
        for col in self.unit:
            if cell_text(col) is None:
                raise MappingError(f"the deleted row's key column {col} is empty or missing",
                                   location=col, rule="tabular.required")
        # a resource keyed by more than the row's key (a visit, by its patient too): its id needs
        # those columns, and a fallback key would name another resource than the row wrote
        for res in self.resources.values():
            lacking = next((c for c in res.id_columns if cell_text(c) is None), None)
            if self._owned(res) and lacking is not None:
                raise MappingError(f"the deleted row's column {lacking} is empty or missing: the "
                                   f"{res.name} ({res.type}) it wrote is keyed by it as well, so "
                                   "the deletion log must carry it", location=lacking,
                                   rule="tabular.required")
        deletes = []
        for res in self.resources.values():
            if self._owned(res):
                rid = self._key(res, cell_text, source, ctx)
                if rid is not None:
                    deletes.append(f"{res.type}/{rid}")
        if not deletes:
            raise MappingError("the deleted row's key keys no resource of its own",
                               rule="tabular.empty")
        ctx.findings.append(Finding("information", "tabular.row-deleted",
                                    f"the row was deleted from its view: {', '.join(deletes)} "
                                    "deleted"))
        # the deletion's time (the deletion log's) orders it against the row's writes: a
        # tombstone read after the row was inserted again leaves the newer row, and a row re-sent
        # older than the deletion does not bring it back
        when = self._when(DELETED_AT, cell_text, ctx)
        if when is None and self.source_order and cell_text(DELETED_AT) is None:
            ctx.findings.append(Finding("warning", "tabular.source-order", f"the deleted row "
                                        f"gives no time of its deletion ({DELETED_AT}): its "
                                        "deletes carry no source order", DELETED_AT))
        return Conversion(resources=[], deletes=deletes, unit_id=unit_id,
                          kind=f"row:{self.name}", findings=ctx.findings, source_time=when)

    def _key(self, res: Resource, cell_text, source: SourceInfo, ctx: _Ctx) -> str | None:
        """The resource's id from its key columns, else from the first fallback whose columns all
        hold usable values; None when no key has values. A filler or an invalid resident ID number
        is never a key: a ``tabular.identifier.<problem>`` finding (the column, never the value),
        and an emitted resource left with no usable key refuses the row."""
        unusable: tuple[str, str] | None = None
        for kind, cols in ((res.id_kind, res.id_columns), *res.fallbacks):
            # a key as the index compares it (NFKC): Ｐ１００ typed in full width is P100, not a
            # second Patient, and a full-width resident ID number passes its check
            values = [None if v is None else unicodedata.normalize("NFKC", v)
                      for v in (cell_text(c) for c in cols)]
            if any(v is None for v in values):
                continue
            bad = next(((c, p) for c, v in zip(cols, values) if c not in self.code_columns and (
                p := key_problem(v, RESIDENT_ID_SYSTEM if c in self.resident_columns else None))), None)
            if bad is None:
                return stable_id(res.type, source.institution, kind, *values)
            if (bad[0], bad[1]) not in ctx.reported:
                ctx.reported.add((bad[0], bad[1]))
                ctx.findings.append(Finding("warning", f"tabular.identifier.{bad[1]}",
                                            f"column {bad[0]} holds a {bad[1]} value: not a key of "
                                            f"the {res.name} ({res.type})", bad[0]))
            unusable = unusable or bad
        # the row's patient too, even only referred to: a result of a filler patient with no
        # visit was stored with no subject, reachable from no patient's record
        if unusable is not None and (res.emit or res.name == self.patient):
            raise MappingError(f"column {unusable[0]} holds a {unusable[1]} value and nothing else "
                               f"keys the {res.name} ({res.type})", location=unusable[0],
                               rule=f"tabular.identifier.{unusable[1]}")
        return None

    def convert_row_json(self, payload: bytes, source: SourceInfo) -> list[Conversion]:
        try:
            row = json.loads(payload, parse_float=Decimal)
        except (ValueError, RecursionError) as e:
            raise MappingError(f"the row is not JSON: {e}", code="AR", rule="tabular.json") from None
        if not isinstance(row, dict):
            raise MappingError("the row must be a JSON object of column: value", code="AR",
                               rule="tabular.json")
        return [self.convert_row(row, source)]

    def csv_rows(self, payload: bytes) -> Iterator[tuple[int, dict[str, str | None] | dict[str, bool]]]:
        """(line number, row) of a CSV export: UTF-8 (with or without BOM), else GB18030; the
        first line names the columns; every required column must be among them. An empty cell is
        None; a line with more (fewer) values than columns is ``{"\x00too-many": True}``
        (``{"\x00too-few": True}``)."""
        try:
            textual = payload.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                # GB18030's own byte order mark (84 31 95 33) decodes to U+FEFF: no column name
                textual = payload.decode("gb18030").removeprefix("\ufeff")
            except UnicodeDecodeError:
                raise MappingError("the CSV file is neither UTF-8 nor GB18030", code="AR",
                                   rule="tabular.csv.encoding") from None
        reader = csv.reader(io.StringIO(textual, newline=""))
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise MappingError("the CSV file is empty", code="AR", rule="tabular.csv.header") from None
        except csv.Error as e:
            raise MappingError(f"the CSV header is malformed: {e}", code="AR",
                               rule="tabular.csv.header") from None
        twice = sorted({h for h in header if h and header.count(h) > 1})
        if twice:  # which of the two values is the column's? (the last silently won)
            raise MappingError(f"the CSV header names {', '.join(twice)} more than once",
                               code="AR", location="line 1", rule="tabular.csv.header")
        missing = [c for c in self.required if c not in header]
        if missing:
            raise MappingError(f"the CSV header lacks required columns {', '.join(missing)}",
                               code="AR", location="line 1", rule="tabular.csv.header")
        missing = [c for c in self.row_columns if c not in header]
        if missing:
            raise MappingError(f"the CSV header has {self.lacking(missing)}", code="AR",
                               location="line 1", rule="tabular.csv.header")
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise MappingError(f"malformed CSV at line {reader.line_num}: {e}", code="AR",
                                   location=f"line {reader.line_num}", rule="tabular.csv.syntax") from None
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                # a line cut by a newline outside quotes is short, its tail line long: neither
                # is read with its values under the wrong columns or left out
                yield reader.line_num, {"\x00too-many" if len(values) > len(header)
                                        else "\x00too-few": True}
                continue
            yield reader.line_num, {h: (v if v != "" else None) for h, v in zip(header, values)}

    def split_csv(self, payload: bytes) -> list[tuple[int, bytes]]:
        """A CSV export as (line, row JSON) pairs: a source can send each as a ``row:<name>``
        envelope, so a bad row is its own dead letter and the good rows flow."""
        return [(n, orjson.dumps(row)) for n, row in self.csv_rows(payload)]

    def convert_csv(self, payload: bytes, source: SourceInfo) -> list[Conversion]:
        """One Conversion per data row (unit ids carry the row keys). If any row is refused, raises
        ``CsvRowsError`` listing every bad line and column, with the good rows' conversions
        attached; the file as a whole is then dead-lettered and can be replayed after a fix."""
        good: list[Conversion] = []
        bad: list[tuple[int, MappingError]] = []
        bad_rows: dict[int, bytes] = {}
        for line, row in self.csv_rows(payload):
            if "\x00too-many" in row or "\x00too-few" in row:
                more = "\x00too-many" in row
                bad.append((line, MappingError(
                    f"{'more' if more else 'fewer'} values than header columns",
                    rule="tabular.csv.width")))
                bad_rows[line] = orjson.dumps(row)
                continue
            try:
                good.append(self.convert_row(row, source))
            except MappingError as e:
                bad.append((line, e))
                bad_rows[line] = orjson.dumps(row)
        if bad:
            raise CsvRowsError(bad, good, bad_rows)
        if not good:
            raise MappingError("the CSV file has no data rows", code="AE", rule="tabular.csv.empty")
        return good

    # ---- rule application

    def _apply(self, rule: Rule, body: dict, cells: dict, cell_text, ids: dict,
               source: SourceInfo, ctx: _Ctx) -> None:
        if _gated_off(rule.when, rule.when_any, cell_text):
            return
        try:
            value = self._value(rule, cells, cell_text, ids, source, ctx)
        except _Skip:
            return
        except V.BadValue as e:
            col = ctx.column
            if rule.skip_on_error:
                ctx.findings.append(Finding("warning", "tabular.value-skipped",
                                            f"column {col} {e}; {_dotted(rule.path)} left out",
                                            col or None))
                return
            raise MappingError(f"column {col} {e} ({rule.where})", location=col or None,
                               rule="tabular.value") from None
        _put(body, rule.path, value)

    def _value(self, rule: Rule, cells, cell_text, ids, source: SourceInfo, ctx: _Ctx) -> Any:
        kind = rule.source
        ctx.column = rule.columns[0] if rule.columns else ""
        if kind == "first":
            last: V.BadValue | None = None
            for alt in rule.alternatives:
                if _gated_off(alt.when, alt.when_any, cell_text):
                    continue
                try:
                    value = self._value(alt, cells, cell_text, ids, source, ctx)
                except V.BadValue as e:
                    last = e
                    continue
                except _Skip:
                    continue
                return _Alt(alt.path, value)
            if last is not None:
                raise last
            raise _Skip
        if kind == "column":
            fn = V.TRANSFORMS[rule.transform][0]
            raw = cells.get(rule.spec)
            out = fn(raw, rule.targs, ctx) if cell_text(rule.spec) is not None else None
            if out is None:
                if rule.default is None:
                    raise _Skip
                return rule.default
            if rule.targs.get("not_after"):
                self._not_after(out, rule, cell_text, ctx)
            if rule.identifier == "value" and isinstance(out, str):
                self._identifier_value(out, None, rule, ctx)
            return out
        if kind == "value":
            return _copy(rule.spec)
        if kind == "object":
            out = _copy(rule.spec)
            for sub in rule.alternatives:  # every embedded part must have a value
                value = self._value(sub, cells, cell_text, ids, source, ctx)
                node = out
                for name, _ in sub.path[len(rule.path):-1]:
                    node = node[name]
                node[sub.path[-1][0]] = value
            if rule.identifier == "object" and isinstance(out.get("value"), str):
                self._identifier_value(out["value"], out.get("system"), rule, ctx)
            return out
        if kind == "template":
            return self._template(rule.spec, cell_text, source, rule)
        if kind == "ref":
            rid = ids.get(rule.spec)
            if rid is None:
                raise _Skip
            return {"reference": f"{self.resources[rule.spec].type}/{rid}"}
        if kind == "coding":
            spec = rule.spec
            ctx.column = spec["code"]
            code = V.t_code(cells.get(spec["code"]), {}, ctx) if cell_text(spec["code"]) else None
            if code is None:
                if "display" in spec and cell_text(spec["display"]):
                    # a name without its code (a diagnosis written in words): the rules that
                    # write the name as text keep it; no coding is made up for it
                    ctx.finding("information", "tabular.uncoded",
                                f"column {spec['code']} is empty beside {spec['display']}: "
                                f"{_dotted(rule.path)} left out, the name kept as text")
                raise _Skip
            coding: dict[str, Any] = {}
            if "system" in spec:
                coding["system"] = self._template(spec["system"], cell_text, source, rule)
            if "code_map" in spec:
                code = V.t_map(code, {"map": spec["code_map"]}, ctx)
            coding["code"] = code
            display = None
            if "display" in spec:
                display = cell_text(spec["display"])
            elif "display_map" in spec:
                display = self.value_maps[spec["display_map"]].get(
                    cell_text(spec["code"]) or "")
            if display:
                coding["display"] = display
            return coding
        if kind == "quantity":
            spec = rule.spec
            ctx.column = spec["value"]
            if cell_text(spec["value"]) is None:
                raise _Skip
            comparator, number = V.quantity_value(cells.get(spec["value"]))
            if comparator and not spec.get("comparator"):
                raise V.BadValue("has a comparator (<, >) where a plain number is expected")
            if number is None:
                raise _Skip
            out = {"value": number}
            if comparator:
                out["comparator"] = comparator
            unit = spec.get("unit_value") or (cell_text(spec["unit"]) if "unit" in spec else None)
            if unit:
                out["unit"] = unit
                ucum = spec.get("ucum")
                code = unit if ucum is True else self.value_maps[ucum].get(unit) if ucum else None
                if code:
                    out["system"] = UCUM
                    out["code"] = code
            return out
        raise AssertionError(kind)

    @staticmethod
    def _not_after(date: str, rule: Rule, cell_text, ctx: _Ctx) -> None:
        """Leave out a date later than the day of a ``not_after`` column's date-time (a birth
        after the visit, or after the row was last changed: in the future when written)."""
        col = ctx.column
        for other in rule.targs["not_after"]:
            try:
                when = V.t_datetime(cell_text(other), {}, ctx)
            except V.BadValue:
                continue  # its own rule says so
            if when is not None and date[:10] > when[:10]:
                ctx.column = col
                ctx.findings.append(Finding("warning", "tabular.date.after",
                                            f"column {col} is later than {other}: "
                                            f"{_dotted(rule.path)} left out", col or None))
                raise _Skip

    @staticmethod
    def _identifier_value(value: str, system: Any, rule: Rule, ctx: _Ctx) -> None:
        """Leave out an identifier whose value is a filler or an invalid resident ID number."""
        problem = key_problem(value, system if isinstance(system, str) else None)
        if problem is None:
            return
        col = next(iter(rule.columns), "") or ctx.column
        if (col, problem) not in ctx.reported:
            ctx.reported.add((col, problem))
            ctx.findings.append(Finding("warning", f"tabular.identifier.{problem}",
                                        f"column {col} holds a {problem} value: "
                                        f"{_dotted(rule.path)} left out", col or None))
        raise _Skip

    def _template(self, tpl: str, cell_text, source: SourceInfo, rule: Rule) -> str:
        vals: dict[str, str] = {}
        for name in _template_fields(tpl):
            if name in ("oid", "institution"):
                v = getattr(source, name)
                if not v:
                    raise MappingError(f"the connector declares no institution {name} "
                                       f"({rule.where})", code="AR", rule=f"tabular.source.{name}")
            else:
                v = cell_text(name)
                if v is None:
                    raise _Skip
            vals[name] = v
        return tpl.format_map(vals)

    def _selftest(self, validate: Validate | None) -> None:
        """Convert the row of column examples and validate every resource with ``validate`` (the
        hub's, passed in by the caller), when given."""
        row = {c: spec["example"] for c, spec in self.columns.items() if "example" in spec}
        try:
            conv = self.convert_row(row, SourceInfo(institution="SELFTEST", oid="1.2.156.0.0"))
        except MappingError as e:
            raise MappingFileError(f"{self.origin}: the row of column examples does not convert:"
                                   f" {e.reason}") from None
        if validate is None:
            return
        for r in conv.resources:
            try:
                validate(r["resourceType"], orjson.dumps(r), r)
            except FhirError as e:
                issues = "; ".join(f"{i.expression}: {i.diagnostics}" for i in e.issues[:5])
                raise MappingFileError(f"{self.origin}: the example row makes an invalid "
                                       f"{r['resourceType']}: {issues}") from None


def _gated_off(when: tuple[str, ...], when_any: tuple[str, ...], cell_text) -> bool:
    """A rule or resource whose ``when`` columns are not all filled, or none of whose
    ``when_any`` columns is."""
    return any(cell_text(c) is None for c in when) or (
        bool(when_any) and all(cell_text(c) is None for c in when_any))


@dataclass(slots=True)
class _Alt:
    path: list
    value: Any


@lru_cache(maxsize=1024)
def _template_fields(tpl: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(tpl) if name is not None)


def _copy(v: Any) -> Any:
    t = type(v)
    if t is dict:
        return {k: _copy(x) for k, x in v.items()}
    if t is list:
        return [_copy(x) for x in v]
    return v


def _dotted(path: list[tuple[str, int | None]]) -> str:
    return ".".join(n if i is None else f"{n}[{i}]" for n, i in path)


def _put(body: dict, path: list[tuple[str, int | None]], value: Any) -> None:
    if isinstance(value, _Alt):
        path, value = value.path, value.value
    node = body
    for depth, (name, index) in enumerate(path):
        last = depth == len(path) - 1
        if index is not None:
            seq = node.get(name)
            if not isinstance(seq, _Seq):
                seq = node[name] = _Seq()
            if last:
                _merge_into(seq, index, value)
                return
            node = seq.setdefault(index, {})
        else:
            if last:
                _merge_into(node, name, value)
                return
            node = node.setdefault(name, {})


def _merge_into(container: dict, key: Any, value: Any) -> None:
    old = container.get(key)
    if isinstance(old, dict) and isinstance(value, dict):
        for k, v in value.items():
            _merge_into(old, k, v)
    else:
        container[key] = value


def _finish(v: Any) -> Any:
    """_Seq -> lists in index order; empty objects and lists dropped."""
    t = type(v)
    if t is _Seq:
        items = [_finish(v[i]) for i in sorted(v)]
        return [x for x in items if x is not None and x != {} and x != []]
    if t is dict:
        out = {}
        for k, x in v.items():
            tx = type(x)
            if tx is dict or tx is _Seq or tx is list:
                x = _finish(x)
                if not x:
                    continue
            elif x is None:
                continue
            out[k] = x
        return out
    if t is list:
        return [_finish(x) for x in v]
    return v


def load_file(path: str | Path, validate: Validate | None = None) -> TabularMapping:
    """Read, check and compile one mapping file (``MappingFileError`` when it is wrong); the row of
    column examples is validated with ``validate`` when given (see ``Validate``)."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MappingFileError(f"{path}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise MappingFileError(f"{path}: not valid YAML: {e}") from None
    return TabularMapping(d, str(path), validate)
