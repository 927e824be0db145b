"""Putting mesh certificates to use: verifying a presented chain, mTLS contexts, key files.

:func:`verify_chain` checks a certificate chain against the trust bundle with cryptography's
``x509.verification`` path builder (client policy) and reads the SPIFFE ID; it is what
``shoal certs status`` and tests use, while live connections are verified by OpenSSL through
the contexts below.

Both sides of every mesh hop present a leaf from :mod:`shoal.identity.issuance` and require one from
the peer (``CERT_REQUIRED``), verified against the trust bundle. Host names are not checked
(``check_hostname=False``): the name that matters is the peer's SPIFFE ID, which the caller
reads with :func:`shoal.identity.spiffe.peer_identity` and matches itself.

Contexts allow TLS 1.2 and 1.3 only; under 1.2 only ECDHE key exchange with AES-GCM or
ChaCha20-Poly1305 (forward secrecy, AEAD); TLS 1.3's suites are all modern. Compression and
renegotiation are off. ``VERIFY_X509_STRICT`` is on, as in Python 3.13, so a certificate that
a strict verifier would refuse fails here first.

A context trusts what its bundle held when it was built. During a root rotation the bundle
holds the old and the new root; to drop a root, build a new context (OpenSSL cannot remove a
trusted certificate from a live one). ``ssl`` errors are translated to
:class:`~shoal.identity.pki.PKIError` here.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from shoal.identity.pki import (
    CertificateRejected,
    PKIError,
    PrivateKey,
    key_to_pem,
    parse_bundle,
    spiffe_id_of,
)

__all__ = [
    "ALPN",
    "CIPHERS_TLS12",
    "client_context",
    "server_context",
    "verify_chain",
    "write_private_key",
]

ALPN = ("http/1.1",)
"""The ALPN protocol a mesh listener offers: the node router speaks HTTP/1.1, so a client that
offers h2 too (curl does) must not be given it."""

CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"
"""OpenSSL cipher string for TLS 1.2: ECDHE + AEAD only (TLS 1.3 suites are not affected)."""


def verify_chain(
    leaf_pem: bytes, bundle_pem: bytes, now: datetime, *, trust_domain: str | None = None
) -> str:
    """The SPIFFE ID (``spiffe://...``) of ``leaf_pem`` once its chain to a root of
    ``bundle_pem`` is verified at ``now`` (an aware datetime).

    Uses cryptography's ``ClientVerifier`` (RFC 5280 / web-PKI path building: signatures,
    validity at ``now``, CA basic constraints and key usage, EKU clientAuth, which every mesh
    leaf carries), which accepts certificates named only by a URI SAN; then requires exactly
    one SAN, a valid SPIFFE ID, in ``trust_domain`` when one is given. Only ``bundle_pem`` is
    trusted; ``leaf_pem`` may carry intermediates after the leaf. Raises CertificateRejected
    with the reason: expired, not yet valid, unknown issuer, bad SAN.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    certs = parse_bundle(leaf_pem)
    if not certs:
        raise CertificateRejected("no certificate presented")
    roots = parse_bundle(bundle_pem)
    if not roots:
        raise CertificateRejected("the trust bundle is empty")
    leaf, intermediates = certs[0], certs[1:]
    verifier = PolicyBuilder().store(Store(roots)).time(now).build_client_verifier()
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as err:
        raise CertificateRejected(f"certificate verification failed: {err}") from None
    except (ValueError, InvalidSignature) as err:  # malformed certificate contents
        raise CertificateRejected(f"certificate cannot be verified: {err}") from None
    identity = spiffe_id_of(leaf)
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise CertificateRejected(f"{identity} is not in trust domain {trust_domain!r}")
    return str(identity)


def server_context(
    cert_pem: bytes,
    key_pem: bytes,
    bundle_pem: bytes,
    *,
    alpn: Sequence[str] | None = None,
) -> ssl.SSLContext:
    """A TLS server context presenting ``cert_pem`` (leaf, then any intermediates) with
    ``key_pem`` and requiring a client certificate that chains to ``bundle_pem``.

    ``alpn`` (for example :data:`ALPN`) is offered when given. Raises PKIError when the
    certificate, key or bundle cannot be loaded or do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _configure(context, cert_pem, key_pem, bundle_pem, alpn)
    return context


def client_context(
    cert_pem: bytes,
    key_pem: bytes,
    bundle_pem: bytes,
    *,
    alpn: Sequence[str] | None = None,
) -> ssl.SSLContext:
    """A TLS client context presenting ``cert_pem`` with ``key_pem`` and requiring a server
    certificate that chains to ``bundle_pem``; host names are not checked (match the peer's
    SPIFFE ID instead). Raises PKIError as :func:`server_context` does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # must precede verify_mode; the SPIFFE ID is checked instead
    _configure(context, cert_pem, key_pem, bundle_pem, alpn)
    return context


def _configure(
    context: ssl.SSLContext,
    cert_pem: bytes,
    key_pem: bytes,
    bundle_pem: bytes,
    alpn: Sequence[str] | None,
) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.set_ciphers(CIPHERS_TLS12)
    except ssl.SSLError as err:  # only if the OpenSSL build lacks every listed suite
        raise PKIError(f"no acceptable TLS 1.2 cipher in this OpenSSL: {err}") from None
    if not parse_bundle(bundle_pem):
        raise PKIError("the trust bundle holds no certificate")
    try:
        context.load_verify_locations(cadata=bundle_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as err:
        raise PKIError(f"cannot load the trust bundle: {err}") from None
    _load_cert_chain(context, cert_pem, key_pem)
    if alpn:
        context.set_alpn_protocols(list(alpn))


def _load_cert_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` reads only files, so the PEMs go through a private temporary
    directory (mode 0700, files 0600) that is removed at once."""
    with tempfile.TemporaryDirectory(prefix="shoal-tls-") as directory:
        cert_path = Path(directory, "cert.pem")
        key_path = Path(directory, "key.pem")
        _write_private(cert_path, cert_pem)
        _write_private(key_path, key_pem)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as err:
            raise PKIError(f"cannot load the certificate and key (do they match?): {err}") from None


def _write_private(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Write ``data`` to a new file at ``path`` that only the owner can read (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> None:
    """Store ``key`` as PEM at ``path`` with mode 0600, atomically.

    The PEM goes to a new 0600 file beside ``path`` that then replaces it, so the key is never
    readable by others, not even for a moment, and a crash leaves the old key or the new one.
    Raises PKIError when the file cannot be written.
    """
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.unlink(missing_ok=True)  # left over by a crash mid-write
        _write_private(temporary, key_to_pem(key), sync=True)
        os.replace(temporary, target)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise PKIError(f"cannot write private key {target}: {err.strerror or err}") from None
