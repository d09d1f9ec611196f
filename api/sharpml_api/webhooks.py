"""Webhook URLs point at the public internet only: checked when a job is submitted.

A webhook is a request the operator will send from inside the cluster, so a URL naming the cloud's
metadata service (``169.254.169.254``), loopback, a private or link-local network, or a
cluster-internal name (``kubernetes.default.svc``, a single-label service name) would turn SharpML
into a proxy into its own network (SSRF). The host is refused when it is such a name, or when any
address it resolves to right now is not a global unicast address; a host that does not resolve is
refused too (nothing could be delivered). ``SHARPML_WEBHOOK_ALLOWED_HOSTS`` (host names, addresses
or CIDRs) lets an intranet or a test name internal receivers on purpose.

This is the submission-time check; DNS can change between now and delivery, so the sender must check
the address it actually connects to again (the delivery stage's guard).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from sharpml_api.problems import field_problem

FIELD = "webhook_url"
#: Names that only mean something inside a cluster, a LAN or this machine.
INTERNAL_SUFFIXES = (
    ".localhost", ".local", ".localdomain", ".internal", ".intranet", ".lan", ".home.arpa", ".corp",
    ".svc", ".cluster.local", ".in-addr.arpa", ".ip6.arpa",
)  # fmt: skip

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


#: IPv6 ranges that carry an IPv4 address in their low 32 bits and reach it: NAT64's well-known prefix
#: (an IPv6-only cluster's DNS64 gateway forwards 64:ff9b::a00:5 to 10.0.0.5) and the old IPv4-compatible
#: form. Python calls many such addresses global; the address inside decides.
_EMBEDS_IPV4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))


def _public(addr: Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour  # ::ffff:a.b.c.d, and 6to4's 2002:aabb:ccdd::/48
        if inner is None and any(addr in net for net in _EMBEDS_IPV4):
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None and not _public(inner):
            return False
    return addr.is_global and not addr.is_multicast


def _allowed(host: str, addrs: Iterable[Address], allowed: Iterable[str]) -> bool:
    networks = []
    for item in allowed:
        if item == host:
            return True
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue
    addrs = list(addrs)
    return bool(addrs) and all(any(a in n for n in networks) for a in addrs)


def _refuse(rule: str, message: str) -> Exception:
    return field_problem(422, "invalid-options", "Invalid options", FIELD, rule, f"{FIELD}: {message}")


def check_webhook_url(url: str, allowed: Iterable[str] = (), resolve: Resolver = _resolve) -> None:
    """Raise a 422 problem naming ``webhook_url`` unless ``url`` reaches only public addresses.

    Blocking (it resolves the host): run it in a worker thread."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    allowed = tuple(allowed)
    if host in allowed:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refuse("invalid-url", "the port is not a number from 0 to 65535") from None
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None and (host == "localhost" or "." not in host or host.endswith(INTERNAL_SUFFIXES)):
        raise _refuse("internal-address", f"{host!r} is an internal name; webhooks must reach a public host")
    try:
        addrs = [ipaddress.ip_address(a) for a in resolve(host, port)] if literal is None else [literal]
    except (OSError, UnicodeError, ValueError):
        raise _refuse("unresolvable", f"{host!r} does not resolve to an address") from None
    if _allowed(host, addrs, allowed):
        return
    if not addrs:
        raise _refuse("unresolvable", f"{host!r} does not resolve to an address")
    internal = sorted({str(a) for a in addrs if not _public(a)})
    if internal:
        shown = host if literal is not None else f"{host!r} (resolves to {', '.join(internal)})"
        raise _refuse(
            "internal-address",
            f"{shown} is a loopback, private, link-local or reserved address; webhooks must reach a "
            "public host",
        )
