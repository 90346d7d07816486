"""The Patient compartment as search criteria: which parameters of each type point at the Patient
(the official compartment definition, derived into ``projections/data``)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from hub.core.errors import FhirError
from projections.search.params import params_for
from projections.search.query import Criterion, RefValue, TokenValue, with_base


@lru_cache(maxsize=1)
def patient_compartment() -> dict[str, list[str]]:
    """Resource type -> the parameters that put it in a Patient's compartment."""
    return json.loads(resources.files("projections.data").joinpath(
        "compartment_patient.json").read_text())


@lru_cache(maxsize=None)
def compartment_keys(rtype: str) -> tuple[str, ...]:
    """The index keys holding the values of ``rtype``'s compartment parameters: an alias as the
    parameter it is stored as (a Condition's ``patient`` is its ``subject`` naming a Patient)."""
    known = params_for(rtype)
    return tuple(dict.fromkeys(k for p in patient_compartment().get(rtype, ()) if p in known
                               for k in (known[p].stored_as or (p,))))


def compartment_group(ctype: str, cid: str, rtype: str, base: str | None = None) -> list[Criterion]:
    """The OR-group of criteria selecting ``rtype`` resources in compartment ``ctype/cid``; with
    ``base`` (this server's base URL), references stored absolute on it count too."""
    if ctype != "Patient":
        raise FhirError(400, "not-supported", f"Only the Patient compartment is supported, not {ctype}")
    params = patient_compartment().get(rtype)
    if params is None:
        raise FhirError(400, "not-supported", f"{rtype} is not in the Patient compartment")
    known = params_for(rtype)
    targets = with_base((f"Patient/{cid}",), base.rstrip("/") if base else None)
    group = [Criterion(p, "reference", value=RefValue(targets=targets))
             for p in params if p in known and known[p].type == "reference"]
    if rtype == "Patient":
        group.append(Criterion("_id", "token", value=TokenValue(None, cid)))
    return group
