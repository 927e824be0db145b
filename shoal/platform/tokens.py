"""Join tokens: a node (or gateway) gets its first certificate only by presenting one.

``shoal token create`` makes a token ``<id>.<secret>``; Redis keeps only the secret's SHA-256,
an expiry and a use count (``pki:tokens``). A component's first certificate request carries the
token; the signer admits the requester (``pki:admitted``: requester → when) once the token checks
out, spending one use. An admitted requester renews without a token. A requester that was never
admitted gets no certificate, so its router never listens, its node never registers and no
traffic reaches it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time

from shoal.errors import UserError
from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys

DEFAULT_TTL = 3600.0

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


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class JoinTokens:
    """Creates join tokens and admits the requesters that present one."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._spend = redis.register_script(_SPEND)

    async def create(
        self, *, ttl: float = DEFAULT_TTL, uses: int = 1, now: float | None = None
    ) -> str:
        """A new token, valid ``ttl`` seconds for ``uses`` admissions."""
        if ttl <= 0 or uses < 1:
            raise UserError(
                f"a token needs a positive ttl and at least one use (got {ttl}, {uses})"
            )
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
        record = {
            "digest": _digest(secret),
            "expires": (time.time() if now is None else now) + ttl,
            "uses": uses,
        }
        async with translated("storing a join token"):
            await self.redis.hset(self.keys.tokens, token_id, json.dumps(record))
        return f"{token_id}.{secret}"

    async def admitted(self, requester: str) -> bool:
        """Whether ``requester`` was admitted before."""
        async with translated("reading admissions"):
            return bool(await self.redis.hexists(self.keys.admitted, requester))

    async def admit(
        self, requester: str, token: str | None, now: float | None = None
    ) -> str | None:
        """Admit ``requester`` if it was admitted before or ``token`` is valid (spending a use);
        None when admitted, else why not."""
        if await self.admitted(requester):
            return None
        if not token:
            return f"{requester} is not admitted: start it with a join token (shoal token create)"
        token_id, _, secret = token.partition(".")
        if not token_id or not secret:
            return "malformed join token"
        when = time.time() if now is None else now
        async with translated("spending a join token"):
            answer = await self._spend(
                keys=[self.keys.tokens, self.keys.admitted],
                args=[token_id, _digest(secret), str(when), requester],
            )
        return None if answer == "ok" else f"join token refused: {answer}"
