"""Quality report: the findings of one document as a FHIR OperationOutcome plus a decision."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fhir_mapping.base import Finding

from .engine import QualityFinding, RuleSet, check_bytes, default_rules

RULE_SYSTEM = "https://fhir-region-hub.example/CodeSystem/quality-rule"
_FHIR_SEVERITY = {"fatal": "fatal", "error": "error", "warning": "warning", "information": "information"}


def _normalise(f: QualityFinding | Finding, rules: RuleSet) -> QualityFinding:
    if isinstance(f, QualityFinding):
        return f
    rule = rules.by_id.get(f.rule)
    return QualityFinding(f.rule, f.severity, rule.policy if rule else "warn",
                          rule.issue_code if rule else "invalid", f.message, f.location)


def decision(findings: Iterable[QualityFinding]) -> str:
    fs = list(findings)
    if any(f.policy == "reject" for f in fs):
        return "reject"
    if any(f.severity in ("fatal", "error", "warning") for f in fs):
        return "accept-with-warnings"
    return "accept"


def report(findings: Iterable[QualityFinding | Finding], rules: RuleSet | None = None) -> dict[str, Any]:
    """``{"decision", "outcome" (OperationOutcome), "counts" (per severity), "rules" (ids found)}``.

    Each issue: severity, code (the rule's issue_code), details.coding = the rule id in
    ``RULE_SYSTEM`` (display = the rule's description), details.text = what was found, location =
    the XPath (``hl7:`` prefix for urn:hl7-org:v3) or "line L, column C" for a parse error,
    diagnostics = policy and source line.
    """
    rs = rules or default_rules()
    fs = [_normalise(f, rs) for f in findings]
    issues = []
    for f in fs:
        rule = rs.by_id.get(f.rule)
        coding: dict[str, Any] = {"system": RULE_SYSTEM, "code": f.rule}
        if rule and rule.description:
            coding["display"] = rule.description[:250]
        issue: dict[str, Any] = {
            "severity": _FHIR_SEVERITY.get(f.severity, "error"),
            "code": f.issue_code,
            "details": {"coding": [coding], "text": f.message},
            "diagnostics": f"policy {f.policy}" + (f"; source line {f.line}" if f.line else ""),
        }
        if f.location:
            issue["location"] = [f.location]
        issues.append(issue)
    if not issues:
        issues.append({"severity": "information", "code": "informational",
                       "details": {"text": "no quality findings"}})
    return {
        "decision": decision(fs),
        "outcome": {"resourceType": "OperationOutcome", "issue": issues},
        "counts": dict(Counter(f.severity for f in fs)),
        "rules": sorted({f.rule for f in fs}),
    }


def evaluate(data: bytes, *, now: datetime | None = None, rules: RuleSet | None = None) -> dict[str, Any]:
    """``check_bytes`` then ``report``; the report also carries the findings themselves."""
    rs = rules or default_rules()
    found = check_bytes(data, now=now, rules=rs)
    out = report(found, rs)
    out["findings"] = found
    return out
