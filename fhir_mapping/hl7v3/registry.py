"""The terminology registry (PRVS_IN000001UV01 register, PRVS_IN000002UV01 update) -> CodeSystem +
ValueSet (tables ``terminology.yaml``).

Each dictionary the message registers (``registrationRequest/subject1/valueSet``: its id, its
description, status and version, and its items with their status) becomes a CodeSystem holding
the items (``content: complete``; an item's own status as the ``status`` property, retired items
kept) and a ValueSet of the whole system, one canonical URL for both. An update lands on the same
resources (the URL keys them) and adds or changes the items it names; those it does not name are
kept (``hub.v3intake``): a dictionary never loses a code by an update.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from lxml import etree

from fhir_mapping.base import MappingError

from .common import Ctx, attr, display, first, ids, q, table, text_parts
from .registrations import _practitioner, _where

SUBJECT = "/*/hl7:controlActProcess/hl7:subject/hl7:registrationRequest"


def canonical(ctx: Ctx, root: str, ext: str) -> str:
    """The dictionary's URL: urn:oid:<root> for an OID without a code, else its institution's."""
    t = table("terminology")
    if root and not ext and re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", root):
        return f"urn:oid:{root}"
    return f"{t['local_base']}/{quote(ctx.inst, safe='')}/{quote(ext or root, safe='')}"


def _status(ctx: Ctx, el: etree._Element | None, what: str) -> str:
    t = table("terminology")
    code = attr(el, "code")
    if not code:
        return "active"
    status = t["status"].get(code)
    if status is None:
        raise MappingError(f"the {what}'s statusCode {code!r} is none of {', '.join(t['status'])}",
                           code="AE", location=_where(ctx, el) or SUBJECT,
                           rule="v3.terminology.status-unknown")
    return str(status)


def _dictionary(ctx: Ctx, vs: etree._Element) -> None:
    t = table("terminology")
    idl = ids(first(vs, "id"))
    root, ext = next(((r, e) for r, e in idl), ("", ""))
    if not root and not ext:
        raise MappingError("the dictionary has no id (valueSet/id)", code="AE",
                           location=_where(ctx, vs) or SUBJECT, rule="v3.terminology.id-missing")
    url = canonical(ctx, root, ext)
    name = attr(first(vs, "desc"), "value") or text_parts(first(vs, "desc"))
    version_el = first(vs, "version")
    version = attr(version_el, "code")
    status = _status(ctx, first(vs, "statusCode"), "dictionary")
    concepts = []
    seen: set[str] = set()
    for item in q(vs, "valueSetItems"):
        code_el = first(item, "code")
        code = attr(code_el, "code")
        if not code:
            raise MappingError("a dictionary item has no code (valueSetItems/code/@code)",
                               code="AE", location=_where(ctx, item) or SUBJECT,
                               rule="v3.terminology.code-missing")
        if code in seen:
            # R4's csd-1: the hub refuses a CodeSystem defining a code twice; which of the two
            # items the sender meant cannot be told, so the message is refused, not one dropped
            raise MappingError(f"the dictionary lists code {code[:40]!r} twice (valueSetItems)",
                               code="AE", location=_where(ctx, item) or SUBJECT,
                               rule="v3.terminology.code-duplicate")
        seen.add(code)
        concept: dict[str, Any] = {"code": code}
        label = display(code_el)
        if label:
            concept["display"] = label
        item_status = _status(ctx, first(item, "statusCode"), "item")
        concept["property"] = [{"code": t["concept_status_property"]["code"],
                                "valueCode": item_status}]
        concepts.append(concept)
    machine = re.sub(r"[^A-Za-z0-9_]", "_", ext or root) or "dictionary"
    common: dict[str, Any] = {"url": url, "status": status, "name": machine[:255]}
    if version:
        common["version"] = version
    if name:
        common["title"] = name
    common["publisher"] = ctx.source.name or ctx.inst
    cs: dict[str, Any] = {"resourceType": "CodeSystem", "id": ctx.id("CodeSystem", url), **common,
                          "content": "complete",
                          "property": [dict(t["concept_status_property"])]}
    if root and ext:
        cs["identifier"] = [{"system": f"urn:oid:{root}", "value": ext}]
    if concepts:
        cs["concept"] = concepts
        cs["count"] = len(concepts)
    ctx.add(cs)
    vs_res: dict[str, Any] = {"resourceType": "ValueSet", "id": ctx.id("ValueSet", url), **common,
                              "compose": {"include": [{"system": url, **(
                                  {"version": version} if version else {})}]}}
    ctx.add(vs_res)


def register(ctx: Ctx) -> list[dict[str, str]]:
    """PRVS_IN000001UV01 / PRVS_IN000002UV01: every dictionary of the message."""
    request = first(ctx.msg.control, "subject/registrationRequest")
    sets = q(request, "subject1/valueSet")
    if not sets:
        raise MappingError("no dictionary in the message (registrationRequest/subject1/valueSet)",
                           code="AE", location=SUBJECT, rule="v3.terminology.missing")
    for vs in sets:
        _dictionary(ctx, vs)
    author = _practitioner(ctx, first(request, "author/assignedEntity"))
    return [author] if author else []
