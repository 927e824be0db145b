"""Faults that drills inject into an instance Shoal runs, and how the instance takes them.

``kill`` (SIGKILL) and ``hang`` (SIGSTOP, undone by SIGCONT) work on any process. ``error`` and
``slow`` need the instance's cooperation, so they exist only for ``app:`` services, whose
runtime wraps the app in :class:`FaultSwitch`: SIGUSR1 toggles answering 503, SIGUSR2 toggles
an added delay. Health-check paths are affected too, as they would be by a real fault.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

Fault = Literal["kill", "hang", "error", "slow"]
FAULTS: tuple[Fault, ...] = ("kill", "hang", "error", "slow")

# (signal that starts it, signal that ends it); kill has no end.
SIGNALS: dict[Fault, tuple[signal.Signals, signal.Signals | None]] = {
    "kill": (signal.SIGKILL, None),
    "hang": (signal.SIGSTOP, signal.SIGCONT),
    "error": (signal.SIGUSR1, signal.SIGUSR1),
    "slow": (signal.SIGUSR2, signal.SIGUSR2),
}

SLOW_DELAY = 0.5  # seconds added to every answer while "slow" is on

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


@dataclass(slots=True)
class FaultSwitch:
    """ASGI middleware whose error and delay faults are toggled by signals."""

    app: ASGIApp
    error: bool = False
    slow: bool = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Toggle ``error`` on SIGUSR1 and ``slow`` on SIGUSR2."""
        loop.add_signal_handler(signal.SIGUSR1, self._toggle, "error")
        loop.add_signal_handler(signal.SIGUSR2, self._toggle, "slow")

    def _toggle(self, name: str) -> None:
        setattr(self, name, not getattr(self, name))

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            if self.slow:
                await asyncio.sleep(SLOW_DELAY)
            if self.error:
                body = b"fault injected: error\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
