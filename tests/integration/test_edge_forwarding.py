"""What the edge forwards, seen from the upstream: hop-by-hop, internal and forwarding headers
replaced or stripped, and paths normalised before routing. Raw HTTP/1.1 requests on a socket,
real hypercorn, real Redis, real upstreams."""

from __future__ import annotations

from shoal.http.headers import UnderscorePolicy
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.integration.test_edge_h1 import edge_gateway, exchange, request, served

# --- headers ---------------------------------------------------------------------------------


async def test_hop_by_hop_and_internal_headers(redis: Redis, redis_url: str, keys: Keys) -> None:
    """Hop-by-hop headers, those Connection names, and Shoal's internal and identity headers do
    not reach the upstream; Connection cannot remove Host, the request id or x-forwarded-*;
    a client's X-Forwarded-*/Forwarded are replaced (trusted_hops = 0)."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        raw = request(
            "/h",
            headers=[
                ("Host", "echo"),
                ("Connection", "keep-alive, x-secret, host, x-request-id, x-forwarded-for"),
                ("Keep-Alive", "timeout=5"),
                ("x-secret", "s"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Upgrade", "foo/1"),
                ("X-Request-Id", "req-1"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
                ("Forwarded", "for=6.6.6.6;proto=https"),
                ("x-shoal-peer", "spiffe://shoal/svc/admin"),
                ("X-Shoal-Cause", "forged"),
                ("x-forwarded-client-cert", "By=spiffe://shoal/svc/admin"),
                ("x-keep", "k"),
            ],
        )
        seen = (await served(edge.port, raw)).json()["headers"]
        assert isinstance(seen, dict)
        for gone in (
            "connection",
            "keep-alive",
            "x-secret",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "upgrade",
            "x-shoal-peer",
            "x-shoal-cause",
            "x-forwarded-client-cert",
        ):
            assert gone not in seen, gone
        assert seen["x-keep"] == "k"
        assert seen["host"] == "echo"
        assert seen["x-request-id"] == "req-1"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "echo"
        assert seen["forwarded"] == "for=127.0.0.1;proto=http;host=echo"


async def test_trusted_hops_keep_the_last_entries(redis: Redis, redis_url: str, keys: Keys) -> None:
    """With trusted_hops=1 the last X-Forwarded-For/Forwarded entry (the trusted proxy's) is kept
    and the peer appended; the client-supplied ones before it are dropped."""
    async with edge_gateway(redis, redis_url, keys, trusted_hops=1) as edge:
        raw = request(
            headers=[
                ("Host", "echo"),
                ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"),
                ("X-Forwarded-Proto", "https"),
                ("Forwarded", 'for=6.6.6.6, for="203.0.113.7";proto=https'),
            ]
        )
        seen = (await served(edge.port, raw)).json()["headers"]
        assert isinstance(seen, dict)
        assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "https"
        assert seen["forwarded"] == (
            'for="203.0.113.7";proto=https, for=127.0.0.1;proto=http;host=echo'
        )


async def test_underscore_names_and_x_real_ip(redis: Redis, redis_url: str, keys: Keys) -> None:
    """By default a header named with an underscore never reaches the upstream (a WSGI app
    would read X_Auth_User as X-Auth-User) and the client's X-Real-IP is replaced; with
    ``reject`` such a request gets 400 and is not forwarded."""
    raw = request(
        headers=[
            ("Host", "echo"),
            ("X_Auth_User", "admin"),
            ("X-Real-IP", "6.6.6.6"),
        ]
    )
    async with edge_gateway(redis, redis_url, keys) as edge:
        seen = (await served(edge.port, raw)).json()["headers"]
        assert isinstance(seen, dict)
        assert "x_auth_user" not in seen and seen["x-real-ip"] == "127.0.0.1"
    async with edge_gateway(
        redis, redis_url, keys, underscore_headers=UnderscorePolicy.REJECT
    ) as edge:
        reply, _ = await exchange(edge.port, raw)
        assert (reply.status, reply.headers["x-shoal-cause"]) == (400, "bad_request")
        assert edge.seen() == []


# --- paths -----------------------------------------------------------------------------------


async def test_paths_are_normalised_before_routing(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """Dot segments (encoded or not), merged slashes and encoded unreserved characters are
    normalised before the route match, and the upstream gets the same form (query untouched)."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        for target, upstream, path in (
            ("/public/%2e%2e/admin/x?q=a%26b", "admin", "/admin/x?q=a%26b"),
            ("/public/../admin", "admin", "/admin"),
            ("//admin//./x/", "admin", "/admin/x/"),
            ("/%61dmin", "admin", "/admin"),
            ("/admin/../../../etc/passwd", "echo", "/etc/passwd"),
            ("/%7euser/a%20b", "echo", "/~user/a%20b"),
        ):
            reply = await served(edge.port, request(target))
            assert (reply.status, reply.headers["x-backend"]) == (200, upstream), target
            assert reply.json()["path"] == path, target


async def test_encoded_slashes_rejected(redis: Redis, redis_url: str, keys: Keys) -> None:
    """%2F, %5C, a raw backslash, %00, bad escapes and a non-path target → 400 bad_path and
    closed; nothing reaches the upstream."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        for target in ("/admin%2F..%2Fx", "/a%5cb", "/a\\..\\admin", "/a%00", "/a%zz", "*"):
            reply, closed = await exchange(edge.port, request(target))
            assert (reply.status, reply.headers["x-shoal-cause"], closed) == (
                400,
                "bad_path",
                True,
            ), target
        assert edge.seen() == []
