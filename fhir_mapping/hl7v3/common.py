"""Shared pieces of the HL7 v3 mapper: tables, the message wrapper, v3 data types, the mapping context."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from lxml import etree

from fhir_mapping.base import Finding, MappingError, SourceInfo
from fhir_mapping.identifiers import key_problem
from fhir_mapping.ids import local_suffixes, stable_id
from fhir_mapping.xmlsafe import parse_xml

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS = {"hl7": V3, "xsi": XSI}
DEFAULT_OFFSET = "+08:00"
PROBLEM_TEXT = {"placeholder": "placeholder (a filler such as '-', '无', a template label)",
                "check-digit": "resident ID number failing the GB 11643 check",
                "missing": "missing value"}


@lru_cache(maxsize=None)
def table(name: str) -> dict[str, Any]:
    text = resources.files("fhir_mapping.hl7v3").joinpath("tables", f"{name}.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def interactions() -> dict[str, dict[str, Any]]:
    return table("interactions")["interactions"]


def service_spec(interaction: str, service: str = "") -> dict[str, Any]:
    """The interaction's entry in interactions.yaml; for a query, the one of ``service`` (a
    catalogue service's name or a handler's) when that service answers the interaction apart
    (``service_queries``). A service that names nothing of this interaction changes nothing."""
    spec = interactions()[interaction]
    if not service or spec["kind"] != "query":
        return spec
    alternatives = table("interactions").get("service_queries") or {}
    handler = service if service in alternatives else next(
        (svc.get("covered") for f in table("catalogue")["families"].values()
         for svc in f["services"] if svc["name"] == service and svc["interaction"] == interaction),
        None)
    if handler not in alternatives:
        return spec
    return {**spec, **alternatives[handler], "handler": handler}


# -- XML access ----------------------------------------------------------------------------------

def q(el: etree._Element | None, path: str) -> list[etree._Element]:
    """Elements under ``el`` by a relative path of local names ('a/b/c'), in the v3 namespace."""
    if el is None:
        return []
    return el.findall("/".join(f"{{{V3}}}{p}" for p in path.split("/")))


def first(el: etree._Element | None, path: str) -> etree._Element | None:
    found = q(el, path)
    return found[0] if found else None


def first_of(el: etree._Element | None, *paths: str) -> etree._Element | None:
    for p in paths:
        found = first(el, p)
        if found is not None:
            return found
    return None


def attr(el: etree._Element | None, name: str) -> str:
    if el is None:
        return ""
    v = el.get(name)
    return v.strip() if isinstance(v, str) else ""


def ids(el: etree._Element | None) -> list[tuple[str, str]]:
    """(root, extension) of an II or a DSET<II> (``<id><item root extension/></id>``), skipping empties."""
    out: list[tuple[str, str]] = []
    if el is None:
        return out
    items = q(el, "item") or [el]
    for it in items:
        root, ext = attr(it, "root"), attr(it, "extension")
        if root or ext:
            out.append((root, ext))
    return out


def text_parts(el: etree._Element | None) -> str:
    """The text of an EN/ST in the platform style: ``item/part/@value`` joined, else the element text."""
    if el is None:
        return ""
    parts = [attr(p, "value") for p in el.iter(f"{{{V3}}}part")]
    s = "".join(p for p in parts if p)
    if not s:
        s = "".join(el.itertext()).strip()
    return s


def display(el: etree._Element | None) -> str:
    if el is None:
        return ""
    dn = first(el, "displayName")
    return attr(dn, "value") or attr(el, "displayName")


def local_name(el: etree._Element) -> str:
    return etree.QName(el).localname


# -- v3 times --------------------------------------------------------------------------------------

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def fhir_date(ts: str) -> str | None:
    m = _TS.match(ts or "")
    if not m:
        return None
    y, mo, d = m.group(1), m.group(2), m.group(3)
    try:
        datetime(int(y), int(mo or 1), int(d or 1))
    except ValueError:
        return None
    return "-".join(p for p in (y, mo, d) if p)


def fhir_datetime(ts: str, instant: bool = False) -> str | None:
    """HL7 TS -> FHIR dateTime, keeping the offset sent (else +08:00); ``instant`` needs seconds."""
    m = _TS.match(ts or "")
    if not m:
        return None
    y, mo, d, hh, mi, ss, off = m.groups()
    try:
        datetime(int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0))
    except ValueError:
        return None
    if hh is None:
        if instant:
            if d is None:
                return None
            return f"{y}-{mo}-{d}T00:00:00{DEFAULT_OFFSET}"
        return fhir_date(ts)
    offset = f"{off[:3]}:{off[3:]}" if off else DEFAULT_OFFSET
    return f"{y}-{mo}-{d}T{hh}:{mi or '00'}:{ss or '00'}{offset}"


def v3_ts(dt: datetime) -> str:
    """A datetime as an HL7 TS with its offset (naive datetimes are taken as +08:00)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone(timedelta(hours=8)))
    return dt.strftime("%Y%m%d%H%M%S%z")


# -- the message -------------------------------------------------------------------------------------

class Message:
    """The transmission wrapper of one v3 interaction message."""

    def __init__(self, root: etree._Element):
        self.root = root
        q_ = etree.QName(root)
        if q_.namespace != V3:
            raise MappingError(f"root element {root.tag!r} is not in the HL7 v3 namespace {V3}", code="AR",
                               location="/", rule="v3.namespace")
        self.interaction = q_.localname
        if self.interaction not in interactions():
            raise MappingError(f"unsupported HL7 v3 interaction {self.interaction!r}", code="AR", location="/",
                               rule="v3.interaction-unsupported")
        # as HL7 v2's MSH-11: a training (T) or debugging (D) message is no record of care
        processing = attr(first(root, "processingCode"), "code").upper()
        if processing not in ("", "P"):
            raise MappingError(f"processingCode {processing!r}: only production messages (P) are "
                               "written to the regional record", code="AR",
                               location="/*/hl7:processingCode/@code", rule="v3.processing-code")
        declared = attr(first(root, "interactionId"), "extension")
        self.declared_interaction = declared
        idel = first(root, "id")
        self.id_root, self.id_ext = attr(idel, "root"), attr(idel, "extension")
        self.creation_time = attr(first(root, "creationTime"), "value")
        self.sender = ids(first(root, "sender/device/id"))
        self.receiver = ids(first(root, "receiver/device/id"))
        self.control = first(root, "controlActProcess")
        if not self.message_id:
            raise MappingError("the message has no id (/*/id): it cannot be acknowledged nor deduplicated",
                               code="AE", location="/*/hl7:id", rule="v3.message-id-missing")

    @property
    def message_id(self) -> str:
        return self.id_ext or self.id_root

    def header(self) -> dict[str, Any]:
        return {"interaction": self.interaction, "message_id": {"root": self.id_root, "extension": self.id_ext},
                "creation_time": self.creation_time, "sender": self.sender, "receiver": self.receiver}


def parse(payload: bytes) -> Message:
    root = parse_xml(payload)
    return Message(root)


# -- the mapping context -----------------------------------------------------------------------------

class Ctx:
    def __init__(self, msg: Message, source: SourceInfo, org_code: str = ""):
        self.msg, self.source = msg, source
        self.spec = interactions()[msg.interaction]
        self.findings: list[Finding] = []
        self.reported: set[tuple[str, str | None, str]] = set()  # identifier problems reported
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.unsaid: dict[str, list[str]] = {}  # Conversion.unsaid
        self.oid = source.oid
        sender = next((ext for _, ext in msg.sender if ext), "")
        self.inst = source.institution or org_code or sender
        if not self.inst:
            raise MappingError("no institution: SourceInfo.institution is empty and the message names no "
                               "organisation or sending device", code="AE", location="/*/sender",
                               rule="v3.institution-missing")
        if msg.declared_interaction and msg.declared_interaction != msg.interaction:
            self.find("warning", "v3.interaction-id-mismatch",
                      f"interactionId says {msg.declared_interaction!r} but the message is {msg.interaction}",
                      "/*/hl7:interactionId/@extension")

    def find(self, severity: str, rule: str, message: str, location: str | None = None) -> None:
        self.findings.append(Finding(severity, rule, message, location))

    def id(self, rtype: str, *keys: object) -> str:
        return stable_id(self.inst, rtype, *keys)

    def default(self, res: dict[str, Any], element: str, value: Any) -> None:
        """``res[element] = value`` because the message does not say (``Conversion.unsaid``)."""
        res[element] = value
        self.unsaid.setdefault(f"{res['resourceType']}/{res['id']}", []).append(element)

    def add(self, res: dict[str, Any]) -> dict[str, str]:
        key = (res["resourceType"], res["id"])
        if key in self.resources:
            merge_into(self.resources[key], res)
        else:
            self.resources[key] = res
        return {"reference": f"{res['resourceType']}/{res['id']}"}

    # identifiers
    def system(self, root: str) -> tuple[str | None, dict[str, Any]]:
        """(system, extra Identifier fields) for an II root."""
        spec = table("identifiers")["roots"].get(root)
        extra: dict[str, Any] = {}
        if spec and spec.get("type"):
            extra["type"] = {"coding": [{"system": table("codes")["identifier_type_system"], "code": spec["type"]}],
                             "text": spec.get("name")}
        if spec and spec.get("scope") == "local":
            suffix = local_suffixes()[spec["local"]]
            if self.oid:
                return f"urn:oid:{self.oid}.{suffix}", extra
            extra["assigner"] = {"display": self.inst}
            return f"urn:oid:{root}", extra
        if root and re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", root):
            return f"urn:oid:{root}", extra
        return None, extra

    def identifier(self, root: str, ext: str, where: str | None = None) -> dict[str, Any] | None:
        """The FHIR Identifier of an II, or None: a filler value or a resident ID number failing
        its check digit is no identifier (``fhir_mapping.identifiers``), reported once per place
        as ``v3.identifier.<placeholder|check-digit>`` with where, never the value."""
        if not ext:
            return None
        problem = key_problem(ext, root)
        if problem is not None:
            if (problem, where, root) not in self.reported:
                self.reported.add((problem, where, root))
                self.find("warning", f"v3.identifier.{problem}",
                          f"identifier (root {root or 'none'}) is a {PROBLEM_TEXT[problem]}: not kept, "
                          "and never a key", where)
            return None
        system, extra = self.system(root)
        ident: dict[str, Any] = {}
        if "type" in extra:
            ident["type"] = extra["type"]
        if system:
            ident["system"] = system
        else:
            self.find("warning", "v3.identifier.root-unknown", f"identifier root {root!r} is not an OID", where)
        ident["value"] = ext
        if "assigner" in extra:
            ident["assigner"] = extra["assigner"]
        return ident


def merge_into(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Fold a second occurrence of one resource into the first (lists concatenated without repeats)."""
    for k, v in new.items():
        if k not in old:
            old[k] = v
        elif isinstance(v, list) and isinstance(old[k], list):
            old[k] += [x for x in v if x not in old[k]]


def coding(system_oid: str, code: str, disp: str = "") -> dict[str, Any]:
    systems = table("codes")["systems"]
    c: dict[str, Any] = {"system": systems.get(system_oid, f"urn:oid:{system_oid}") if system_oid else None,
                         "code": code}
    if not c["system"]:
        del c["system"]
    if disp:
        c["display"] = disp
    return c


def concept(el: etree._Element | None) -> dict[str, Any] | None:
    """A v3 CD (``code``, ``codeSystem``, ``displayName`` element or attribute) as a CodeableConcept."""
    code = attr(el, "code")
    if el is None or not code:
        return None
    d = display(el)
    cc: dict[str, Any] = {"coding": [coding(attr(el, "codeSystem"), code, d)]}
    if d:
        cc["text"] = d
    return cc


def human_name(el: etree._Element | None) -> dict[str, Any] | None:
    text = text_parts(el)
    if not text:
        return None
    return {"text": text, "family": text} if not re.search(r"\s", text) else {"text": text}


def telecoms(el: etree._Element | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if el is None:
        return out
    for it in (q(el, "item") or [el]):
        v = re.sub(r"^(tel|mailto):", "", attr(it, "value")).strip()
        if not v:
            continue
        out.append({"system": "email" if "@" in v else "phone", "value": v})
    return out


def address(el: etree._Element | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if el is None:
        return out
    parts_map = table("codes")["address_parts"]
    for it in (q(el, "item") or [el]):
        a: dict[str, Any] = {}
        for p in it.iter(f"{{{V3}}}part"):
            v = attr(p, "value")
            if not v:
                continue
            field = parts_map.get(attr(p, "type"), "line")
            if field == "line":
                a.setdefault("line", []).append(v)
            elif field not in a:
                a[field] = v
        if a:
            out.append(a)
    return out
