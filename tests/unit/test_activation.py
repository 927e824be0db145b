"""The Activator against a real ProxyState snapshot: held requests, asks, timeouts, the queue."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

from shoal.http.refusal import Refusal
from shoal.mesh.activation import Activator
from shoal.mesh.proxy_state import ProxyState
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import to_document
from shoal.resources.model import Scale, Service
from shoal.store.watch import View
from tests.support.wait import eventually

HELLO = Service(name="hello", revision="v1", app="app:hello", scale=Scale(min=0))


def view(revision: int, *instances: Endpoint) -> View:
    doc: Any = to_document(HELLO)
    return View(
        revision=revision,
        config=MappingProxyType({"Service": MappingProxyType({HELLO.key: doc})}),
        instances=MappingProxyType({e.key: e for e in instances}),
    )


READY = Endpoint(
    id="a1",
    service="hello",
    revision="v1",
    node="n1",
    address="127.0.0.1",
    port=1,
    labels=(("app", "hello"), ("version", "v1")),
    state="ready",
)


async def hold(state: ProxyState, activator: Activator) -> Any:
    route = state.decide("hello", "GET", "/", {})
    assert not isinstance(route, Refusal) and not route.cluster.endpoints
    return await activator.hold(route, lambda: state.decide("hello", "GET", "/", {}))


async def test_held_until_an_instance_is_ready_then_routed() -> None:
    """A request at zero asks for hello/v1, waits, and is routed once a snapshot has it."""
    state = ProxyState()
    state.update(view(1))
    asked: list[str] = []

    async def ask(revision: str) -> None:
        asked.append(revision)

    activator = Activator(state, ask, timeout=5.0)
    held = asyncio.ensure_future(hold(state, activator))
    await eventually(lambda: asked, "the activator asking for an instance", timeout=5)
    assert asked == ["hello/v1"] and activator.held == {"hello": 1}
    assert state.load.in_flight("hello/v1") == 1  # the autoscaler sees it
    state.update(view(2, READY))
    route = await held
    assert not isinstance(route, Refusal) and route.cluster.endpoints == (READY,)
    assert activator.held == {"hello": 0} and activator.activations == 1
    assert state.load.in_flight("hello/v1") == 0


async def test_cold_start_timeout_survives_several_asks() -> None:
    """No instance within the timeout: 503 cold_start_timeout with Retry-After, after asking
    again every ask_again seconds (an unrelated snapshot change does not end the wait)."""
    state = ProxyState()
    state.update(view(1))
    asked: list[str] = []

    async def ask(revision: str) -> None:
        asked.append(revision)

    activator = Activator(state, ask, timeout=0.5, ask_again=0.1)
    result = await hold(state, activator)
    assert isinstance(result, Refusal)
    assert (result.status, result.cause) == (503, "cold_start_timeout")
    assert result.retry_after is not None and result.retry_after >= 1
    assert len(asked) >= 3


async def test_full_queue_overflows_at_once() -> None:
    """Beyond queue_limit waiting requests, the next is refused at once (503
    activation_overflow, Retry-After)."""
    state = ProxyState()
    state.update(view(1))

    async def ask(revision: str) -> None:
        pass

    activator = Activator(state, ask, timeout=5.0, queue_limit=2)
    waiting = [asyncio.ensure_future(hold(state, activator)) for _ in range(2)]
    await eventually(lambda: activator.held == {"hello": 2}, "two requests held", timeout=5)
    refused = await hold(state, activator)
    assert isinstance(refused, Refusal) and (refused.cause, refused.retry_after) == (
        "activation_overflow",
        1,
    )
    state.update(view(2, READY))
    assert all(not isinstance(r, Refusal) for r in await asyncio.gather(*waiting))


def test_crash_looping_needs_every_instance_of_every_revision_failing() -> None:
    """Refused at once only when each revision has instances and all of them fail to start."""
    from dataclasses import replace as changed

    from shoal.mesh.activation import crash_looping

    failing = changed(READY, state="unhealthy", reason="import_error", restarts=2)
    other = changed(failing, id="b", revision="v2")
    assert crash_looping([failing], ["hello/v1"]) == failing
    assert crash_looping([failing, READY], ["hello/v1"]) is None  # one is ready
    assert crash_looping([failing], ["hello/v1", "hello/v2"]) is None  # v2 may start
    assert crash_looping([failing, other], ["hello/v1", "hello/v2"]) == failing
    assert crash_looping([changed(failing, reason="exited")], ["hello/v1"]) is None
    assert crash_looping([], ["hello/v1"]) is None
