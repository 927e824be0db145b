"""Runs one instance of an ``app:`` Service: the ASGI app on hypercorn, on loopback.

Started by the agent as ``python -m shoal.platform.runtime.serve MODULE:ATTR --port N``, or forked
from a pre-warmed template (:mod:`.template_process`); both end in :func:`serve_forever`.
SIGTERM starts hypercorn's graceful shutdown, which lets in-flight requests finish.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from shoal.platform.runtime.faults import FaultSwitch


def load_app(spec: str) -> Any:
    """Import ``module:attr`` (attr may be dotted)."""
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    return obj


def config(port: int, *, host: str = "127.0.0.1") -> Config:
    """hypercorn settings for an instance: loopback, long keep-alive, a real grace period."""
    cfg = Config()
    cfg.bind = [f"{host}:{port}"]
    cfg.keep_alive_max_requests = 1_000_000_000
    cfg.graceful_timeout = 30.0
    cfg.accesslog = None
    cfg.errorlog = "-"
    return cfg


async def run(app: Any, cfg: Config) -> None:
    """Serve until SIGTERM or SIGINT; SIGUSR1/SIGUSR2 toggle the drill faults."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    switch = FaultSwitch(app)
    switch.install(loop)
    await serve(switch, cfg, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def serve_forever(app: Any, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` in a new event loop (uvloop when installed) until
    SIGTERM or SIGINT: what every instance runs, however its process was started."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(run(app, config(port)))
    else:
        uvloop.run(run(app, config(port)))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="shoal-runtime")
    parser.add_argument("app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    if args.workdir:
        sys.path.insert(0, args.workdir)
    serve_forever(load_app(args.app), args.port)


if __name__ == "__main__":
    main()
