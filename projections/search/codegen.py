"""A resource type's extraction plan as one Python function.

The interpreter in ``plan.py`` walks each parameter's path step by step and builds a list per
step; over the dozens of parameters of a type that bookkeeping cost as much as the values did. Here
a type's plan becomes the source of one function of nested loops over ``dict.get`` (compiled once
per type with ``exec``), calling the same converters. Steps that need a whole collection at once
(``[n]``, ``%resource``) are still handed to the interpreter. ``source(rtype)`` shows the code.

Behaviour is the interpreter's: a parameter whose walk raises is left out (or the error raised with
``strict``), values keep their document order per walk.
"""

from __future__ import annotations

from functools import lru_cache, partial
from itertools import product
from typing import Callable

from projections.search import plan as ex

_IND = "    "


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, object] = {}  # objects the code refers to, by generated name

    def name(self, obj: object, prefix: str) -> str:
        for k, v in self.names.items():
            if v is obj:
                return k
        k = f"{prefix}{len(self.names)}"
        self.names[k] = obj
        return k

    def add(self, depth: int, line: str) -> None:
        self.lines.append(_IND * depth + line)


def _streamable(steps) -> bool:
    return all(s.sym[0] in ("field", "whereEq", "resolveIs") for s in steps)


def _loops(src: _Source, steps, var: str, depth: int, level: int) -> tuple[str, int]:
    """Nested loops for ``steps`` from node ``var``; (the innermost node's name, its depth)."""
    for step in steps:
        kind = step.sym[0]
        if kind == "field":
            x, n = f"x{level}", f"n{level}"
            src.add(depth, f"{x} = {var}.get({step.sym[1]!r})")
            src.add(depth, f"if {x} is not None:")
            src.add(depth + 1, f"for {n} in ({x} if type({x}) is list else ({x},)):")
            var, depth, level = n, depth + 2, level + 1
        elif kind == "whereEq":
            src.add(depth, f"if {var}.get({step.sym[1]!r}) == {step.sym[2]!r}:")
            depth += 1
        else:  # resolveIs
            src.add(depth, f"if reference_type({var}, r) == {step.sym[1]!r}:")
            depth += 1
    return var, depth


def _walk(src: _Source, steps, conv, top: str, acc: str, depth: int) -> None:
    """Code applying ``conv`` to every node the steps reach from the collection ``top``."""
    c = src.name(conv, "C")
    if not steps:
        src.add(depth, f"for n in {top}:")
        src.add(depth + 1, f"{c}(n, r, {acc})")
    elif _streamable(steps):
        src.add(depth, f"for n0 in {top}:")
        var, inner = _loops(src, steps, "n0", depth + 1, 1)
        src.add(inner, f"{c}({var}, r, {acc})")
    else:
        s = src.name(steps, "S")
        src.add(depth, f"for n in _run({s}, list({top}), r):")
        src.add(depth + 1, f"{c}(n, r, {acc})")


def _guarded(src: _Source, code: str, body: Callable[[int], None]) -> None:
    src.add(1, "try:")
    src.add(2, f"acc = out.get({code!r})")
    src.add(2, "if acc is None:")
    src.add(3, f"acc = out[{code!r}] = []")
    body(2)
    src.add(1, "except Exception:")
    src.add(2, "if strict:")
    src.add(3, "raise")
    src.add(2, f"failed.append({code!r})")


def _component_fn(walks) -> Callable[[dict, dict], list]:
    """One composite component's values at a context node, as a compiled function."""
    src = _Source()
    src.add(0, "def component(node, r):")
    src.add(1, "found = []")
    for w in walks:
        if w.first_key is None:
            _walk(src, w.steps, w.convert, "(node,)", "found", 1)
        else:
            src.add(1, f"v = node.get({w.first_key!r})")
            src.add(1, "if v is not None:")
            src.add(2, "top = v if type(v) is list else (v,)")
            _walk(src, w.steps, w.convert, "top", "found", 2)
    src.add(1, "return found")
    return _exec(src, "component")


def _composite_fn(c) -> Callable[[dict, dict], None]:
    """A composite parameter: per context node, the product of its components' values."""
    contexts = []
    for ctx, comps, keys in zip(c.contexts, c.components, c.value_keys):
        fns = tuple(_component_fn(walks) for walks in reversed(comps))  # value (last) first
        contexts.append((ctx, fns, keys))
    Token, run = ex.Token, ex._run

    def composite(root: dict, out: dict) -> None:
        rows: list = []
        for ctx, fns, keys in contexts:
            top = root if ctx.first_key is None else root.get(ctx.first_key)
            nodes = [] if top is None else top if type(top) is list else [top]
            for node in run(ctx.steps, nodes, root):
                if keys is not None and (type(node) is not dict or keys.isdisjoint(node)):
                    continue
                parts = []
                for fn in fns:
                    # a CodeableConcept's text row has no code to pair a value with
                    found = [v for v in fn(node, root) if type(v) is not Token or v.code is not None]
                    if not found:
                        break
                    parts.append(found)
                else:
                    rows += product(*reversed(parts))
        if rows:
            out[c.code] = rows
    return composite


def _exec(src: _Source, fname: str):
    namespace = {"reference_type": ex.reference_type, "_run": ex._run, **src.names}
    exec(compile("\n".join(src.lines), f"<search extraction: {fname}>", "exec"), namespace)
    return namespace[fname]


def _type_source(rtype: str) -> _Source:
    plan = ex.plan_for(rtype)
    src = _Source()
    src.add(0, "def extract_type(r, out, failed, strict):")
    src.add(1, "get = r.get")
    for key, walks in plan.by_key.items():
        src.add(1, f"v = get({key!r})")
        src.add(1, "if v is not None:")
        src.add(2, "top = v if type(v) is list else (v,)")
        for w in walks:
            sub = _Source()
            sub.names = src.names
            _guarded(sub, w.code, partial(_walk, sub, w.steps, w.convert, "top", "acc"))
            src.lines += [_IND + line for line in sub.lines]
    for w in plan.from_root:
        _guarded(src, w.code, partial(_walk, src, w.steps, w.convert, "(r,)", "acc"))
    for c in plan.composites:
        f = src.name(_composite_fn(c), "K")
        src.add(1, "try:")
        src.add(2, f"{f}(r, out)")
        src.add(1, "except Exception:")
        src.add(2, "if strict:")
        src.add(3, "raise")
        src.add(2, f"failed.append({c.code!r})")
    src.add(1, "return out")
    return src


@lru_cache(maxsize=None)
def compiled(rtype: str) -> Callable[[dict, dict, list, bool], dict]:
    """``fn(resource, out, failed, strict)``: the type's walks and composites (not its fallbacks)."""
    return _exec(_type_source(rtype), "extract_type")


def source(rtype: str) -> str:
    """The generated code of a type, for reading and debugging."""
    return "\n".join(_type_source(rtype).lines)
