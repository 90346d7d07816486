"""ORU/OUL: OBR (+ORC) -> DiagnosticReport, OBX -> Observation (every OBX-2 value type), SPM or
OBR-15 -> Specimen. Also the OBX segments other messages carry (ADT: height, weight...)."""

from __future__ import annotations

import base64
import binascii
import copy
import quopri
import re
from typing import Any

from fhir_mapping import partial, ucum

from . import datatypes as dt
from .context import Ctx
from .message import Seg
from .people import as_annotations, note_text, practitioner
from .tables import table

_CODES = table("codes")
_VT = _CODES["value_types"]
_FLAGS = _CODES["abnormal_flags"]
_FLAG_DISPLAY = _CODES["interpretation_display"]
_OBS_STATUS = _CODES["observation_status"]
_REPORT_STATUS = _CODES["report_status"]
_UCUM = "http://unitsofmeasure.org"
_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}
_RANGE = re.compile(r"^\s*([+-]?\d*\.?\d+)\s*(?:-|–|~|—|到|至)\s*([+-]?\d*\.?\d+)\s*$")
_BOUND = re.compile(r"^\s*(<=|>=|<|>|≤|≥)\s*([+-]?\d*\.?\d+)\s*$")
_CAT = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
_SECTION = _CODES["service_section"]


def _categories(obr: Seg) -> tuple[dict | None, dict | None]:
    """(observation category, the section as sent) of a report's OBR-24; no OBR-24: laboratory.
    A table 0074 code gets the table's system."""
    section = dt.concept(obr.rep(24))
    code = dt.comp(obr.rep(24), 1).upper()
    if section is None:
        return _CAT, None
    if section.get("coding") and "system" not in section["coding"][0] and \
            (code in _SECTION["map"] or code in _SECTION["others"]):
        section["coding"][0]["system"] = _SECTION["system"]
        section["coding"][0]["code"] = code
    kind = _SECTION["map"].get(code)
    if kind is None:
        return None, section
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": kind}]}, section
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")
_MIME = re.compile(r"^[a-z]+/[A-Za-z0-9.+-]+$")
_ED_TYPES = {("AP", "PDF"): "application/pdf", ("APPLICATION", "PDF"): "application/pdf",
             ("TEXT", "HTML"): "text/html", ("TEXT", "RTF"): "text/rtf", ("IM", "JPEG"): "image/jpeg",
             ("IMAGE", "JPEG"): "image/jpeg", ("IM", "PNG"): "image/png", ("IMAGE", "PNG"): "image/png",
             ("TEXT", "PLAIN"): "text/plain", ("TEXT", "XML"): "text/xml", ("AP", "XML"): "application/xml",
             ("MULTIPART", "DICOM"): "application/dicom", ("IM", "TIFF"): "image/tiff"}


class _Group:
    __slots__ = ("orc", "obr", "obx", "spm", "notes", "orc_notes", "prt", "tq1", "_parts")

    def __init__(self, orc: Seg | None, obr: Seg, prt: list[Seg] | None = None, tq1: list[Seg] | None = None,
                 orc_notes: list[Seg] | None = None):
        self.orc, self.obr = orc, obr
        self.orc_notes: list[Seg] = orc_notes or []  # the NTE after the ORC: the order's comments
        self.tq1: list[Seg] = tq1 or []  # the order's timing (after its ORC or OBR, before any OBX)
        self.obx: list[tuple[Seg, list[Seg]]] = []  # each OBX with the NTE after it
        self.spm: list[Seg] = []
        self.notes: list[Seg] = []  # the NTE after the OBR: the order's, and the report's conclusion
        self.prt: list[Seg] = prt or []  # PRT of the order (after its ORC or OBR, before any OBX)
        self._parts: dict[str, list[dict]] | None = None


# PRT-4 participations (table 0912) of an order: who ordered it, who interpreted the result; any other
# person taking part performed it
_ORDERING, _INTERPRETING = frozenset({"OP", "ORD"}), frozenset({"PRI", "ARI"})


def participants(ctx: Ctx, g: _Group) -> dict[str, list[dict]]:
    """The group's PRT people by what they did: ``requester``, ``interpreter``, ``performer`` (made once
    per group, shared by its ServiceRequest and DiagnosticReport)."""
    if g._parts is None:
        g._parts = {"requester": [], "interpreter": [], "performer": []}
        for prt in g.prt:
            role = dt.comp(prt.rep(4), 1).upper()
            kind = "requester" if role in _ORDERING else "interpreter" if role in _INTERPRETING else "performer"
            for i, rep in enumerate(prt.field(5), 1):
                ref = practitioner(ctx, rep, prt.loc(5, i))
                if ref and ref not in g._parts[kind]:
                    g._parts[kind].append(ref)
    return g._parts


def split_groups(ctx: Ctx) -> tuple[list[_Group], list[tuple[Seg, list[Seg]]], list[Seg]]:
    """Order groups (OBR with its ORC, OBX + notes and SPM), OBX outside any group, SPM seen
    before any OBR (OUL^R22 puts SPM first). Notes are their NTE segments, with who wrote them
    and when (``people.as_annotations``)."""
    groups: list[_Group] = []
    loose: list[tuple[Seg, list[Seg]]] = []
    early_spm: list[Seg] = []
    orc: Seg | None = None
    orc_prt: list[Seg] = []
    orc_tq1: list[Seg] = []
    orc_notes: list[Seg] = []
    cur: _Group | None = None
    last_notes: list[Seg] | None = None
    for seg in ctx.msg.segments:
        name = seg.name
        if name == "ORC":
            orc, orc_prt, orc_tq1, orc_notes = seg, [], [], []
            last_notes = orc_notes  # an order comment: a note of the order, as after its OBR
        elif name == "OBR":
            cur = _Group(orc, seg, orc_prt, orc_tq1, orc_notes)
            orc, orc_prt, orc_tq1, orc_notes = None, [], [], []
            groups.append(cur)
            last_notes = cur.notes
        elif name == "PRT":
            if orc is not None:  # after an ORC whose OBR has not come yet
                orc_prt.append(seg)
            elif cur is not None and not cur.obx:
                cur.prt.append(seg)
        elif name == "TQ1":  # OML/OMG: after the ORC; ORU: after the OBR
            if orc is not None:
                orc_tq1.append(seg)
            elif cur is not None and not cur.obx:
                cur.tq1.append(seg)
        elif name == "OBX":
            item: tuple[Seg, list[Seg]] = (seg, [])
            (cur.obx if cur is not None else loose).append(item)
            last_notes = item[1]
        elif name == "SPM":
            (cur.spm if cur is not None else early_spm).append(seg)
        elif name == "NTE" and last_notes is not None:
            if note_text(seg):
                last_notes.append(seg)
        elif name in ("PID", "PV1", "TXA", "SAC", "INV", "FT1", "CTI", "DG1"):
            last_notes = None
    return groups, loose, early_spm


def entity_identifier(ctx: Ctx, value: str, ns: str, oid: str | None, kind: str) -> dict[str, Any]:
    """An EI (order or specimen number): its assigning authority's OID, else the institution's own
    system for ``kind`` when no namespace names another assigner."""
    ident: dict[str, Any] = {}
    sysuri = f"urn:oid:{oid}" if oid else None if ns else ctx.local_system(kind)
    if sysuri:
        ident["system"] = sysuri
    ident["value"] = value
    if ns:
        ident["assigner"] = {"display": ns}
    return ident


def report_key(ctx: Ctx, obr: Seg, orc: Seg | None) -> tuple[str, list[dict]]:
    """(key, identifiers): filler number first, else placer, else patient + code + time. A placeholder
    number is neither a key nor an identifier: the order is then scoped by this message."""
    idents = []
    numbers: dict[str, str | None] = {}
    for kind, code, seg_field in (("placer", "PLAC", 2), ("filler", "FILL", 3)):
        src = obr if obr.get(seg_field) else orc if orc is not None and orc.get(seg_field) else None
        if src is None:
            continue
        value = src.get(seg_field)
        if not ctx.usable(value, None, src.loc(seg_field), f"{kind} order number"):
            numbers[kind] = None
            continue
        numbers[kind] = value
        rep = src.rep(seg_field)
        ident = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]},
                 **entity_identifier(ctx, value, dt.comp(rep, 2), dt.oid_of(dt.comp(rep, 3), dt.comp(rep, 4)),
                                     kind)}
        idents.append(ident)
    # scoped by patient, visit and test, as orders are (orders.py): a sender's order numbers that restart
    # in every message must not put one patient's results on another's report
    test = dt.comp(obr.rep(4), 1)
    if numbers.get("filler"):
        return f"F:{ctx.patient_key}:{ctx.visit_scope()}:{numbers['filler']}:{test}", idents
    if numbers.get("placer"):
        return f"P:{ctx.patient_key}:{ctx.visit_scope()}:{numbers['placer']}:{test}", idents
    if numbers:  # only placeholders were sent
        return f"M:{ctx.msg.msh.get(10)}:{obr.index}", idents
    ctx.find("warning", "v2.obr.no-order-number", "OBR without placer (2) or filler (3) number: the "
             "report is keyed by patient, code and time", obr.loc(3))
    return f"X:{ctx.patient_key}:{dt.comp(obr.rep(4), 1)}:{obr.get(7)}:{obr.get(1)}", idents


def specimen(ctx: Ctx, spm: Seg) -> dict[str, str] | None:
    placer = dt.comp(spm.rep(2), 1, 1)
    filler = dt.comp(spm.rep(2), 2, 1)
    if placer and not ctx.usable(placer, None, spm.loc(2, c=1), "placer specimen number"):
        placer = ""
    if filler and not ctx.usable(filler, None, spm.loc(2, c=2), "filler specimen number"):
        filler = ""
    key = filler or placer
    stype = dt.concept(spm.rep(4))
    if not key and stype is None:
        return None
    res: dict[str, Any] = {"resourceType": "Specimen",
                           # scoped by patient: a laboratory's specimen numbers wrap around, and a
                           # specimen shared by two patients would put one's results on the other
                           "id": ctx.id("Specimen", f"{ctx.patient_key}:{key}" if key else
                                        f"{ctx.patient_key}:{spm.get(1)}:{ctx.msg.msh.get(10)}")}
    idents = []
    for value, c in ((placer, 1), (filler, 2)):
        if value:
            oid = dt.oid_of(dt.comp(spm.rep(2), c, 3), dt.comp(spm.rep(2), c, 4))
            idents.append(entity_identifier(ctx, value, dt.comp(spm.rep(2), c, 2), oid, "specimen"))
    if idents:
        res["identifier"] = idents
    if stype:
        res["type"] = stype
    res["subject"] = ctx.patient_ref
    collection: dict[str, Any] = {}
    collected = dt.datetime(spm.get(17))
    collected_end = dt.datetime(spm.get(17, 2))
    if collected and collected_end:
        collection["collectedPeriod"] = {"start": collected, "end": collected_end}
    elif collected:
        collection["collectedDateTime"] = collected
    site = dt.concept(spm.rep(8))
    if site:
        collection["bodySite"] = site
    method = dt.concept(spm.rep(7))
    if method:
        collection["method"] = method
    if collection:
        res["collection"] = collection
    received = dt.datetime(spm.get(18))
    if received:
        res["receivedTime"] = received
    desc = spm.get(14)
    if desc:
        res["note"] = [{"text": desc}]
    return ctx.add(res)


def specimen_from_obr15(ctx: Ctx, obr: Seg, key: str) -> dict[str, str] | None:
    """Before v2.5 the specimen source was OBR-15 (SPS: source^additives^...^body site)."""
    stype = dt.concept(obr.rep(15)) if dt.comp(obr.rep(15), 1) else None
    if stype is None:
        return None
    res: dict[str, Any] = {"resourceType": "Specimen", "id": ctx.id("Specimen", "OBR-15", key),
                           "type": stype, "subject": ctx.patient_ref}
    collected = dt.datetime(obr.get(7))
    if collected:
        res["collection"] = {"collectedDateTime": collected}
    return ctx.add(res)


# -- values ----------------------------------------------------------------------------------------
def _quantity(value: Any, units: list[list[str]]) -> dict:
    q: dict[str, Any] = {"value": value}
    code, text, sysname = dt.comp(units, 1), dt.comp(units, 2), dt.comp(units, 3).upper()
    unit = text or code
    if unit:
        q["unit"] = unit
    # UCUM named by the sender, or a code of R4's common UCUM units (ISO+ and ANS+, HL7's unit
    # tables, share most of their codes with it): others keep their unit, no claimed system
    if code and " " not in code and (sysname == "UCUM" or (
            sysname in ("ISO+", "ANS+", "ANSI", "") and ucum.is_common(code))):
        q["system"] = _UCUM
        q["code"] = code
    return q


def _sn(rep: list[list[str]], units: list[list[str]]) -> tuple[str, Any] | None:
    comparator, n1, sep, n2 = (dt.comp(rep, i) for i in (1, 2, 3, 4))
    v1, v2 = dt.decimal(n1), dt.decimal(n2)
    if sep in (":", "/") and v1 is not None and v2 is not None:
        return "valueRatio", {"numerator": {"value": v1}, "denominator": {"value": v2}}
    if sep in ("-",) and v1 is not None and v2 is not None:
        return "valueRange", {"low": _quantity(v1, units), "high": _quantity(v2, units)}
    if not sep and v1 is not None and not n2:
        q = _quantity(v1, units)
        if comparator in _COMPARATORS:
            q = {"value": v1, "comparator": _COMPARATORS[comparator], **{k: v for k, v in q.items() if k != "value"}}
        elif comparator not in ("", "="):
            return None
        return "valueQuantity", q
    return None


def _attachment_ed(rep: list[list[str]]) -> dict | str:
    """ED: source^type^subtype^encoding^data -> an Attachment, or why it cannot be one."""
    tcode, sub, enc, data = dt.comp(rep, 2).upper(), dt.comp(rep, 3).upper(), dt.comp(rep, 4).upper(), dt.comp_text(rep, 5)
    if not data:
        return "no data (ED-5)"
    att: dict[str, Any] = {}
    mime = _ED_TYPES.get((tcode, sub))
    if mime is None and _MIME.match(f"{tcode.lower()}/{sub.lower()}"):
        mime = f"{tcode.lower()}/{sub.lower()}"
    if mime:
        att["contentType"] = mime
    if enc in ("BASE64", "B64"):
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return "data (ED-5) is not valid Base64"
        att["data"] = data
    elif enc in ("A", "") or enc == "NONE":
        att["data"] = base64.b64encode(data.encode("utf-8")).decode("ascii")
        att.setdefault("contentType", "text/plain; charset=utf-8")
    elif enc == "HEX":
        try:
            att["data"] = base64.b64encode(bytes.fromhex(data)).decode("ascii")
        except ValueError:
            return "data (ED-5) is not valid hex"
    elif enc in ("Q", "QP"):  # quoted-printable (MIME), which some senders use for text
        att["data"] = base64.b64encode(quopri.decodestring(data.encode("utf-8"))).decode("ascii")
        att.setdefault("contentType", "text/plain")
    else:
        return f"encoding (ED-4) {enc[:12]!r} is none of A, Hex, Base64, Q"
    return att


def _attachment_rp(rep: list[list[str]]) -> dict | str:
    """RP: pointer^application id^type^subtype -> an Attachment, or why it cannot be one."""
    url = dt.comp(rep, 1)
    if not url or _URL.match(url) is None:
        return "the pointer (RP-1) is no URL"
    att: dict[str, Any] = {"url": url}
    tcode, sub = dt.comp(rep, 3).upper(), dt.comp(rep, 4).upper()
    mime = _ED_TYPES.get((tcode, sub))
    if mime:
        att["contentType"] = mime
    return att


def documents(obx: Seg, titled: bool = True) -> list[dict] | str:
    """The Attachments of an ED/RP OBX-5, one per repetition (titled by OBX-3), or why one of them
    cannot be an Attachment (the result is then kept as its text, ``observation``)."""
    read = _attachment_ed if obx.get(2).upper() == "ED" else _attachment_rp
    title = (dt.comp(obx.rep(3), 2) or dt.comp(obx.rep(3), 1)) if titled else ""
    out = []
    for rep in obx.field(5):
        if not any(x.strip() for comp in rep for x in comp):
            continue
        att = read(rep)
        if isinstance(att, str):
            return att
        if title:
            att["title"] = title
        out.append(att)
    return out or "nothing in OBX-5"


def value(ctx: Ctx, obx: Seg) -> tuple[str, Any] | tuple[None, str] | None:
    """(element, value) for Observation.value[x]; ("component", [(element, value), ...]) when OBX-5
    repeats; (None, reason) when the type cannot be an Observation value; None when OBX-5 is empty."""
    vt = obx.get(2).upper()
    reps = obx.field(5)
    if not reps:
        return None
    kind = _VT.get(vt)
    units = obx.rep(6)
    if kind is None:
        # the result is kept whatever its type says: its text as a string, with a finding
        kind = "string"
        if not vt:
            ctx.find("warning", "v2.obx-2.missing", "OBX-2 (value type) empty: OBX-5 kept as a string", obx.loc(2))
        else:
            ctx.find("warning", "v2.obx-2.unknown", f"OBX-2 value type {vt[:8]!r} is none this "
                     "mapper knows: OBX-5 kept as a string", obx.loc(2))
    if len(reps) == 1 or kind in _WHOLE:
        return _one(ctx, obx, vt, kind, reps[0], units, reps)
    # OBX-5 repeating (two organisms, 60~120): one Observation with a component per repetition, as
    # the v2-to-FHIR IG's OBX[Observation-Component] map does. The repetitions are values of one
    # result (one code, status, time, performer), not results of their own: separate Observations
    # would need keys and a report entry each, and would read as two tests where one was done.
    parts = []
    for r, rep in enumerate(reps, 1):
        if not any(x for comp in rep for x in comp):
            continue  # an empty repetition (60~~120) holds no value: nothing to keep or report
        got = _one(ctx, obx, vt, kind, rep, units, reps, r)
        if got is None:
            continue
        if got[0] is None:
            ctx.find("warning", "v2.obx-5.unmapped", got[1], obx.loc(5, r))
            continue
        parts.append(got)
    if len(parts) > 1:
        return "component", parts
    return parts[0] if parts else None


# value types whose repetitions are one value: text lines, a numeric array, a document
_WHOLE = frozenset({"string", "numeric-array", "attachment", "reference-pointer"})


def _one(ctx: Ctx, obx: Seg, vt: str, kind: str, first: list[list[str]], units: list[list[str]],
         reps: list, r: int | None = None) -> tuple[str, Any] | tuple[None, str] | None:
    """One value of OBX-5 (repetition ``r``) as (element, value), see ``value``. Text its type
    cannot read is kept as the text sent, with a finding: a result is never stored without the
    value it was sent with."""
    got = _parsed(ctx, obx, vt, kind, first, units, reps, r)
    if got is None and any(x.strip() for comp in first for x in comp):
        return _as_text(ctx, obx, first, f"is not a valid {vt or 'value'}", loc=obx.loc(5, r))
    return got


def _parsed(ctx: Ctx, obx: Seg, vt: str, kind: str, first: list[list[str]], units: list[list[str]],
            reps: list, r: int | None = None) -> tuple[str, Any] | tuple[None, str] | None:
    loc = obx.loc(5, r)
    if kind == "quantity":
        raw = dt.comp(first, 1)
        if not raw:
            return None
        v = dt.decimal(raw)
        if v is not None:
            return "valueQuantity", _quantity(v, units)
        m = _BOUND.match(raw)
        if m:
            comp_ = {"≤": "<=", "≥": ">="}.get(m.group(1), m.group(1))
            num = dt.decimal(m.group(2))
            if num is not None:
                return "valueQuantity", {"value": num, "comparator": comp_,
                                         **{k: x for k, x in _quantity(num, units).items() if k != "value"}}
        ctx.find("warning", "v2.obx-5.not-numeric", f"NM value {raw[:40]!r} is not a number; kept as a string",
                 loc)
        return ("valueString", raw) if raw else None
    if kind == "structured-numeric":
        got = _sn(first, units)
        if got is None:
            text = "".join(dt.comp(first, i) for i in (1, 2, 3, 4))
            ctx.find("information", "v2.obx-5.sn-as-string", "SN value kept as a string", loc)
            return ("valueString", text) if text else None
        return got
    if kind == "string":
        text = "\n".join(x for x in ("^".join("&".join(c) for c in rep).rstrip("^").strip() for rep in reps) if x)
        if vt in ("XCN", "XPN", "XAD", "CX", "EI", "AD", "PN", "TN", "XTN"):
            text = " ".join(p for p in text.replace("&", "^").split("^") if p)
        return ("valueString", text) if text else None
    if kind == "concept":
        c = dt.concept(first)
        return ("valueCodeableConcept", c) if c else None
    if kind == "datetime":
        v = dt.datetime(dt.comp(first, 1))
        if v is None:
            return _as_text(ctx, obx, first, f"is not a valid {vt}", loc=loc)
        return "valueDateTime", v
    if kind == "time":
        v = dt.time(dt.comp(first, 1))
        if v is None:
            return _as_text(ctx, obx, first, "is not a valid TM", loc=loc)
        return "valueTime", v
    if kind == "integer":  # SI
        n = dt.comp(first, 1)
        if n.isascii() and n.isdigit() and len(n) < 10:
            return "valueInteger", int(n)
        return _as_text(ctx, obx, first, "is not a sequence number (SI)", loc=loc)
    if kind == "composite-quantity":  # CQ: quantity ^ units (a CE in subcomponents)
        v = dt.decimal(dt.comp(first, 1))
        if v is not None:
            sub = first[1] if len(first) > 1 else []
            return "valueQuantity", _quantity(v, [[x] for x in sub])
        return _as_text(ctx, obx, first, "is not a quantity (CQ)", loc=loc)
    if kind == "range":  # NR: low ^ high, each a number or empty; anything else is words
        lo_, hi_ = dt.comp(first, 1), dt.comp(first, 2)
        lo, hi = dt.decimal(lo_), dt.decimal(hi_)
        if (lo_ and lo is None) or (hi_ and hi is None):
            return _as_text(ctx, obx, first, "is not a numeric range (NR)", loc=loc)
        rng = {k: {"value": v} for k, v in (("low", lo), ("high", hi)) if v is not None}
        return ("valueRange", rng) if rng else None
    if kind == "period":  # DR: start ^ end, each a time or empty
        s_, e_ = dt.comp(first, 1), dt.comp(first, 2)
        s, e = dt.datetime(s_), dt.datetime(e_)
        if (s_ and s is None) or (e_ and e is None):
            return _as_text(ctx, obx, first, "is not a time range (DR)", loc=loc)
        per = {k: v for k, v in (("start", s), ("end", e)) if v}
        return ("valuePeriod", per) if per else None
    if kind == "quantity-money":
        money = dt.money(first)
        if money is None:
            return _as_text(ctx, obx, first, f"is not an amount of money ({vt})", loc=loc)
        q: dict[str, Any] = {"value": money["value"]}
        if "currency" in money:
            q.update(unit=money["currency"], system="urn:iso:std:iso:4217", code=money["currency"])
        return "valueQuantity", q
    if kind == "numeric-array":
        return _as_text(ctx, obx, first, "is a numeric array (NA): FHIR SampledData needs a "
                        "period and origin the message does not give", reps)
    if kind in ("attachment", "reference-pointer"):  # observation() keeps it: document_report
        return None, f"OBX-2 {vt} is a document, not an Observation value"
    return _as_text(ctx, obx, first, f"is of a type ({vt}) not mapped", reps, loc)


def _as_text(ctx: Ctx, obx: Seg, first: list[list[str]], why: str,
             reps: list | None = None, loc: str | None = None) -> tuple[str, Any] | None:
    """A value that is not what its type says, kept as the text sent with a finding: the result
    (its code, status, time) is never dropped for it."""
    text = "~".join("^".join("&".join(c) for c in rep).rstrip("^") for rep in (reps or [first]))
    ctx.find("warning", "v2.obx-5.kept-as-text", f"OBX-5 {text[:30]!r} {why}: kept as a string",
             loc or obx.loc(5))
    return ("valueString", text) if text.strip("~^& ") else None


def reference_range(obx: Seg, units: list[list[str]]) -> list[dict] | None:
    reps = [x for x in (obx.text(7, r) for r in range(1, len(obx.field(7)) + 1)) if x]
    if len(reps) > 1:
        # one range split by the repetition separator (3.5~5.5: 3.5 to 5.5 in senders that
        # use it so): kept whole as its text, never cut to its first part
        return [{"text": "~".join(reps)}]
    text = obx.get(7)
    if not text:
        return None
    m = _RANGE.match(text)
    if m:
        lo, hi = dt.decimal(m.group(1)), dt.decimal(m.group(2))
        if lo is not None and hi is not None:
            return [{"low": _quantity(lo, units), "high": _quantity(hi, units), "text": text}]
    m = _BOUND.match(text)
    if m:
        v = dt.decimal(m.group(2))
        if v is not None:
            side = "high" if m.group(1) in ("<", "<=", "≤") else "low"
            return [{side: _quantity(v, units), "text": text}]
    return [{"text": text}]


def occurrences(obxs: list[Seg]) -> list[str]:
    """Each OBX's place among the OBX of its group with the same code and sub-ID (OBX-3, OBX-4):
    '' for the first, '2', '3'… for repeats. An Observation is keyed by it, never by OBX-1, which
    only numbers a message's OBX segments: a correction (OBX-11 ``C``) that sends one result of
    a report numbers it 1, and must replace that result, not sit beside it."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for obx in obxs:
        k = (dt.comp(obx.rep(3), 1), obx.get(4))
        seen[k] = seen.get(k, 0) + 1
        out.append("" if seen[k] == 1 else str(seen[k]))
    return out


def observation(ctx: Ctx, obx: Seg, notes: list[Seg], key: str, nth: str, *,
                effective: str | None = None, specimen_ref: dict | None = None,
                category: dict | None = None, based_on: list | None = None) -> dict[str, str] | None:
    code = dt.concept(obx.rep(3))
    if code is None:
        ctx.find("warning", "v2.obx-3.missing", "OBX without an observation identifier (3) skipped", obx.loc(3))
        return None
    got: tuple[str, Any] | tuple[None, str] | None
    if _VT.get(obx.get(2).upper()) in ("attachment", "reference-pointer") and obx.field(5):
        forms = documents(obx)
        if not isinstance(forms, str):
            return document_report(ctx, obx, notes, key, nth, code, forms, effective=effective,
                                   based_on=based_on)
        got = _document_as_text(ctx, obx, forms)
    else:
        got = value(ctx, obx)
    if got is not None and got[0] is None:
        ctx.find("warning", "v2.obx-5.unmapped", got[1], obx.loc(5))
        return None
    res: dict[str, Any] = {"resourceType": "Observation",
                           "id": ctx.id("Observation", key, nth, dt.comp(obx.rep(3), 1), obx.get(4))}
    if based_on:
        res["basedOn"] = based_on
    st = obx.get(11).upper()
    if st and st not in _OBS_STATUS["map"]:
        ctx.find("warning", "v2.obx-11.unlisted", f"OBX-11 result status {st[:8]!r} is not in HL7 "
                 "table 0085: the result's status is unknown, not final", obx.loc(11))
        res["status"] = _OBS_STATUS["unlisted"]
    else:
        res["status"] = _OBS_STATUS["map"].get(st, _OBS_STATUS["default"])
    if category:
        res["category"] = [category]
    res["code"] = code
    res["subject"] = ctx.patient_ref
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    eff = dt.datetime(obx.get(14))
    if eff is None and obx.get(14):
        ctx.find("warning", "v2.obx-14.invalid", "OBX-14 (observation time) is no valid time: the "
                 "report's (OBR-7) is used", obx.loc(14))
    eff = eff or effective
    if eff:
        res["effectiveDateTime"] = eff
    performers = []
    for i, rep in enumerate(obx.field(16), 1):
        ref = practitioner(ctx, rep, obx.loc(16, i))
        if ref:
            performers.append(ref)
    org = dt.comp_text(obx.rep(23), 1)
    if org:
        performers.append({"display": org})
    if performers:
        res["performer"] = performers
    if got is not None and got[0] == "component":
        rr_each = reference_range(obx, obx.rep(6))
        res["component"] = [{"code": copy.deepcopy(code), element: v,
                             **({"referenceRange": copy.deepcopy(rr_each)} if rr_each else {})}
                            for element, v in got[1]]
    elif got is not None:
        res[got[0]] = got[1]
    interp = []
    for rep in obx.field(8):
        flag = dt.comp(rep, 1)
        code_ = _FLAGS["map"].get(flag.upper()) or _FLAGS["map"].get(flag)
        if code_:
            c = {"system": _FLAGS["system"], "code": code_}
            if code_ in _FLAG_DISPLAY:
                c["display"] = _FLAG_DISPLAY[code_]
            interp.append({"coding": [c], "text": flag})
        elif flag:
            interp.append({"text": flag})
            ctx.find("information", "v2.obx-8.unmapped", f"abnormal flag {flag!r} not in table 0078", obx.loc(8))
    if interp:
        res["interpretation"] = interp
    if notes:
        res["note"] = as_annotations(ctx, notes)
    method = dt.concept(obx.rep(17))
    if method:
        res["method"] = method
    _site_device_analysis(ctx, obx, res)
    if specimen_ref:
        res["specimen"] = specimen_ref
    rr = reference_range(obx, obx.rep(6)) if "component" not in res else None
    if rr:
        res["referenceRange"] = rr
    return ctx.add(res)


def document_text(obx: Seg) -> str:
    """An ED/RP OBX-5 as the text sent (repetitions ``~``, components ``^``, subcomponents ``&``)."""
    return "~".join("^".join("&".join(c) for c in rep).rstrip("^") for rep in obx.field(5))


def _document_as_text(ctx: Ctx, obx: Seg, why: str) -> tuple[str, Any] | None:
    """An ED/RP that is no usable document (bad Base64, an unknown encoding, a pointer that is no
    URL): the result is kept as an Observation holding the text sent, with a finding."""
    vt = obx.get(2).upper()
    ctx.find("warning", "v2.obx-5.attachment-invalid",
             f"OBX-5 {vt} holds no usable document ({why}): the result is kept as the text sent", obx.loc(5))
    text = document_text(obx)
    return ("valueString", text) if text.strip("~^& ") else None


def document_report(ctx: Ctx, obx: Seg, notes: list[Seg], key: str, nth: str, code: dict,
                    forms: list[dict], *, effective: str | None = None,
                    based_on: list | None = None) -> dict[str, str] | None:
    """An ED/RP result outside a report's OBR group (ADT, an order's or a problem's OBX): a
    DiagnosticReport coded by OBX-3 whose presentedForm holds the document, as a report keeps its own."""
    res: dict[str, Any] = {"resourceType": "DiagnosticReport",
                           "id": ctx.id("DiagnosticReport", key, nth, dt.comp(obx.rep(3), 1), obx.get(4), "OBX")}
    if based_on:
        res["basedOn"] = based_on
    # table 0085's FHIR codes are DiagnosticReport statuses as well
    res["status"] = _OBS_STATUS["map"].get(obx.get(11).upper(), _OBS_STATUS["unlisted"] if obx.get(11)
                                           else _OBS_STATUS["default"])
    res["code"] = code
    res["subject"] = ctx.patient_ref
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    when = dt.datetime(obx.get(14)) or effective
    if when:
        res["effectiveDateTime"] = when
    if notes:
        res["conclusion"] = "\n".join(note_text(n) for n in notes)
    res["presentedForm"] = forms
    return ctx.add(res)


def _site_device_analysis(ctx: Ctx, obx: Seg, res: dict[str, Any]) -> None:
    """OBX-20 observation site -> bodySite, OBX-18 equipment -> device, OBX-19 time of the analysis
    -> its extension (the v2-to-FHIR IG's OBX[Observation] map)."""
    sites = [c for c in (dt.concept(r) for r in obx.field(20)) if c]
    if sites:
        res["bodySite"] = sites[0]
        if len(sites) > 1:  # bodySite is 0..1: the other sites are kept as notes, never dropped
            ctx.find("information", "v2.obx-20.repeats", f"OBX-20 names {len(sites)} sites: the first is "
                     "the bodySite, the others are kept as notes", obx.loc(20))
            res.setdefault("note", []).extend(
                {"text": f"observation site (OBX-20): {_concept_text(c)}"} for c in sites[1:])
    device = equipment(ctx, obx)
    if device:
        res["device"] = device
    raw = obx.get(19)
    analysed = dt.datetime(raw)
    if analysed:
        res.setdefault("extension", []).append({"url": _ANALYSIS_TIME, "valueDateTime": analysed})
    elif raw:
        ctx.find("warning", "v2.obx-19.invalid", "OBX-19 (date/time of the analysis) is no valid time: "
                 "not mapped", obx.loc(19))


_ANALYSIS_TIME = "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time"


def _concept_text(c: dict) -> str:
    coding = (c.get("coding") or [{}])[0]
    return c.get("text") or coding.get("display") or coding.get("code") or ""


def equipment(ctx: Ctx, obx: Seg) -> dict[str, str] | None:
    """OBX-18 (EI, repeating: the equipment from the lowest level up, a module, then the analyser
    holding it) -> a Device per level keyed by its identifier, each the ``parent`` of the one
    before; the Observation's device is the first. A placeholder identifier is no key (no Device)."""
    refs: list[dict[str, str]] = []
    for r, rep in enumerate(obx.field(18), 1):
        number = dt.comp(rep, 1)
        if not number:
            if any(dt.comp(rep, c) for c in (2, 3, 4)):  # a namespace naming no instance
                ctx.find("warning", "v2.obx-18.no-number", "OBX-18 names the equipment's "
                         "namespace but no instance identifier: no Device", obx.loc(18, r))
            continue
        if not ctx.usable(number, None, obx.loc(18, r), "equipment instance identifier"):
            continue
        ns, oid = dt.comp(rep, 2), dt.oid_of(dt.comp(rep, 3), dt.comp(rep, 4))
        ident = entity_identifier(ctx, number, ns, oid, "device")
        if "system" not in ident and "assigner" not in ident:
            ident["assigner"] = {"display": ctx.inst}
        ref = ctx.add({"resourceType": "Device", "id": ctx.id("Device", oid or ns, number),
                       "identifier": [ident]})
        if ref in refs:  # one device named twice (A~B~A): no parent cycle
            ctx.find("warning", "v2.obx-18.repeated", "OBX-18 names one device twice: its "
                     "levels are read up to the repetition", obx.loc(18, r))
            break
        refs.append(ref)
    for child, parent in zip(refs, refs[1:]):
        dev = ctx.get("Device", child["reference"].split("/", 1)[1])
        if dev is not None:
            dev["parent"] = parent
    return refs[0] if refs else None


def loose_observations(ctx: Ctx, items: list[tuple[Seg, list[Seg]]] | None = None) -> list[dict]:
    """OBX outside any order group (ADT, BAR: vital signs, questionnaire answers)."""
    if items is None:
        items = [(s, []) for s in ctx.msg.all("OBX")]
    refs = []
    enc = f"Encounter/{ctx.visit_scope()}" if ctx.encounter_ref else ""
    for nth, (obx, notes) in zip(occurrences([s for s, _ in items]), items):
        ref = observation(ctx, obx, notes, f"{ctx.patient_key}:{enc}:{ctx.msg.msh.get(10)}", nth)
        if ref:
            refs.append(ref)
    return refs


def group_specimens(ctx: Ctx, g: _Group, early_specimens: list[dict], key: str) -> list[dict]:
    """The group's SPM specimens, else those sent before any OBR (OUL^R22), else OBR-15 (v2.3/2.4)."""
    specimens = [r for r in (specimen(ctx, s) for s in g.spm) if r] or list(early_specimens)
    if not specimens:
        s = specimen_from_obr15(ctx, g.obr, key)
        if s:
            specimens = [s]
    return specimens


def diagnostic_report(ctx: Ctx, g: _Group, early_specimens: list[dict], *,
                      keyed: tuple[str, list[dict]] | None = None, specimens: list[dict] | None = None,
                      based_on: list[dict] | None = None) -> dict[str, str]:
    obr, orc = g.obr, g.orc
    code = dt.concept(obr.rep(4))
    if code is None:
        raise ctx.error("OBR-4 (universal service identifier) is empty: the DiagnosticReport has no code",
                        obr.loc(4), "v2.obr-4.missing")
    key, idents = keyed or report_key(ctx, obr, orc)
    if specimens is None:
        specimens = group_specimens(ctx, g, early_specimens, key)
    effective = dt.datetime(obr.get(7))
    category, section = _categories(obr)
    results, forms = [], []
    for nth, (obx, notes) in zip(occurrences([s for s, _ in g.obx]), g.obx):
        if obx.get(2).upper() in ("ED", "RP") and obx.field(5):
            got = documents(obx)
            if not isinstance(got, str):
                forms.extend(got)
                continue
            # no usable document: observation() keeps the result as its text, with a finding
        ref = observation(ctx, obx, notes, key, nth, effective=effective,
                          specimen_ref=specimens[0] if specimens else None, category=category,
                          based_on=based_on)
        if ref:
            results.append(ref)
    res: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": ctx.id("DiagnosticReport", key)}
    if idents:
        res["identifier"] = idents
    if based_on:
        res["basedOn"] = based_on
    st = obr.get(25).upper()
    res["status"] = _REPORT_STATUS["map"].get(st, _REPORT_STATUS["default"])
    cats = [c for c in (category, section) if c]
    if cats:
        res["category"] = cats
    res["code"] = code
    res["subject"] = ctx.patient_ref
    if ctx.encounter_ref:
        res["encounter"] = ctx.encounter_ref
    if effective:
        end = dt.datetime(obr.get(8))
        if end and end != effective:
            res["effectivePeriod"] = {"start": effective, "end": end}
        else:
            res["effectiveDateTime"] = effective
    _issued(ctx, obr, res)
    interpreters = []
    for rep in obr.field(32):
        ref = practitioner(ctx, rep[:1] + [[s] for s in rep[0][1:]] if rep else rep, obr.loc(32))
        if ref:
            interpreters.append(ref)
    parts = participants(ctx, g)
    interpreters += [r for r in parts["interpreter"] if r not in interpreters]
    if interpreters:
        res["resultsInterpreter"] = interpreters
    res["performer"] = [ctx.org_ref, *parts["performer"]]
    if specimens:
        res["specimen"] = specimens
    if results:
        res["result"] = results
        if st in ("C", "A"):
            # a correction (or a report with results still to come) sends the results it
            # changes: the report's others stay in it (the hub joins them, fhir_mapping.partial)
            partial.mark(res, ["result"])
    if g.notes:
        res["conclusion"] = "\n".join(note_text(n) for n in g.notes)
    if forms:
        res["presentedForm"] = forms
    return ctx.add(res)


_ORIGINAL_TEXT = "http://hl7.org/fhir/StructureDefinition/originalText"


def _issued(ctx: Ctx, obr: Seg, res: dict[str, Any]) -> None:
    """OBR-22 (results reported) -> issued."""
    put_instant(ctx, res, "issued", obr, 22, "results reported")


def put_instant(ctx: Ctx, res: dict[str, Any], element: str, seg: Seg, field: int,
                what: str) -> None:
    """A v2 time -> an instant ``element`` of ``res``. A time without its hour (a date only) is no
    instant and is not made one at midnight: the element is left out and the value sent is kept on
    it as its original text (``_issued``, ``_date``), with a finding, as the CDA mapper leaves a
    date-only issued out."""
    raw = seg.get(field)
    if not raw:
        return
    day = dt.datetime(raw)
    if day and "T" in day:  # with its hour, a v2 time reads as seconds and an offset: an instant
        res[element] = day
        return
    rule, where = f"v2.{seg.name.lower()}-{field}", f"{seg.name}-{field} ({what})"
    if day is None:
        ctx.find("warning", f"{rule}.invalid", f"{where} is no valid time: not mapped",
                 seg.loc(field))
        return
    res[f"_{element}"] = {"extension": [{"url": _ORIGINAL_TEXT, "valueString": raw}]}
    ctx.find("information", f"{rule}.partial", f"{where} gives no time of day ({day}): "
             f"{element} is an instant, so it is left out and the value is kept as its "
             "original text", seg.loc(field))
