"""MDM^T01-T11: TXA -> DocumentReference; content from the OBX segments (TX/FT/ST text as a
UTF-8 text attachment, ED as its data, RP as a URL). T01/T03/T05/T07/T09 carry no content: the
reference is kept with a title-only attachment. An OBX of any other type (NM, CWE, SN, HD…) is a
result sent with the document: an Observation as ORU maps it (``results.observation``), in
DocumentReference.context.related."""

from __future__ import annotations

import base64
from typing import Any

from . import datatypes as dt
from .context import Ctx
from .orders import service_request
from .patient_context import patient_context
from .people import practitioner
from .results import document_text, documents, observation, occurrences, put_instant, split_groups
from .tables import table

_CODES = table("codes")
_DOC_STATUS = _CODES["document_status"]
_AVAIL = _CODES["document_availability"]
_TXA_TIMES = {4: "activity date/time", 6: "origination date/time"}


def build(ctx: Ctx) -> None:
    txa = ctx.msg.first("TXA")
    if txa is None:
        raise ctx.error(f"{ctx.kind} has no TXA segment", "TXA", "v2.txa.missing")
    patient_context(ctx)
    sent = [(f, dt.comp(txa.rep(f), 1)) for f in (12, 14, 15) if dt.comp(txa.rep(f), 1)]
    if not sent:
        raise ctx.error("TXA-12 (unique document number) is empty and there is no placer/filler number",
                        "TXA-12", "v2.txa-12.missing")
    number = next((v for f, v in sent if ctx.usable(v, None, f"TXA-{f}", "document number")), None)
    res: dict[str, Any] = {"resourceType": "DocumentReference",
                           "id": ctx.id("DocumentReference", number or f"M:{ctx.msg.msh.get(10)}")}
    ident = ctx.local_identifier("document", number) if number else None
    oid = dt.oid_of(number or "", "ISO")
    if oid:
        ident = {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid}"}
    if ident:
        res["masterIdentifier"] = ident
    status = _AVAIL.get(ctx.trigger) or _AVAIL.get(txa.get(19).upper()) or "current"
    res["status"] = status
    doc_status = _DOC_STATUS.get(txa.get(17).upper())
    if doc_status:
        res["docStatus"] = doc_status
    tcode = txa.get(2)
    if tcode:
        res["type"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0270", "code": " ".join(tcode.split())}]}
    res["subject"] = ctx.patient_ref
    # TXA-4 (activity) else TXA-6 (origination): the first that is an instant; else the first
    # sent, kept as sent (a date only) or reported (invalid) by put_instant
    field = next((f for f in (4, 6) if "T" in (dt.datetime(txa.get(f)) or "")), None) \
        or (4 if txa.get(4) else 6)
    put_instant(ctx, res, "date", txa, field, _TXA_TIMES[field])
    if field == 6 and txa.get(4):
        ctx.find("information", "v2.txa-4.unused", "TXA-4 (activity date/time) is no instant: "
                 "the document's date is TXA-6 (origination date/time)", txa.loc(4))
    authors = []
    for f in (5, 9):
        for i, rep in enumerate(txa.field(f), 1):
            ref = practitioner(ctx, rep, txa.loc(f, i)) if dt.comp(rep, 2) or dt.comp(rep, 1) else None
            if ref and ref not in authors:
                authors.append(ref)
    if authors:
        res["author"] = authors
    auth = txa.field(22) or txa.field(10)
    if auth:
        ref = practitioner(ctx, auth[0], "TXA-22")
        if ref:
            res["authenticator"] = ref
    res["custodian"] = ctx.org_ref
    parent = dt.comp(txa.rep(13), 1)
    if parent and parent != number and ctx.usable(parent, None, "TXA-13", "parent document number"):
        replaced = f"DocumentReference/{ctx.id('DocumentReference', parent)}"
        res["relatesTo"] = [{"code": "replaces", "target": {"reference": replaced}}]
    content: list[dict[str, Any]] = []
    texts = []
    groups, loose, _ = split_groups(ctx)
    notes_of = {id(obx): notes for obx, notes in [*loose, *(i for g in groups for i in g.obx)]}
    results: list[Any] = []
    for obx in ctx.msg.all("OBX"):
        vt = obx.get(2).upper()
        if vt in ("TX", "FT", "ST", "CF"):
            t = "\n".join(obx.text(5, r) for r in range(1, len(obx.field(5)) + 1)).strip()
            if t:
                texts.append(t)
        elif vt in ("ED", "RP") and obx.field(5):
            atts = documents(obx, titled=False)
            if not isinstance(atts, str):
                content.extend({"attachment": att} for att in atts)
                continue
            # no usable document: the text sent is kept as content of its own, never dropped
            ctx.find("warning", "v2.obx-5.attachment-invalid", f"OBX-5 {vt} holds no usable document "
                     f"({atts}): kept as the text sent", obx.loc(5))
            raw = document_text(obx).encode("utf-8")
            content.append({"attachment": {"contentType": "text/plain; charset=utf-8",
                                           "data": base64.b64encode(raw).decode("ascii")}})
        elif vt not in ("ED", "RP"):
            results.append(obx)
    if texts:
        data = "\n".join(texts).encode("utf-8")
        language = "zh-CN" if dt.has_cjk(data.decode("utf-8")) else "en"
        content.insert(0, {"attachment": {"contentType": "text/plain; charset=utf-8", "language": language,
                                          "data": base64.b64encode(data).decode("ascii")}})
    if not content:
        title = tcode or number or "(no number)"
        content.append({"attachment": {"title": f"document {title} (notification without content)"}})
    res["content"] = content
    context: dict[str, Any] = {}
    if ctx.encounter_ref:
        context["encounter"] = [ctx.encounter_ref]
    orders = [service_request(ctx, g, with_observations=False) for g in groups]
    # a measurement or coded result sent with the document is a clinical fact: keyed by the
    # document (an edit or a replacement of it sends them again), never dropped as "no content"
    key = f"DocumentReference/{res['id']}"
    observed = [observation(ctx, obx, notes_of.get(id(obx), []), key, nth)
                for nth, obx in zip(occurrences(results), results)]
    related = orders + [ref for ref in observed if ref]
    if related:
        context["related"] = related
    if context:
        res["context"] = context
    ctx.add(res)
