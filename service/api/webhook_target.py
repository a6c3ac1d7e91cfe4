"""Where a webhook may go: the address policy that keeps `webhook_url` from reaching internal services (SSRF).

A webhook is a request this service sends on a client's behalf, from inside the deployment's network, so a
client must not be able to aim it at the gateway itself, Redis, the cloud metadata endpoint or anything
else only reachable from inside. Two checks, with one rule (`ip_refusal`):

- at submission (`submission_refusal`, a 422): the URL is parsed the way the HTTP client (httpx) parses
  it, and a host that names an address without DNS (every spelling the C resolver accepts: `127.1`,
  `2130706433`, `0x7f000001`, `017700000001`, `[::ffff:127.0.0.1]`, ...) or a `localhost` name is
  refused when the address is not a public one. Other names are not looked up here (no DNS on the
  submission path; a name can change its answer anyway).
- at delivery (`pin_target`): the host is resolved once, every address it resolves to must be public,
  and the request is sent to the address that was checked (the URL's host replaced by it, the original
  `Host` header and, for https, the original name as TLS SNI and for certificate checks), so a DNS
  server that answers differently a moment later (DNS rebinding) never chooses where we connect.

An address is refused unless it is globally routable unicast: loopback, RFC 1918 private, link-local
(169.254.169.254, the cloud metadata service, included), CGNAT 100.64/10, multicast, unspecified,
reserved, benchmarking, IPv6 ULA fc00::/7, link-local fe80::/10 and site-local fec0::/10; and IPv6 forms
that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
`64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address they carry.

Operators whose receivers are internal list them in `REALIZ3D_WEBHOOK_ALLOWLIST`: comma-separated CIDRs
(`10.20.0.0/16`, `127.0.0.1/32`, `fd12::/64`) and host names (`hooks.internal`, or `*.svc.cluster.local`
for every name under a domain). An allow-listed name may resolve to anything; an address inside an
allow-listed CIDR passes whatever its kind.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_LOCALHOST_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefused(Exception):
    """The webhook's target is not allowed (the message says why); nothing was sent."""


@dataclass(frozen=True)
class AllowList:
    """`REALIZ3D_WEBHOOK_ALLOWLIST`: CIDRs and host names webhooks may reach even when internal."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # from `*.domain` entries: ".domain"

    @classmethod
    def parse(cls, spec: str) -> AllowList:
        """Parse the setting; ValueError naming a bad entry."""
        networks, names, suffixes = [], set(), []
        for raw in spec.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if any(c.isdigit() for c in entry) and ("/" in entry or _literal_ip(entry) is not None):
                try:
                    networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError as e:
                    raise ValueError(f"webhook_allowlist: {raw.strip()!r} is not a CIDR ({e})") from e
            elif entry.startswith("*."):
                suffixes.append(_normal_name(entry[1:]))
            else:
                if "/" in entry or ":" in entry:
                    raise ValueError(f"webhook_allowlist: {raw.strip()!r} is neither a CIDR nor a host name")
                names.add(_normal_name(entry))
        return cls(tuple(networks), frozenset(names), tuple(suffixes))

    def allows_name(self, host: str) -> bool:
        name = _normal_name(host)
        return name in self.names or any(name.endswith(s) for s in self.suffixes)

    def allows_ip(self, ip: IPAddress) -> bool:
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)


def _normal_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _literal_ip(host: str) -> IPAddress | None:
    """The address `host` names without DNS, as the resolver reads it (None for a name).

    IPv6 in brackets or not; IPv4 in every form inet_aton accepts (`127.1`, `2130706433`, `0x7f000001`,
    `017700000001`, `0177.0.0.1`), with a trailing dot or not."""
    h = host.strip().strip("[]").rstrip(".")
    if not h:
        return None
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if not all(c in "0123456789abcdefxABCDEFX." for c in h) or not h[0].isdigit():
        return None  # a name (inet_aton would also take trailing garbage after a space; hosts have none)
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except (OSError, ValueError):
        return None


def ip_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address (None when it is)."""
    if isinstance(ip, ipaddress.IPv6Address):
        carried = None
        if ip.ipv4_mapped is not None:
            carried = ip.ipv4_mapped
        elif ip in _NAT64:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            carried = ip.sixtofour
        elif int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
            carried = ipaddress.IPv4Address(int(ip))
        if carried is not None:
            inner = ip_refusal(carried)
            return f"a form of {carried}, {inner}" if inner else None
        if ip.scope_id:
            return "a scoped (link-local) address"
        if ip.is_site_local:
            return "a site-local address"
    checks = (
        ("is_unspecified", "the unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address (cloud metadata lives there)"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(ip, attribute):
            return reason
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _is_localhost_name(host: str) -> bool:
    name = _normal_name(host)
    return name in _LOCALHOST_NAMES or name.endswith(".localhost")


def parse_url(url: str) -> httpx.URL:
    """`url` as the HTTP client reads it; TargetRefused when it is not http(s) with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as e:
        raise TargetRefused(f"not a valid URL ({e})") from e
    if parsed.scheme not in DEFAULT_PORTS:
        raise TargetRefused("only http and https URLs are allowed")
    if not parsed.raw_host:
        raise TargetRefused("the URL has no host")
    return parsed


def _host_of(parsed: httpx.URL) -> str:
    return parsed.raw_host.decode("ascii", "replace")


def submission_refusal(url: str, allow: AllowList) -> str | None:
    """Why a `webhook_url` is refused at submission (None when it may be stored): a literal internal
    address, a localhost name, or not an http(s) URL with a host."""
    try:
        parsed = parse_url(url)
    except TargetRefused as e:
        return str(e)
    host = _host_of(parsed)
    if allow.allows_name(host):
        return None
    ip = _literal_ip(host)
    if ip is not None:
        if allow.allows_ip(ip):
            return None
        reason = ip_refusal(ip)
        return f"{host} is {reason}" if reason else None
    if _is_localhost_name(host):
        return f"{host} is a loopback name"
    if "%" in host:
        return f"{host} is not a host name"
    return None


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (one DNS lookup, the system resolver); OSError when it fails."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class PinnedTarget:
    """Where one delivery attempt connects: `url` has the checked address as its host."""

    url: httpx.URL
    host_header: str
    sni_hostname: str | None
    address: str

    def extensions(self) -> dict[str, str]:
        return {"sni_hostname": self.sni_hostname} if self.sni_hostname else {}


async def pin_target(url: str, allow: AllowList) -> PinnedTarget:
    """Resolve the webhook's host once and check every address; TargetRefused (never to be retried) when
    the target is not allowed, OSError when the name does not resolve (may be retried)."""
    parsed = parse_url(url)
    host = _host_of(parsed)
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    literal = _literal_ip(host)
    name_allowed = allow.allows_name(host)
    if literal is not None:
        addresses = [literal]
    else:
        if _is_localhost_name(host) and not name_allowed:
            raise TargetRefused(f"{host} is a loopback name")
        answers = await resolve_host(host.rstrip("."), port)
        addresses = [ipaddress.ip_address(a) for a in answers]
        if not addresses:
            raise OSError(f"{host} resolved to no address")
    if not name_allowed:
        for ip in addresses:
            if allow.allows_ip(ip):
                continue
            reason = ip_refusal(ip)
            if reason:
                shown = host if literal is not None else f"{host} resolves to {ip}, which"
                raise TargetRefused(f"{shown} is {reason}")
    address = addresses[0]
    return PinnedTarget(
        url=parsed.copy_with(host=str(address)),
        host_header=parsed.netloc.decode("ascii"),
        sni_hostname=host.rstrip(".") if parsed.scheme == "https" and literal is None else None,
        address=str(address),
    )


__all__ = [
    "AllowList",
    "PinnedTarget",
    "TargetRefused",
    "ip_refusal",
    "parse_url",
    "pin_target",
    "resolve_host",
    "submission_refusal",
]
