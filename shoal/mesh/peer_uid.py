"""Whose process holds the other end of a loopback TCP connection: the kernel's socket table.

A connection to a loopback listener comes from a process on this host; ``/proc/net/tcp`` lists
every IPv4 socket with its owner's uid, so the client's socket (local address = the accepted
connection's peer, remote address = the listener's) names the uid that opened it. A node router
uses it to let only a service's own instances call out through that service's listener.
:func:`owner_in` is the pure lookup; :func:`socket_owner` reads the table.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

Address = tuple[str, int]

TCP_TABLE = Path("/proc/net/tcp")


def _hex(address: Address) -> str:
    """``address`` as the table writes it: the IPv4 address's bytes in host (little-endian)
    order, then the port, both in upper-case hex."""
    packed = ipaddress.IPv4Address(address[0]).packed[::-1]
    return f"{packed.hex().upper()}:{address[1]:04X}"


def owner_in(table: str, local: Address, remote: Address) -> int | None:
    """The uid of the socket whose local end is ``local`` and remote end ``remote`` in the
    text of a ``/proc/net/tcp`` table, or None if there is none."""
    want = (_hex(local), _hex(remote))
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and (fields[1], fields[2]) == want:
            return int(fields[7])
    return None


def socket_owner(local: Address, remote: Address, table: Path = TCP_TABLE) -> int | None:
    """The uid owning the IPv4 socket ``local`` → ``remote`` on this host (None: not found)."""
    try:
        return owner_in(table.read_text(), local, remote)
    except (OSError, ValueError):
        return None
