"""The owner of a loopback connection's client socket, from the kernel's socket table."""

from __future__ import annotations

import os
import socket

from shoal.mesh.peer_uid import owner_in, socket_owner

TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:E68E 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 2 1
   2: 0100007F:1F90 0100007F:E68E 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""


def test_the_client_socket_names_its_owner() -> None:
    """127.0.0.1:59022 → 127.0.0.1:8080 is uid 1001's; the listener's own end is not asked."""
    assert owner_in(TABLE, ("127.0.0.1", 59022), ("127.0.0.1", 8080)) == 1001
    assert owner_in(TABLE, ("127.0.0.1", 8080), ("127.0.0.1", 59022)) == 0
    assert owner_in(TABLE, ("127.0.0.1", 1), ("127.0.0.1", 8080)) is None


def test_a_real_connection_is_this_process_s() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        try:
            accepted, peer = server.accept()
            with accepted:
                assert socket_owner(peer, server.getsockname()) == os.getuid()
        finally:
            client.close()


def test_a_dual_stack_client_is_found_in_the_ipv6_table() -> None:
    """A client on an IPv6 socket reaching an IPv4 listener through a v4-mapped address (as
    gRPC's C core connects) is listed in /proc/net/tcp6: found there."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            client.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
            accepted, peer = server.accept()
            with accepted:
                assert socket_owner(peer, server.getsockname()) == os.getuid()
        finally:
            client.close()
