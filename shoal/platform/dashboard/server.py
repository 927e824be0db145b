"""``shoal dashboard``: a starlette app on hypercorn showing the mesh live, read-only.

One poller reads the store every :data:`POLL` seconds (whatever the number of browsers) and
turns each reading into an overview (:class:`~.model.Tracker`); the app serves

- ``GET /``: the page (HTML, its script and style from this package: no internet needed);
- ``GET /api/overview``: the latest overview as JSON;
- ``GET /api/stream``: server-sent events, one ``overview`` event per poll.

It shows no secret: no store URL, join token or key, no instance output (an app may print
anything); certificates appear by identity, serial and expiry. It listens on 127.0.0.1 unless
told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shoal.platform.control.client import Client
from shoal.platform.dashboard.model import Reading, Tracker
from shoal.store.connection import Redis
from shoal.store.events import Events
from shoal.store.keys import Keys

log = logging.getLogger(__name__)

POLL = 1.0  # seconds between readings of the store
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


async def read(client: Client) -> Reading:
    """One reading of the store."""
    status = await client.status()
    return Reading(
        status,
        tuple(await client.virtual_services()),
        tuple(await client.destination_rules()),
        tuple(await Events(client.redis, client.keys).recent()),
    )


class Live:
    """The latest overview, refreshed by :meth:`run`; waiters are woken on each refresh."""

    def __init__(
        self,
        reading: Callable[[], Awaitable[Reading]],
        *,
        tracker: Tracker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reading = reading
        self._tracker = tracker or Tracker()
        self._clock = clock
        self.overview: dict[str, Any] | None = None
        self._changed = asyncio.Event()

    async def refresh(self) -> dict[str, Any]:
        """Read the store once and compute the overview."""
        self.overview = self._tracker.update(await self._reading(), self._clock())
        self._changed.set()
        self._changed = asyncio.Event()
        return self.overview

    async def run(self, stop: asyncio.Event, every: float = POLL) -> None:
        """Refresh every ``every`` seconds until ``stop``; a failed reading is logged and
        tried again at the next tick."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as e:  # (the store restarting, say): the page keeps the last one
                log.warning("dashboard: cannot read the store: %s", e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()

    async def next(self) -> dict[str, Any]:
        """The next overview."""
        await self._changed.wait()
        assert self.overview is not None
        return self.overview


def app(live: Live) -> Starlette:
    """The dashboard's ASGI app over ``live``."""

    async def asset(request: Request) -> Response:
        name, kind = _ASSETS[request.url.path]
        body = resources.files("shoal.platform.dashboard").joinpath("static", name).read_bytes()
        return Response(body, media_type=kind, headers={"cache-control": "no-cache"})

    async def overview(_request: Request) -> Response:
        current = live.overview or await live.refresh()
        return JSONResponse(current)

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            current = live.overview
            while not await request.is_disconnected():
                if current is not None:
                    yield b"event: overview\ndata: " + json.dumps(current).encode() + b"\n\n"
                try:
                    async with asyncio.timeout(15):
                        current = await live.next()
                except TimeoutError:
                    current = None
                    yield b": still here\n\n"  # keeps proxies from closing a quiet stream

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    routes = [Route(path, asset) for path in _ASSETS]
    routes += [Route("/api/overview", overview), Route("/api/stream", stream)]
    return Starlette(routes=routes)


async def run_dashboard(
    redis: Redis, url: str, keys: Keys, *, host: str, port: int, stop: asyncio.Event
) -> None:
    """Serve the dashboard of the store at ``redis`` on ``host:port`` until ``stop``."""
    client = Client(redis, keys)
    live = Live(lambda: read(client))
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 1.0
    poller = asyncio.create_task(live.run(stop))
    try:
        await serve(app(live), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    finally:
        stop.set()
        await poller
