"""Which address a viewer counts under (serve/addresses.py): the peer, or the client a trusted proxy names."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from serve.addresses import Network, client_address
from tests.test_serve_support import Viewer, add_server, running
from tests.waiting import wait_for

A = "100000000000000001"
LOOPBACK: list[Network] = [ip_network("127.0.0.1"), ip_network("::1")]
PROXIES: list[Network] = [ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # an untrusted peer's header is ignored
        ("10.0.0.2", [], "10.0.0.2"),  # a proxy that names nobody is the client we know
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the leftmost hop is the client's to forge
        ("10.0.0.2", ["198.51.100.1, 10.1.1.1"], "198.51.100.1"),  # two proxies in a row
        ("10.0.0.2", ["198.51.100.1", "10.1.1.1"], "198.51.100.1"),  # the same, as two header lines
        ("10.0.0.2", ["10.9.9.9, 10.1.1.1"], "10.9.9.9"),  # every hop a proxy: the first one
        ("10.0.0.2", ["198.51.100.1, garbage"], "10.0.0.2"),  # a hop that is no address ends the walk
        ("2001:db8::2", [" 2001:db9::7 , 2001:db8:1::1 "], "2001:db9::7"),
        ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),  # IPv4 on a dual-stack socket
        ("2001:db8::2", ["::ffff:198.51.100.1"], "198.51.100.1"),
        ("?", ["198.51.100.1"], "?"),  # no peer address (a Unix socket)
    ],
)
def test_client_address(peer: str, forwarded_for: list[str], expected: str) -> None:
    assert client_address(peer, forwarded_for, PROXIES) == expected


def test_nothing_trusted_means_the_peer() -> None:
    assert client_address("10.0.0.2", ["198.51.100.1"], []) == "10.0.0.2"


def forwarded(client: str) -> dict[str, str]:
    return {"X-Forwarded-For": client}


async def refused_status(server, client: str) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://127.0.0.1:{server.port}/", additional_headers=forwarded(client)):
            pass
    return caught.value.response.status_code


async def test_per_address_limit_counts_the_forwarded_client(database_url, conn) -> None:
    """With the proxy trusted, each client behind it has its own socket limit; without, the header is ignored."""
    await add_server(conn, A, "Alpha")
    async with running(database_url, max_connections_per_ip=1, trusted_proxies=LOOPBACK) as server:
        async with (
            Viewer.open(server, additional_headers=forwarded("198.51.100.1")) as first,
            Viewer.open(server, additional_headers=forwarded("198.51.100.2")) as second,
        ):
            await first.expect("server-list")
            await second.expect("server-list")
            assert await refused_status(server, "198.51.100.1") == 429
        await wait_for(lambda: not server.connections, message="sockets released")
    async with (
        running(database_url, max_connections_per_ip=1) as server,
        Viewer.open(server, additional_headers=forwarded("198.51.100.1")) as first,
    ):
        await first.expect("server-list")
        assert await refused_status(server, "198.51.100.2") == 429
