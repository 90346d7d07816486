"""What one conversion accumulates: the source, the sender's keys, the resources made so far, findings."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir_mapping.base import Finding, MappingError, SourceInfo
from fhir_mapping.identifiers import key_problem
from fhir_mapping.ids import local_suffixes, patient_id, stable_id

from . import datatypes as dt
from .message import Msg

_LOCAL = local_suffixes()
# the same record numbers and practitioner ids come back message after message: check each once
_key_problem = lru_cache(maxsize=1 << 16)(key_problem)
_PROBLEMS = {"placeholder": "a placeholder (filler) value",
             "check-digit": "a resident ID number failing the GB 11643 check (length, region, birth date or "
                            "check character)"}


class Ctx:
    __slots__ = ("msg", "source", "inst", "oid", "org_ref", "findings", "_res", "kind", "trigger",
                 "patient_ref", "patient_key", "record_birth", "encounter_ref", "visit", "meta", "spec")

    def __init__(self, msg: Msg, source: SourceInfo, kind: str, trigger: str, spec: dict):
        self.msg, self.source, self.kind, self.trigger, self.spec = msg, source, kind, trigger, spec
        self.findings: list[Finding] = list(msg.findings)
        self._res: dict[tuple[str, str], dict[str, Any]] = {}
        msh = msg.msh
        ns, uid, utype = dt.hd(msh.rep(4))
        self.oid = source.oid or dt.oid_of(uid, utype) or ""
        self.inst = source.institution or ns or self.oid or dt.comp(msh.rep(3), 1)
        if not self.inst:
            raise MappingError("no sending institution: SourceInfo.institution is empty and MSH-4 "
                               "(sending facility) is empty", code="AE", location="MSH-4",
                               rule="v2.msh4.missing")
        self.meta = {"source": f"urn:oid:{self.oid}"} if self.oid else None
        self.patient_ref: dict | None = None
        self.patient_key: str | None = None
        # PID-7 of the patient being read: a resident ID number a generation away from it is
        # someone else's (fhir_mapping.identifiers.someone_elses)
        self.record_birth: str | None = None
        self.encounter_ref: dict | None = None
        self.visit = ""  # the scope of order and result keys (``visit_scope``)
        self.org_ref = self._organization(ns)

    # -- ids and systems -----------------------------------------------------------------------
    def id(self, rtype: str, *keys: object) -> str:
        # a patient by record number: the id every feed of the institution uses (fhir_mapping.ids),
        # so a database view's rows meet this resource (a visit's: encounter.encounter)
        if len(keys) == 1 and rtype == "Patient":
            return patient_id(self.inst, str(keys[0]))
        return stable_id(self.inst, rtype, *keys)

    def visit_scope(self) -> str:
        """The visit an order or report belongs to ('' without PV1): order numbers are scoped by it and
        by the patient, since senders reuse them from visit to visit."""
        return self.visit

    def local_system(self, what: str) -> str | None:
        """``urn:oid:<institution oid>.<n>`` for the institution's own numbers of one kind."""
        suffix = _LOCAL.get(what, what if what.isdigit() else None)
        return f"urn:oid:{self.oid}.{suffix}" if self.oid and suffix else None

    def usable(self, value: str | None, system: str | None, loc: str, what: str = "identifier") -> bool:
        """Whether ``value`` may key a resource and be kept as an identifier value
        (``fhir_mapping.identifiers.key_problem``); when not, a finding names the field, never the value."""
        problem = _key_problem(value, system)
        if problem is None:
            return True
        if problem != "missing":
            self.find("warning", f"v2.identifier.{problem}",
                      f"{what} is {_PROBLEMS.get(problem, problem)}: neither a key nor kept as an identifier", loc)
        return False

    def local_identifier(self, what: str, value: str, type_code: str | None = None,
                         loc: str | None = None) -> dict | None:
        v = dt.clean_id_value(value)
        if v is None:
            return None
        if loc is not None and not self.usable(v, None, loc, f"{what} number"):
            return None
        ident: dict[str, Any] = {}
        sysuri = self.local_system(what)
        if sysuri:
            ident["system"] = sysuri
        ident["value"] = v
        if type_code:
            ident["type"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                         "code": type_code}]}
        if not sysuri:
            ident["assigner"] = {"display": self.inst}
        return ident

    # -- resources -----------------------------------------------------------------------------
    def add(self, res: dict[str, Any]) -> dict[str, str]:
        """Keep ``res`` (a later resource with the same type and id replaces the earlier one's
        content, merging nothing) and return a reference to it."""
        if self.meta is not None and "meta" not in res:
            res["meta"] = self.meta
        self._res[(res["resourceType"], res["id"])] = res
        return {"reference": f"{res['resourceType']}/{res['id']}"}

    def get(self, rtype: str, rid: str) -> dict | None:
        return self._res.get((rtype, rid))

    def resources(self) -> list[dict[str, Any]]:
        return list(self._res.values())

    def find(self, severity: str, rule: str, message: str, location: str | None = None) -> None:
        self.findings.append(_finding(severity, rule, message, location))

    def _organization(self, ns: str) -> dict[str, str]:
        org: dict[str, Any] = {"resourceType": "Organization", "id": stable_id("Organization", self.oid or self.inst)}
        if self.oid:
            org["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{self.oid}"}]
        else:
            org["identifier"] = [{"value": self.inst}]
        org["active"] = True
        name = self.source.name or ns or self.inst
        if name:
            org["name"] = name
        return self.add(org)

    # -- errors --------------------------------------------------------------------------------
    @staticmethod
    def error(reason: str, location: str, rule: str) -> MappingError:
        return MappingError(reason, code="AE", location=location, rule=rule)


def _finding(severity: str, rule: str, message: str, location: str | None) -> Finding:
    return Finding(severity=severity, rule=rule, message=message, location=location)
