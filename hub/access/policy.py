"""Who may do what: roles and SMART scopes, judged for every action the repository is asked.

The token says who the caller is (``hub.api.caller`` turns it into an ``Actor``); this policy
decides:

- **No token, no access.** An anonymous caller gets 401 for everything the repository does.
- **Scopes.** Every FHIR interaction needs a granted SMART scope with its letter on the type
  (read, vread and history ``r``; search ``s``; create ``c``; update ``u``; delete ``d``); a
  history or search across all types needs a ``*`` scope.
- **Roles.** Writes come from connectors, stewards and administrators only (a clinician reads);
  the audit is read by auditors and administrators only (and written by the hub alone, see
  ``hub.repository.APPEND_ONLY``); identity decisions are a data steward's; the shared record
  (``$everything``, ``$timeline``) is read by clinicians and administrators, a clinician only
  with a purpose of use, and break-the-glass (``ETREAT``, ``BTG``) only by a role that may use it.
- **Bulk export.** ``$export`` is a backend service's: a ``system/`` scope granting ``r`` on
  each type exported, whatever the roles; a token with a patient context or a user never
  exports, whatever its scopes.
- **Query-restricted scopes.** A scope with a query (``patient/Observation.rs?category=
  laboratory``) grants its letters only on the resources its query selects
  (``hub.access.scopequery``: token parameters and ``_id``; a query it cannot judge selects
  nothing). Several scopes on one type are OR'ed, each by its own limits (``_admitted``): a
  ``user/`` or ``system/`` one without a query wins; a ``patient/`` one admits only the
  patient's compartment, so beside ``user/Observation.rs?category=laboratory`` it adds the
  patient's own Observations to everyone's laboratory results, never lifting the query. What
  is handed out (read, vread, history, search results, ``_include``, ``$everything``) is shown
  when a scope granting ``r`` or ``s`` on its type admits it (what one may search for one may
  read by ``_id``, and the reverse); a search is narrowed in its plan by the queries of its ``s``
  scopes and a ``patient/`` one's compartment, so its pages and totals count only what is
  shown. A resource not selected is refused on read as any hidden resource is, 403 (the caller
  names the id; a 404 would tell a deleted one from a hidden one no better, and the consent and
  patient-context refusals answer 403 too). A create or update must store a resource a ``c`` or ``u`` scope selects, an update or
  delete must replace one a ``u`` or ``d`` scope selects, else 403; a conditional update or
  delete, whose target is found later, needs a scope without a query.
- **Patient context.** A ``patient/`` scope admits the Patient in context and its compartment,
  nothing else: a token whose scopes are all ``patient/`` ones sees only that.
- **Consent** (``hub.access.consent``) holds for everyone but the patient it is of: a token
  whose user (``fhirUser``) is the Patient in context reads its own record whatever its own
  consents say (they govern disclosure to others). A clinician's app in the patient's context
  is another reader and held to them. Nor do they hide a record from the institution that
  recorded it (its first version's). A Consent is written under its recording institution,
  which its ``organization`` names; a connector writes one only of its institution's Patients.
- **Institutions' work lists.** What an institution sent that the hub kept aside (quarantine
  entries, its connectors' dead letters) is shown to that institution's people and to the
  region's, of no institution (``bound_to``); its payload, a patient's data, only to a reader
  of that Patient (``hub.console.kept``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson

from hub.access.consent import Access, ConsentIndex, organizations, patient_id
from hub.access.scopequery import ScopeQuery, compile_query, search_groups
from hub.auth.scopes import Scope, parse_scopes, permits
from hub.core.access import Action, Actor, Owner, names_patient, own_base, patients_in
from hub.core.errors import LOGIN_REQUIRED, forbidden, unauthenticated
from projections.search.compartment import (
    compartment_group,
    compartment_keys,
    patient_compartment,
)
from projections.search.extract import Ref, extract
from projections.search.query import Criterion, TokenValue

ROLES = ("connector", "clinician", "steward", "auditor", "admin")
WRITERS = frozenset({"connector", "steward", "admin"})
AUDITORS = frozenset({"auditor", "admin"})
EMERGENCY = frozenset({"ETREAT", "BTG"})  # break-the-glass purposes of use
MAY_BREAK_GLASS = frozenset({"clinician", "admin"})
# in the Patient compartment, but not the patient's data to disclose: the record of who read
# it, which only auditors and administrators read; a Consent hiding it would hide from them
# the accesses to opted-out patients, break-the-glass reads above all
NOT_THE_PATIENTS = frozenset({"AuditEvent"})

LETTER = {
    "read": "r", "vread": "r", "history-instance": "r", "history-type": "r", "history-system": "r",
    "search-type": "s", "search-system": "s", "create": "c", "update": "u",
    "conditional-update": "u", "patch": "u", "conditional-patch": "u", "delete": "d",
    "conditional-delete": "d",
}

# what anyone signed in may do whatever their roles: end their own console session (a clinician,
# or a user whose roles open no page, was kept signed in)
ANY_SIGNED_IN = frozenset({"$console-logout"})

# operation -> (roles that may call it, scope letter it needs, on which type)
OPERATIONS: dict[str, tuple[frozenset[str], str | None, str | None]] = {
    "$everything": (frozenset({"clinician", "admin"}), "r", "Patient"),
    "$timeline": (frozenset({"clinician", "admin"}), "r", "Patient"),
    "$match": (frozenset({"clinician", "steward", "admin", "connector"}), "s", "Patient"),
    "$resolve-identifier": (frozenset({"clinician", "steward", "admin"}), "s", "Patient"),
    "$link": (frozenset({"steward", "admin"}), None, None),
    "$unlink": (frozenset({"steward", "admin"}), None, None),
    "$merge": (frozenset({"steward", "admin"}), None, None),
    "$unmerge": (frozenset({"steward", "admin"}), None, None),
    "$not-duplicate": (frozenset({"steward", "admin"}), None, None),
    "$mpi-review": (frozenset({"steward", "admin"}), None, None),
    "$mpi-review-accept": (frozenset({"steward", "admin"}), None, None),
    "$mpi-review-reject": (frozenset({"steward", "admin"}), None, None),
    "$quality-report": (frozenset({"steward", "auditor", "admin"}), None, None),
    "$unmapped-codes": (frozenset({"steward", "admin"}), None, None),
    # the v3 service's interactions, supported and received (GET /v3/metadata): its senders too
    "$v3-metadata": (frozenset({"connector", "steward", "admin"}), None, None),
    # the operator console's pages and actions (hub.console)
    "$console-overview": (frozenset({"steward", "auditor", "admin"}), None, None),
    "$console-quarantine": (frozenset({"steward", "admin"}), None, None),
    "$console-quarantine-replay": (frozenset({"steward", "admin"}), None, None),
    "$console-audit": (frozenset({"auditor", "admin"}), None, None),
    "$console-audit-review": (frozenset({"auditor", "admin"}), None, None),
    "$console-terminology": (frozenset({"clinician", "steward", "auditor", "admin"}), None, None),
    "$console-record": (frozenset({"clinician", "admin"}), None, None),
    "$console-mapping": (frozenset({"steward", "admin"}), None, None),
    "$console-quality": (frozenset({"steward", "auditor", "admin"}), None, None),
    "$console-quality-document": (frozenset({"steward", "admin"}), None, None),
    "$console-connectors": (frozenset({"steward", "admin"}), None, None),
    "$console-connectors-replay": (frozenset({"steward", "admin"}), None, None),
}
# terminology operations: any role, with a read scope on the terminology resource
TERMINOLOGY = {"$lookup", "$validate-code", "$subsumes", "$expand", "$translate"}
SHARED_RECORD = frozenset({"$everything", "$timeline"})
TERMINOLOGY_TYPES = frozenset({"CodeSystem", "NamingSystem", "ConceptMap"})


@lru_cache(maxsize=4096)
def scopes_of(texts: tuple[str, ...]) -> tuple[Scope, ...]:
    """The parsed scopes of a token (a token's scopes are few and repeat across requests)."""
    return tuple(s for s in parse_scopes(" ".join(texts)) if s.is_resource)


class AccessPolicy:
    """The policy of a hub with access control on; ``consents``: the patients' privacy
    preferences (``hub.access.consent``), applied to everything handed out."""

    def __init__(self, consents: ConsentIndex | None = None, base: str | None = None):
        """``base``: this server's FHIR base URL, its tokens' audience (a token's absolute
        ``fhirUser`` on it names a Patient of this server)."""
        self.consents = consents
        self.base = base.rstrip("/") + "/" if base else None
        self.bases: tuple[str | None, ...] = (self.base,) if self.base else ()

    def check(self, actor: Actor, action: Action) -> None:
        if actor.kind == "system":
            return
        if actor.kind == "anonymous":
            raise unauthenticated(LOGIN_REQUIRED)
        if actor.purpose in EMERGENCY and not actor.roles & MAY_BREAK_GLASS:
            raise forbidden(f"Purpose of use {actor.purpose} (break the glass) is not open to "
                            "this caller's roles")
        if action.interaction == "operation":
            self._operation(actor, action)
            return
        letter = LETTER.get(action.interaction)
        if letter is None:
            raise forbidden(f"{action.interaction} is not an interaction this hub grants")
        rtype = action.rtype or "*"
        if letter in "cud" and not actor.roles & WRITERS:
            raise forbidden("Writes come from connectors, data stewards and administrators; "
                            "this caller's roles do not write")
        if rtype == "AuditEvent" and not actor.roles & AUDITORS:
            raise forbidden("The audit is read by auditors and administrators only")
        granting = permits(scopes_of(actor.scopes), letter, rtype)
        if not granting:
            raise forbidden(f"No granted scope allows {action.interaction} on {rtype} "
                            f"(needs the letter {letter!r}, e.g. system/{rtype}.{letter})")
        if action.interaction.startswith("conditional-") and all(s.query for s in granting):
            raise forbidden(f"A {action.interaction} needs a scope on {rtype} without a query "
                            "(its target is found after the scope is checked)")

    def _operation(self, actor: Actor, action: Action) -> None:
        name = action.operation or ""
        if name in TERMINOLOGY and action.rtype in ("CodeSystem", "ValueSet", "ConceptMap"):
            scopes = scopes_of(actor.scopes)
            if not permits(scopes, "r", action.rtype):
                raise forbidden(f"No granted scope allows {name} (needs {action.rtype} 'r')")
            # an operation answers from the content of any code system, value set or map, not
            # from resources a search selects: a scope's query cannot be held to it
            for t in ("CodeSystem", "ValueSet", "ConceptMap"):
                granting = permits(scopes, "r", t)
                if granting and all(g.query for g in granting):
                    raise forbidden(f"{name} answers from terminology content a query-restricted "
                                    f"scope on {t} does not select; it needs a scope on {t} "
                                    "without a query")
            return
        if name == "$export":
            self._export(actor, action.rtype)
            return
        if name in ANY_SIGNED_IN:
            if actor.kind == "anonymous":
                raise forbidden(f"{name} needs a signed-in caller")
            return
        rule = OPERATIONS.get(name)
        if rule is None:
            raise forbidden(f"{name or 'This operation'} is not granted to callers")
        roles, letter, rtype = rule
        if not actor.roles & roles:
            raise forbidden(f"{name} is for the roles {', '.join(sorted(roles))}")
        if letter is not None and rtype is not None \
                and not permits(scopes_of(actor.scopes), letter, rtype):
            raise forbidden(f"No granted scope allows {name} (needs {rtype} {letter!r})")
        if name in SHARED_RECORD and "admin" not in actor.roles and not actor.purpose:
            raise forbidden(f"{name} reads a person's records across institutions: give a "
                            "purpose of use (X-Purpose-Of-Use: TREAT, …)")

    @staticmethod
    def _export(actor: Actor, rtype: str | None) -> None:
        """A bulk export (FHIR Bulk Data ``$export``) reads a whole region's records: only a
        backend service's ``system/`` scopes grant it, with the read letter on the type (a
        patient- or user-context token is refused, however wide its scopes)."""
        if actor.patient is not None or actor.kind == "user":
            raise forbidden("$export is a backend service's: a token with a patient context or "
                            "a user (fhirUser) does not export, whatever its scopes")
        system = [s for s in scopes_of(actor.scopes) if s.context == "system"]
        if not permits(system, "r", rtype or "*") and (rtype is not None or not any(
                "r" in s.perms for s in system)):
            raise forbidden(f"$export{' of ' + rtype if rtype else ''} needs a system-level "
                            f"read scope (system/{rtype or '*'}.rs); patient/ and user/ scopes "
                            "do not export")

    def admits(self, actor: Actor, letter: str, rtype: str, resource: dict) -> bool:
        if actor.kind == "system":
            return True
        # a patient-context token writes, as it reads, only its own Patient's compartment
        return _admitted(permits(scopes_of(actor.scopes), letter, rtype), actor.patient, rtype,
                         str(resource.get("id") or ""), orjson.dumps(resource), resource)

    def narrow_search(self, actor: Actor, rtype: str) -> list[list[Any]] | None:
        if actor.kind == "system":
            return None
        granting = permits(scopes_of(actor.scopes), "s", rtype)
        if not granting or any(_admits_all(s) for s in granting):
            return None
        # each scope by its own limits, OR'ed: its query, and a patient/ one's compartment, so
        # that another patient's records are neither found, paged nor counted (a count judged
        # after the search would tell how many there are); the judgement after the search stays
        return search_groups([_selection(s, actor.patient, rtype) for s in granting])

    def hides_after_search(self, actor: Actor, rtype: str, *, narrowed: bool = True,
                           across: bool = False) -> bool:
        if actor.kind == "system":
            return False
        if self.consents is not None and actor.purpose not in EMERGENCY and \
                rtype not in NOT_THE_PATIENTS and self.consents.any():
            return True
        reading = [s for s in scopes_of(actor.scopes) if s.perms & {"r", "s"}]
        if rtype == "*" or across:
            # what is found holds, or was found through, resources of any type: all shown only
            # to a scope on every type that admits anything
            return not any(s.rtype == "*" and _admits_all(s) for s in reading)
        on_type = [s for s in reading if s.rtype in ("*", rtype)]
        if any(_admits_all(s) for s in on_type):
            return False
        if any(s.context == "patient" for s in on_type):
            # the patient's compartment, narrowed in the plan where it can be, judged per
            # resource all the same
            return True
        # a scope's query narrows a search's plan; what nothing narrowed (a history) is judged
        # resource by resource
        return not narrowed

    def visible(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                owner: Owner | None = None) -> bool:
        if actor.kind == "system":
            return True
        if not self._scopes_show(actor, rtype, rid, resource):
            return False
        return self._consents_show(actor, rtype, rid, resource, owner)

    def scopes_select(self, actor: Actor, rtype: str, rid: str, resource: bytes) -> bool:
        return actor.kind == "system" or self._scopes_show(actor, rtype, rid, resource,
                                                           compartment=False)

    def hidden_by_query(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                        owner: Owner | None = None) -> bool:
        if actor.kind == "system" or self.visible(actor, rtype, rid, resource, owner):
            return False
        return self._scopes_show(actor, rtype, rid, resource, queries=False) and \
            self._consents_show(actor, rtype, rid, resource, owner)

    def _consents_show(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                       owner: Owner | None = None) -> bool:
        if self.consents is None or actor.purpose in EMERGENCY or rtype in NOT_THE_PATIENTS:
            return True  # break the glass (open only to the roles that may) sets consent aside
        # a Consent governs disclosure to others: the patient reading its own record is not
        # held to its own (its right of access), everyone else is, its clinicians in its
        # context included
        own = f"Patient/{actor.patient}" if is_the_patient(actor, self.base) else None
        access: Access | None = None
        for ref in patients_in(rtype, rid, resource):
            if ref == own:
                continue
            for rule in self.consents.rules(ref.split("/", 1)[1]):
                access = access or Access(actor.institution, actor.purpose, rtype, rid, resource)
                if rule.denies(access):
                    # a consent governs what others are shown: the institution that recorded
                    # the resource keeps seeing (and so changing) its own record
                    return actor.institution is not None and owner is not None \
                        and owner() == actor.institution
        return True

    def consent_refusal(self, actor: Actor, recorded_by: str | None, consent: dict,
                        patient_owner: Callable[[str], str | None]) -> str | None:
        """A Consent is recorded by the institution it is written under: its ``organization``
        must name that one (an administrator writing under none names any), and a connector
        records one only of a Patient its institution recorded (stewards and administrators,
        the region's, of any); the hub's own writes are not judged."""
        if actor.kind == "system":
            return None
        if recorded_by is not None:
            orgs = organizations(consent, self.bases)
            if not orgs or any(o != recorded_by for o in orgs):
                return (f"A Consent written as institution {recorded_by} is recorded by it: its "
                        f"organization must be Organization/{recorded_by} (and name no other)")
        if actor.roles & {"steward", "admin"}:
            return None
        pid = patient_id(consent, self.bases)
        if pid is None or recorded_by is None or patient_owner(pid) != recorded_by:
            return (f"A connector records Consents only of its own institution's patients: "
                    f"Patient/{pid} was not recorded by {recorded_by or 'this caller'}")
        return None

    @staticmethod
    def _scopes_show(actor: Actor, rtype: str, rid: str, resource: bytes, *,
                     compartment: bool = True, queries: bool = True) -> bool:
        """Does a scope granting ``r`` or ``s`` on ``rtype`` admit this resource (``queries``
        False: whatever its query selects)? None does when none grants either: an operation
        handing out several types (``$everything``) shows only the types the caller's scopes
        name."""
        granting = [s for s in scopes_of(actor.scopes)
                    if s.rtype in ("*", rtype) and s.perms & {"r", "s"}]
        return _admitted(granting, actor.patient if compartment else None, rtype, rid, resource,
                         None, compartment=compartment, queries=queries)

    def written(self, rtypes: set[str]) -> None:
        if self.consents is not None and "Consent" in rtypes:
            self.consents.changed()

    def may_change(self, actor: Actor, rtype: str, rid: str,
                   owner: Callable[[], str | None]) -> bool:
        """A connector changes what its own institution wrote, nothing another one did: the
        record's institution is the one that created it, whoever changed it since (a steward
        or administrator may change anything, and taking its edit for the owner's handed the
        record to the steward's institution, or to anyone's when the steward has none)."""
        if actor.kind == "system" or actor.roles & {"steward", "admin"}:
            return True
        institution = owner()
        if rtype in TERMINOLOGY_TYPES and not institution and actor.institution:
            # the region's code systems and maps, applied to every institution's records: a
            # connector changes none (hub.access.terminology)
            return False
        return not institution or institution == actor.institution


def bound_to(actor: Actor) -> str | None:
    """The institution whose own work lists alone (its quarantined documents and messages, its
    connectors and their dead letters) are shown to ``actor``: its own; None, every one's, for
    the region's people (of no institution, as a consent naming institutions judges them) and
    the hub itself."""
    return actor.institution or None if actor.kind != "system" else None


def _admits_all(scope: Scope) -> bool:
    """A scope that admits every resource of its type: no query, and about no one patient."""
    return not scope.query and scope.context != "patient"


def _selection(scope: Scope, patient: str | None, rtype: str) -> ScopeQuery:
    """What ``scope`` selects of ``rtype`` as search criteria: its query, and for a
    ``patient/`` scope the compartment of the patient in context (none without one). A type
    the compartment does not list is in it through any reference, which no search parameter
    holds whole: there the query alone narrows the plan, the compartment judged after it."""
    query = compile_query(rtype, scope.query)
    if scope.context != "patient" or query.groups is None:
        return query
    if patient is None:
        return ScopeQuery(rtype, None)  # selects nothing
    group = _compartment_criteria(rtype, patient)
    if group is None:
        return query
    if not group:
        return ScopeQuery(rtype, None)
    return ScopeQuery(rtype, (*query.groups, tuple(group)))


def _compartment_criteria(rtype: str, patient: str) -> list[Criterion] | None:
    """The OR-group selecting what ``_in_compartment`` admits, as the search index holds it:
    the compartment's reference parameters naming the patient (relative, or absolute on
    ``HUB_BASE_URL``), of Patients only its own ``_id``; None for a type it does not list."""
    if rtype == "Patient":
        return [Criterion("_id", "token", value=TokenValue(None, patient))]
    if rtype not in patient_compartment():
        return None
    return compartment_group("Patient", patient, rtype, own_base())


def _admitted(granting: list[Scope], patient: str | None, rtype: str, rid: str, resource: bytes,
              parsed: dict | None, *, compartment: bool = True, queries: bool = True) -> bool:
    """Does some one of these scopes admit the resource? A scope with a query only what its
    query selects; a ``patient/`` scope only the compartment of the patient in context (none
    without one; ``compartment`` False: by its query alone; ``queries`` False: whatever its
    query selects). Several scopes on a type are OR'ed: each admits by its own limits, and no
    scope lifts another's (a ``patient/`` scope without a query beside a query-restricted
    ``user/`` one admits the patient's compartment and what the query selects, not
    everything)."""
    d: dict | None = parsed
    inside: bool | None = None
    for s in granting:
        if s.query and queries:
            if d is None:
                try:
                    loaded = orjson.loads(resource)
                except orjson.JSONDecodeError:
                    loaded = None
                d = loaded if isinstance(loaded, dict) else {}  # selected by no query
            if not compile_query(rtype, s.query).matches(d):
                continue
        if s.context == "patient" and compartment:
            if inside is None:
                inside = patient is not None and _in_compartment(rtype, rid, resource, patient)
            if not inside:
                continue
        return True
    return False


def is_the_patient(actor: Actor, base: str | None = None) -> bool:
    """Is the caller the patient in its context: its token's ``fhirUser`` is that Patient (a
    patient's own app), not a clinician or a client acting in the patient's context? SMART
    gives ``fhirUser`` absolute: on ``base`` (the tokens' audience, ending in a slash) too."""
    if actor.patient is None:
        return False
    own = {f"{base}Patient/{actor.patient}"} if base else set()
    return actor.fhir_user in _patient_refs(actor.patient) | own


def _patient_refs(patient: str) -> set[str]:
    """The references that name Patient ``patient`` of this server: relative, or absolute on
    ``HUB_BASE_URL`` (a check that knows no request's base takes no other as its own)."""
    own = own_base()
    return {f"Patient/{patient}"} | ({f"{own}Patient/{patient}"} if own else set())


def _in_compartment(rtype: str, rid: str, resource: bytes, patient: str) -> bool:
    """Is the resource in Patient ``patient``'s compartment: named by one of the parameters R4's
    CompartmentDefinition lists for its type (an Observation's ``subject`` or ``performer``, not
    its ``focus`` or a note's author: those name the patient in someone else's record). A type
    the compartment does not list (Medication, Organization) by any reference to the patient."""
    if rtype == "Patient":
        # its own Patient only, not another naming it in ``link`` (R4 lists ``link`` for the
        # Patient compartment): any writer may set a link, and a wrong one would hand a patient
        # another person's record; the master patient index's Person, a steward's decision, is
        # how the hub joins one person's records
        return rid == patient
    if rtype not in patient_compartment():
        return names_patient(resource, patient)
    if not names_patient(resource, patient):
        return False  # the cheap test first: no reference to the patient at all
    try:
        values = extract(orjson.loads(resource))
    except Exception:  # noqa: BLE001 - a resource the index cannot read is in no compartment
        return False
    wanted = _patient_refs(patient)
    return any(isinstance(v, Ref) and v.reference in wanted
               for p in compartment_keys(rtype) for v in values.get(p, ()))
