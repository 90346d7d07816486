"""HL7 v2 messages from the synthetic region, deterministic, for tests and benchmarks.

Each visit of ``Region(seed, people)`` becomes the messages its HIS would send: ADT^A04
(outpatient, emergency) or ADT^A01 (inpatient) at the start, an ADT^A08 demographic update, an
ORU^R01 with the visit's laboratory results (one OBR, one OBX per result, ``^`` in units
escaped), and ADT^A03 at discharge for inpatients. Names are Chinese, identifiers are the
institution's record number (``MR``), the resident ID number (``NNCHN``) and the health card
(``HC``), with the identity noise the region carries. ``encoding="gb18030"`` writes MSH-18
``GB18030`` and encodes accordingly.

    for kind, payload, source in iter_messages(Region(seed=7, people=100)): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fhir_mapping.base import SourceInfo

from .region import Institution, Region

_RESIDENT = "urn:oid:2.16.156.10011.1.3"
_HEALTH_CARD = "urn:oid:2.16.156.10011.1.19"
_CLASS = {"AMB": "O", "IMP": "I", "EMER": "E"}
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_CHARSET = {"utf-8": "UNICODE UTF-8", "gb18030": "GB18030"}
_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\",
                          "\r": " ", "\n": " "})


def esc(value: Any) -> str:
    """Text as an HL7 v2 field value (separators escaped)."""
    return "" if value is None else str(value).translate(_ESCAPES)


def dtm(fhir_datetime: str | None) -> str:
    """FHIR date/dateTime -> v2 DTM (2024-03-15T08:30:00+08:00 -> 20240315083000+0800)."""
    if not fhir_datetime:
        return ""
    s = fhir_datetime
    tz = ""
    if len(s) > 10 and (s[-6] in "+-") and s[-3] == ":":
        tz, s = s[-6:].replace(":", ""), s[:-6]
    elif s.endswith("Z"):
        tz, s = "+0000", s[:-1]
    return s.replace("-", "").replace("T", "").replace(":", "").split(".")[0] + tz


def _segments(*segs: str) -> str:
    return "\r".join(segs) + "\r"


def default_doctor(inst: Institution, enc: dict) -> str:
    """XCN of the visit's doctor: every institution's one doctor ``D<n>01^李^医生``."""
    return f"D{inst.n:03d}01^李^医生"


class Builder:
    """Segments of one region's messages; MSH-10 numbered per institution."""

    def __init__(self, region: Region, encoding: str, doctor: Callable[[Institution, dict], str] = default_doctor):
        self.region = region
        self.encoding = encoding
        self.counter: dict[int, int] = {}
        self.doctor = doctor  # (institution, Encounter) -> XCN of PV1-7 and OBR-16

    def inst(self, ref: str | None) -> Institution:
        n = int((ref or "Organization/org-1").rsplit("-", 1)[1])
        return self.region.institutions[n - 1]

    def msh(self, inst: Institution, when: str, mtype: str, structure: str) -> tuple[str, str]:
        k = self.counter[inst.n] = self.counter.get(inst.n, 0) + 1
        control = f"{inst.n:04d}{k:09d}"
        seg = (f"MSH|^~\\&|HIS|{esc(inst.name)}^{inst.oid}^ISO|HUB|REGION|{dtm(when)}||{mtype}^{structure}|"
               f"{control}|P|2.5|||AL|NE||{_CHARSET[self.encoding]}")
        return seg, control

    @staticmethod
    def pid(patient: dict) -> str:
        cx = []
        for ident in patient.get("identifier", []):
            system, value = ident.get("system", ""), esc(ident.get("value"))
            if system == _RESIDENT:
                cx.append(f"{value}^^^^NNCHN")
            elif system == _HEALTH_CARD:
                cx.append(f"{value}^^^^HC")
            elif system.startswith("urn:oid:"):
                cx.append(f"{value}^^^&{system[8:]}&ISO^MR")
        names = []
        for n in patient.get("name", []):
            if n.get("family"):
                names.append(f"{esc(n['family'])}^{esc(''.join(n.get('given', [])))}^^^^^L")
            else:
                names.append(f"{esc(n.get('text', ''))}^^^^^^L")
        addr = ""
        for a in patient.get("address", [])[:1]:
            div = next((e.get("valueCode", "") for e in a.get("extension", [])), "")
            addr = (f"{esc(' '.join(a.get('line', [])))}^^{esc(a.get('city'))}^{esc(a.get('state'))}^"
                    f"{esc(a.get('postalCode'))}^CN^H^^{esc(div)}")
        phones = "~".join(f"{esc(t['value'])}^PRN^CP" for t in patient.get("telecom", []) if t.get("system") == "phone")
        return (f"PID|1||{'~'.join(cx)}||{'~'.join(names)}||{dtm(patient.get('birthDate'))}|"
                f"{_SEX.get(patient.get('gender', ''), 'U')}|||{addr}||{phones}")

    def pv1(self, enc: dict, inst: Institution, discharge: bool) -> str:
        cls = _CLASS.get(enc.get("class", {}).get("code", "AMB"), "O")
        visit = esc(enc["identifier"][0]["value"]) if enc.get("identifier") else ""
        period = enc.get("period", {})
        end = dtm(period.get("end")) if discharge else ""
        f = [""] * 46
        f[1], f[2], f[3] = "1", cls, f"{'住院病区' if cls == 'I' else '门诊'}^^^{esc(inst.name)}"
        f[7] = self.doctor(inst, enc)
        f[19], f[44], f[45] = visit, dtm(period.get("start")), end
        return "PV1|" + "|".join(f[1:]).rstrip("|")

    def encode(self, text: str) -> bytes:
        return text.encode(self.encoding)


def _obx(i: int, obs: dict) -> list[str]:
    out: list[str] = []
    parts = [obs] if "component" not in obs else [dict(c, status=obs.get("status")) for c in obs["component"]]
    for p in parts:
        coding = (p.get("code", {}).get("coding") or [{}])[0]
        code = f"{esc(coding.get('code'))}^{esc(p['code'].get('text') or coding.get('display'))}^LN"
        rr = ""
        for r in p.get("referenceRange", obs.get("referenceRange", []) if p is obs else [])[:1]:
            lo, hi = r.get("low", {}).get("value"), r.get("high", {}).get("value")
            rr = f"{lo}-{hi}" if lo is not None and hi is not None else esc(r.get("text", ""))
        flag = ""
        for it in p.get("interpretation", obs.get("interpretation", []) if p is obs else [])[:1]:
            flag = esc((it.get("coding") or [{}])[0].get("code", ""))
        if "valueQuantity" in p:
            q = p["valueQuantity"]
            vt, value = "NM", esc(q.get("value"))
            units = f"{esc(q.get('code', ''))}^{esc(q.get('unit', ''))}^UCUM"
        elif "valueCodeableConcept" in p:
            c = (p["valueCodeableConcept"].get("coding") or [{}])[0]
            vt, value, units = "CWE", f"{esc(c.get('code'))}^{esc(c.get('display'))}", ""
        elif "valueString" in p:
            vt, value, units = "ST", esc(p["valueString"]), ""
        else:
            continue
        status = {"final": "F", "preliminary": "P", "amended": "C", "corrected": "C"}.get(obs.get("status", "final"), "F")
        when = dtm(obs.get("effectiveDateTime"))
        out.append(f"OBX|{i + len(out)}|{vt}|{code}||{value}|{units}|{rr}|{flag}|||{status}|||{when}")
    return out


def lab_results(obs: list[dict]) -> list[dict]:
    """The laboratory Observations of a visit: what its ORU^R01 carries."""
    return [o for o in obs if any(c.get("code") == "laboratory" for cat in o.get("category", [])
                                  for c in cat.get("coding", []))]


def visit_messages(b: Builder, patient: dict, enc: dict, obs: list[dict], *, updates: bool = True,
                   kinds: tuple[str, ...] = ("ADT", "ORU")) -> Iterator[tuple[str, bytes, SourceInfo]]:
    """The messages of one visit (its Encounter and Observations) about ``patient``."""
    inst = b.inst(enc.get("serviceProvider", {}).get("reference"))
    src = SourceInfo(institution=inst.id, oid=inst.oid, name=inst.name, feed="his-v2")
    start = enc.get("period", {}).get("start")
    inpatient = enc.get("class", {}).get("code") == "IMP"
    pid, pv1 = b.pid(patient), b.pv1(enc, inst, discharge=False)
    if "ADT" in kinds:
        trig = "A01" if inpatient else "A04"
        msh, _ = b.msh(inst, start, f"ADT^{trig}", "ADT_A01")
        yield f"ADT^{trig}", b.encode(_segments(msh, f"EVN|{trig}|{dtm(start)}", pid, pv1)), src
        if updates:
            msh, _ = b.msh(inst, start, "ADT^A08", "ADT_A01")
            yield "ADT^A08", b.encode(_segments(msh, f"EVN|A08|{dtm(start)}", pid, pv1)), src
    labs = lab_results(obs)
    if "ORU" in kinds and labs:
        when = labs[0].get("effectiveDateTime") or start
        msh, control = b.msh(inst, when, "ORU^R01", "ORU_R01")
        visit = enc["identifier"][0]["value"] if enc.get("identifier") else control
        obr = (f"OBR|1|{esc(visit)}-L^HIS|{esc(visit)}-L^LIS|LAB^检验报告^L|||{dtm(when)}|||||||||"
               f"{b.doctor(inst, enc)}||||||{dtm(when)}|||F")
        obx: list[str] = []
        for o in labs:
            obx += _obx(len(obx) + 1, o)
        yield "ORU^R01", b.encode(_segments(msh, pid, pv1, f"ORC|RE|{esc(visit)}-L^HIS|{esc(visit)}-L^LIS", obr, *obx)), src
    if "ADT" in kinds and inpatient and enc.get("period", {}).get("end"):
        end = enc["period"]["end"]
        msh, _ = b.msh(inst, end, "ADT^A03", "ADT_A03")
        yield "ADT^A03", b.encode(_segments(msh, f"EVN|A03|{dtm(end)}", pid, b.pv1(enc, inst, True))), src


def iter_messages(region: Region, *, encoding: str = "utf-8", updates: bool = True,
                  kinds: tuple[str, ...] = ("ADT", "ORU")) -> Iterator[tuple[str, bytes, SourceInfo]]:
    """(kind, payload, source) for every visit of the region, in the region's order."""
    if encoding not in _CHARSET:
        raise ValueError(f"encoding must be one of {sorted(_CHARSET)}")
    b = Builder(region, encoding)
    patients: dict[str, dict] = {}
    pending: list[dict] = []

    def flush() -> Iterator[tuple[str, bytes, SourceInfo]]:
        if not pending:
            return
        enc, obs = pending[0], pending[1:]
        pending.clear()
        patient = patients.get(enc["subject"]["reference"].split("/", 1)[1])
        if patient is not None:
            yield from visit_messages(b, patient, enc, obs, updates=updates, kinds=kinds)

    for res in region.iter_resources():
        rtype = res["resourceType"]
        if rtype == "Patient":
            patients[res["id"]] = res
        elif rtype == "Encounter":
            yield from flush()
            pending.append(res)
        elif rtype == "Observation" and pending:
            pending.append(res)
    yield from flush()


def messages(seed: int = 7, people: int = 100, **kw: Any) -> list[tuple[str, bytes, SourceInfo]]:
    return list(iter_messages(Region(seed=seed, people=people), **kw))
