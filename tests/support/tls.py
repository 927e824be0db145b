"""Certificates for TLS tests: a throwaway self-signed server certificate, and mesh identities
signed by a mesh CA."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.identity.certs import client_context, server_context
from shoal.identity.issuance import make_csr, sign
from shoal.identity.pki import bundle_pem, key_to_pem, new_key
from shoal.platform.ca.signer import CAFiles


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``name`` and 127.0.0.1; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def client_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA (``ca.pem``) and a client certificate it signed (``client.pem``, ``client-key.pem``),
    for mutual TLS at the edge; their paths."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    client = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a client")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "client.pem", directory / "client-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(client.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def mesh_contexts(
    directory: Path, trust_domain: str, server: str, client: str
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A mesh CA in ``directory`` and the server and client contexts of two identities it
    signs (SPIFFE IDs ``server`` and ``client``), as node routers and their callers use."""
    now = datetime.datetime.now(datetime.UTC)
    ca = CAFiles(directory / "ca").load_or_create(trust_domain, now)
    bundle = bundle_pem([ca.cert])

    def issued(identity: str) -> tuple[bytes, bytes]:
        key = new_key()
        cert = sign(ca, make_csr(key, identity), allowed=lambda _: True, now=now,
                    valid_for=datetime.timedelta(hours=1))  # fmt: skip
        return cert, key_to_pem(key)

    return server_context(*issued(server), bundle), client_context(*issued(client), bundle)
