"""Sections: one CDA ``section`` -> a ``Composition.section`` (title, code, narrative, entry references,
sub-sections), its entries mapped through ``entries.map_statement``.

Imports ``entries`` and ``context``, never ``mapper``; ``mapper`` calls ``map_section`` and
``list_report`` in here."""

from __future__ import annotations

from typing import Any

from fhir_mapping.cda import dt
from fhir_mapping.cda.context import STATEMENTS, Ctx, Section, _code, _unmapped
from fhir_mapping.cda.dt import child, children
from fhir_mapping.cda.entries import map_statement, pair_diagnoses
from fhir_mapping.cda.narrative import has_content, to_div
from fhir_mapping.cda.orders import prescription_facts
from fhir_mapping.cda.reports import take_report_fact


def _map_entry(ctx: Ctx, sec: Section, st, epos: str) -> None:
    if st in ctx.trace or take_report_fact(ctx, sec, st):
        return  # taken in by its diagnosis partner, or by the report
    refs = map_statement(ctx, sec, st, epos)
    if refs is None:
        if st not in ctx.trace:
            uncoded = child(st, "code") is None or not dt.clean_str(child(st, "code").get("code"))
            _unmapped(ctx, sec, st, "cda.entry.uncoded" if uncoded else "cda.entry.unmapped",
                      "entry has no code" if uncoded else "entry not in the mapping tables")
    else:
        for r in refs:
            if r not in sec.refs:
                sec.refs.append(r)


def map_section(ctx: Ctx, sec_el, pos: str, depth: int = 0) -> dict:
    code_el = child(sec_el, "code")
    code = ctx.concept(code_el)
    c = dt.clean_str(code_el.get("code")) if code_el is not None else None
    title = dt.text(child(sec_el, "title")) or (code or {}).get("text") or \
        ((code or {}).get("coding") or [{}])[0].get("display") or \
        (ctx.t.sections.get(c or "", {}).get("title"))
    sec = Section(pos, title)
    entries = [[s for s in entry if s.tag in STATEMENTS] for entry in children(sec_el, "entry")]
    pair_diagnoses(ctx, [st for stmts in entries for st in stmts])  # name and code in neighbouring entries
    facts = ctx.t.entries.get("prescription_facts") or {}
    placed = [(f"{pos}.e{i}.{j}", st) for i, stmts in enumerate(entries) for j, st in enumerate(stmts)]
    # prescription facts (处方有效天数…) wait for the section's drugs, whichever entry comes first
    deferred = [(p, st) for p, st in placed if (_code(st)[0] or "") in facts]
    for epos, st in [x for x in placed if x not in deferred]:
        _map_entry(ctx, sec, st, epos)
    if deferred:
        meds = [ctx.resources[("MedicationRequest", r.split("/", 1)[1])] for r in sec.refs
                if r.startswith("MedicationRequest/")]
        rest = prescription_facts(ctx, [st for _, st in deferred], meds)
        for epos, st in deferred:
            if st in rest:
                _map_entry(ctx, sec, st, epos)
    out: dict[str, Any] = {"title": title, "code": code}
    div = to_div(child(sec_el, "text"), sec.unmapped or None,
                 "未映射条目 / entries not mapped:" if sec.unmapped else None)
    if div:
        orig = child(sec_el, "text")
        out["text"] = {"status": "additional" if has_content(orig) else "generated", "div": div}
    out["entry"] = [{"reference": r} for r in sec.refs]
    subs = []
    if depth < 20:
        for k, comp in enumerate(children(sec_el, "component")):
            s = child(comp, "section")
            if s is not None:
                subs.append(map_section(ctx, s, f"{pos}.s{k}", depth + 1))
    out["section"] = subs
    out = dt.prune(out)
    if not any(k in out for k in ("text", "entry", "section")):
        out["emptyReason"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                                          "code": "unavailable"}]}
    return out


def list_report(sections: list[dict], report_ref: str, results: set[str]) -> bool:
    """Put the DiagnosticReport first in the (sub)section that lists its first result."""
    for sec in sections:
        refs = [e["reference"] for e in sec.get("entry", [])]
        if results & set(refs):
            sec["entry"].insert(0, {"reference": report_ref})
            return True
        if list_report(sec.get("section", []), report_ref, results):
            return True
    return False
