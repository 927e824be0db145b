"""mTLS on every hop and authorization, on a real cluster: controller (CA), node, gateway."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from shoal.identity.certs import client_context
from shoal.identity.issuance import CA, make_csr, new_root, sign
from shoal.identity.pki import key_to_pem, new_key
from shoal.identity.spiffe import gateway_id
from shoal.mesh.credentials import IdentityRequester
from shoal.platform.ca.admin import certs_status, issue_local, renew_leaves, rotate_root
from shoal.platform.ca.signer import CAFiles
from shoal.resources.manifest import parse_text
from shoal.store.acks import live_reports
from shoal.store.pki import PKIStore
from tests.support.cluster import EXAMPLE, SERVICES, TRUST_DOMAIN, Cluster, ready
from tests.support.wait import eventually

WORLD_FROM_HELLO_ONLY = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: world-from-hello}}
spec:
  selector: {{matchLabels: {{app: world}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{TRUST_DOMAIN}/svc/hello"]}}}}]
"""

INTRUDER = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: intruder}}
spec:
  app: app:hello
  workdir: {EXAMPLE}
  revision: v1
  health: {{path: /healthz}}
"""


async def mesh_client(cluster: Cluster) -> ssl.SSLContext:
    """A client context with a real mesh certificate (the gateway identity, as a gateway would
    hold it)."""
    identity = str(gateway_id(TRUST_DOMAIN))
    redis, keys = cluster.client.redis, cluster.client.keys
    store = PKIStore(redis, keys)
    issued = await IdentityRequester(store, "gateway").issue(identity, datetime.now(UTC))
    bundle = await store.bundle()
    assert bundle is not None
    return client_context(issued.cert_pem, issued.key_pem, bundle)


def foreign_client(bundle: bytes) -> ssl.SSLContext:
    """A client context whose certificate comes from another CA (same trust domain)."""
    now = datetime.now(UTC)
    other = new_root(TRUST_DOMAIN, now)
    key = new_key()
    cert = sign(
        other,
        make_csr(key, str(gateway_id(TRUST_DOMAIN))),
        allowed=lambda _: True,
        now=now,
        valid_for=timedelta(hours=1),
    )
    return client_context(cert, key_to_pem(key), bundle)


async def call_router(
    cluster: Cluster, instance: str, tls: ssl.SSLContext | None
) -> tuple[int, str, str]:
    """GET / on the node router's inbound listener for ``instance``."""
    scheme = "https" if tls is not None else "http"
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"{scheme}://127.0.0.1:{cluster.mesh_port}/",
            headers={"Host": "hello", "x-shoal-instance": instance},
            ssl=tls if tls is not None else False,
        ) as r:
            return r.status, r.headers.get("x-shoal-cause", ""), await r.text()


@pytest.mark.timeout(60)
async def test_router_inbound_requires_a_mesh_certificate(cluster: Cluster) -> None:
    """The router's mesh port refuses plaintext, a client without a certificate and one from
    another CA; a mesh certificate gets through to the named instance."""
    await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
    hello = ready(await cluster.instances(lambda f: len(ready(f, "hello")) == 2), "hello")[0]
    tls = await mesh_client(cluster)
    assert await call_router(cluster, hello.key, tls) == (200, "", "Hello, World!\n")

    with pytest.raises(aiohttp.ClientError):  # STRICT: closed before any HTTP
        await call_router(cluster, hello.key, None)
    anonymous = ssl.create_default_context()
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    with pytest.raises(aiohttp.ClientError):
        await call_router(cluster, hello.key, anonymous)
    bundle = await PKIStore(cluster.client.redis, cluster.client.keys).bundle()
    assert bundle is not None
    with pytest.raises(aiohttp.ClientError):
        await call_router(cluster, hello.key, foreign_client(bundle))
    # A stale or foreign instance name is refused as not sent, so the caller may retry.
    status, cause, _ = await call_router(cluster, "hello/nope", tls)
    assert (status, cause) == (503, "upstream_connect_error")


def refusal(port: int, tls: ssl.SSLContext) -> str:
    """What a TLS client holding ``tls`` learns when it sends a request to ``port``: the
    alert the server sent, or how the connection ended without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with tls.wrap_socket(raw) as conn:  # TLS 1.3: the client finishes first
                conn.sendall(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
                return f"answered {conn.recv(100)!r}"
        except ssl.SSLError as e:
            return f"alert {e.reason}"
        except OSError as e:
            return f"no alert: {e!r}"


@pytest.mark.timeout(60)
async def test_a_refused_client_hears_why(cluster: Cluster) -> None:
    """A client refused at the handshake gets a TLS alert that names the reason (unknown CA,
    no certificate), not a bare EOF or reset."""
    await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
    await cluster.instances(lambda f: len(ready(f, "hello")) == 2)  # the router listens
    bundle = await PKIStore(cluster.client.redis, cluster.client.keys).bundle()
    assert bundle is not None
    foreign = await asyncio.to_thread(refusal, cluster.mesh_port, foreign_client(bundle))
    assert foreign == "alert TLSV1_ALERT_UNKNOWN_CA", foreign
    anonymous = ssl.create_default_context(cadata=bundle.decode())
    anonymous.check_hostname = False
    got = await asyncio.to_thread(refusal, cluster.mesh_port, anonymous)
    assert got == "alert TLSV13_ALERT_CERTIFICATE_REQUIRED", got


@pytest.mark.timeout(60)
async def test_a_caller_of_another_trust_domain_is_refused(cluster: Cluster, tmp_path: Any) -> None:
    """A certificate chaining to the mesh's root but naming another trust domain (however it
    came to be signed) is refused in the handshake: no HTTP answer at all."""
    await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
    hello = ready(await cluster.instances(lambda f: len(ready(f, "hello")) == 2), "hello")[0]
    mesh = CAFiles(tmp_path / "ca").load_or_create(TRUST_DOMAIN, datetime.now(UTC))
    posing = CA(cert=mesh.cert, key=mesh.key, trust_domain="evil.test")  # the mesh's own key
    key, now = new_key(), datetime.now(UTC)
    cert = sign(
        posing, make_csr(key, "spiffe://evil.test/gateway"), allowed=lambda _: True, now=now,
        valid_for=timedelta(hours=1),
    )  # fmt: skip
    bundle = await PKIStore(cluster.client.redis, cluster.client.keys).bundle()
    assert bundle is not None
    foreign = client_context(cert, key_to_pem(key), bundle)
    with pytest.raises(aiohttp.ClientError):
        await call_router(cluster, hello.key, foreign)
    tls = await mesh_client(cluster)
    assert await call_router(cluster, hello.key, tls) == (200, "", "Hello, World!\n")


@pytest.mark.timeout(60)
async def test_plain_curl_reaches_a_router_with_shoal_certs_issue_files(
    cluster: Cluster, tmp_path: Any
) -> None:
    """With the files `shoal certs issue` writes, curl verifies the router as node n1 (its
    certificate names n1.node.<td> beside its SPIFFE ID) and gets through to the instance."""
    await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
    hello = ready(await cluster.instances(lambda f: len(ready(f, "hello")) == 2), "hello")[0]
    cert, key, bundle = issue_local(
        CAFiles(tmp_path / "ca"), TRUST_DOMAIN, str(gateway_id(TRUST_DOMAIN)),
        timedelta(hours=1), tmp_path / "client",
    )  # fmt: skip
    host = f"n1.node.{TRUST_DOMAIN}"
    curl = await asyncio.create_subprocess_exec(
        *("curl", "-sS", "--resolve", f"{host}:{cluster.mesh_port}:127.0.0.1"),
        *("--cacert", str(bundle), "--cert", str(cert), "--key", str(key)),
        *("-H", "Host: hello", "-H", f"x-shoal-instance: {hello.key}"),
        f"https://{host}:{cluster.mesh_port}/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await curl.communicate()
    assert (curl.returncode, out) == (0, b"Hello, World!\n"), err


@pytest.mark.timeout(90)
async def test_every_hop_is_mtls_and_reported(cluster: Cluster) -> None:
    """Gateway → hello and hello → world go through routers over mTLS; every component reports
    the identities it holds, all issued by the one root it trusts."""
    hello, world = SERVICES.split("---")[:2]
    await cluster.client.apply(parse_text(hello + "---" + world))
    await cluster.instances(lambda f: len(ready(f, "hello")) == 2 and len(ready(f, "world")) == 1)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{cluster.gateway_url}/chain", headers={"Host": "hello"}) as r:
            assert (r.status, await r.text()) == (200, "World, Hello!\n")
    td = f"spiffe://{TRUST_DOMAIN}"
    wanted = {f"{td}/gateway", f"{td}/node/n1", f"{td}/svc/hello", f"{td}/svc/world"}

    async def reported() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """The live reports, and the identities they hold with their issuers."""
        reports = await live_reports(cluster.client.redis, cluster.client.keys)
        held = {
            leaf["identity"]: leaf["issuer"]
            for report in reports.values()
            for leaf in report.get("certs", {}).get("leaves", [])
        }
        return reports, held

    reports, held = await eventually(  # reports are written every second
        reported,
        f"reports holding {sorted(wanted)}",
        until=lambda got: wanted <= set(got[1]),
        timeout=5,
        interval=0.1,
        show=lambda got: str(sorted(got[1])),
    )
    trusted = {r for report in reports.values() for r in report["certs"]["trusts"]}
    assert len(trusted) == 1 and set(held.values()) == trusted


@pytest.mark.timeout(90)
async def test_authorization_policy_allows_only_hello_to_call_world(cluster: Cluster) -> None:
    """With world open to hello only: hello → world works; intruder → world and the gateway →
    world get 403 denied, and world's instance never sees them."""
    hello, world = SERVICES.split("---")[:2]
    await cluster.client.apply(parse_text("---".join((hello, world, INTRUDER))))
    await cluster.instances(
        lambda f: all(len(ready(f, s)) >= 1 for s in ("hello", "world", "intruder"))
    )
    applied = await cluster.client.apply(parse_text(WORLD_FROM_HELLO_ONLY))
    assert await cluster.client.wait_applied(applied.revision, timeout=10) == {}
    async with aiohttp.ClientSession() as s:

        async def get(host: str, path: str) -> tuple[int, str, str]:
            async with s.get(f"{cluster.gateway_url}{path}", headers={"Host": host}) as r:
                return r.status, r.headers.get("x-shoal-cause", ""), await r.text()

        assert await get("hello", "/chain") == (200, "", "World, Hello!\n")
        status, _, body = await get("intruder", "/chain")  # its app relays world's answer
        assert (status, body) == (403, "denied\n")  # the policy is named to the operator only
        status, cause, body = await get("world", "/")
        assert (status, cause, body) == (403, "denied", "denied\n")
        async with s.get(cluster.gateway_url, headers={"Host": "world"}) as r:
            assert r.headers["server"] == "shoal"  # not the router's library and version
    await eventually(  # the operator sees who refused: the node's report counts by policy
        lambda: live_reports(cluster.client.redis, cluster.client.keys),
        "the router's report counting the three denials",
        until=lambda reports: reports.get("router/n1", {}).get("denied") == {"world ": 3},
        timeout=5,
    )


@pytest.mark.timeout(120)
async def test_root_rotation_under_traffic_drops_nothing(cluster: Cluster) -> None:
    """``certs rotate --root`` while requests flow gateway → hello → world: none fails; at the
    end the bundle holds only the new root and every leaf chains to it."""
    hello, world = SERVICES.split("---")[:2]
    await cluster.client.apply(parse_text(hello + "---" + world))
    await cluster.instances(lambda f: len(ready(f, "hello")) == 2 and len(ready(f, "world")) == 1)
    redis, keys = cluster.client.redis, cluster.client.keys
    before = await certs_status(redis, keys)
    assert len(before.roots) == 1
    outcomes: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                try:
                    async with s.get(
                        f"{cluster.gateway_url}/chain", headers={"Host": "hello"}
                    ) as r:
                        await r.read()
                        outcomes.append(r.status)
                except aiohttp.ClientError:
                    outcomes.append(0)
                await asyncio.sleep(0.01)

    senders = [asyncio.ensure_future(traffic()) for _ in range(2)]
    try:
        steps: list[str] = []
        state = await rotate_root(redis, keys, 60, steps.append)
    finally:
        stop.set()
        await asyncio.gather(*senders)
    assert state["phase"] == "done"
    assert len(outcomes) > 100 and set(outcomes) == {200}, [o for o in outcomes if o != 200]
    after = await certs_status(redis, keys)
    (new,) = after.roots
    assert new.id != before.roots[0].id and new.id == state["new"]
    assert after.components and all(after.trusts_bundle(c) for c in after.components)
    issuers = {leaf["issuer"] for c in after.components.values() for leaf in c["leaves"]}
    assert issuers == {new.id}
    assert any("re-issued" in step for step in steps)


@pytest.mark.timeout(60)
async def test_leaf_rotation_renews_every_certificate(cluster: Cluster) -> None:
    """``certs rotate`` renews every component's leaves (new serials, same root)."""
    await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
    await cluster.instances(lambda f: len(ready(f, "hello")) == 2)
    redis, keys = cluster.client.redis, cluster.client.keys
    before = await eventually(
        lambda: certs_status(redis, keys),
        "two components reporting their certificates",
        until=lambda status: len(status.components) >= 2,
        timeout=10,
        interval=0.1,
    )
    epoch = await renew_leaves(redis, keys, 30, lambda _: None)
    after = await certs_status(redis, keys)
    serials = {
        c: {leaf["serial"] for leaf in held["leaves"]} for c, held in before.components.items()
    }
    for component, held in after.components.items():
        assert all(leaf["epoch"] >= epoch for leaf in held["leaves"])
        assert not serials.get(component, set()) & {leaf["serial"] for leaf in held["leaves"]}
    assert after.roots == before.roots


@pytest.mark.timeout(60)
async def test_permissive_mode_takes_plaintext_for_its_workloads_only(cluster: Cluster) -> None:
    """A PeerAuthentication PERMISSIVE for hello opens the mesh port to plaintext for hello;
    world stays STRICT (403 mtls_required); deleting the policy closes plaintext again."""
    hello, world = SERVICES.split("---")[:2]
    await cluster.client.apply(parse_text(hello + "---" + world))
    found = await cluster.instances(
        lambda f: len(ready(f, "hello")) == 2 and len(ready(f, "world")) == 1
    )
    policy = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: hello-permissive}
spec:
  selector: {matchLabels: {app: hello}}
  mtls: {mode: PERMISSIVE}
"""
    applied = await cluster.client.apply(parse_text(policy))
    assert await cluster.client.wait_applied(applied.revision, timeout=10) == {}
    hello_key, world_key = ready(found, "hello")[0].key, ready(found, "world")[0].key
    assert await call_router(cluster, hello_key, None) == (200, "", "Hello, World!\n")
    status, cause, _ = await call_router(cluster, world_key, None)
    assert (status, cause) == (403, "mtls_required")
    assert (await call_router(cluster, world_key, await mesh_client(cluster)))[0] == 200
    await cluster.client.delete("peerauthentication", "hello-permissive")
    assert await cluster.client.wait_applied(await cluster.client.config.revision(), 10) == {}
    with pytest.raises(aiohttp.ClientError):
        await call_router(cluster, hello_key, None)


@pytest.mark.timeout(60)
async def test_destination_rule_tls_disable_sends_plaintext(cluster: Cluster) -> None:
    """``tls.mode: DISABLE`` makes the gateway call hello's node router in plaintext: refused
    while hello is STRICT (the connection closes: 503/502), served once a PeerAuthentication
    lets hello take plaintext; ``ISTIO_MUTUAL`` is mTLS again, whatever that policy says."""
    await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
    await cluster.instances(lambda f: len(ready(f, "hello")) == 2)

    async def status_with(manifest: str) -> tuple[int, str]:
        applied = await cluster.client.apply(parse_text(manifest))
        assert await cluster.client.wait_applied(applied.revision, timeout=10) == {}
        async with aiohttp.ClientSession() as s:
            async with s.get(cluster.gateway_url + "/", headers={"Host": "hello"}) as r:
                return r.status, r.headers.get("x-shoal-cause", "")

    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  trafficPolicy: {tls: {mode: %s}}
"""
    status, cause = await status_with(rule % "DISABLE")
    assert status in (502, 503) and cause.startswith("upstream_"), (status, cause)
    permissive = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: hello-permissive}
spec:
  selector: {matchLabels: {app: hello}}
  mtls: {mode: PERMISSIVE}
"""
    assert await status_with(permissive) == (200, "")
    assert await status_with(rule % "ISTIO_MUTUAL") == (200, "")
