"""The mesh PKI: shoal.identity.pki (keys, PEM), shoal.identity.issuance (CA, CSR, signing) and
shoal.identity.certs (verification, real mTLS handshakes on loopback, key files)."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.errors import ShoalError, UserError
from shoal.identity.certs import (
    ALPN,
    client_context,
    server_context,
    verify_chain,
    write_private_key,
)
from shoal.identity.issuance import CA, CLOCK_SKEW, make_csr, new_root, sign
from shoal.identity.pki import (
    CertificateRejected,
    CSRRefused,
    PKIError,
    PrivateKey,
    bundle_pem,
    cert_from_pem,
    cert_to_pem,
    key_from_pem,
    key_to_pem,
    new_key,
    parse_bundle,
    renew_at,
)
from shoal.identity.spiffe import peer_identity, service_id

TD = "example.org"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HELLO = "spiffe://example.org/svc/hello"
WORLD = "spiffe://example.org/svc/world"

# OpenSSL checks validity against the real clock during a handshake, so certificates used on a
# socket are issued at a fixed past instant for a century: literal times, valid whenever the
# test runs (until 2120).
TLS_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
CENTURY = timedelta(days=36500)


@pytest.fixture(scope="module")
def ca() -> CA:
    """A root CA for example.org, created at NOW."""
    return new_root(TD, NOW)


def issue(ca: CA, spiffe_id: str, *, now: datetime = NOW, **kwargs: timedelta) -> bytes:
    """A leaf for ``spiffe_id`` signed by ``ca`` through a CSR, as a node would get it."""
    csr = make_csr(new_key(), spiffe_id)
    return sign(ca, csr, allowed={spiffe_id}, now=now, **kwargs)


def hand_made_leaf(ca: CA, sans: list[x509.GeneralName]) -> bytes:
    """A leaf with Shoal's extensions but arbitrary SANs, which sign() would never issue."""
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shoal")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - CLOCK_SKEW)
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return cert_to_pem(builder.sign(ca.key, hashes.SHA256()))


def csr_with_sans(sans: list[x509.GeneralName], key: PrivateKey | None = None) -> bytes:
    """A correctly signed CSR carrying ``sans`` (any number, any kind)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key or new_key(), hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------------------------------------
# Root, CSR, signing


def test_root_is_a_strict_p256_ca_for_its_trust_domain(ca: CA) -> None:
    """The root has CA constraints, cert/CRL signing usage, SKI=AKI, the CN and the td SAN."""
    cert = ca.cert
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    [cn] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == "Shoal mesh CA example.org"
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    assert cert.serial_number > 0
    assert ca.trust_domain == TD


def test_two_roots_have_distinct_serials_and_keys() -> None:
    """Each new root gets its own key and serial, so old and new can sit in one bundle."""
    first, second = new_root(TD, NOW), new_root(TD, NOW)
    assert first.cert.serial_number != second.cert.serial_number
    assert first.cert.public_key() != second.cert.public_key()


def test_ca_pem_round_trip(ca: CA) -> None:
    """CA.to_pem then CA.from_pem gives back the same certificate, key and trust domain."""
    cert_pem, key_pem = ca.to_pem()
    loaded = CA.from_pem(cert_pem, key_pem)
    assert loaded.cert == ca.cert
    assert loaded.trust_domain == TD
    assert key_to_pem(loaded.key) == key_pem


def test_ca_from_pem_refuses_a_key_of_another_ca(ca: CA) -> None:
    """A CA certificate stored with the wrong private key is a PKIError, not a silent CA."""
    cert_pem, _ = ca.to_pem()
    with pytest.raises(PKIError, match="does not match"):
        CA.from_pem(cert_pem, key_to_pem(new_key()))


def test_ca_from_pem_refuses_a_leaf(ca: CA) -> None:
    """A leaf certificate cannot be loaded as a CA."""
    key = new_key()
    leaf = sign(ca, make_csr(key, HELLO), allowed={HELLO}, now=NOW)
    with pytest.raises(PKIError, match="not a CA"):
        CA.from_pem(leaf, key_to_pem(key))


def test_csr_carries_the_spiffe_id_as_its_one_uri_san() -> None:
    """make_csr puts exactly one URI SAN, the SPIFFE ID, in a validly signed CSR."""
    csr = x509.load_pem_x509_csr(make_csr(new_key(), HELLO))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(HELLO)]


def test_sign_issues_a_strict_leaf_for_an_allowed_identity(ca: CA) -> None:
    """The leaf has the requester's key, one URI SAN, SKI/AKI, usages and the skewed window."""
    key = new_key()
    leaf = cert_from_pem(sign(ca, make_csr(key, HELLO), allowed={HELLO}, now=NOW))
    assert leaf.public_key() == key.public_key()
    assert leaf.issuer == ca.cert.subject
    ext = leaf.extensions
    assert list(ext.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(HELLO)
    ]
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)


def test_a_node_router_leaf_also_names_its_node_in_dns(ca: CA) -> None:
    """spiffe://td/node/N gets the DNS SAN N.node.td beside its URI (plain TLS clients can
    check they reached node N); it still names one identity and verifies; a node name that is
    not a DNS label gets none."""
    node = "spiffe://example.org/node/Web-1"
    leaf_pem = issue(ca, node)
    names = cert_from_pem(leaf_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(names.value) == [
        x509.UniformResourceIdentifier(node),
        x509.DNSName("web-1.node.example.org"),
    ]
    assert str(verify_chain(leaf_pem, bundle_pem([ca.cert]), NOW)) == node
    odd = cert_from_pem(issue(ca, "spiffe://example.org/node/n_1"))
    assert len(odd.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == 1


def test_sign_accepts_a_predicate_for_allowed(ca: CA) -> None:
    """``allowed`` may be a callable deciding per identity."""
    csr = make_csr(new_key(), WORLD)
    leaf = sign(ca, csr, allowed=lambda identity: identity.endswith("/world"), now=NOW)
    assert verify_chain(leaf, bundle_pem([ca.cert]), NOW) == WORLD


def test_sign_never_outlives_the_ca() -> None:
    """A leaf asked for beyond the CA's expiry ends when the CA does."""
    short = new_root(TD, NOW, valid_for=timedelta(hours=2))
    leaf = cert_from_pem(issue(short, HELLO, valid_for=timedelta(hours=24)))
    assert leaf.not_valid_after_utc == short.cert.not_valid_after_utc


def test_sign_refuses_once_the_ca_has_expired() -> None:
    """An expired CA signs nothing."""
    short = new_root(TD, NOW, valid_for=timedelta(hours=2))
    with pytest.raises(PKIError, match="expired"):
        issue(short, HELLO, now=NOW + timedelta(hours=3))


def test_sign_refuses_a_disallowed_identity(ca: CA) -> None:
    """A node asking for a service it does not run gets CSRRefused, a user-fault error."""
    csr = make_csr(new_key(), WORLD)
    with pytest.raises(CSRRefused, match="not entitled") as caught:
        sign(ca, csr, allowed={HELLO}, now=NOW)
    assert caught.value.exit_code == 2
    with pytest.raises(CSRRefused):
        sign(ca, csr, allowed=lambda identity: False, now=NOW)


def test_sign_refuses_another_trust_domain(ca: CA) -> None:
    """A SPIFFE ID of another trust domain is refused even when listed as allowed."""
    other = "spiffe://other.org/svc/hello"
    with pytest.raises(CSRRefused, match="trust domain"):
        sign(ca, make_csr(new_key(), other), allowed={other}, now=NOW)


def test_sign_refuses_a_bad_signature(ca: CA) -> None:
    """A CSR whose signature does not verify (tampered after signing) is refused."""
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(new_key(), HELLO)).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s value
    tampered = b"".join(
        [
            b"-----BEGIN CERTIFICATE REQUEST-----\n",
            base64.encodebytes(bytes(der)),
            b"-----END CERTIFICATE REQUEST-----\n",
        ]
    )
    with pytest.raises(CSRRefused, match="signature"):
        sign(ca, tampered, allowed={HELLO}, now=NOW)


@pytest.mark.parametrize(
    "sans",
    [
        [],
        [x509.UniformResourceIdentifier(HELLO), x509.UniformResourceIdentifier(WORLD)],
        [x509.UniformResourceIdentifier(HELLO), x509.DNSName("hello.example.org")],
        [x509.DNSName("hello.example.org")],
        [x509.UniformResourceIdentifier("https://example.org/svc/hello")],
        [x509.UniformResourceIdentifier("spiffe://example.org/svc/../world")],
    ],
    ids=["none", "two-uris", "uri-and-dns", "dns-only", "not-spiffe", "dot-segment"],
)
def test_sign_refuses_anything_but_one_valid_spiffe_uri(
    ca: CA, sans: list[x509.GeneralName]
) -> None:
    """No SAN, several SANs, a non-URI SAN or an invalid SPIFFE URI: CSRRefused."""
    with pytest.raises(CSRRefused):
        sign(ca, csr_with_sans(sans), allowed=lambda identity: True, now=NOW)


def test_sign_refuses_garbage_and_weak_keys(ca: CA) -> None:
    """Non-PEM input and a CSR on a curve Shoal does not accept are refused."""
    with pytest.raises(CSRRefused, match="not a PEM"):
        sign(ca, b"hello", allowed={HELLO}, now=NOW)
    weak = csr_with_sans(
        [x509.UniformResourceIdentifier(HELLO)], key=ec.generate_private_key(ec.SECP256K1())
    )
    with pytest.raises(CSRRefused, match="curve"):
        sign(ca, weak, allowed={HELLO}, now=NOW)


def test_naive_now_is_a_programming_error(ca: CA) -> None:
    """A timezone-naive ``now`` is refused loudly instead of being guessed."""
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(ca, make_csr(new_key(), HELLO), allowed={HELLO}, now=datetime(2026, 3, 1))


def test_renew_at_is_two_thirds_through_the_validity(ca: CA) -> None:
    """A 24 h leaf (plus 5 min of skew) is renewed 2/3 of the way through its life."""
    leaf = cert_from_pem(issue(ca, HELLO))
    lifetime = timedelta(hours=24) + CLOCK_SKEW
    assert renew_at(leaf) == NOW - CLOCK_SKEW + lifetime * 2 / 3
    assert renew_at(leaf, fraction=0.5) == NOW - CLOCK_SKEW + lifetime / 2
    assert renew_at(leaf) == datetime(2026, 3, 2, 3, 58, 20, tzinfo=UTC)


def test_bundle_round_trip_keeps_order(ca: CA) -> None:
    """parse_bundle(bundle_pem(roots)) gives the roots back in order."""
    other = new_root(TD, NOW)
    assert parse_bundle(bundle_pem([ca.cert, other.cert])) == [ca.cert, other.cert]
    with pytest.raises(CertificateRejected):
        parse_bundle(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_key_pem_round_trip_and_errors() -> None:
    """key_from_pem reads what key_to_pem wrote and refuses anything else."""
    key = new_key()
    assert key_from_pem(key_to_pem(key)).private_numbers() == key.private_numbers()
    with pytest.raises(PKIError):
        key_from_pem(b"not a key")


# ---------------------------------------------------------------------------------------------
# verify_chain


def test_verify_chain_returns_the_spiffe_id(ca: CA) -> None:
    """A fresh leaf verifies against its root and names its identity."""
    leaf = issue(ca, HELLO)
    assert verify_chain(leaf, bundle_pem([ca.cert]), NOW + timedelta(hours=1)) == HELLO
    assert verify_chain(leaf, bundle_pem([ca.cert]), NOW, trust_domain=TD) == HELLO


def test_verify_chain_accepts_clock_skew(ca: CA) -> None:
    """A peer whose clock is up to 5 minutes behind the signer still accepts the leaf."""
    leaf = issue(ca, HELLO)
    assert verify_chain(leaf, bundle_pem([ca.cert]), NOW - timedelta(minutes=4)) == HELLO


def test_verify_chain_rejects_an_expired_leaf(ca: CA) -> None:
    """After not_after the leaf is rejected."""
    leaf = issue(ca, HELLO)
    with pytest.raises(CertificateRejected, match="not valid"):
        verify_chain(leaf, bundle_pem([ca.cert]), NOW + timedelta(hours=24, seconds=1))


def test_verify_chain_rejects_a_not_yet_valid_leaf(ca: CA) -> None:
    """Before not_before (beyond the skew allowance) the leaf is rejected."""
    leaf = issue(ca, HELLO)
    with pytest.raises(CertificateRejected, match="not valid"):
        verify_chain(leaf, bundle_pem([ca.cert]), NOW - timedelta(minutes=6))


def test_verify_chain_rejects_a_leaf_of_another_ca(ca: CA) -> None:
    """A leaf signed by a different root (same trust domain and name) is rejected."""
    stranger = new_root(TD, NOW)
    leaf = issue(stranger, HELLO)
    with pytest.raises(CertificateRejected, match="verification failed"):
        verify_chain(leaf, bundle_pem([ca.cert]), NOW)


@pytest.mark.parametrize(
    "sans",
    [
        [],
        [x509.DNSName("hello.example.org")],
        [x509.UniformResourceIdentifier("https://example.org/svc/hello")],
        [x509.UniformResourceIdentifier(HELLO), x509.UniformResourceIdentifier(WORLD)],
    ],
    ids=["no-san", "dns", "not-spiffe", "two-uris"],
)
def test_verify_chain_rejects_a_wrong_san(ca: CA, sans: list[x509.GeneralName]) -> None:
    """A validly signed leaf without exactly one SPIFFE URI SAN names no identity."""
    with pytest.raises(CertificateRejected):
        verify_chain(hand_made_leaf(ca, sans), bundle_pem([ca.cert]), NOW)


def test_verify_chain_rejects_another_trust_domain() -> None:
    """With trust_domain given, a leaf of another domain is rejected even if the CA is trusted."""
    other = new_root("other.org", NOW)
    leaf = issue(other, "spiffe://other.org/svc/hello")
    with pytest.raises(CertificateRejected, match="trust domain"):
        verify_chain(leaf, bundle_pem([other.cert]), NOW, trust_domain=TD)


def test_verify_chain_rejects_a_ca_certificate_as_leaf(ca: CA) -> None:
    """The root itself is not an identity certificate."""
    with pytest.raises(CertificateRejected):
        verify_chain(cert_to_pem(ca.cert), bundle_pem([ca.cert]), NOW)


def test_two_roots_in_one_bundle_both_verify(ca: CA) -> None:
    """During a rotation the bundle trusts old and new roots: leaves of either verify."""
    new = new_root(TD, NOW + timedelta(days=1))
    bundle = bundle_pem([ca.cert, new.cert])
    later = NOW + timedelta(days=1, hours=1)
    old_leaf = issue(ca, HELLO, now=NOW + timedelta(days=1))
    new_leaf = issue(new, WORLD, now=NOW + timedelta(days=1))
    assert verify_chain(old_leaf, bundle, later) == HELLO
    assert verify_chain(new_leaf, bundle, later) == WORLD
    with pytest.raises(CertificateRejected):
        verify_chain(old_leaf, bundle_pem([new.cert]), later)


# ---------------------------------------------------------------------------------------------
# Real TLS on loopback


@dataclass
class Credentials:
    """A leaf, its key and the bundle to trust, as PEM."""

    cert: bytes
    key: bytes
    bundle: bytes


def credentials(
    ca: CA, spiffe_id: str, bundle: bytes, *, lifetime: timedelta = CENTURY
) -> Credentials:
    """A component's PEMs: key, leaf issued at TLS_EPOCH by ``ca``, and ``bundle``."""
    key = new_key()
    cert = sign(
        ca, make_csr(key, spiffe_id), allowed={spiffe_id}, now=TLS_EPOCH, valid_for=lifetime
    )
    return Credentials(cert=cert, key=key_to_pem(key), bundle=bundle)


@pytest.fixture(scope="module")
def tls_ca() -> CA:
    """A root valid from TLS_EPOCH for a century, for handshakes checked on the real clock."""
    return new_root(TD, TLS_EPOCH, valid_for=CENTURY)


@dataclass
class Outcome:
    """What each side of one connection saw."""

    server_peer: Mapping[str, object] | None = None
    server_alpn: str | None = None
    server_error: Exception | None = None
    client_peer: Mapping[str, object] | None = None
    client_error: Exception | None = None
    reply: bytes = b""


def connect(server: ssl.SSLContext, client: ssl.SSLContext) -> Outcome:
    """One real TLS connection over loopback: the server thread answers b"ok" to b"hi"."""
    outcome = Outcome()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                raw, _ = listener.accept()
                raw.settimeout(10)
                with server.wrap_socket(raw, server_side=True) as tls:
                    outcome.server_peer = tls.getpeercert()
                    outcome.server_alpn = tls.selected_alpn_protocol()
                    if tls.recv(2) == b"hi":
                        tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as err:
                outcome.server_error = err

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw) as tls,
            ):
                outcome.client_peer = tls.getpeercert()
                tls.sendall(b"hi")
                outcome.reply = tls.recv(2)
        except (OSError, ssl.SSLError) as err:
            outcome.client_error = err
        thread.join(10)
        assert not thread.is_alive()
    return outcome


def strict(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` with VERIFY_X509_STRICT turned on explicitly (Python 3.13's default)."""
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def test_mtls_handshake_reads_both_spiffe_ids_under_strict_verification(tls_ca: CA) -> None:
    """A real loopback mTLS handshake with VERIFY_X509_STRICT: each side reads the other's ID."""
    bundle = bundle_pem([tls_ca.cert])
    hello, world = credentials(tls_ca, HELLO, bundle), credentials(tls_ca, WORLD, bundle)
    server = strict(server_context(world.cert, world.key, world.bundle, alpn=ALPN))
    client = strict(client_context(hello.cert, hello.key, hello.bundle, alpn=ALPN))
    assert server.verify_flags & ssl.VERIFY_X509_STRICT
    outcome = connect(server, client)
    assert outcome.client_error is None and outcome.server_error is None
    assert outcome.reply == b"ok"
    assert peer_identity(outcome.server_peer) == service_id(TD, "hello")
    assert peer_identity(outcome.client_peer) == service_id(TD, "world")
    assert outcome.server_alpn == "http/1.1"


def test_contexts_allow_only_tls12_and_up_and_require_certificates(tls_ca: CA) -> None:
    """Both contexts demand a peer certificate, skip host names and refuse TLS < 1.2."""
    creds = credentials(tls_ca, HELLO, bundle_pem([tls_ca.cert]))
    for context in (
        server_context(creds.cert, creds.key, creds.bundle),
        client_context(creds.cert, creds.key, creds.bundle),
    ):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert not context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
        names = {cipher["name"] for cipher in context.get_ciphers()}
        tls12 = {name for name in names if not name.startswith("TLS_")}
        assert tls12 and all(name.startswith("ECDHE-") for name in tls12)
        assert all("GCM" in name or "CHACHA20" in name for name in tls12)


def test_handshake_with_tls12_only_still_reads_the_id(tls_ca: CA) -> None:
    """A peer limited to TLS 1.2 negotiates an ECDHE-AEAD suite and still gets identified."""
    bundle = bundle_pem([tls_ca.cert])
    hello, world = credentials(tls_ca, HELLO, bundle), credentials(tls_ca, WORLD, bundle)
    client = strict(client_context(hello.cert, hello.key, hello.bundle))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = connect(strict(server_context(world.cert, world.key, world.bundle)), client)
    assert outcome.reply == b"ok"
    assert peer_identity(outcome.server_peer) == service_id(TD, "hello")


def test_client_cert_from_another_ca_is_refused(tls_ca: CA) -> None:
    """The server rejects a client whose certificate chains to a root it does not trust."""
    bundle = bundle_pem([tls_ca.cert])
    stranger = new_root(TD, TLS_EPOCH, valid_for=CENTURY)
    world = credentials(tls_ca, WORLD, bundle)
    intruder = credentials(stranger, HELLO, bundle)
    outcome = connect(
        server_context(world.cert, world.key, world.bundle),
        client_context(intruder.cert, intruder.key, intruder.bundle),
    )
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer" in str(outcome.server_error)
    assert outcome.reply == b""  # under TLS 1.3 the client learns it on its first read


def test_client_without_certificate_is_refused(tls_ca: CA) -> None:
    """CERT_REQUIRED on the server: a client presenting no certificate gets nothing."""
    world = credentials(tls_ca, WORLD, bundle_pem([tls_ca.cert]))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=world.bundle.decode())
    outcome = connect(server_context(world.cert, world.key, world.bundle), anonymous)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "certificate" in str(outcome.server_error).lower()
    assert outcome.reply == b""


def test_expired_client_certificate_is_refused(tls_ca: CA) -> None:
    """A leaf that expired long ago (on the real clock) fails the handshake."""
    bundle = bundle_pem([tls_ca.cert])
    world = credentials(tls_ca, WORLD, bundle)
    stale = credentials(tls_ca, HELLO, bundle, lifetime=timedelta(hours=24))
    outcome = connect(
        server_context(world.cert, world.key, world.bundle),
        client_context(stale.cert, stale.key, stale.bundle),
    )
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "expired" in str(outcome.server_error)
    assert outcome.reply == b""


def test_rotation_bundle_lets_old_and_new_leaves_talk(tls_ca: CA) -> None:
    """With a bundle of old and new roots, a leaf of each root handshakes with the other."""
    new = new_root(TD, TLS_EPOCH, valid_for=CENTURY)
    bundle = bundle_pem([tls_ca.cert, new.cert])
    old_side = credentials(tls_ca, HELLO, bundle)
    new_side = credentials(new, WORLD, bundle)
    outcome = connect(
        strict(server_context(new_side.cert, new_side.key, new_side.bundle)),
        strict(client_context(old_side.cert, old_side.key, old_side.bundle)),
    )
    assert outcome.reply == b"ok"
    assert peer_identity(outcome.server_peer) == service_id(TD, "hello")
    assert peer_identity(outcome.client_peer) == service_id(TD, "world")


def test_contexts_refuse_a_key_that_does_not_match(tls_ca: CA) -> None:
    """A certificate with someone else's key is a PKIError, not an ssl.SSLError."""
    creds = credentials(tls_ca, HELLO, bundle_pem([tls_ca.cert]))
    with pytest.raises(PKIError, match="match"):
        server_context(creds.cert, key_to_pem(new_key()), creds.bundle)
    with pytest.raises(PKIError):
        client_context(creds.cert, creds.key, b"")


# ---------------------------------------------------------------------------------------------
# Key files


def test_write_private_key_is_owner_only_and_replaces(tmp_path: Path) -> None:
    """The key file has mode 0600 even when an older, world-readable file was there."""
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    key = new_key()
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_from_pem(path.read_bytes()).private_numbers() == key.private_numbers()
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_write_private_key_failure_is_a_pki_error(tmp_path: Path) -> None:
    """An unwritable destination raises PKIError naming the path."""
    with pytest.raises(PKIError, match="missing"):
        write_private_key(tmp_path / "missing" / "key.pem", new_key())


def test_errors_belong_to_the_shoal_tree() -> None:
    """PKI errors are ShoalErrors; a refused CSR is the requester's (user) fault class."""
    assert issubclass(PKIError, ShoalError)
    assert CSRRefused.exit_code == 2 and PKIError.exit_code == 5
    assert not issubclass(CertificateRejected, UserError)
