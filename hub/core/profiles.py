"""Conformance to a StructureDefinition (a constraint profile), checked on a resource's JSON.

``Profile(sd)`` reads the profile's element definitions (the snapshot, else the differential:
what the profile constrains), and ``check(resource, binding_ok)`` returns the issues:

- cardinality (``min``/``max`` of each element under each occurrence of its parent);
- ``fixed[x]`` (equal) and ``pattern[x]`` (the pattern's elements present with these values;
  in a list, each pattern item matched by some item);
- ``required`` bindings, through ``binding_ok(valueset, system, code)`` (the terminology
  service); a value set the service does not know is reported as a warning, not passed;
- the profile's invariants, its own and those of the profiles it is built on
  (``constraint[].expression`` whose ``source`` is no base resource or data type: the base
  specification's rules are the model's to check; FHIRPath through
  ``fhirpathpy``, compiled once), on
  every occurrence of the element (errors for ``severity=error``, warnings otherwise); an
  expression that cannot be evaluated does not hold.

Slices are not told apart (a sliced element is checked as a whole, its slices' own rules are
skipped: the issue says so once) and ``type.targetProfile`` is not followed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import regex

from hub.core import jsontext
from hub.core.errors import FhirError, HubError, Issue

BindingCheck = Callable[[str, str | None, str | None], bool | None]  # (valueset, system, code)
_CHOICE = re.compile(r"^(fixed|pattern)([A-Z]\w*)$")
MAX_ELEMENTS = 5000  # a profile is configuration, but one from outside may be hostile


class ProfileError(FhirError):
    """A StructureDefinition the hub cannot use as a profile."""

    def __init__(self, message: str):
        super().__init__(422, "invalid", message)


# An invariant's regular expression (``matches``, ``replaceMatches``) on one value: Python's re
# held the process (every request) for as long as a backtracking pattern ran, 23 s on a 29-
# character name; ``regex`` runs it without the GIL and stops it at this bound.
REGEX_SECONDS = 0.2


class RunawayExpression(HubError):
    """A profile's regular expression ran over ``REGEX_SECONDS`` on a value."""

    error_code = "too-large"


def _search(pattern: str, text: str, flags: int = 0) -> Any:
    try:
        return regex.search(pattern, text, flags, timeout=REGEX_SECONDS, concurrent=True)
    except TimeoutError:
        raise RunawayExpression(pattern) from None


def _one_string(coll: list) -> str:
    if len(coll) != 1 or not isinstance(coll[0], str):
        raise TypeError("a string function needs one string")
    return coll[0]


def _matches(coll: list, pattern: Any) -> Any:
    if not pattern or not coll:
        return []
    return _search(pattern, _one_string(coll), regex.DOTALL) is not None


def _replace_matches(coll: list, pattern: Any, repl: Any) -> Any:
    if not coll or not isinstance(pattern, str) or not isinstance(repl, str):
        return []
    text = _one_string(coll)
    try:
        return regex.sub(pattern, regex.sub(r"\$(\d+)", r"\\\1", repl), text,
                         timeout=REGEX_SECONDS, concurrent=True)
    except TimeoutError:
        raise RunawayExpression(pattern) from None


# fhirpathpy's own string functions, through ``regex`` with a bound
_OPTIONS = {"userInvocationTable": {
    "matches": {"fn": _matches, "arity": {1: ["String"]}, "nullable_input": True},
    "replaceMatches": {"fn": _replace_matches, "arity": {2: ["String", "String"]}},
}}


@lru_cache(maxsize=4096)
def _compiled(expression: str) -> Any:
    import fhirpathpy
    from fhirpathpy.models import models

    # with the model: a choice element (value, effective) resolves to valueQuantity, ...; without
    # it every official vital-signs Observation failed vs-1 and vs-2
    return fhirpathpy.compile(expression, models["r4"], _OPTIONS)


def _evaluate(expression: str, base: str, node: Any, context: dict) -> list:
    """The expression on ``node``, an element at ``base`` (``Observation.component``): the
    model needs the element's path to type its choices."""
    if "$this" in expression:
        # fhirpathpy knows $this only inside where()/select()/all(): at the top it failed, and
        # every invariant written on $this (vital signs' vs-1) failed with it; select() on the
        # one node is the expression with $this that node
        expression = f"select({expression})"
    if "." not in base:
        return _compiled(expression)(node, context)
    import fhirpathpy
    from fhirpathpy.models import models

    return fhirpathpy.evaluate(node, {"base": base, "expression": expression}, context,
                               models["r4"], _OPTIONS)


_CORE = "http://hl7.org/fhir/StructureDefinition/"


def _base_rule(source: object) -> bool:
    """Is a constraint the base specification's, a resource's or data type's own (its ``source``
    ``…/StructureDefinition/Observation``, ``…/Quantity``, ``…/Element``)? Those the model checks.
    A profile's (``…/vitalsigns``, another IG's) is checked, on the profiles built on it too:
    bodyheight carries vital signs' vs-2 with vital signs as its source, and was let through."""
    if not isinstance(source, str) or not source.startswith(_CORE):
        return False
    name = source[len(_CORE):].split("|")[0]
    return name[:1].isupper() and name.isalnum()


def _values(node: Any, name: str) -> list:
    if not isinstance(node, dict):
        return []
    if name.endswith("[x]"):
        return [v for _, v in _choices(node, name[:-3])]
    v = node.get(name)
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _choices(node: Any, stem: str) -> list[tuple[str, Any]]:
    """(element name, value) of each value of choice ``stem[x]`` (``effectiveDateTime``)."""
    if not isinstance(node, dict):
        return []
    return [(k, v) for k, vs in node.items() if k.startswith(stem) and k[len(stem):][:1].isupper()
            for v in (vs if isinstance(vs, list) else [vs])]


def _pattern_matches(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_pattern_matches(v, value.get(k))
                                               for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_pattern_matches(p, v) for v in value)
                                               for p in pattern)
    return pattern == value


class Profile:
    def __init__(self, sd: dict):
        if not isinstance(sd, dict) or sd.get("resourceType") != "StructureDefinition":
            raise ProfileError("Not a StructureDefinition")
        url, rtype = sd.get("url"), sd.get("type")
        if not isinstance(url, str) or not isinstance(rtype, str):
            raise ProfileError("A profile needs a url and a type")
        self.url: str = url
        self.type: str = rtype
        elements = (sd.get("snapshot") or {}).get("element") or \
            (sd.get("differential") or {}).get("element") or []
        if not isinstance(elements, list) or len(elements) > MAX_ELEMENTS:
            raise ProfileError(f"A profile's elements must be a list of at most {MAX_ELEMENTS}")
        self.elements = []
        self.sliced = False
        for e in elements:
            if not isinstance(e, dict) or not isinstance(e.get("path"), str):
                raise ProfileError("Every element definition needs a path")
            if e.get("sliceName") or ":" in str(e.get("id", "")):
                self.sliced = True
                continue
            parts = e["path"].split(".")
            if parts[0] != self.type:
                raise ProfileError(f"The element {e['path']!r} is not on {self.type}")
            self.elements.append((parts[1:], e))

    def _occurrences(self, resource: dict, steps: list[str]) -> list[tuple[Any, str]]:
        """(parent node, FHIRPath of the parent) for each parent occurrence of ``steps``."""
        nodes: list[tuple[Any, str]] = [(resource, self.type)]
        for step in steps[:-1]:
            nxt = []
            for node, where in nodes:
                vals = _values(node, step)
                if vals and not isinstance(vals[0], dict) and isinstance(node, dict) \
                        and f"_{step}" in node:
                    # a primitive's id and extensions are in its ``_`` sibling (R4 JSON):
                    # ``birthDate.extension`` is ``_birthDate.extension``
                    vals = [v if isinstance(v, dict) else {} for v in _values(node, f"_{step}")]
                for i, v in enumerate(vals):
                    nxt.append((v, f"{where}.{step}[{i}]" if len(vals) > 1 else f"{where}.{step}"))
            nodes = nxt
        return nodes

    def check(self, resource: dict, binding_ok: BindingCheck | None = None) -> list[Issue]:
        issues: list[Issue] = []
        # decimals kept as written compared as numbers: by the invariants' FHIRPath, with fixed
        # and pattern values
        resource = jsontext.as_numbers(resource)
        if resource.get("resourceType") != self.type:  # where the resource names it
            rtype = resource.get("resourceType")
            return [Issue("invalid", f"The profile {self.url} is for {self.type}, not {rtype}",
                          expression=f"{rtype}.meta.profile")]
        for steps, e in self.elements:
            if not steps:  # the resource itself: its invariants
                issues += self._invariants(e, [(resource, self.type)], resource)
                continue
            name = steps[-1]
            for parent, where in self._occurrences(resource, steps):
                vals = _values(parent, name)
                path = f"{where}.{name[:-3] if name.endswith('[x]') else name}"  # FHIRPath
                lo, hi = e.get("min"), e.get("max")
                # R4: a primitive present only through its extensions (``_birthDate`` with a
                # data-absent-reason) is present
                present = len(vals) or int(isinstance(parent, dict)
                                           and isinstance(parent.get(f"_{name}"), dict))
                if isinstance(lo, int) and present < lo:
                    issues.append(Issue("required", f"{path}: at least {lo} required by {self.url}",
                                        expression=path))
                if isinstance(hi, str) and hi.isdigit() and len(vals) > int(hi):
                    issues.append(Issue("structure", f"{path}: at most {hi} allowed by {self.url}",
                                        expression=path))
                issues += self._types_and_length(e, parent, name, vals, path)
                for k, expected in e.items():
                    m = _CHOICE.match(k)
                    if not m:
                        continue
                    ok = (lambda v, x=expected: v == x) if m.group(1) == "fixed" else \
                        (lambda v, x=expected: _pattern_matches(x, v))
                    if any(not ok(v) for v in vals):
                        issues.append(Issue("value", f"{path} must match the {m.group(1)} value of "
                                                     f"{self.url}", expression=path))
                binding = e.get("binding") or {}
                if binding.get("strength") == "required" and binding.get("valueSet") and \
                        binding_ok is not None:
                    issues += self._binding(binding["valueSet"], vals, path, binding_ok)
                if name.endswith("[x]"):
                    # a choice's value is typed only by its parent's model (vs-1's
                    # ``$this as dateTime`` is empty on a bare value): evaluated from there
                    for key, _ in _choices(parent, name[:-3]):
                        parent_path = str(e.get("path") or "")[:-len(name) - 1]
                        issues += self._invariants(e, [(parent, f"{where}.{key}")], resource,
                                                   parent_path, name[:-3])
                else:
                    issues += self._invariants(e, [(v, path) for v in vals], resource)
        if self.sliced:
            issues.append(Issue("informational", f"Slices of {self.url} are not checked apart",
                                "information"))
        return issues

    def _types_and_length(self, e: dict, parent: Any, name: str, vals: list,
                          path: str) -> list[Issue]:
        """A choice narrowed to some of its types (``value[x]`` to Quantity) holds no other;
        a string holds at most ``maxLength`` characters. Both were let through."""
        out = []
        allowed = {t.get("code") for t in e.get("type") or () if isinstance(t, dict)}
        if name.endswith("[x]") and allowed and None not in allowed:
            stem = name[:-3]
            kinds = {_upper_first(str(t)) for t in allowed}
            for key, _ in _choices(parent, stem):
                if key[len(stem):] not in kinds:
                    out.append(Issue("structure", f"{path}: {key} is not a type {self.url} "
                                     f"allows here ({', '.join(sorted(map(str, allowed)))})",
                                     expression=f"{path[:-len(stem)]}{key}"
                                     if path.endswith(stem) else path))
        limit = e.get("maxLength")
        if isinstance(limit, int) and not isinstance(limit, bool):
            for v in vals:
                if isinstance(v, str) and len(v) > limit:
                    out.append(Issue("too-long", f"{path}: {len(v)} characters, over the "
                                     f"maxLength {limit} of {self.url}", expression=path))
        return out

    def _binding(self, valueset: str, vals: list, path: str, ok: BindingCheck) -> list[Issue]:
        out = []
        for v in vals:
            codings = [(None, v)] if isinstance(v, str) else \
                [(c.get("system"), c.get("code")) for c in (v.get("coding") or [])] \
                if isinstance(v, dict) and "coding" in v else \
                [(v.get("system"), v.get("code"))] if isinstance(v, dict) else []
            # a coding without a code (a display alone), or a concept that is text alone, names
            # no code of the value set: it does not meet a required binding, and it does not
            # make the others' answer unknown either
            codings = [(sy, c) for sy, c in codings if isinstance(c, str) and c]
            if not codings:
                out.append(Issue("code-invalid", f"{path}: no code of the required value set "
                                                 f"{valueset} (a text or display alone)",
                                 expression=path))
                continue
            answers = [ok(valueset, s, c) for s, c in codings]
            if any(answers):
                continue
            if any(a is None for a in answers):
                out.append(Issue("not-found", f"{path}: the value set {valueset} is not known here",
                                 "warning", path))
            elif not any(answers):
                out.append(Issue("code-invalid", f"{path}: not a code of the required value set "
                                                 f"{valueset}", expression=path))
        return out

    def _invariants(self, e: dict, nodes: list[tuple[Any, str]], resource: dict,
                    base: str | None = None, choice: str | None = None) -> list[Issue]:
        """Each constraint of ``e`` on each node; ``choice``: the nodes are the parents (at
        ``base``) of that choice element, each holding one value of it."""
        out = []
        for c in e.get("constraint") or ():
            expr = c.get("expression") if isinstance(c, dict) else None
            if not isinstance(expr, str):
                continue
            if _base_rule(c.get("source")):
                continue  # the base specification's own rules: the resource's model checks those
            for node, where in nodes:
                try:
                    result = _evaluate(f"{choice}.select({expr})" if choice else expr,
                                       base or str(e.get("path") or ""), node,
                                       {"resource": resource, "rootResource": resource})
                except RunawayExpression:
                    sev = "error" if c.get("severity") == "error" else "warning"
                    out.append(Issue("too-costly", f"{c.get('key')}: not decided: its regular "
                                     f"expression ran over {REGEX_SECONDS:g} s on this value "
                                     f"(the profile {self.url} should bound it)", sev, where))
                    continue
                except Exception:  # noqa: BLE001 - an expression that fails here does not hold
                    result = [False]
                if result not in ([True],):
                    sev = "error" if c.get("severity") == "error" else "warning"
                    out.append(Issue("invariant", f"{c.get('key')}: {c.get('human') or expr}",
                                     sev, where))
        return out
