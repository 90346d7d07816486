"""Patients' privacy preferences (FHIR R4 ``Consent``), as the access policy applies them.

**Which Consents count.** ``status`` ``active``, a ``patient`` reference, and in force now: not
dated in the future (``dateTime``; R4 has no ``Consent.period``, the provisions' periods say
when). Its recording institution is the one its version was written under (its ``source``;
the write checks that ``organization`` names it), else, written by an administrator of no
institution, its ``organization``. A deny never hides a record from the institution that
recorded it (``hub.access.policy``).

**The provisions.** The base ``provision`` says ``permit`` or ``deny`` (``type``; without one,
``policyRule`` ``OPTIN`` reads as permit and ``OPTOUT`` as deny, any other rule or none as
permit: what such a base means is not known, but its nested denies apply whatever it is). Each
nested ``provision`` is an exception to the one holding it (of the opposite type when it names
none), nested to any depth. A provision applies to an access when all of its conditions hold:

- ``actor[].reference``: the caller's institution is one named (an Organization, by its id
  ``Organization/H0001``, a version of it, absolute on this server's base, or by identifier
  value). A provision naming no actor applies to every caller, except that a ``deny`` naming
  no actor spares the recording institution (a patient's "no sharing" means beyond the place
  that recorded it). A caller that names no institution (a token without the claim, a console
  user without one) could be of any: a ``deny`` naming institutions applies to it, a
  ``permit`` naming them does not, and no ``deny`` spares it.
- ``securityLabel``, ``class``, ``code``: the resource carries one of those codes (in
  ``meta.security`` or anywhere as a ``code``), or its type is a ``class`` code.
- ``period``: now is inside it.
- ``purpose``: the caller's purpose of use (``X-Purpose-Of-Use``) is one listed.
- ``action``: it lists ``access``, ``use`` or ``disclose`` (what a reader does); a provision
  only about ``collect`` or ``correct`` does not apply to reads.
- ``data[].reference``: the resource is one named, as ``Type/id``, a version of it (the
  resource, every version) or absolute on this server's base (whatever ``meaning``:
  ``related``, ``dependents`` and ``authoredby`` are read as ``instance``).

The deepest provision that applies decides (a ``deny`` among exceptions that apply at one level
wins); when the base provision does not apply the Consent decides nothing. Not judged:
``dataPeriod``, an actor that is not an Organization, and a reference (``actor``, ``data``)
that names nothing of this server (another server's, a contained one); a provision holding one
applies when it denies (its other conditions holding) and never when it permits, so what cannot
be checked hides rather than shows. Several Consents of one Patient: any that denies hides the
resource; a permit does not undo another Consent's deny. ``verification``, ``scope``,
``category`` and ``source`` are not read.

Examples: a base ``deny`` with nothing else (no sharing beyond the recording institution); a
base ``deny`` naming ``Organization/H2`` (that institution sees nothing); a base ``permit`` with
a nested ``deny`` of the ``securityLabel`` ``PSY`` (psychiatric records hidden from other
institutions); a base ``deny`` with a nested ``permit`` for ``Organization/H2`` (shared with that
institution only).

Break the glass (purpose ``ETREAT`` or ``BTG``, for the roles that may) sets a consent aside,
and the access is audited as always. The hub's own reads (``SYSTEM``) are not judged, nor are the
patient's own: a Consent governs disclosure to others, so a token whose user (``fhirUser``) is
the Patient in context is not held to that Patient's Consents (``hub.access.policy``); one only
launched in its context (a clinician's app) is.

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

from hub.core.access import own_base
from hub.core.fhirtime import parse_range
from projections.search.plan import local_target

_CODE = re.compile(rb'"code"\s*:\s*"([^"]{1,64})"')
PERMIT, DENY = "permit", "deny"
READING_ACTIONS = frozenset({"access", "use", "disclose"})
_ALWAYS = (float("-inf"), float("inf"))


@dataclass(frozen=True)
class Access:
    """What is judged: who asks (institution, purpose of use) for which resource, and when."""

    institution: str | None
    purpose: str | None
    rtype: str
    rid: str
    resource: bytes
    now_us: float = field(default_factory=lambda: time.time() * 1e6)

    def codes(self) -> set[str]:
        return {m.decode() for m in _CODE.findall(self.resource)}


@dataclass
class Provision:
    type: str  # permit | deny
    institutions: set[str] = field(default_factory=set)  # actors (none: every caller)
    codes: set[str] = field(default_factory=set)  # securityLabel, class and code codes
    classes: set[str] = field(default_factory=set)  # class codes (a resource type matches)
    purposes: set[str] = field(default_factory=set)
    data: set[str] = field(default_factory=set)  # Type/id
    period: tuple[float, float] = _ALWAYS
    reads: bool = True  # its actions (if any) include reading
    unjudged: bool = False  # a condition not judged here
    nested: list[Provision] = field(default_factory=list)

    def applies(self, access: Access, organization: str | None, codes: set[str]) -> bool:
        lo, hi = self.period
        if not lo <= access.now_us < hi or not self.reads:
            return False
        inst = access.institution
        if self.institutions:
            # no institution: it cannot be told apart from the one named, so a deny holds for
            # it and a permit does not (what cannot be checked hides rather than shows)
            if inst is None and self.type == PERMIT or inst is not None \
                    and inst not in self.institutions:
                return False
        elif self.type == DENY and inst is not None and inst == organization:
            return False
        if self.purposes and access.purpose not in self.purposes:
            return False
        if (self.codes or self.classes) and not (codes & self.codes
                                                  or access.rtype in self.classes):
            return False
        if self.data and f"{access.rtype}/{access.rid}" not in self.data:
            return False
        return not (self.unjudged and self.type == PERMIT)

    def decide(self, access: Access, organization: str | None, codes: set[str]) -> str | None:
        """permit or deny when this provision applies (an exception that applies decides),
        else None."""
        if not self.applies(access, organization, codes):
            return None
        found = {p.decide(access, organization, codes) for p in self.nested} - {None}
        if found:
            return DENY if DENY in found else PERMIT
        return self.type

    def wants_codes(self) -> bool:
        return bool(self.codes or self.classes) or any(p.wants_codes() for p in self.nested)


@dataclass
class ConsentRule:
    consent: str  # Consent/id
    organization: str | None  # the recording institution
    provision: Provision
    in_force: tuple[float, float] = _ALWAYS

    def decide(self, access: Access) -> str | None:
        lo, hi = self.in_force
        if not lo <= access.now_us < hi:
            return None
        codes = access.codes() if self.provision.wants_codes() else set()
        return self.provision.decide(access, self.organization, codes)

    def denies(self, access: Access) -> bool:
        return self.decide(access) == DENY


Bases = tuple[str | None, ...]  # this server's base URLs, each ending in a slash


def _target(ref: Any, bases: Bases) -> tuple[str, str] | None:
    """(type, id) of a reference to a resource of this server: ``Type/id``, a version of it
    (``Type/id/_history/2``), or absolute on one of ``bases``; None for anything else (another
    server's, a contained or logical one), which a caller of this judges as not understood."""
    return local_target(ref, bases) if isinstance(ref, str) else None


def _institution_of(ref: Any, bases: Bases) -> str | None:
    if not isinstance(ref, dict):
        return None
    r = ref.get("reference")
    if r is not None:
        target = _target(r, bases)
        return target[1] if target is not None and target[0] == "Organization" else None
    ident = ref.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("value"), str):
        return ident["value"]
    return None


def _codes(items: Any) -> set[str]:
    """The codes of Codings or CodeableConcepts."""
    out: set[str] = set()
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        for coding in item.get("coding") or ([item] if "code" in item else ()):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                out.add(coding["code"])
    return out


def _period(p: Any) -> tuple[float, float] | None:
    """[start, end) of a Period in µs; None when malformed."""
    if not isinstance(p, dict):
        return _ALWAYS
    try:
        lo = parse_range(p["start"])[0] if isinstance(p.get("start"), str) else float("-inf")
        hi = parse_range(p["end"])[1] if isinstance(p.get("end"), str) else float("inf")
    except ValueError:
        return None
    return lo, hi


def _provision(d: dict, type_: str | None, bases: Bases) -> Provision | None:
    if type_ not in (PERMIT, DENY):
        return None
    period = _period(d.get("period"))
    p = Provision(type_, period=period or _ALWAYS, unjudged=period is None)
    for actor in d.get("actor") or ():
        inst = _institution_of((actor or {}).get("reference"), bases)
        if inst:
            p.institutions.add(inst)
        else:
            p.unjudged = True
    p.codes = _codes(d.get("securityLabel")) | _codes(d.get("class")) | _codes(d.get("code"))
    p.classes = _codes(d.get("class"))
    p.purposes = _codes(d.get("purpose"))
    actions = _codes(d.get("action"))
    p.reads = not actions or bool(actions & READING_ACTIONS)
    for item in d.get("data") or ():
        # a version named is the resource named: a reader is shown a record (its current
        # version and its history), and hiding one version would leave the same record shown
        target = _target(((item or {}).get("reference") or {}).get("reference"), bases)
        if target is not None:
            p.data.add("/".join(target))
        else:
            p.unjudged = True
    if d.get("dataPeriod"):
        p.unjudged = True
    opposite = PERMIT if type_ == DENY else DENY
    for child in d.get("provision") or ():
        if isinstance(child, dict):
            nested = _provision(child, child.get("type") or opposite, bases)
            if nested is not None:
                p.nested.append(nested)
    return p


def organizations(d: dict, bases: Bases = ()) -> list[str | None]:
    """The institutions a Consent's ``organization`` names (None for one naming no
    Organization of this server)."""
    bases = (*bases, own_base())
    orgs = d.get("organization")
    return [_institution_of(o, bases) for o in orgs] if isinstance(orgs, list) else []


def patient_id(d: dict, bases: Bases = ()) -> str | None:
    """The id of the Patient a Consent is of, None when it names none. A version of the Patient
    (Patient/x/_history/2) is the same person; a Patient written otherwise (on another base) is
    taken by its id: a Consent is never set aside for how it names its patient, so what cannot
    be told hides rather than shows."""
    patient = ((d.get("patient") or {}).get("reference") or "")
    if not isinstance(patient, str) or "Patient/" not in patient:
        return None
    target = _target(patient, (*bases, own_base()))
    return target[1] if target is not None and target[0] == "Patient" \
        else patient.rsplit("Patient/", 1)[1].split("/", 1)[0]


def rule_of(d: dict, bases: Bases = (), writer: str | None = None
            ) -> tuple[str, ConsentRule] | None:
    """(Patient id, rule) of an active Consent, else None. ``bases``: this server's base URLs
    (with ``HUB_BASE_URL``'s), on which an absolute reference is one of its own. ``writer``: the
    institution its version was written under (``source``), which is its recording
    institution whatever its ``organization`` claims (one stored before that was checked on
    write names another's; only an administrator naming none writes for any)."""
    if d.get("status") != "active":
        return None
    pid = patient_id(d, bases)
    if pid is None:
        return None
    bases = (*bases, own_base())
    base = d.get("provision") or {}
    if not isinstance(base, dict):
        return None
    policy = _codes([d.get("policyRule")]) if isinstance(d.get("policyRule"), dict) else set()
    # a base of no type under another rule (or none) decides nothing of its own, but its
    # nested denies hold whatever it means: read as a permit, what it holds are exceptions
    fallback = DENY if "OPTOUT" in policy else PERMIT
    provision = _provision(base, base.get("type") or fallback, bases)
    if provision is None:
        return None
    lo = float("-inf")
    if isinstance(d.get("dateTime"), str):
        try:
            lo = parse_range(d["dateTime"])[0]
        except ValueError:
            return None
    recorder = writer or next((o for o in organizations(d, bases) if o), None)
    return pid, ConsentRule(f"Consent/{d.get('id')}", recorder, provision, (lo, float("inf")))


FRESH_S = 0.25  # how long a check that no Consent was written holds


class ConsentIndex:
    """Patient id -> the rules of its active Consents, read from the store."""

    def __init__(self, store: Any, base: str | None = None):
        """``base``: this server's FHIR base URL (an absolute reference on it is its own)."""
        self.store = store
        self.bases: Bases = (base.rstrip("/") + "/",) if base else ()
        self._lock = threading.Lock()
        self._seen: int | None = None  # the newest Consent version's notification id
        self._checked = 0.0  # when that was last asked
        self._rules: dict[str, list[ConsentRule]] = {}

    def rules(self, patient: str) -> list[ConsentRule]:
        self._refresh()
        return self._rules.get(patient, [])

    def any(self) -> bool:
        """Is some patient's access restricted by a Consent?"""
        self._refresh()
        return bool(self._rules)

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
                head, _, body = state.partition(b"\n")
                try:
                    source = orjson.loads(head).get("source") or {}
                    writer = source.get("institution") if isinstance(source, dict) else None
                    found = rule_of(orjson.loads(body), self.bases,
                                    writer if isinstance(writer, str) and writer else None)
                except (orjson.JSONDecodeError, AttributeError):
                    continue
                if found is not None:
                    rules.setdefault(found[0], []).append(found[1])
            self._rules, self._seen = rules, seen
