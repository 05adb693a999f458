"""Outbound URLs a user gives us (pusher URLs, partner apps' webhook URLs): http(s) only, and never towards
this machine or a private network unless an operator allowed that network explicitly.

Checked twice: when the URL is stored (`check_url`: scheme, host, IP literals and `localhost`),
and when it is used (`GuardedResolver`: every address a host name resolves to), so a name that
resolves to 127.0.0.1 or 169.254.169.254 (or is re-pointed there later, DNS rebinding) is
refused at connect time, and the connection goes to the very address that was checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_BYTES = 2048
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class UnsafeUrl(ValueError):
    """The URL is not an http(s) URL we may call; the message says why (safe to show the user)."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """A comma-separated list of CIDRs (e.g. `127.0.0.0/8,::1/128`); ValueError names a bad one."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not a network: {part!r}") from None
    return tuple(networks)


def refusal(address: Address, allowed: Iterable[Network] = ()) -> str | None:
    """Why we may not call `address` ("loopback", "link-local", "private"), or None when we may:
    public unicast addresses, and anything inside an explicitly allowed network."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return None
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if not address.is_global or address.is_multicast:
        return "private"
    return None


def address_allowed(address: Address, allowed: Iterable[Network] = ()) -> bool:
    return refusal(address, allowed) is None


def is_loopback_host(host: str) -> bool:
    """`localhost`, a name under it, or a loopback IP literal."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: Any, allowed: Iterable[Network] = ()) -> str:
    """The URL if it is an absolute http(s) URL whose host may be called; else UnsafeUrl."""
    if not isinstance(url, str) or not url or len(url.encode()) > MAX_URL_BYTES:
        raise UnsafeUrl(f"the URL must be a string of at most {MAX_URL_BYTES} bytes")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UnsafeUrl("the URL cannot be parsed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise UnsafeUrl("the URL must be http or https, with a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL must not carry credentials")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None and (host == "localhost" or host.endswith(".localhost")):
        address = ipaddress.ip_address("127.0.0.1")
    reason = refusal(address, tuple(allowed)) if address is not None else None
    if reason:
        raise UnsafeUrl(f"the URL points to a {reason} address")
    return url


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops every resolved address we may not call; none left is an OSError."""

    def __init__(self, allowed: Iterable[Network] = (), inner: AbstractResolver | None = None) -> None:
        self._allowed = tuple(allowed)
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        reasons = {r["host"]: refusal(ipaddress.ip_address(r["host"]), self._allowed) for r in results}
        kept = [r for r in results if reasons[r["host"]] is None]
        if not kept:
            named = " or ".join(sorted({reason for reason in reasons.values() if reason}))
            raise OSError(f"{host} resolves only to {named or 'no'} addresses we may not call")
        return kept

    async def close(self) -> None:
        await self._inner.close()
