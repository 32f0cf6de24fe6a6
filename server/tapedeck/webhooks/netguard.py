"""Outbound address policy for webhook delivery (SSRF protection).

Contract:

- ``NetGuard.addresses(host, port)`` resolves ``host`` (an IP literal is used as is) and
  checks EVERY resolved address against the ``NetPolicy``; if any one is refused the whole
  host is refused (``AddressRefused``), so a DNS answer mixing a public and an internal
  address cannot be used to reach the internal one. The caller must then connect only to
  the returned addresses (``Connector.connect`` takes an IP, never a name), so nothing is
  resolved twice and a DNS answer cannot change between check and connect.
- Always refused: cloud metadata addresses (169.254.169.254, fd00:ec2::254, …),
  unspecified (0.0.0.0/8, ::), link-local (169.254/16, fe80::/10), multicast, broadcast and
  every other non-global special range (documentation, benchmarking, reserved, …).
- Refused unless ``allow_private`` (setting ``webhooks_allow_private``, for development and
  tests): loopback (127/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7) and
  shared/CGNAT (100.64/10).
- IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``,
  NAT64 ``64:ff9b::/96``) are judged by the embedded IPv4 address.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, …
    "169.254.170.2",    # AWS ECS task metadata
    "fd00:ec2::254",    # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",      # Oracle Cloud
))
PRIVATE_CATEGORIES = frozenset({"loopback", "private", "cgnat"})
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12",
                                                    "192.168.0.0/16"))
_ULA = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The destination resolves to an address the policy refuses."""

    def __init__(self, host: str, address: IPAddress, category: str) -> None:
        super().__init__(f"{host} resolves to {address} ({category}); refused")
        self.host = host
        self.address = address
        self.category = category


class ResolveFailed(Exception):
    """The host name does not resolve (or resolves to nothing usable)."""


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def category(ip: IPAddress) -> str | None:
    """Why ``ip`` is special (``loopback``, ``private``, ``metadata``, …), or None if it is
    an ordinary global unicast address."""
    ip = embedded_ipv4(ip)
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link_local"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT:
            return "cgnat"
        if ip == ipaddress.IPv4Address("255.255.255.255"):
            return "broadcast"
        if any(ip in n for n in _RFC1918):
            return "private"
    elif ip in _ULA:
        return "private"
    if not ip.is_global or ip.is_reserved:
        return "reserved"
    return None


@dataclass(frozen=True)
class NetPolicy:
    """Which destination addresses webhooks may reach."""

    allow_private: bool = False

    def refusal(self, ip: IPAddress) -> str | None:
        """The category that makes ``ip`` refused, or None if delivery may connect to it."""
        cat = category(ip)
        if cat is None or (self.allow_private and cat in PRIVATE_CATEGORIES):
            return None
        return cat


class Resolver(Protocol):
    """Turns a host name into addresses (injectable: tests map names without DNS)."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to, in preference order; ``ResolveFailed`` if none."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``)."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolveFailed(f"{host} does not resolve: {exc}") from None
        out: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in out:
                out.append(ip)
        return out


class Connector(Protocol):
    """Opens a TCP connection to an already-checked IP address (injectable for tests)."""

    def connect(self, ip: IPAddress, port: int, timeout_s: float) -> socket.socket:
        """A connected socket; raises ``OSError`` (e.g. ``ConnectionRefusedError``)."""
        ...


class SystemConnector:
    """Plain TCP to exactly the given address (no name lookup), with TCP_NODELAY."""

    def connect(self, ip: IPAddress, port: int, timeout_s: float) -> socket.socket:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect((str(ip), port))
        except BaseException:
            sock.close()
            raise
        return sock


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is written as one (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class NetGuard:
    """Resolves a destination and applies the policy to every address it resolves to."""

    def __init__(self, policy: NetPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.resolver: Resolver = resolver or SystemResolver()

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to, all allowed; ``AddressRefused``/``ResolveFailed``."""
        literal = ip_literal(host)
        found = [literal] if literal is not None else self.resolver.resolve(host, port)
        if not found:
            raise ResolveFailed(f"{host} resolves to no address")
        for ip in found:
            cat = self.policy.refusal(ip)
            if cat is not None:
                raise AddressRefused(host, ip, cat)
        return found
