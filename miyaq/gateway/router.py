"""Maps (method, path) to a handler.

Patterns are OpenAPI-style templates (``/tasks/{id}/ack``); a parameter
matches one non-empty path segment. Static paths are looked up in a dict, so
the hot enqueue routes cost one lookup. An unknown path is a 404, a known
path with another method a 405 carrying ``Allow``. Each route may name the
role it needs (:mod:`~miyaq.gateway.permissions`); None means its handler
checks callers itself (the console).

``HEAD`` is served by every ``GET`` route (RFC 9110, 9.3.2): it matches
the GET route, whose handler runs as for a GET (the gateway then sends
the answer's status and headers without its body), and every ``Allow``
that lists GET lists HEAD too. A HEAD's errors are its GET's, word for
word (a 405 names GET), so that their Content-Length is the GET's. Before 2026-12-05 HEAD was answered 405.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from miyaq.errors import NotFound
from miyaq.gateway.errors import MethodNotAllowed
from miyaq.gateway.permissions import is_probe_guess
from miyaq.gateway.request import Request, Response
from miyaq.security.roles import Role

Handler = Callable[[Request], Response]

_PARAM = re.compile(r"\{([a-z_]+)\}")


class Route:
    __slots__ = ("handler", "method", "regex", "role", "template")

    def __init__(self, method: str, template: str, handler: Handler, role: Role | None) -> None:
        self.method = method
        self.template = template
        self.handler = handler
        self.role = role
        self.regex = None
        if "{" in template:
            self.regex = re.compile("^" + _PARAM.sub(r"(?P<\1>[^/]+)", template) + "$")


def serves(route_method: str, method: str) -> bool:
    """Does a route for ``route_method`` answer a request for ``method``? Its
    own method, and HEAD for a GET route."""
    return route_method == method or (method == "HEAD" and route_method == "GET")


def allowed_methods(methods: list[str]) -> list[str]:
    """The sorted ``Allow`` list of a path whose routes take ``methods``:
    HEAD wherever GET is."""
    allow = set(methods)
    if "GET" in allow:
        allow.add("HEAD")
    return sorted(allow)


def _as_get(method: str) -> str:
    """The method an answer's text names: a HEAD's answer is its GET's, word
    for word (so its Content-Length is the GET's)."""
    return "GET" if method == "HEAD" else method


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._static: dict[str, dict[str, Route]] = {}
        self._dynamic: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, role: Role | None = None) -> None:
        route = Route(method.upper(), template, handler, role)
        self.routes.append(route)
        if route.regex is None:
            self._static.setdefault(template, {})[route.method] = route
        else:
            self._dynamic.append(route)

    def match(self, request: Request) -> Route:
        """The route for ``request`` (path parameters go to ``request.params``)."""
        path = request.path
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        by_method = self._static.get(path)
        if by_method is not None:
            route = by_method.get(request.method)
            if route is None and request.method == "HEAD":
                route = by_method.get("GET")
            if route is None:
                raise MethodNotAllowed(f"{_as_get(request.method)} is not allowed on {path}",
                                       allow=allowed_methods(list(by_method)))
            return route
        allowed: list[str] = []
        for route in self._dynamic:
            m = route.regex.match(path)   # type: ignore[union-attr]
            if m is None:
                continue
            if not serves(route.method, request.method):
                allowed.append(route.method)
                continue
            request.params = m.groupdict()   # PATH_INFO is already percent-decoded
            return route
        if allowed:
            raise MethodNotAllowed(f"{_as_get(request.method)} is not allowed on {path}",
                                   allow=allowed_methods(allowed))
        if is_probe_guess(path):
            raise NotFound(f"no endpoint {path}: this node's health probes are GET /livez (its event loop answers) "
                           "and GET /readyz (it would serve now), and they need no token")
        raise NotFound(f"no endpoint {path}; GET /openapi.json lists them (the web console is /ui, unless "
                       f"http_console is off)")
