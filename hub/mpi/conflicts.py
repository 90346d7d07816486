"""Hard keys of a Patient and the conflicts that forbid two clusters to become one person.

A person may never hold two different valid values of a unique identifier system (two resident ID
numbers) or two sexes (male and female). The matcher vetoes such *pairs*; this module checks whole
clusters, because two people with different numbers can otherwise meet through a third record
that carries no number (A and C each linked to B).

Only what is sure counts: a resident ID number whose check character is right and whose birth date
and sex agree with the record (``normalise.resident_id_features`` says ``valid``; a parent's number
on a newborn's record is not the newborn's key), the values of the systems configured ``unique``
(``hub.mpi.identifiers``: the shipped table and stored NamingSystems; fillers are nobody's), and
the sexes ``male``/``female`` (``other`` and ``unknown`` say nothing). One Patient carrying two
values of a configured system (a renewed passport) shows both are one person's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from hub.core.errors import FhirError
from hub.mpi.identifiers import DEFAULT, Roles, unique_identifiers
from hub.mpi.normalise import RESIDENT_ID, resident_id_features

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class Keys:
    ids: tuple[tuple[str, str], ...] = ()  # (system, value) of the unique systems, sorted
    sex: str | None = None


NONE = Keys()


def keys_of(patient: Mapping, roles: Roles = DEFAULT) -> Keys:
    """The hard keys of a Patient dict (odd input gives no keys, never an error)."""
    sex = patient.get("gender")
    sex = sex if sex in ("male", "female") else None
    bd = patient.get("birthDate")
    birth = bd[:10] if isinstance(bd, str) and _DATE.match(bd) else None
    ids: set[tuple[str, str]] = set(unique_identifiers(patient, roles))
    idents = patient.get("identifier")
    for ident in idents if isinstance(idents, list) else ():
        if not isinstance(ident, dict) or ident.get("system") != RESIDENT_ID:
            continue
        value = ident.get("value")
        number, status = resident_id_features(value, sex, birth) if isinstance(value, str) \
            else (None, None)
        if status == "valid" and number:
            ids.add((RESIDENT_ID, number))
            break  # the first valid one, as the matcher's features take it
    return Keys(tuple(sorted(ids)), sex)


def keys_of_stored(state: bytes, roles: Roles = DEFAULT) -> Keys:
    """Keys of a stored Patient event state (header line, then the JSON body)."""
    _, _, body = state.partition(b"\n")
    try:
        d = orjson.loads(body)
    except orjson.JSONDecodeError:
        return NONE
    return keys_of(d, roles) if isinstance(d, dict) else NONE


class PatientsConflict(FhirError):
    """A steward's decision refused (409) with diagnostics naming ``patients`` besides the one it
    was asked about; ``veiled`` says the same refusal without them, for a caller who may not see
    one of them (which Patient a person holds, its sex or its numbers are its record's)."""

    def __init__(self, diagnostics: str, patients: Iterable[str], veiled: str):
        super().__init__(409, "conflict", diagnostics)
        self.patients = tuple(patients)
        self.veiled = veiled


def conflict(*clusters: Iterable[tuple[str, Keys]]) -> str | None:
    """What forbids the union of the clusters (each ``(patient ref, Keys)`` pairs) to be one
    person, as a sentence naming the Patients and the kind of key (never the values: this text
    reaches logs and answers), or None."""
    found = conflict_between(*clusters)
    return found[0] if found else None


def conflict_between(*clusters: Iterable[tuple[str, Keys]]
                     ) -> tuple[str, tuple[str, str]] | None:
    """As ``conflict``, with the two Patients its sentence names.

    Per system, values one Patient carries together are one person's; the union conflicts when
    its values of a system do not all hang together that way. Proportional to the number of
    keys."""
    groups: dict[tuple[str, str], tuple[str, str]] = {}  # (system, value) -> its group's root
    holder: dict[tuple[str, str], str] = {}  # the first Patient carrying a value

    def root(k: tuple[str, str]) -> tuple[str, str]:
        while groups[k] != k:
            groups[k] = groups[groups[k]]
            k = groups[k]
        return k

    seen_sex: tuple[str, str] | None = None
    for cluster in clusters:
        for ref, k in cluster:
            first: dict[str, tuple[str, str]] = {}
            for system, value in k.ids:
                key = (system, value)
                if key not in groups:
                    groups[key], holder[key] = key, ref
                if system in first:
                    groups[root(key)] = root(first[system])
                else:
                    first[system] = key
            if k.sex is not None:
                if seen_sex is None:
                    seen_sex = (k.sex, ref)
                elif seen_sex[0] != k.sex:
                    return (f"{seen_sex[1]} and {ref} are of different sexes",
                            (seen_sex[1], ref))
    by_system: dict[str, tuple[str, str]] = {}
    for key in groups:
        r = root(key)
        other = by_system.setdefault(key[0], r)
        if other != r:
            return (f"{holder[other]} and {holder[r]} carry different identifiers of the "
                    f"unique system {key[0]}", (holder[other], holder[r]))
    return None
