"""Whose process holds the other end of a loopback TCP connection: the kernel's socket table.

A connection to a loopback listener comes from a process on this host; ``/proc/net/tcp`` lists
every IPv4 socket with its owner's uid, so the client's socket (local address = the accepted
connection's peer, remote address = the listener's) names the uid that opened it. A client on
a dual-stack IPv6 socket (gRPC's C core makes those) reaching an IPv4 listener holds the
v4-mapped addresses (``::ffff:127.0.0.1``) and is listed in ``/proc/net/tcp6`` instead. A
node router uses it to let only a service's own instances call out through that service's
listener.
:func:`owner_in` is the pure lookup; :func:`socket_owner` reads the table.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

Address = tuple[str, int]

TCP_TABLE = Path("/proc/net/tcp")
TCP6_TABLE = Path("/proc/net/tcp6")


def _hex(address: Address) -> str:
    """``address`` as the table writes it: the IPv4 address's bytes in host (little-endian)
    order, then the port, both in upper-case hex."""
    packed = ipaddress.IPv4Address(address[0]).packed[::-1]
    return f"{packed.hex().upper()}:{address[1]:04X}"


def _hex6(address: Address) -> str:
    """An IPv4 ``address`` as ``/proc/net/tcp6`` writes its v4-mapped form: each 32-bit word
    of the IPv6 address in host order, then the port."""
    packed = ipaddress.IPv6Address(f"::ffff:{address[0]}").packed
    words = "".join(packed[i : i + 4][::-1].hex() for i in range(0, 16, 4))
    return f"{words.upper()}:{address[1]:04X}"


def owner_in(table: str, local: Address, remote: Address, *, v6: bool = False) -> int | None:
    """The uid of the socket whose local end is ``local`` and remote end ``remote`` in the
    text of a ``/proc/net/tcp`` table (``v6``: of ``/proc/net/tcp6``, for v4-mapped
    addresses), or None if there is none."""
    form = _hex6 if v6 else _hex
    want = (form(local), form(remote))
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and (fields[1], fields[2]) == want:
            return int(fields[7])
    return None


def socket_owner(
    local: Address, remote: Address, table: Path = TCP_TABLE, table6: Path = TCP6_TABLE
) -> int | None:
    """The uid owning the socket ``local`` → ``remote`` (IPv4 addresses) on this host, an IPv4
    socket or a dual-stack IPv6 one (None: not found)."""
    try:
        found = owner_in(table.read_text(), local, remote)
        if found is None and table6.exists():
            found = owner_in(table6.read_text(), local, remote, v6=True)
        return found
    except (OSError, ValueError):
        return None
