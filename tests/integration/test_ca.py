"""The mesh CA over real Redis: key on disk, bundle published, CSRs signed through a stream."""

from __future__ import annotations

import asyncio
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.errors import UserError
from shoal.identity.pki import JoinRefused, PKIError, cert_from_pem, spiffe_id_of
from shoal.identity.spiffe import node_id, service_id
from shoal.mesh.credentials import IdentityRequester
from shoal.platform.ca.signer import CAFiles, Signer, bundle_of
from shoal.platform.ca.tokens import JoinTokens
from shoal.platform.control.controller import Controller
from shoal.platform.node import run_node
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from shoal.store.pki import PKIStore
from tests.support.wait import eventually

NOW = datetime.now(UTC)


def test_ca_key_stays_on_disk_with_mode_0600(tmp_path: Path) -> None:
    """The CA is created once, its key file is private, and a restart loads the same root."""
    files = CAFiles(tmp_path / "ca")
    first = files.load_or_create("shoal.test", NOW)
    assert stat.S_IMODE((tmp_path / "ca" / "root.key").stat().st_mode) == 0o600
    again = files.load_or_create("shoal.test", NOW)
    assert again.cert == first.cert


async def test_csr_is_signed_for_an_entitled_identity(
    redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    """A node gets a verified certificate for a service it runs; a request for another service
    is refused; a request made before the signer started is answered when it starts."""
    ca = CAFiles(tmp_path / "ca").load_or_create("shoal.test", NOW)
    store = PKIStore(redis, keys)
    await store.publish_bundle(bundle_of([ca]))
    assert await store.bundle() is not None
    hello = str(service_id("shoal.test", "hello"))
    world = str(service_id("shoal.test", "world"))
    signer = Signer(store, ca, entitled=lambda node, identity: identity == hello)
    await store.ensure_group()
    await store.ensure_group()  # idempotent
    requester = IdentityRequester(store, "node-1")
    pending = asyncio.ensure_future(requester.issue(hello, NOW, timeout=5))
    await eventually(  # the request is on the stream before anyone reads it
        lambda: redis.xlen(f"{keys.prefix}pki:csr"), "the CSR on the stream", timeout=5
    )
    assert await signer.sign_pending(NOW, block_ms=2000) == 1
    issued = await pending
    assert str(spiffe_id_of(cert_from_pem(issued.cert_pem))) == hello
    refused = asyncio.ensure_future(requester.issue(world, NOW, timeout=5))
    await signer.sign_pending(NOW, block_ms=2000)
    with pytest.raises(PKIError, match="refused"):
        await refused


async def admitting_ca(
    redis: Redis, keys: Keys, tmp_path: Path
) -> tuple[PKIStore, JoinTokens, Signer]:
    """A CA whose signer admits requesters by join token (and entitles them to anything)."""
    ca = CAFiles(tmp_path / "ca").load_or_create("shoal.test", NOW)
    store = PKIStore(redis, keys)
    await store.publish_bundle(bundle_of([ca]))
    tokens = JoinTokens(store)
    signer = Signer(store, ca, entitled=lambda _r, _i: True, admit=tokens.admit)
    await store.ensure_group()
    return store, tokens, signer


async def test_join_token_admits_once_and_only_what_it_may(
    redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    """A node without a join token gets no certificate; with one it is admitted and later
    renews without it; a used-up, expired, wrong or malformed token admits nobody."""
    store, tokens, signer = await admitting_ca(redis, keys, tmp_path)

    async def issue(node: str, token: str | None) -> str:
        requester = IdentityRequester(store, f"node/{node}", token)
        pending = asyncio.ensure_future(
            requester.issue(str(node_id("shoal.test", node)), NOW, timeout=5)
        )
        await signer.sign_pending(NOW, block_ms=2000)
        try:
            await pending
        except PKIError as e:
            return f"{type(e).__name__}: {e}"
        return "issued"

    assert "JoinRefused: " in await issue("n1", None)  # the requester stops asking (exit 2)
    assert "not admitted" in await issue("n1", None)
    token = await tokens.create(uses=1)
    assert await issue("n1", token) == "issued"
    assert await issue("n1", None) == "issued"  # admitted: renewals need no token
    assert "JoinRefused: " in await issue("n2", token)
    assert "used up" in await issue("n2", token)
    assert "JoinRefused: " in await issue("n2", token.split(".")[0] + ".nope")
    assert "wrong secret" in await issue("n2", token.split(".")[0] + ".nope")
    with pytest.raises(UserError, match="malformed join token"):
        await issue("n2", "nope")
    expired = await tokens.create(ttl=1, now=time.time() - 10)
    assert "expired" in await issue("n2", expired)
    stored = str(await redis.hget(keys.tokens, token.split(".")[0]))
    assert token.split(".")[1] not in stored  # only a digest of the secret is kept


async def test_a_join_token_secret_never_enters_the_store_and_a_proof_admits_nothing_else(
    redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    """Requests carry a proof bound to requester, identity and CSR: the stream (and so the
    AOF) never holds the secret; a proof copied off the stream admits no other requester; a
    request carrying the token itself (an older Shoal) is refused with what to do."""
    store, tokens, signer = await admitting_ca(redis, keys, tmp_path)
    token = await tokens.create(uses=3)
    requester = IdentityRequester(store, "node/n1", token)
    pending = asyncio.ensure_future(requester.issue(str(node_id("shoal.test", "n1")), NOW))
    await signer.sign_pending(NOW, block_ms=2000)
    await pending
    entries = await redis.xrange(keys.csr)
    assert entries and all(token.split(".")[1] not in str(fields) for _, fields in entries)
    sent = entries[0][1]
    assert set(sent) >= {"token_id", "proof"} and "token" not in sent

    copied = {**sent, "requester": "node/thief"}  # the proof, replayed by another requester
    assert await tokens.admit(copied) == "join token refused: wrong secret"
    old_style = {"requester": "node/old", "identity": "x", "csr": "y", "token": token}
    assert "upgrade Shoal on its host" in str(await tokens.admit(old_style))
    assert not await tokens.admitted("node/thief") and not await tokens.admitted("node/old")


async def test_a_node_whose_join_token_is_refused_stops_with_exit_code_2(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A node never admitted does not ask again every second for ever: the CA's refusal ends
    it (the CLI prints it as one line and exits 2)."""
    stop = asyncio.Event()
    controller = asyncio.create_task(
        Controller(redis, redis_url, keys, state_dir=tmp_path, trust_domain="shoal.test").run(stop)
    )
    try:
        async with asyncio.timeout(20):
            with pytest.raises(JoinRefused, match="join token refused: unknown token") as raised:
                await run_node(
                    redis,
                    redis_url,
                    keys,
                    node_id="intruder",
                    state_dir=tmp_path,
                    stop=asyncio.Event(),
                    trust_domain="shoal.test",
                    join_token="0000.not-a-token",
                    mesh_port=free_port(),
                    instance_uids=None,
                )
        assert raised.value.exit_code == 2
    finally:
        stop.set()
        await controller
