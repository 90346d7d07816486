"""FT1 -> ChargeItem (DFT^P03/P11, and the charges orders and results carry), keeping the payer split
(insurance, self-pay, commercial insurance) as extensions; see tables/payer_split.json for the sources
and the choice."""

from __future__ import annotations

from typing import Any

from . import datatypes as dt
from .context import Ctx
from .message import Seg
from .people import practitioner
from .tables import table

_SPLIT = table("payer_split")
_STATUS = table("codes")["charge_status"]


def _share(category: str, money: dict) -> dict:
    return {"url": _SPLIT["extension_url"], "extension": [
        {"url": "category", "valueCoding": {"system": _SPLIT["category_system"], "code": category,
                                            "display": _SPLIT["categories"][category]}},
        {"url": "amount", "valueMoney": money}]}


def _num(m: dict) -> float:
    return dt.to_float(m["value"])


def payer_split(ctx: Ctx, ft1: Seg, zsegs: list[Seg], total: dict | None) -> list[dict]:
    cur = (total or {}).get("currency") or _SPLIT["default_currency"]
    shares: list[tuple[str, dict]] = []
    for z in zsegs:
        code = dt.comp(z.rep(2), 1).upper()
        cat = _SPLIT["codes"].get(code)
        m = dt.money(z.rep(3), default_currency=cur)
        if cat and m:
            shares.append((cat, m))
        else:
            ctx.find("warning", "v2.payer-split.unmapped", f"{z.name} payer {code!r} or amount not usable", z.loc(2))
    if not any(c == "insurance" for c, _ in shares):
        ins = dt.money(ft1.rep(15), default_currency=cur)
        if ins and _num(ins) != 0:
            plan = dt.comp(ft1.rep(14), 1).upper()
            cat = _SPLIT["plan_categories"].get(plan, _SPLIT["plan_categories"]["default"])
            shares.append((cat, ins))
    if total and not any(c == "self-pay" for c, _ in shares) and shares:
        rest = round(_num(total) - sum(_num(m) for _, m in shares), 2)
        if rest > 0:
            shares.append(("self-pay", {"value": int(rest) if rest == int(rest) else rest, "currency": cur}))
    return [_share(c, m) for c, m in shares]


def charges(ctx: Ctx, *, require: bool) -> int:
    """Every FT1 (with its payer-split segments) -> ChargeItem, in whatever message it comes (DFT, and
    the orders and results that carry their charges); with ``require``, a message without FT1 is refused."""
    zname = _SPLIT["z_segment"]
    items: list[tuple[Seg, list[Seg]]] = []
    for seg in ctx.msg.segments:
        if seg.name == "FT1":
            items.append((seg, []))
        elif seg.name == zname and items:
            items[-1][1].append(seg)
    if require and not items:
        raise ctx.error(f"{ctx.kind} has no FT1 segment: there is no charge to map", "FT1", "v2.ft1.missing")
    for n, (ft1, zsegs) in enumerate(items, 1):
        code = dt.concept(ft1.rep(7))
        if code is None:
            raise ctx.error("FT1-7 (transaction code) is empty: the ChargeItem has no code", f"FT1[{n}]-7",
                            "v2.ft1-7.missing")
        txid = ft1.get(2)
        if txid and not ctx.usable(txid, None, ft1.loc(2), "transaction id"):
            txid = ""
        key = txid or f"{ctx.msg.msh.get(10)}:{ft1.get(1) or n}"
        res: dict[str, Any] = {"resourceType": "ChargeItem", "id": ctx.id("ChargeItem", key)}
        total = dt.money(ft1.rep(11), default_currency=_SPLIT["default_currency"])
        split = payer_split(ctx, ft1, zsegs, total)
        if split:
            res["extension"] = split
        if txid:
            ident = ctx.local_identifier("charge", txid)
            if ident:
                res["identifier"] = [ident]
        res["status"] = _STATUS.get(ft1.get(6).upper(), _STATUS["default"])
        res["code"] = code
        res["subject"] = ctx.patient_ref
        if ctx.encounter_ref:
            res["context"] = ctx.encounter_ref
        start, end = dt.datetime(ft1.get(4)), dt.datetime(ft1.get(5))
        if start and end and end != start:
            res["occurrencePeriod"] = {"start": start, "end": end}
        elif start:
            res["occurrenceDateTime"] = start
        qty = dt.decimal(ft1.get(10))
        if qty is not None:
            res["quantity"] = {"value": qty}
        if total:
            res["priceOverride"] = total
        dept = dt.concept(ft1.rep(13))
        if dept:
            res["performingOrganization"] = {"display": dept.get("text") or dept["coding"][0]["code"]}
        performer = practitioner(ctx, ft1.rep(20), "FT1-20")
        if performer:
            res["performer"] = [{"actor": performer}]
        enterer = practitioner(ctx, ft1.rep(24), "FT1-24")
        if enterer:
            res["enterer"] = enterer
        reasons = [c for c in (dt.concept(r) for r in ft1.field(19)) if c]
        if reasons:
            res["reason"] = reasons
        entered = dt.datetime(ft1.get(4), instant=False)
        if entered:
            res["enteredDate"] = entered
        ctx.add(res)
    return len(items)
