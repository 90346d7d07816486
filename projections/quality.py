"""The data-quality projection: findings of document quality reports, counted for operators.

Every checked clinical document leaves a quality report in the event log: an ``OperationOutcome``
tagged ``document-quality`` (``fhir_mapping.documents.quality_report``) whose extensions say which
institution sent it, the document type, the decision and when it was checked, and whose issues are
the findings, each coded with its rule id. This read model keeps, per report, one row
(``q_report``) and one row per finding (``q_finding``) in ``$HUB_DATA_DIR/quality.sqlite``; a new
version of a report replaces its rows, a delete removes them, an ``OperationOutcome`` without the
tag has none. Rows and the tracking position are written in one transaction (eventsourcing's SQLite
tracking recorder), so the counts are exactly the log up to the position; ``reset`` and a replay
give the same rows again.

What counts:

- a *finding* is an issue coded in the quality-rule system (``details.coding``), counted under
  its rule id; an issue of severity fatal, error or warning without that coding (a document the
  mapper could not map) counts under the rule ``unspecified``; the one informational issue of a
  clean ("accept") report has no coding and is no finding;
- a *document* is a report (one per document and institution: a re-check updates the same report);
- the *day* is the civil day in the platform's zone (``HUB_TIMEZONE``, default +08:00, China
  Standard Time, a fixed offset), of the report's ``quality-checked`` time. The instant is
  stored in UTC and the day computed when counting, so another zone needs no rebuild. A report
  without a readable check time counts on the day its event was stored.

``counts`` groups by any of institution, document_type, rule, day, decision, severity. Grouped by
rule (or severity), documents without findings form the group whose rule is ``None``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from hub.core.events import KIND_OF_TOPIC
from hub.core.fhirtime import local_offset, local_zone, parse_range
from projections.errors import QueryError
from projections.sqlite_model import SQLiteReadModel, newest

NAME = "quality"
HUB_TAGS = "https://fhir-region-hub.example/CodeSystem/hub-tags"
QUALITY_TAG_CODE = "document-quality"
EXT = "https://fhir-region-hub.example/StructureDefinition/"
RULE_SYSTEM = "https://fhir-region-hub.example/CodeSystem/quality-rule"
UNCODED_RULE = "unspecified"  # the rule of a problem issue that names none
_STREAM_PREFIX = "OperationOutcome/"

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS q_meta (key TEXT PRIMARY KEY, value)",
    # one row per current report; checked_us: the check time in µs since the epoch (UTC)
    "CREATE TABLE IF NOT EXISTS q_report (rid TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "institution TEXT NOT NULL, document_type TEXT NOT NULL, decision TEXT NOT NULL, "
    "checked TEXT, checked_us INTEGER NOT NULL, document_id TEXT, document_ref TEXT)",
    "CREATE TABLE IF NOT EXISTS q_finding (rid TEXT NOT NULL, rule TEXT NOT NULL, "
    "severity TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS q_finding_rid ON q_finding (rid, rule)",
    "CREATE INDEX IF NOT EXISTS q_report_checked ON q_report (checked_us)",
    "CREATE INDEX IF NOT EXISTS q_report_institution ON q_report (institution, checked_us)",
    "INSERT OR IGNORE INTO q_meta (key, value) VALUES ('writer', 0)",
]

DECISIONS = ("accept", "accept-with-warnings", "reject")
SEVERITIES = ("fatal", "error", "warning", "information")
GROUPS = {  # group name -> SQL expression ("day": that of the platform's zone, see _group_sql)
    "institution": "r.institution",
    "document_type": "r.document_type",
    "rule": "f.rule",
    "day": "",
    "decision": "r.decision",
    "severity": "f.severity",
}
DEFAULT_GROUP = ("institution", "document_type", "rule", "day")
# the counted columns of every row, in order
COUNT_COLUMNS = ("documents", "accepted", "accepted_with_warnings", "rejected", "findings",
                 "fatal", "errors", "warnings", "information")
_COUNT_SQL = (
    "COUNT(DISTINCT r.rid)",
    "COUNT(DISTINCT CASE WHEN r.decision = 'accept' THEN r.rid END)",
    "COUNT(DISTINCT CASE WHEN r.decision = 'accept-with-warnings' THEN r.rid END)",
    "COUNT(DISTINCT CASE WHEN r.decision = 'reject' THEN r.rid END)",
    "COUNT(f.rid)",
    "COUNT(CASE WHEN f.severity = 'fatal' THEN 1 END)",
    "COUNT(CASE WHEN f.severity = 'error' THEN 1 END)",
    "COUNT(CASE WHEN f.severity = 'warning' THEN 1 END)",
    "COUNT(CASE WHEN f.severity = 'information' THEN 1 END)",
)
MAX_TEXT = 256  # longest filter value accepted (institution codes and OIDs are far shorter)


def _group_sql(name: str) -> str:
    if name != "day":
        return GROUPS[name]
    return f"date(r.checked_us / 1000000 + {local_offset()}, 'unixepoch')"


# -- reading a report --------------------------------------------------------------------------


def is_quality_report(d: dict) -> bool:
    meta = d.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("system") == HUB_TAGS and t.get("code") == QUALITY_TAG_CODE
        for t in tags)


def _extensions(d: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in d.get("extension") or ():
        if isinstance(e, dict) and isinstance(e.get("url"), str) and e["url"].startswith(EXT):
            out.setdefault(e["url"][len(EXT):], e)
    return out


def _text(value: Any, default: str = "unknown") -> str:
    return value[:MAX_TEXT * 4] if isinstance(value, str) and value else default


def report_rows(d: dict, fallback_us: int) -> tuple[tuple, list[tuple[str, str]]]:
    """(report columns after rid and version, [(rule, severity)]) of one quality report."""
    ext = _extensions(d)
    institution = _text(ext.get("quality-institution", {}).get("valueString"))
    coding = ext.get("quality-document-type", {}).get("valueCoding")
    doc_type = _text(coding.get("code") if isinstance(coding, dict) else None)
    decision = _text(ext.get("quality-decision", {}).get("valueCode"))
    checked = ext.get("quality-checked", {}).get("valueDateTime")
    checked_us = fallback_us
    if isinstance(checked, str):
        try:
            checked_us = parse_range(checked)[0]  # no zone: HUB_TIMEZONE, as everywhere
        except ValueError:
            checked = None
    else:
        checked = None
    doc_id = ext.get("quality-document-id", {}).get("valueString")
    ref = ext.get("quality-document", {}).get("valueReference")
    doc_ref = ref.get("reference") if isinstance(ref, dict) else None
    findings = []
    for issue in d.get("issue") or ():
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        codings = details.get("coding") if isinstance(details, dict) else None
        severity = _text(issue.get("severity"), "error")
        rule = next((c["code"] for c in codings or () if isinstance(c, dict)
                     and c.get("system") == RULE_SYSTEM and isinstance(c.get("code"), str)
                     and c["code"]), None)
        if rule is not None:
            findings.append((_text(rule), severity))
        elif severity != "information":  # e.g. a document the mapper could not map
            findings.append((UNCODED_RULE, severity))
    return ((institution, doc_type, decision, checked, checked_us,
             doc_id if isinstance(doc_id, str) else None,
             doc_ref if isinstance(doc_ref, str) else None), findings)


# -- time filters ------------------------------------------------------------------------------

_DATE = re.compile(r"^([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(dt: datetime) -> int:
    d = dt - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def period(value: Any, name: str = "since") -> tuple[int, int]:
    """[start, end) in µs (UTC) of a ``since``/``until`` value.

    A date (``2026``, ``2026-11``, ``2026-11-22``, or a ``date``) is that period in the
    platform's zone (``HUB_TIMEZONE``); a date-time must carry its offset (``2026-11-22T08:00:00+08:00``, ``…Z``) and
    stands for that instant (its precision's period). Anything else is a ``QueryError``.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise QueryError(f"{name}: a date-time needs a time zone")
        start = _us(value)
        return start, start + 1
    if hasattr(value, "year") and hasattr(value, "isoformat"):  # a date
        value = value.isoformat()
    if not isinstance(value, str) or not value.strip() or len(value) > 40:
        raise QueryError(f"{name} must be a date (YYYY, YYYY-MM, YYYY-MM-DD) or a date-time "
                         "with its offset")
    value = value.strip()
    m = _DATE.match(value)
    try:
        if m:
            y, mo, d = int(m[1]), int(m[2] or 1), int(m[3] or 1)
            zone = local_zone()
            begin = datetime(y, mo, d, tzinfo=zone)
            if m[3]:
                end = begin + timedelta(days=1)
            elif m[2]:
                end = begin.replace(year=y + (mo == 12), month=mo % 12 + 1)
            else:
                end = begin.replace(year=y + 1) if y < 9999 else datetime.max.replace(
                    tzinfo=zone)
            return _us(begin), _us(end)
        if not value.isascii():
            raise ValueError(value)
        if "T" in value and not re.search(r"(Z|[+-][0-9]{2}:[0-9]{2})$", value):
            raise QueryError(f"{name}: a date-time needs its offset (+08:00 or Z): {value!r}")
        return parse_range(value)
    except (ValueError, OverflowError) as e:
        if isinstance(e, QueryError):
            raise
        raise QueryError(f"{name}: {value!r} is not a date (YYYY, YYYY-MM, YYYY-MM-DD) or a "
                         "date-time with its offset") from None


def parse_group(value: Iterable[str] | str | None) -> tuple[str, ...]:
    """Group names from a comma list or a sequence (each may hold commas); unknown names refused."""
    if value is None:
        return DEFAULT_GROUP
    parts = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise QueryError("group must be a comma-separated list of names")
        for name in part.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in GROUPS:
                raise QueryError(f"unknown group {name[:40]!r}; use any of {', '.join(GROUPS)}")
            if name not in out:
                out.append(name)
    return tuple(out)


def _filter_values(value: str | Iterable[str] | None, name: str) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    for v in values:
        if not isinstance(v, str) or not v or len(v) > MAX_TEXT or not v.isprintable():
            raise QueryError(f"{name} must be 1 to {MAX_TEXT} printable characters")
    return values


# -- the read model ----------------------------------------------------------------------------


class QualityProjection(SQLiteReadModel):
    name = NAME
    meta_table = "q_meta"  # its 'writer' row: the write lock
    schema = SCHEMA

    tables = ("q_report", "q_finding")
    types = ("OperationOutcome",)  # the runner hands over only these events

    def apply_new(self, c, notifications: list[Notification]) -> None:
        # only the last event of a report counts
        drop, reports = [], []
        findings: list[tuple[str, str, str]] = []
        for stream, n in newest(notifications,
                                lambda n: n.originator_id.startswith(_STREAM_PREFIX)).items():
            rid = stream[len(_STREAM_PREFIX):]
            drop.append((rid,))
            if KIND_OF_TOPIC.get(n.topic) == "deleted":
                continue
            header, _, body = n.state.partition(b"\n")
            try:
                d = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(d, dict) or not is_quality_report(d):
                continue  # an OperationOutcome of another kind (or one that lost the tag)
            try:
                head = orjson.loads(header)
            except orjson.JSONDecodeError:
                head = {}
            try:
                fallback = parse_range(head["lastUpdated"])[0]
            except (ValueError, KeyError, TypeError):
                fallback = 0
            cols, found_rules = report_rows(d, fallback)
            writer = (head.get("source") or {}).get("institution") if isinstance(head, dict) \
                else None
            if isinstance(writer, str) and writer and writer != "unknown" and writer != cols[0]:
                # a report counts for the institution that wrote it: a connector of one
                # hospital wrote reports "of" another and forged its quality figures
                cols = (writer[:MAX_TEXT * 4], *cols[1:])
            reports.append((rid, n.originator_version, *cols))
            findings.extend((rid, rule, sev) for rule, sev in found_rules)
        if drop:
            c.executemany("DELETE FROM q_finding WHERE rid=?", drop)
            c.executemany("DELETE FROM q_report WHERE rid=?", drop)
        if reports:
            c.executemany("INSERT INTO q_report (rid, version, institution, document_type, "
                          "decision, checked, checked_us, document_id, document_ref) "
                          "VALUES (?,?,?,?,?,?,?,?,?)", reports)
        if findings:
            c.executemany("INSERT INTO q_finding (rid, rule, severity) VALUES (?,?,?)",
                          findings)

    # -- answers -------------------------------------------------------------------------------

    def counts(self, institution: str | Iterable[str] | None = None, since: Any = None,
               until: Any = None, group_by: Iterable[str] | str | None = DEFAULT_GROUP, *,
               document_type: str | Iterable[str] | None = None,
               rule: str | Iterable[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """Documents and findings per group, groups in ascending key order.

        Each row: the group keys, then ``documents`` (reports), ``accepted``,
        ``accepted_with_warnings``, ``rejected`` (reports per decision), ``findings`` and per
        severity ``fatal``, ``errors``, ``warnings``, ``information``. ``institution``,
        ``document_type`` and ``rule`` filter (one value or several, any of them); ``since`` and
        ``until`` bound the check time, both inclusive (see ``period``). With ``rule`` only the
        findings of those rules and the documents having them count. ``group_by=()`` is one row of
        totals. Mistakes raise ``QueryError``.
        """
        group = parse_group(group_by) if group_by is not None else DEFAULT_GROUP
        where: list[str] = []
        args: list[Any] = []
        for col, values in (("r.institution", _filter_values(institution, "institution")),
                            ("r.document_type", _filter_values(document_type, "document_type")),
                            ("f.rule", _filter_values(rule, "rule"))):
            if values:
                where.append(f"{col} IN ({','.join('?' * len(values))})")
                args.extend(values)
        lo = hi = None
        if since is not None:
            lo = period(since, "since")[0]
            where.append("r.checked_us >= ?")
            args.append(lo)
        if until is not None:
            hi = period(until, "until")[1]
            where.append("r.checked_us < ?")
            args.append(hi)
        if lo is not None and hi is not None and lo >= hi:
            raise QueryError("since is after until")
        if limit is not None and limit < 1:
            raise QueryError("limit must be at least 1")
        keys = [f"{_group_sql(g)} AS g_{g}" for g in group]
        sql = (f"SELECT {', '.join([*keys, *_COUNT_SQL])} FROM q_report r "
               "LEFT JOIN q_finding f ON f.rid = r.rid")
        if where:
            sql += " WHERE " + " AND ".join(where)
        if group:
            order = ", ".join(f"g_{g}" for g in group)
            sql += f" GROUP BY {order} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, args)
            rows = c.fetchall()
        out = []
        for row in rows:
            cells = tuple(row)
            d = dict(zip(group, cells[:len(group)]))
            d.update(zip(COUNT_COLUMNS, cells[len(group):]))
            out.append(d)
        return out

    def reports(self, institution: str | None = None, document_type: str | None = None,
                rule: str | None = None, since: Any = None, limit: int = 100
                ) -> list[dict[str, Any]]:
        """The reports behind a count, the newest check first: each one's id, document,
        institution, type, decision, check time and rules found (the console's drill-down)."""
        where: list[str] = ["1=1"]
        args: list[Any] = []
        for col, value in (("r.institution", institution), ("r.document_type", document_type)):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        if rule:
            where.append("r.rid IN (SELECT rid FROM q_finding WHERE rule = ?)")
            args.append(rule)
        if since is not None:
            where.append("r.checked_us >= ?")
            args.append(period(since, "since")[0])
        sql = ("SELECT r.rid, r.document_ref, r.document_id, r.institution, r.document_type, "
               "r.decision, r.checked, (SELECT group_concat(DISTINCT f.rule) FROM q_finding f "
               f"WHERE f.rid = r.rid) FROM q_report r WHERE {' AND '.join(where)} "
               "ORDER BY r.checked_us DESC LIMIT ?")
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, [*args, max(1, min(int(limit), 1000))])
            rows = c.fetchall()
        keys = ("rid", "document_ref", "document_id", "institution", "document_type", "decision",
                "checked")
        return [{**dict(zip(keys, r[:7])), "rules": sorted((r[7] or "").split(",")) if r[7]
                 else []} for r in rows]

    def dump(self) -> dict[str, list[tuple]]:
        """Every row, sorted (to compare a rebuild with an incremental build)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT * FROM q_report")
            reports = sorted(tuple(r) for r in c.fetchall())
            c.execute("SELECT * FROM q_finding")
            findings = sorted(tuple(r) for r in c.fetchall())
        return {"q_report": reports, "q_finding": findings}


# -- output ------------------------------------------------------------------------------------


def columns(group: Sequence[str]) -> list[str]:
    return [*group, *COUNT_COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        # a sender-controlled text that a spreadsheet would run as a formula (CSV injection)
        return "'" + value
    return str(value)


def to_csv(rows: Sequence[dict], group: Sequence[str]) -> str:
    """RFC 4180 CSV with a header line; text cells a spreadsheet would evaluate are quoted out."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    cols = columns(group)
    w.writerow(cols)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in cols])
    return buf.getvalue()


def to_table(rows: Sequence[dict], group: Sequence[str]) -> str:
    """A plain text table for a terminal (counts right-aligned, no rule shown as ``-``)."""
    cols = columns(group)
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in cols] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    numeric = [c in COUNT_COLUMNS for c in cols]

    def line(values: list[str]) -> str:
        return "  ".join((v.rjust(w) if num else v.ljust(w))
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out) + "\n"
