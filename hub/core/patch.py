"""PATCH documents applied to a resource: JSON Patch (RFC 6902) and FHIRPath Patch (R4 fhirpatch.html).

``apply_json_patch`` runs the ``jsonpatch`` library. ``apply_fhirpath_patch`` takes a Parameters
resource of ``operation`` parameters (``type`` add | insert | delete | replace | move, ``path``,
``name``, ``value``, ``index``, ``source``, ``destination``) and finds each path's node with
``fhirpathpy``. fhirpathpy hands back copies, not the resource's own objects, so every object of a
working copy carries a marker while the paths are evaluated. A marker found in a result names the
object, and its container and place in it. A path ending at a primitive is evaluated without its
last step, and that step names the element of the object found.

Decimals the hub keeps as written (``orjson.Fragment``: ``1.50``, ``0.0000010``) are numbers
while a patch runs (``decimal.Decimal``, ``jsontext.as_numbers``: FHIRPath compares them, JSON
Patch's ``test`` finds ``1.5`` equal to ``1.50``, ``copy`` copies them) and are written back as
their text, so that what a patch does not touch keeps its precision, and what it writes has the
precision it was sent with. Both return the patched resource, which the caller validates and
stores like an update. A patch that cannot apply (a path matching nothing or several nodes, a
failed ``test``) is a 422; a
malformed document is a 400. Changing ``id``, ``resourceType``, ``meta.versionId`` or
``meta.lastUpdated`` is refused.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_mapping.fhir_types import TYPES
from hub.core import jsontext
from hub.core.errors import FhirError

MARK = "\x00node"  # no FHIR element name holds a NUL
_LAST_STEP = re.compile(r"^(.*)\.([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
_OF_TYPE = re.compile(r"\.([a-z][A-Za-z0-9]*)\.ofType\(\s*(?:FHIR\.)?([A-Za-z][A-Za-z0-9]*)\s*\)")
_ELEMENTS = frozenset(k for elements in TYPES.values() for k in elements)


def _choice_keys(ftype: str | None, name: str) -> list[str]:
    """The elements of ``ftype`` that choice ``name[x]`` is written as (value -> valueQuantity…)."""
    elements = TYPES.get(ftype or "", {})
    if name in elements:
        return []
    return [k for k in elements if k.startswith(name) and k[len(name):][:1].isupper()]


def _bad(msg: str, where: str | None = None) -> FhirError:
    return FhirError(400, "invalid", msg, where)


def _cannot(msg: str, where: str | None = None) -> FhirError:
    return FhirError(422, "processing", msg, where)


def _check_identity(before: dict, after: Any) -> dict:
    if not isinstance(after, dict):
        raise _cannot("The patched resource is not a JSON object")
    for key in ("resourceType", "id"):
        if after.get(key) != before.get(key):
            raise _cannot(f"A patch may not change {key}", key)
    # the version and its time are the store's: a patch setting them was silently undone.
    # Taking them out (with meta) changes nothing the store does not set again.
    had, has = before.get("meta"), after.get("meta")
    for key in ("versionId", "lastUpdated"):
        value = has.get(key) if isinstance(has, dict) else None
        if value is not None and value != (had.get(key) if isinstance(had, dict) else None):
            raise _cannot(f"A patch may not change meta.{key}: the server sets it",
                          f"meta.{key}")
    return after


def apply_json_patch(resource: dict, document: Any) -> dict:
    import jsonpatch
    import jsonpointer

    if not isinstance(document, list) or not all(isinstance(op, dict) for op in document):
        raise _bad("A JSON Patch is an array of operation objects")
    try:
        patch = jsonpatch.JsonPatch(jsontext.as_numbers(document))
        patched = jsontext.as_written(patch.apply(jsontext.as_numbers(resource), in_place=True))
    except jsonpatch.JsonPatchTestFailed:
        # the library's text quotes the stored value; the answer names the operation only
        raise _cannot(f"JSON Patch test failed at {_failed_path(document)}") from None
    except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException) as e:
        # its text may quote the whole stored resource ("member 'x' not found in {...}")
        raise _cannot(f"JSON Patch cannot apply: {str(e).split(' in {', 1)[0][:200]}") from None
    except (jsonpatch.InvalidJsonPatch, TypeError, ValueError) as e:
        raise _bad(f"Malformed JSON Patch: {e}") from None
    return _check_identity(resource, patched)


def _failed_path(document: list) -> str:
    tests = [op.get("path") for op in document if op.get("op") == "test"]
    return repr(tests[0])[:200] if len(tests) == 1 else "one of its test operations"


# -- FHIRPath Patch -------------------------------------------------------------------------------


class _Doc:
    """A marked working copy: every object numbered, with its FHIR type, container and place."""

    def __init__(self, resource: dict):
        self.root = resource  # the caller's working copy (jsontext.as_numbers made it)
        self.nodes: dict[int, tuple[dict, str | None, Any, Any]] = {}  # n -> (obj, type, container, key)
        # the objects of ``_name`` arrays and objects: a primitive's id and extensions, which the
        # FHIRPath engine (without a model) hands back beside the primitives themselves
        self.holders: set[int] = set()
        self._mark(self.root, resource.get("resourceType"), None, None)

    def _mark(self, obj: Any, ftype: str | None, container: Any, key: Any,
              holder: bool = False) -> None:
        if isinstance(obj, dict):
            n = len(self.nodes)
            obj[MARK] = n
            self.nodes[n] = (obj, ftype, container, key)
            if holder:
                self.holders.add(n)
            elements = TYPES.get(ftype or "", {})
            for k, v in list(obj.items()):
                if k == MARK:
                    continue
                kind = elements.get(k, [None])[0]
                if k == "contained" or kind == "Resource":
                    kind = None  # typed by its own resourceType
                held = k.startswith("_")
                if isinstance(v, list):
                    for i, item in enumerate(v):
                        self._mark(item, kind or (item.get("resourceType") if isinstance(item, dict) else None), v, i,
                                   held)
                else:
                    self._mark(v, kind or (v.get("resourceType") if isinstance(v, dict) else None), obj, k,
                               held)

    def strip(self) -> dict:
        def clean(o: Any) -> Any:
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items() if k != MARK}
            if isinstance(o, list):
                return [clean(v) for v in o]
            return o
        return clean(self.root)

    def evaluate(self, path: str, where: str) -> list:
        import fhirpathpy

        try:
            return list(fhirpathpy.evaluate(self.root, path, {}))
        except Exception as e:  # noqa: BLE001 - the FHIRPath engine's parse and evaluation errors
            raise _bad(f"Cannot evaluate the FHIRPath {path!r}: {type(e).__name__}", where) from None

    def resolve(self, path: str, where: str) -> str:
        """``path`` naming a choice element as FHIRPath does (``Observation.effective``,
        ``Observation.value.ofType(Quantity)``) rewritten to the element the JSON holds
        (``effectiveDateTime``, ``valueQuantity``): the engine runs without the model, and such
        a delete matched nothing and answered 200 with nothing deleted."""
        path = _OF_TYPE.sub(lambda m: "." + m.group(1) + m.group(2)[:1].upper() + m.group(2)[1:]
                            if m.group(1) + m.group(2)[:1].upper() + m.group(2)[1:] in _ELEMENTS
                            else m.group(0), path)
        m = _LAST_STEP.match(path.strip())
        if m is None or self.found(path, where):
            return path
        name, keys = m.group(2), set()
        for candidate in self.found(m.group(1), where):
            mark = self.node(candidate)
            if mark is not None:
                obj, ftype, _, _ = self.nodes[mark]
                keys |= {k for k in _choice_keys(ftype, name) if k in obj}
        if len(keys) != 1:
            return path
        return f"{m.group(1)}.{keys.pop()}" + (f"[{m.group(3)}]" if m.group(3) else "")

    def found(self, path: str, where: str) -> list:
        """The elements ``path`` matches, without the primitives' extension holders (and the
        nulls of ``_name`` arrays) the engine hands back beside them."""
        return [f for f in self.evaluate(path, where) if f is not None and not (
            isinstance(f, dict) and f.get(MARK) in self.holders)]

    def node(self, found: Any) -> int | None:
        return found.get(MARK) if isinstance(found, dict) else None

    def one_object(self, path: str, where: str) -> tuple[dict, str | None, Any, Any]:
        found = self.found(path, where)
        marks = [self.node(f) for f in found]
        if len(found) != 1 or marks[0] is None:
            raise _cannot(f"The path {path!r} must match one element, not {len(found)}", where)
        return self.nodes[marks[0]]

    def target(self, path: str, where: str) -> tuple[Any, Any, Any] | None:
        """(container, key or index, the ``_name`` array or object beside a primitive or None)
        of the one node ``path`` matches; None if it matches none."""
        found = self.found(path, where)
        if not found:
            return None
        if len(found) > 1:
            raise _cannot(f"The path {path!r} matches {len(found)} elements, not one", where)
        mark = self.node(found[0])
        if mark is not None:
            obj, _, container, key = self.nodes[mark]
            if container is None:
                raise _cannot("A patch may not replace or delete the resource itself", where)
            if isinstance(container, list):  # where it is now: an earlier delete may have moved it
                key = next(i for i, x in enumerate(container) if x is obj)
            return container, key, None
        m = _LAST_STEP.match(path.strip())  # a primitive: its parent and its element's name
        if not m:
            raise _cannot(f"The path {path!r} does not end at an element", where)
        name, index = m.group(2), m.group(3)
        # the one parent holding the element (Patient.name.family with two names, one of
        # them without a family, names one family)
        parents = []
        for candidate in self.found(m.group(1), where):
            mark = self.node(candidate)  # the engine hands back copies: the marked original
            if mark is not None and (name in self.nodes[mark][0] or
                                     "_" + name in self.nodes[mark][0]):
                parents.append(self.nodes[mark][0])
        if len(parents) != 1:
            raise _cannot(f"The path {path!r} must match one element, not {len(parents)}", where)
        parent = parents[0]
        value, ext = parent.get(name), parent.get("_" + name)
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise _cannot(f"The path {path!r} matches nothing", where)
            return value, int(index), ext
        if isinstance(value, list):
            if len(value) != 1:
                raise _cannot(f"The path {path!r} matches {len(value)} elements, not one", where)
            return value, 0, ext
        return parent, name, ext


def _value(part: dict, where: str) -> Any:
    """The JSON of a ``value`` parameter: its value[x], or its parts as an object."""
    for k, v in part.items():
        if k.startswith("value") and k != "value":
            return jsontext.copy_json(v)
    if "resource" in part:
        return jsontext.copy_json(part["resource"])
    if isinstance(part.get("part"), list):
        out: dict[str, Any] = {}
        for sub in part["part"]:
            if not isinstance(sub, dict) or not isinstance(sub.get("name"), str):
                raise _bad("Each part of a value needs a name", where)
            v = _value(sub, where)
            if sub["name"] in out:  # a repeated part: a repeating element
                prev = out[sub["name"]]
                out[sub["name"]] = (prev if isinstance(prev, list) else [prev]) + [v]
            else:
                out[sub["name"]] = v
        return out
    raise _bad("The operation's value has no value[x] and no parts", where)


def _operations(parameters: Any) -> list[tuple[dict[str, Any], str]]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise _bad("A FHIRPath Patch is a Parameters resource")
    ops = []
    given = parameters.get("parameter") or []
    if not isinstance(given, list):
        raise _bad("Parameters.parameter must be an array", "Parameters.parameter")
    for i, p in enumerate(given):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(p, dict) or p.get("name") != "operation":
            raise _bad("A FHIRPath Patch holds only 'operation' parameters", where)
        fields: dict[str, Any] = {}
        found = p.get("part") or []
        if not isinstance(found, list):
            raise _bad("An operation's part must be an array", where)
        for part in found:
            if not isinstance(part, dict) or not isinstance(part.get("name"), str):
                raise _bad("Each part of an operation needs a name", where)
            name = part["name"]
            if name == "value":
                fields["value"] = _value(part, where)
                typed = [k[5:] for k in part if k.startswith("value") and k != "value"]
                if typed:
                    fields["value_type"] = typed[0]
            else:
                simple = [v for k, v in part.items() if k.startswith("value")]
                if len(simple) != 1:
                    raise _bad(f"The operation's {name!r} needs one value", where)
                fields[name] = simple[0]
        ops.append((fields, where))
    if not ops:
        raise _bad("The FHIRPath Patch holds no operation")
    return ops


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _retyped(doc: _Doc, container: Any, key: Any, value_type: str | None) -> str | None:
    """The element a replace writes when its value is of another type of the same choice
    (``valueQuantity`` replaced by a ``valueString``), else None."""
    if not isinstance(container, dict) or not isinstance(key, str) or not value_type:
        return None
    mark = container.get(MARK)
    ftype = doc.nodes[mark][1] if mark is not None else None
    for i in range(1, len(key)):  # the stem: multipleBirth of multipleBirthBoolean
        if key[i].isupper() and key in (keys := _choice_keys(ftype, key[:i])):
            new = key[:i] + _upper_first(value_type)
            if new != key and new in keys:
                return new
    return None


def _int(fields: dict, name: str, where: str) -> int:
    v = fields.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _bad(f"The operation needs {name} as a non-negative integer", where)
    return v


def _list_at(doc: _Doc, path: str, where: str) -> tuple[list, list | None]:
    """The list of elements ``path`` names (its repetitions), to insert into or move within,
    and the ``_name`` array of their ids and extensions beside it (None without one)."""
    m = _LAST_STEP.match(path.strip())
    if not m:
        raise _cannot(f"The path {path!r} does not name a repeating element", where)
    parent, _, _, _ = doc.one_object(m.group(1), where)
    value = parent.get(m.group(2))
    if value is None:
        value = parent[m.group(2)] = []
    if not isinstance(value, list):
        raise _cannot(f"{path!r} does not repeat", where)
    ext = parent.get("_" + m.group(2))
    return value, ext if isinstance(ext, list) and len(ext) == len(value) else None


def apply_fhirpath_patch(resource: dict, parameters: Any) -> dict:
    ops = _operations(jsontext.as_numbers(parameters))
    doc = _Doc(jsontext.as_numbers(resource))
    for fields, where in ops:
        kind, path = fields.get("type"), fields.get("path")
        if not isinstance(path, str) or not path.strip():
            raise _bad("The operation needs a path", where)
        if kind == "add":
            name = fields.get("name")
            if not isinstance(name, str) or "value" not in fields:
                raise _bad("add needs a name and a value", where)
            obj, ftype, _, _ = doc.one_object(doc.resolve(path, where), where)
            typed = name + _upper_first(fields.get("value_type") or "")
            if name not in TYPES.get(ftype or "", {}) and typed in _choice_keys(ftype, name):
                name = typed  # a choice (value) as its value's type writes it (valueString)
            repeats = bool(TYPES.get(ftype or "", {}).get(name, [None, 0])[1])
            value = fields["value"]
            if isinstance(obj.get(name), list):
                ext = obj.get("_" + name)
                if isinstance(ext, list) and len(ext) == len(obj[name]):
                    ext.append(None)  # the extensions stay with their values
                obj[name].append(value)
            elif name in obj:
                raise _cannot(f"{path}.{name} already has a value; use replace", where)
            else:
                obj[name] = [value] if repeats and not isinstance(value, list) else value
        elif kind == "insert":
            items, ext = _list_at(doc, path, where)
            index = _int(fields, "index", where)
            if index > len(items) or "value" not in fields:
                raise _cannot(f"insert at {index} into {len(items)} elements (with a value)", where)
            items.insert(index, fields["value"])
            if ext is not None:  # the extensions stay with their values
                ext.insert(index, None)
        elif kind == "delete":
            found = doc.target(doc.resolve(path, where), where)
            if found is not None:
                container, key, ext = found
                del container[key]
                # the element goes whole: its id and extensions with its value
                if isinstance(key, int) and isinstance(ext, list) and key < len(ext):
                    del ext[key]
                elif isinstance(key, str) and isinstance(container, dict):
                    container.pop("_" + key, None)
        elif kind == "replace":
            if "value" not in fields:
                raise _bad("replace needs a value", where)
            found = doc.target(doc.resolve(path, where), where)
            if found is None:
                raise _cannot(f"The path {path!r} matches nothing to replace", where)
            container, key, ext = found
            retyped = _retyped(doc, container, key, fields.get("value_type"))
            if retyped is not None:  # valueQuantity replaced by a string: valueString
                del container[key]
                container.pop("_" + key, None)
                key = retyped
            container[key] = fields["value"]
        elif kind == "move":
            items, ext = _list_at(doc, path, where)
            src, dst = _int(fields, "source", where), _int(fields, "destination", where)
            if src >= len(items) or dst >= len(items):
                raise _cannot(f"move {src} -> {dst} within {len(items)} elements", where)
            items.insert(dst, items.pop(src))
            if ext is not None:
                ext.insert(dst, ext.pop(src))
        else:
            raise _bad(f"Unknown operation type {kind!r}; use add, insert, delete, replace, move",
                       where)
    return _check_identity(resource, jsontext.as_written(_prune(doc.strip())))


def _prune(o: Any) -> Any:
    """Drop what a delete left empty (an empty list or object is not valid FHIR JSON)."""
    if isinstance(o, dict):
        out = {k: _prune(v) for k, v in o.items()}
        return {k: v for k, v in out.items() if v not in ([], {})}
    if isinstance(o, list):
        items = [x for x in (_prune(v) for v in o) if x not in ([], {})]
        # a _name array left with nulls alone holds no extension any more
        return [] if items and all(x is None for x in items) else items
    return o
