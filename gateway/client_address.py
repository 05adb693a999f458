"""Who is on the other end of a request: the address rate limits and the services' abuse checks key on."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

from aiohttp import web

from gateway.app import DEPS_KEY


def _trusted(address: str, proxies: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(request: web.Request) -> str:
    """The client's IP: the peer, or behind trusted proxies the last untrusted X-Forwarded-For hop."""
    remote = request.remote or ""
    proxies = request.app[DEPS_KEY].config.trusted_proxies
    if not proxies or not _trusted(remote, proxies):
        return remote
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:64]
    return hops[0][:64] if hops else remote
