"""The shared record: a person's Patients and their records across institutions.

- ``person_view``: the golden person as a FHIR ``Person``, built from the person projection (links
  and their assurance, merges) and the linked Patients' current versions (identifiers, and name,
  gender, birth date, telecom and address of the most assured Patient);
- ``SharedRecord.everything``: every resource in the Patient compartment of each of the person's
  Patients, answered from the search index in one query (the compartment's reference parameters
  of every type, from ``projections.search.compartment``, over the Patients' references), paged
  by the index key, bodies read in bulk from the event store;
- ``SharedRecord.timeline``: the timeline projection read for the person's Patients.

Which Patients make a person is always resolved when asked, so every view follows relinks, merges
and unmerges at once. AuditEvents are in the Patient compartment (they name the Patient whose
record was read) but are access metadata, not the record: ``$everything`` leaves them out unless
``_type`` names them.

An operator's one-institution view (``institution=``) keeps the Patients that institution holds:
a Patient belongs to the institution named in the source of its current event (``X-Hub-Source-
Institution``, what connectors send) or to the Organization of its ``managingOrganization`` (id or
``Organization/id``), or of an identifier's ``assigner``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from hub.core.errors import FhirError, bad_request, forbidden, not_found
from hub.core.store import ResourceStore
from hub.mpi.compare import id_status
from hub.mpi.identifiers import is_filler
from hub.mpi.identity import IdentityService
from hub.mpi.listing import deleted_at, gone, newest
from hub.mpi.normalise import RESIDENT_ID, resident_id_features
from hub.repository import VIEW_TYPES
from projections.runner import Runner
from projections.search.compartment import compartment_group, patient_compartment
from projections.search.query import local_reference, with_base
from projections.timeline import TimelineProjection

# AuditEvents (the audit log's, named by ``_type`` only) and the master patient index's view: a
# Person stored before such writes were refused is no part of the record (``_type`` naming it: 400)
EXCLUDED_BY_DEFAULT = ("AuditEvent", *sorted(VIEW_TYPES))

# The care date of each Patient-compartment type, for $everything's start and end ("care dates,
# not record currency dates"): the date search parameters that say when the care happened, any
# of which in the window keeps the resource. A type not listed (Patient, Coverage, Provenance…),
# or a resource with none of these dates, is not dated by care and is always in the window.
CARE_DATES: dict[str, tuple[str, ...]] = {
    "Account": ("period",), "AdverseEvent": ("date",), "AllergyIntolerance": ("onset", "date"),
    "Appointment": ("date",), "CarePlan": ("date",), "CareTeam": ("date",),
    "ChargeItem": ("occurrence",), "Claim": ("created",), "ClaimResponse": ("created",),
    "ClinicalImpression": ("date",), "Communication": ("sent", "received"),
    "CommunicationRequest": ("occurrence", "authored"), "Composition": ("date",),
    "Condition": ("onset-date", "recorded-date"), "Consent": ("date",),
    "CoverageEligibilityRequest": ("created",), "CoverageEligibilityResponse": ("created",),
    "DetectedIssue": ("identified",), "DeviceRequest": ("event-date", "authored-on"),
    "DiagnosticReport": ("date", "issued"), "DocumentManifest": ("created",),
    "DocumentReference": ("period", "date"), "Encounter": ("date",), "EpisodeOfCare": ("date",),
    "ExplanationOfBenefit": ("created",), "FamilyMemberHistory": ("date",), "Flag": ("date",),
    "Goal": ("start-date",), "ImagingStudy": ("started",), "Immunization": ("date",),
    "ImmunizationEvaluation": ("date",), "ImmunizationRecommendation": ("date",),
    "Invoice": ("date",), "List": ("date",), "MeasureReport": ("period",), "Media": ("created",),
    "MedicationAdministration": ("effective-time",),
    "MedicationDispense": ("whenhandedover", "whenprepared"),
    "MedicationRequest": ("authoredon",), "MedicationStatement": ("effective",),
    "NutritionOrder": ("datetime",), "Observation": ("date",), "Procedure": ("date",),
    "QuestionnaireResponse": ("authored",), "RequestGroup": ("authored",),
    "ResearchSubject": ("date",), "RiskAssessment": ("date",), "Schedule": ("date",),
    "ServiceRequest": ("occurrence", "authored"), "Specimen": ("collected",),
    "SupplyRequest": ("date",), "Task": ("period", "authored-on"),
    "VisionPrescription": ("datewritten",),
}
ASSURANCE_RANK = {"level4": 4, "level3": 3, "level2": 2, "level1": 1}
DEMOGRAPHICS = ("name", "telecom", "gender", "birthDate", "address")


def body_of(state: bytes) -> bytes:
    return state.partition(b"\n")[2]


# -- the Person view ------------------------------------------------------------------------------

def _the_persons_own(ident: dict, patient: dict) -> bool:
    """Whether a Patient's identifier is the person's to show: a filler (无, 000000) is nobody's,
    and a resident ID number the matcher judges another's (a parent's on a newborn's record:
    its birth date or sex is not the record's) or that fails its check is not the person's."""
    value = ident.get("value")
    if not isinstance(value, str) or is_filler(value):
        return False
    if ident.get("system") != RESIDENT_ID:
        return True
    sex = patient.get("gender")
    sex = sex if sex in ("male", "female") else None
    birth = patient.get("birthDate")
    birth = birth[:10] if isinstance(birth, str) and len(birth) >= 10 else None
    idno, status = resident_id_features(value, sex, birth)
    # as the matcher reads it: a birth date a slip off the number's is the person's own
    return id_status({"id": idno, "ids": status, "bd": birth, "sex": sex}) == "valid"


def carries(patient: dict, system: str | None, value: str | None) -> str | None:
    """How a Patient carries the identifier ``system|value`` (``system`` None: any system, "":
    none; ``value`` None: any value of ``system``), as its person shows it: ``own`` (its person
    shows it), ``invalid`` (a resident ID number failing its check, nobody's), ``other``
    (carried but not shown: someone else's number, a filler), or None (not carried). What an
    identifier search finds a person by: exactly what the person shows."""
    found = None
    for ident in patient.get("identifier") or ():
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        if (system is not None and (ident.get("system") or "") != system) or \
                (value is not None and ident["value"] != value):
            continue
        if _the_persons_own(ident, patient):
            return "own"
        if ident.get("system") == RESIDENT_ID and \
                resident_id_features(ident["value"], None, None)[1] != "valid":
            found = "invalid"
        elif found is None:
            found = "other"
    return found


def patients_shown(store: ResourceStore, rids: list[str], shown: Callable[[str, str, bytes], bool],
                   current: dict | None = None, deleted: bool = False) -> set[str]:
    """The ``Patient/id`` of ``rids`` a caller may see (``shown``: type, id, resource JSON), as a
    Person shows its Patients: current ones it is shown (``current``: their latest states, when
    read already); with ``deleted``, deleted ones whose last version it was shown too (a
    steward's history of the person still names them)."""
    if current is None:
        current = store.latest_many("Patient", rids) if rids else {}
    out = {f"Patient/{rid}" for rid in rids
           if rid in current and shown("Patient", rid, body_of(current[rid][1]))}
    if deleted:
        out |= {f"Patient/{rid}" for rid in
                deleted_at(store, [rid for rid in rids if rid not in current], shown)}
    return out


def person_view(identity: IdentityService, store: ResourceStore, pid: str,
                shown: Callable[[str, str, bytes], bool] | None = None,
                bare: bool = False) -> dict:
    """The FHIR Person of golden person ``pid`` (404 if unknown). ``shown``: whether the caller
    may see a linked Patient (type, id, resource JSON); the Person then holds only the links,
    identifiers and demographics of those, and is refused (403) when it links to none, or,
    with ``bare`` (the answer to a decision the caller made), is only its id and version."""
    P = identity.person
    with P.read() as c:
        row = P.person_row(c, pid)
        if row is None:
            raise not_found(f"Person/{pid} is not known")
        links = P.links(c, pid) if row["merged_into"] is None else []
    out: dict[str, Any] = {"resourceType": "Person", "id": pid,
                           "meta": {"versionId": str(row["version"]),
                                    "lastUpdated": row["updated"]}}
    if row["merged_into"] is not None:
        if shown is not None and not bare:
            # the merge and its survivor are told only to whoever the survivor is shown to
            # (every Patient of both hidden, the link told both that they exist, and where)
            try:
                person_view(identity, store, row["merged_into"], shown)
            except FhirError as e:
                if e.status == 403:
                    raise forbidden(f"Person/{pid} is not shown to this caller") from None
        out["active"] = False
        out["link"] = [{"target": {"reference": f"Person/{row['merged_into']}"},
                        "assurance": "level4"}]
        return out
    ids = [x["patient"].split("/", 1)[1] for x in links]
    current = store.latest_many("Patient", ids)
    # a Patient deleted changes the view (its link and identifiers go) as of its deletion
    deleted = deleted_at(store, [rid for rid in ids if rid not in current], shown)
    if shown is not None and links:
        visible = patients_shown(store, ids, shown, current)
        pairs = [(x, rid) for x, rid in zip(links, ids) if f"Patient/{rid}" in visible]
        if not pairs:
            if bare:
                return out
            if not any(rid in current for rid in ids):
                # every Patient of it deleted: gone, not hidden (a 403 told an administrator
                # it was not allowed to see it)
                raise FhirError(410, "deleted", f"Person/{pid}: every Patient of it was deleted")
            raise forbidden(f"Person/{pid} is not shown to this caller")
        links, ids = [x for x, _ in pairs], [rid for _, rid in pairs]
    idents, seen = [], set()
    best: tuple | None = None
    for x, rid in zip(links, ids):
        found = current.get(rid)
        if found is None:
            continue
        d = orjson.loads(body_of(found[1]))
        for ident in d.get("identifier") or ():
            if not isinstance(ident, dict) or not _the_persons_own(ident, d):
                continue
            key = (ident.get("system"), ident.get("value"))
            if key not in seen and ident.get("value"):
                seen.add(key)
                idents.append(ident)
        rank = (ASSURANCE_RANK.get(x["assurance"], 0), d.get("meta", {}).get("lastUpdated", ""))
        if best is None or rank > best[0]:
            best = (rank, d)
    # the view changes with its Patients as much as with identity events: it was last updated
    # when the newer of them was, or of their deletions (``meta.versionId`` counts the identity
    # events alone)
    out["meta"]["lastUpdated"] = newest([row["updated"], *(
        orjson.loads(current[rid][1].partition(b"\n")[0]).get("lastUpdated")
        for rid in ids if rid in current), *deleted.values()])
    if idents:
        out["identifier"] = idents
    if best is not None:
        for k in DEMOGRAPHICS:
            if k in best[1]:
                out[k] = best[1][k]
    out["active"] = bool(links)
    if links:
        out["link"] = [{"target": {"reference": x["patient"]}, "assurance": x["assurance"]}
                       for x in links]
    return out


# -- the shared record ----------------------------------------------------------------------------

Entry = tuple[str, str, bytes]  # (type, id, resource JSON)


@dataclass
class Scope:
    """What a shared-record read covers: the person (None: a Patient outside the index) and the
    Patients (``Patient/id``) after the institution filter."""

    person: str | None
    patients: list[str]
    all_patients: list[str]


class IndexedSearch(Protocol):
    """What the shared record reads of the search service (``hub.api.search.SearchService``):
    read-your-writes, and the SQLite index whose tables it reads itself."""

    index: Any

    def sync(self) -> bool: ...

    @property
    def sql(self) -> Any: ...


_BINARY_URL = re.compile(rb'"url"\s*:\s*"([^"]{0,300}?)Binary/([A-Za-z0-9\-.]{1,64})"')


def _binaries(body: bytes, base: str | None) -> set[str]:
    """Ids of this server's Binaries an attachment of ``body`` points at (``Binary/id``, or
    absolute on ``base``)."""
    own = (base.rstrip("/") + "/").encode() if base else None
    return {m.group(2).decode() for m in _BINARY_URL.finditer(body)
            if not m.group(1) or m.group(1) == own}


class SharedRecord:
    def __init__(self, store: ResourceStore, identity: IdentityService, search: IndexedSearch,
                 timeline: TimelineProjection, timeline_runner: Runner):
        self.store, self.identity, self.search = store, identity, search
        self.timeline_model, self.timeline_runner = timeline, timeline_runner
        self._pids: dict[tuple[str, ...], tuple[tuple, set[int]]] = {}

    # -- scope ------------------------------------------------------------------------------------

    def scope_of_person(self, pid: str, institution: str | None = None) -> Scope:
        self.identity.sync()
        P = self.identity.person
        with P.read() as c:
            if P.person_row(c, pid) is None:
                raise not_found(f"Person/{pid} is not known")
            survivor = P.survivor(c, pid)
            patients = P.patients(c, survivor)
        if gone(P, self.store, [survivor]):  # as a read of it answers
            raise FhirError(410, "deleted", f"Person/{pid}: every Patient of it was deleted")
        return self._scope(survivor, patients, institution)

    def scope_of_patient(self, rid: str, institution: str | None = None) -> Scope:
        if not self.store.current_ids("Patient", [rid]):
            raise not_found(f"Patient/{rid} is not known (or was deleted)")
        self.identity.sync()
        self.identity.await_decided([f"Patient/{rid}"])  # a Patient just written: its person
        P = self.identity.person
        with P.read() as c:
            person = P.person_of(c, f"Patient/{rid}")
            patients = P.patients(c, person) if person else [f"Patient/{rid}"]
        return self._scope(person, patients, institution)

    def _scope(self, person: str | None, patients: list[str], institution: str | None) -> Scope:
        """The person's Patients, a deleted one's too: a delete of a Patient deletes none of the
        records about it (R4 knows no cascade), and they stay in the person's record (they went
        with it, while a search still found them). The institution filter, which reads the
        Patient, keeps only current ones."""
        ids = [p.split("/", 1)[1] for p in patients]
        current = self.store.latest_many("Patient", ids)
        live = [p for p, i in zip(patients, ids) if i in current]
        kept = patients
        if institution is not None:
            kept = [p for p in live
                    if institution in institutions_of(current[p.split("/", 1)[1]][1])]
        return Scope(person, kept, live)

    # -- $everything --------------------------------------------------------------------------------

    def everything(self, scope: Scope, since_us: int | None, types: list[str] | None,
                   count: int, after_pk: int | None, base: str | None = None,
                   shown: Callable[[list[Entry]], list[Entry]] | None = None,
                   window: tuple[int | None, int | None] = (None, None)
                   ) -> tuple[list[Entry], int | None, int, list[Entry]]:
        """(entries (rtype, rid, body), next cursor, total, referenced) of one page; ``base``,
        this server's base URL: a reference stored absolute on it is to the same Patient;
        ``shown``: the entries a caller may see (the rest are left out, with what only they
        refer to); ``window``: (start, end) in microseconds, end exclusive, either open: the
        resources whose care date (``CARE_DATES``) meets it, and those without one.

        ``referenced``: what the page's resources refer to outside the Patient compartment
        (Practitioner, Organization, Location, Medication, …), as R4's Patient-everything adds
        "any resource referenced from those"; compartment types are never added this way (they
        could be another person's)."""
        if not scope.patients:
            return [], None, 0, []
        if not self.search.sync():
            # a record read from an index being rebuilt was empty, and answered as complete
            raise FhirError(503, "transient", "The search index lags the log (it is being "
                            "rebuilt, or is behind a bulk load); retry")
        wanted = [t for t in patient_compartment() if t not in EXCLUDED_BY_DEFAULT] \
            if types is None else types
        ids = [p.split("/", 1)[1] for p in scope.patients]
        base = base.rstrip("/") if base else None
        targets = with_base(tuple(scope.patients), base)
        sql = self.search.sql
        with self.search.index.datastore.transaction(commit=False) as c:
            pids = self._compartment_pids(c, sql, tuple(wanted))
            parts, args = [], []
            if pids:
                parts.append(f"SELECT r.pk FROM ix_reference r WHERE r.p IN "
                             f"({','.join('?' * len(pids))}) AND r.target IN "
                             f"({','.join('?' * len(targets))})")
                args += [*sorted(pids), *targets]
            if "Patient" in wanted:
                parts.append(f"SELECT pk FROM sp_res WHERE rtype='Patient' AND rid IN "
                             f"({','.join('?' * len(ids))})")
                args += ids
            if not parts:
                return [], None, 0, []
            where = [f"s.pk IN ({' UNION '.join(parts)})",
                     f"s.rtype IN ({','.join('?' * len(wanted))})"]
            args += wanted
            if since_us is not None:
                where.append("s.updated >= ?")
                args.append(since_us)
            if window != (None, None):
                dated = sorted({pid for t in wanted for code in CARE_DATES.get(t, ())
                                for pid in sql.stored_as(c, t, code)[0] if pid >= 0})
                if dated:
                    marks = ",".join("?" * len(dated))
                    start, end = window
                    where.append(
                        f"(NOT EXISTS (SELECT 1 FROM ix_date d WHERE d.pk = s.pk AND d.p IN ({marks}))"
                        f" OR EXISTS (SELECT 1 FROM ix_date d WHERE d.pk = s.pk AND d.p IN ({marks})"
                        " AND d.hi > ? AND d.lo < ?))")
                    args += [*dated, *dated, -1e300 if start is None else start,
                             1e300 if end is None else end]
            base_sql = "FROM sp_res s WHERE " + " AND ".join(where)
            c.execute("SELECT COUNT(*) " + base_sql, args)
            total = c.fetchone()[0]
            page_where = ""
            page_args = list(args)
            if after_pk is not None:
                page_where = " AND s.pk > ?"
                page_args.append(after_pk)
            c.execute(f"SELECT s.pk, s.rtype, s.rid {base_sql}{page_where} ORDER BY s.pk LIMIT ?",
                      [*page_args, count + 1])
            rows = [tuple(r) for r in c.fetchall()]
        more = len(rows) > count
        rows = rows[:count]
        bodies = self._bodies([(r[1], r[2]) for r in rows])
        entries = [(rt, rid, bodies[(rt, rid)]) for _, rt, rid in rows if (rt, rid) in bodies]
        if shown is not None:
            entries = shown(entries)
        kept = {(rt, rid) for rt, rid, _ in entries}
        with self.search.index.datastore.transaction(commit=False) as c:
            refs = self._referenced(c, [pk for pk, rt, rid in rows if (rt, rid) in kept], base)
        # the documents themselves: an attachment's url (a DocumentReference's content, a
        # report's presentedForm) is no reference the index holds, and R4's Patient-everything
        # returns "binaries and attachments" too
        refs = sorted(set(refs) | {("Binary", b) for _, _, body in entries
                                   for b in _binaries(body, base)})
        bodies = self._bodies(refs)
        referenced = [(rt, rid, bodies[(rt, rid)]) for rt, rid in refs if (rt, rid) in bodies]
        return entries, (rows[-1][0] if more and rows else None), total, referenced

    @staticmethod
    def _referenced(c, pks: list[int], base: str | None = None) -> list[tuple[str, str]]:
        """(type, id) of the local references of resources ``pks`` to types outside the Patient
        compartment, from the index's reference rows, in a stable order (a reference stored
        absolute on ``base``, this server's base URL without its slash, is local too)."""
        compartment = patient_compartment()
        out: set[tuple[str, str]] = set()
        for i in range(0, len(pks), 500):
            chunk = pks[i:i + 500]
            c.execute("SELECT DISTINCT target FROM ix_reference WHERE pk IN "
                      f"({','.join('?' * len(chunk))})", chunk)
            for (target,) in c.fetchall():
                rtype, _, rid = local_reference(target or "", base).partition("/")
                if rid and "/" not in rid and ":" not in rtype and rtype not in compartment \
                        and rtype not in ("Patient", "Person"):
                    out.add((rtype, rid))
        return sorted(out)

    def _compartment_pids(self, c, sql, wanted: tuple[str, ...]) -> set[int]:
        """Parameter ids of the compartment's reference parameters of ``wanted`` types; cached
        while the index's parameter table is unchanged (a type's first value adds a row)."""
        c.execute("SELECT COUNT(*), MAX(id) FROM sp_param")
        stamp = tuple(c.fetchone())
        cached = self._pids.get(wanted)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        pids: set[int] = set()
        for rtype in wanted:
            if rtype == "Patient":
                continue
            for crit in compartment_group("Patient", "x", rtype):
                found, _ = sql.stored_as(c, rtype, crit.param)
                pids.update(p for p in found if p >= 0)
        if len(self._pids) > 64:
            self._pids.clear()
        self._pids[wanted] = (stamp, pids)
        return pids

    def _bodies(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        by_type: dict[str, list[str]] = {}
        for rt, rid in keys:
            by_type.setdefault(rt, []).append(rid)
        out = {}
        for rt, rids in by_type.items():
            for rid, (_, state) in self.store.latest_many(rt, rids).items():
                out[(rt, rid)] = body_of(state)
        return out

    # -- $timeline ----------------------------------------------------------------------------------

    def timeline(self, scope: Scope, start: int | None, end: int | None,
                 kinds: list[str] | None, count: int,
                 after: tuple[int, str, str] | None,
                 undated: set[tuple[str, str]] | None = None, newest_first: bool = False
                 ) -> tuple[list[tuple[str, str, bytes]], tuple[int, str, str] | None]:
        """One page of the timeline, the oldest first (``newest_first``: the newest first); ``undated``,
        if given, receives the (type, id) of the rows placed by when they were written, having
        no clinical time of their own."""
        if not scope.patients:
            return [], None
        if not self.timeline_runner.sync():
            raise FhirError(503, "transient", "The timeline projection lags the log; retry")
        ids = [p.split("/", 1)[1] for p in scope.patients]
        rows = self.timeline_model.query(ids, start, end, kinds, count + 1, after, newest_first)
        more = len(rows) > count
        rows = rows[:count]
        bodies = self._bodies([(r[1], r[2]) for r in rows])
        entries = [(r[1], r[2], bodies[(r[1], r[2])]) for r in rows if (r[1], r[2]) in bodies]
        if undated is not None:
            undated.update((r[1], r[2]) for r in rows if not r[6])
        nxt = (rows[-1][0], rows[-1][1], rows[-1][2]) if more and rows else None
        return entries, nxt


def institutions_of(state: bytes) -> set[str]:
    """The names a Patient's institution goes by (see the module's docstring)."""
    header, _, body = state.partition(b"\n")
    out: set[str] = set()
    try:
        h = orjson.loads(header)
        inst = (h.get("source") or {}).get("institution")
        if isinstance(inst, str):
            out.add(inst)
        d = orjson.loads(body)
    except orjson.JSONDecodeError:
        return out
    refs = [d.get("managingOrganization")]
    refs += [i.get("assigner") for i in d.get("identifier") or () if isinstance(i, dict)]
    for ref in refs:
        if isinstance(ref, dict):
            r = ref.get("reference")
            if isinstance(r, str) and r.startswith("Organization/"):
                out.add(r)
                out.add(r[len("Organization/"):])
    return out


def check_types(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    comp = patient_compartment()
    out = []
    for t in raw.split(","):
        t = t.strip()
        if not t:
            continue
        if t == "AuditEvent":  # in the audit log, not the record: an empty page misled
            raise bad_request("AuditEvents are not part of a patient's record here: an auditor "
                              "searches them with AuditEvent?patient=Patient/…")
        if t in VIEW_TYPES:  # as a compartment search answers it
            raise bad_request(f"_type={t}: {t} is the master patient index's view, read at GET "
                              f"/fhir/{t}/{{id}} and searched at GET /fhir/{t}?identifier=|"
                              "patient=|link=|_id=, not part of a record")
        if t != "Patient" and t not in comp:
            raise bad_request(f"_type {t[:64]!r} is not a type of the Patient compartment")
        if t not in out:
            out.append(t)
    if not out:
        raise bad_request("_type names no type")
    return out
