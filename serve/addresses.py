"""Which address a viewer is counted under: the socket's peer, or the client a trusted proxy names.

Behind nginx every viewer arrives from the proxy's address, so the per-address limits (sockets, unsent
bytes, Discord calls) would cap the whole site. A peer listed in ``DZONE_TRUSTED_PROXIES`` is believed
about the hop before it in ``X-Forwarded-For``; nothing else is (the header is the client's to forge).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from websockets.asyncio.server import ServerConnection

Network = IPv4Network | IPv6Network
UNKNOWN = "?"


def _parsed(text: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # "::ffff:10.0.0.1" from a dual-stack socket is 10.0.0.1
    return address


def _trusted(address: IPv4Address | IPv6Address, proxies: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str, forwarded_for: Iterable[str], proxies: Sequence[Network]) -> str:
    """The address a viewer is counted under.

    ``forwarded_for`` holds the ``X-Forwarded-For`` header lines. The hops are read from the right (each
    proxy appends the address it was reached from); the first hop that is not a trusted proxy is the client.
    A hop that is not an address ends the walk: the proxy that wrote it is then the client we know.
    """
    current = _parsed(peer)
    if current is None:
        return peer or UNKNOWN
    hops = [hop for line in forwarded_for for hop in line.split(",")]
    while _trusted(current, proxies) and hops:
        hop = _parsed(hops.pop())
        if hop is None:
            break
        current = hop
    return str(current)


def viewer_address(connection: ServerConnection, proxies: Sequence[Network]) -> str:
    """:func:`client_address` of an accepted socket or an upgrade request being admitted."""
    remote = connection.remote_address
    peer = str(remote[0]) if remote else UNKNOWN
    if not proxies or connection.request is None:
        return peer
    return client_address(peer, connection.request.headers.get_all("X-Forwarded-For"), proxies)
