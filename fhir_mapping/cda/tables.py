"""The CDA mapping tables (``tables/*.yaml``), loaded once and indexed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

TABLES = Path(__file__).resolve().parent / "tables"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((TABLES / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Tables:
    documents_by_template: dict[str, dict]
    documents_by_code: dict[str, dict]
    families: list[tuple[str, str]]
    document_code_systems: dict[str, str]
    header: dict[str, Any]
    entries: dict[str, Any]
    class_prefixes: list[tuple[str, dict]]  # longest first
    sections: dict[str, dict]
    systems: dict[str, str]  # OID -> canonical FHIR URI

    def document_type(self, template_ids: list[str], code: str | None) -> dict | None:
        """The table row of a document: a templateId whose row has the document's code, else the
        row of the code, else the first known templateId."""
        cands = [self.documents_by_template[t] for t in template_ids if t in self.documents_by_template]
        for d in cands:
            if d["code"] == code:
                return d
        if code and code in self.documents_by_code:
            return self.documents_by_code[code]
        return cands[0] if cands else None

    def family(self, template_ids: list[str]) -> str | None:
        for t in template_ids:
            for prefix, fam in self.families:
                if t.startswith(prefix):
                    return fam
        return None

    def element_rule(self, code: str | None) -> dict | None:
        if not code:
            return None
        rule = self.entries["elements"].get(code)
        if rule is not None:
            return rule
        for prefix, rule in self.class_prefixes:
            if code.startswith(prefix):
                return rule
        return None


@lru_cache(maxsize=1)
def tables() -> Tables:
    docs = _load("documents.yaml")
    by_tpl: dict[str, dict] = {}
    by_code: dict[str, dict] = {}
    for d in docs["documents"]:
        d = {k: str(v) for k, v in d.items()}
        by_tpl.setdefault(d["templateId"], d)
        by_code.setdefault(d["code"], d)
    entries = _load("entries.yaml")
    for key in ("templates", "absorbed_templates", "procedure_categories"):
        entries[key] = {str(k): v for k, v in (entries.get(key) or {}).items()}
    entries["elements"] = {str(k): v for k, v in entries["elements"].items()}
    for rule in list(entries["elements"].values()) + list(entries["templates"].values()):
        if "loinc" in rule:
            rule["loinc"] = str(rule["loinc"])
    pairs = {str(k): [str(c) for c in v] for k, v in (entries.get("diagnosis_pairs") or {}).items()}
    entries["diagnosis_pairs"] = pairs
    entries["diagnosis_code_names"] = {c: n for n, cs in pairs.items() for c in cs}
    prefixes = sorted(((str(k), v) for k, v in entries["classes"].items()), key=lambda kv: -len(kv[0]))
    sections = _load("sections.yaml")
    header = _load("header.yaml")
    header["ucum"] = {str(k): str(v) for k, v in header["ucum"].items()}
    header["sex"] = {str(k): v for k, v in header["sex"].items()}
    return Tables(
        documents_by_template=by_tpl,
        documents_by_code=by_code,
        families=[(str(f["templateIdPrefix"]), str(f["family"])) for f in docs["families"]],
        document_code_systems={str(k): str(v) for k, v in docs["document_code_systems"].items()},
        header=header,
        entries=entries,
        class_prefixes=prefixes,
        sections={str(k): v for k, v in (sections.get("sections") or {}).items()},
        systems={str(k): str(v) for k, v in (sections.get("code_systems") or {}).items()},
    )
