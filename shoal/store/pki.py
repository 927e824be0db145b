"""The mesh PKI's state in Redis: trust bundle, rotation epoch and phase, CSRs, join tokens.

Keys (under the cluster prefix, see :class:`~shoal.store.keys.Keys`):

- ``pki:bundle`` — every root currently trusted, PEM; ``pki:epoch`` — a counter: leaves issued
  before the current epoch are renewed at once; ``pki:rotation`` — a hash, the root rotation
  asked for or under way.
- ``pki:csr`` — a stream of certificate requests read by a consumer group, so a request made
  while no controller leads is signed when one does; each answer goes to the requester's own
  reply list (``BLPOP``), kept :data:`REPLY_TTL` seconds.
- ``pki:tokens`` (token id → digest, expiry, uses) and ``pki:admitted`` (requester → when).

Private keys never come here: only certificates, CSRs and digests.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from shoal.errors import StoreError
from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys

GROUP = "signers"
REPLY_TTL = 60  # seconds a signed certificate waits in its reply list

# Spend one use of a join token and admit the requester, atomically; the answer says why not.
_SPEND = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 'unknown token' end
local t = cjson.decode(raw)
if t['digest'] ~= ARGV[2] then return 'wrong secret' end
if tonumber(t['expires']) < tonumber(ARGV[3]) then return 'token expired' end
if tonumber(t['uses']) < 1 then return 'token used up' end
t['uses'] = tonumber(t['uses']) - 1
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(t))
redis.call('HSET', KEYS[2], ARGV[4], ARGV[3])
return 'ok'
"""


class PKIStore:
    """Typed access to the PKI's keys of one cluster."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._spend = redis.register_script(_SPEND)

    # -- bundle and epoch

    async def publish_bundle(self, pem: bytes) -> None:
        """Make ``pem`` (the roots, concatenated) the trusted bundle."""
        async with translated("publishing the trust bundle"):
            await self.redis.set(self.keys.bundle, pem.decode())

    async def bundle(self) -> bytes | None:
        """The trusted bundle, or None before any CA published one."""
        async with translated("reading the trust bundle"):
            raw = await self.redis.get(self.keys.bundle)
        return None if raw is None else str(raw).encode()

    async def bundle_and_epoch(self) -> tuple[bytes | None, int]:
        """The bundle (None before any) and the rotation epoch, read together."""
        async with translated("reading the trust bundle"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(self.keys.bundle)
                pipe.get(self.keys.epoch)
                raw_bundle, raw_epoch = await pipe.execute()
        return (None if raw_bundle is None else str(raw_bundle).encode()), int(raw_epoch or 0)

    async def epoch(self) -> int:
        """The rotation epoch (0 before any)."""
        async with translated("reading the rotation epoch"):
            return int(await self.redis.get(self.keys.epoch) or 0)

    async def raise_epoch(self) -> int:
        """Raise the epoch, so every leaf issued before is renewed; the new epoch."""
        async with translated("raising the rotation epoch"):
            return int(await self.redis.incr(self.keys.epoch))

    # -- root rotation

    async def rotation(self) -> dict[str, str]:
        """The rotation hash as it is (empty when no rotation was ever asked for)."""
        async with translated("reading the rotation state"):
            state: dict[str, str] = await self.redis.hgetall(self.keys.rotation)  # type: ignore[assignment]
        return state

    async def update_rotation(self, fields: dict[str, str]) -> None:
        """Set ``fields`` of the rotation hash."""
        mapping: dict[Any, Any] = dict(fields)  # redis-py's stubs want a wider key type
        async with translated("recording the rotation state"):
            await self.redis.hset(self.keys.rotation, mapping=mapping)

    async def request_rotation(self, asked: str) -> str | None:
        """Start a new rotation in phase ``requested``; the phase under way instead, if any
        (then nothing is changed)."""
        async with translated("asking for a root rotation"):
            phase = await self.redis.hget(self.keys.rotation, "phase")
            if phase not in (None, "done"):
                return str(phase)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.rotation)
                pipe.hset(self.keys.rotation, mapping={"phase": "requested", "asked": asked})
                await pipe.execute()
        return None

    # -- certificate requests

    async def ensure_group(self) -> None:
        """Create the CSR stream's consumer group if it does not exist."""
        try:
            async with translated("creating the CSR group"):
                await self.redis.xgroup_create(self.keys.csr, GROUP, id="0", mkstream=True)
        except StoreError as e:
            if "BUSYGROUP" not in str(e):  # Redis's answer when the group exists already
                raise

    async def pending_requests(
        self, consumer: str, *, block_ms: int = 0
    ) -> list[tuple[str, dict[str, str]]]:
        """Up to 100 requests not yet given to a consumer (blocking up to ``block_ms``)."""
        async with translated("reading certificate requests"):
            reply = await self.redis.xreadgroup(
                GROUP, consumer, {self.keys.csr: ">"}, count=100, block=block_ms or None
            )
        # decode_responses=True: ids and fields are str (redis-py's stubs cannot say so)
        entries: list[tuple[str, dict[str, str]]] = reply[0][1] if reply else []  # type: ignore[index,assignment]
        return entries

    async def answer(self, entry_id: str, reply: str, body: dict[str, str]) -> None:
        """Put ``body`` in the requester's reply list and acknowledge the request."""
        async with translated("answering a certificate request"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(reply, json.dumps(body))
                pipe.expire(reply, REPLY_TTL)
                await pipe.execute()
            await self.redis.xack(self.keys.csr, GROUP, entry_id)

    async def acknowledge(self, entry_id: str) -> None:
        """Acknowledge a request that cannot be answered (it names no reply list)."""
        async with translated("acknowledging a certificate request"):
            await self.redis.xack(self.keys.csr, GROUP, entry_id)

    async def request(self, fields: dict[str, str], timeout: float) -> dict[str, str] | None:
        """Submit a request (``fields`` without its reply list) and wait up to ``timeout`` s
        for the answer; None when none came."""
        reply = f"{self.keys.prefix}pki:reply:{uuid.uuid4().hex}"
        entry: dict[Any, Any] = {**fields, "reply": reply}  # redis-py's stubs want wider types
        async with translated("requesting a certificate"):
            await self.redis.xadd(self.keys.csr, entry)
        async with translated("waiting for a certificate"):
            answer = await self.redis.blpop([reply], timeout=timeout)
        return None if answer is None else dict(json.loads(answer[1]))

    # -- join tokens

    async def store_token(self, token_id: str, digest: str, expires: float, uses: int) -> None:
        """Keep a token's digest, expiry and number of uses."""
        record = {"digest": digest, "expires": expires, "uses": uses}
        async with translated("storing a join token"):
            await self.redis.hset(self.keys.tokens, token_id, json.dumps(record))

    async def token_digest(self, token_id: str) -> str | None:
        """The digest of a token's secret (None: no such token)."""
        async with translated("reading a join token"):
            raw = await self.redis.hget(self.keys.tokens, token_id)
        return None if raw is None else str(json.loads(raw)["digest"])

    async def admitted(self, requester: str) -> bool:
        """Whether ``requester`` was admitted before."""
        async with translated("reading admissions"):
            return bool(await self.redis.hexists(self.keys.admitted, requester))

    async def spend_token(self, token_id: str, digest: str, now: float, requester: str) -> str:
        """Spend one use of the token and admit ``requester``: ``ok``, or why not."""
        async with translated("spending a join token"):
            answer = await self._spend(
                keys=[self.keys.tokens, self.keys.admitted],
                args=[token_id, digest, str(now), requester],
            )
        return str(answer)
