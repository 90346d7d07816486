"""Patients' privacy preferences (FHIR ``Consent``), as the access policy applies them.

A Consent counts when it is ``active``, names its Patient (``patient``) and its top-level
provision denies (``provision.type = deny``). What it denies:

- **Sharing beyond the recording institution**: a provision with no actor and no category. Only
  callers of the Consent's ``organization`` (the institution that recorded it) see the
  Patient's data; a caller of any other institution does not.
- **Named institutions**: ``provision.actor[].reference`` naming an Organization (its id
  ``Organization/H0001`` or its identifier value): callers of those institutions do not see it.
- **Sensitive categories**: ``provision.securityLabel`` (e.g. ``PSY``, ``HIV``, ``SUD`` of
  v3-ActCode), ``provision.class`` or ``provision.code`` codes: resources about the Patient
  carrying one of those codes (in ``meta.security`` or anywhere as a ``code``) are hidden from
  callers of other institutions than the recording one.

Break the glass (purpose ``ETREAT`` or ``BTG``, for the roles that may) sets a consent aside,
and the access is audited as always. The hub's own reads (``SYSTEM``) are not judged.

The rules come from the event store: every current Consent is read again when a Consent was
written since the last read. Whether one was is asked at most every quarter second (one indexed
query), and at once after a Consent written through this process; another server process sees
a new Consent within that quarter second. That suits a region where consents are few next to
records; a region with millions of them would keep them in a read model instead.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

_CODE = re.compile(rb'"code"\s*:\s*"([^"]{1,64})"')


@dataclass
class ConsentRule:
    consent: str  # Consent/id
    organization: str | None  # the recording institution
    everyone_else: bool = False  # no sharing beyond the recording institution
    institutions: set[str] = field(default_factory=set)  # denied institutions
    codes: set[str] = field(default_factory=set)  # denied categories

    def denies(self, institution: str | None, resource: bytes) -> bool:
        own = institution is not None and institution == self.organization
        if institution is not None and institution in self.institutions:
            return True
        if own:
            return False
        if self.everyone_else:
            return True
        if self.codes:
            found = {m.decode() for m in _CODE.findall(resource)}
            return bool(found & self.codes)
        return False


def _institution_of(ref: Any) -> str | None:
    if not isinstance(ref, dict):
        return None
    r = ref.get("reference")
    if isinstance(r, str) and "Organization/" in r:
        return r.rsplit("Organization/", 1)[1] or None
    ident = ref.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("value"), str):
        return ident["value"]
    return None


def rule_of(d: dict) -> tuple[str, ConsentRule] | None:
    """(Patient id, rule) of an active deny Consent, else None."""
    if d.get("status") != "active":
        return None
    patient = ((d.get("patient") or {}).get("reference") or "")
    if "Patient/" not in patient:
        return None
    provision = d.get("provision") or {}
    if provision.get("type") != "deny":
        return None
    orgs = [_institution_of(o) for o in d.get("organization") or ()]
    rule = ConsentRule(f"Consent/{d.get('id')}", next((o for o in orgs if o), None))
    for actor in provision.get("actor") or ():
        inst = _institution_of((actor or {}).get("reference"))
        if inst:
            rule.institutions.add(inst)
    for label in provision.get("securityLabel") or ():
        if isinstance(label, dict) and isinstance(label.get("code"), str):
            rule.codes.add(label["code"])
    for concept in [*(provision.get("class") or ()), *(provision.get("code") or ())]:
        for coding in (concept or {}).get("coding") or ([concept] if "code" in (concept or {})
                                                         else ()):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                rule.codes.add(coding["code"])
    rule.everyone_else = not rule.institutions and not rule.codes
    return patient.rsplit("Patient/", 1)[1], rule


FRESH_S = 0.25  # how long a check that no Consent was written holds


class ConsentIndex:
    """Patient id -> the deny rules of its active Consents, read from the store."""

    def __init__(self, store: Any):
        self.store = store
        self._lock = threading.Lock()
        self._seen: int | None = None  # the newest Consent version's notification id
        self._checked = 0.0  # when that was last asked
        self._rules: dict[str, list[ConsentRule]] = {}

    def rules(self, patient: str) -> list[ConsentRule]:
        self._refresh()
        return self._rules.get(patient, [])

    def changed(self) -> None:
        """A Consent was just written: ask again before the next judgement."""
        self._checked = 0.0

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < FRESH_S:
            return
        self._checked = now
        newest = self.store.history(rtype="Consent", limit=1)
        seen = newest[0].nid if newest else 0
        if seen == self._seen:
            return
        with self._lock:
            if seen == self._seen:
                return
            current: dict[str, bytes] = {}
            before = None
            while True:  # every version, newest first: the first seen of each is current
                rows = self.store.history(rtype="Consent", before_nid=before, limit=1000)
                for row in rows:
                    if row.rid not in current:
                        current[row.rid] = b"" if row.kind == "deleted" else row.state
                if len(rows) < 1000:
                    break
                before = rows[-1].nid
            rules: dict[str, list[ConsentRule]] = {}
            for state in current.values():
                if not state:
                    continue
                try:
                    found = rule_of(orjson.loads(state.partition(b"\n")[2]))
                except orjson.JSONDecodeError:
                    continue
                if found is not None:
                    rules.setdefault(found[0], []).append(found[1])
            self._rules, self._seen = rules, seen
