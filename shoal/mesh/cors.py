"""CORS as Istio's ``corsPolicy`` (Envoy's CORS filter), pure.

For a request with an ``Origin`` the policy allows: a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered by the proxy itself, never forwarded, with the
allowed methods, headers and max age; any other request is forwarded and its answer gets
``Access-Control-Allow-Origin`` (the origin itself), ``-Allow-Credentials`` and
``-Expose-Headers``. A request from an origin the policy does not allow is forwarded untouched
(Istio's default for unmatched preflights), so the browser refuses the answer itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.http.headers import HeaderEdit
from shoal.mesh.matching import Check
from shoal.resources.model import CorsPolicy

__all__ = ["allows", "answer_edit", "preflight_headers"]


def allows(origins: Sequence[Check], origin: str) -> bool:
    """Whether ``origin`` is one the policy lets read answers (``origins``: its
    ``allowOrigins``, compiled with the routing snapshot)."""
    return any(check(origin) for check in origins)


def preflight_headers(policy: CorsPolicy, origin: str) -> list[tuple[bytes, bytes]]:
    """The proxy's own answer to an allowed origin's preflight."""
    headers = [(b"access-control-allow-origin", origin.encode("latin-1"))]
    if policy.allow_methods:
        headers.append((b"access-control-allow-methods", ",".join(policy.allow_methods).encode()))
    if policy.allow_headers:
        headers.append((b"access-control-allow-headers", ",".join(policy.allow_headers).encode()))
    if policy.max_age is not None:
        headers.append((b"access-control-max-age", b"%d" % int(policy.max_age)))
    if policy.allow_credentials:
        headers.append((b"access-control-allow-credentials", b"true"))
    return headers


def answer_edit(policy: CorsPolicy, origin: str) -> HeaderEdit:
    """What an allowed origin's forwarded request's answer gets (set over the upstream's)."""
    fields = [(b"access-control-allow-origin", origin.encode("latin-1"))]
    if policy.allow_credentials:
        fields.append((b"access-control-allow-credentials", b"true"))
    if policy.expose_headers:
        fields.append((b"access-control-expose-headers", ",".join(policy.expose_headers).encode()))
    return tuple(fields), (), frozenset()
