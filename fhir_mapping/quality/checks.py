"""Check kinds: the code behind ``check: {kind: ...}`` in the rule files. Each is a generator
``(ctx, rule) -> findings``; its parameters come from the rule's ``check`` mapping."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

from lxml import etree

from fhir_mapping import source_order
from terminology import resident_id

from .model import NS, XSI, Ctx, QualityFinding, Rule, xpath_of

Check = Callable[[Ctx, Rule], Iterator[QualityFinding]]


def _attr(el: Any, name: str) -> str:
    v = el.get(name) if isinstance(el, etree._Element) else None
    return v.strip() if isinstance(v, str) else ""


def _elements(nodes: list[Any]) -> Iterator[etree._Element]:
    for n in nodes:
        if isinstance(n, etree._Element) and isinstance(n.tag, str):
            yield n


# -- required --------------------------------------------------------------------------------------

def required(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    c = rule.check
    res = ctx.rules.xp(c["xpath"])(ctx.root)
    present = bool(res) if not isinstance(res, (float, int)) else res != 0
    if not present:
        yield ctx.finding(rule, f"required {c.get('label', 'element')} is missing or empty",
                          location=c.get("expected_at") or c["xpath"])


# -- document type ---------------------------------------------------------------------------------

def _loinc_ok(code: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{1,7}-[0-9]", code)) and loinc_check_digit(code[:-2]) == code[-1]


def document_type(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    part = rule.check.get("part", "template")
    rs = ctx.rules
    if part == "template":
        if ctx.doc_type is None:
            shown = ", ".join(ctx.templates) or "none"
            yield ctx.finding(rule, f"no known document templateId (found: {shown}); known: WS/T 500 "
                                    "2.16.156.10011.2.1.1.21-.73, WS/T 483 .1-.20, C-CDA 2.16.840.1.113883.10.20.22.1.*",
                              location="/hl7:ClinicalDocument/hl7:templateId")
        return
    codes = ctx.select("/hl7:ClinicalDocument/hl7:code")
    el = codes[0] if codes else None
    code, system = _attr(el, "code"), _attr(el, "codeSystem")
    if el is None or not code:
        yield ctx.finding(rule, "the document code (/ClinicalDocument/code/@code) is missing",
                          el, "/hl7:ClinicalDocument/hl7:code/@code" if el is None else None)
        return
    wst = rs.doc_code_systems.get("wst", "2.16.156.10011.2.4")
    loinc = rs.doc_code_systems.get("loinc", "2.16.840.1.113883.6.1")
    known_wst = {t["code"]: t for t in rs.templates.values() if t.get("code")}
    dt = ctx.doc_type
    if dt is None:
        if not ((system == wst and code in known_wst) or (system == loinc and _loinc_ok(code))):
            yield ctx.finding(rule, f"document code {code!r} in {system or 'no code system'} is not a known "
                                    "document type code", el)
        return
    want_system = rs.doc_code_systems.get(dt.get("system", ""), "")
    if system != want_system:
        yield ctx.finding(rule, f"document code system is {system or 'missing'}, the template "
                                f"{dt['templateId']} ({dt['name']}) requires {want_system}", el)
        return
    if dt.get("code"):
        if code != dt["code"]:
            other = known_wst.get(code)
            hint = f" (that is the code of {other['name']})" if other else ""
            yield ctx.finding(rule, f"document code {code!r}{hint} does not match the template "
                                    f"{dt['templateId']} ({dt['name']}), which requires {dt['code']!r}", el)
        return
    listed = [str(x) for x in dt.get("codes") or []]
    if code in listed or (dt.get("any_loinc") and _loinc_ok(code)):
        return
    yield ctx.finding(rule, f"document code {code!r} is not a valid code for {dt['name']}", el)


# -- codes -----------------------------------------------------------------------------------------

def value_set(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    allowed = {str(k): [str(x) for x in v] for k, v in (rule.check.get("allowed") or {}).items()}
    for el in _elements(ctx.select(rule.check["select"])):
        code, system = _attr(el, "code"), _attr(el, "codeSystem")
        name = etree.QName(el).localname
        if not code:
            yield ctx.finding(rule, f"{name} has no code", el)
        elif not system:
            yield ctx.finding(rule, f"{name} code {code!r} has no codeSystem (expected one of "
                                    f"{', '.join(allowed)})", el)
        elif system not in allowed:
            yield ctx.finding(rule, f"{name} uses code system {system!r}, not one of {', '.join(allowed)}", el)
        elif code not in allowed[system]:
            yield ctx.finding(rule, f"{name} code {code!r} is not in the value set of {system} "
                                    f"({', '.join(allowed[system])})", el)


def _known_patterns(ctx: Ctx) -> list[re.Pattern[str]]:
    cache = ctx.rules.__dict__.setdefault("_cs_patterns", None)
    if cache is None:
        cache = [re.compile(p["pattern"]) for p in ctx.rules.code_systems.get("known_patterns") or []]
        ctx.rules.__dict__["_cs_patterns"] = cache
    return cache


def code_system_known(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    known = {str(k) for k in (ctx.rules.code_systems.get("known") or {})}
    not_defined = {str(k): v for k, v in ((ctx.rules.code_systems.get("diagnosis") or {})
                                          .get("not_defined") or {}).items()}
    patterns = _known_patterns(ctx)
    for el in _elements(ctx.select(rule.check["select"])):
        raw = el.get("codeSystem") or ""
        cs = raw.strip()
        if cs in known or any(p.match(cs) for p in patterns):
            if cs != raw:
                yield ctx.finding(rule, f"codeSystem {raw!r} has surrounding whitespace", _attr_node(el, "codeSystem"))
            continue
        why = f": {not_defined[cs]}" if cs in not_defined else ""
        yield ctx.finding(rule, f"code system {raw!r} is not a known code-system OID{why}",
                          _attr_node(el, "codeSystem"))


def _attr_node(el: etree._Element, name: str) -> Any:
    found = el.xpath(f"@{name}")
    return found[0] if found else el


def diagnosis_code_system(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    diag = ctx.rules.code_systems.get("diagnosis") or {}
    defined = {str(k): v for k, v in (diag.get("defined") or {}).items()}
    not_defined = {str(k): v for k, v in (diag.get("not_defined") or {}).items()}
    for el in _elements(ctx.select(rule.check["select"])):
        if el.get("nullFlavor"):
            continue
        cs = _attr(el, "codeSystem")
        if cs in defined:
            continue
        if not cs:
            yield ctx.finding(rule, "diagnosis code has no codeSystem", el)
        elif cs in not_defined:
            yield ctx.finding(rule, f"diagnosis code system {cs} is not defined by the standards for "
                                    f"diagnoses: {not_defined[cs]}", _attr_node(el, "codeSystem"))
        else:
            yield ctx.finding(rule, f"diagnosis code system {cs} is unknown (defined: "
                                    f"{', '.join(defined)})", _attr_node(el, "codeSystem"))


def loinc_check_digit(digits: str) -> str:
    """LOINC's mod-10 check digit (the Luhn scheme) of the number part of a LOINC code."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return str((10 - total % 10) % 10)


def code_format(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    c = rule.check
    pattern = re.compile(c["pattern"])
    what = c.get("what", "code")
    child = c.get("child")
    for el in _elements(ctx.select(c["select"])):
        target = el
        if child:
            kids = el.findall(f"{{{NS['hl7']}}}{child}")
            if not kids:
                yield ctx.finding(rule, f"{etree.QName(el).localname} has no {child} ({what} expected)", el)
                continue
            target = kids[0]
        if target.get("nullFlavor") and not target.get("code"):
            continue
        code, system = _attr(target, "code"), _attr(target, "codeSystem")
        if not code and not system:
            yield ctx.finding(rule, f"{what} is empty (no code, no codeSystem)", target)
            continue
        if c.get("system") and system != c["system"]:
            yield ctx.finding(rule, f"{what} must be in code system {c['system']}, found "
                                    f"{system or 'no codeSystem'} (code {code!r})", target)
            continue
        if not pattern.match(code):
            yield ctx.finding(rule, f"{what} {code!r} does not have the expected format", target)
        elif c.get("check_digit") == "loinc" and loinc_check_digit(code.split("-")[0]) != code[-1]:
            yield ctx.finding(rule, f"{what} {code!r} has a wrong check digit (expected "
                                    f"{loinc_check_digit(code.split('-')[0])})", target)


# -- resident ID numbers ---------------------------------------------------------------------------

def resident_id_problem(value: str, as_of: date | None = None) -> str | None:
    """Why ``value`` is not a valid GB 11643 number, or None when it is."""
    s = value.strip()
    if resident_id.is_valid(s, as_of):
        return None
    if resident_id.is_placeholder(s):
        return "is a placeholder, not an identity number"
    if len(s) == 15 and s.isascii() and s.isdigit():
        return "is an old 15-digit number: upgrade it to 18 digits (GB 11643-1999)"
    if len(s) != 18 or not (s.isascii() and s[:17].isdigit()) or s[17] not in "0123456789Xx":
        return f"is not 17 digits and a check character ({len(s)} characters)"
    born = resident_id.birth_date(s)
    if born is None or born.year < 1880 or (as_of is not None and born > as_of):
        return f"encodes no plausible birth date ({s[6:14]})"
    problems = []
    if not resident_id.is_valid(s[:17] + resident_id.check_digit(s[:17]), as_of):
        problems.append(f"has region code {s[:6]}, not a GB/T 2260 division (pseudonymised numbers use 999999)")
    if resident_id.check_digit(s[:17]) != s[17].upper():
        problems.append(f"fails the GB 11643 check (check character {s[17]!r}, expected "
                        f"{resident_id.check_digit(s[:17])!r})")
    return "; ".join(problems) or "is not a valid GB 11643 number"


def _as_of(ctx: Ctx) -> date | None:
    return ctx.now.date() if ctx.now is not None else None


def _masked(v: str) -> str:
    v = v.strip()
    return v[:6] + "*" * max(0, len(v) - 10) + v[-4:] if len(v) > 10 else "*" * len(v)


def resident_id_check(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    for el in _elements(ctx.select(rule.check["select"])):
        value = el.get("extension") or ""
        why = resident_id_problem(value, _as_of(ctx))
        if why:
            yield ctx.finding(rule, f"resident ID number {_masked(value)} {why}", _attr_node(el, "extension"))


def resident_id_consistency(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    c = rule.check
    male, female = set(map(str, c.get("male") or ["1"])), set(map(str, c.get("female") or ["2"]))
    for el in _elements(ctx.select(c["select"])):
        value = (el.get("extension") or "").strip()
        if not resident_id.is_valid(value, _as_of(ctx)):
            continue
        sex_els = list(_elements(ctx.select(c["sex"], el))) if c.get("sex") else []
        if sex_els:
            code = _attr(sex_els[0], "code")
            stated = "male" if code in male else "female" if code in female else None
            encoded = resident_id.sex(value)
            if stated and encoded and stated != encoded:
                yield ctx.finding(rule, f"sex code {code!r} ({stated}) contradicts the resident ID number, "
                                        f"which encodes {encoded}", sex_els[0])
        births = ctx.select(c["birth"], el) if c.get("birth") else []
        if births:
            stated_b = str(births[0]).strip()
            born = resident_id.birth_date(value)
            if born is not None and re.fullmatch(r"[0-9]{4,}.*", stated_b):
                enc = born.strftime("%Y%m%d")
                digits = re.match(r"[0-9]*", stated_b)
                assert digits is not None  # [0-9]* matches any text
                n = min(8, len(digits.group(0)))
                if stated_b[:n] != enc[:n]:
                    yield ctx.finding(rule, f"birth time {stated_b[:8]} contradicts the birth date the "
                                            f"resident ID number encodes ({enc})", births[0])


# -- dates -----------------------------------------------------------------------------------------

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def parse_ts(value: str) -> tuple[tuple[int, ...], int, int | None] | None:
    """``(components, n_components, offset_minutes | None)`` of an HL7 TS, or None if malformed.
    Components are (year, month, day, hour, minute, second) as far as given; each must be real."""
    m = _TS.match(value.strip())
    if not m:
        return None
    parts = [int(g) for g in m.groups()[:6] if g is not None]
    # a component can only be given when all coarser ones are (the regex allows that already)
    full = parts + [1, 1, 0, 0, 0][len(parts) - 1:]
    try:
        datetime(full[0], full[1], full[2], full[3], full[4], full[5])
    except ValueError:
        return None
    off = None
    if m.group(8):
        sign = -1 if m.group(8)[0] == "-" else 1
        hh, mm = int(m.group(8)[1:3]), int(m.group(8)[3:5])
        if hh > 14 or mm > 59:
            return None
        off = sign * (hh * 60 + mm)
    return tuple(parts), len(parts), off


def datetime_format(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    for node in ctx.select(rule.check["select"]):
        value = str(node)
        if parse_ts(value) is None:
            yield ctx.finding(rule, f"time value {value!r} is not an HL7 TS (YYYYMMDD[HHMM[SS]][+ZZZZ]) "
                                    "with a real date", node)


def _offset(text: str) -> int:
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text.strip())
    if not m:
        return 8 * 60
    return (-1 if m.group(1) == "-" else 1) * (int(m.group(2)) * 60 + int(m.group(3)))


def _key(ts: tuple[tuple[int, ...], int, int | None], default_off: int, precision: int) -> tuple:
    parts, n, off = ts
    if precision >= 4 and n >= 4:  # both carry a time: compare instants
        full = list(parts) + [0] * (6 - n)
        o = default_off if off is None else off
        return (datetime(full[0], full[1], full[2], full[3], full[4], full[5],
                         tzinfo=timezone(timedelta(minutes=o))).astimezone(timezone.utc),)
    return tuple(parts[:min(precision, 3)])


def date_order(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    c = rule.check
    default_off = _offset(str(c.get("default_offset", "+08:00")))
    points: list[tuple[str, Any, tuple]] = []
    ts: tuple[tuple[int, ...], int, int | None] | None
    for p in c.get("points") or []:
        if p.get("now"):
            if ctx.now is None:
                continue
            now = ctx.now if ctx.now.tzinfo else ctx.now.replace(tzinfo=timezone(timedelta(minutes=default_off)))
            utc_offset = now.utcoffset()
            assert utc_offset is not None  # aware: it has a tzinfo
            off = int(utc_offset.total_seconds() // 60)
            ts = ((now.year, now.month, now.day, now.hour, now.minute, now.second), 6, off)
            points.append((p.get("name", "now"), None, ts))
            continue
        found = ctx.select(p["xpath"])
        for node in found:
            ts = parse_ts(str(node))
            if ts is not None:
                points.append((p.get("name", p["xpath"]), node, ts))
                break
    for (n1, node1, t1), (n2, node2, t2) in zip(points, points[1:]):
        prec = min(t1[1], t2[1])
        if _key(t1, default_off, prec) > _key(t2, default_off, prec):
            yield ctx.finding(rule, f"{n1} {_fmt(t1)} is after {n2} {_fmt(t2)}",
                              node2 if node2 is not None else node1)


def _fmt(ts: tuple) -> str:
    parts = ts[0]
    return "".join(f"{v:04d}" if i == 0 else f"{v:02d}" for i, v in enumerate(parts))


# -- quantities ------------------------------------------------------------------------------------

def pq_unit(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    c = rule.check
    types = set(c.get("types") or ["PQ", "IVL_PQ"])
    names = set(c.get("elements") or [])
    seen: set[etree._Element] = set()
    for el in _elements(ctx.select(c["select"])):
        if el in seen:
            continue
        seen.add(el)
        xt = (el.get(f"{{{XSI}}}type") or "").strip().rpartition(":")[2]
        local = etree.QName(el).localname
        if xt not in types and not (local in names and not xt):
            continue
        if xt in ("PQ",) or xt == "" or xt == "IVL_PQ":
            cands = [el] + [k for k in el if isinstance(k.tag, str)
                            and etree.QName(k).localname in ("low", "high", "center")]
        else:
            cands = [el]
        for q in cands:
            if _attr(q, "value") and not _attr(q, "unit") and not q.get("nullFlavor"):
                yield ctx.finding(rule, f"quantity {etree.QName(q).localname} value {_attr(q, 'value')!r} "
                                        "has no unit", q)


# -- document version ------------------------------------------------------------------------------

def version_number(ctx: Ctx, rule: Rule) -> Iterator[QualityFinding]:
    """A versionNumber's value, when one is given, is a version the hub can order the set by
    (``fhir_mapping.source_order.version_number``); an element without a value says none."""
    for el in _elements(ctx.select(rule.check["select"])):
        value = el.get("value")
        if value is None or not value.strip():
            continue
        why = source_order.version_problem(value)
        if why:
            yield ctx.finding(rule, f"versionNumber {why}", _attr_node(el, "value"))


KINDS: dict[str, Check | None] = {
    "well_formed": None,  # handled by the engine (the parse)
    "xml_safe": None,
    "root": None,
    "required": required,
    "document_type": document_type,
    "value_set": value_set,
    "code_system_known": code_system_known,
    "diagnosis_code_system": diagnosis_code_system,
    "code_format": code_format,
    "resident_id": resident_id_check,
    "resident_id_consistency": resident_id_consistency,
    "datetime_format": datetime_format,
    "date_order": date_order,
    "pq_unit": pq_unit,
    "version_number": version_number,
}

__all__ = ["KINDS", "loinc_check_digit", "parse_ts", "resident_id_problem", "xpath_of"]
