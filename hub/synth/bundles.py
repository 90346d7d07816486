"""A synthetic region as Synthea-shaped transaction Bundles.

Synthea, the reference synthetic-patient generator, writes one transaction Bundle per patient: the
Patient and its whole history as ``POST`` entries with ``urn:uuid:`` full URLs, references between
them by those URLs, and the institutions referenced conditionally
(``Organization?identifier=system|value``), loaded beforehand from a separate Bundle of its own.
``hospital_bundle`` and ``patient_bundles`` give the same shape from ``Region``: one Bundle per
Patient record (a person registered at two institutions has two), server-assigned ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from .region import Region

_NS = uuid.UUID("6f1c3a52-2b1e-4d7e-9a51-8c1d0f7e9b10")


def _urn(ref: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, ref)}"


def hospital_bundle(region: Region) -> dict:
    """The region's Organizations as a batch of conditional creates on their identifier."""
    entries = []
    for inst in region.institutions:
        org = region.organization(inst)
        org.pop("id")
        org.pop("partOf", None)  # a literal id the server does not assign
        ident = org["identifier"][0]
        entries.append({"fullUrl": _urn(f"Organization/{inst.id}"), "resource": org,
                        "request": {"method": "POST", "url": "Organization",
                                    "ifNoneExist": f"identifier={ident['system']}|{ident['value']}"}})
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def patient_bundles(region: Region) -> Iterator[dict]:
    """One transaction Bundle per Patient record: the Patient first, then its records."""
    orgs = {f"Organization/{i.id}": region.organization(i)["identifier"][0] for i in region.institutions}
    for resources, _ in region.iter_people():
        by_patient: dict[str, list[dict]] = {}
        for r in resources:
            if r["resourceType"] == "Patient":
                by_patient[f"Patient/{r['id']}"] = [r]
                continue
            subject = (r.get("subject") or r.get("patient") or {}).get("reference")
            if subject in by_patient:
                by_patient[subject].append(r)
        for group in by_patient.values():
            local = {f"{r['resourceType']}/{r['id']}" for r in group}
            entries = []
            for r in group:
                ref = f"{r['resourceType']}/{r['id']}"
                body = _rewrite({k: v for k, v in r.items() if k != "id"}, local, orgs)
                entries.append({"fullUrl": _urn(ref), "resource": body,
                                "request": {"method": "POST", "url": r["resourceType"]}})
            yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _rewrite(o: Any, local: set[str], orgs: dict[str, dict]) -> Any:
    if isinstance(o, dict):
        out = {}
        for k, v in o.items():
            if k == "reference" and isinstance(v, str):
                if v in local:
                    v = _urn(v)
                elif v in orgs:
                    v = f"Organization?identifier={orgs[v]['system']}|{orgs[v]['value']}"
            else:
                v = _rewrite(v, local, orgs)
            out[k] = v
        return out
    if isinstance(o, list):
        return [_rewrite(v, local, orgs) for v in o]
    return o
