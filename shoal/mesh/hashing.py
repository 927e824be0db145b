"""Consistent hashing for Istio's ``loadBalancer.consistentHash`` (sticky sessions), pure.

The key comes from the request (:func:`hash_key`): a header, a cookie, the client's address or a
query parameter. An instance is chosen by rendezvous (highest random weight) hashing
(:func:`rendezvous`): each candidate scores ``hash(key, instance)`` and the highest wins, so a
key stays on its instance for as long as that instance is a candidate, and when instances come
or go only the keys of those move (the property Istio's ring hash and Maglev give, without a
table to size). With a cookie that has a ``ttl``, a request without it gets a fresh random key
and the answer sets the cookie (:func:`set_cookie`), as Envoy's generated cookie does.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from shoal.resources.endpoint import Endpoint
from shoal.resources.model import ConsistentHash

__all__ = ["hash_key", "new_cookie", "rendezvous", "set_cookie"]


def hash_key(
    spec: ConsistentHash, fields: Mapping[str, str], client_ip: str | None, query: str
) -> str | None:
    """The request's key under ``spec``; None when the request does not carry one."""
    if spec.header is not None:
        return fields.get(spec.header)
    if spec.cookie is not None:
        for pair in fields.get("cookie", "").split(";"):
            name, _, value = pair.strip().partition("=")
            if name == spec.cookie:
                return value
        return None
    if spec.query_parameter is not None:
        return next((v for k, v in parse_qsl(query) if k == spec.query_parameter), None)
    return client_ip


def rendezvous(candidates: Sequence[Endpoint], key: str) -> Endpoint:
    """The candidate ``key`` belongs to (raises ``ValueError`` when there is none)."""
    return max(candidates, key=lambda e: hashlib.blake2b(f"{key}\0{e.key}".encode()).digest())


def new_cookie(rng: random.Random) -> str:
    """A fresh key for a client that has none."""
    return f"{rng.getrandbits(64):016x}"


def set_cookie(spec: ConsistentHash, value: str) -> bytes:
    """The ``Set-Cookie`` giving a client its key (``spec`` has a cookie ``ttl``)."""
    assert spec.cookie is not None and spec.cookie_ttl is not None
    parts = [f"{spec.cookie}={value}", f"Max-Age={int(spec.cookie_ttl)}"]
    if spec.cookie_path:
        parts.append(f"Path={spec.cookie_path}")
    return "; ".join([*parts, "HttpOnly"]).encode()
