"""Which network addresses SharpML may send a request to on a user's behalf (the SSRF guard).

A webhook is a request the operator sends from inside the cluster to a URL a user chose. A URL naming
the cloud's metadata service (``169.254.169.254``), loopback, a private, shared (CGNAT) or link-local
network, or a cluster-internal name (``kubernetes.default.svc``, a single-label service name) would
turn SharpML into a proxy into its own network. So a host is accepted only when it is a public name
and every address it resolves to is a global unicast address; IPv6 forms that carry an IPv4 address
(IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by the address inside. A host that does not
resolve is refused too. ``SHARPML_WEBHOOK_ALLOWED_HOSTS`` (host names, addresses or CIDRs) lets an
intranet or a test name internal receivers on purpose.

The API checks a URL at submission (:mod:`sharpml_api.webhooks`); DNS can change before delivery, so
the operator checks again at send time with :func:`check` and connects to exactly the address it
returned (no second lookup: DNS rebinding). Pure Python.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

#: Names that only mean something inside a cluster, a LAN or this machine.
INTERNAL_SUFFIXES = (
    ".localhost", ".local", ".localdomain", ".internal", ".intranet", ".lan", ".home.arpa", ".corp",
    ".svc", ".cluster.local", ".in-addr.arpa", ".ip6.arpa",
)  # fmt: skip

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]

#: IPv6 ranges that carry an IPv4 address in their low 32 bits and reach it: NAT64's well-known prefix
#: (an IPv6-only cluster's DNS64 gateway forwards 64:ff9b::a00:5 to 10.0.0.5) and the old IPv4-compatible
#: form. Python calls many such addresses global; the address inside decides.
_EMBEDS_IPV4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))
#: Never global whatever Python's tables say (they vary between Python versions): local-use NAT64
#: (RFC 8215, translates to whatever the operator of the network chose), and the cloud metadata
#: services' addresses that are not link-local (AWS's IPv6 one, Alibaba's, Oracle's are in CGNAT/ULA).
_NEVER = tuple(
    ipaddress.ip_network(n)
    for n in ("64:ff9b:1::/48", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.0/24", "198.18.0.0/15")
)


class Refused(ValueError):
    """The URL may not be sent to. ``rule``: ``invalid-url``, ``internal-address`` or ``unresolvable``."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to now (the system resolver; blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def is_public(addr: Address) -> bool:
    """True for a global unicast address that carries no internal IPv4 address."""
    if any(addr in net for net in _NEVER if net.version == addr.version):
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour  # ::ffff:a.b.c.d, and 6to4's 2002:aabb:ccdd::/48
        if inner is None and any(addr in net for net in _EMBEDS_IPV4):
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None and not is_public(inner):
            return False
    return addr.is_global and not addr.is_multicast


def allowed_by(host: str, addrs: Iterable[Address], allowed: Iterable[str]) -> bool:
    """True when the allow-list names ``host``, or every one of ``addrs`` is in one of its networks."""
    networks = []
    for item in allowed:
        if item.lower() == host:
            return True
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue
    addrs = list(addrs)
    return bool(addrs) and all(any(a in n for n in networks) for a in addrs)


def target(url: str) -> tuple[str, int]:
    """The URL's host (lower case, no trailing dot) and port; :class:`Refused` when it has none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused("invalid-url", "must be an absolute http:// or https:// URL")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise Refused("invalid-url", "must be an absolute http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("invalid-url", "the port is not a number from 0 to 65535") from None
    return host, port


def check(url: str, allowed: Iterable[str] = (), resolver: Resolver = resolve) -> list[Address]:
    """The addresses ``url`` may be sent to (resolved once, now), or :class:`Refused` saying why not.

    Blocking (it resolves the host): run it in a worker thread. Connect to one of the returned
    addresses, never to the name again."""
    host, port = target(url)
    allowed = tuple(allowed)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    named = host in (a.lower() for a in allowed)
    if (
        not named
        and literal is None
        and (host == "localhost" or "." not in host or host.endswith(INTERNAL_SUFFIXES))
    ):
        raise Refused("internal-address", f"{host!r} is an internal name; webhooks must reach a public host")
    try:
        addrs = [ipaddress.ip_address(a) for a in resolver(host, port)] if literal is None else [literal]
    except (OSError, UnicodeError, ValueError):
        raise Refused("unresolvable", f"{host!r} does not resolve to an address") from None
    if not addrs:
        raise Refused("unresolvable", f"{host!r} does not resolve to an address")
    if named or allowed_by(host, addrs, allowed):
        return addrs
    internal = sorted({str(a) for a in addrs if not is_public(a)})
    if internal:
        shown = host if literal is not None else f"{host!r} (resolves to {', '.join(internal)})"
        raise Refused(
            "internal-address",
            f"{shown} is a loopback, private, link-local or reserved address; webhooks must reach a "
            "public host",
        )
    return addrs
