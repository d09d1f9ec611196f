"""The client's address for rate limiting: the socket peer, or X-Forwarded-For behind trusted proxies.

X-Forwarded-For is only believed when the peer is a configured proxy; then the list is read from the
right, skipping further trusted proxies, and the first address that is not one is the client. A
client can prepend anything it likes, so the leftmost entry is never trusted on its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, proxies: Sequence[Network]) -> bool:
    return addr is not None and any(addr in net for net in proxies)


def client_ip(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """The address to account a request to (a string; unparsable peers are kept as they are)."""
    peer_addr = _parse(peer)
    if not _trusted(peer_addr, proxies):
        return str(peer_addr) if peer_addr else peer
    hops = [h for header in forwarded_for for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = _parse(hop)
        if addr is None:
            break  # garbage in the chain: stop believing it, account to the last proxy
        if not _trusted(addr, proxies):
            return str(addr)
        peer_addr = addr
    return str(peer_addr)
