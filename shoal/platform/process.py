"""How every long-running Shoal process starts and stops: uvloop, logging, signals, store.

SIGTERM or SIGINT sets the ``stop`` event that flows down to every loop of the process; the
process then drains and exits cleanly.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from shoal.store.connection import Redis, connect
from shoal.store.keys import Keys

Main = Callable[[Redis, str, Keys, asyncio.Event], Awaitable[None]]


def setup_logging(name: str, level: int = logging.INFO) -> None:
    """One line per event on stderr, named after the process."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )


async def _serve(main: Main, url: str, keys: Keys) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = connect(url)
    try:
        await main(redis, url, keys, stop)
    finally:
        await redis.aclose()


GC_THRESHOLDS = (50_000, 10, 10)
"""Container allocations (net) between two young collections, then the older generations'
(CPython's default is 700, 10, 10)."""


def tune_gc() -> None:
    """Fit the cyclic collector to a proxy: whatever was imported and built at startup lives as
    long as the process and is frozen out of every collection; young collections run every
    :data:`GC_THRESHOLDS` allocations, not every 700, because each one scans every object of
    every request in flight. Measured on the gateway over h2c at saturation: 2.1k req/s with
    CPython's defaults, 2.9k with these, 2.8k with the collector off."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_process(main: Main, url: str, keys: Keys) -> None:
    """Run ``main`` on uvloop until SIGTERM/SIGINT (with :func:`tune_gc`)."""
    tune_gc()
    try:
        import uvloop

        uvloop.run(_serve(main, url, keys))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_serve(main, url, keys))
