"""Clinical documents into the hub: quality control, mapping, one transaction, quarantine.

``DocumentService.ingest_cda`` is what ``POST /cda`` and ``hub quarantine replay`` run:

1. ``fhir_mapping.documents.check_and_convert`` (quality rules, then the CDA mapper);
2. accepted: the document's resources, its Binary, DocumentReference, document Bundle and the
   quality report are validated and written as ONE transaction (all or nothing), with the entries
   a new version of the document withdrew marked entered-in-error (``_retire_left_out``); a
   document a stored one already replaces is written as history (``_replaced_before``);
3. refused (a reject rule, or a document the mapper cannot map, or mapper output the hub refuses):
   the payload goes to the quarantine with its report, and the report alone is written, so the
   data-quality projection counts refusals too;
4. in conflict with what is stored (``_conflict``: a "new version" of a set stored for another
   patient, an id of the document already another patient's record, or a second document claiming
   a version of the set that is stored): refused the same way with a 409, nothing else written.

Steps 2 and 4 are ``StoredDocuments.settle``, which a connector's mapped documents (PUT as entries
of a transaction or batch) go through too (``hub.api.bundles`` → ``settle_writes``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson

from fhir_mapping import source_order, withdrawn
from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.documents import (
    EXT,
    QualityRejected,
    check_and_convert,
    header,
    is_quality_report,
    quality_report,
    reporting_source,
)
from hub.core import jsontext
from hub.core import resource as res
from hub.core.access import SYSTEM, Actor, patients_in
from hub.core.errors import FhirError
from hub.core.fhirtime import local_zone
from hub.core.ingest import Context, Op, Result
from hub.quarantine import Quarantine
from hub.repository import Repository

RULE_SYSTEM = "https://fhir-region-hub.example/CodeSystem/quality-rule"
SUPERSEDED_RULE = "cda.document.superseded"
RETIRED_RULE = "cda.document.entries-retired"
LEFT_OUT_RULE = "cda.document.entries-left-out"
OTHER_PATIENT_RULE = "cda.document.other-patient"
SAME_VERSION_RULE = "cda.document.version-taken"
REPLACED_RULE = "cda.document.replaced"
REPLACED_BEFORE_RULE = "cda.document.replaced-before"
NOTHING_REPLACED_RULE = "cda.document.nothing-replaced"
QUALITY_DOCUMENT = EXT + "quality-document"  # a quality report's document
Conflict = tuple[str, str, str]  # (rule, display, text): why a document may not be written

@dataclass
class DocumentResult:
    status: int  # 201 a new document version stored, 200 nothing changed, 422 quarantined,
    # 409 quarantined: in conflict with what is stored (another patient's, a version taken)
    decision: str  # accept | accept-with-warnings | reject
    report: dict[str, Any]  # the quality report (OperationOutcome) as stored
    document_ref: str | None = None  # DocumentReference/<id>
    quarantine_id: int | None = None
    resources: list[str] = field(default_factory=list)  # Type/id/_history/n written
    retired: list[str] = field(default_factory=list)  # Type/id the new version withdrew


class StoredDocuments:
    """What the stored versions of a document decide about writing a mapped one, whichever way it
    came in: the document intake maps it in the hub (``DocumentService``), a connector of kind
    ``cda`` maps it itself and PUTs its resources as entries of a transaction (``hub.api.bundles``
    hands its writes to ``settle_writes``). One check and one retirement for both: a connector's
    document for another patient with the keys of a stored one overwrote that patient's records
    as the intake's would, had the check been the intake's alone."""

    def __init__(self, repo: Repository):
        self.repo = repo

    def settle(self, resources: list[dict], patient: str | None,
               reader: Actor | None = None) -> tuple[Conflict | None, list[dict]]:
        """Before a mapped document (``resources``, its quality report among them) is written:
        the conflict with what is stored that refuses it (``_conflict``; worded for ``reader``,
        who is told nothing of stored records it may not read), else None and the entries it
        withdrew, retired (to write with it), its report saying what it changed (a late older
        version, what was retired or left out) and keeping the time a resend was first
        checked. A document a stored one already replaces is made history in ``resources``
        itself (``_replaced_before``: its elements are swapped for the versions to write)."""
        conflict = self._conflict(resources, patient, reader)
        if conflict is not None:
            return conflict, []
        report = next(r for r in resources if is_quality_report(r))
        self._keep_checked_time(report)
        late = self._replaced_before(resources, report)
        if self._note_superseded(resources, report):
            return None, late
        return None, late + self._retire_left_out(resources, report)

    def settle_writes(self, ops: list[Op], reader: Actor | None = None) -> list[Op]:
        """``settle`` for each mapped document among a transaction's or batch's writes
        (``document_writes``); returns the retirements to write with them. A document in conflict
        refuses the whole Bundle, a batch too: its entries are one unit (nothing of it may be
        written), and a batch cannot tell them from a neighbour's shared ones (a batch carries an
        institution's Organization once for all its units, ``connectors.sinks.http.dedupe_entries``). The status
        is 422 business-rule, not the intake's 409: a connector (``connectors.sinks``) and the
        ingest worker split a Bundle refused with a 4xx until the document is alone and keep it
        as a dead letter, where a 409 is "try again" and held the connector's feed for ever
        behind a document only a steward can settle. The refusal names the stored records (their
        ids, their patients) only to a ``reader`` that may read them."""
        more: list[Op] = []
        for patient, members in document_writes(ops):
            where = ops[members[0]].where  # the DocumentReference's entry: the document
            docs: list[dict] = [ops[i].d for i in members]  # type: ignore[misc]
            conflict, retired = self.settle(docs, patient, reader)
            if conflict is not None:
                rule, _, text = conflict
                raise FhirError(422, "business-rule", f"{rule}: {text}", where)
            for i, d in zip(members, docs):
                if d is not ops[i].d:  # made history (``_replaced_before``): validated as above
                    ref = f"{d['resourceType']}/{d['id']}"
                    res.validate(d["resourceType"], jsontext.dumps(d, ref), d)
                    ops[i].d = d
            for d in retired:
                ref = f"{d['resourceType']}/{d['id']}"
                res.validate(d["resourceType"], jsontext.dumps(d, ref), d)
                more.append(Op("PUT", d["resourceType"], d["id"], d, url=ref, where=where))
        return more

    # -- helpers -----------------------------------------------------------------------------------

    def _keep_checked_time(self, report: dict) -> None:
        """The same document checked again with the same outcome keeps the time it was first
        checked: its report stays the version stored (a resend changed nothing else, yet a new
        version of the report moved the document to the resend's day in the quality trend)."""
        old = self.repo.own_current("OperationOutcome", report["id"])
        if old is None:
            return

        def without_time(d: dict) -> dict:
            return {**d, "meta": None, "extension": [
                e for e in d.get("extension") or () if not e.get("url", "").endswith(
                    "quality-checked")]}
        if without_time(old) == without_time(report):
            report["extension"] = old["extension"]

    def _replaced_before(self, resources: list[dict], report: dict) -> list[dict]:
        """A document a stored one replaces (a relatedDocument RPLC naming its document id) that
        arrives after it (a replay, a slow feed), or comes again once superseded: stored as
        history, never current again. Its DocumentReference is written ``superseded``; each of
        its entries the hub holds current (the replacement's, another source's) is left as it is,
        the others are written entered-in-error as a replacement retires them (its Bundle and
        Binary keep what it said). Swaps those elements of ``resources`` for the versions to
        write (the Bundle holds the document as sent) and returns the replacements'
        DocumentReferences to write, now naming its own by reference. A resend is known without
        search, by its stored DocumentReference."""
        comp = next((r for r in resources if r["resourceType"] == "Composition"), None)
        at = next((i for i, r in enumerate(resources) if r["resourceType"] == "DocumentReference"),
                  None)
        if comp is None or at is None:
            return []
        doc = resources[at]
        by = self._replacements(comp)
        stored = self.repo.own_current("DocumentReference", doc["id"])
        if not by and not (stored is not None and stored.get("status") == "superseded"
                           and stored.get("masterIdentifier") == doc.get("masterIdentifier")):
            return []
        resources[at] = {**doc, "status": "superseded"}
        retired: list[str] = []
        kept: list[str] = []
        for i, r in enumerate(resources):
            if r["resourceType"] not in withdrawn.KINDS:
                continue
            ref = f"{r['resourceType']}/{r['id']}"
            current = self.repo.own_current(r["resourceType"], r["id"])
            if current is not None and not withdrawn.is_withdrawn(current):
                # the stored version stays: written again as it is, no new version
                resources[i] = _as_written(current)
                kept.append(ref)
            else:
                resources[i] = withdrawn.withdrawn(r) or r
                retired.append(ref)
        out: list[dict] = []
        for held in by:  # the replacement's DocumentReference names this one by reference
            for rid in self.repo.own_ids_referring(
                    "DocumentReference", "related", f"Composition/{held['id']}") or ():
                d = self.repo.own_current("DocumentReference", rid)
                if d is None or d.get("subject") != doc.get("subject"):
                    continue
                related = copy.deepcopy(d)
                _relate(related, comp.get("identifier"), f"DocumentReference/{doc['id']}")
                if related != d:
                    out.append(_as_written(related))
        who = _listed([f"Composition/{c['id']} ({_ident_text(c.get('identifier'))})" for c in by]) \
            if by else "a stored document (its DocumentReference is stored superseded)"
        report["issue"] = [*_findings_only(report["issue"]), _version_issue(
            "information", "informational", REPLACED_BEFORE_RULE,
            "a document arrived after the document that replaces it",
            f"this document arrived after {who}, which replaces it (relatedDocument RPLC): it is "
            f"kept as history, its DocumentReference superseded. {len(retired)} of its entries "
            f"are stored entered-in-error (this document's Bundle and Binary keep what they "
            f"said): {_listed(retired) or 'none'}; {len(kept)} are left as stored (the "
            f"replacement's, or another source's): {_listed(kept) or 'none'}",
            "/hl7:ClinicalDocument/hl7:id")]
        return out

    def _replacements(self, comp: dict) -> list[dict]:
        """The stored current Compositions of the same patient that replace ``comp``'s document
        (relatesTo replaces of its document id); none when search cannot tell."""
        key = _ident_key(comp.get("identifier"))
        if key is None:
            return []
        token = "|".join(re.sub(r"([\\,|$])", r"\\\1", p) for p in key)
        subject = (comp.get("subject") or {}).get("reference")
        out = []
        for cid in self.repo.own_ids_matching("Composition", "related-id", token) or ():
            held = self.repo.own_current("Composition", cid) if cid != comp["id"] else None
            if held is not None and (held.get("subject") or {}).get("reference") == subject \
                    and any(isinstance(r, dict) and r.get("code") == "replaces"
                            and _ident_key(r.get("targetIdentifier")) == key
                            for r in held.get("relatesTo") or ()):
                out.append(held)
        return out

    def _retire_left_out(self, resources: list[dict], report: dict) -> list[dict]:
        """A new version of a stored document that leaves out entries the stored version wrote (a
        diagnosis the author withdrew): those the document owns stop being current, marked as R4
        marks a withdrawn statement (``fhir_mapping.withdrawn``: entered-in-error, not a delete, so
        history and whoever read them keep the trace). The report names what was retired and what
        was left as it was: what another source wrote since, what another document lists too (a
        C-CDA act quoted by several documents), or what a document does not withdraw (the patient,
        the visit). A replacement of a document of another set supersedes that document's
        DocumentReference too (``_supersede``). Returns the retired and superseded versions, to
        be written with the document."""
        comp = next((r for r in resources if r["resourceType"] == "Composition"), None)
        if comp is None:
            return []
        old = self.repo.own_current("Composition", comp["id"])  # the hub's read, not the caller's
        parents, missing = self._replaced(comp)
        if missing and old is None:
            report["issue"] = _findings_only(report["issue"])
            report["issue"].append(_version_issue(
                "warning", "not-found", NOTHING_REPLACED_RULE,
                "a replacement document names a parent document the hub does not hold",
                f"this document replaces (relatedDocument RPLC) {_listed(missing)}, which the hub "
                f"does not hold for this patient: nothing was replaced, and what that document "
                f"wrote (if it comes) stays until a later version leaves it out",
                "/hl7:ClinicalDocument/hl7:relatedDocument"))
        if old is None and not parents:
            return []
        order = source_order.order_of(comp)
        now = {f"{r['resourceType']}/{r['id']}" for r in resources}
        # what each replaced document wrote: the stored version of this one's set, and the stored
        # documents it names as replaced (relatedDocument RPLC of a document id, a set of its own)
        gone: set[str] = set()
        written: dict[str, tuple[dict, str | None]] = {}  # ref -> (as its Bundle holds it, series)
        bundle = next((r for r in resources if r["resourceType"] == "Bundle"), None)
        sources = [(p, b, source_order.order_of(p)) for p, b in parents]
        if old is not None:
            sources.insert(0, (old, bundle["id"] if bundle is not None else None,
                               source_order.order_of(old)))
        for held_comp, bundle_id, held_order in sources:
            gone |= _entries(held_comp) - now
            if held_comp is old and not gone and order == source_order.order_of(old):
                continue
            held = self.repo.own_current("Bundle", bundle_id) if bundle_id is not None else None
            series = held_order.series if held_order else None
            for e in (held or {}).get("entry") or ():
                r = e.get("resource") if isinstance(e, dict) else None
                if isinstance(r, dict):
                    ref = f"{r.get('resourceType')}/{r.get('id')}"
                    written.setdefault(ref, (r, series))
                    if r.get("resourceType") in withdrawn.KINDS and ref not in now:
                        gone.add(ref)
        owners = {comp["id"], *(p["id"] for p, _ in parents)}
        retired: list[dict] = []
        kept: list[str] = []
        for ref in sorted(gone):
            rtype, _, rid = ref.partition("/")
            current = self.repo.own_current(rtype, rid)
            if current is None or withdrawn.is_withdrawn(current):
                continue  # nothing current to retire
            wrote, series = written.get(ref, (None, None))
            why = self._not_owned(ref, current, wrote, owners, series)
            marked = withdrawn.withdrawn(current) if why is None else None
            if marked is None:
                kept.append(f"{ref} ({why or 'not a kind a document withdraws'})")
                continue
            retired.append(_as_written(marked, order))
        if not retired and not kept and not parents:
            return []
        report["issue"] = _findings_only(report["issue"])
        superseded: list[dict] = []  # the replaced documents' DocumentReferences
        if parents:
            superseded, unfound = self._supersede(resources, [p for p, _ in parents], order)
            also = ("; their DocumentReference is marked superseded" if not unfound else
                    f"; the DocumentReference of {_listed(unfound)} could not be found and stays "
                    f"as it is")
            report["issue"].append(_version_issue(
                "information", "informational", REPLACED_RULE,
                "a replacement document replaces a stored document",
                f"this document replaces {_listed(['Composition/' + p[0]['id'] for p in parents])}: "
                f"what it leaves out of them is retired as a new version's would be{also}",
                "/hl7:ClinicalDocument/hl7:relatedDocument"))
        if retired:
            refs = [f"{r['resourceType']}/{r['id']}" for r in retired]
            report["issue"].append(_version_issue(
                "information", "informational", RETIRED_RULE,
                "entries a new version of a document withdrew are retired",
                f"this version leaves out {len(refs)} entries of the version it replaces; they "
                f"are marked entered-in-error (their history keeps what they said): "
                f"{_listed(refs)}"))
        if kept:
            report["issue"].append(_version_issue(
                "warning", "business-rule", LEFT_OUT_RULE,
                "a new version of a document leaves out entries of the last",
                f"this version leaves out {len(kept)} entries of the version it replaces that it "
                f"does not retire; they stay as they were until retracted: {_listed(kept)}"))
        return retired + superseded

    def _supersede(self, resources: list[dict], parents: list[dict],
                   order: source_order.Order | None) -> tuple[list[dict], list[str]]:
        """The DocumentReferences of the stored documents of another set this one replaces
        (``parents``, their Compositions), marked ``superseded`` as R4 marks a document a newer
        one replaces: one document stays current, as when a new version of a set rewrites its
        own DocumentReference. This document's ``relatesTo`` names each by reference beside the
        parent's document id. Returns the versions to write (those still current) and the
        parents whose DocumentReference the hub could not find (search not running)."""
        doc = next((r for r in resources if r["resourceType"] == "DocumentReference"), None)
        if doc is None:
            return [], []
        out: list[dict] = []
        unfound: list[str] = []
        for comp in parents:
            ref = f"Composition/{comp['id']}"
            held = [d for d in (self.repo.own_current("DocumentReference", i) for i in
                                self.repo.own_ids_referring("DocumentReference", "related", ref)
                                or ())
                    if d is not None and d["id"] != doc["id"] and d.get("subject") == doc.get("subject")
                    and any(isinstance(r, dict) and r.get("reference") == ref
                            for r in (d.get("context") or {}).get("related") or ())]
            if not held:
                unfound.append(ref)
            for d in held:
                _relate(doc, comp.get("identifier"), f"DocumentReference/{d['id']}")
                if d.get("status") != "current":
                    continue  # already superseded (this document sent again), or withdrawn
                out.append(_as_written({**d, "status": "superseded"}, order))
        return out, unfound

    def _not_owned(self, ref: str, current: dict, wrote: dict | None, owners: set[str],
                   series: str | None) -> str | None:
        """Why the document may not retire ``ref``, or None when it owns it: its current version
        is what the document it replaces wrote last (its source-order stamp names that document's
        set, ``series``, and its content is the copy in that document's Bundle: a steward's edit
        sent back with the stamp still differs) and no current document lists it but this one and
        those it replaces (``owners``)."""
        stamp = source_order.order_of(current)
        if stamp is None or stamp.series != series or wrote is None \
                or _content(current) != _content(wrote):
            return "changed since by another source"
        listing = self.repo.listing_documents(ref)
        if listing is None:
            return "whether another document lists it could not be checked"
        if any(cid not in owners for cid in listing):
            return "another document lists it too"
        return None

    def _replaced(self, comp: dict) -> tuple[list[tuple[dict, str | None]], list[str]]:
        """The stored documents ``comp`` replaces (``relatesTo`` replaces: relatedDocument RPLC
        of a parent document id) other than its own set's last version, as (their Composition,
        their document Bundle's id), found by the parent's document id among the Compositions of
        the same patient (document ids are unique within an institution only, and a patient is
        an institution's); and the parent ids the hub holds no document of."""
        found: list[tuple[dict, str | None]] = []
        missing: list[str] = []
        subject = (comp.get("subject") or {}).get("reference")
        for rel in comp.get("relatesTo") or ():
            target = rel.get("targetIdentifier") if isinstance(rel, dict) else None
            if rel.get("code") != "replaces" or not isinstance(target, dict) or not target.get("value"):
                continue
            system, value = target.get("system") or "", str(target["value"])
            hits = []
            for cid in self.repo.own_ids_by_identifier("Composition", system, value):
                held = self.repo.own_current("Composition", cid) if cid != comp["id"] else None
                if held is not None and (held.get("subject") or {}).get("reference") == subject:
                    hits.append(held)
            bundles = self.repo.own_ids_by_identifier("Bundle", system, value)
            for held in hits:
                bundle_id = next((b for b in bundles if _opens_with(
                    self.repo.own_current("Bundle", b), held["id"])), None)
                if all(held["id"] != f[0]["id"] for f in found):
                    found.append((held, bundle_id))
            if not hits:
                missing.append(f"{system}|{value}".lstrip("|"))
        return found, missing

    def _conflict(self, resources: list[dict], patient: str | None,
                  reader: Actor | None = None) -> Conflict | None:
        """Why the document may not be written over what is stored, as (rule, display, text), or
        None. Never merge two people: every id of a document is derived from its keys (the set,
        an entry's own id, the document id), so a document for another patient with the keys of a
        stored one (the same setId, a reused document or entry id) would overwrite that patient's
        records with its own and retire the rest. Whose a stored record is, is what its references
        name; a document whose Patient is another resource than the stored records' is another
        patient, even when a steward knows it is the same person under another identifier (the
        hub does not guess). And two different documents cannot both be version N of one set.
        A ``reader`` that may not read the stored records the conflict is with is told that there
        is one, never their ids or whose they are."""
        by_type: dict[str, list[dict]] = {}
        for d in resources:
            if d["resourceType"] != "Patient" and not is_quality_report(d):
                by_type.setdefault(d["resourceType"], []).append(d)
        taken: dict[str, list[str]] = {}  # another patient's Type/id -> its patients
        stored: dict[str, dict] = {}  # the set's DocumentReference, as stored
        hidden: set[str] = set()  # of these, the ones ``reader`` may not read
        for rtype, docs in by_type.items():
            held = self.repo.own_current_many(rtype, [d["id"] for d in docs])
            for rid, body in held.items():
                owners = patients_in(rtype, rid, body)
                if owners and patient not in owners:
                    taken[f"{rtype}/{rid}"] = owners
                if rtype == "DocumentReference":
                    stored = orjson.loads(body)
                if reader is not None and (f"{rtype}/{rid}" in taken or rtype ==
                                           "DocumentReference") \
                        and not self.repo.shows(reader, rtype, rid, body):
                    hidden.add(f"{rtype}/{rid}")
        doc = (by_type.get("DocumentReference") or [{}])[0]
        set_id = next((f"{i.get('system', '')}|{i.get('value', '')}".lstrip("|")
                       for i in doc.get("identifier") or ()), None)
        ref = f"DocumentReference/{doc.get('id')}"
        if taken and hidden & set(taken):
            return (OTHER_PATIENT_RULE, "the document's ids are records it may not be written over",
                    "this document's ids are those of stored records this caller may not read, "
                    "which a document may not be written over. Refused, nothing written")
        if taken:
            whose = sorted({p for owners in taken.values() for p in owners})
            if set_id and ref in taken:
                return (OTHER_PATIENT_RULE, "a new version of a document is about another patient",
                        f"document set {set_id} is stored for {', '.join(taken[ref])}; this "
                        f"version is for {patient}: a new version of a document must be about the "
                        f"same patient (the same Patient resource). Refused, nothing written; a "
                        f"steward decides whether the set was filed for the wrong patient")
            return (OTHER_PATIENT_RULE, "the document's ids are another patient's records",
                    f"this document for {patient} would write {len(taken)} records stored for "
                    f"{', '.join(whose)}: {_listed(sorted(taken))}. Refused, nothing written")
        new, old = source_order.order_of(doc), source_order.order_of(stored)
        if set_id and new and old and new.series is not None and new.series == old.series \
                and new.version is not None and new.version == old.version \
                and doc.get("masterIdentifier") != stored.get("masterIdentifier"):
            if ref in hidden:
                return (SAME_VERSION_RULE, "another document is stored as this version of the set",
                        f"version {new.version} of this document set is stored as a document this "
                        f"caller may not read; two documents cannot both be one version of a set. "
                        f"Refused, nothing written")

            def named(d: dict) -> str:
                i = d.get("masterIdentifier") or {}
                return f"{i.get('system', '')}|{i.get('value', '')}".lstrip("|")
            return (SAME_VERSION_RULE, "another document is stored as this version of the set",
                    f"version {new.version} of document set {set_id} is stored as document "
                    f"{named(stored)}; this document ({named(doc)}) claims the same version: two "
                    f"documents cannot both be one version of a set. Refused, nothing written")
        return None

    def _note_superseded(self, resources: list[dict], report: dict) -> bool:
        """A late older version of a stored document: accepted and kept for audit (its Binary and
        this report are written), but the hub leaves what the newer version wrote in place
        (``Hub.execute`` compares the source-order stamps). The report says so, so the sender's
        integration engine sees an answer it need not retry and an operator sees why nothing
        changed."""
        doc = next((r for r in resources if r["resourceType"] == "DocumentReference"), None)
        new = source_order.order_of(doc) if doc is not None else None
        if doc is None or not new:
            return False
        stored = self.repo.own_current("DocumentReference", doc["id"])
        if stored is None:
            return False
        why = source_order.older_than(new, source_order.order_of(stored))
        if not why:
            return False
        binary = next((r["id"] for r in resources if r["resourceType"] == "Binary"), None)
        report["issue"] = [*_findings_only(report["issue"]), _version_issue(
            "information", "informational", SUPERSEDED_RULE,
            "an older version of a stored document arrived late",
            f"superseded: {why}. This version is kept for audit (Binary/{binary}, this report); "
            f"the resources of the stored newer version are not replaced")]
        return True


class DocumentService(StoredDocuments):
    def __init__(self, repo: Repository, quarantine: Quarantine, normaliser: Any = None):
        super().__init__(repo)
        self.quarantine = quarantine
        # local codes get their standard coding beside them (terminology.normalise.StoredMaps)
        self.normaliser: Any = normaliser

    def ingest_cda(self, payload: bytes, source: SourceInfo, ctx: Context | None = None,
                   now: datetime | None = None) -> DocumentResult:
        now = now or datetime.now(local_zone())
        ctx = ctx or Context()
        # the document's custodian names the institution only when the connector does not (a parse
        # of its own: the document may not even be well-formed)
        institution = source.institution or reporting_source(source, header(payload)).institution
        ctx.source = {**ctx.source, "institution": institution or "unknown",
                      **({"feed": source.feed} if source.feed else {})}
        try:
            conversion = check_and_convert(payload, source, now)
        except QualityRejected as e:
            return self._refuse(payload, source, ctx, e.report, e.reason)
        except MappingError as e:  # passed the rules, but the mapper cannot map it
            return self._refuse(payload, source, ctx,
                                self._error_report(payload, source, now, e.reason, e.location),
                                e.reason)
        # worded for the sender: a conflict names the stored records only to one that may read them
        conflict, retired = self.settle(conversion.resources, conversion.patient_key, ctx.actor)
        if conflict is not None:
            rule, display, reason = conflict
            return self._refuse(payload, source, ctx, self._error_report(
                payload, source, now, reason, "/hl7:ClinicalDocument/hl7:setId", rule=rule,
                display=display, code="conflict"), reason, status=409)
        report = conversion.resources[-1]
        normaliser = self.normaliser() if self.normaliser is not None else None
        if normaliser is not None:
            normaliser.apply(conversion)
        try:
            results = self._write([*conversion.resources, *retired], ctx)
        except FhirError as e:  # mapper output the hub refuses: a mapper bug, kept for replay
            if e.status in (401, 403):
                raise  # what this sender may not write is never kept (a replay writes as the hub)
            reason = "; ".join(i.diagnostics for i in e.issues)[:1000]
            return self._refuse(payload, source, ctx,
                                self._error_report(payload, source, now, reason, None), reason)
        doc_ref = next((f"{r.rtype}/{r.rid}" for r in results
                        if r.rtype == "DocumentReference"), None)
        # a new version of the DocumentReference (a new document, or a new version of it): 201;
        # the same document again changes nothing: 200
        created = any(r.rtype == "DocumentReference" and r.body is not None for r in results)
        decision = next(e["valueCode"] for e in report["extension"] if "valueCode" in e)
        return DocumentResult(201 if created else 200, decision, report, doc_ref,
                              resources=[f"{r.rtype}/{r.rid}" + (f"/_history/{r.version}" if r.version else "")
                                         for r in results],  # no version: one hidden
                              retired=[f"{r['resourceType']}/{r['id']}" for r in retired
                                       if r["resourceType"] != "DocumentReference"])

    def replay(self, qid: int, now: datetime | None = None) -> DocumentResult:
        entry = self.quarantine.get(qid)
        if entry is None:
            raise KeyError(qid)
        result = self.ingest_cda(entry["payload"], SourceInfo(**entry["source"]),
                                 Context(source={"feed": "quarantine-replay"}, actor=SYSTEM), now)
        summary = {"status": result.status, "decision": result.decision,
                   "document": result.document_ref, "quarantine_id": result.quarantine_id}
        # refused again: the new quarantine entry supersedes this one
        self.quarantine.mark(qid, "replayed" if result.quarantine_id is None else "superseded",
                             summary)
        return result

    def _refuse(self, payload: bytes, source: SourceInfo, ctx: Context, report: dict,
                reason: str, status: int = 422) -> DocumentResult:
        qid = self.quarantine.put("cda", payload, asdict(source), report, reason)
        # a conflict refused a document with the id of a stored one (the same document re-sent
        # for another patient): the stored document's report stays; the quarantine keeps this one
        if status != 409 or self.repo.own_current("OperationOutcome", report["id"]) is None:
            self._write([report], ctx)
        return DocumentResult(status, "reject", report, quarantine_id=qid)

    @staticmethod
    def _error_report(payload: bytes, source: SourceInfo, now: datetime, reason: str,
                      location: str | None, *, rule: str = "cda.mapping.failed",
                      display: str = "the document passed quality control but could not be mapped",
                      code: str = "processing") -> dict:
        h = header(payload)
        doc_id, doc_type = h.doc_id, h.doc_type
        source = reporting_source(source, h)
        issue: dict[str, Any] = {"severity": "error", "code": code, "details": {
            "coding": [{"system": RULE_SYSTEM, "code": rule, "display": display}],
            # a reason may quote the payload: its control characters escaped, or the report
            # itself would be refused
            "text": jsontext.escaped(reason[:1000])}, "diagnostics": "policy reject"}
        if location:
            issue["location"] = [location]
        return quality_report({"issue": [issue]}, "reject", source, doc_id, doc_type, now)

    def _write(self, resources: list[dict], ctx: Context) -> list[Result]:
        for i in to_validate(resources):
            d = source_order.strip_all(resources[i])  # the mapper's own stamps need no validating
            where = f"Document.resource[{i}]"
            res.validate(d["resourceType"], jsontext.dumps(d, where), d, prefix=where)
        ops = []
        for d in resources:
            ops.append(Op("PUT", d["resourceType"], d["id"], d,
                          url=f"{d['resourceType']}/{d['id']}", own=is_quality_report(d)))
        out = self.repo.execute(ops, ctx, atomic=True)
        for r in out:
            if isinstance(r, FhirError):
                raise r
        return out  # type: ignore[return-value]


def document_writes(ops: list[Op]) -> list[tuple[str | None, list[int]]]:
    """The mapped documents among a Bundle's writes, as (their Patient, the positions of their
    writes, the DocumentReference's first). A mapped document is known by the shape ``fhir_mapping.documents`` gives it: its
    quality report (the tag only the hub and connectors may write) names its DocumentReference,
    which names its Composition, which a document Bundle written beside it opens with; its writes
    are those, the Bundle's entries and the Binary of the original bytes."""
    at = {f"{op.rtype}/{op.rid}": i for i, op in enumerate(ops)
          if op.method == "PUT" and op.rid is not None and isinstance(op.d, dict)}
    opened: dict[str, int] = {}  # Composition/id -> the document Bundle opening with it
    for i in at.values():
        d = ops[i].d or {}
        first = (d.get("entry") or [{}])[0] if d.get("resourceType") == "Bundle" \
            and d.get("type") == "document" and isinstance(d.get("entry"), list) else {}
        r = first.get("resource") if isinstance(first, dict) else None
        if isinstance(r, dict) and r.get("resourceType") == "Composition":
            opened[f"Composition/{r.get('id')}"] = i
    out: list[tuple[str | None, list[int]]] = []
    for i in at.values():
        report = ops[i].d
        if not is_quality_report(report):
            continue
        j = at.get(_named(report.get("extension"), QUALITY_DOCUMENT) or "")  # type: ignore[union-attr]
        doc = ops[j].d or {} if j is not None and ops[j].rtype == "DocumentReference" else {}
        comp = next((r["reference"] for r in (doc.get("context") or {}).get("related") or ()
                     if isinstance(r, dict) and str(r.get("reference")).startswith("Composition/")),
                    None)
        if j is None or comp not in at or comp not in opened:
            continue
        b = opened[comp]
        refs = {f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}"
                for e in (ops[b].d or {})["entry"] if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)}
        refs |= {str(c["attachment"].get("url")) for c in doc.get("content") or ()
                 if isinstance(c, dict) and isinstance(c.get("attachment"), dict)}
        members = [j, *sorted({at[r] for r in refs if r in at} | {i, b} - {j})]
        subject = (ops[at[comp]].d or {}).get("subject")
        out.append((subject.get("reference") if isinstance(subject, dict) else None, members))
    return out


def _named(extensions: Any, url: str) -> str | None:
    """The reference of the extension ``url``."""
    for e in extensions or ():
        if isinstance(e, dict) and e.get("url") == url and isinstance(e.get("valueReference"), dict):
            ref = e["valueReference"].get("reference")
            return ref if isinstance(ref, str) else None
    return None


def _entries(composition: dict) -> set[str]:
    """The references a Composition's sections (and their sections) list."""
    out: set[str] = set()
    todo = list(composition.get("section") or [])
    while todo:
        sec = todo.pop()
        out.update(str(e["reference"]) for e in sec.get("entry") or ()
                   if isinstance(e, dict) and isinstance(e.get("reference"), str))
        todo += sec.get("section") or []
    return out


def _as_written(d: dict, order: source_order.Order | None = None) -> dict:
    """A stored version (or one made from it) as the body of a new write: its meta without
    versionId and lastUpdated (the store assigns them), stamped with ``order`` when given, so that
    a late message older than the one that wrote it cannot revive what it replaced."""
    out = {k: v for k, v in d.items() if k != "meta"}
    meta = {k: v for k, v in (d.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    if order:
        source_order.stamp([out], order)
    return out


def _relate(doc: dict, parent_id: Any, target: str) -> None:
    """Name ``target`` (the replaced document's DocumentReference) by reference in ``doc``'s
    ``relatesTo`` replaces of the document id ``parent_id``."""
    key = _ident_key(parent_id)
    rels = doc.setdefault("relatesTo", [])
    for rel in rels:
        t = rel.get("target") if isinstance(rel, dict) else None
        if rel.get("code") == "replaces" and isinstance(t, dict) \
                and (t.get("reference") == target
                     or (key is not None and not t.get("reference")
                         and _ident_key(t.get("identifier")) == key)):
            t["reference"] = target
            return
    rels.append({"code": "replaces", "target": {"reference": target}})


def _ident_key(i: Any) -> tuple[str, str] | None:
    return (i.get("system") or "", str(i.get("value"))) \
        if isinstance(i, dict) and i.get("value") else None


def _ident_text(i: Any) -> str:
    key = _ident_key(i)
    return "|".join(key).lstrip("|") if key is not None else "no document id"


def _content(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "meta"}


def _findings_only(issues: list[dict]) -> list[dict]:
    """A report's issues without its uncoded information line ("no quality findings"), which
    an issue about the document's version replaces."""
    return [i for i in issues if i.get("details", {}).get("coding")
            or i.get("severity") != "information"]


def _version_issue(severity: str, code: str, rule: str, display: str, text: str,
                   location: str = "/hl7:ClinicalDocument/hl7:versionNumber") -> dict:
    """An issue of a document's report about its version (what it supersedes or withdrew)."""
    return {"severity": severity, "code": code, "details": {
        "coding": [{"system": RULE_SYSTEM, "code": rule, "display": display}], "text": text},
        "location": [location]}


def _opens_with(bundle: dict | None, comp_id: str) -> bool:
    """Is ``bundle`` the document Bundle of the Composition ``comp_id`` (its first entry)?"""
    first = ((bundle or {}).get("entry") or [{}])[0]
    r = first.get("resource") if isinstance(first, dict) else None
    return isinstance(r, dict) and r.get("resourceType") == "Composition" and r.get("id") == comp_id


def _listed(refs: list[str]) -> str:
    return ", ".join(refs[:20]) + (" …" if len(refs) > 20 else "")


def to_validate(resources: list[dict]) -> list[int]:
    """Positions of the resources to validate. The document Bundle repeats the document's
    resources: validated as part of it, they are not validated again on their own (validation
    is most of what a document costs)."""
    covered: set[tuple[str, str]] = set()
    for d in resources:
        if d["resourceType"] == "Bundle":
            entries = {(e["resource"]["resourceType"], e["resource"].get("id")): e["resource"]
                       for e in d.get("entry", ()) if isinstance(e.get("resource"), dict)}
            covered |= {(r["resourceType"], r["id"]) for r in resources
                        if r is not d and entries.get((r["resourceType"], r["id"])) == r}
    return [i for i, d in enumerate(resources) if (d["resourceType"], d["id"]) not in covered]
