"""Join tokens as proofs: what a certificate request carries instead of the token itself.

A token is ``<id>.<secret>``; the store keeps the secret's SHA-256 (:func:`digest`). A request
carries the id and an HMAC keyed by that digest over its requester, identity and CSR
(:func:`proof_fields`), so the secret never enters the store, and a proof read off the request
stream admits nothing else: not another requester, not another key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from shoal.errors import UserError

SIGNED = ("requester", "identity", "csr")  # the request fields a proof covers


def digest(secret: str) -> str:
    """What the store keeps of a token's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str]:
    """A token's id and secret; UserError if it is not ``<id>.<secret>``."""
    token_id, _, secret = token.strip().partition(".")
    if not token_id or not secret:
        raise UserError(
            "malformed join token: expected <id>.<secret>, as 'shoal token create' prints"
        )
    return token_id, secret


def proof(secret_digest: str, request: Mapping[str, str]) -> str:
    """The proof of a secret (by its digest) bound to ``request``'s :data:`SIGNED` fields."""
    message = "\n".join(request.get(name, "") for name in SIGNED)
    return hmac.new(secret_digest.encode(), message.encode(), hashlib.sha256).hexdigest()


def proof_fields(token: str, request: Mapping[str, str]) -> dict[str, str]:
    """What ``request`` carries instead of ``token``: its id and a proof of its secret."""
    token_id, secret = parse(token)
    return {"token_id": token_id, "proof": proof(digest(secret), request)}


def proven(secret_digest: str, request: Mapping[str, str]) -> bool:
    """Whether ``request``'s proof matches the secret whose digest is ``secret_digest``."""
    return hmac.compare_digest(proof(secret_digest, request), request.get("proof", ""))
