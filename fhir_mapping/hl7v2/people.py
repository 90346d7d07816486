"""PID -> Patient (with every PID-3 identifier), NK1 -> RelatedPerson, XCN -> Practitioner,
MRG -> the retired Patient linked to its survivor."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date as _date
from typing import Any

from fhir_mapping import cleared
from fhir_mapping.identifiers import resident_id_conflicts, someone_elses
from fhir_mapping.ids import local_suffixes
from terminology import resident_id

from . import datatypes as dt
from .context import Ctx
from .message import Seg
from .tables import table

_ID = table("identifiers")
_AUTH = {k.upper(): v for k, v in _ID["authorities"].items()}
_TYPES = {k.upper(): v for k, v in _ID["types"].items()}
_KEY_TYPES: list[str] = _ID["patient_key_types"]
_RECORD_TYPE = _KEY_TYPES[0]
# the institution's own patient id types: keyed with the record number's system as their issuer, as
# before each had a system of its own, so that a Patient keyed by one keeps its id
_OWN_PATIENT_TYPES = {t: _TYPES[t][6:] for t in _KEY_TYPES if _TYPES.get(t, "").startswith("local:")}
# systems the tables name that are no institution's register (resident ID, health card, ...)
_NATIONAL = frozenset(v for v in (*_AUTH.values(), *_TYPES.values()) if not v.startswith("local:"))
_LOCAL_SUFFIX = local_suffixes()
_RESIDENT = _ID["resident_id_system"]
_HEALTH_CARD = _ID["health_card_system"]
_CODES = table("codes")
_SEX = _CODES["administrative_sex"]
_SEX_GB = _CODES["administrative_sex_gb"]
_REL = _CODES["relationship"]
_MARITAL = _CODES["marital_status"]
_V2_0203 = frozenset("MR PI PT SS DL NI NPI PPN TAX AN VN EI PRN DN MD RI BC HC JHN NH PN XX SB "
                     "NNCHN PLAC FILL ANON MB MC SN U".split())
_EARLIEST_BIRTH_YEAR = "1880"  # older than any living person: a typing error, not a birth date
_V2_0203_URI = "http://terminology.hl7.org/CodeSystem/v2-0203"
_URI_SAFE = re.compile(r"^\S+$")


def identifier(ctx: Ctx, rep: list[list[str]], loc: str, default_kind: str = "patient") -> dict | None:
    """CX -> Identifier, its system chosen by the table (identifiers.json); resident ID numbers are
    checked (GB 11643) and 15-digit ones upgraded."""
    value = dt.clean_id_value(dt.comp(rep, 1))
    if value is None:
        return None
    ns, uid, utype = dt.hd_sub(rep, 4)
    if not ns and not uid and len(rep) >= 4 and not dt.comp(rep, 4, 2):
        ns = dt.comp(rep, 4)
    type_code = dt.comp(rep, 5).upper()
    system = None
    oid = dt.oid_of(uid, utype)
    if oid and oid != ctx.oid:
        system = _authority_system(ctx, oid, type_code)
    elif oid and type_code not in _TYPES:
        system = f"urn:oid:{oid}"
    elif ns and not oid and ns.upper() in _AUTH:
        system = _AUTH[ns.upper()]
    elif type_code in _TYPES:
        target = _TYPES[_RECORD_TYPE] if _record_register(ctx, type_code) else _TYPES[type_code]
        if target.startswith("local:"):
            if oid or not ns or ns in (ctx.inst, ctx.oid) or _is_sender(ctx, ns):
                system = ctx.local_system(target[6:])
        else:
            system = target
    elif not type_code and not ns:
        system = ctx.local_system(default_kind)
    ident: dict[str, Any] = {}
    if type_code:
        if type_code in _V2_0203:
            ident["type"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                         "code": type_code}]}
        else:
            ident["type"] = {"text": type_code}
    if system == _RESIDENT:
        value = _resident(ctx, value, loc)
        if value is None:
            return None
    elif system == _HEALTH_CARD:
        ident.setdefault("type", {"text": "居民健康卡"})
    if not ctx.usable(value, system, loc):
        return None
    if system == _RESIDENT and someone_elses(value, ctx.record_birth):
        ctx.find("warning", "v2.identifier.other-person",
                 "resident ID number encodes a birth date more than ten years from PID-7 (a parent's number "
                 "on a newborn's record): neither a key nor kept as an identifier", loc)
        return None
    if system:
        ident["system"] = system
    else:
        ctx.find("information", "v2.cx.system-unknown",
                 f"no identifier system for assigning authority {ns or uid or '(none)'} and type "
                 f"{type_code or '(none)'}; kept with its assigner", loc)
    ident["value"] = value
    start, end = dt.datetime(dt.comp(rep, 7)), dt.datetime(dt.comp(rep, 8))
    if start or end:
        ident["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if ns:
        ident["assigner"] = {"display": ns}
    return ident


def _authority_system(ctx: Ctx, oid: str, type_code: str) -> str:
    """The system of a number whose assigning authority is an OID other than the institution's.
    A national register's type keeps its national system (a resident ID number is checked as one
    whatever authority is named); an OID that is already a register (one of the institution's,
    ``<oid>.<n>``, or a national one the tables know) is the system as sent. Any other authority
    (another hospital, a regional register) keeps its OID for its record numbers, untyped numbers
    and types the tables do not know, and gets the shared register suffix for its other patient id
    types (PI: ``<oid>.19``): one authority's PI and record number of the same digits are never one
    system|value, and a hospital's PI relayed with its OID meets the one its own feed sends."""
    target = _TYPES.get(type_code, "")
    if target and not target.startswith("local:"):
        return target
    if (ctx.oid and oid.startswith(f"{ctx.oid}.")) or f"urn:oid:{oid}" in _NATIONAL:
        return f"urn:oid:{oid}"
    if type_code != _RECORD_TYPE and target.startswith("local:patient-"):
        return f"urn:oid:{oid}.{_LOCAL_SUFFIX[target[6:]]}"
    return f"urn:oid:{oid}"


def _record_register(ctx: Ctx, type_code: str) -> bool:
    """Whether numbers of ``type_code`` are the institution's record numbers: the record number's
    type, or one its connector says the institution issues from the same register
    (``SourceInfo.record_number_types``). Any other type is a register of its own, with a system
    of its own (``identifiers.json`` ``types``), never equal to a record number's."""
    return type_code == _RECORD_TYPE or type_code in ctx.source.record_number_types


def _is_sender(ctx: Ctx, ns: str) -> bool:
    return ns == dt.comp(ctx.msg.msh.rep(4), 1) or ns == dt.comp(ctx.msg.msh.rep(3), 1)


def _resident(ctx: Ctx, value: str, loc: str) -> str | None:
    """A resident ID number upper-cased, 15-digit ones upgraded to 18; None (with a finding) when the
    old number carries no valid birth date. The GB 11643 check itself is ``Ctx.usable``'s."""
    v = value.upper()
    if len(v) == 15 and v.isdigit() and not resident_id.is_placeholder(v):
        try:
            up = resident_id.upgrade_15_to_18(v)
        except ValueError:
            ctx.find("warning", "v2.identifier.check-digit",
                     "15-digit resident ID number has no valid birth date: neither a key nor kept as an "
                     "identifier", loc)
            return None
        ctx.find("information", "v2.pid3.resident-id-upgraded",
                 "15-digit resident ID number upgraded to 18 digits", loc)
        return up
    return v


_Ranked = tuple[tuple, tuple[str, ...]]


def patient_identifiers(ctx: Ctx, seg: Seg, field: int = 3) -> tuple[list[dict], tuple[str, ...] | None]:
    """All identifiers of PID-3 (or MRG-1) and the key of the Patient (``patient_key``)."""
    ranked = _candidates(ctx, seg, field)
    best = min((c for _, c in ranked), default=None)
    return [i for i, _ in ranked], best[1] if best else None


def _candidates(ctx: Ctx, seg: Seg, field: int, kind: str = "patient",
                list_field: bool = True) -> list[tuple[dict, _Ranked]]:
    """Each identifier of the field with its (rank, key) as the Patient's key (``patient_key``)."""
    out: list[tuple[dict, _Ranked]] = []
    for i, rep in enumerate(seg.field(field), 1):
        ident = identifier(ctx, rep, seg.loc(field, i), kind)
        if ident is not None:
            out.append((ident, patient_key(ctx, rep, ident, list_field)))
    return out


def patient_key(ctx: Ctx, rep: list[list[str]], ident: dict, list_field: bool = True) -> _Ranked:
    """(rank, key) of one patient identifier, the smallest rank keying the Patient
    (``identifiers.json`` ``patient_key_types``). The institution's record number keys by its value
    (``fhir_mapping.ids.patient_id``, what every feed of it shares); any other identifier by its
    type, issuer and value, so that a laboratory's patient id or an outpatient number equal to a
    record number is never that record's Patient. ``list_field``: PID-3 or MRG-1 (PID-2 and PID-4
    come after them, and an untyped number there is not the record number)."""
    tcode = dt.comp(rep, 5).upper()
    value, system = ident["value"], ident.get("system")
    ns, uid, utype = dt.hd_sub(rep, 4)
    authority = dt.oid_of(uid, utype)
    if authority:
        # keyed by its assigning authority's OID, as before the type chose the system under it
        # (``identifier``): a Patient stored then keeps its id
        system = f"urn:oid:{authority}"
    if system is not None and tcode in _OWN_PATIENT_TYPES and system == ctx.local_system(_OWN_PATIENT_TYPES[tcode]):
        system = ctx.local_system("patient")
    issuer = system or (ident.get("assigner") or {}).get("display") or uid or ""
    own = {f"urn:oid:{ctx.oid}", ctx.local_system("patient")} if ctx.oid else set()
    # the institution's record number: its own system, or (named by an issuer the tables do not
    # know, the HIS relaying its number through the LIS) no system at all; not another OID's
    if system in own or system is None:
        if _record_register(ctx, tcode) or (not tcode and list_field and not ns and not uid):
            return (0 if list_field else 1, 0 if system else 1, "", value), (value,)
    where = 2 if list_field else 3
    if tcode in _KEY_TYPES:
        rank = _KEY_TYPES.index(tcode)
    elif system and ctx.oid and system.startswith(f"urn:oid:{ctx.oid}."):
        rank = len(_KEY_TYPES)
    elif system not in (_RESIDENT, _HEALTH_CARD):
        rank = len(_KEY_TYPES) + 1
    else:
        rank = len(_KEY_TYPES) + 2
    key = (tcode or ("CX" if list_field else "PID-2/4"), issuer, value)
    return (where, rank, issuer, value), key


def patient(ctx: Ctx, pid: Seg) -> dict:
    ctx.record_birth = dt.date(pid.get(7)) if pid.get(7) else None
    ranked = _candidates(ctx, pid, 3)
    for extra in (2, 4):  # PID-2 patient id (external), PID-4 alternate patient id
        ranked += _candidates(ctx, pid, extra, "patient", False)
    idents: list[dict] = []
    for ident, _ in ranked:
        if ident not in idents:
            idents.append(ident)
    for other in (_ssn(ctx, pid), _licence(ctx, pid)):
        if other and other not in idents:
            idents.append(other)
    others = resident_id_conflicts([i["value"] for i in idents if i.get("system") == _RESIDENT],
                                   ctx.record_birth)
    if others:
        # two people's numbers on one record: the one PID-7 bears out stays, if one does
        def dropped(i: dict) -> bool:
            return i.get("system") == _RESIDENT and i["value"].strip().upper() in others

        ctx.find("warning", "v2.identifier.resident-id-conflict",
                 "resident ID number differs from another valid one of this patient and is not the one "
                 "whose encoded birth date is PID-7's (two people's numbers): neither a key nor kept as "
                 "an identifier", "PID-3")
        idents = [i for i in idents if not dropped(i)]
        ranked = [(i, c) for i, c in ranked if not dropped(i)]
    best = min(ranked, key=lambda r: r[1])[1] if ranked else None
    ctx.record_birth = None
    key_ids = best[1] if best else _visit_key(ctx, pid)
    key = ":".join(key_ids)
    if not key:
        raise ctx.error("PID-3 (patient identifier list) holds no usable identifier (none, or only "
                        "placeholders and resident ID numbers failing their check) and there is no visit "
                        "number (PV1-19) to key the Patient by", "PID-3", "v2.pid3.missing")
    ctx.patient_key = key
    res: dict[str, Any] = {"resourceType": "Patient", "id": ctx.id("Patient", *key_ids)}
    if idents:
        res["identifier"] = idents
    res["active"] = True
    names = [n for n in (dt.human_name(r) for r in pid.field(5)) if n]
    if names:
        res["name"] = names
    telecom = [c for f in (13, 14) for c in (dt.contact_point(r) for r in pid.field(f)) if c]
    if telecom:
        res["telecom"] = _unique(telecom)
    sex = pid.get(8).upper()
    if sex:
        g = _SEX.get(sex)
        if g:
            res["gender"] = g
        else:
            ctx.find("warning", "v2.pid8.sex-unknown", f"administrative sex {sex!r} not in table 0001", "PID-8")
        if sex in _SEX_GB["codes"]:
            res["extension"] = [{"url": "https://fhir-region-hub.example/StructureDefinition/gb-sex",
                                 "valueCoding": {"system": _SEX_GB["system"], "code": sex,
                                                 "display": _SEX_GB["codes"][sex]}}]
    birth = pid.get(7)
    if birth:
        b = dt.date(birth)
        sent = dt.date(ctx.msg.msh.get(7))
        if b is None:
            ctx.find("warning", "v2.pid7.invalid", "birth date is not a valid v2 date (such as February 30); "
                     "not mapped", "PID-7")
        elif b[:4] < _EARLIEST_BIRTH_YEAR:
            ctx.find("warning", "v2.pid7.too-early", f"birth date before {_EARLIEST_BIRTH_YEAR}; not mapped", "PID-7")
        elif sent and _after(b, sent):
            # the message's own time (MSH-7) is "now" for a pure mapper
            ctx.find("warning", "v2.pid7.future", "birth date after the message was sent (MSH-7); not mapped",
                     "PID-7")
        else:
            res["birthDate"] = b
    deceased = pid.get(30).upper()
    death = dt.datetime(pid.get(29))
    if death:
        res["deceasedDateTime"] = death
    elif deceased in ("Y", "N"):
        res["deceasedBoolean"] = deceased == "Y"
    addrs = [a for a in (dt.address(r) for r in pid.field(11)) if a]
    if addrs:
        res["address"] = addrs
    marital = dt.table_concept(pid.rep(16), "0002")
    if marital:
        fhir = _MARITAL["map"].get(dt.comp(pid.rep(16), 1).upper())
        if fhir and marital["coding"][0].get("system", "").endswith("v2-0002"):
            marital["coding"].append({"system": _MARITAL["system"], "code": fhir[0], "display": fhir[1]})
        res["maritalStatus"] = marital
    mb = pid.get(24).upper()
    order = pid.get(25)
    if order.isdigit() and 0 < int(order) < 100:
        res["multipleBirthInteger"] = int(order)
    elif mb in ("Y", "N"):
        res["multipleBirthBoolean"] = mb == "Y"
    lang = dt.concept(pid.rep(15))
    if lang:
        res["communication"] = [{"language": lang}]
    res["managingOrganization"] = ctx.org_ref
    ref = ctx.add(res)
    # what the message clears, as against what it does not mention (the hub keeps the stored
    # values of the latter: a lab's PID with the record number alone). An ADT message states
    # the patient's record: what it does not hold, it clears; another message clears only its
    # explicit nulls (HL7's "")
    if ctx.msg.msh.get(9, 1).upper() == "ADT":
        gone = ["identifier", *dict.fromkeys(e for _, e in _CLEARABLE)]
    else:
        gone = list(dict.fromkeys(e for n, e in _CLEARABLE if pid.nulled(n)))
    cleared.mark(res, gone)
    ctx.patient_ref = ref
    return res


# PID fields and the Patient element each fills, for the explicit nulls a message sends
_CLEARABLE = ((5, "name"), (7, "birthDate"), (8, "gender"), (11, "address"), (13, "telecom"),
              (14, "telecom"), (16, "maritalStatus"), (29, "deceased"), (30, "deceased"),
              (15, "communication"), (24, "multipleBirth"))


def _after(birth: str, sent: str) -> bool:
    """Birth date later than the message's day, with a day's grace (a birth just after midnight in
    the sender's zone, stamped by a system in another)."""
    if len(birth) < 10 or len(sent) < 10:  # a year or a month: compare what both give
        n = min(len(birth), len(sent))
        return birth[:n] > sent[:n]
    return (_date.fromisoformat(birth) - _date.fromisoformat(sent[:10])).days > 1


def _visit_key(ctx: Ctx, pid: Seg) -> tuple[str, ...]:
    """No usable PID-3/2/4: the institution's visit number (PV1-19) keys the Patient, as its own kind
    of key (never equal to a record-number key), so two people sharing one filler or invalid ID number
    stay two Patients."""
    pv1 = ctx.msg.first("PV1")
    visit = pv1.get(19) if pv1 is not None else ""
    if pv1 is None or not visit or not ctx.usable(visit, None, pv1.loc(19), "visit number"):
        return ()
    ctx.find("warning", "v2.pid3.keyed-by-visit", "no usable patient identifier in PID-3: the Patient is "
             "keyed by the visit number (PV1-19), so later visits of this person make other Patients", "PID-3")
    return ("VN", visit)


def _ssn(ctx: Ctx, pid: Seg) -> dict | None:
    """PID-19 (SSN number, where Chinese systems often put the resident ID number): its system by the
    value's shape (tables/identifiers.json ``pid19``)."""
    value = dt.clean_id_value(pid.get(19))
    if value is None:
        return None
    for rule in _ID["pid19"]:
        if re.fullmatch(rule["pattern"], value):
            system, type_code = rule.get("system"), rule["type"]
            break
    else:
        system, type_code = None, "SS"
    if system == _RESIDENT:
        value = _resident(ctx, value, "PID-19")
        if value is None:
            return None
    if not ctx.usable(value, system, "PID-19", "PID-19 identifier"):
        return None
    if system == _RESIDENT and someone_elses(value, ctx.record_birth):
        ctx.find("warning", "v2.identifier.other-person",
                 "PID-19 resident ID number encodes a birth date more than ten years from PID-7: neither a "
                 "key nor kept as an identifier", "PID-19")
        return None
    ident: dict[str, Any] = {"type": {"coding": [{"system": _V2_0203_URI, "code": type_code}]}}
    if system:
        ident["system"] = system
    else:
        ctx.find("information", "v2.cx.system-unknown", "PID-19 value has no known number shape: kept "
                 "without a system", "PID-19")
    ident["value"] = value
    return ident


def _licence(ctx: Ctx, pid: Seg) -> dict | None:
    """PID-20 driver's licence (DLN: number^issuing authority^expiry); no national system exists, so the
    issuing authority is the assigner."""
    value = dt.clean_id_value(pid.get(20))
    if value is None or not ctx.usable(value, None, "PID-20", "driver's licence number"):
        return None
    ident: dict[str, Any] = {"type": {"coding": [{"system": _V2_0203_URI, "code": "DL"}]}, "value": value}
    expiry = dt.date(pid.get(20, 3))
    if expiry:
        ident["period"] = {"end": expiry}
    issuer = pid.get(20, 2)
    if issuer:
        ident["assigner"] = {"display": issuer}
    return ident


def _unique(items: list[dict]) -> list[dict]:
    out: list[dict] = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


def related_person(ctx: Ctx, nk1: Seg, n: int) -> None:
    names = [x for x in (dt.human_name(r) for r in nk1.field(2)) if x]
    set_id = nk1.get(1) or str(n)
    res: dict[str, Any] = {"resourceType": "RelatedPerson",
                           "id": ctx.id("RelatedPerson", ctx.patient_key, set_id,
                                        names[0].get("family", "") if names else ""),
                           "active": True, "patient": ctx.patient_ref}
    rel = dt.table_concept(nk1.rep(3), "0063")
    if rel:
        code = dt.comp(nk1.rep(3), 1).upper()
        mapped = _REL["map"].get(code)
        if mapped:
            rel.setdefault("coding", []).insert(0, {"system": _REL["system"], "code": mapped})
        res["relationship"] = [rel]
    if names:
        res["name"] = names
    telecom = [c for f in (5, 6) for c in (dt.contact_point(r) for r in nk1.field(f)) if c]
    if telecom:
        res["telecom"] = _unique(telecom)
    addrs = [a for a in (dt.address(r) for r in nk1.field(4)) if a]
    if addrs:
        res["address"] = addrs
    idents = [i for i in (identifier(ctx, rep, nk1.loc(33, r), "entity")
                          for r, rep in enumerate(nk1.field(33), 1)) if i]
    if idents:
        res["identifier"] = idents
    start, end = dt.date(nk1.get(8)), dt.date(nk1.get(9))
    if start or end:
        res["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if len(res) > 4:  # more than the bare skeleton
        ctx.add(res)


def practitioner(ctx: Ctx, rep: list[list[str]], loc: str) -> dict[str, str] | None:
    """XCN -> Practitioner (id from XCN-1 and its authority XCN-9, else the name)."""
    if not rep:
        return None
    pid_ = dt.comp(rep, 1)
    name = dt.human_name(rep, family_at=2)
    if not pid_ and not name:
        return None
    auth_ns, auth_uid, auth_type = dt.hd_sub(rep, 9)
    if pid_ and not ctx.usable(pid_, None, loc + ".1", "practitioner id (XCN-1)"):
        pid_ = ""  # keyed by name, or no Practitioner at all: a filler id would make everyone one person
        if not name:
            return None
    res: dict[str, Any] = {"resourceType": "Practitioner",
                           "id": ctx.id("Practitioner", auth_uid or auth_ns, pid_ or "",
                                        "" if pid_ else repr(name))}
    if pid_:
        oid = dt.oid_of(auth_uid, auth_type)
        ident: dict[str, Any] = {}
        if oid and oid == ctx.oid:
            # the institution as authority names its practitioner register, as no authority does:
            # one doctor's number has one system however XCN-9 is filled
            system = ctx.local_system("practitioner")
        else:
            system = f"urn:oid:{oid}" if oid else _AUTH.get(auth_ns.upper()) if auth_ns else None
        if system is None and not auth_ns:
            system = ctx.local_system("practitioner")
        if system:
            ident["system"] = system
        ident["value"] = pid_
        if auth_ns:
            ident["assigner"] = {"display": auth_ns}
        res["identifier"] = [ident]
    if name:
        res["name"] = [name]
    res["active"] = True
    ref = ctx.add(res)
    if name:
        ref = dict(ref, display=name.get("text") or " ".join(
            [*name.get("given", []), name.get("family", "")]).strip() or pid_)
    return ref


def note_text(nte: Seg) -> str:
    """NTE-3 (comment), its repetitions a line each."""
    return "\n".join(nte.text(3, r) for r in range(1, len(nte.field(3)) + 1)).strip()


def annotation(ctx: Ctx, note: Seg | str) -> dict[str, Any] | None:
    """A note as an Annotation. An NTE by the v2-to-FHIR IG's NTE map: NTE-3 comment -> text, NTE-5
    entered by -> authorReference (a Practitioner; a name without an id is authorString), NTE-6
    entered date/time -> time. A note the mapper writes itself (a value kept as a note) is its text.
    None for an NTE without a comment."""
    if isinstance(note, str):
        return {"text": note} if note else None
    text = note_text(note)
    if not text:
        return None
    out: dict[str, Any] = {"text": text}
    rep = note.rep(5)  # XCN, v2.6+
    author = practitioner(ctx, rep, note.loc(5)) if dt.comp(rep, 1) else None
    name = dt.human_name(rep, family_at=2) if author is None and rep else None
    if author:
        out["authorReference"] = author
    elif name:
        out["authorString"] = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
    raw = note.get(6)
    when = dt.datetime(raw)
    if when:
        out["time"] = when
    elif raw:
        ctx.find("warning", "v2.nte-6.invalid", "NTE-6 (entered date/time) is no valid time: the note "
                 "keeps its text without it", note.loc(6))
    return out


def as_annotations(ctx: Ctx, notes: Sequence[Seg | str]) -> list[dict[str, Any]]:
    return [a for n in notes if (a := annotation(ctx, n))]


def primary_care(ctx: Ctx, pd1: Seg, pat: dict) -> None:
    """PD1-4 primary care providers (XCN) and PD1-3 primary facility (XON name) -> generalPractitioner."""
    refs = [r for i, rep in enumerate(pd1.field(4), 1) if (r := practitioner(ctx, rep, pd1.loc(4, i)))]
    refs += [{"display": name} for rep in pd1.field(3) if (name := dt.comp_text(rep, 1))]
    if refs:
        pat["generalPractitioner"] = refs


def provider(ctx: Ctx, prd: Seg) -> dict[str, str] | None:
    """PRD (referral provider: name XPN 2, address 3, telecom 5, identifiers PLN 7) -> Practitioner, keyed
    by its usable identifier, else by its name."""
    name = dt.human_name(prd.rep(2))
    ids = [v for r, rep in enumerate(prd.field(7), 1)
           if (v := dt.comp(rep, 1)) and ctx.usable(v, None, prd.loc(7, r, 1), "provider id")]
    if name is None and not ids:
        return None
    res: dict[str, Any] = {"resourceType": "Practitioner",
                           "id": ctx.id("Practitioner", "PRD", ids[0] if ids else repr(name))}
    if ids:
        res["identifier"] = [{"system": s, "value": v} if (s := ctx.local_system("practitioner")) else {"value": v}
                             for v in ids]
    res["active"] = True
    if name:
        res["name"] = [name]
    telecom = [c for c in (dt.contact_point(r) for r in prd.field(5)) if c]
    if telecom:
        res["telecom"] = _unique(telecom)
    addrs = [a for a in (dt.address(r) for r in prd.field(3)) if a]
    if addrs:
        res["address"] = addrs
    ref = ctx.add(res)
    if name:
        ref = dict(ref, display=name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip())
    return ref


def merge(ctx: Ctx, mrg: Seg, survivor: dict) -> None:
    """MRG-1 names the retired Patient: it becomes inactive and points to the survivor, which
    records that it replaces it (FHIR Patient.link, as $merge does)."""
    idents, key = patient_identifiers(ctx, mrg, 1)
    if not key:
        raise ctx.error("MRG-1 (prior patient identifier list) is empty: nothing to merge", "MRG-1",
                        "v2.mrg1.missing")
    retired_id = ctx.id("Patient", *key)
    if retired_id == survivor["id"]:
        raise ctx.error("MRG-1 names the same patient as PID-3: a patient cannot be merged into "
                        "itself", "MRG-1", "v2.mrg1.self")
    retired: dict[str, Any] = {"resourceType": "Patient", "id": retired_id, "identifier": idents,
                               "active": False,
                               "link": [{"other": {"reference": f"Patient/{survivor['id']}"},
                                         "type": "replaced-by"}],
                               "managingOrganization": ctx.org_ref}
    names = [n for n in (dt.human_name(r) for r in mrg.field(7)) if n]
    if names:
        retired["name"] = names
    ctx.add(retired)
    survivor.setdefault("link", []).append({"other": {"reference": f"Patient/{retired_id}"}, "type": "replaces"})
