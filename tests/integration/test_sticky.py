"""Sticky sessions: a DestinationRule's ``loadBalancer.consistentHash`` through a real gateway to
three real backends of one service."""

from __future__ import annotations

import collections
import contextlib

import aiohttp

from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from tests.support.backends import Backend, echo_backend
from tests.support.gateway import Gateway, get

RULE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http: [{route: [{destination: {host: echo}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy:
    loadBalancer:
      consistentHash:
        %s
"""


async def three(stack: contextlib.AsyncExitStack, redis: Redis, keys: Keys) -> list[Backend]:
    """Three backends registered as instances of ``echo``."""
    backends = [await stack.enter_async_context(echo_backend(f"b{i}")) for i in range(3)]
    await Registry(redis, keys).put_instances([b.endpoint("echo", "v1") for b in backends], ttl=60)
    return backends


async def test_a_generated_cookie_keeps_a_client_on_one_instance(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """With ``httpCookie`` and a ttl, a client without the cookie is given one, and the 100
    requests it then sends with it all reach the same instance."""
    async with contextlib.AsyncExitStack() as stack:
        await three(stack, redis, keys)
        await gateway.client.apply(parse_text(RULE % "httpCookie: {name: session, ttl: 3600s}"))
        await gateway.settle()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            served = collections.Counter()
            for _ in range(100):
                async with s.get(gateway.url + "/", headers={"Host": "echo"}) as r:
                    assert r.status == 200
                    served[r.headers["x-backend"]] += 1
            assert len(served) == 1, served
            assert len([c for c in s.cookie_jar if c.key == "session"]) == 1


async def test_a_header_key_sticks_and_keys_spread(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """With ``httpHeaderName``, each user's requests go to one instance, users spread over
    the instances, and a user stays where it was when another user's instance goes away."""
    async with contextlib.AsyncExitStack() as stack:
        backends = await three(stack, redis, keys)
        await gateway.client.apply(parse_text(RULE % "httpHeaderName: x-user"))
        await gateway.settle()
        home: dict[str, str] = {}
        for user in (f"user-{n}" for n in range(30)):
            seen = {(await get(gateway, "/", **{"x-user": user}))[1]["x-backend"] for _ in range(3)}
            assert len(seen) == 1, (user, seen)
            home[user] = seen.pop()
        assert len(set(home.values())) == 3
        gone = backends[0]
        await Registry(redis, keys).put_instances(
            [b.endpoint("echo", "v1") for b in backends[1:]]
            + [gone.endpoint("echo", "v1", state="unhealthy")],
            ttl=60,
        )
        await gateway.settle()
        for user, backend in home.items():
            if backend != gone.name:
                assert (await get(gateway, "/", **{"x-user": user}))[1]["x-backend"] == backend
