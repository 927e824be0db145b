"""Istio's Gateway on a real ``shoal up`` (two gateway worker processes sharing each port):
applied with the CLI, two hosts with their own certificates on one TLS port (SNI, HTTP/2 by
ALPN), ``httpsRedirect``, MUTUAL, and a certificate replaced on disk served to new connections
within 5 s while an open connection keeps working."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_up import Platform, listen_ports, ready_count
from tests.e2e.test_up import platform as platform
from tests.support.gateway_tls import curl_tls, served_certificate, served_der, tls_gateway
from tests.support.tls import client_ca, self_signed
from tests.support.wait import eventually_sync


def listening(port: int) -> bool:
    """Whether something accepts connections on ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.timeout(180)
def test_gateway_tls_on_shoal_up(platform: Platform, tmp_path: Path) -> None:
    eventually_sync(
        lambda: ready_count(platform), "5 ready instances", until=lambda n: n == 5, timeout=30
    )
    for name in ("a", "b", "new"):
        (tmp_path / name).mkdir()
    a, b = self_signed(tmp_path / "a", "a.example"), self_signed(tmp_path / "b", "b.example")
    ca, client, client_key = client_ca(tmp_path)
    port, mtls, redirect = listen_ports(), listen_ports(), listen_ports()
    manifest = tmp_path / "gateway.yaml"
    manifest.write_text(tls_gateway(port, a, b, mtls, ca, redirect))
    applied = platform.shoal("apply", "-f", str(manifest), "--wait")
    assert applied.returncode == 0, applied.stderr
    for opened in (port, mtls, redirect):
        eventually_sync(lambda p=opened: listening(p), f"port {opened} open", until=bool)

    # SNI: each host its certificate and its routes; HTTP/2 by ALPN.
    assert curl_tls(port, "a.example", a[0]).stdout == "Hello, World!\n 200 2"
    assert curl_tls(port, "b.example", b[0]).stdout == "World, Hello!\n 200 2"
    assert served_certificate(port, "a.example") == "CN=a.example"
    assert served_certificate(port, "b.example") == "CN=b.example"
    redirected = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
         "-H", "Host: b.example", f"http://127.0.0.1:{redirect}/x?y=1"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert redirected.stdout == "301 https://b.example/x?y=1"

    # MUTUAL: no client certificate, no handshake; one of the CA's is served.
    without = curl_tls(mtls, "a.example", a[0])
    assert without.returncode != 0 and not without.stdout.startswith("Hello"), without
    admitted = curl_tls(mtls, "a.example", a[0], "--cert", str(client), "--key", str(client_key))
    assert admitted.stdout == "Hello, World!\n 200 2", admitted

    # A certificate replaced on disk: new connections get it within 5 s (both workers), an
    # open connection goes on.
    context = ssl.create_default_context(cafile=str(a[0]))
    request = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="a.example") as open_connection:
            open_connection.sendall(request)
            assert b"Hello, World!" in _response(open_connection)
            renewed = self_signed(tmp_path / "new", "a.example")
            shutil.copy(renewed[1], a[1])
            shutil.copy(renewed[0], a[0])
            new_der = ssl.PEM_cert_to_DER_cert(renewed[0].read_text())
            # Within 5 s every new connection gets it, whichever worker takes it (the kernel
            # spreads fresh connections over both), and curl verifies it.
            eventually_sync(
                lambda: [served_der(port, "a.example") for _ in range(12)],
                "the new certificate on every new connection",
                until=lambda ders: set(ders) == {new_der},
                timeout=5,
            )
            eventually_sync(
                lambda: curl_tls(port, "a.example", renewed[0]),
                "curl verifying the new certificate",
                until=lambda done: done.stdout == "Hello, World!\n 200 2",
                timeout=5,
            )
            open_connection.sendall(request)
            assert b"Hello, World!" in _response(open_connection)

    status = platform.shoal("status")
    assert "gateway servers" in status.stdout and "CN=a.example" in status.stdout, status.stdout
    deleted = platform.shoal("delete", "gateway", "secure")
    assert deleted.returncode == 0, deleted.stderr
    eventually_sync(lambda: listening(port), f"port {port} closed", until=lambda up: not up)


def _response(connection: ssl.SSLSocket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body
