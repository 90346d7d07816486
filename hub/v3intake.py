"""HL7 v3 registrations into the hub: convert, normalise, store; refusals kept for replay.

``POST /v3`` (``hub.api.v3``) answers with the acknowledgement; this module does the work it shares
with ``hub quarantine replay``: a registration the mapper refuses (AE/AR) or whose resources the
hub refuses is kept in the quarantine (kind ``v3``) with its acknowledgement code and reason, as a
refused CDA document is, and can be replayed after a fix (of the mapping tables, say).
"""

from __future__ import annotations

from typing import Any

from fhir_mapping import hl7v3
from fhir_mapping.base import Conversion, MappingError, SourceInfo
from hub.api import bundles
from hub.errors import FhirError
from hub.ingest import Context, Hub, Result
from hub.quarantine import Quarantine

KIND = "v3"


def register(hub: Hub, raw: bytes, source: SourceInfo, ctx: Context,
             normaliser: Any = None) -> tuple[Conversion, list[Result | FhirError]]:
    """Convert and store one registration in one transaction. Raises MappingError (the mapper
    refuses: its AE/AR) or FhirError (the hub refuses the mapped resources, or is busy)."""
    conv: Conversion = hl7v3.convert(raw, source)
    if normaliser is not None:
        normaliser.apply(conv)  # local codes: the standard coding beside them (issue 7)
    ops = [bundles.parse_entry(i, entry, "") for i, entry in enumerate(conv.entries())]
    return conv, hub.execute(ops, ctx, atomic=True)  # type: ignore[arg-type]


def keep(quarantine: Quarantine, raw: bytes, source: SourceInfo, code: str, reason: str,
         rule: str | None) -> int:
    """Quarantine a refused registration; its id."""
    report = {"ack": code, "rule": rule, "reason": reason[:2000]}
    src = {k: v for k, v in (("institution", source.institution), ("oid", source.oid),
                             ("feed", source.feed)) if v}
    return quarantine.put(KIND, raw, src, report, reason)


def replay(hub: Hub, quarantine: Quarantine, qid: int,
           normaliser: Any = None) -> tuple[bool, str]:
    """Register a quarantined message again: (stored, what happened). Stored marks the entry
    replayed; refused again leaves it open with the new reason in its last result."""
    entry = quarantine.get(qid)
    if entry is None:
        raise KeyError(qid)
    source = SourceInfo(**{k: v for k, v in entry["source"].items()
                           if k in ("institution", "oid", "feed")})
    ctx = Context(source={"institution": source.institution or "unknown",
                          "feed": "quarantine-replay"})
    try:
        _, results = register(hub, entry["payload"], source, ctx, normaliser)
    except MappingError as e:
        quarantine.mark(qid, "open", {"ack": e.code, "reason": e.reason[:300]})
        return False, f"{e.code}: {e.reason}"
    except FhirError as e:
        text = "; ".join(i.diagnostics for i in e.issues)[:300]
        quarantine.mark(qid, "open", {"status": e.status, "reason": text})
        return False, text
    written = [f"{r.rtype}/{r.rid}/_history/{r.version}" for r in results
               if isinstance(r, Result) and r.version is not None]
    quarantine.mark(qid, "replayed", {"ack": "AA", "resources": len(written)})
    return True, ", ".join(written)
