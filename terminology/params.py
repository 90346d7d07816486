"""Operation parameters: from a GET query string or a POST ``Parameters`` resource, typed and
checked against what each operation declares. Every mistake is a ``TerminologyError`` (400)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from terminology.service import TerminologyError

MAX_TEXT = 4096  # longest code, URI or display accepted
MAX_VALUES = 50  # of one repeating parameter

# how a Parameters.parameter carries each declared type (value[x] names accepted)
_PRIMITIVE = {
    "code": ("valueCode", "valueString", "valueUri", "valueId"),
    "uri": ("valueUri", "valueCanonical", "valueUrl", "valueString", "valueCode", "valueOid"),
    "string": ("valueString", "valueCode", "valueUri", "valueMarkdown"),
    "dateTime": ("valueDateTime", "valueDate", "valueInstant", "valueString"),
    "boolean": ("valueBoolean",),
    "integer": ("valueInteger", "valueUnsignedInt", "valuePositiveInt"),
    "Coding": ("valueCoding",),
    "CodeableConcept": ("valueCodeableConcept",),
}


class Params:
    """Typed values by name; ``spec`` maps a name to its type (``code*`` repeats; ``resource:T``
    is a whole resource, POST only)."""

    def __init__(self, spec: dict[str, str], values: dict[str, list[Any]]):
        self.spec = spec
        self.values = values

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def one(self, name: str) -> Any:
        got = self.values.get(name)
        return got[0] if got else None

    def all(self, name: str) -> list[Any]:
        return self.values.get(name, [])

    def text(self, name: str) -> str | None:
        return self.one(name)

    def flag(self, name: str, default: bool | None = False) -> bool | None:
        value = self.one(name)
        return default if value is None else value


def _check_text(name: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise TerminologyError(f"{name} is too long (at most {MAX_TEXT} characters)")
    if not value.strip():
        raise TerminologyError(f"{name} is empty")
    return value


def _from_text(name: str, kind: str, raw: str) -> Any:
    """A GET value: booleans, integers and ``system|code`` Codings from their text."""
    _check_text(name, raw)
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise TerminologyError(f"{name} must be true or false")
        return raw == "true"
    if kind == "integer":
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
            raise TerminologyError(f"{name} must be a whole number from 0 to 999999999")
        return int(raw)
    if kind == "Coding":
        system, bar, code = raw.rpartition("|")
        if not bar or not system or not code:
            raise TerminologyError(f"{name} in a query string is written system|code")
        return {"system": system, "code": code}
    if kind == "CodeableConcept" or kind.startswith("resource"):
        raise TerminologyError(f"{name} is a {kind.split(':')[0]}: send it in a POSTed "
                               "Parameters resource")
    return raw


def _check_complex(name: str, kind: str, value: Any) -> Any:
    if not isinstance(value, dict):
        raise TerminologyError(f"{name} must be a {kind} object")
    codings = value.get("coding", []) if kind == "CodeableConcept" else [value]
    if not isinstance(codings, list) or not codings:
        raise TerminologyError(f"{name} has no coding")
    for c in codings:
        if not isinstance(c, dict):
            raise TerminologyError(f"{name}: a Coding must be an object")
        for key in ("system", "code", "version", "display"):
            if key in c and (not isinstance(c[key], str) or len(c[key]) > MAX_TEXT):
                raise TerminologyError(f"{name}.{key} must be a string of at most {MAX_TEXT} "
                                       "characters")
    return value


def _add(out: dict[str, list[Any]], spec: dict[str, str], name: str, value: Any) -> None:
    values = out.setdefault(name, [])
    values.append(value)
    if not spec[name].endswith("*") and len(values) > 1:
        raise TerminologyError(f"{name} is given more than once")
    if len(values) > MAX_VALUES:
        raise TerminologyError(f"{name} is given more than {MAX_VALUES} times")


def _known(op: str, spec: dict[str, str], name: str) -> bool:
    if name.startswith("_"):  # _format, _pretty: the API's own
        return False
    if name not in spec:
        raise TerminologyError(f"Unknown parameter {name[:40]!r} for ${op}; it takes "
                               + ", ".join(sorted(spec)))
    return True


def from_query(op: str, spec: dict[str, str], items: list[tuple[str, str]]) -> Params:
    out: dict[str, list[Any]] = {}
    for name, raw in items:
        if _known(op, spec, name):
            _add(out, spec, name, _from_text(name, spec[name].rstrip("*"), raw))
    return Params(spec, out)


def from_parameters(op: str, spec: dict[str, str], d: Any,
                    query: Sequence[tuple[str, str]] = ()) -> Params:
    """A POSTed ``Parameters`` resource (plus any query-string parameters)."""
    if not isinstance(d, dict) or d.get("resourceType") != "Parameters":
        raise TerminologyError(f"POST ${op} takes a Parameters resource")
    items = d.get("parameter", [])
    if not isinstance(items, list):
        raise TerminologyError("Parameters.parameter must be an array")
    out = from_query(op, spec, list(query)).values
    for i, p in enumerate(items):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise TerminologyError(f"{where} needs a name")
        name = p["name"]
        if not _known(op, spec, name):
            continue
        kind = spec[name].rstrip("*")
        value_keys = [k for k in p if k.startswith("value")]
        if kind.startswith("resource"):
            rtype = kind.split(":")[1]
            r = p.get("resource")
            if not isinstance(r, dict) or r.get("resourceType") != rtype:
                raise TerminologyError(f"{where} ({name}) must carry a {rtype} as its resource")
            _add(out, spec, name, r)
            continue
        if len(value_keys) != 1 or value_keys[0] not in _PRIMITIVE[kind]:
            raise TerminologyError(f"{where} ({name}) needs one of "
                                   + ", ".join(_PRIMITIVE[kind]))
        value = p[value_keys[0]]
        if kind in ("Coding", "CodeableConcept"):
            value = _check_complex(name, kind, value)
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise TerminologyError(f"{name} must be a boolean")
        elif kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**9:
                raise TerminologyError(f"{name} must be a whole number from 0 to 999999999")
        elif not isinstance(value, str):
            raise TerminologyError(f"{name} must be a string")
        else:
            _check_text(name, value)
        _add(out, spec, name, value)
    return Params(spec, out)


# -- answers ----------------------------------------------------------------------------------------


def parameters(*parts: dict | None) -> dict:
    return {"resourceType": "Parameters", "parameter": [p for p in parts if p]}


def param(name: str, kind: str, value: Any) -> dict | None:
    """One ``Parameters.parameter`` (None when there is no value)."""
    if value is None:
        return None
    return {"name": name, f"value{kind}": value}


def part(name: str, *parts: dict | None) -> dict:
    return {"name": name, "part": [p for p in parts if p]}
