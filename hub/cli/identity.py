"""``hub identity …``: master patient index decisions taken from the command line."""

from __future__ import annotations

import sys

import orjson

from hub.core.commandline import UsageError, open_store
from hub.core.config import Settings


def cmd_identity(args, settings: Settings) -> int:  # hub identity … (hub/mpi/identity.py)
    """Decisions as identity events, taken like the API's operations; prints the resulting Person
    (or the queue)."""
    from hub.mpi.everything import person_view
    from hub.mpi.identity import IdentityService

    store = open_store(settings, existing=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    identity = IdentityService.open(store, settings.data_dir)
    try:
        # show takes neither --user nor --reason
        act, user, reason = args.identity_action, vars(args).get("user"), vars(args).get("reason")
        if act == "review" and args.review_action == "list":
            identity.sync()
            status = None if args.status == "all" else args.status
            for r in identity.person.reviews(status, 1000):
                print(orjson.dumps({k: r[k] for k in ("id", "status", "patient", "candidates",
                                                      "score", "evidence", "ruleset", "opened",
                                                      "outcome")}).decode())
            return 0
        if act != "show" and not user:
            raise UsageError("a decision needs --user (or $HUB_USER)")
        person = None
        if act == "link":
            evs = identity.link(args.patient, args.person, user, reason)
        elif act == "unlink":
            evs = identity.unlink(args.patient, user, reason)
        elif act == "merge":
            evs = identity.merge(args.source, args.target, user, reason)
        elif act == "unmerge":
            evs = identity.unmerge(args.source, user, reason)
            person = args.source.removeprefix("Person/")
        elif act == "not-duplicate":
            evs = identity.not_duplicate(args.patient, args.other, user, reason)
            print(f"{len(evs)} identity event(s) recorded")
            return 0
        elif act == "review":
            if not args.review_id:
                raise UsageError("review accept|reject needs the review id")
            if args.review_action == "accept":
                evs = identity.accept_review(args.review_id, user, args.candidate, reason)
            else:
                evs = identity.reject_review(args.review_id, user, reason)
                print(f"review {args.review_id} rejected")
                return 0
        else:  # show
            identity.sync()
            ref = args.reference
            if ref.startswith("Patient/"):
                with identity.person.read() as c:
                    person = identity.person.person_of(c, ref)
                if person is None:
                    raise UsageError(f"{ref} is not linked to any person")
            else:
                person = ref.removeprefix("Person/")
            evs = []
        if person is None:
            person = next((e.data.get("new_person") or e.data.get("target") or e.data["person"]
                           for e in reversed(evs) if e.event in ("Linked", "Unlinked", "Merged")),
                          None)
            if person is None and act in ("link", "review"):
                with identity.person.read() as c:
                    person = identity.person.person_of(c, getattr(args, "patient", "") or "")
        if person is not None:
            with identity.person.read() as c:
                person = identity.person.survivor(c, person)
            sys.stdout.write(orjson.dumps(person_view(identity, store, person),
                                          option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    finally:
        identity.close()
        store.close()
