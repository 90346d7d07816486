"""Which methods a path takes, for the 405 answers (RFC 9110 15.5.6: ``Allow`` lists them).

Starlette's router takes the first route that matches a request fully, and on a 405 names only
the methods of the first route that matched its path. Here every route of the path counts, and a
route with a literal segment where another has a parameter is that path's owner: ``/fhir/metadata``
is not ``/fhir/{rtype}`` of type "metadata", so ``PUT /fhir/metadata`` is a 405, not an update.
"""

from __future__ import annotations

from typing import Any

from starlette.convertors import StringConvertor
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

_FHIR = "/fhir"


def get_route_path(scope: Scope) -> str:
    """The path the routes match: without the root path the app is mounted under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def refuses(endpoint: Any) -> Any:
    """Mark a handler that answers only 405 (a Person is not written): its methods are never
    what a path takes."""
    endpoint.refuses = True
    return endpoint


def starts_work(endpoint: Any) -> Any:
    """Mark a GET handler that starts work (a bulk export's kick-off): HEAD, which asks only
    what a GET would answer, is no way to start it, so the route takes no HEAD (405)."""
    endpoint.starts_work = True
    return endpoint


def _takes_head(route: Any) -> bool:
    return "GET" in route.methods and not getattr(route.endpoint, "starts_work", False)


class _Route:
    """A route's path pattern, its literal segments and its methods (HEAD wherever GET)."""

    __slots__ = ("regex", "literal", "methods", "route")

    def __init__(self, route: Any) -> None:
        self.route = route
        self.regex = route.path_regex
        segments = route.path.split("/")
        self.literal = frozenset(i for i, s in enumerate(segments) if "{" not in s)
        methods = set(route.methods)
        if _takes_head(route):
            methods.add("HEAD")
        self.methods = frozenset(methods)


def _flat(routes: list) -> list[_Route]:
    out: list[_Route] = []
    for r in routes:
        inner = getattr(r, "original_router", None)  # an included router (newer FastAPI)
        if inner is not None:
            out += _flat(inner.routes)
        elif getattr(r, "methods", None) and getattr(r, "path_regex", None) is not None:
            out.append(_Route(r))
    return out


def _owners(path: str, table: list[_Route]) -> list[_Route]:
    """The routes matching ``path`` that no more literal one among them shadows."""
    found = [r for r in table if r.regex.match(path)]
    return [r for r in found if not any(r.literal < s.literal for s in found)]


def allowed(app: Any, scope: Scope, refused: Any = None) -> str:
    """The ``Allow`` header of a 405 to this request: the methods the routes of its path take
    (``refused``: the route that answered 405 itself, whose methods it refuses, left out)."""
    methods = {m for r in _owners(get_route_path(scope), _flat(app.routes))
               if not _same(r.route, refused) and not getattr(r.route.endpoint, "refuses", False)
               for m in r.methods}
    if refused is not None:  # HEAD is GET without the body: refused with it
        methods -= {"GET", "HEAD"} if scope["method"] in ("GET", "HEAD") else {scope["method"]}
    return ", ".join(sorted(methods))


def _same(route: Any, other: Any) -> bool:
    """One route, though an included router's route and the app's copy of it are two objects."""
    return other is not None and route.path == getattr(other, "path", None) and \
        route.endpoint is getattr(other, "endpoint", None)


class MethodGuard(BaseRoute):
    """The first route of the app: a request to a FHIR path under a method none of its owners
    takes is a 405 naming theirs, before a parameter route of the same shape takes it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._table: list[_Route] | None = None
        self._spanning: list[_Route] = []  # a parameter over several segments ({p:path})
        self._tokens: frozenset[str] = frozenset()
        # methods by path shape (each segment no route has as a literal is the same to every
        # route: a parameter takes it), so a request costs a dict lookup
        self._shapes: dict[tuple, frozenset[str]] = {}

    def _methods(self, path: str) -> frozenset[str]:
        if self._table is None:  # once every route is in place
            table = [r for r in _flat(self.app.routes) if r.route.path.startswith(_FHIR)]
            self._spanning = [r for r in table if any(
                not isinstance(c, StringConvertor) for c in r.route.param_convertors.values())]
            self._tokens = frozenset(s for r in table for s in r.route.path.split("/")
                                     if "{" not in s)
            self._table = table
        if any(r.regex.match(path) for r in self._spanning):  # no shape to go by: the router's
            return frozenset()
        segments = path.split("/")
        if len(segments) > 8:  # deeper than any route: the router's 404
            return frozenset()
        shape = tuple(s if s in self._tokens or not s else None for s in segments)
        methods = self._shapes.get(shape)
        if methods is None:
            methods = frozenset(m for r in _owners(path, self._table) for m in r.methods)
            if len(self._shapes) < 4096:
                self._shapes[shape] = methods
        return methods

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path = get_route_path(scope)
        if not (path == _FHIR or path.startswith(_FHIR + "/")):
            return Match.NONE, {}
        methods = self._methods(path)
        if methods and scope["method"] not in methods:
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self._methods(get_route_path(scope))
        raise HTTPException(405, headers={"Allow": ", ".join(sorted(methods))})

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)


def head_wherever_get(routes: list) -> None:
    """HEAD wherever GET (RFC 9110 9.3.2): FastAPI's routes take only the methods they name, so a
    route registered GET only (``$everything``, ``$timeline``, the terminology operations) let a
    HEAD fall through to a later route that took the path another way (``$everything`` as a
    compartment type: 400). Each such route takes HEAD too; the server sends no body."""
    for r in routes:
        inner = getattr(r, "original_router", None)  # an included router (newer FastAPI)
        if inner is not None:
            head_wherever_get(inner.routes)
        elif isinstance(getattr(r, "methods", None), set) and _takes_head(r):
            r.methods.add("HEAD")


def install(app: Any) -> None:
    """The guard before every other route; and HEAD wherever GET."""
    head_wherever_get(app.router.routes)
    app.router.routes.insert(0, MethodGuard(app))
