"""Join tokens: a node (or gateway) gets its first certificate only by presenting one.

``shoal token create`` makes a token ``<id>.<secret>``; Redis keeps only the secret's SHA-256,
an expiry and a use count (``pki:tokens``). The secret never enters Redis: a component's first
certificate request carries the token's id and a *proof* of the secret, an HMAC keyed by its
SHA-256 over the requester, the identity and the CSR (so a proof read off the request stream
admits nothing else: not another requester, not another key). The signer checks it against the
stored digest and admits the requester (``pki:admitted``: requester → when), spending one use.
An admitted requester renews without a token. A requester that was never admitted gets no
certificate, so its router never listens, its node never registers and no traffic reaches it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

from shoal.errors import UserError
from shoal.identity.join_token import digest, proven
from shoal.store.pki import PKIStore

DEFAULT_TTL = 3600.0


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
        await self.store.store_token(token_id, digest(secret), expires, uses)
        return f"{token_id}.{secret}"

    async def admitted(self, requester: str) -> bool:
        """Whether ``requester`` was admitted before."""
        return await self.store.admitted(requester)

    async def admit(self, request: Mapping[str, str], now: float | None = None) -> str | None:
        """Admit the requester of ``request`` (a certificate request's fields) if it was
        admitted before or carries a valid proof of a token (spending a use); None when
        admitted, else why not."""
        requester = request.get("requester", "")
        if await self.admitted(requester):
            return None
        if "token" in request:
            return (
                f"{requester} sent its join token itself rather than a proof of it "
                "(an older Shoal): upgrade Shoal on its host; the token still works"
            )
        token_id = request.get("token_id")
        if not token_id or not request.get("proof"):
            return f"{requester} is not admitted: start it with a join token (shoal token create)"
        stored = await self.store.token_digest(token_id)
        if stored is None:
            return "join token refused: unknown token"
        if not proven(stored, request):
            return "join token refused: wrong secret"
        when = time.time() if now is None else now
        answer = await self.store.spend_token(token_id, stored, when, requester)
        return None if answer == "ok" else f"join token refused: {answer}"
