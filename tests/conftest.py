"""Shared fixtures: one real embedded redis-server per test worker, a fresh key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from shoal.store.connection import Redis, connect
from shoal.store.embedded import EmbeddedRedis
from shoal.store.keys import Keys

# Properties must not fail because a loaded CI machine ran an example slowly.
settings.register_profile("shoal", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shoal")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server started by Shoal's own embedded launcher."""
    server = EmbeddedRedis(state_dir=tmp_path_factory.mktemp("redis-state"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The URL of the worker's Redis."""
    return redis_server.url


@pytest.fixture
def keys() -> Keys:
    """A key prefix no other test uses, so tests share one server without seeing each other."""
    return Keys(prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An async client of the worker's Redis."""
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh Shoal state dir."""
    path = tmp_path / "shoal-home"
    path.mkdir()
    return path
