"""Every dependency of every route is ``async def``: FastAPI runs a plain ``def`` one in its
thread pool, a thread trip on every request (it showed in the create path's profile)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from flowyard.services.api import events, ops, system, tasks, users, webhooks

ROUTERS = [
    ops.router,
    tasks.router,
    events.router,
    system.router,
    system.health_router,
    webhooks.router,
    users.router,
    users.public,
]


def _calls(dependant: Dependant) -> Iterator[object]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def test_no_route_depends_on_a_plain_function() -> None:
    routes = [route for router in ROUTERS for route in router.routes]
    assert sum(isinstance(route, APIRoute) for route in routes) > 30
    sync = {
        f"{route.path}: {getattr(call, '__qualname__', call)}"
        for route in routes
        if isinstance(route, APIRoute)
        for call in _calls(route.dependant)
        if inspect.isfunction(call) and not inspect.iscoroutinefunction(call)
    }
    assert not sync, sorted(sync)
