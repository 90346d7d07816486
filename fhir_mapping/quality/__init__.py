"""Document quality control: a rule engine whose rules are data.

    from fhir_mapping.quality import check_bytes, report, evaluate
    findings = check_bytes(xml_bytes, now=datetime(2026, 11, 22, tzinfo=timezone.utc))
    result = report(findings)   # {"decision": "accept" | "accept-with-warnings" | "reject",
                                #  "outcome": OperationOutcome, "counts": {...}, "rules": [...]}

Rules live in ``rules/*.yaml`` (id, severity, policy reject|warn, issue_code, description, check
kind and parameters; XPaths over the CDA tree); catalogues in ``data/`` (document types, code
systems). The engine is pure: no clock (``now`` is a parameter), no I/O besides reading its own
data files once. It never raises on a document: a parse failure is a finding (and the other rules
still run on a recovered parse), a check that breaks yields a ``quality.internal`` finding.
"""

from fhir_mapping.quality.engine import (
    QualityFinding,
    Rule,
    RuleError,
    RuleSet,
    check_bytes,
    check_tree,
    default_rules,
    load_rules,
    xpath_of,
)
from fhir_mapping.quality.report import RULE_SYSTEM, evaluate, report

__all__ = ["QualityFinding", "Rule", "RuleError", "RuleSet", "RULE_SYSTEM", "check_bytes", "check_tree",
           "default_rules", "evaluate", "load_rules", "report", "xpath_of"]
