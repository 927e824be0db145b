"""Fixtures shared by the integration tests. The protocol tests (gRPC, WebSocket, the examples)
and those of templates and isolation run on uvloop, the loop Shoal's processes use, whose
transports are not asyncio's classes and whose spawn leaves descriptors open in the child
(tests/integration/http runs on both loops); the rest on asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

from tests.support.cluster import cluster
from tests.support.gateway import gateway

__all__ = ["cluster", "gateway"]


ON_UVLOOP = frozenset(
    {
        "test_grpc.py",
        "test_websocket.py",
        "test_examples.py",
        "test_template.py",
        "test_isolation.py",
    }
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop for the tests in :data:`ON_UVLOOP`, asyncio's loop for the others."""
    if item.path.name in ON_UVLOOP:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
