"""Who acts, what they ask to do, and the access policy that decides.

Every read and write a caller makes of resources passes through ``hub.repository.Repository``,
which asks a ``Policy`` before it acts and before it hands a stored resource out. The core names
the vocabulary; the policy that reads tokens, roles and consents is given to the repository when
the application is built. ``OPEN`` allows everything: the command line and a hub without access
control configured.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller: a person or a client, with what it was granted and why it asks.

    ``subject`` is what the audit and the identity decisions record (a token's ``sub``), unique
    with ``issuer``;
    ``institution`` the one a connector writes as, ``oid`` that institution's root OID as the
    client registry has it (its local code systems are ``urn:oid:<oid>.…``); ``purpose`` the v3
    PurposeOfUse it gave."""

    subject: str = "anonymous"
    kind: str = "anonymous"  # anonymous | user | client | system
    roles: frozenset[str] = frozenset()
    scopes: tuple[str, ...] = ()
    institution: str | None = None
    purpose: str | None = None
    oid: str | None = None
    patient: str | None = None  # a patient-context token's Patient id (SMART launch context)
    fhir_user: str | None = None  # the token's ``fhirUser``: who the user is (``Patient/x``)
    # the token's issuer when it is an external provider (its subjects are its own: a subject
    # equal to a hub client's id is someone else); None for the hub's own tokens and no token
    issuer: str | None = None

    @property
    def named(self) -> str:
        """How the audit and the job list name the caller: its subject, an external
        provider's with that provider (its issuer) beside it."""
        return self.subject if self.issuer is None else f"{self.subject} ({self.issuer})"


ANONYMOUS = Actor()
SYSTEM = Actor("hub", "system")  # the hub's own writes: audit events, replays from the CLI


@dataclass(frozen=True, slots=True)
class Action:
    """One thing asked of the repository: a FHIR interaction code (``read``, ``vread``,
    ``search-type``, ``history-instance``, ``create``, ``update``, ``delete``, ``operation``) on a
    type and, where there is one, an instance; ``operation`` names it (``$everything``)."""

    interaction: str
    rtype: str | None = None
    rid: str | None = None
    operation: str | None = None


# the institution that recorded a resource (its version's ``source``), asked only when it matters
Owner = Callable[[], "str | None"]


class Policy(Protocol):
    def check(self, actor: Actor, action: Action) -> None:
        """Raise a ``FhirError`` (403) when ``actor`` may not do ``action``."""

    def visible(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                owner: Owner | None = None) -> bool:
        """May ``actor`` see this resource (its JSON)? ``owner`` tells, when asked, the
        institution that recorded it (its version's ``source``), which a consent never hides it
        from."""

    def scopes_select(self, actor: Actor, rtype: str, rid: str, resource: bytes) -> bool:
        """Does a scope of ``actor`` granting ``r`` or ``s`` on ``rtype`` select this resource by
        its query alone, whose patient (a ``patient/`` scope's compartment, consents) is judged
        through another resource (a Binary through its ``securityContext``)?"""

    def hidden_by_query(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                        owner: Owner | None = None) -> bool:
        """Is this resource hidden from ``actor`` only by what its scopes' queries select of its
        content, its consents and a ``patient/`` scope's compartment showing it? Another version
        of the record may then be selected (a history judges each version)."""

    def may_change(self, actor: Actor, rtype: str, rid: str,
                   owner: Callable[[], str | None]) -> bool:
        """May ``actor`` update or delete a stored resource whose institution ``owner`` tells
        (the one that created it, None: none did; asked only when needed, it may read the
        record's versions)?"""

    def admits(self, actor: Actor, letter: str, rtype: str, resource: dict) -> bool:
        """Does a scope of ``actor`` that grants ``letter`` (``c``, ``u``, ``d``) on ``rtype``
        take in this resource (a scope with a query: the resource matches it)? Asked of what a
        write would store and, for an update or delete, of what it replaces."""

    def narrow_search(self, actor: Actor, rtype: str) -> list[list[Any]] | None:
        """AND groups (``projections.search.query.Criterion`` OR lists) to add to a search of
        ``rtype`` by ``actor``, so that it finds only what its scopes select; None: none."""

    def hides_after_search(self, actor: Actor, rtype: str, *, narrowed: bool = True,
                           across: bool = False) -> bool:
        """May ``visible`` leave out some of what a search of ``rtype`` (``*``: of any type) by
        ``actor`` found? Then a count of the matches would tell what is hidden. ``narrowed``: the
        search was narrowed by ``narrow_search`` (a history is not); ``across``: its criteria
        reach resources of other types (``_has``, chains), which must be shown to count."""

    def consent_refusal(self, actor: Actor, recorded_by: str | None, consent: dict,
                        patient_owner: Callable[[str], str | None]) -> str | None:
        """Why ``actor`` may not write this Consent under the institution ``recorded_by`` (None:
        it may); ``patient_owner`` tells the institution that recorded a Patient (by id)."""

    def written(self, rtypes: set[str]) -> None:
        """Resources of these types were just written (a policy that reads some, such as
        consents, knows to read them again)."""


class OpenPolicy:
    """Everything allowed."""

    def check(self, actor: Actor, action: Action) -> None:
        return None

    def visible(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                owner: Owner | None = None) -> bool:
        return True

    def scopes_select(self, actor: Actor, rtype: str, rid: str, resource: bytes) -> bool:
        return True

    def hidden_by_query(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                        owner: Owner | None = None) -> bool:
        return False

    def may_change(self, actor: Actor, rtype: str, rid: str,
                   owner: Callable[[], str | None]) -> bool:
        return True

    def admits(self, actor: Actor, letter: str, rtype: str, resource: dict) -> bool:
        return True

    def narrow_search(self, actor: Actor, rtype: str) -> list[list[Any]] | None:
        return None

    def hides_after_search(self, actor: Actor, rtype: str, *, narrowed: bool = True,
                           across: bool = False) -> bool:
        return False

    def consent_refusal(self, actor: Actor, recorded_by: str | None, consent: dict,
                        patient_owner: Callable[[str], str | None]) -> str | None:
        return None

    def written(self, rtypes: set[str]) -> None:
        return None


OPEN = OpenPolicy()


# Any server's Patient/id, a version of it too: what consents deny and the audit records err
# towards more patients (``names_patient``, which grants, takes only this server's)
_PATIENT_REF = re.compile(rb'"reference"\s*:\s*"(?:[^"]*/)?Patient/([A-Za-z0-9\-.]{1,128})'
                          rb'(?:/_history/[A-Za-z0-9\-.]{1,64})?"')


@lru_cache(maxsize=1)
def own_base() -> str | None:
    """``HUB_BASE_URL`` with a trailing slash, or None: where a check that knows no request's
    base URL (a read model, the policy) takes an absolute reference for this server's own."""
    base = os.environ.get("HUB_BASE_URL", "").strip().rstrip("/")
    return base + "/" if base else None


def names_patient(resource: bytes, patient: str) -> bool:
    """Does some reference of the resource name Patient ``patient`` of this server: as
    ``Patient/id`` (a version of it too), or absolute on ``own_base``? Another server's Patient of
    the same id is someone else."""
    own = own_base()
    prefix = rb"(?:" + re.escape(own.encode()) + rb")?" if own else b""
    return re.search(rb'"reference"\s*:\s*"' + prefix + rb"Patient/" + re.escape(patient.encode())
                     + rb'(?:/_history/[A-Za-z0-9\-.]{1,64})?"', resource) is not None


def patients_in(rtype: str, rid: str, resource: bytes) -> list[str]:
    """The Patients a resource is about: itself, or those its references name."""
    if rtype == "Patient":
        return [f"Patient/{rid}"]
    return sorted({f"Patient/{m.decode()}" for m in _PATIENT_REF.findall(resource)})
