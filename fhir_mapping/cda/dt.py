"""CDA (HL7 v3) data types -> FHIR data types. Pure functions over lxml elements.

Every function returns ``None`` (or an empty list) for absent, null-flavoured or malformed input;
callers decide whether that deserves a finding. Nothing here returns empty strings, dicts or lists
inside a value, so the output is valid FHIR JSON as it stands.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from fhir_mapping import numbers

V3 = "urn:hl7-org:v3"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
NS = {"h": V3}

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")
_INT = re.compile(r"^[+-]?\d{1,15}$")
_CODE_OK = re.compile(r"^[^\s]+( [^\s]+)*$")  # FHIR code: no leading/trailing/double whitespace


def q(name: str) -> str:
    return f"{{{V3}}}{name}"


def local(el: Any) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def child(el, name: str):
    return None if el is None else el.find(q(name))


def children(el, name: str) -> list:
    return [] if el is None else el.findall(q(name))


def path(el, *names: str):
    for n in names:
        if el is None:
            return None
        el = el.find(q(n))
    return el


def clean_str(s: str | None) -> str | None:
    if s is None:
        return None
    s = " ".join(s.split())
    return s or None


def text(el) -> str | None:
    """All text of an element (mixed content flattened), whitespace-normalised."""
    if el is None:
        return None
    return clean_str("".join(el.itertext()))


def attr(el, name: str) -> str | None:
    if el is None:
        return None
    return clean_str(el.get(name))


def code_ok(s: str | None) -> str | None:
    s = clean_str(s)
    return s if s and _CODE_OK.match(s) else None


def system_uri(root: str | None) -> str | None:
    if not root:
        return None
    root = root.strip()
    if _OID.match(root):
        return f"urn:oid:{root}"
    if _UUID.match(root):
        return f"urn:uuid:{root.lower()}"
    return None


def is_oid(root: str | None) -> bool:
    return bool(root and _OID.match(root.strip()))


# ---------------------------------------------------------------- identifiers

def ii(el) -> tuple[str, str] | None:
    """(root, extension) of an II, extension may be ''; None when null-flavoured or without root."""
    if el is None or el.get("nullFlavor"):
        return None
    root = clean_str(el.get("root"))
    if not root:
        return None
    return root, clean_str(el.get("extension")) or ""


def identifier(el, *, root_only_ok: bool, type_text: str | None = None) -> dict | None:
    """FHIR Identifier from an II. A root without extension is an identifier only where the family
    says so (C-CDA: the root is the id itself); WS/T roots without extension are namespaces."""
    key = ii(el)
    if key is None:
        return None
    root, ext = key
    if ext:
        out: dict[str, Any] = {"value": ext}
        sys = system_uri(root)
        if sys:
            out = {"system": sys, "value": ext}
    elif root_only_ok and system_uri(root):
        out = {"system": "urn:ietf:rfc:3986", "value": system_uri(root)}
    else:
        return None
    if type_text:
        out["type"] = {"text": type_text}
    return out


# ---------------------------------------------------------------- codes

def coding(el) -> dict | None:
    if el is None:
        return None
    code = code_ok(el.get("code"))
    if not code:
        return None
    out: dict[str, Any] = {}
    sys = system_uri(el.get("codeSystem"))
    if sys:
        out["system"] = sys
    out["code"] = code
    disp = clean_str(el.get("displayName"))
    if disp:
        out["display"] = disp
    return out


def concept(el, *, fallback_text: str | None = None) -> dict | None:
    """CodeableConcept from a CD/CE/CV: the code, its translations, the original text."""
    if el is None:
        return {"text": fallback_text} if fallback_text else None
    codings = []
    c = coding(el)
    if c:
        codings.append(c)
    for tr in children(el, "translation"):
        t = coding(tr)
        if t and t not in codings:
            codings.append(t)
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = codings
    txt = text(child(el, "originalText"))
    if not txt and not codings:
        txt = clean_str(el.get("displayName")) or text(el)
    if not txt and not codings and fallback_text:
        txt = fallback_text
    if txt:
        out["text"] = txt
    return out or None


# ---------------------------------------------------------------- times

def ts(value: str | None, offset: str | None, *, date_only: bool = False) -> str | None:
    """HL7 TS -> FHIR date/dateTime. Times without offset take ``offset`` (e.g. +08:00) or, when
    that is None, are cut to the date. Invalid values -> None."""
    v = (value or "").strip()
    m = _TS.match(v)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        if mo and d:
            _dt.date(int(y), int(mo), int(d))
        elif mo and not 1 <= int(mo) <= 12:
            return None
        if int(y) < 1:
            return None
        if h is not None:
            _dt.time(int(h), int(mi or 0), int(s or 0))
    except ValueError:
        return None
    date = y + (f"-{mo}" if mo else "") + (f"-{d}" if mo and d else "")
    if date_only or h is None or not (mo and d):
        return date
    if tz:
        sign, hh, mm = tz[0], tz[1:3], tz[3:5]
        if int(hh) > 14 or int(mm) > 59:
            return None
        zone = f"{sign}{hh}:{mm}"
    elif offset:
        zone = offset
    else:
        return date
    out = f"{date}T{h}:{mi or '00'}:{s or '00'}"
    if frac and s:
        out += "." + frac
    return out + zone


def ts_el(el, offset: str | None, *, date_only: bool = False) -> str | None:
    if el is None or el.get("nullFlavor"):
        return None
    return ts(el.get("value"), offset, date_only=date_only)


def period(el, offset: str | None) -> dict | None:
    """IVL_TS (or TS) -> Period."""
    if el is None:
        return None
    out: dict[str, Any] = {}
    v = ts_el(el, offset)
    if v:
        out["start"] = v
    lo = ts_el(child(el, "low"), offset)
    hi = ts_el(child(el, "high"), offset)
    if lo:
        out["start"] = lo
    if hi:
        out["end"] = hi
    if "start" in out and "end" in out and _before(out["end"], out["start"]):
        del out["end"]  # keeps Period valid (per-01); quality control reports the order
    return out or None


def _before(end: str, start: str) -> bool:
    """Whether FHIR time ``end`` is surely before ``start``: as instants when both have a time
    (an end written in another zone is no earlier for its smaller figures), else by their
    dates at the precision both have (a same-day end of ``2024-03-05`` is not before 10:00)."""
    if len(end) > 10 and len(start) > 10:
        try:
            return _dt.datetime.fromisoformat(end) < _dt.datetime.fromisoformat(start)
        except ValueError:
            pass
    n = min(len(end), len(start), 10)
    return end[:n] < start[:n]


def effective(el, offset: str | None) -> tuple[str, Any] | None:
    """('effectiveDateTime', v) or ('effectivePeriod', p) for an effectiveTime."""
    if el is None:
        return None
    v = ts_el(el, offset)
    if v:
        return "DateTime", v
    p = period(el, offset)
    if p:
        if set(p) == {"start"}:
            return "DateTime", p["start"]
        return "Period", p
    return None


# ---------------------------------------------------------------- numbers

def decimal(s: str | None, exponent: bool = False) -> Any:
    """A PQ's or MO's value as a FHIR JSON number keeping its written precision (``1.50`` stays
    ``1.50``: fhir_mapping.numbers; ``exponent``: ``1.5e3`` too, as a REAL or PQ may be written);
    None for what is not a number, or an integer beyond 2^53."""
    v = numbers.decimal(s, exponent)
    if isinstance(v, int) and abs(v) >= 2**53:
        return None
    return v


def integer(s: str | None) -> int | None:
    s = (s or "").strip()
    if not _INT.match(s):
        return None
    n = int(s)
    return n if -(2**31) <= n < 2**31 else None


def quantity(el, ucum: dict[str, str]) -> dict | None:
    """A PQ as a Quantity with the unit written (a unit the document does not give is none)."""
    if el is None or el.get("nullFlavor"):
        return None
    v = decimal(el.get("value"), exponent=True)
    if v is None:
        return None
    out: dict[str, Any] = {"value": v}
    unit = clean_str(el.get("unit"))
    if unit and unit != "1":
        out["unit"] = unit
        code = ucum.get(unit)
        if code:
            out["system"] = "http://unitsofmeasure.org"
            out["code"] = code
    elif unit == "1":
        # written out, CDA's default unit is UCUM's unity: a count, a ratio (kept as said)
        out.update(unit="1", system="http://unitsofmeasure.org", code="1")
    return out


def money(el, currencies: dict[str, str]) -> dict | None:
    if el is None or el.get("nullFlavor"):
        return None
    v = decimal(el.get("value"))
    if v is None:
        return None
    out: dict[str, Any] = {"value": v}
    cur = clean_str(el.get("currency"))
    if cur:
        out["unit"] = cur
        iso = currencies.get(cur)
        if iso:
            out["system"] = "urn:iso:std:iso:4217"
            out["code"] = iso
    return out


# ---------------------------------------------------------------- people and places

def human_name(el) -> dict | None:
    if el is None or el.get("nullFlavor"):
        return None
    parts = {k: [t for p in children(el, k) if (t := text(p))] for k in ("family", "given", "prefix", "suffix")}
    out: dict[str, Any] = {}
    use = {"L": "official", "P": "nickname", "A": "anonymous", "C": "official"}.get(el.get("use") or "")
    if use:
        out["use"] = use
    if any(parts.values()):
        if parts["family"]:
            out["family"] = " ".join(parts["family"])
        for k in ("given", "prefix", "suffix"):
            if parts[k]:
                out[k] = parts[k]
        full = text(el)
        if full:
            out["text"] = full
    else:
        full = text(el)
        if not full:
            return None
        out["text"] = full
    return out


_ADDR_USE = {"H": "home", "HP": "home", "HV": "home", "WP": "work", "DIR": "work", "PUB": "work",
             "TMP": "temp", "OLD": "old", "BAD": "old"}


def address(el) -> dict | None:
    if el is None or el.get("nullFlavor"):
        return None
    out: dict[str, Any] = {}
    line = [text(p) for p in children(el, "streetAddressLine") if text(p)]
    cn = [text(child(el, k)) for k in ("township", "streetName", "houseNumber")]
    cn_line = "".join(x for x in cn if x)
    if cn_line:
        line.append(cn_line)
    if line:
        out["line"] = line
    for src, dst in (("city", "city"), ("county", "district"), ("state", "state"),
                     ("postalCode", "postalCode"), ("country", "country")):
        v = text(child(el, src))
        if v:
            out[dst] = v
    if not any(isinstance(c.tag, str) for c in el):  # mixed/plain text address
        t = text(el)
        if t:
            out["text"] = t
    else:
        parts = [p for p in (out.get("state"), out.get("city"), out.get("district"), cn_line) if p]
        if all(p.isascii() for p in parts):
            # a Latin-script address reads from the street out, its parts apart
            parts = [p for p in (*line, out.get("city"), out.get("state"), out.get("postalCode"))
                     if p]
            t = ", ".join(parts)
        else:
            t = "".join(parts)
        if t and t != cn_line:
            out["text"] = t
    use = _ADDR_USE.get((el.get("use") or "").split(" ")[0])
    if out and use:
        out["use"] = use
    return out or None


def telecom(el) -> dict | None:
    if el is None or el.get("nullFlavor"):
        return None
    v = clean_str(el.get("value"))
    if not v:
        return None
    system = "phone"
    low = v.lower()
    for prefix, sys in (("tel:", "phone"), ("fax:", "fax"), ("mailto:", "email"), ("http:", "url"),
                        ("https:", "url")):
        if low.startswith(prefix):
            system = sys
            if sys != "url":
                v = v[len(prefix):].strip()
            break
    if not v:
        return None
    out: dict[str, Any] = {"system": system, "value": v}
    use = {"H": "home", "HP": "home", "WP": "work", "MC": "mobile", "TMP": "temp"}.get(
        (el.get("use") or "").split(" ")[0])
    if use:
        out["use"] = use
    return out


# ---------------------------------------------------------------- XPath for findings

def xpath(el) -> str:
    """/ClinicalDocument/component/structuredBody/component[2]/section/entry[3]/observation"""
    parts = []
    while el is not None:
        name = local(el) or "node()"
        parent = el.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == el.tag]
            if len(same) > 1:
                name += f"[{same.index(el) + 1}]"
        parts.append(name)
        el = parent
    return "/" + "/".join(reversed(parts))


def prune(d: Any) -> Any:
    """Drop None, empty strings, empty lists and empty dicts, recursively."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            v = prune(v)
            if v is None or v == "" or v == [] or v == {}:
                continue
            out[k] = v
        return out
    if isinstance(d, list):
        out_l = []
        for v in d:
            v = prune(v)
            if v is None or v == "" or v == [] or v == {}:
                continue
            out_l.append(v)
        return out_l
    return d


def is_element(node) -> bool:
    return isinstance(node.tag, str)


def value_type(el) -> str:
    t = el.get(XSI_TYPE) or ""
    return t.split(":")[-1].upper()

