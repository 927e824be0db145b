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
import secrets
import time

from shoal.errors import UserError
from shoal.store.pki import PKIStore

DEFAULT_TTL = 3600.0


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class JoinTokens:
    """Creates join tokens and admits the requesters that present one."""

    def __init__(self, store: PKIStore) -> None:
        self.store = store

    async def create(
        self, *, ttl: float = DEFAULT_TTL, uses: int = 1, now: float | None = None
    ) -> str:
        """A new token, valid ``ttl`` seconds for ``uses`` admissions."""
        if ttl <= 0 or uses < 1:
            raise UserError(
                f"a token needs a positive ttl and at least one use (got {ttl}, {uses})"
            )
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
        expires = (time.time() if now is None else now) + ttl
        await self.store.store_token(token_id, _digest(secret), expires, uses)
        return f"{token_id}.{secret}"

    async def admitted(self, requester: str) -> bool:
        """Whether ``requester`` was admitted before."""
        return await self.store.admitted(requester)

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
        answer = await self.store.spend_token(token_id, _digest(secret), when, requester)
        return None if answer == "ok" else f"join token refused: {answer}"
