"""Rule 17: passworded servers trust only Discord's answer about a token, then guild membership in discord_users."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from simulator.config import SimConfig
from simulator.server import Simulator
from tests.test_serve_support import Viewer, add_server, add_users, running
from tests.waiting import wait_for

LOCKED, OPEN = "100000000000000001", "100000000000000002"
REQUIRED = "This server requires Discord authentication. Please login with Discord."
FAILED = "Discord authentication failed. Please try logging in again."
NOT_MEMBER = "Your Discord account is not a member of this server."


@pytest.fixture
async def sim():
    async with Simulator(SimConfig(guilds=1, members=5)) as simulator:
        yield simulator


async def seed(conn, member_id: str) -> None:
    await add_server(conn, LOCKED, "Locked", alias="locked", passworded=True, oauth_client_id="123")
    await add_server(conn, OPEN, "Open", is_default=True)
    # The member is offline on a hide-offline server: membership must not depend on visibility.
    await add_users(conn, LOCKED, {member_id: ("member", "offline", "#000000")})
    await add_users(conn, OPEN, {member_id: ("member", "online", "#000000")})


def a_member_id(sim: Simulator) -> int:
    guild = next(iter(sim.world.guilds.values()))
    return next(uid for uid in guild.members if uid != sim.world.bot_user.id)


async def test_token_of_a_member_is_admitted_and_forgery_refused(database_url, conn, sim, caplog, capsys):
    member = a_member_id(sim)
    await seed(conn, str(member))
    member_token = sim.issue_oauth_token(member)
    stranger_token = sim.issue_oauth_token(None)
    async with running(database_url, discord_api_base=sim.api_base) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        assert (await v.connect("locked"))["data"]["message"] == REQUIRED
        assert (await v.connect("locked", discordToken="  "))["data"]["message"] == REQUIRED
        # a made-up token with a forged user object naming the member
        forged = {"id": str(member), "username": "member"}
        answer = await v.connect("locked", discordToken="made-up", discordUser=forged)
        assert answer["data"]["message"] == FAILED
        # a real token of a non-member, claiming to be the member
        answer = await v.connect("locked", discordToken=stranger_token, discordUser=forged)
        assert answer["data"]["message"] == NOT_MEMBER
        # the member's own token (the user object is not even needed)
        join = await v.join("locked", discordToken=member_token)
        assert join["data"]["request"]["server"] == "locked" and join["data"]["clientId"] == "123"
        # a second time comes from the cache and still works; the socket stayed open throughout
        await v.join(LOCKED, discordToken=member_token, discordUser={"id": "1", "username": "evil"})
    logged = caplog.text + "".join(capsys.readouterr())
    assert "discord_auth_not_member" in logged  # the refusals are logged ...
    assert member_token not in logged and stranger_token not in logged  # ... without the tokens


async def test_refused_switch_keeps_the_current_server(database_url, conn, sim):
    member = a_member_id(sim)
    await seed(conn, str(member))
    stranger_token = sim.issue_oauth_token(None)
    async with running(database_url, discord_api_base=sim.api_base) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        await v.join()
        assert (await v.connect("locked", discordToken=stranger_token))["type"] == "error"
        await conn.execute("UPDATE discord_users SET status = 'dnd' WHERE server_id = $1", OPEN)
        assert (await v.expect("presence"))["server"] == OPEN


async def test_discord_unreachable_is_a_clear_error_within_the_timeout(database_url, conn):
    await seed(conn, "200000000000000001")
    # a port that accepts connections and never answers (a frozen Discord)
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(8)
    port = frozen.getsockname()[1]
    try:
        async with (
            running(
                database_url, discord_api_base=f"http://127.0.0.1:{port}/api/v10", oauth_timeout_s=0.5
            ) as server,
            Viewer.open(server) as v,
        ):
            await v.expect("server-list")
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await v.connect("locked", discordToken="anything")
            assert answer["type"] == "error" and "could not be reached" in answer["data"]["message"]
            assert loop.time() - started < 3
            # refused connections too
            frozen.close()
            answer = await v.connect("locked", discordToken="anything")
            assert "could not be reached" in answer["data"]["message"]
    finally:
        frozen.close()


async def test_discord_server_error_is_not_a_login_failure(database_url, conn):
    await seed(conn, "200000000000000001")

    async def broken(_request: web.Request) -> web.Response:
        return web.json_response({"message": "oops"}, status=502)

    app = web.Application()
    app.router.add_get("/api/v10/users/@me", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            running(database_url, discord_api_base=f"http://127.0.0.1:{port}/api/v10") as server,
            Viewer.open(server) as v,
        ):
            await v.expect("server-list")
            answer = await v.connect("locked", discordToken="anything")
            assert "could not be reached" in answer["data"]["message"]
    finally:
        await runner.cleanup()


THROTTLED = "Too many Discord logins are being checked right now. Please try again in a moment."
UNREACHABLE = "Discord could not be reached to check your login. Please try again in a moment."


async def test_junk_tokens_cannot_make_many_discord_calls(database_url, conn, sim):
    await seed(conn, str(a_member_id(sim)))
    sockets, per_socket = 20, 30
    async with running(
        database_url, discord_api_base=sim.api_base, oauth_calls_per_ip_per_s=2.0, oauth_calls_per_s=20.0
    ) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def hammer(n: int) -> list[str]:
            async with Viewer.open(server) as v:
                await v.expect("server-list")
                return [
                    (await v.connect("locked", discordToken=f"junk-{n}-{i}"))["data"]["message"]
                    for i in range(per_socket)
                ]

        answers = [a for batch in await asyncio.gather(*(hammer(n) for n in range(sockets))) for a in batch]
        elapsed = loop.time() - started
        calls = sim.oauth_calls
        cap = 2 + 2.0 * elapsed  # the address's burst plus its rate over the run
        print(
            f"\n{len(answers)} junk-token connects from one address in {elapsed:.2f}s: "
            f"{calls} Discord calls (cap {cap:.1f}), {answers.count(THROTTLED)} throttled"
        )
        assert len(answers) == sockets * per_socket
        assert set(answers) <= {FAILED, THROTTLED} and answers.count(THROTTLED) >= len(answers) - calls
        assert 1 <= calls <= cap
        # A refused token is remembered: asking again costs no call, from this address or any other.
        async with Viewer.open(server) as v:
            await v.expect("server-list")
            refused = next(f"junk-{n}-{i}" for n in range(sockets) for i in range(per_socket))
            before = sim.oauth_calls
            for _ in range(5):
                answer = await v.connect("locked", discordToken=refused)
                assert answer["data"]["message"] in (FAILED, THROTTLED)
            assert sim.oauth_calls == before


async def test_one_call_in_flight_per_token(database_url, conn, sim):
    member = a_member_id(sim)
    await seed(conn, str(member))
    token = sim.issue_oauth_token(member)
    async with running(database_url, discord_api_base=sim.api_base) as server:

        async def join() -> str:
            async with Viewer.open(server) as v:
                await v.expect("server-list")
                return str((await v.connect("locked", discordToken=token))["type"])

        assert await asyncio.gather(*(join() for _ in range(10))) == ["server-join"] * 10
        assert sim.oauth_calls == 1


async def test_discords_429_stops_calls_until_retry_after(database_url, conn, sim):
    member = a_member_id(sim)
    await seed(conn, str(member))
    async with running(database_url, discord_api_base=sim.api_base) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        sim.rate_limit_oauth(1.0)
        answer = await v.connect("locked", discordToken=sim.issue_oauth_token(member))
        assert answer["data"]["message"] == UNREACHABLE and sim.oauth_calls == 1
        # Until Retry-After has passed nobody calls Discord, whatever the token.
        for _ in range(5):
            answer = await v.connect("locked", discordToken=sim.issue_oauth_token(member))
            assert answer["data"]["message"] == UNREACHABLE
        assert sim.oauth_calls == 1
        token = sim.issue_oauth_token(member)

        async def admitted() -> bool:
            return bool((await v.connect("locked", discordToken=token))["type"] == "server-join")

        await wait_for(admitted, timeout=10, interval=0.2, message="admitted after Retry-After")
        assert sim.oauth_calls == 2
