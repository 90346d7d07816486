"""What the quality engine and its checks share: rules, findings, the rule set, locations and
the context a check sees. Below both ``engine`` (which registers the checks of ``checks``) and
``checks`` (which look at a ``Ctx`` and return ``QualityFinding``s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lxml import etree

from fhir_mapping.base import Finding
from hub.core.errors import HubError

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS = {"hl7": V3, "xsi": XSI, "sdtc": "urn:hl7-org:sdtc"}
_PREFIX = {V3: "hl7", XSI: "xsi", "urn:hl7-org:sdtc": "sdtc"}

SEVERITIES = ("fatal", "error", "warning", "information")
POLICIES = ("reject", "warn")
MAX_PER_RULE = 100  # findings of one rule in one document; the rest are summarised in one more
INTERNAL_RULE = "quality.internal"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: str
    policy: str
    issue_code: str
    description: str
    check: dict[str, Any]
    applies_to: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return self.check["kind"]


@dataclass(frozen=True, slots=True)
class QualityFinding:
    """One rule violation: rule id, what, and where (an XPath with the ``hl7:`` prefix, or
    ``line L, column C`` for a parse error). ``line`` is the source line when known."""

    rule: str
    severity: str
    policy: str
    issue_code: str
    message: str
    location: str | None = None
    line: int | None = None

    def as_finding(self) -> Finding:
        """The mapper-level ``fhir_mapping.base.Finding`` (for ``Conversion.findings``)."""
        return Finding(self.severity if self.severity != "fatal" else "error", self.rule, self.message,
                       self.location)


class RuleError(HubError, ValueError):
    """A rule file is malformed (raised when loading, never while checking a document)."""

    error_code = "config"


@dataclass
class RuleSet:
    rules: list[Rule]
    document_types: dict[str, Any]
    code_systems: dict[str, Any]
    _xpaths: dict[str, etree.XPath] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {r.id: r for r in self.rules}
        self.by_kind: dict[str, list[Rule]] = {}
        for r in self.rules:
            self.by_kind.setdefault(r.kind, []).append(r)
        self.templates: dict[str, dict[str, Any]] = {}
        for fam, spec in (self.document_types.get("families") or {}).items():
            for t in spec.get("types") or []:
                self.templates[str(t["templateId"])] = dict(t, family=fam)
        systems = self.document_types.get("code_systems") or {}
        self.doc_code_systems = {k: str(v) for k, v in systems.items()}

    def xp(self, expr: str) -> etree.XPath:
        x = self._xpaths.get(expr)
        if x is None:
            try:
                x = self._xpaths[expr] = etree.XPath(expr, namespaces=NS)
            except etree.XPathError as e:
                raise RuleError(f"bad XPath {expr!r}: {e}") from None
        return x

    def rule_for(self, kind: str, default_id: str) -> Rule:
        found = self.by_kind.get(kind)
        if found:
            return found[0]
        return Rule(default_id, "fatal", "reject", "structure", kind, {"kind": kind})



# -- locations -------------------------------------------------------------------------------------

def _step(el: etree._Element) -> str:
    q = etree.QName(el)
    prefix = _PREFIX.get(q.namespace or "")
    if q.namespace is None:
        name = q.localname
    elif prefix:
        name = f"{prefix}:{q.localname}"
    else:
        name = f"*[local-name()='{q.localname}']"
    parent = el.getparent()
    if parent is None:
        return "/" + name
    same = [c for c in parent if c.tag == el.tag]
    return name if len(same) == 1 else f"{name}[{same.index(el) + 1}]"


def xpath_of(node: Any) -> str | None:
    """An XPath (``hl7:`` prefix) selecting ``node``: an element or an attribute result."""
    if node is None:
        return None
    attr = None
    if isinstance(node, etree._ElementUnicodeResult) or isinstance(node, str):
        owner = getattr(node, "getparent", lambda: None)()
        attr = getattr(node, "attrname", None)
        if owner is None:
            return None
        node = owner
    if not isinstance(node, etree._Element) or not isinstance(node.tag, str):
        return None
    steps = []
    el: etree._Element | None = node
    while el is not None:
        steps.append(_step(el))
        el = el.getparent()
    path = "/".join(reversed(steps))
    if not path.startswith("/"):
        path = "/" + path
    if attr:
        q = etree.QName(attr)
        prefix = _PREFIX.get(q.namespace or "")
        path += "/@" + (f"{prefix}:{q.localname}" if q.namespace and prefix else q.localname)
    return path


def line_of(node: Any) -> int | None:
    if isinstance(node, etree._ElementUnicodeResult):
        node = node.getparent()
    return getattr(node, "sourceline", None) if isinstance(node, etree._Element) else None


class Ctx:
    """What a check sees: the root, the document family and type, ``now``, the rule set."""

    def __init__(self, root: etree._Element, rules: RuleSet, now: datetime | None, recovered: bool):
        self.root, self.rules, self.now, self.recovered = root, rules, now, recovered
        self.templates = [str(t).strip() for t in root.xpath("/hl7:ClinicalDocument/hl7:templateId/@root",
                                                              namespaces=NS)]
        self.doc_type = next((rules.templates[t] for t in self.templates if t in rules.templates), None)
        self.family = self.doc_type["family"] if self.doc_type else "unknown"

    def select(self, expr: str, context: Any = None) -> list[Any]:
        res = self.rules.xp(expr)(self.root if context is None else context)
        return res if isinstance(res, list) else [res]

    def finding(self, rule: Rule, message: str, node: Any = None, location: str | None = None
                ) -> QualityFinding:
        if self.recovered:
            message += " (found in the recovered parse of a not well-formed document)"
        return QualityFinding(rule.id, rule.severity, rule.policy, rule.issue_code, message,
                              location if location is not None else xpath_of(node), line_of(node))
