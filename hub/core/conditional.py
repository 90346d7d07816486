"""Resolving a search query to resource ids, for conditional interactions and conditional references.

``_id`` and ``identifier`` are answered from the write-side identifier index inside the store
(consistent with the write that follows). ``SearchResolver`` (plugged in by the API) answers every
other parameter through the search index and falls back to the identifier index for what must be
decided atomically.
"""

from __future__ import annotations

import re
from typing import Protocol
from urllib.parse import parse_qsl

from fhir_mapping.identifiers import key_problem
from hub.core.errors import FhirError, bad_request
from hub.core.store import IdentifierGuard, QuietGuard, ResourceStore

Query = list[tuple[str, str]]

# A control character, sent raw or percent-encoded (tab, line feed and carriage return aside): no
# FHIR string a parameter names may hold one, and PostgreSQL refuses a NUL in any text it is
# asked to compare (criteria reach the event store from If-None-Exist, a Bundle entry's url or
# ifNoneExist, and conditional references, none of which pass the query string's check)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_query(query: str, where: str | None = None) -> Query:
    """``query`` as (name, value) pairs; 400 (at ``where``) if malformed or if a name or value
    holds a control character."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise bad_request(f"Malformed search query {query!r}", where) from None
    for name, value in pairs:
        bad = _CONTROL.search(name) or _CONTROL.search(value)
        if bad:
            raise bad_request(f"Search criteria {query[:200]!r} hold the control character "
                              f"U+{ord(bad.group()):04X}, which no FHIR string may contain", where)
    return pairs


def parse_if_none_exist(value: str, where: str | None = None) -> Query:
    """The criteria of an If-None-Exist (``query``, ``Type?query`` or a URL): 400 when it names
    none, as a conditional update or delete without criteria is. An empty one is no condition:
    taken as none, the create ran unconditionally and a retry made a second resource."""
    query = parse_query(value.split("?", 1)[1] if "?" in value else value, where)
    if not query:
        raise bad_request(f"If-None-Exist {value[:200]!r} names no search criteria; a "
                          "conditional create needs them (without the header it is a plain "
                          "create)", where)
    return query


def split_token(value: str) -> tuple[str | None, str]:
    """``system|code`` -> (system, code); ``|code`` -> ("", code); ``code`` -> (None, code)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


# Why an identifier value cannot pick out one resource (fhir_mapping.identifiers.key_problem)
_NOT_A_KEY = {
    "placeholder": "its value is a filler ('-', '无', zeros, a field's label), nobody's identifier",
    "check-digit": "it is a resident ID number that fails its check (length, region, birth date "
                   "or check character)",
}


# Resources about a person: criteria name one only by an identifier or its id. Two people share a
# name and a birth date (a region holds thousands of 王伟); a conditional create on them would take
# one for the other. Telling people apart by demographics is the master patient index's work.
PERSONS = frozenset({"Patient", "Person", "RelatedPerson", "Practitioner"})


def refuse_non_keys(query: Query, rtype: str | None = None) -> None:
    """400 for criteria that name a resource by an identifier that is no key: keyed on a filler
    or a mistyped resident ID number, a conditional create would take one person for another
    and a conditional update would overwrite another person's record. The mappers never key on
    such values either. A person (``PERSONS``) is named only through an identifier or an id."""
    if rtype in PERSONS and not any(name.partition(":")[0] in ("identifier", "_id")
                                    for name, _ in query):
        names = ", ".join(sorted({name for name, _ in query}))
        raise FhirError(400, "invalid", f"A conditional interaction names a {rtype} by an "
                        f"identifier or its id, not by {names}: those do not tell two people "
                        "apart (the master patient index links one person's records)")
    for name, value in query:
        head = name.rpartition(".")[2]
        param, _, modifier = head.partition(":")
        if param != "identifier":
            continue
        for alt in value.split(","):
            if modifier == "of-type":
                system, code = None, alt.rpartition("|")[2]
            else:
                system, code = split_token(alt)
            if not code.strip():
                continue  # the resolver says what is missing
            problem = key_problem(code, system or None)
            if problem in _NOT_A_KEY:
                raise FhirError(400, "invalid", f"{name}={alt!r} cannot pick out one resource: "
                                f"{_NOT_A_KEY[problem]}; give criteria that identify it",
                                name)


# how many ids the search behind a conditional interaction reads: more is reported as "at
# least" this many (a multiple match is refused whatever their number)
MATCH_LIMIT = 1000


class Resolver(Protocol):
    def match(self, rtype: str, query: Query) -> list[str]: ...


class IdentifierResolver:
    supported = ("_id", "identifier")

    def __init__(self, store: ResourceStore):
        self.store = store

    def match(self, rtype: str, query: Query) -> list[str]:
        if not query:
            raise bad_request("A conditional operation needs search criteria")
        refuse_non_keys(query, rtype)
        result: set[str] | None = None
        for name, value in query:
            if name not in self.supported:
                raise FhirError(
                    400, "not-supported",
                    f"Search parameter {name!r} is not supported in conditional operations "
                    f"(supported: {', '.join(self.supported)})",
                )
            found: set[str] = set()
            for alt in value.split(","):
                if name == "_id":
                    if not alt.strip():
                        # an empty id names nothing: read as "no criteria", it would create
                        raise bad_request(f"_id={value!r} needs a value")
                    found.update(self.store.current_ids(rtype, [alt]))
                else:
                    system, code = split_token(alt)
                    if not code:
                        raise bad_request(f"identifier={value!r} needs a value")
                    found.update(self.store.find_by_identifier(rtype, system, code))
            result = found if result is None else result & found
        return sorted(result or ())

    def guards(self, rtype: str, query: Query, searched_at: int = 0) -> list:
        """Write-lock checks that keep a conditional write from racing another one: the commit
        fails (and the write is planned again) if its search would now find something else."""
        if any(name == "identifier" and "," in value for name, value in query):
            return [QuietGuard(rtype, searched_at)]  # alternatives: no single row to check
        # the criteria are ANDed: what must not appear is one resource meeting them all
        idents = [split_token(value) for name, value in query if name == "identifier"]
        if not idents:
            return []
        ids: frozenset[str] | None = None
        for name, value in query:
            if name == "_id":
                alts = frozenset(value.split(","))
                ids = alts if ids is None else ids & alts
        (system, code), *also = idents
        return [IdentifierGuard(rtype, system, code, tuple(also), ids)]


class SearchResolver(IdentifierResolver):
    """Any search through the search index; ``_id``/``identifier`` alone stay on the atomic path.

    ``service.match_ids`` brings the index up to the log's end first (``Runner`` catch-up to the
    store's max notification id), so a conditional write sees every write committed before it.
    Queries the identifier index answers keep its write-lock guards against racing creates.
    """

    def __init__(self, store: ResourceStore, service):
        super().__init__(store)
        self.service = service

    def match(self, rtype: str, query: Query) -> list[str]:
        if not query:
            raise bad_request("A conditional operation needs search criteria")
        if all(name in self.supported for name, _ in query):
            return super().match(rtype, query)
        refuse_non_keys(query, rtype)
        return self.service.match_ids(rtype, query, limit=MATCH_LIMIT)

    def guards(self, rtype: str, query: Query, searched_at: int = 0) -> list:
        """A write decided by the search index (which may lag the log) commits only if no
        resource of its type was written since the log position the search started from; else
        the request is planned again, and the search then sees the newcomer."""
        if all(name in self.supported for name, _ in query):
            return super().guards(rtype, query, searched_at)
        return [QuietGuard(rtype, searched_at)]


def identifiers_match(query: Query, idents: list[tuple[str, str]], rid: str) -> bool:
    """Does a resource being written in this same bundle satisfy ``query``?"""
    for name, value in query:
        ok = False
        for alt in value.split(","):
            if name == "_id":
                ok = ok or alt == rid
            elif name == "identifier":
                system, code = split_token(alt)
                ok = ok or any(v == code and (system is None or s == system) for s, v in idents)
        if not ok:
            return False
    return bool(query)


def unmet_criterion(query: Query, idents: list[tuple[str, str]], rid: str) -> tuple[str, str] | None:
    """The criterion of ``query`` that a resource a conditional write is about to create (id
    ``rid``, business identifiers ``idents``) does not meet, or None. Judged on the resource
    itself for what needs no index (``_id``, and ``identifier`` as ``system|value``, ``|value``,
    ``value`` or ``system|``); any other criterion is taken as met. A create that does not meet
    its own criteria finds nothing when sent again, and creates again."""
    for name, value in query:
        if name not in ("_id", "identifier"):
            continue  # a modifier, a chain, another parameter: the search index's to judge
        met = False
        for alt in value.split(","):
            if name == "_id":
                met = met or alt == rid
                continue
            system, code = split_token(alt)
            met = met or any((system is None or s == system) and (v == code or (
                system is not None and not code)) for s, v in idents)
        if not met:
            return name, value
    return None
