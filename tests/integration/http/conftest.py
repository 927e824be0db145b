"""The HTTP core's tests run twice: on asyncio's event loop and on uvloop, which Shoal's
processes use and whose transports (TLS above all) are not asyncio's classes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Both loops for every test in this directory."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
