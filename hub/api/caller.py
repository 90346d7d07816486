"""Who is calling: the one place a request becomes a ``Context`` with its ``Actor``.

Handlers never read identity headers themselves; they take ``context_of(request)`` and hand it to
the repository, which asks the access policy. Without authentication configured the actor is
named by ``X-Hub-User`` (else ``anonymous``) and its purpose by ``X-Purpose-Of-Use``: claims, not
proof, which is why the open policy is the only one that trusts them.
"""

from __future__ import annotations

import re

from fastapi import Request

from hub.core.access import ANONYMOUS, Actor
from hub.core.errors import bad_request
from hub.core.ingest import Context
from hub.repository import Repository

_USER = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")

# the v3 PurposeOfUse codes (http://terminology.hl7.org/CodeSystem/v3-ActReason)
PURPOSES = frozenset({
    "TREAT", "ETREAT", "CAREMGT", "CLINTRL", "COC", "HPAYMT", "CLMATTCH", "COVAUTH", "COVERAGE",
    "HOPERAT", "HSYSADMIN", "HMARKT", "HRESCH", "PATRQT", "FAMRQT", "PWATRNY", "SUPNWK",
    "PUBHLTH", "DISASTER", "THREAT", "HDIRECT", "HLEGAL", "HQUALIMP", "HACCRED", "HCOMPL",
    "HDM", "HOUTCOMS", "HPRGRP", "HTEST", "TRAIN", "BTG", "ERTREAT", "POPHLTH", "PATADMIN",
    "PATSFTY", "DONAT", "METAMGT", "SYSDEV", "RECORDMGT",
})


def user_of(request: Request) -> str:
    u = request.headers.get("x-hub-user")
    if u and _USER.match(u) and u.strip():
        return u.strip()
    return "anonymous"


def purpose_of(request: Request) -> str | None:
    p = request.headers.get("x-purpose-of-use")
    if p is None:
        return None
    p = p.strip().upper()
    if p not in PURPOSES:
        raise bad_request("X-Purpose-Of-Use must be a v3 PurposeOfUse code such as TREAT, "
                          "ETREAT, HPAYMT, HOPERAT, PUBHLTH, HRESCH or PATRQT")
    return p


def actor_of(request: Request) -> Actor:
    user = user_of(request)
    purpose = (request.headers.get("x-purpose-of-use") or "").strip().upper()
    if user == "anonymous" and not purpose:
        return ANONYMOUS
    return Actor(subject=user, kind="anonymous" if user == "anonymous" else "user",
                 purpose=purpose if purpose in PURPOSES else None)


def context_of(request: Request, feed: str = "rest") -> Context:
    """The request's context: its id (``X-Request-Id``), the source its writes are recorded
    under and its actor."""
    rid = request.headers.get("x-request-id")
    ctx = Context(request_id=rid[:64]) if rid and rid.isprintable() else Context()
    ctx.source = {"feed": feed}
    # a connector names its institution and feed (recorded in each event's source, shown by
    # `hub history`); metadata, not authorization
    for header, key in (("x-hub-source-institution", "institution"), ("x-hub-source-feed", "feed")):
        value = request.headers.get(header)
        if value and value.isprintable():
            ctx.source[key] = value[:128]
    ctx.actor = actor_of(request)
    if request.client is not None and request.client.host:
        ctx.address = request.client.host
    ctx.query = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return ctx


def repository(request: Request) -> Repository:
    return request.app.state.repo
