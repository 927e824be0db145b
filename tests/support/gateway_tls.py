"""A Gateway with TLS servers and the clients that check them: curl over HTTPS with SNI, and
the certificate a port serves for a name."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

from cryptography import x509


def tls_gateway(
    port: int, a: tuple[Path, Path], b: tuple[Path, Path], mtls: int, ca: Path, redirect: int
) -> str:
    """A Gateway serving a.example and b.example with their own certificates on ``port``,
    a.example with mutual TLS on ``mtls``, and redirecting plaintext on ``redirect`` to https;
    VirtualServices bound to it send a.example to hello and b.example to world."""
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: secure}}
spec:
  servers:
  - port: {{number: {port}, name: https-a, protocol: HTTPS}}
    hosts: [a.example]
    tls: {{mode: SIMPLE, serverCertificate: {a[0]}, privateKey: {a[1]}}}
  - port: {{number: {port}, name: https-b, protocol: HTTPS}}
    hosts: [b.example]
    tls: {{mode: SIMPLE, serverCertificate: {b[0]}, privateKey: {b[1]}}}
  - port: {{number: {mtls}, name: https-mtls, protocol: HTTPS}}
    hosts: [a.example]
    tls: {{mode: MUTUAL, serverCertificate: {a[0]}, privateKey: {a[1]}, caCertificates: {ca}}}
  - port: {{number: {redirect}, name: http, protocol: HTTP}}
    hosts: ["*"]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure-a}}
spec:
  hosts: [a.example]
  gateways: [secure]
  http:
  - route: [{{destination: {{host: hello}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure-b}}
spec:
  hosts: [b.example]
  gateways: [secure]
  http:
  - route: [{{destination: {{host: world}}}}]
"""


def curl_tls(port: int, host: str, ca: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """curl https://host:port/ resolved to 127.0.0.1 (so SNI is ``host``), trusting ``ca``:
    prints the status, the HTTP version and the body."""
    return subprocess.run(
        [
            "curl", "-sS", "--http2", "--cacert", str(ca), "--resolve", f"{host}:{port}:127.0.0.1",
            "-w", " %{http_code} %{http_version}", *extra, f"https://{host}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )  # fmt: skip


def served_der(port: int, host: str) -> bytes:
    """The certificate (DER) served for SNI ``host`` on ``port``."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True) or b""


def served_certificate(port: int, host: str) -> str:
    """The subject of the certificate served for SNI ``host`` on ``port``."""
    return str(x509.load_der_x509_certificate(served_der(port, host)).subject.rfc4514_string())
