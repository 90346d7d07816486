"""Loading and checking a tabular mapping file (the format is described in ``mapping.py``).

Everything a rule names is checked against the file (columns, value maps, resource names) and
against the FHIR element table and resource types of ``fhir_mapping.fhir_types`` (paths, repeating
elements, the kind of value an element holds, codes of required bindings); a mistake is a
``MappingFileError`` that names the file and the rule (``resources.patient.rules[4] (gender): …``).
"""

from __future__ import annotations

import re
import string
from typing import Any

from fhir_mapping.fhir_types import RESOURCE_TYPES, TYPES
from fhir_mapping.tabular import values as V
from fhir_mapping.tabular.model import MappingFileError, Resource, Rule

__all__ = ["Loader"]

QUANTITY_TYPES = {"Quantity", "Duration", "Age", "Count", "Distance"}
_SEG = re.compile(r"(_?[A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?")
_RULE_KEYS = {"path", "column", "transform", "default", "value", "template", "ref", "coding",
              "quantity", "first", "object", "when", "when_any", "on_error", "doc"}
_SOURCES = ("column", "value", "template", "ref", "coding", "quantity", "first", "object")
_EMBEDDED = ("column", "template")

_KINDS = {"s": "a string", "i": "an integer", "d": "a decimal", "b": "a boolean"}


class Loader:
    # ``m`` is the ``mapping.TabularMapping`` being built: the loader sets its attributes (it sits
    # below the mapping module, which calls it, so it does not name the class)
    def __init__(self, m: Any, d: Any, origin: str):
        self.m, self.d, self.origin = m, d, origin

    def fail(self, where: str, msg: str) -> MappingFileError:
        return MappingFileError(f"{self.origin}: {where}: {msg}")

    def load(self) -> None:
        d, m = self.d, self.m
        if not isinstance(d, dict):
            raise self.fail("top level", "a mapping file is a YAML mapping")
        extra = set(d) - {"name", "description", "timezone", "unit", "patient", "columns",
                          "value_maps", "resources", "version", "source_order"}
        if extra:
            raise self.fail("top level", f"unknown keys {sorted(extra)}")
        name = d.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
            raise self.fail("name", "a lower-case name ([a-z0-9_.-]) is required")
        m.name = name
        tz = d.get("timezone", "+08:00")
        if not isinstance(tz, str) or not re.fullmatch(r"[+-](0\d|1[0-4]):[0-5]\d", tz):
            raise self.fail("timezone", "an offset such as +08:00 is required")
        m.timezone = tz
        cols = d.get("columns")
        if not isinstance(cols, dict) or not cols:
            raise self.fail("columns", "declare every column the rules read")
        m.columns = {}
        for c, spec in cols.items():
            spec = spec if isinstance(spec, dict) else {}
            if not isinstance(c, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", c):
                raise self.fail(f"columns.{c}", "column names are lower-case ASCII identifiers")
            bad = set(spec) - {"required", "example", "doc", "type"}
            if bad:
                raise self.fail(f"columns.{c}", f"unknown keys {sorted(bad)}")
            m.columns[c] = spec
        m.required = tuple(c for c, s in m.columns.items() if s.get("required"))
        m.value_maps = {}
        for mname, table in (d.get("value_maps") or {}).items():
            if not isinstance(table, dict) or not table:
                raise self.fail(f"value_maps.{mname}", "a value map is a mapping of code: value")
            m.value_maps[str(mname)] = {str(k): str(v) for k, v in table.items()}
        m.unit = self.columns_of(d.get("unit"), "unit")
        if not m.unit:
            raise self.fail("unit", "name the column(s) that key a row")
        optional = [c for c in m.unit if not m.columns[c].get("required")]
        if optional:
            raise self.fail("unit", f"key columns must be required: {', '.join(optional)}")
        res = d.get("resources")
        if not isinstance(res, dict) or not res:
            raise self.fail("resources", "at least one resource is required")
        m.resources = {}
        for rname, rspec in res.items():  # names first: rules may refer forward
            if not isinstance(rspec, dict):
                raise self.fail(f"resources.{rname}", "a resource is a mapping")
            rtype = rspec.get("type")
            if rtype not in RESOURCE_TYPES:
                raise self.fail(f"resources.{rname}.type", f"unknown resource type {rtype!r}")
            m.resources[rname] = Resource(str(rname), rtype, "", (), True, (), [])
        for rname, rspec in res.items():
            where = f"resources.{rname}"
            extra = set(rspec) - {"type", "id", "emit", "when", "when_any", "rules", "doc"}
            if extra:
                raise self.fail(where, f"unknown keys {sorted(extra)}")
            idspec = rspec.get("id")
            if not isinstance(idspec, dict) or set(idspec) - {"kind", "columns", "fallback"} \
                    or not isinstance(idspec.get("kind"), str):
                raise self.fail(f"{where}.id", "write id: {kind: <key kind>, columns: [key columns],"
                                               " fallback: [{kind:, columns:}]}")
            r = m.resources[rname]
            r.id_kind = idspec["kind"]
            r.id_columns = self.columns_of(idspec.get("columns"), f"{where}.id.columns")
            if not r.id_columns:
                raise self.fail(f"{where}.id.columns", "at least one key column is required")
            fallbacks = idspec.get("fallback") or []
            fallbacks = [fallbacks] if isinstance(fallbacks, dict) else fallbacks
            if not isinstance(fallbacks, list):
                raise self.fail(f"{where}.id.fallback", "a list of {kind:, columns:}")
            r.fallbacks = ()
            for j, fb in enumerate(fallbacks):
                fwhere = f"{where}.id.fallback[{j}]"
                if not isinstance(fb, dict) or set(fb) != {"kind", "columns"} \
                        or not isinstance(fb["kind"], str) or fb["kind"] == r.id_kind:
                    raise self.fail(fwhere, "write {kind: <another key kind>, columns: [columns]}")
                cols = self.columns_of(fb["columns"], f"{fwhere}.columns")
                if not cols:
                    raise self.fail(fwhere, "at least one key column is required")
                r.fallbacks += ((fb["kind"], cols),)
            r.emit = bool(rspec.get("emit", True))
            r.when = self.columns_of(rspec.get("when"), f"{where}.when")
            r.when_any = self.columns_of(rspec.get("when_any"), f"{where}.when_any")
            rules = rspec.get("rules") or []
            if r.emit and not rules:
                raise self.fail(f"{where}.rules", "an emitted resource needs rules")
            if not r.emit and rules:
                raise self.fail(f"{where}.rules", "a resource with emit: false is only referred to;"
                                                  " its rules would never be applied")
            if not isinstance(rules, list):
                raise self.fail(f"{where}.rules", "rules are a list")
            r.rules = [self.rule(x, r.type, f"{where}.rules[{i}]") for i, x in enumerate(rules)]
        m.resident_columns = frozenset(
            rule.spec for r in m.resources.values() for rule in _walk(r.rules)
            if rule.source == "column" and rule.transform == "resident_id")
        # columns that hold codes (a lab item "NA" is sodium, not a filler): not checked as identifiers
        m.code_columns = frozenset(
            rule.spec["code"] for r in m.resources.values() for rule in _walk(r.rules)
            if rule.source == "coding") - m.resident_columns
        patient = d.get("patient")
        if patient is not None and (patient not in m.resources
                                    or m.resources[patient].type != "Patient"):
            raise self.fail("patient", "name a resource of type Patient")
        m.patient = patient
        order = d.get("source_order")
        if order is not None and order not in m.columns:
            raise self.fail("source_order", "name a declared column (the row's last change)")
        m.source_order = order
        if not any(r.emit for r in m.resources.values()):
            raise self.fail("resources", "no resource is emitted")
        missing = [c for c, s in m.columns.items() if "example" not in s]
        if missing:
            raise self.fail("columns", f"give an example value for {', '.join(missing)}")

    def columns_of(self, v: Any, where: str) -> tuple[str, ...]:
        if v is None:
            return ()
        cols = [v] if isinstance(v, str) else v
        if not isinstance(cols, list):
            raise self.fail(where, "a column name or a list of them")
        for c in cols:
            if c not in self.m.columns:
                raise self.fail(where, f"unknown column {c!r} (declare it under columns)")
        return tuple(cols)

    def path(self, text: Any, rtype: str, where: str) -> tuple[list, str, list | None]:
        """Parsed path, the element's kind (s/i/d/b or a type name) and its codes if bound."""
        if not isinstance(text, str) or not text:
            raise self.fail(where, "path is required")
        tname, out, codes = rtype, [], None
        parts = text.split(".")
        for i, part in enumerate(parts):
            mt = _SEG.fullmatch(part)
            if not mt:
                raise self.fail(where, f"bad path {text!r} at {part!r}")
            name, index = mt.group(1), mt.group(2)
            if name.startswith("_"):
                base = TYPES.get(tname, {}).get(name[1:])
                if base is None or base[0] not in _KINDS:
                    raise self.fail(where, f"bad path {text!r}: {name[1:]} is not a primitive "
                                           f"element of {tname}")
                spec = ["Element", base[1]]
            else:
                found = TYPES.get(tname, {}).get(name)
                if found is None and tname == "Element" and name in ("extension", "id"):
                    found = ["Extension", 1] if name == "extension" else ["s", 0]
                if found is None:
                    raise self.fail(where, f"bad path {text!r}: {tname} has no element {name!r}")
                spec = found
            if spec[1] and index is None:
                raise self.fail(where, f"bad path {text!r}: {name} repeats; give an index {name}[0]")
            if not spec[1] and index is not None:
                raise self.fail(where, f"bad path {text!r}: {name} does not repeat")
            if spec[0] in _KINDS and i != len(parts) - 1:
                raise self.fail(where, f"bad path {text!r}: {name} is a primitive")
            out.append((name, int(index) if index is not None else None))
            codes = spec[2] if len(spec) > 2 else None
            tname = spec[0]
        return out, tname, codes

    def rule(self, x: Any, rtype: str, where: str) -> Rule:
        m = self.m
        if not isinstance(x, dict):
            raise self.fail(where, "a rule is a mapping")
        extra = set(x) - _RULE_KEYS
        if extra:
            raise self.fail(where, f"unknown keys {sorted(extra)}")
        sources = [k for k in _SOURCES if k in x]
        if len(sources) != 1:
            raise self.fail(where, f"give exactly one of {', '.join(_SOURCES)}")
        src = sources[0]
        when = self.columns_of(x.get("when"), f"{where}.when")
        when_any = self.columns_of(x.get("when_any"), f"{where}.when_any")
        if src == "first":
            alts = x["first"]
            if not isinstance(alts, list) or len(alts) < 2:
                raise self.fail(where, "first: needs a list of at least two rules")
            rules = [self.rule(a, rtype, f"{where}.first[{i}]") for i, a in enumerate(alts)]
            cols = tuple(c for r in rules for c in r.columns)
            return Rule(where, rules[0].path, "first", None, when=when, when_any=when_any,
                        alternatives=rules,
                        skip_on_error=x.get("on_error") == "skip", columns=cols)
        path, kind, codes = self.path(x.get("path"), rtype, f"{where}.path")
        where = f"{where} ({x['path']})"
        rule = Rule(where, path, src, x[src], when=when, when_any=when_any)
        if kind == "Identifier":
            rule.identifier = "object"
        elif x["path"].endswith(".value") and self.path(x["path"][:-6], rtype, where)[1] == "Identifier":
            rule.identifier = "value"
        if x.get("on_error") not in (None, "skip", "reject"):
            raise self.fail(where, "on_error is skip or reject")
        rule.skip_on_error = x.get("on_error") == "skip"

        def need(expected_kind: str | set, what: str) -> None:
            ok = kind in expected_kind if isinstance(expected_kind, set) else kind == expected_kind
            if not ok:
                got = _KINDS.get(kind, f"a {kind}")
                raise self.fail(where, f"{what} cannot fill {x['path']}, which is {got}")

        if src == "column":
            rule.columns = self.columns_of(x["column"], f"{where}.column")
            if len(rule.columns) != 1:
                raise self.fail(where, "column: names one column")
            rule.spec = rule.columns[0]
            t = x.get("transform", "string")
            if isinstance(t, dict):
                if len(t) != 1:
                    raise self.fail(where, "transform: {name: {args}} or a name")
                (tname, targs), = t.items()
                if isinstance(targs, str) and tname == "map":
                    targs = {"map": targs}
                if not isinstance(targs, dict):
                    raise self.fail(where, f"arguments of transform {tname} must be a mapping")
            else:
                tname, targs = t, {}
            if tname not in V.TRANSFORMS:
                raise self.fail(where, f"unknown transform {tname!r} (known: "
                                       f"{', '.join(sorted(V.TRANSFORMS))})")
            bad = set(targs) - V.TRANSFORM_ARGS.get(tname, set())
            if bad:
                raise self.fail(where, f"transform {tname} takes no {sorted(bad)}")
            if "fillers" in targs and targs["fillers"] != "skip":
                raise self.fail(where, "fillers: skip (or leave it out)")
            if "not_after" in targs:
                targs = {**targs, "not_after": self.columns_of(targs["not_after"],
                                                               f"{where}.not_after")}
            if tname == "map":
                if targs.get("map") not in m.value_maps:
                    raise self.fail(where, f"unknown value map {targs.get('map')!r}")
                if codes:
                    wrong = set(m.value_maps[targs["map"]].values()) - set(codes)
                    if wrong:
                        raise self.fail(where, f"value map {targs['map']} gives {sorted(wrong)},"
                                               f" not codes of {x['path']} ({', '.join(codes)})")
            if "format" in targs:
                known = V.DATE_FORMATS if tname == "date" else V.DATETIME_FORMATS
                fmts = [targs["format"]] if isinstance(targs["format"], str) else targs["format"]
                for f in fmts:
                    if f not in known:
                        raise self.fail(where, f"unknown {tname} format {f!r} (known: "
                                               f"{', '.join(known)})")
            rule.transform, rule.targs = tname, targs
            need(V.TRANSFORMS[tname][1], f"transform {tname}")
            rule.default = x.get("default")
            if rule.default is not None:
                self.constant(rule.default, kind, codes, where)
        elif src == "value":
            self.constant(x["value"], kind, codes, where)
        elif src == "object":
            if kind in _KINDS or not isinstance(x["object"], dict):
                raise self.fail(where, f"object: fills an element of a complex type, not {x['path']}")
            rule.spec = {}
            rule.alternatives = []
            self.embedded(x["object"], x["path"], rtype, where, rule.spec, rule.alternatives)
            if not rule.alternatives:
                raise self.fail(where, "object: without embedded column/template parts; use value:")
            rule.columns = tuple(c for sub in rule.alternatives for c in sub.columns)
        elif src == "template":
            need("s", "a template")
            self.template(x["template"], where)
        elif src == "ref":
            need("Reference", "ref:")
            if x["ref"] not in m.resources:
                raise self.fail(where, f"unknown resource {x['ref']!r} in ref:")
        elif src == "coding":
            need("Coding", "coding:")
            spec = x["coding"]
            if not isinstance(spec, dict) or "code" not in spec or set(spec) - {
                    "code", "system", "display", "display_map", "code_map"}:
                raise self.fail(where, "coding: {code: column, system:, display: column |"
                                       " display_map:, code_map:}")
            rule.columns = self.columns_of(spec["code"], f"{where}.coding.code")
            if "display" in spec:
                self.columns_of(spec["display"], f"{where}.coding.display")
            for k in ("display_map", "code_map"):
                if k in spec and spec[k] not in m.value_maps:
                    raise self.fail(where, f"unknown value map {spec[k]!r} in {k}")
            if "system" in spec:
                self.template(spec["system"], where)
        elif src == "quantity":
            need(QUANTITY_TYPES, "quantity:")
            spec = x["quantity"]
            if not isinstance(spec, dict) or "value" not in spec or set(spec) - {
                    "value", "unit", "unit_value", "ucum", "comparator"}:
                raise self.fail(where, "quantity: {value: column, unit: column | unit_value:,"
                                       " ucum: map | true}")
            rule.columns = self.columns_of(spec["value"], f"{where}.quantity.value")
            if "unit" in spec:
                self.columns_of(spec["unit"], f"{where}.quantity.unit")
            u = spec.get("ucum")
            if u not in (None, True) and u not in m.value_maps:
                raise self.fail(where, f"unknown value map {u!r} in ucum")
        return rule

    def embedded(self, obj: dict, path: str, rtype: str, where: str, const: dict,
                 subs: list[Rule]) -> None:
        """Split an object: constant parts into ``const``, embedded sources into ``subs``."""
        for k, v in obj.items():
            sub_path = f"{path}.{k}"
            if isinstance(v, dict) and any(e in v for e in _EMBEDDED):
                if set(v) - {"column", "template", "transform"}:
                    raise self.fail(where, f"embedded part {k}: only column (with transform) or"
                                           " template")
                subs.append(self.rule({"path": sub_path, **v}, rtype, f"{where}.object.{k}"))
            elif isinstance(v, dict):
                const[k] = {}
                self.embedded(v, sub_path, rtype, where, const[k], subs)
            elif isinstance(v, list):  # constant arrays (coding lists): checked by the self-test
                const[k] = v
            else:
                _, kind, codes = self.path(sub_path, rtype, f"{where}.object.{k}")
                self.constant(v, kind, codes, f"{where}.object.{k}")
                const[k] = v

    def template(self, tpl: Any, where: str) -> None:
        if not isinstance(tpl, str):
            raise self.fail(where, "a template is a string")
        try:
            names = [n for _, n, spec, conv in string.Formatter().parse(tpl) if n is not None]
        except ValueError as e:
            raise self.fail(where, f"bad template {tpl!r}: {e}") from None
        for n in names:
            if n not in ("oid", "institution") and n not in self.m.columns:
                raise self.fail(where, f"template {tpl!r} names unknown column {n!r}")

    def constant(self, v: Any, kind: str, codes: Any, where: str) -> None:
        if kind in _KINDS:
            ok = {"s": isinstance(v, str), "b": isinstance(v, bool),
                  "i": isinstance(v, int) and not isinstance(v, bool),
                  "d": isinstance(v, (int, float)) and not isinstance(v, bool)}[kind]
            if not ok:
                raise self.fail(where, f"the constant must be {_KINDS[kind]}")
            if codes and v not in codes:
                raise self.fail(where, f"{v!r} is not one of {', '.join(codes)}")
        elif not isinstance(v, dict):
            raise self.fail(where, f"the constant must be an object (a {kind})")


def _walk(rules: list[Rule]):
    for rule in rules:
        yield rule
        yield from _walk(rule.alternatives)
