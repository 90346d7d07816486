"""The quality-control engine: rules as data (``rules/*.yaml``), applied to a CDA document.

Pure: bytes (or an lxml tree) and a reference time ``now`` in, findings out. No clock, no I/O beyond
reading the shipped rule and catalogue files once.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from lxml import etree

from fhir_mapping.base import Finding, MappingError
from fhir_mapping.xmlsafe import parse_xml

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


class RuleError(ValueError):
    """A rule file is malformed (raised when loading, never while checking a document)."""


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


_XPATH_KEYS = ("select", "xpath", "sex", "birth")


def _validate(rule: Rule, rs: RuleSet) -> None:
    from fhir_mapping.quality.checks import KINDS

    if rule.severity not in SEVERITIES:
        raise RuleError(f"rule {rule.id}: severity {rule.severity!r} not in {SEVERITIES}")
    if rule.policy not in POLICIES:
        raise RuleError(f"rule {rule.id}: policy {rule.policy!r} not in {POLICIES}")
    if rule.kind not in KINDS:
        raise RuleError(f"rule {rule.id}: unknown check kind {rule.kind!r}")
    for key in _XPATH_KEYS:
        if isinstance(rule.check.get(key), str):
            rs.xp(rule.check[key])
    for p in rule.check.get("points") or []:
        if p.get("xpath"):
            rs.xp(p["xpath"])
    if isinstance(rule.check.get("pattern"), str):
        re.compile(rule.check["pattern"])


def _read_yaml(path: Path | Any) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_rules(rule_files: Iterable[str | Path] | None = None) -> RuleSet:
    """Load rules (default: every shipped ``rules/*.yaml``, in file-name order) and the catalogues
    (``data/document_types.yaml``, ``data/code_systems.yaml``). Raises ``RuleError`` on a bad rule."""
    pkg = resources.files("fhir_mapping.quality")
    if rule_files is None:
        files = sorted((p for p in pkg.joinpath("rules").iterdir() if p.name.endswith(".yaml")),
                       key=lambda p: p.name)
    else:
        files = [Path(f) for f in rule_files]
    rules: list[Rule] = []
    seen: set[str] = set()
    for f in files:
        doc = _read_yaml(f) or {}
        for raw in doc.get("rules") or []:
            try:
                rule = Rule(
                    id=str(raw["id"]), severity=str(raw["severity"]), policy=str(raw["policy"]),
                    issue_code=str(raw.get("issue_code") or "invalid"),
                    description=" ".join(str(raw.get("description") or "").split()),
                    check=dict(raw["check"]), applies_to=tuple(raw.get("applies_to") or ()))
            except (KeyError, TypeError) as e:
                raise RuleError(f"{getattr(f, 'name', f)}: rule {raw!r} lacks {e}") from None
            if rule.id in seen:
                raise RuleError(f"duplicate rule id {rule.id}")
            seen.add(rule.id)
            rules.append(rule)
    rs = RuleSet(rules, _read_yaml(pkg.joinpath("data", "document_types.yaml")),
                 _read_yaml(pkg.joinpath("data", "code_systems.yaml")))
    for r in rules:
        _validate(r, rs)
    return rs


@lru_cache(maxsize=1)
def default_rules() -> RuleSet:
    return load_rules()


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


# -- running ---------------------------------------------------------------------------------------

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


def _recover(data: bytes) -> etree._Element | None:
    """Best-effort tree of a not well-formed document, so the other rules can still report its
    defects. Only reached after ``parse_xml`` passed its size and DTD/entity checks; the recovered
    tree is serialised again and parsed by ``parse_xml`` so the depth and attribute limits hold."""
    parser = etree.XMLParser(recover=True, resolve_entities=False, load_dtd=False, no_network=True,
                             huge_tree=False, dtd_validation=False, collect_ids=False)
    root = None
    for attempt in (_spaced_attributes(data), data, _from_first_tag(data)):
        if not attempt:
            continue
        try:
            root = etree.fromstring(attempt, parser)
        except (etree.XMLSyntaxError, ValueError, TypeError):
            root = None
        if root is not None:
            break
    if root is None or not any(isinstance(c.tag, str) for c in root):
        return None  # nothing but a bare root: checking it would only report phantom omissions
    try:
        return parse_xml(etree.tostring(root))
    except MappingError:
        return None


def recovered_tree(data: bytes) -> etree._Element | None:
    """The best-effort tree of a document that is not well-formed (None when nothing is left, or
    when it is refused for another reason than well-formedness): for naming who sent a refused
    document."""
    try:
        parse_xml(data)
    except MappingError as e:
        return _recover(data) if e.rule == "xml.not-well-formed" else None
    return None


_FIRST_TAG = re.compile(rb"<[A-Za-z_]")
_GLUED_ATTR = re.compile(rb'(=\s*"[^"<>]*")(?=[A-Za-z_])')


def _spaced_attributes(data: bytes) -> bytes | None:
    """The commonest hand-edit defect (``code="1"codeSystem="…"``: no space between attributes) with
    the space put back, so recovery keeps those attributes. Only for reporting: the document is
    rejected as not well-formed all the same."""
    fixed = _GLUED_ATTR.sub(rb"\1 ", data)
    return fixed if fixed != data else None


def _from_first_tag(data: bytes) -> bytes | None:
    m = _FIRST_TAG.search(data)
    return data[m.start():] if m and m.start() > 0 else None


def check_bytes(data: bytes, *, now: datetime | None = None, rules: RuleSet | None = None
                ) -> list[QualityFinding]:
    """Every finding for one CDA document given as bytes. Never raises on any input."""
    rs = rules or default_rules()
    try:
        root = parse_xml(data)
    except MappingError as e:
        if e.rule != "xml.not-well-formed":
            r = rs.rule_for("xml_safe", "cda.xml.safe")
            return [QualityFinding(r.id, r.severity, r.policy, r.issue_code, f"{e.reason} [{e.rule}]",
                                   e.location)]
        r = rs.rule_for("well_formed", "cda.xml.well-formed")
        out = [QualityFinding(r.id, r.severity, r.policy, r.issue_code, e.reason, e.location,
                              _line(e.location))]
        if r.check.get("recover", True):
            recovered = _recover(data)
            if recovered is not None:
                out += _check(recovered, rs, now, recovered=True)
        return out
    return _check(root, rs, now, recovered=False)


def check_tree(root: etree._Element, *, now: datetime | None = None, rules: RuleSet | None = None
               ) -> list[QualityFinding]:
    """Every finding for an already parsed document (the tree is not modified)."""
    return _check(root, rules or default_rules(), now, recovered=False)


def _line(location: str | None) -> int | None:
    m = re.match(r"line (\d+)", location or "")
    return int(m.group(1)) if m else None


def _check(root: etree._Element, rs: RuleSet, now: datetime | None, recovered: bool
           ) -> list[QualityFinding]:
    from fhir_mapping.quality.checks import KINDS

    out: list[QualityFinding] = []
    q = etree.QName(root)
    if q.localname != "ClinicalDocument" or q.namespace not in (V3, None):
        r = rs.rule_for("root", "cda.root")
        return out + [QualityFinding(r.id, r.severity, r.policy, r.issue_code,
                                     f"the root element is {{{q.namespace or ''}}}{q.localname}, not a CDA "
                                     f"ClinicalDocument in the {V3} namespace; no further checks",
                                     xpath_of(root), root.sourceline)]
    if q.namespace is None:
        r = rs.rule_for("root", "cda.root")
        out.append(QualityFinding(r.id, r.severity, r.policy, r.issue_code,
                                  f"ClinicalDocument is not in the {V3} namespace (no or misspelt xmlns); "
                                  "checked further as if it were", "/ClinicalDocument", root.sourceline))
        root = _into_v3(root)
    ctx = Ctx(root, rs, now, recovered)
    for rule in rs.rules:
        if rule.kind in ("well_formed", "xml_safe", "root"):
            continue
        if rule.applies_to and ctx.family not in rule.applies_to:
            continue
        try:
            found = list(_capped(rule, ctx, KINDS[rule.kind](ctx, rule)))
        except Exception as e:  # noqa: BLE001 - a check must never take the document down
            found = [QualityFinding(INTERNAL_RULE, "error", "warn", "exception",
                                    f"rule {rule.id} could not be evaluated: {type(e).__name__}: {e}")]
        out += found
    return out


def _capped(rule: Rule, ctx: Ctx, found: Iterable[QualityFinding]) -> Iterator[QualityFinding]:
    n = 0
    for f in found:
        n += 1
        if n <= MAX_PER_RULE:
            yield f
    if n > MAX_PER_RULE:
        yield ctx.finding(rule, f"{n - MAX_PER_RULE} more findings of this rule not listed")


def _into_v3(root: etree._Element) -> etree._Element:
    """A copy of a namespace-less document with every un-namespaced element moved into urn:hl7-org:v3."""
    root = copy.deepcopy(root)
    for el in root.iter():
        if isinstance(el.tag, str) and not el.tag.startswith("{"):
            el.tag = f"{{{V3}}}{el.tag}"
    return root
