"""Fixtures shared by the integration tests, which run on uvloop: the loop Shoal's processes use,
whose transports are not asyncio's classes and whose spawn leaves descriptors open in the child
(tests/integration/http runs on both loops)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

from tests.support.cluster import cluster
from tests.support.gateway import gateway

__all__ = ["cluster", "gateway"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop for every test in this directory."""
    return {"uvloop": uvloop.new_event_loop}
