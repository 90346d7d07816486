"""The quality-control engine: rules as data (``rules/*.yaml``), applied to a CDA document.

Pure: bytes (or an lxml tree) and a reference time ``now`` in, findings out. No clock, no I/O beyond
reading the shipped rule and catalogue files once.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from lxml import etree

from fhir_mapping.base import MappingError
from fhir_mapping.quality.checks import KINDS
from fhir_mapping.quality.model import (
    INTERNAL_RULE,
    MAX_PER_RULE,
    POLICIES,
    SEVERITIES,
    V3,
    Ctx,
    QualityFinding,
    Rule,
    RuleError,
    RuleSet,
    xpath_of,
)
from fhir_mapping.xmlsafe import parse_xml

_XPATH_KEYS = ("select", "xpath", "sex", "birth")


def _validate(rule: Rule, rs: RuleSet) -> None:
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


# -- running ---------------------------------------------------------------------------------------

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
    except (MappingError, etree.SerialisationError):
        # a recovered tree may hold what cannot be written out again (a character reference to
        # a lone surrogate, &#xD800;): nothing is left to check
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
            check = KINDS[rule.kind]
            assert check is not None  # the kinds without a check are the engine's own, skipped above
            found = list(_capped(rule, ctx, check(ctx, rule)))
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
