"""Routes as decorated functions on plain Starlette: `@router.get("/v2/models/{name}")` over
`async def f(request, name, version=None)`. A handler's parameters are filled by name from the path, then the
query string; `request` (or a WebSocket's first parameter) is the connection. FastAPI did this before, at the cost
of half a second of imports at every start and its validation on every request, for handlers that need neither."""
from __future__ import annotations

import inspect
from collections.abc import Callable

from starlette.requests import Request
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from edgepilot.errors import InputError


class Router:
    """The routes of one protocol, in the order they were declared (the first match wins, as in Starlette)."""

    def __init__(self) -> None:
        self.routes: list[BaseRoute] = []

    def get(self, path: str) -> Callable:
        return self._route(path, ["GET"])

    def post(self, path: str) -> Callable:
        return self._route(path, ["POST"])

    def websocket(self, path: str) -> Callable:
        def add(handler: Callable) -> Callable:
            fill = _filler(handler, takes_connection=True)

            async def endpoint(ws: WebSocket) -> None:
                await handler(ws, **fill(ws))

            self.routes.append(WebSocketRoute(path, endpoint))
            return handler
        return add

    def _route(self, path: str, methods: list[str]) -> Callable:
        def add(handler: Callable) -> Callable:
            takes_request = "request" in inspect.signature(handler).parameters
            fill = _filler(handler, takes_connection=takes_request)

            async def endpoint(request: Request):
                kwargs = fill(request)
                return await (handler(request, **kwargs) if takes_request else handler(**kwargs))

            self.routes.append(Route(path, endpoint, methods=methods))
            return handler
        return add


def _filler(handler: Callable, takes_connection: bool) -> Callable:
    """A function reading the handler's parameters off a request: path first, then query; a required one that is
    missing is a 400."""
    params = list(inspect.signature(handler).parameters.values())[1 if takes_connection else 0:]
    names = [(p.name, p.default is inspect.Parameter.empty) for p in params]

    def fill(conn) -> dict[str, str | None]:
        kwargs = {}
        for name, required in names:
            value = conn.path_params.get(name)
            if value is None:
                value = conn.query_params.get(name)
            if value is not None:
                kwargs[name] = value
            elif required:
                raise InputError(f"invalid request: the query parameter {name!r} is required")
        return kwargs
    return fill
