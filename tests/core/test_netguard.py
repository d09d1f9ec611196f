"""The SSRF guard's address policy (sharpml.netguard): which hosts a webhook may reach."""

from __future__ import annotations

import pytest

from sharpml import netguard

#: Names this test resolves itself (no DNS here): a public name, a rebinding one, a mixed one.
DNS = {
    "hooks.example.com": ["93.184.215.14"],
    "rebind.example.com": ["10.0.0.5"],
    "mixed.example.com": ["93.184.215.14", "192.168.1.1"],
    "v6.example.com": ["2606:4700::6810:84e5"],
    "nat64.example.com": ["64:ff9b::a9fe:a9fe"],
}


def resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("no such host")
    return DNS[host]


REFUSED = [
    ("http://127.0.0.1/h", "internal-address"),  # loopback
    ("http://[::1]/h", "internal-address"),
    ("http://10.1.2.3/h", "internal-address"),  # private
    ("http://172.16.0.1/h", "internal-address"),
    ("http://192.168.0.1/h", "internal-address"),
    ("http://[fd00::1]/h", "internal-address"),  # unique local
    ("http://169.254.169.254/latest/meta-data/", "internal-address"),  # metadata, link-local
    ("http://[fe80::1]/h", "internal-address"),
    ("http://[fd00:ec2::254]/h", "internal-address"),  # AWS's IPv6 metadata
    ("http://100.64.0.1/h", "internal-address"),  # CGNAT
    ("http://100.100.100.200/h", "internal-address"),  # Alibaba's metadata, in CGNAT
    ("http://224.0.0.1/h", "internal-address"),  # multicast
    ("http://[ff02::1]/h", "internal-address"),
    ("http://240.0.0.1/h", "internal-address"),  # reserved
    ("http://0.0.0.0/h", "internal-address"),
    ("http://255.255.255.255/h", "internal-address"),
    ("http://[::ffff:127.0.0.1]/h", "internal-address"),  # IPv4-mapped
    ("http://[::ffff:169.254.169.254]/h", "internal-address"),
    ("http://[::7f00:1]/h", "internal-address"),  # IPv4-compatible
    ("http://[64:ff9b::a00:5]/h", "internal-address"),  # NAT64 of 10.0.0.5
    ("http://[64:ff9b:1::a00:5]/h", "internal-address"),  # local-use NAT64
    ("http://[2002:a00:1::1]/h", "internal-address"),  # 6to4 of 10.0.0.1
    ("http://[2002:a9fe:a9fe::1]/h", "internal-address"),  # 6to4 of the metadata address
    ("http://localhost/h", "internal-address"),
    ("http://kubernetes.default.svc/api", "internal-address"),
    ("http://sharpml-api/h", "internal-address"),  # a single-label service name
    ("http://db.cluster.local/h", "internal-address"),
    ("http://rebind.example.com/h", "internal-address"),  # a public name resolving inside
    ("http://mixed.example.com/h", "internal-address"),  # any internal address refuses the host
    ("http://nat64.example.com/h", "internal-address"),
    ("http://nowhere.example.com/h", "unresolvable"),
    ("ftp://hooks.example.com/h", "invalid-url"),
    ("http:///h", "invalid-url"),
    ("http://hooks.example.com:99999/h", "invalid-url"),
]


@pytest.mark.parametrize("url, rule", REFUSED)
def test_internal_addresses_are_refused(url: str, rule: str) -> None:
    with pytest.raises(netguard.Refused) as info:
        netguard.check(url, (), resolver)
    assert info.value.rule == rule, str(info.value)


@pytest.mark.parametrize(
    "url, addresses",
    [
        ("https://hooks.example.com/h", ["93.184.215.14"]),
        ("https://93.184.215.14:8443/h", ["93.184.215.14"]),
        ("https://v6.example.com/h", ["2606:4700::6810:84e5"]),
        ("https://[2002:5db8:d70e::1]/h", ["2002:5db8:d70e::1"]),  # 6to4 of a public address
    ],
)
def test_public_addresses_are_accepted(url: str, addresses: list[str]) -> None:
    assert [str(a) for a in netguard.check(url, (), resolver)] == addresses


def test_the_allow_list_names_hosts_and_networks() -> None:
    # A CIDR admits the addresses in it, and a host only when all its addresses are in it.
    assert [str(a) for a in netguard.check("http://127.0.0.1:9/h", ("127.0.0.1",), resolver)] == ["127.0.0.1"]
    assert netguard.check("http://rebind.example.com/h", ("10.0.0.0/8",), resolver)
    with pytest.raises(netguard.Refused):
        netguard.check("http://mixed.example.com/h", ("192.168.0.0/16",), resolver)
    # A host named outright is accepted whatever it resolves to, even an internal name (an intranet).
    DNS["hooks.corp"] = ["10.9.9.9"]
    try:
        assert [str(a) for a in netguard.check("http://hooks.corp/h", ("hooks.corp",), resolver)] == [
            "10.9.9.9"
        ]
    finally:
        del DNS["hooks.corp"]
    # The allow-list does not open anything else.
    with pytest.raises(netguard.Refused):
        netguard.check("http://10.1.1.1/h", ("127.0.0.1", "hooks.example.com"), resolver)
