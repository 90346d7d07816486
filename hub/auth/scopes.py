"""SMART on FHIR scopes: what a client asks for, what it is allowed, what it is granted.

A resource scope is ``context/Type.perms[?query]`` (SMART App Launch v2): ``context`` is
``patient``, ``user`` or ``system``; ``Type`` a resource type or ``*``; ``perms`` a non-empty
subset of ``cruds`` written in that order (create, read, update, delete, search); the optional
query narrows the scope to resources matching those search parameters (``Observation.rs?category=
…|laboratory``). The v1 forms ``.read`` (= ``rs``), ``.write`` (= ``cud``) and ``.*`` (= ``cruds``)
are read as their v2 equivalents. Other scopes (``openid``, ``fhirUser``, ``launch/patient``,
``offline_access``) are kept as they are and grant no access to resources.

A malformed resource scope, an unknown resource type or a character a scope token may not hold
(RFC 6749 section 3.3) is a bad request (400): the caller sent it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from hub.core.errors import bad_request
from hub.core.resource import RESOURCE_TYPES

__all__ = ["CONTEXTS", "PERMS", "Scope", "check_client_scopes", "check_scopes", "format_scopes",
           "narrow", "parse_scope", "parse_scopes", "permits"]

CONTEXTS = ("patient", "user", "system")
PERMS = "cruds"  # the letters, in the order they are written
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token: NQCHAR, no " or \
_RESOURCE = re.compile(r"^(patient|user|system)/([^.?]*)\.([^?]*)(?:\?(.*))?$", re.DOTALL)
_V2_PERMS = re.compile(r"^c?r?u?d?s?$")


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope. For a resource scope ``context`` and ``rtype`` are set, ``perms`` holds its
    letters and ``query`` its search parameters as sorted (name, value) pairs; for any other scope
    they are ``None``, empty and empty. ``text`` is the scope as written (v1 forms included)."""

    context: str | None
    rtype: str | None
    perms: frozenset[str]
    query: tuple[tuple[str, str], ...]
    text: str

    @property
    def is_resource(self) -> bool:
        return self.context is not None

    def covers(self, other: Scope) -> bool:
        """Does this scope grant every letter of ``other`` on what ``other`` names?"""
        return self._matches(other) and other.perms <= self.perms

    def _matches(self, other: Scope) -> bool:
        """Same context, this type is ``other``'s or ``*``, and this query is none or the same."""
        return (self.is_resource and other.is_resource and self.context == other.context
                and self.rtype in ("*", other.rtype) and (not self.query or self.query == other.query))


def parse_scopes(text: str) -> list[Scope]:
    """The scopes of a space-separated scope string, in order, duplicates dropped."""
    out: list[Scope] = []
    seen: set[str] = set()
    for token in text.split(" "):
        if not token or token in seen:
            continue
        seen.add(token)
        out.append(parse_scope(token))
    return out


def parse_scope(token: str) -> Scope:
    if not _TOKEN.match(token):
        raise bad_request(f"Scope {token!r} holds a character a scope may not (space, quote, "
                          "backslash or a non-printable or non-ASCII one)")
    m = _RESOURCE.match(token)
    if m is None:
        if token.split("/", 1)[0] in CONTEXTS:
            raise bad_request(f"Scope {token!r} is not context/Type.perms (e.g. system/Patient.rs)")
        return Scope(None, None, frozenset(), (), token)
    context, rtype, perms, query = m.groups()
    if rtype != "*" and rtype not in RESOURCE_TYPES:
        raise bad_request(f"Scope {token!r}: {rtype!r} is not a FHIR resource type (nor *)")
    letters = _V1.get(perms, perms)
    if not letters or not _V2_PERMS.match(letters):
        raise bad_request(f"Scope {token!r}: the permissions must be letters of 'cruds' in that "
                          "order (e.g. rs, cud), or read, write or *")
    return Scope(context, rtype, frozenset(letters), _parse_query(token, query), token)


def _parse_query(token: str, query: str | None) -> tuple[tuple[str, str], ...]:
    if query is None:
        return ()
    pairs = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not name or not eq:
            raise bad_request(f"Scope {token!r}: the query must be name=value pairs joined by &")
        pairs.append((unquote(name), unquote(value)))
    return tuple(sorted(pairs))


def permits(scopes: Iterable[Scope], perm: str, rtype: str) -> list[Scope]:
    """The scopes that grant the letter ``perm`` (one of ``cruds``) on resources of ``rtype``;
    empty: not allowed. A scope with a query grants it only on the resources its query selects,
    which the caller checks."""
    if len(perm) != 1 or perm not in PERMS:
        raise ValueError(f"perm must be one of the letters {PERMS!r}, not {perm!r}")
    return [s for s in scopes if s.is_resource and perm in s.perms and s.rtype in ("*", rtype)]


def narrow(requested: Iterable[Scope], allowed: Iterable[Scope]) -> list[Scope]:
    """What a client asking for ``requested`` may be granted when it is allowed ``allowed``.

    A requested resource scope is granted the letters it asks for that some allowed scope of the
    same context grants on its type (the allowed one's type being the same or ``*``), where that
    allowed scope has no query or the same query; when only some letters are, the scope is granted
    with those (``system/Patient.cruds`` asked, ``system/*.rs`` allowed: ``system/Patient.rs``).
    Another scope is granted when it is allowed as written. Scopes that grant nothing are left out.
    """
    allowed = list(allowed)
    granted: list[Scope] = []
    seen: set[str] = set()
    for want in requested:
        if not want.is_resource:
            got: Scope | None = want if any(a.text == want.text for a in allowed) else None
        else:
            letters = frozenset().union(*(a.perms for a in allowed if a._matches(want))) & want.perms
            got = want if letters == want.perms else _with_perms(want, letters) if letters else None
        if got is not None and got.text not in seen:
            seen.add(got.text)
            granted.append(got)
    return granted


def _with_perms(scope: Scope, letters: frozenset[str]) -> Scope:
    """``scope`` with fewer letters, written in the v2 form (its query as it was written)."""
    perms = "".join(p for p in PERMS if p in letters)
    query = scope.text.partition("?")[2]
    text = f"{scope.context}/{scope.rtype}.{perms}" + (f"?{query}" if query else "")
    return Scope(scope.context, scope.rtype, letters, scope.query, text)


def format_scopes(scopes: Iterable[Scope]) -> str:
    """The space-separated scope string (each scope as written)."""
    return " ".join(s.text for s in scopes)


def check_scopes(text: str) -> str:
    """``text`` when it parses, with its scopes separated by single spaces (for storage)."""
    return format_scopes(parse_scopes(text))


def check_client_scopes(text: str) -> str:
    """The scopes a client may be granted, as ``check_scopes`` stores them: at least one, each a
    resource scope (``context/Type.perms``). A client's token is granted resource scopes only, so
    an empty string, a word or a misspelt context (``sytem/*.rs``) allowed it nothing, unsaid."""
    scopes = parse_scopes(text)
    if not scopes:
        raise bad_request("A client needs at least one scope, such as system/*.rs")
    other = [s.text for s in scopes if not s.is_resource]
    if other:
        raise bad_request(f"Scope {other[0]!r} is not context/Type.perms (such as system/*.rs or "
                          f"system/Observation.cud; context {', '.join(CONTEXTS)}): a client is "
                          "granted those only")
    return format_scopes(scopes)
