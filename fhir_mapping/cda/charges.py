"""Fees (病案首页 费用 sections of C0032/C0033, 处方药品金额 of a prescription, other 费用 entries) as
ChargeItems, amounts in CNY.

Why ChargeItem and not Claim: what the documents record is what was incurred per fee category during
the stay (住院总费用, 西药费, 护理费…), not a request to a payer; a ChargeItem per category says that,
and the categories a document nests (西药费 > 抗菌药物费用) are ChargeItems ``partOf`` their parent.
R4 ChargeItem has one Money element, ``priceOverride``; quantity 1 makes it the item's amount. The
self-paid part (自付金额) is a share of its parent, not an item: an extension with valueMoney.

A statement is a fee when its rule says ``if_money: ChargeItem`` and its value is an MO. Tables:
``entries.yaml`` classes/elements (if_money), ``charge_self_pay``; ``header.yaml`` currencies.
Imports only ``context``.
"""

from __future__ import annotations

from typing import Any, Callable

from fhir_mapping.cda import dt
from fhir_mapping.cda.context import Ctx, Section, _code, _entry_id, _nested, _subject
from fhir_mapping.cda.dt import child

__all__ = ["is_money", "build_charge_item"]

SELF_PAY_EXT = "https://fhir-region-hub.example/StructureDefinition/charge-self-pay"


def is_money(st) -> bool:
    val = child(st, "value")
    return val is not None and dt.value_type(val) == "MO" and not val.get("nullFlavor")


def _money(ctx: Ctx, st) -> dict | None:
    """FHIR Money: ISO 4217 currency from the table (元 -> CNY); a Chinese document that names no
    currency is in CNY."""
    val = child(st, "value")
    v = dt.decimal(val.get("value")) if val is not None else None
    if v is None:
        return None
    cur = dt.clean_str(val.get("currency"))
    iso = ctx.t.header["currencies"].get(cur) if cur else ("CNY" if ctx.family.startswith("wst") else None)
    return {"value": v, "currency": iso} if iso else {"value": v}


def build_charge_item(ctx: Ctx, sec: Section, st, pos: str, map_nested: Callable,
                      part_of: str | None = None) -> list[str] | None:
    """One fee statement -> a ChargeItem; nested fees -> ChargeItems ``partOf`` it, the self-paid part
    -> an extension; other nested statements -> ``map_nested(ctx, sec, st, pos, ref)`` (``entries``')."""
    money = _money(ctx, st)
    code = ctx.concept(child(st, "code"))
    if money is None or not code:
        return None
    cid = _entry_id(ctx, "ChargeItem", st, pos)
    ref = f"ChargeItem/{cid}"
    # billable: the charge was incurred; whether it was settled the document does not say
    res: dict[str, Any] = {"resourceType": "ChargeItem", "id": cid, "status": "billable", "code": code,
                           "subject": _subject(ctx), "quantity": {"value": 1}, "priceOverride": money}
    if ctx.encounter_ref:
        res["context"] = {"reference": ctx.encounter_ref}
    eff = ctx.effective(child(st, "effectiveTime"))
    if eff:
        res["occurrence" + eff[0]] = eff[1]
    if ctx.doc_time:
        res["enteredDate"] = ctx.doc_time
    if part_of:
        res["partOf"] = [{"reference": part_of}]
    if ctx.author_ref:
        res["enterer"] = {"reference": ctx.author_ref}
    ctx.trace[st] = ref
    refs = [ref]
    self_pay = set(ctx.t.entries.get("charge_self_pay") or ())
    for i, n in enumerate(_nested(st)):
        if n in ctx.trace or not is_money(n):
            continue
        if (_code(n)[0] or "") in self_pay:
            m = _money(ctx, n)
            if m:
                res.setdefault("extension", []).append({"url": SELF_PAY_EXT, "valueMoney": m})
                ctx.trace[n] = f"absorbed:{ref}"
                continue
        refs += build_charge_item(ctx, sec, n, f"{pos}.{i}", map_nested, part_of=ref) or []
    refs += map_nested(ctx, sec, st, pos, ref)
    ctx.add(res)
    return refs
