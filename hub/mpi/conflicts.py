"""Hard keys of a Patient and the conflicts that forbid two clusters to become one person.

A person may never hold two different valid values of a unique identifier system (two resident ID
numbers) or two sexes (male and female). The matcher vetoes such *pairs*; this module checks whole
clusters, because two people with different numbers can otherwise meet through a third record
that carries no number (A and C each linked to B).

Only what is sure counts: a resident ID number whose check character is right and whose birth date
and sex agree with the record (``normalise.resident_id_features`` says ``valid``; a parent's number
on a newborn's record is not the newborn's key), and the sexes ``male``/``female`` (``other`` and
``unknown`` say nothing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from hub.mpi.normalise import RESIDENT_ID, resident_id_features

UNIQUE_SYSTEMS = (RESIDENT_ID,)  # systems of which one person has exactly one value
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class Keys:
    ids: tuple[tuple[str, str], ...] = ()  # (system, value) of the unique systems
    sex: str | None = None


NONE = Keys()


def keys_of(patient: Mapping) -> Keys:
    """The hard keys of a Patient dict (odd input gives no keys, never an error)."""
    sex = patient.get("gender")
    sex = sex if sex in ("male", "female") else None
    bd = patient.get("birthDate")
    birth = bd[:10] if isinstance(bd, str) and _DATE.match(bd) else None
    ids: dict[str, str] = {}
    idents = patient.get("identifier")
    for ident in idents if isinstance(idents, list) else ():
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if system not in UNIQUE_SYSTEMS or system in ids or not isinstance(value, str):
            continue
        number, status = resident_id_features(value, sex, birth)
        if status == "valid" and number:
            ids[system] = number  # the first valid one, as the matcher's features take it
    return Keys(tuple(sorted(ids.items())), sex)


def keys_of_stored(state: bytes) -> Keys:
    """Keys of a stored Patient event state (header line, then the JSON body)."""
    _, _, body = state.partition(b"\n")
    try:
        d = orjson.loads(body)
    except orjson.JSONDecodeError:
        return NONE
    return keys_of(d) if isinstance(d, dict) else NONE


def conflict(*clusters: Iterable[tuple[str, Keys]]) -> str | None:
    """What forbids the union of the clusters (each ``(patient ref, Keys)`` pairs) to be one
    person, as a sentence naming the Patients and the kind of key (never the values: this text
    reaches logs and answers), or None."""
    seen_ids: dict[str, tuple[str, str]] = {}  # system -> (value, the Patient carrying it)
    seen_sex: tuple[str, str] | None = None
    for cluster in clusters:
        for ref, k in cluster:
            for system, value in k.ids:
                have = seen_ids.get(system)
                if have is None:
                    seen_ids[system] = (value, ref)
                elif have[0] != value:
                    return (f"{have[1]} and {ref} carry different valid identifiers of the "
                            f"unique system {system}")
            if k.sex is not None:
                if seen_sex is None:
                    seen_sex = (k.sex, ref)
                elif seen_sex[0] != k.sex:
                    return f"{seen_sex[1]} and {ref} are of different sexes"
    return None
