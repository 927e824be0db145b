"""A route's actions besides choosing a destination, through a real gateway to real backends:
header operations on the request and the response (Istio's ``headers``, on the route and on a
destination), mirroring (``mirror``, ``mirrorPercentage``) and the answers a route gives itself
(``redirect``, ``directResponse``)."""

from __future__ import annotations

import aiohttp

from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from tests.support.backends import echo_backend
from tests.support.gateway import Gateway, get
from tests.support.wait import eventually

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /mirrored}}]
    route: [{destination: {host: echo}}]
    mirror: {host: shadow}
  - match: [{uri: {prefix: /never}}]
    route: [{destination: {host: echo}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 0}
  - match: [{uri: {prefix: /dead}}]
    route: [{destination: {host: echo}}]
    mirror: {host: gone}
  - match: [{uri: {prefix: /api}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}, {regex: "https://[a-z]+[.]example[.]org"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-backend]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: echo}}]
  - match: [{uri: {prefix: /moved}}]
    redirect: {uri: /new, authority: new.example.com, redirectCode: 308}
  - match: [{uri: {prefix: /secure}}]
    redirect: {scheme: https}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - headers:
      request:
        set: {x-set: route, x-route-only: here}
        add: {x-add: two}
        remove: [x-drop]
      response:
        set: {x-backend: rewritten}
        add: {x-route: echo}
        remove: [content-type]
    route:
    - destination: {host: echo}
      headers: {request: {set: {x-set: destination}}}
"""


def nowhere() -> Endpoint:
    """A ready instance of ``gone`` that nothing answers for (a closed port)."""
    return Endpoint(
        id="gone-1",
        service="gone",
        revision="v1",
        node="test",
        address="127.0.0.1",
        port=free_port(),
        labels=(("app", "gone"), ("version", "v1")),
        state="ready",
    )


async def test_header_operations_on_request_and_response(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """The upstream gets the route's set/add/remove (a destination's set wins over the
    route's); the client gets the response's."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        status, headers, _ = await get(gateway, "/", **{"x-drop": "1", "x-set": "client"})
        assert status == 200
        seen = one.seen[-1]["headers"]
        assert isinstance(seen, dict)
        sent = (seen["x-set"], seen["x-route-only"], seen["x-add"])
        assert sent == ("destination", "here", "two")
        assert "x-drop" not in seen
        assert (headers["x-backend"], headers["x-route"]) == ("rewritten", "echo")
        assert "content-type" not in {name.lower() for name in headers}


async def test_mirror_copies_requests_and_never_touches_the_original(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """A mirrored request (its body too) reaches the mirror with ``-shadow`` on its Host, and
    the client gets the original's answer; ``mirrorPercentage: 0`` copies none; a mirror that
    cannot be reached leaves the original answering 200."""
    async with echo_backend("one") as one, echo_backend("two") as two:
        await Registry(redis, keys).put_instances(
            [one.endpoint("echo", "v1"), two.endpoint("shadow", "v1"), nowhere()], ttl=60
        )
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        async with aiohttp.ClientSession() as s:
            async with s.post(
                gateway.url + "/mirrored", data=b"hello", headers={"Host": "echo"}
            ) as r:
                assert (r.status, r.headers["x-backend"]) == (200, "one")
        copy = await eventually(
            lambda: [r for r in two.seen if r["path"] == "/mirrored"],
            "the mirror to get its copy",
            until=bool,
        )
        headers = copy[0]["headers"]
        assert isinstance(headers, dict) and headers["host"] == "echo-shadow"
        assert (copy[0]["method"], copy[0]["body_len"]) == ("POST", 5)
        for _ in range(10):
            assert (await get(gateway, "/never"))[0] == 200
            assert (await get(gateway, "/dead"))[0] == 200
        await get(gateway, "/mirrored/last")  # copies are sent in order: once this one is in,
        await eventually(  # a /never copy would be in too
            lambda: [r for r in two.seen if r["path"] == "/mirrored/last"],
            "the last copy",
            until=bool,
        )
        assert not [r for r in two.seen if r["path"] == "/never"]
        assert len([r for r in one.seen if r["path"] == "/dead"]) == 10


async def test_redirect_and_direct_response_never_reach_an_instance(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """A redirect rule answers with its code and a Location keeping what it does not replace
    (the query; the port unless the scheme changes); a directResponse rule with its status and
    body. Neither reaches the backend."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        async with aiohttp.ClientSession() as s:

            async def answer(path: str, host: str = "echo") -> tuple[int, str, str]:
                async with s.get(
                    gateway.url + path, headers={"Host": host}, allow_redirects=False
                ) as r:
                    return r.status, r.headers.get("location", ""), await r.text()

            assert (await answer("/moved/x?q=1%202"))[:2] == (
                308,
                "http://new.example.com/new?q=1%202",
            )
            assert (await answer("/secure/page", host="echo:8080"))[:2] == (
                301,
                "https://echo/secure/page",
            )
            assert await answer("/teapot") == (418, "", "short and stout")
        assert one.seen == []


async def test_cors_policy(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """An allowed origin's preflight is answered by the gateway (never forwarded) and its
    requests' answers carry the CORS headers; another origin's requests and preflights are
    forwarded untouched (the browser then refuses the answer)."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        async with aiohttp.ClientSession() as s:

            async def call(method: str, origin: str, **extra: str) -> tuple[int, dict[str, str]]:
                headers = {"Host": "echo", "Origin": origin, **extra}
                async with s.request(method, gateway.url + "/api/x", headers=headers) as r:
                    return r.status, {k.lower(): v for k, v in r.headers.items()}

            ask = {"Access-Control-Request-Method": "POST"}
            status, headers = await call("OPTIONS", "https://app.example.com", **ask)
            assert status == 200 and one.seen == []
            assert headers["access-control-allow-origin"] == "https://app.example.com"
            assert headers["access-control-allow-methods"] == "GET,POST"
            assert headers["access-control-allow-headers"] == "x-token"
            assert headers["access-control-max-age"] == "86400"
            assert headers["access-control-allow-credentials"] == "true"
            status, headers = await call("GET", "https://shop.example.org")
            assert status == 200
            assert headers["access-control-allow-origin"] == "https://shop.example.org"
            assert headers["access-control-expose-headers"] == "x-backend"
            status, headers = await call("GET", "https://evil.example.net")
            assert status == 200 and "access-control-allow-origin" not in headers
            await call("OPTIONS", "https://evil.example.net", **ask)
        assert [r["method"] for r in one.seen] == ["GET", "GET", "OPTIONS"]
