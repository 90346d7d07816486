"""State of one CDA conversion (Ctx) and the statement helpers every entry builder shares.

Lower than ``mapper``, ``sections``, ``entries`` and the entry-builder modules (``orders``, ``reports``,
``charges``): they all import from here and nothing here imports them back."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from lxml import etree

from fhir_mapping.base import Finding, SourceInfo
from fhir_mapping.cda import dt
from fhir_mapping.cda.dt import child, children, q
from fhir_mapping.cda.tables import Tables
from fhir_mapping.identifiers import is_filler, is_filler_text, is_resident_id_system, key_problem, someone_elses
from fhir_mapping.ids import stable_id
from terminology import resident_id

STATEMENTS = frozenset(q(n) for n in (
    "observation", "procedure", "substanceAdministration", "supply", "act", "organizer", "encounter",
    "observationMedia", "regionOfInterest"))
LOINC = "http://loinc.org"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
VERSION_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Composition.version"
CONFIDENTIALITY = {"U", "L", "M", "N", "R", "V"}
PQ_TRANSLATION = "http://hl7.org/fhir/StructureDefinition/iso21090-PQ-translation"
NULL_TO_DAR = {"NA": "not-applicable", "ASKU": "asked-unknown", "NASK": "not-asked", "MSK": "masked",
               "UNK": "unknown", "NI": "unknown", "OTH": "unknown", "NAV": "temp-unknown"}
OBS_CATEGORIES = {"social-history", "vital-signs", "imaging", "laboratory", "procedure", "survey", "exam",
                  "therapy", "activity"}
XSI_NULL = "nullFlavor"


class Ctx:
    """State of one conversion: the resources made so far, findings and the entry trace."""

    def __init__(self, root, source: SourceInfo, t: Tables):
        self.root = root
        self.source = source
        self.t = t
        self.findings: list[Finding] = []
        self.resources: dict[tuple[str, str], dict] = {}
        self.trace: dict[Any, str] = {}  # statement element -> "Type/id" | "component:Type/id" | "finding:rule"
        self.family = "cda"
        self.offset: str | None = None
        self.doc_key: tuple[str, ...] = ()
        self.institution = source.institution
        self.patient_ref: str | None = None
        self.encounter_ref: str | None = None
        self.author_ref: str | None = None
        self.doc_time: str | None = None
        self.patient_keyed: dict[str, str] = {}  # recordTarget id root -> extension
        self.id_sources: dict[tuple[str, str], bytes] = {}  # entry resource -> its statement's c14n
        # entries without an id, keyed by their content: (type, statement, place) -> id, and how
        # many entries of the document share each content key so far
        self.content_ids: dict[tuple[str, Any, str], str] = {}
        self.content_counts: dict[tuple[str, ...], int] = {}
        self.report: Any = None  # reports.Report while a report document (C0006, C0007) is mapped
        # numbers of the patient's records in recordTarget (prescription, requisition, report,
        # specimen: header.yaml record_roots) -> their Identifier
        self.record_idents: dict[str, dict] = {}
        self.partners: dict[Any, Any] = {}  # a diagnosis name statement <-> its code statement

    # -- output
    def add(self, res: dict, *, replace: bool = False) -> str:
        res = dt.prune(res)
        key = (res["resourceType"], res["id"])
        if key not in self.resources or replace:
            self.resources[key] = res
        return f"{key[0]}/{key[1]}"

    def has(self, rtype: str, rid: str) -> bool:
        return (rtype, rid) in self.resources

    def find(self, severity: str, rule: str, message: str, el=None, location: str | None = None) -> None:
        self.findings.append(Finding(severity, rule, message, location or (dt.xpath(el) if el is not None else None)))

    # -- conventions
    def root_only_ok(self) -> bool:
        return self.family == "ccda" or self.family == "cda"

    def ident(self, el, type_text: str | None = None) -> dict | None:
        out = dt.identifier(el, root_only_ok=self.root_only_ok(), type_text=type_text)
        if out is not None and "system" in out:
            out["system"] = self.sys_uri(out["system"])
        return out

    def checked_ident(self, el, type_text: str | None = None,
                      born: str | None = None) -> tuple[dict | None, str | None]:
        """(Identifier, None) for an id that may key a resource; (None, reason) with a finding
        ``cda.identifier.<reason>`` for one that is a filler or fails its check digit: such a value
        would merge different people into one resource, so it is neither a key nor stored. A 15-digit
        resident ID number is upgraded to 18 digits first. (None, None) when there is no id at all."""
        key = dt.ii(el)
        if key is None:
            return None, None
        root, ext = key
        label = type_text or self.t.header["identifier_types"].get(root) or f"identifier {root}"
        value = ext
        if ext and is_resident_id_system(root) and len(ext) == 15 and ext.isascii() and ext.isdigit():
            try:
                value = resident_id.upgrade_15_to_18(ext)
            except ValueError:
                pass  # no valid birth date in it: key_problem below refuses it
        problem = key_problem(value, root) if ext else ("placeholder" if is_filler(root) else None)
        if problem is None and ext and is_resident_id_system(root) and someone_elses(value, born):
            problem = "other-person"  # a parent's number on a newborn's record
        if problem is not None:
            why = {"check-digit": "fails its check digit (GB 11643)",
                   "other-person": "encodes a birth date more than ten years from the patient's own (someone "
                                   "else's number, such as a parent's on a newborn's record)"}.get(
                problem, "is a placeholder value")
            self.find("warning", f"cda.identifier.{problem}",
                      f"{label} {why}: not used as a key and not stored (value not logged)", el)
            return None, problem
        out = self.ident(el, type_text)
        if out is not None and value != ext:
            self.find("information", "cda.identifier.upgraded",
                      f"{label}: 15-digit resident ID number upgraded to 18 digits", el)
            out["value"] = value
        return out, None

    def checked_idents(self, els, types: dict | None = None) -> tuple[list[dict], bool]:
        """The usable Identifiers of ``els`` (in order, no duplicates) and whether any id was refused."""
        out: list[dict] = []
        refused = False
        for e in els:
            key = dt.ii(e)
            i, problem = self.checked_ident(e, (types or {}).get(key[0]) if key else None)
            refused = refused or problem is not None
            if i is not None and i not in out:
                out.append(i)
        return out, refused

    def sys_uri(self, uri: str) -> str:
        if uri.startswith("urn:oid:"):
            return self.t.systems.get(uri[8:], uri)
        return uri

    def coding(self, el) -> dict | None:
        c = dt.coding(el)
        if c and "system" in c:
            c["system"] = self.sys_uri(c["system"])
        return c

    def concept(self, el, fallback_text: str | None = None) -> dict | None:
        c = dt.concept(el, fallback_text=fallback_text)
        if c:
            for cd in c.get("coding", ()):
                if "system" in cd:
                    cd["system"] = self.sys_uri(cd["system"])
        return c

    def ts(self, el, *, date_only: bool = False, what: str = "time") -> str | None:
        if el is None or el.get(XSI_NULL):
            return None
        raw = el.get("value")
        if raw is None or not raw.strip():
            return None
        v = dt.ts(raw, self.offset, date_only=date_only)
        if v is None:
            self.find("warning", "cda.time.invalid", f"{what} is not a valid HL7 TS (value not logged)", el)
        return v

    def quantity(self, el) -> dict | None:
        """A PQ as a Quantity, with the unit the document writes (none invented) and its
        translations (PQR: the same quantity in another unit, such as 37 Cel beside 98.6 [degF])
        in the ISO 21090 PQ-translation extension."""
        out = dt.quantity(el, self.t.header["ucum"])
        if out is None:
            return None
        ext = []
        for tr in children(el, "translation"):
            v = dt.decimal(tr.get("value"), exponent=True)
            if v is None or tr.get(XSI_NULL):
                continue  # a coded translation without a value (a frequency's code) is no quantity
            tq: dict[str, Any] = {"value": v}
            unit = dt.clean_str(tr.get("displayName")) or dt.code_ok(tr.get("code"))
            if unit:
                tq["unit"] = unit
            system = dt.system_uri(tr.get("codeSystem"))
            if system and dt.code_ok(tr.get("code")):
                tq["system"] = self.sys_uri(system)
                tq["code"] = dt.code_ok(tr.get("code"))
            ext.append({"url": PQ_TRANSLATION, "valueQuantity": tq})
        if ext:
            out["extension"] = ext
        return out

    def ratio(self, el) -> dict | None:
        """An RTO (a titre 1:320, RTO_PQ_PQ, RTO_INT_INT) as a Ratio of two Quantities, units as
        written; None unless both terms are numbers."""
        terms = []
        for side in ("numerator", "denominator"):
            term = child(el, side)
            if term is not None and term.get("currency") is not None:
                terms.append(dt.money(term, self.t.header["currencies"]))
            else:
                terms.append(self.quantity(term))
        if terms[0] is None or terms[1] is None:
            return None
        return {"numerator": terms[0], "denominator": terms[1]}

    def effective(self, el) -> tuple[str, Any] | None:
        if el is None:
            return None
        for part in (el, child(el, "low"), child(el, "high")):
            if part is not None and part.get("value") and dt.ts(part.get("value"), self.offset) is None:
                self.find("warning", "cda.time.invalid", "effectiveTime is not a valid HL7 TS", part)
        return dt.effective(el, self.offset)


def _templates(el) -> list[str]:
    return [r for r in (dt.clean_str(t.get("root")) for t in children(el, "templateId")) if r]


def _code(el) -> tuple[str | None, str | None]:
    c = child(el, "code")
    if c is None:
        return None, None
    return dt.clean_str(c.get("code")), dt.clean_str(c.get("codeSystem"))



def _nested(st) -> list:
    out = []
    for rel in list(children(st, "entryRelationship")) + list(children(st, "component")):
        for c in rel:
            if c.tag in STATEMENTS:
                out.append(c)
    return out


def _describe(ctx: Ctx, st) -> str:
    """A one-line rendering of a statement for the section narrative."""
    code_el = child(st, "code")
    label = (dt.clean_str(code_el.get("displayName")) if code_el is not None else None) or \
        (dt.clean_str(code_el.get("code")) if code_el is not None else None) or dt.local(st)
    val = child(st, "value")
    vtxt = None
    if val is not None:
        vtxt = dt.clean_str(val.get("displayName")) or dt.text(val) or dt.clean_str(val.get("value"))
        if vtxt and val.get("unit"):
            vtxt += " " + val.get("unit")
        if not vtxt and val.get("code"):
            vtxt = val.get("code")
    if not vtxt:
        vtxt = dt.text(child(st, "text"))
    return f"{label}: {vtxt}" if vtxt else label


class Section:
    def __init__(self, pos: str, title: str | None = None):
        self.pos = pos
        self.title = title
        self.refs: list[str] = []
        self.unmapped: list[str] = []
        self.code: str | None = None


def _unmapped(ctx: Ctx, sec: Section, st, rule: str, why: str) -> None:
    ctx.trace[st] = f"finding:{rule}"
    for n in st.iter(*STATEMENTS):  # nested statements go with it
        if n is not st:
            ctx.trace.setdefault(n, f"finding:{rule}")
    ctx.find("warning", rule, why + "; kept in the section narrative", st)
    sec.unmapped.append(_describe(ctx, st))


def _entry_id(ctx: Ctx, rtype: str, st, pos: str) -> str:
    """The entry's own id within its document when it has one: the same act repeated in two sections
    (a problem in the admission and the discharge diagnoses) is one resource, and a new version of the
    document (same setId) rewrites the same resources. Hospitals number entries per document
    (``extension="1"`` in every document), so an id alone would let one patient's documents overwrite
    another's: the scope is the document (``ctx.doc_key``: setId, else document id). Only a UUID is
    unique by construction and keeps the institution as its scope, so the same C-CDA act quoted by
    several documents stays one resource. A filler id is no key; an id reused for different content
    in one document is reported and that entry keyed by its content. An entry without an id is
    keyed by its content too (``_content_key``), never by its place: keyed by place, a new version
    that left out the first of two diagnoses rewrote the first resource into the second and retired
    the second, the diagnosis it kept."""
    for el in children(st, "id"):
        ident, _ = ctx.checked_ident(el)
        if ident is None:
            continue
        value = ident["value"]
        if ident.get("system") == "urn:ietf:rfc:3986" and value.startswith("urn:uuid:"):
            rid = stable_id(rtype, ctx.institution, value)
        else:
            rid = stable_id(rtype, *ctx.doc_key, ident.get("system", ""), value)
        src = _WS_BETWEEN_TAGS.sub(b"><", etree.tostring(st, method="c14n"))
        prev = ctx.id_sources.setdefault((rtype, rid), src)
        if prev == src:
            return rid
        ctx.find("warning", "cda.entry.duplicate-id",
                 f"{rtype} id already used by an entry with other content; keyed by its content", el)
        break
    known = ctx.content_ids.get((rtype, st, pos))
    if known is not None:
        return known
    key = (rtype, *_content_key(st), pos.rpartition(".")[2] if not pos[-1:].isdigit() else "")
    n = ctx.content_counts[key] = ctx.content_counts.get(key, 0) + 1
    rid = ctx.content_ids[(rtype, st, pos)] = stable_id(rtype, *ctx.doc_key, "content", *key, str(n))
    return rid


def _content_key(st) -> tuple[str, ...]:
    """What an entry without an id is about, as its key within its document: its section (by code),
    the statement's kind, code, coded or text value, drug and time, and those of the statements
    it is nested in. A measured value is not part of it: a corrected reading is the same
    observation. Two entries alike in all of these are told apart by their order among them."""
    out: list[str] = []
    node = st
    while node is not None and dt.local(node) != "section":
        if node.tag in STATEMENTS:
            part = [dt.local(node), *(x or "" for x in _code(node))]
            val = child(node, "value")
            if val is not None:
                vtype = (dt.clean_str(val.get(dt.XSI_TYPE)) or "").rpartition(":")[2]
                if vtype in _TEXT_VALUE_TYPES:
                    part += [dt.clean_str(val.get("code")) or "", dt.clean_str(val.get("codeSystem")) or "",
                             "" if val.get("code") else (dt.text(val) or "")]
            drug = dt.path(node, "consumable", "manufacturedProduct", "manufacturedMaterial")
            if drug is not None:
                part += [*(x or "" for x in _code(drug)), dt.text(child(drug, "name")) or ""]
            eff = child(node, "effectiveTime")
            part.append((dt.clean_str(eff.get("value")) or dt.attr(child(eff, "low"), "value") or "")
                        if eff is not None else "")
            out = ["|".join(part), *out]
        node = node.getparent()
    sec = node if node is not None else None
    out.insert(0, "|".join(x or "" for x in _code(sec)) if sec is not None else "")
    return tuple(out)


_WS_BETWEEN_TAGS = re.compile(rb">\s+<")


_TEXT_VALUE_TYPES = frozenset({"", "ST", "SC", "ED", "CD", "CE", "CV", "CO", "CS"})


def absent_value(st) -> str | None:
    """Why the statement's value says nothing, or None when it says something: its nullFlavor, or
    ``filler`` for text or a code made only of fillers ("无", "-", "不详"). Numbers are never fillers
    ("0" ml of blood loss is a value), nor is a code in a code system ("NA", sodium)."""
    val = child(st, "value")
    if val is None:
        return None
    nf = dt.clean_str(val.get(XSI_NULL))
    if nf == "OTH" and (dt.text(child(val, "originalText")) or any(
            t.get("code") for t in children(val, "translation"))):
        # OTH: the concept is outside the code system, and the translation or the original text
        # says what it is (a diagnosis coded so was dropped)
        return None
    if nf:
        return nf
    if dt.value_type(val) not in _TEXT_VALUE_TYPES:
        return None
    code = dt.clean_str(val.get("code"))
    if code and dt.clean_str(val.get("codeSystem")) and any(c.isalnum() for c in code):
        # a code of a code system is a value, whatever word of free text it spells ("NA" is sodium):
        # the fillers are words written in place of a text or a display
        return None
    said = [t for t in (code, dt.clean_str(val.get("displayName")),
                        dt.clean_str(val.get("value")), dt.text(val), dt.text(child(val, "originalText"))) if t]
    return "filler" if said and all(is_filler_text(t) for t in said) else None


def _absent(ctx: Ctx, sec: "Section", st, why: str) -> None:
    """A statement whose value is absent makes no resource: reported (information) and kept in the
    section narrative."""
    ctx.trace[st] = "finding:cda.entry.absent-value"
    ctx.find("information", "cda.entry.absent-value",
             f"value is {'a filler' if why == 'filler' else 'null (' + why + ')'}: no resource made of it", st)
    sec.unmapped.append(_describe(ctx, st))


def _subject(ctx: Ctx) -> dict:
    return {"reference": ctx.patient_ref}


def _categories(rule: dict, system: str) -> list[dict] | None:
    cat = rule.get("category")
    if not cat:
        return None
    if system == OBS_CAT and cat not in OBS_CATEGORIES:
        return [{"text": cat}]
    return [{"coding": [{"system": system, "code": cat}]}]


def _value(ctx: Ctx, st, rule: dict, val=None) -> tuple[str, Any] | None:
    """('Quantity', {...}) etc. for the statement's value (``val``: one of its values, the first
    when not given), or ('absent', a dataAbsentReason code)."""
    if val is None:
        val = child(st, "value")
    if val is None:
        return None
    h = ctx.t.header
    vt = dt.value_type(val)
    nf = val.get(XSI_NULL)
    if not vt:
        vt = "CD" if val.get("code") is not None else ("PQ" if val.get("unit") is not None else
                                                         ("ST" if len(val) == 0 and (val.text or "").strip() else ""))
    if vt in ("PQ", "REAL"):
        qv = ctx.quantity(val)
        if qv:
            return "Quantity", qv
        raw = dt.clean_str(val.get("value"))
        if raw:
            ctx.find("warning", "cda.value.invalid-quantity", "PQ value is not a decimal; kept as text", val)
            unit = dt.clean_str(val.get("unit"))
            return "String", raw + (f" {unit}" if unit else "")
        txt = dt.text(val)
        if txt:
            return "String", txt
    elif vt == "MO":
        m = dt.money(val, h["currencies"])
        if m:
            return "Quantity", m
        raw = dt.clean_str(val.get("value"))
        if raw:
            ctx.find("warning", "cda.value.invalid-quantity", "MO value is not a decimal; kept as text", val)
            return "String", raw
    elif vt == "INT":
        n = dt.integer(val.get("value"))
        if n is not None:
            return "Integer", n
        raw = dt.clean_str(val.get("value")) or dt.text(val)
        if raw:
            ctx.find("warning", "cda.value.invalid-integer", "INT value is not an integer; kept as text", val)
            return "String", raw
    elif vt in ("CD", "CE", "CV", "CO", "CS"):
        c = ctx.concept(val)
        if c:
            return "CodeableConcept", c
    elif vt == "BL":
        v = (val.get("value") or "").strip()
        if v in ("true", "false"):
            return "Boolean", v == "true"
        if v:
            ctx.find("warning", "cda.value.invalid-boolean", "BL value is neither true nor false; kept as text", val)
            return "String", v
    elif vt == "TS":
        v = ctx.ts(val, what="TS value")
        if v:
            return "DateTime", v
    elif vt == "IVL_TS":
        p = dt.period(val, ctx.offset)
        if p:
            return "Period", p
    elif vt in ("ED", "ST") and (val.get("representation") or "").upper() == "B64":
        # base64 text: what it says, not its encoding (a chief complaint came out as base64)
        media = (val.get("mediaType") or "text/plain").lower()
        try:
            data = base64.b64decode("".join((val.text or "").split()), validate=True)
            said = data.decode("utf-8") if media.startswith("text/") else None
        except (binascii.Error, ValueError):
            said = None
        if said and said.strip():
            return "String", said.strip()
        ctx.find("warning", "cda.value.binary", f"an ED value of {media} in base64 is no text an "
                 "Observation holds: kept as sent", val)
    elif vt == "IVL_PQ":
        lo = ctx.quantity(child(val, "low"))
        hi = ctx.quantity(child(val, "high"))
        if lo or hi:
            return "Range", {"low": lo, "high": hi}
    elif vt.startswith("RTO"):
        r = ctx.ratio(val)
        if r:
            return "Ratio", r
    txt = dt.text(val) or dt.clean_str(val.get("value")) or dt.clean_str(val.get("displayName"))
    if txt:
        return "String", txt
    if not nf and (any(dt.is_element(c) for c in val) or any(val.get(a) for a in ("value", "code", "unit"))):
        ctx.find("warning", "cda.value.unread", f"a {vt or 'untyped'} value the mapper does not read: "
                 "the resource says its value is unknown", val)
    return "absent", NULL_TO_DAR.get(nf or "", "unknown")


def interpretations(ctx: Ctx, st) -> list[dict]:
    """The statement's interpretationCode elements as CodeableConcepts."""
    return [c for c in (ctx.concept(e) for e in children(st, "interpretationCode")) if c]


def reference_ranges(ctx: Ctx, st) -> list[dict]:
    """The statement's referenceRange elements as Observation.referenceRange: low and high, and a
    range written as words (阴性, "negative") as its text."""
    rr = []
    for r in children(st, "referenceRange"):
        orng = child(r, "observationRange")
        val = child(orng, "value")
        ent: dict[str, Any] = {}
        if val is not None:
            ent["low"] = ctx.quantity(child(val, "low"))
            ent["high"] = ctx.quantity(child(val, "high"))
        t = dt.text(child(orng, "text")) or (dt.text(val) if val is not None and dt.value_type(val)
                                             in ("ST", "ED", "") and not len(val) else None)
        if t:
            ent["text"] = t
        if dt.prune(ent):
            rr.append(ent)
    return rr


def _set_value(res: dict, v: tuple[str, Any] | None) -> None:
    if v is None:
        res["dataAbsentReason"] = {"coding": [{"system": DAR, "code": "unknown"}]}
    elif v[0] == "absent":
        res["dataAbsentReason"] = {"coding": [{"system": DAR, "code": v[1]}]}
    else:
        res["value" + v[0]] = v[1]


def _obs_code(ctx: Ctx, st, rule: dict) -> dict | None:
    code = ctx.concept(child(st, "code"))
    if rule.get("loinc"):
        lc = {"system": LOINC, "code": rule["loinc"]}
        code = code or {}
        code.setdefault("coding", [])
        if lc not in code["coding"]:
            code["coding"].insert(0, lc)
    return code


def _status(ctx: Ctx, st, table: dict | None = None, default: str = "final") -> str:
    sc = dt.clean_str(child(st, "statusCode").get("code")) if child(st, "statusCode") is not None else None
    return (table or ctx.t.entries["status"]).get(sc or "", default)

