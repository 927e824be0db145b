"""The mesh certificates one process holds, kept fresh without a restart.

A :class:`Credentials` keeps, per identity it holds (``spiffe://<td>/gateway``, ``…/node/<id>``,
``…/svc/<name>``), a private key made here, the certificate the CA signed for it, and TLS
contexts built from them and the trust bundle. Every second it reads the bundle and the rotation
epoch from Redis and renews what :func:`renewal_reason` says is due: at 2/3 of a leaf's life,
when ``shoal certs rotate`` raised the epoch, or when the leaf's root left the bundle. A new
bundle rebuilds the contexts (OpenSSL cannot drop a root from a live context).

Live listeners keep one server context whose SNI callback hands each new handshake the current
context (:meth:`Credentials.server_context`), so a renewal or a new bundle applies to the next
connection and never to one in flight. Clients fetch :meth:`Credentials.client_context` per
request; the upstream pool keys connections by context, so old connections finish as they are.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from shoal.errors import ShoalError
from shoal.identity.certs import ALPN, client_context, server_context, verify_chain
from shoal.identity.issuance import make_csr
from shoal.identity.join_token import proof_fields
from shoal.identity.pki import (
    JoinRefused,
    PKIError,
    cert_from_pem,
    issuer_key_id,
    key_id,
    key_to_pem,
    new_key,
    parse_bundle,
    renew_at,
)
from shoal.identity.spiffe import parse_spiffe
from shoal.mesh.handshake import mesh_sslobject
from shoal.store.connection import Redis, honour_cancellation, wait_at_most
from shoal.store.keys import Keys
from shoal.store.pki import PKIStore

log = logging.getLogger(__name__)

REFRESH_EVERY = 1.0


def utcnow() -> datetime:
    """The wall clock, aware UTC (certificates are dated in it)."""
    return datetime.now(UTC)


def renewal_reason(
    now: datetime,
    cert: x509.Certificate | None,
    issued_epoch: int,
    epoch: int,
    roots: Iterable[str],
) -> str | None:
    """Why the certificate held for an identity must be replaced now, or None.

    ``roots`` are the key ids of the bundle's roots; ``epoch`` is the store's rotation epoch
    and ``issued_epoch`` the one the certificate was issued under.
    """
    if cert is None:
        return "none held"
    if issuer_key_id(cert) not in set(roots):
        return "its root left the bundle"
    if epoch > issued_epoch:
        return "rotation asked"
    if now >= renew_at(cert):
        return "2/3 of its life passed"
    return None


@dataclass(frozen=True, slots=True)
class Issued:
    """A private key and the certificate the CA signed for it."""

    identity: str
    cert_pem: bytes
    key_pem: bytes


class IdentityRequester:
    """Gets certificates for the identities a component holds: key here, CSR over the store."""

    def __init__(self, store: PKIStore, requester: str, join_token: str | None = None) -> None:
        self.store = store
        self.requester = requester
        self.join_token = join_token  # sent with every request; used only until admitted

    async def issue(self, identity: str, now: datetime, *, timeout: float = 4.0) -> Issued:
        """A fresh key and a signed, verified certificate for ``identity``."""
        key = new_key()
        fields = {
            "requester": self.requester,
            "identity": identity,
            "csr": make_csr(key, identity).decode(),
        }
        if self.join_token:  # a proof of it: the token itself never enters the store
            fields |= proof_fields(self.join_token, fields)
        body = await self.store.request(fields, timeout)
        if body is None:
            raise PKIError(
                f"no CA answered the request for {identity} within {timeout:.0f}s "
                "(is a controller running?)"
            )
        if "error" in body:
            error = JoinRefused if body.get("refused") == "admission" else PKIError
            raise error(f"the CA refused {identity}: {body['error']}")
        cert_pem = body["cert"].encode()
        bundle = await self.store.bundle()
        if bundle is None:
            raise PKIError("no trust bundle is published")
        verify_chain(cert_pem, bundle, now)
        return Issued(identity=identity, cert_pem=cert_pem, key_pem=key_to_pem(key))


@dataclass(frozen=True, slots=True)
class _Held:
    issued: Issued
    cert: x509.Certificate
    epoch: int
    client: ssl.SSLContext
    server: ssl.SSLContext


class Credentials:
    """Certificates for the identities this process holds, renewed in the background."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        requester: str,
        *,
        join_token: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = PKIStore(redis, keys)
        self._requester = IdentityRequester(self._store, requester, join_token)
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._listeners: dict[str, ssl.SSLContext] = {}
        self._bundle: bytes | None = None
        self._roots: tuple[str, ...] = ()
        self._epoch = 0
        self._wake = asyncio.Event()

    def want(self, identity: str) -> None:
        """Hold ``identity`` from now on (requested at once by :meth:`run`)."""
        if identity not in self._ready:
            self._ready[identity] = asyncio.Event()
            self._wake.set()

    async def ready(self, identity: str) -> None:
        """Wait until a certificate for ``identity`` is held (asking for one if needed)."""
        self.want(identity)
        await self._ready[identity].wait()

    def client_context(self, identity: str) -> ssl.SSLContext | None:
        """The current client context presenting ``identity``, or None before one is held."""
        held = self._held.get(identity)
        return held.client if held is not None else None

    def server_context(self, identity: str) -> ssl.SSLContext:
        """A context for a listener presenting ``identity``: each handshake gets the current
        certificate and bundle. Call once :meth:`ready` has returned."""
        base = self._listeners.get(identity)
        if base is None:
            base = self._held[identity].server

            def current(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
                sslobj.context = self._held[identity].server

            # Called for every ClientHello, with or without SNI.
            base.sni_callback = current
            # Callers of another trust domain are refused, and refused callers hear why.
            base.sslobject_class = mesh_sslobject(parse_spiffe(identity).trust_domain)
            self._listeners[identity] = base
        return base

    async def run(self) -> None:
        """Keep every wanted identity's certificate fresh, until cancelled."""
        while True:
            try:
                await self.refresh()
            except ShoalError as e:
                if isinstance(e, JoinRefused) and not self._held:
                    raise  # never admitted: no later round will be
                log.warning("mesh certificates not refreshed: %s", e)
            honour_cancellation()
            await wait_at_most(self._wake, REFRESH_EVERY)
            self._wake.clear()

    async def refresh(self) -> None:
        """One round: read the bundle and epoch; rebuild and renew what is due."""
        bundle, self._epoch = await self._store.bundle_and_epoch()
        if bundle is None:
            return  # no CA has published a bundle yet
        if bundle != self._bundle:
            self._bundle = bundle
            self._roots = tuple(key_id(c) for c in parse_bundle(bundle))
            for identity, held in list(self._held.items()):
                self._held[identity] = self._contexts(held.issued, held.epoch)
            log.info("trust bundle now holds roots %s", ", ".join(self._roots))
        for identity in list(self._ready):
            current = self._held.get(identity)
            reason = renewal_reason(
                self._clock(),
                current.cert if current else None,
                current.epoch if current else 0,
                self._epoch,
                self._roots,
            )
            if reason is None:
                continue
            epoch = self._epoch
            issued = await self._requester.issue(identity, self._clock())
            self._held[identity] = self._contexts(issued, epoch)
            self._ready[identity].set()
            log.info("certificate for %s issued (%s)", identity, reason)

    def _contexts(self, issued: Issued, epoch: int) -> _Held:
        assert self._bundle is not None
        return _Held(
            issued=issued,
            cert=cert_from_pem(issued.cert_pem),
            epoch=epoch,
            client=client_context(issued.cert_pem, issued.key_pem, self._bundle),
            server=server_context(issued.cert_pem, issued.key_pem, self._bundle, alpn=ALPN),
        )

    def report(self) -> dict[str, Any]:
        """What ``shoal certs status`` shows of this process: its leaves and trusted roots."""
        return {
            "trusts": list(self._roots),
            "leaves": [
                {
                    "identity": identity,
                    "serial": format(held.cert.serial_number, "x")[:16],
                    "issuer": issuer_key_id(held.cert),
                    "not_after": held.cert.not_valid_after_utc.isoformat(timespec="seconds"),
                    "epoch": held.epoch,
                }
                for identity, held in sorted(self._held.items())
            ],
        }
