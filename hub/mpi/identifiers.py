"""Identifier systems as configuration: what the master patient index reads from each system.

Every system has a role (``data/identifier-systems.json`` explains them): ``unique`` (a hard
identifier: one value per person, never shared; agreement is strong evidence, disagreement a
veto), ``identifying`` (a value names one person who may hold several: a blocking key only) or
``ignored``; a system nobody configured is not read. The shipped table gives the defaults; a
NamingSystem stored in the hub (``kind`` ``identifier``, its ``uniqueId``s naming the system as
``uri`` or ``oid``) sets the role of its systems, by the hub's extension ``ROLE_EXTENSION``
(``valueCode``) or else by its ``type`` (HL7 v2 table 0203, read through ``by_type``). So a
region configures a new system the way a FHIR server user declares one: ``PUT
/fhir/NamingSystem/…`` (or ``hub terminology load``), then ``hub mpi rematch``.

``Roles`` is that configuration as a value (``role(system)``); ``split`` turns a Patient's other
identifiers (``x`` in its features: ``system|value``) into the ``uid`` (unique) and ``oid``
(unique and identifying: blocking keys) features; ``compare_unique`` says whether two Patients
share a hard identifier and whether they contradict one another on one.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhir_mapping.identifiers import is_filler

DATA = Path(__file__).with_name("data")

ROLE_EXTENSION = "https://fhir-region-hub.example/StructureDefinition/mpi-identifier-role"
ROLES = ("unique", "identifying", "ignored")
MAX_OTHER = 8  # identifiers of other systems kept per Patient (hostile input stays cheap)
MAX_TEXT = 200


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads((DATA / "identifier-systems.json").read_text(encoding="utf-8"))


class Roles:
    """The role of each identifier system: the shipped table with stored NamingSystems over it."""

    __slots__ = ("_roles",)

    def __init__(self, overrides: Mapping[str, str] | None = None):
        t = _table()
        roles = dict(t["systems"])
        builtin = set(t["builtin"])
        for system, role in (overrides or {}).items():
            if system not in builtin and role in ROLES:
                roles[system] = role
        self._roles = roles

    def role(self, system: str) -> str | None:
        return self._roles.get(system)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Roles) and self._roles == other._roles

    def __hash__(self) -> int:
        return hash(frozenset(self._roles.items()))


DEFAULT = Roles()


def builtin(system: str) -> bool:
    """Systems read by their own rules (resident ID number, health card)."""
    return system in _table()["builtin"]


def naming_system_roles(ns: Mapping[str, Any]) -> dict[str, str]:
    """{system uri: role} a NamingSystem declares (empty when it declares none, is retired or is
    not an identifier system)."""
    if ns.get("kind") != "identifier" or ns.get("status") == "retired":
        return {}
    role = None
    for e in ns.get("extension") or ():
        if isinstance(e, dict) and e.get("url") == ROLE_EXTENSION and e.get("valueCode") in ROLES:
            role = e["valueCode"]
    if role is None:
        by_type = _table()["by_type"]
        t = ns.get("type")
        for c in (t.get("coding") or ()) if isinstance(t, dict) else ():
            if isinstance(c, dict) and f"{c.get('system')}|{c.get('code')}" in by_type:
                role = by_type[f"{c.get('system')}|{c.get('code')}"]
                break
    if role is None:
        return {}
    out = {}
    for u in ns.get("uniqueId") or ():
        if not isinstance(u, dict) or not isinstance(u.get("value"), str) or not u["value"].strip():
            continue
        value = u["value"].strip()
        if u.get("type") == "oid":
            out["urn:oid:" + value.removeprefix("urn:oid:")] = role
        elif u.get("type") == "uri":
            out[value] = role
    return out


def roles_from(naming_systems: Iterable[Mapping[str, Any]]) -> Roles:
    """The configuration of the shipped table and these NamingSystems (later ones win)."""
    overrides: dict[str, str] = {}
    for ns in naming_systems:
        overrides.update(naming_system_roles(ns))
    return Roles(overrides)


def value_key(value: str) -> str | None:
    """An identifier value as the index compares it: NFKC, trimmed, upper-cased; None for a
    filler ("无", "-", zeros: nobody's identifier)."""
    v = unicodedata.normalize("NFKC", value[:MAX_TEXT]).strip().upper()
    return v if v and not is_filler(v) else None


def unique_identifiers(patient: Mapping[str, Any], roles: Roles = DEFAULT) -> list[tuple[str, str]]:
    """(system, value) of a Patient dict's identifiers in systems configured ``unique`` (the
    resident ID number aside: its own rules decide whether it counts), for checks of whole
    clusters."""
    out = set()
    idents = patient.get("identifier")
    for ident in idents if isinstance(idents, list) else ():
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or builtin(system):
            continue
        if roles.role(system) == "unique":
            v = value_key(value)
            if v:
                out.add((system, v))
    return sorted(out)


def split(x: Iterable[str], roles: Roles) -> tuple[list[str], list[str]]:
    """(uid, oid) of a Patient's ``system|value`` identifiers: the unique ones, and every one
    the index reads (unique and identifying), both sorted."""
    uid, oid = [], []
    for item in x:
        role = roles.role(item.partition("|")[0])
        if role == "unique":
            uid.append(item)
        if role in ("unique", "identifying"):
            oid.append(item)
    return sorted(uid), sorted(oid)


def compare_unique(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[bool, bool]:
    """(agree, conflict) of two Patients' unique identifiers: ``agree`` when they share a value,
    ``conflict`` when, in a system both carry, they share none (one person holds one value)."""
    ua, ub = a.get("uid") or (), b.get("uid") or ()
    if not ua or not ub:
        return False, False
    by_a: dict[str, set[str]] = {}
    for item in ua:
        s, _, v = item.partition("|")
        by_a.setdefault(s, set()).add(v)
    by_b: dict[str, set[str]] = {}
    for item in ub:
        s, _, v = item.partition("|")
        by_b.setdefault(s, set()).add(v)
    agree = conflict = False
    for s in by_a.keys() & by_b.keys():
        if by_a[s] & by_b[s]:
            agree = True
        else:
            conflict = True
    return agree, conflict
