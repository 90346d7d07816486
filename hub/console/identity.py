"""The identity review: the matcher's queue, each pair side by side with its evidence."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.api.caller import actor_of, authorize, repository
from hub.api.identity import hidden_patients, require_shown, review_patients, seen_by, told_as_seen
from hub.console.common import check_csrf, notice_of, page, router, say, with_notice
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.events import resource_bytes
from hub.mpi.everything import patients_shown

# -- identity review --------------------------------------------------------------------------

PAIR_FIELDS = ("name", "gender", "birthDate", "identifiers", "telecom", "address", "organization")


@router.api_route("/console/identity", methods=["GET", "HEAD"], name="console-identity",
                  include_in_schema=False)
def identity_page(request: Request) -> Response:
    """The review queue: each pair side by side (each Patient read through the repository, so
    audited as the steward's read) with the matcher's evidence, field by field."""
    ctx = authorize(request, Action("operation", None, None, "$mpi-review"))
    identity = request.app.state.identity
    if identity is None:
        raise FhirError(503, "transient", "The master patient index is not running")
    identity.sync()
    reviews = []
    rows = identity.person.reviews("open", 50)
    # a review about a Patient hidden from this steward is not shown, as in the API's queue: it
    # told that the Patient exists and whom it resembles
    hidden = set(hidden_patients(repository(request), ctx, sorted(
        {p for r in rows for p in [r["patient"], *r["candidates"]]})))
    for r in rows:
        if hidden & {r["patient"], *r["candidates"]}:
            continue
        people = [_person_view(request, ctx, ref) for ref in [r["patient"], *r["candidates"]]]
        reviews.append({"id": r["id"], "score": r["score"], "people": people,
                        "evidence": evidence_of(r.get("evidence") or {})})
    return page(request, "identity.html", "identity", reviews=reviews, fields=PAIR_FIELDS,
                 notice=notice_of(request))


def evidence_of(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """The matcher's evidence per candidate (``{candidate: {weight, score, fields: {field:
    {level, weight}}}}``, hub.mpi.incremental): its total weight and score and a row per field
    (field, agreement level, weight). Evidence given as fields alone is one unnamed group."""
    groups = evidence.items() if all(isinstance(v, dict) and "fields" in v
                                     for v in evidence.values()) \
        else [("", {"fields": evidence})]
    out = []
    for ref, group in sorted(groups):
        rows = []
        for name, e in sorted((group.get("fields") or {}).items()):
            level, weight = (e.get("level", ""), e.get("weight", "")) if isinstance(e, dict) \
                else (str(e), "")  # a note ("merged by its institution")
            rows.append((name, level, weight))
        out.append({"ref": ref, "weight": group.get("weight", ""),
                    "score": group.get("score", ""), "fields": rows})
    return out


def _person_view(request: Request, ctx: Any, ref: str) -> dict[str, str]:
    view = {"ref": ref}
    rtype, _, rid = ref.partition("/")
    try:
        stored = repository(request).read(ctx, rtype, rid)
    except FhirError as e:  # a deletion reaches only whoever may see what it deleted
        return {**view, **{f: "" for f in PAIR_FIELDS},
                "name": say(request, "deleted_record" if e.status == 410 else "hidden")}
    p = orjson.loads(resource_bytes(stored))
    name = (p.get("name") or [{}])[0]
    view["name"] = name.get("text") or "".join(
        [name.get("family", ""), *(g for g in name.get("given", []) if isinstance(g, str))])
    view["gender"] = p.get("gender", "")
    view["birthDate"] = p.get("birthDate", "")
    view["identifiers"] = "; ".join(str(i.get("value", "")) for i in p.get("identifier") or [])
    view["telecom"] = "; ".join(str(t.get("value", "")) for t in p.get("telecom") or [])
    view["address"] = "; ".join(a.get("text") or " ".join(a.get("line") or []) for a in
                                p.get("address") or [])
    view["organization"] = (p.get("managingOrganization") or {}).get("display") or \
        (p.get("managingOrganization") or {}).get("reference", "")
    return view


@router.post("/console/identity/{rid}/decide", name="console-identity-decide",
             include_in_schema=False)
async def identity_decide(request: Request, rid: str) -> Response:
    form = await request.form()
    decision = str(form.get("decision") or "")
    operation = {"accept": "$mpi-review-accept", "reject": "$mpi-review-reject",
                 "dismiss": "$mpi-review-reject"}.get(decision)
    if operation is None:
        raise FhirError(400, "invalid", "decision is accept, reject or dismiss")
    ctx = authorize(request, Action("operation", None, rid, operation))
    check_csrf(request, form)
    identity = request.app.state.identity
    user = actor_of(request).named  # an identity provider's person with that provider
    reason = str(form.get("reason") or "")[:500] or None

    def decide() -> None:
        # decided only by a steward shown the review (as the API's $accept and $reject)
        require_shown(request, review_patients(identity, rid))
        if decision == "accept":
            told_as_seen(repository(request), ctx,
                         lambda: identity.accept_review(rid, user, None, reason))
        elif decision == "reject":
            identity.reject_review(rid, user, reason)
        else:
            identity.dismiss_review(rid, user, reason)

    await run_in_threadpool(decide)
    notice = f"{rid}: " + say(request, {"accept": "accepted", "reject": "rejected",
                                        "dismiss": "dismissed"}[decision])
    return RedirectResponse(with_notice(request, "/console/identity", notice), 303)


# -- a person's history -----------------------------------------------------------------------

def _undo_of(d: dict[str, Any]) -> tuple[str, str] | None:
    """The operation that undoes a decision, and what it does (``None``: none undoes it)."""
    return {"Linked": ("$link", f"{d['patient']} → Person/{d['b']}") if d["b"] else
            ("$unlink", f"{d['patient']} → a person of its own"),
            "Unlinked": ("$link", f"{d['patient']} → Person/{d['a']}"),
            "Merged": ("$unmerge", f"Person/{d['a']} ↛ Person/{d['b']}"),
            "Unmerged": ("$merge", f"Person/{d['a']} → Person/{d['b']}")}.get(d["event"])


def _person_of(identity: Any, ref: str) -> tuple[str, str | None]:
    """The person ``ref`` finds, and the Patient it was found by (None: by its id)."""
    ref = ref.strip()
    with identity.person.read() as c:
        if ref.startswith("Person/"):
            person = ref[len("Person/"):]
            if identity.person.person_row(c, person) is None:
                raise _unknown(ref)
            return identity.person.survivor(c, person), None
        patient = ref if "/" in ref else f"Patient/{ref}"
        found = identity.person.person_of(c, patient)
    if found is None:
        raise _not_linked(ref)
    return found, patient


def _unknown(ref: str) -> FhirError:
    return FhirError(404, "not-found", f"{ref} is not known")


def _shown_person(request: Request, identity: Any, patients: list[str]) -> bool:
    """Whether a person holding ``patients`` is shown to the caller: it holds one it sees, or
    none (as the API's Person)."""
    return not patients or bool(_seen(request, identity, patients))


def _not_linked(ref: str) -> FhirError:
    return FhirError(404, "not-found", f"{ref} is not linked to any person")


def _named(d: dict[str, Any]) -> list[str]:
    """The Patients a decision of the history names."""
    return [x for x in (d["patient"], d["a"], d["b"]) if x and x.startswith("Patient/")]


def _persons_named(d: dict[str, Any]) -> list[str]:
    """The persons (ids) a decision names: a link's and an unlink's two, a merge's two."""
    return [] if d["event"] == "NotDuplicate" else [x for x in (d["a"], d["b"]) if x]


def _seen(request: Request, identity: Any, refs: list[str]) -> set[str]:
    """Of ``Patient/id`` references, those the caller may see, as the API's Person shows its
    Patients (a deleted one as its last version was shown: its decisions can still be undone)."""
    rids = sorted({r.split("/", 1)[1] for r in refs})
    return patients_shown(identity.store, rids, seen_by(request), deleted=True)


def _judged(request: Request, identity: Any, person: str,
            history: list[dict]) -> list[tuple[dict, bool]]:
    """The decisions of ``person``'s history the caller is shown, each with whether it may undo
    it. Shown: every Patient it names is seen, and every person it names holds one seen or
    none (a person wholly hidden, named, told that it exists and whom it joined). Undone: only
    when the caller sees every Patient the undo changes, those of the persons it names and of
    the person itself included (a merge names Persons only: judged by Patients named alone, a
    steward undid the merge of two persons wholly hidden from it)."""
    P = identity.person
    own: dict[str, list[str]] = {}
    changed: list[set[str]] = []
    with P.read() as c:
        mine = set(P.patients(c, P.survivor(c, person)))
        for d in history:
            touched = set(_named(d)) | mine
            for x in _persons_named(d):
                own.setdefault(x, P.patients(c, x))
                touched |= set(P.patients(c, P.survivor(c, x)))
            for p in _named(d):
                now = P.person_of(c, p)
                touched |= set(P.patients(c, now)) if now else set()
            changed.append(touched)
    seen = _seen(request, identity, sorted(set().union(*changed, *own.values())))
    out = []
    for d, touched in zip(history, changed):
        if set(_named(d)) <= seen and all(not own[x] or seen & set(own[x])
                                          for x in _persons_named(d)):
            out.append((d, touched <= seen))
    return out


@router.api_route("/console/identity/person", methods=["GET", "HEAD"],
                  name="console-identity-person", include_in_schema=False)
def person_page(request: Request) -> Response:
    """A person (found by one of its Patients or its id): the Patients linked to it, each read
    through the repository (audited), and its link, merge and unmerge history, newest first,
    each decision with the action that undoes it; of both, only what names Patients (and
    persons) the caller may see, and an undo only where it sees every Patient it changes."""
    ctx = authorize(request, Action("operation", None, None, "$mpi-review"))
    identity = request.app.state.identity
    if identity is None:
        raise FhirError(503, "transient", "The master patient index is not running")
    identity.sync()
    ref = request.query_params.get("ref", "")[:200]
    person, patient = _person_of(identity, ref)
    with identity.person.read() as c:
        links = identity.person.links(c, person)
        history = identity.person.history(c, person)
        merged = identity.person.merged_into_me(c, person)
    # the person as the API's Person shows it to this caller: only the Patients it may see,
    # found only through one of them, hidden when it holds none (a Patient hidden by a consent
    # told the steward that it exists, whom it is linked with and who they are)
    seen = _seen(request, identity, [x["patient"] for x in links])
    if patient is not None and patient not in seen:
        raise _not_linked(ref)  # as a Patient no person holds
    if links and not seen:  # as an unknown person: a 403 told it exists (and its survivor)
        raise _unknown(ref)
    links = [x for x in links if x["patient"] in seen]
    with identity.person.read() as c:  # a person merged here wholly hidden is not named
        merged = [m for m in merged
                  if _shown_person(request, identity, identity.person.patients(c, m))]
    judged = _judged(request, identity, person, history)
    history = [d for d, _ in judged]
    people = {x["patient"]: _person_view(request, ctx, x["patient"]) for x in links}
    for d, may_undo in judged:
        undo = _undo_of(d) if may_undo else None
        d["undo"], d["undo_what"] = undo if undo else ("", "")
    return page(request, "person.html", "identity", person=person, links=links, people=people,
                history=history, merged=merged, ref=ref,
                notice=notice_of(request))


@router.post("/console/identity/person/{person}/undo", name="console-identity-undo",
             include_in_schema=False)
async def undo(request: Request, person: str) -> Response:
    """Undo one decision of the person's history (read again here: the form names it only)."""
    # who may undo anything at all, before the history is read: a refusal tells nothing of
    # which decisions exist (each undo is then checked as the operation it is)
    ctx = authorize(request, Action("operation", None, None, "$unlink"))
    form = await request.form()
    check_csrf(request, form)
    identity = request.app.state.identity
    seq = int(str(form.get("seq") or "0")) if re.fullmatch(r"[0-9]{1,18}", str(form.get("seq") or "")) else 0
    with identity.person.read() as c:
        found = next((d for d in identity.person.history(c, person, 10_000) if d["seq"] == seq),
                     None)
    if found is not None:  # only a decision its page offers to undo: one changing no Patient
        # hidden from the caller, or it answers as an unknown one
        judged = await run_in_threadpool(_judged, request, identity, person, [found])
        found = found if judged and judged[0][1] else None
    if found is None or _undo_of(found) is None:
        raise FhirError(404, "not-found", f"Person/{person} has no decision #{seq} to undo")
    operation = _undo_of(found)[0]  # type: ignore[index]  # not None: checked above
    authorize(request, Action("operation", None, None, operation))
    user = actor_of(request).named  # an identity provider's person with that provider
    reason = str(form.get("reason") or "")[:400] or f"undo of decision #{seq}"
    d = found
    call = {"$link": lambda: identity.link(d["patient"], d["b"] if d["event"] == "Linked"
                                           else d["a"], user, reason),
            "$unlink": lambda: identity.unlink(d["patient"], user, reason),
            "$unmerge": lambda: identity.unmerge(d["a"], user, reason),
            "$merge": lambda: identity.merge(d["a"], d["b"], user, reason)}[operation]
    try:
        await run_in_threadpool(told_as_seen, repository(request), ctx, call)
        notice = f"#{seq}: {say(request, 'undone')}"
    except FhirError as e:
        if e.status not in (400, 404, 409):
            raise
        notice = f"#{seq}: {say(request, 'not_undone')} ({e.issues[0].diagnostics if e.issues else e.status})"
    await run_in_threadpool(identity.sync)
    back = d["patient"] or f"Person/{person}"
    return RedirectResponse(with_notice(request, f"/console/identity/person?ref={quote(back)}",
                                        notice), 303)
