"""A mesh listener's side of the TLS handshake: refuse a foreign trust domain, and let the peer
hear why it was refused.

Two things the event loop's TLS layer (asyncio's and uvloop's, the same code) does not do:

- **Send the alert.** When OpenSSL refuses the client's certificate (unknown CA, none given) it
  writes a TLS alert to the outgoing buffer and fails the handshake; the loop then closes the
  connection without sending that buffer, so the client sees a bare EOF or reset instead of
  "unknown ca" or "certificate required". :class:`MeshSSLObject` holds the failure back once
  (as "want read"), which makes the loop flush the alert; the next step (the client's next
  bytes, its close, or the handshake deadline) fails the handshake for good.
- **Check the trust domain.** The mesh CA signs only its own trust domain, but a certificate of
  another one chaining to the bundle (a CA shared by two meshes, a mis-signed leaf) must not get
  past the handshake: its peer's SPIFFE ID must be in the listener's trust domain.

``ssl.SSLContext.sslobject_class`` makes every handshake of a context use the class
:func:`mesh_sslobject` returns.
"""

from __future__ import annotations

import ssl

from shoal.identity.spiffe import peer_identity

__all__ = ["mesh_sslobject"]


class MeshSSLObject(ssl.SSLObject):
    """An ``SSLObject`` that sends its refusal and checks its peer's trust domain."""

    trust_domain = ""  # set by the subclass mesh_sslobject makes
    _refusal: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        """One handshake step (see the module's docstring for what is added)."""
        if self._refusal is not None:
            raise self._refusal
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            if not self.server_side:
                raise
            self._refusal = e
            raise ssl.SSLWantReadError("sending the alert first") from e
        peer = peer_identity(self.getpeercert())
        if self.server_side and (peer is None or peer.trust_domain != self.trust_domain):
            self._refusal = ssl.SSLError(
                f"peer {peer or 'without a SPIFFE ID'} is not of trust domain {self.trust_domain}"
            )
            raise self._refusal


def mesh_sslobject(trust_domain: str) -> type[ssl.SSLObject]:
    """The ``sslobject_class`` of a mesh listener in ``trust_domain``."""
    return type("MeshSSLObject", (MeshSSLObject,), {"trust_domain": trust_domain})
