"""Code systems and concept maps as CSV: the format and its reader.

A file starts with optional header comments, ``# key: value`` lines, then a header row of column
names, then one row per concept (code system) or per mapping (concept map). UTF-8 (with or
without BOM) or GB 18030. Options given to the reader (``hub terminology load --url …``) win over
header comments. Code system::

    # url: https://example.org/CodeSystem/department
    # name: Department
    # version: 2024
    # oid: 2.16.156.10011.99.5.1          (optional: CodeSystem.identifier urn:oid:…)
    code,display,parent,inactive,abstract,definition,display@en,specialty
    01,内科,,,true,,Internal medicine,
    0101,心血管内科,01,,,,Cardiology,cardiac
    0102,呼吸内科,01,,,,Respiratory medicine,

``code`` is required, the rest optional. ``parent``: the parent codes, several separated by
``|`` (a code may have several parents); every parent must be a code of the file and the
hierarchy may not loop. ``inactive`` and ``abstract``: true/false (also 1/0, yes/no, 是/否; empty
is false); ``status``: a concept status (``retired`` makes it inactive). ``display@LANG``: a
designation in that language. Any other column is a string property of that name.

Concept map (``# kind: ConceptMap``, or recognised by its ``source_code`` column)::

    # url: https://example.org/ConceptMap/h0042-sex
    # source: https://example.org/ValueSet/h0042-sex     (optional scope value sets)
    # target: http://hl7.org/fhir/ValueSet/administrative-gender
    source_system,source_code,source_display,target_system,target_code,target_display,equivalence,comment
    urn:oid:2.16.156.10011.99.1.42.3,M,男,http://hl7.org/fhir/administrative-gender,male,Male,equivalent,

``source_system`` / ``target_system`` may instead be given once as header comments.
``equivalence`` is an R4 ConceptMapEquivalence. A row with a target code needs one: in its
``equivalence`` cell, or for the whole file as ``# equivalence: …`` (``hub terminology load
--equivalence …``), which a row's own cell wins over; a target without one says nothing about
meaning (the API refuses such a map, the normalisers skip such a target), so it is refused with
its line, never read as ``equivalent``. A row with no target code says the source code is known
and has no target: it is stored as a target with equivalence ``unmatched`` and no code. A
``narrower`` or ``inexact`` row needs a comment (R4's cmd-1). Rows are grouped by source and
target system, in file order.

Header keys: kind, id, url, name, title, version, status, description, publisher, oid,
hierarchyMeaning, caseSensitive (code systems); source, target, source_system, target_system,
equivalence (concept maps). Mistakes are reported with their line numbers (``CsvError``), at most
``MAX_PROBLEMS`` of them.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from hub.core.errors import HubError
from hub.core.invariants import parent_loop
from terminology import rows as R

MAX_PROBLEMS = 20
MAX_FIELD = 1 << 20  # characters in one cell
MAX_CODE = 256
CODE_RE = re.compile(r"^[^\s]+( [^\s]+)*$")  # FHIR code: no leading, trailing or double spaces
KEY_RE = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*[:=]\s*(.*?)\s*$")
LANG_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
PROPERTY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-.]{0,63}$")
EQUIVALENCES = ("relatedto", "equivalent", "equal", "wider", "subsumes", "narrower",
                "specializes", "inexact", "unmatched", "disjoint")
STATUSES = ("active", "experimental", "deprecated", "retired", "inactive")
TRUE, FALSE = {"true", "1", "yes", "y", "是"}, {"false", "0", "no", "n", "否", ""}
HEADER_KEYS = {"kind", "id", "url", "name", "title", "version", "status", "description",
               "publisher", "oid", "hierarchyMeaning", "caseSensitive", "source", "target",
               "source_system", "target_system", "equivalence"}
CS_COLUMNS = {"code", "display", "parent", "inactive", "abstract", "status", "definition"}
CM_COLUMNS = {"source_system", "source_code", "source_display", "target_system", "target_code",
              "target_display", "equivalence", "comment"}


class CsvError(HubError, ValueError):
    """The file cannot be read as a code system or concept map; ``problems``: (line, what)."""

    error_code = "invalid"

    def __init__(self, problems: list[tuple[int, str]]):
        self.problems = problems
        shown = "; ".join(f"line {n}: {what}" if n else what for n, what in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(shown + more)


def decode(raw: bytes) -> str:
    if b"\x00" in raw:
        raise CsvError([(0, "the file holds NUL bytes: not a text CSV file")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return raw.decode("gb18030")
        except UnicodeDecodeError:
            raise CsvError([(0, "the file is neither UTF-8 nor GB 18030 text")]) from None


def _header(lines: list[str]) -> tuple[dict[str, str], int]:
    """Header comments (``# key: value``) and the number of lines they take."""
    meta: dict[str, str] = {}
    n = 0
    for line in lines:
        stripped = line.strip()
        if not stripped.startswith("#") and stripped:
            break
        n += 1
        m = KEY_RE.match(stripped)
        if m and m[1] in HEADER_KEYS and m[2]:
            meta[m[1]] = m[2]
    return meta, n


def _flag(value: str, line: int, column: str, problems: list) -> bool:
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v not in FALSE:
        problems.append((line, f"{column} must be true or false, not {value[:40]!r}"))
    return False


def _code(value: str, line: int, what: str, problems: list) -> str | None:
    value = value.strip()
    if not value:
        problems.append((line, f"{what} is empty"))
        return None
    if len(value) > MAX_CODE or not CODE_RE.match(value) or not value.isprintable():
        problems.append((line, f"{what} {value[:40]!r} is not a valid code (printable, at most "
                               f"{MAX_CODE} characters, single spaces inside only)"))
        return None
    return value


def parse(raw: bytes | str, **options: str | None) -> dict:
    """The CodeSystem or ConceptMap a CSV file describes (a dict, not yet validated)."""
    textual = decode(raw) if isinstance(raw, bytes) else raw
    lines = textual.splitlines(keepends=True)
    meta, skip = _header(lines)
    meta.update({k: v for k, v in options.items() if v})
    csv.field_size_limit(MAX_FIELD)
    reader = csv.reader(io.StringIO("".join(lines[skip:]), newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise CsvError([(skip + 1, "no header row of column names")])
        columns = [h.strip() for h in header]
        kind = meta.get("kind") or ("ConceptMap" if "source_code" in columns else "CodeSystem")
        if kind not in ("CodeSystem", "ConceptMap"):
            raise CsvError([(0, f"kind must be CodeSystem or ConceptMap, not {kind[:40]!r}")])
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise CsvError([(skip + 1, f"column {dupes[0][:40]!r} is given twice")])
        body = [(skip + reader.line_num, row) for row in reader]  # the row's (last) line
    except csv.Error as e:
        raise CsvError([(skip + reader.line_num, f"not CSV: {e}")]) from None
    if not meta.get("url"):
        raise CsvError([(0, "the url is missing: give it as a '# url: …' header comment or "
                            "with --url")])
    if kind == "CodeSystem":
        return _code_system(columns, body, meta)
    return _concept_map(columns, body, meta)


def _base(kind: str, meta: dict[str, str]) -> dict[str, Any]:
    d: dict[str, Any] = {"resourceType": kind}
    if meta.get("id"):
        d["id"] = meta["id"]
    d["url"] = meta["url"]
    for key in ("version", "name", "title"):
        if meta.get(key):
            d[key] = meta[key]
    d["status"] = meta.get("status") or "active"
    for key in ("publisher", "description"):
        if meta.get(key):
            d[key] = meta[key]
    return d


def _cells(columns: list[str], row: list[str], line: int, problems: list) -> dict[str, str] | None:
    if not any(c.strip() for c in row):
        return None  # a blank line
    if len(row) > len(columns):
        problems.append((line, f"{len(row)} cells but {len(columns)} columns"))
        return None
    return dict(zip(columns, row + [""] * (len(columns) - len(row))))


def _code_system(columns: list[str], body: list[tuple[int, list[str]]],
                 meta: dict[str, str]) -> dict:
    problems: list[tuple[int, str]] = []
    if "code" not in columns:
        raise CsvError([(0, "a code system needs a code column")])
    designations, props = {}, []
    for col in columns:
        if col in CS_COLUMNS or not col:
            continue
        if col.startswith("display@") and LANG_RE.match(col[8:]):
            designations[col] = col[8:]
        elif PROPERTY_RE.match(col):
            props.append(col)
        else:
            problems.append((0, f"column {col[:40]!r} is not a property name (letters, digits, "
                                "_-. and at most 64 characters)"))
    concepts: list[dict] = []
    where: dict[str, int] = {}
    parents: dict[str, list[tuple[str, int]]] = {}
    for line, row in body:
        if len(problems) >= MAX_PROBLEMS:
            break
        cells = _cells(columns, row, line, problems)
        if cells is None:
            continue
        code = _code(cells["code"], line, "code", problems)
        if code is None:
            continue
        if code in where:
            problems.append((line, f"code {code[:40]!r} is listed again (first on line "
                                   f"{where[code]})"))
            continue
        where[code] = line
        c: dict[str, Any] = {"code": code}
        display = cells.get("display", "").strip()
        if display:
            c["display"] = display
        if cells.get("definition", "").strip():
            c["definition"] = cells["definition"].strip()
        found = [{"language": lang, "value": cells[col].strip()}
                 for col, lang in designations.items() if cells[col].strip()]
        if found:
            c["designation"] = found
        properties: list[dict] = []
        for p in (cells.get("parent") or "").split("|"):
            if p.strip():
                pc = _code(p, line, "parent", problems)
                if pc:
                    parents.setdefault(code, []).append((pc, line))
                    properties.append({"code": "parent", "valueCode": pc})
        status = cells.get("status", "").strip()
        if status:
            if status not in STATUSES:
                problems.append((line, f"status must be one of {', '.join(STATUSES)}"))
            else:
                properties.append({"code": "status", "valueCode": status})
        if _flag(cells.get("inactive", ""), line, "inactive", problems):
            properties.append({"code": "inactive", "valueBoolean": True})
        if _flag(cells.get("abstract", ""), line, "abstract", problems):
            properties.append({"code": "notSelectable", "valueBoolean": True})
        for p in props:
            if cells[p].strip():
                properties.append({"code": p, "valueString": cells[p].strip()})
        if properties:
            c["property"] = properties
        concepts.append(c)
    for code, ups in parents.items():
        for up, line in ups:
            if up not in where:
                problems.append((line, f"parent {up[:40]!r} of {code[:40]!r} is not a code of "
                                       "the file"))
    if not problems:
        problems += _cycles(parents, where)
    if not concepts and not problems:
        problems.append((0, "no concepts"))
    if problems:
        raise CsvError(problems[:MAX_PROBLEMS])
    d = _base("CodeSystem", meta)
    if meta.get("oid"):
        oid = meta["oid"].removeprefix("urn:oid:")
        if not R.OID_RE.match(oid):
            raise CsvError([(0, f"oid {oid[:60]!r} is not an OID")])
        d["identifier"] = [{"system": R.RFC3986, "value": f"urn:oid:{oid}"}]
    d["caseSensitive"] = meta.get("caseSensitive", "true").lower() != "false"
    if parents:
        d["hierarchyMeaning"] = meta.get("hierarchyMeaning") or "is-a"
    d["content"] = "complete"
    d["count"] = len(concepts)
    declared = [("parent", R.PARENT_URI, "code"),
                ("status", "http://hl7.org/fhir/concept-properties#status", "code"),
                ("inactive", "http://hl7.org/fhir/concept-properties#inactive", "boolean"),
                ("notSelectable", "http://hl7.org/fhir/concept-properties#notSelectable",
                 "boolean")]
    used = {p["code"] for c in concepts for p in c.get("property", ())}
    d["property"] = [{"code": code, "uri": uri, "type": t} for code, uri, t in declared
                     if code in used] + [{"code": p, "type": "string"} for p in props
                                         if p in used]
    if not d["property"]:
        del d["property"]
    d["concept"] = concepts
    return d


def _cycles(parents: dict[str, list[tuple[str, int]]], where: dict[str, int]) -> list:
    """A problem for the first parent loop found (code -> parent -> … -> code), at the line of
    the code whose parent closes it."""
    loop = parent_loop({code: [up for up, _ in ups] for code, ups in parents.items()})
    if not loop:
        return []
    return [(where[loop[-2]], "the parents loop: " + " -> ".join(x[:40] for x in loop[:8]))]


def _concept_map(columns: list[str], body: list[tuple[int, list[str]]],
                 meta: dict[str, str]) -> dict:
    problems: list[tuple[int, str]] = []
    for needed in ("source_code",):
        if needed not in columns:
            raise CsvError([(0, f"a concept map needs a {needed} column")])
    for side in ("source_system", "target_system"):
        if side not in columns and not meta.get(side):
            raise CsvError([(0, f"{side} is missing: give a column or a '# {side}: …' header "
                                "comment")])
    unknown = [c for c in columns if c and c not in CM_COLUMNS]
    if unknown:
        raise CsvError([(0, f"unknown column {unknown[0][:40]!r}; a concept map has "
                            + ", ".join(sorted(CM_COLUMNS)))])
    default = meta.get("equivalence") or None
    if default is not None and default not in EQUIVALENCES:
        raise CsvError([(0, f"equivalence {default[:40]!r} must be one of "
                            + ", ".join(EQUIVALENCES))])
    if "equivalence" not in columns and default is None:
        # a mapping without one says nothing about meaning: never read as "equivalent"
        raise CsvError([(0, "a concept map needs an equivalence column (or, for every row, a "
                            "'# equivalence: …' header comment or --equivalence): a target "
                            "without one says nothing about what it means")])
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for line, row in body:
        if len(problems) >= MAX_PROBLEMS:
            break
        cells = _cells(columns, row, line, problems)
        if cells is None:
            continue
        ssys = (cells.get("source_system") or "").strip() or meta.get("source_system", "")
        tsys = (cells.get("target_system") or "").strip() or meta.get("target_system", "")
        if not tsys and not (cells.get("target_code") or "").strip():
            # an unmatched row may leave the target system out: that of its source's group
            tsys = next((t for s, t in groups if s == R.oid_uri(ssys)), "")
        if not ssys or not tsys or len(ssys) > 1024 or len(tsys) > 1024 or " " in ssys + tsys:
            problems.append((line, "source_system and target_system must be URIs"))
            continue
        scode = _code(cells["source_code"], line, "source_code", problems)
        if scode is None:
            continue
        equivalence = (cells.get("equivalence") or "").strip() or None
        tcode_raw = (cells.get("target_code") or "").strip()
        tcode = _code(tcode_raw, line, "target_code", problems) if tcode_raw else None
        if tcode_raw and tcode is None:
            continue
        if equivalence is None and tcode is None:
            equivalence = "unmatched"
        equivalence = equivalence or default
        if equivalence is None:
            problems.append((line, f"{scode[:40]} -> {(tcode or '')[:40]} has no equivalence "
                                   "(its equivalence cell is empty and the file gives none)"))
            continue
        if equivalence not in EQUIVALENCES:
            problems.append((line, f"equivalence must be one of {', '.join(EQUIVALENCES)}"))
            continue
        if tcode is None and equivalence != "unmatched":
            problems.append((line, "a row without target_code is unmatched"))
            continue
        comment = (cells.get("comment") or "").strip()
        if equivalence in ("narrower", "inexact") and not comment:
            article = "an" if equivalence == "inexact" else "a"
            problems.append((line, f"{article} {equivalence} mapping needs a comment saying how the "
                                   "target differs (FHIR R4 ConceptMap invariant cmd-1)"))
            continue
        element = groups.setdefault((R.oid_uri(ssys), R.oid_uri(tsys)), {}).setdefault(
            scode, {"code": scode})
        if (cells.get("source_display") or "").strip():
            element["display"] = cells["source_display"].strip()
        # no target code: a target that says so (R4's unmatched), which $translate reports
        target: dict[str, str] = {"code": tcode} if tcode is not None else {}
        if tcode is not None and (cells.get("target_display") or "").strip():
            target["display"] = cells["target_display"].strip()
        target["equivalence"] = equivalence
        if comment:
            target["comment"] = comment
        if target in element.setdefault("target", []):
            problems.append((line, f"{scode[:40]} -> {(tcode or 'unmatched')[:40]} is listed "
                                   "again"))
            continue
        element["target"].append(target)
    if not groups and not problems:
        problems.append((0, "no mappings"))
    if problems:
        raise CsvError(problems[:MAX_PROBLEMS])
    d = _base("ConceptMap", meta)
    if meta.get("source"):
        d["sourceCanonical"] = meta["source"]
    if meta.get("target"):
        d["targetCanonical"] = meta["target"]
    d["group"] = [{"source": s, "target": t, "element": list(elements.values())}
                  for (s, t), elements in groups.items()]
    return d


def write_code_system(concepts: list[dict], meta: dict[str, str]) -> str:
    """A CSV file of ``concepts`` (code, display, parents) with header comments: the inverse of
    ``parse`` for the columns it writes (used by tests and the benchmark)."""
    buf = io.StringIO()
    for key, value in meta.items():
        buf.write(f"# {key}: {value}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["code", "display", "parent", "inactive"])
    for c in concepts:
        w.writerow([c["code"], c.get("display", ""), "|".join(c.get("parents", ())),
                    "true" if c.get("inactive") else ""])
    return buf.getvalue()
