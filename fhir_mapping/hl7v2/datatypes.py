"""HL7 v2 data types to FHIR datatypes, as plain dicts (no models: validation happens in the hub).

Every function takes a normalised repetition (``list`` of components, each a ``list`` of
subcomponents, see ``message.Seg``) and returns a FHIR dict or ``None`` when nothing usable is there.
Times: v2 DTM ``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``; a time without an offset is read in the
region's zone, +08:00 (``DEFAULT_OFFSET``), the offset given is kept as sent.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_mapping import local_codes, numbers
from fhir_mapping.identifiers import is_filler_text

from .tables import table

DEFAULT_OFFSET = "+08:00"
_DTM = re.compile(r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
                  r"([+-]\d{4})?$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?([+-]\d{4})?$")
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SYSTEMS: dict[str, str] = {k.upper(): v for k, v in table("coding_systems").items() if not k.startswith("_")}
# every name of HL7 table 0396 (upper case -> as the table spells it)
TABLE_0396: dict[str, str] = {n.upper(): n for n in table("coding_systems")["_table_0396"]}
_WS = re.compile(r"\s")


def comp(rep: list[list[str]], c: int, s: int = 1) -> str:
    if c > len(rep):
        return ""
    sub = rep[c - 1]
    return sub[s - 1].strip() if s <= len(sub) else ""


def comp_text(rep: list[list[str]], c: int) -> str:
    """Component ``c`` whole (subcomponents joined with '&' only when several hold data)."""
    if c > len(rep):
        return ""
    subs = [s.strip() for s in rep[c - 1]]
    if len(subs) == 1:
        return subs[0]
    return " ".join(s for s in subs if s)


def cwe_text(rep: list[list[str]]) -> str:
    """The words of a CWE sent as an instruction (RXE-7, RXO-6/7): its original text (9), else its
    text (2), else the identifier (1, a free-text sender's whole instruction); never the parts joined."""
    return comp_text(rep, 9) or comp_text(rep, 2) or comp_text(rep, 1)


# -- times ---------------------------------------------------------------------------------------
def _valid_date(y: str, m: str | None, d: str | None) -> bool:
    if int(y) < 1:
        return False
    if m is not None and not 1 <= int(m) <= 12:
        return False
    if d is not None:
        assert m is not None  # the day comes only with the month
        dd = int(d)
        if not 1 <= dd <= _DAYS[int(m) - 1]:
            return False
        if int(m) == 2 and dd == 29 and not (int(y) % 4 == 0 and (int(y) % 100 != 0 or int(y) % 400 == 0)):
            return False
    return True


def _offset(z: str | None) -> str | None:
    if not z:
        return None
    hh, mm = int(z[1:3]), int(z[3:5])
    if hh > 14 or mm > 59:
        return None
    return f"{z[0]}{z[1:3]}:{z[3:5]}"


def datetime(value: str, *, instant: bool = False) -> str | None:
    """A v2 DTM/TS/DT as a FHIR dateTime (or instant: seconds and offset always present)."""
    value = value.strip()
    if not value:
        return None
    m = _DTM.match(value)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, z = m.groups()
    if not _valid_date(y, mo, d):
        return None
    if hh is None:
        if instant:
            if d is None:
                return None
            return f"{y}-{mo}-{d}T00:00:00{_offset(z) or DEFAULT_OFFSET}"
        return y if mo is None else f"{y}-{mo}" if d is None else f"{y}-{mo}-{d}"
    if int(hh) > 23 or int(mi or 0) > 59 or int(ss or 0) > 59:
        return None
    tz = _offset(z) if z else DEFAULT_OFFSET
    if tz is None:
        return None
    out = f"{y}-{mo}-{d}T{hh}:{mi or '00'}:{ss or '00'}"
    if frac:
        out += "." + frac
    return out + tz


def time(value: str) -> str | None:
    """A v2 TM as a FHIR time (hh:mm:ss; the offset, which FHIR time cannot hold, is dropped)."""
    m = _TM.match(value.strip())
    if m is None:
        return None
    hh, mi, ss, frac, _ = m.groups()
    if int(hh) > 23 or int(mi or 0) > 59 or int(ss or 0) > 59:
        return None
    return f"{hh}:{mi or '00'}:{ss or '00'}" + (f".{frac}" if frac else "")


def date(value: str) -> str | None:
    dt = datetime(value[:8] if len(value) >= 8 and value[:8].isdigit() else value)
    return dt[:10] if dt else None


# -- numbers -------------------------------------------------------------------------------------
def decimal(value: str) -> Any:
    """A FHIR decimal (int, float or, where a float would not keep the written form, an orjson
    Fragment, as the hub's own JSON parser produces) or None."""
    return numbers.decimal(value)


# -- codes -----------------------------------------------------------------------------------------
def system_for(name: str) -> str | None:
    """The FHIR system of a CWE-3 coding-system name; None only for no name and the local ones
    (``L``, ``99zzz``: ``fhir_mapping.local_codes``). Any other name is kept: a table-0396 name
    or one outside the table that has no FHIR URI under the hub's ``v2-coding-system/<name>``."""
    n = name.strip()
    if not n or local_codes.is_general_local(n) or local_codes.is_named_local(n):
        return None
    u = n.upper()
    s = _SYSTEMS.get(u)
    if s:
        return s
    if u.startswith("HL7") and u[3:].isdigit():
        return f"http://terminology.hl7.org/CodeSystem/v2-{int(u[3:]):04d}"
    if re.fullmatch(r"[0-2](\.\d+)+", u):
        return f"urn:oid:{u}"
    return local_codes.named_system(TABLE_0396.get(u, n))


def coding(code: str, display: str = "", system_name: str = "") -> dict | None:
    code, display = code.strip(), display.strip()
    if not code and not display:
        return None
    c: dict[str, Any] = {}
    sysuri = system_for(system_name)
    if sysuri:
        c["system"] = sysuri
    if code:
        c["code"] = " ".join(code.split())
    if display:
        c["display"] = display
    if "code" not in c:
        return None
    name = system_name.strip()
    if local_codes.is_named_local(name):
        return local_codes.with_local_name(c, name)
    return c


def concept(rep: list[list[str]]) -> dict | None:
    """CE/CWE/CNE: primary and alternate codings, text from CWE-9 or the first display."""
    if not rep:
        return None
    codings = []
    for base in (0, 3, 9):  # identifier^text^system at 1-3, alternate at 4-6, second alternate 10-12
        c = coding(comp(rep, base + 1), comp(rep, base + 2), comp(rep, base + 3))
        if c and c not in codings:
            codings.append(c)
    text = comp(rep, 9) or comp(rep, 2) or comp(rep, 5)
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    elif not codings and comp(rep, 1):
        out["text"] = comp(rep, 1)
    return out or None


def filler_concept(rep: list[list[str]]) -> bool:
    """True for a CE/CWE/CNE that says nothing: no code of a code system (a CWE-1/4/10 beside its
    CWE-3/6/12, whatever word it spells), and every code, display and text in it a filler
    (``无``, ``无。``, ``-``: ``fhir_mapping.identifiers.is_filler_text``), as the CDA mapper reads a
    text-only value (``cda.entry.absent-value``). An empty one is not a filler: it is missing."""
    said = []
    for base in (0, 3, 9):
        code, system = comp(rep, base + 1).strip(), comp(rep, base + 3).strip()
        if system and any(ch.isalnum() for ch in code):
            return False
        said += [t for t in (code, comp(rep, base + 2).strip()) if t]
    said += [comp(rep, 9).strip()] if comp(rep, 9).strip() else []
    return bool(said) and all(is_filler_text(t) for t in said)


_V2_TABLES: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in table("codes")["v2_tables"].items()
                                          if not k.startswith("_")}


def table_concept(rep: list[list[str]], table_no: str) -> dict | None:
    """``concept`` of a field bound to HL7 table ``table_no``: a code sent without its coding system
    (CWE-3) that is in the table gets the table's system (``tables/codes.json`` ``v2_tables``)."""
    c = concept(rep)
    if c and c.get("coding") and not comp(rep, 3):
        first = c["coding"][0]
        if "system" not in first and first["code"].upper() in _V2_TABLES[table_no]:
            c["coding"][0] = {"system": f"http://terminology.hl7.org/CodeSystem/v2-{table_no}", **first}
    return c


def code_value(code: str) -> str | None:
    """A value usable as a FHIR code (no leading/trailing or repeated whitespace) or None."""
    c = " ".join(code.split())
    return c or None


# -- names, addresses, telecom ---------------------------------------------------------------------
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "anonymous",
             "S": "anonymous", "B": "official", "C": "old", "P": "usual", "R": "official", "U": "temp"}


def has_cjk(s: str) -> bool:
    return _CJK.search(s) is not None


def human_name(rep: list[list[str]], family_at: int = 1) -> dict | None:
    """XPN (family at 1, given 2, middle 3, suffix 4, prefix 5, type 7) or the name part of an
    XCN (family at 2). A Chinese name sent whole in one component is kept as ``text`` and split
    family/given only when the family name is given separately."""
    family = comp(rep, family_at)
    given = [g for g in (comp(rep, family_at + 1), comp(rep, family_at + 2)) if g]
    suffix = comp(rep, family_at + 3)
    prefix = comp(rep, family_at + 4)
    degree = comp(rep, family_at + 5)
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if prefix:
        name["prefix"] = [prefix]
    if suffix or degree:
        name["suffix"] = [s for s in (suffix, degree) if s]
    if not name:
        return None
    if has_cjk(family + "".join(given)):
        name["text"] = family + "".join(given)  # 张三: no space between family and given
    use = _NAME_USE.get(comp(rep, family_at + 6).upper())
    if use:
        name["use"] = use
    return name


def address(rep: list[list[str]]) -> dict | None:
    lines = [x for x in (comp_text(rep, 1), comp(rep, 2)) if x]
    a: dict[str, Any] = {}
    if lines:
        a["line"] = lines
    for key, c in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6), ("district", 9)):
        v = comp(rep, c)
        if v:
            a[key] = v
    if not a:
        return None
    use = {"H": "home", "B": "work", "O": "work", "C": "temp", "M": "home", "BA": "billing"}.get(
        comp(rep, 7).upper())
    if use:
        a["use"] = use
    return a


def contact_point(rep: list[list[str]]) -> dict | None:
    """XTN: number from XTN-1 (legacy), XTN-12 (unformatted), or area+local; email from XTN-4."""
    equip = comp(rep, 3).upper()
    use_code = comp(rep, 2).upper()
    email = comp(rep, 4)
    if equip in ("INTERNET", "X.400") or (email and not comp(rep, 1) and not comp(rep, 7)):
        if not email:
            return None
        return {"system": "email", "value": email}
    number = comp(rep, 12) or comp(rep, 1)
    if not number:
        local = comp(rep, 7)
        if not local:
            return None
        number = "".join(x for x in (comp(rep, 5) and "+" + comp(rep, 5), comp(rep, 6), local) if x)
        ext = comp(rep, 8)
        if ext:
            number += " ext " + ext
    cp: dict[str, Any] = {"system": "fax" if equip == "FX" else "pager" if equip == "BP" else "phone",
                          "value": number}
    use = {"PRN": "home", "ORN": "home", "WPN": "work", "VHN": "home", "ASN": "temp", "EMR": "temp",
           "NET": "home", "BPN": "work", "PRS": "mobile"}.get(use_code)
    if equip == "CP":
        use = "mobile"
    if use:
        cp["use"] = use
    return cp


def location_text(rep: list[list[str]]) -> str:
    """PL: point of care ^ room ^ bed ^ facility ... as one readable string."""
    parts = [comp(rep, 1), comp(rep, 2), comp(rep, 3), comp(rep, 4), comp(rep, 7), comp(rep, 8), comp(rep, 9)]
    return " / ".join(p for p in parts if p)


def hd(rep: list[list[str]], start: int = 1) -> tuple[str, str, str]:
    """HD at component ``start`` (namespace, universal id, universal id type)."""
    return comp(rep, start), comp(rep, start + 1), comp(rep, start + 2)


def hd_sub(rep: list[list[str]], c: int) -> tuple[str, str, str]:
    """HD sent as subcomponents of component ``c`` (CX-4, EI inside XCN-9 ...)."""
    return comp(rep, c, 1), comp(rep, c, 2), comp(rep, c, 3)


def oid_of(universal_id: str, id_type: str) -> str | None:
    u = universal_id.strip()
    if u and re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", u) and id_type.upper() in ("ISO", "", "HL7", "L"):
        return u
    return None


def money(rep: list[list[str]], c: int = 1, default_currency: str | None = None) -> dict | None:
    """CP/MO: amount at c (subcomponent 1 of CP-1), currency at subcomponent 2 or component c+1."""
    amount = decimal(comp(rep, c, 1))
    if amount is None:
        return None
    cur = (comp(rep, c, 2) or comp(rep, c + 1)).upper()
    m: dict[str, Any] = {"value": amount}
    if re.fullmatch(r"[A-Z]{3}", cur):
        m["currency"] = cur
    elif default_currency:
        m["currency"] = default_currency
    return m


def clean_id_value(value: str) -> str | None:
    """Identifier.value: no leading/trailing whitespace."""
    v = value.strip()
    return v or None


def to_float(v: Any) -> float:
    """The numeric value of what ``decimal`` returned (an orjson Fragment included)."""
    return numbers.value_of(v)
