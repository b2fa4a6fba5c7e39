"""The README's production quick start, followed as written, against the real Better Auth (issue #17, acceptance 1).

A fresh database that Better Auth's own migrations made, with no triggers; the variables and
commands of the README's "Running it" block (read from the README, so the test follows it when it
changes); a session signed in and signed out through Better Auth. By default ``gateway serve``
installs the triggers and every worker refuses the signed-out session within 100 ms; with
``GATEWAY_INSTALL_TRIGGERS=never`` it is refused within the bound ``/readyz`` reports.

Two settings differ from a bare environment, both test concerns: the rate limit stays off (the
polling below is a flood of failed lookups from one address), and the port is a free one rather
than 8080.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from gateway.postgres.triggers import VERSION
from tests.config import run_cli
from tests.support import ROOT, raw_http
from tests.support.better_auth import PASSWORD, BetterAuth
from tests.support.credentials import SECRET
from tests.support.server import Server, every_worker_listening, statuses
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import httpx

TRIGGERS_SQL = "select count(*) from pg_trigger where tgname like 'gateway%' and not tgisinternal"
BOUND = re.compile(r"a revoked session is refused within ([0-9]+(?:\.[0-9]+)?) s")


def quick_start() -> tuple[list[str], list[list[str]]]:
    """The README's "Running it" block: the variables it exports, and the ``gateway`` commands it runs."""
    section = ROOT.joinpath("README.md").read_text().split("\n## Running it\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    exports = [words[1].split("=", 1)[0] for words in lines if words[:1] == ["export"]]
    return exports, [words[1:] for words in lines if words[:1] == ["gateway"]]


@pytest.fixture
def better_auth(node_modules: Path, database: str) -> Iterator[BetterAuth]:
    """The real Better Auth on a fresh database: its migrations make the tables, nothing else is there."""
    del node_modules
    peer = BetterAuth(database)
    yield peer
    peer.stop()


async def start_as_the_readme_says(
    better_auth: BetterAuth, database: str, start_gateway: Callable[..., Server], extra: dict[str, str]
) -> Server:
    """Check there are no triggers, run ``check-config`` and ``serve`` as the README does, with its variables."""
    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval(TRIGGERS_SQL) == 0  # Better Auth's tables, and no triggers
    finally:
        await conn.close()
    exports, commands = quick_start()
    values = {"DATABASE_URL": database, "BETTER_AUTH_SECRET": SECRET, "BETTER_AUTH_URL": better_auth.origin}
    assert sorted(exports) == sorted(values)
    assert commands == [["check-config"], ["serve", "--workers", "2", "--port", "8080"]]
    env = values | extra
    checked = run_cli("check-config", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Server runs `gateway serve` with --workers and --port as GATEWAY_WORKERS and GATEWAY_PORT (the
    # same settings); "auto" undoes the tests' default of plain cookie names (auto picks them on http).
    return start_gateway(env | {"GATEWAY_SECURE_COOKIES": "auto"}, workers=int(commands[1][2]))


async def signed_in(better_auth: BetterAuth, client: httpx.AsyncClient) -> dict[str, str]:
    """Sign up, then sign in through Better Auth; the Cookie header the sign-in's Set-Cookie makes."""
    await better_auth.sign_up(client, "quick@example.com")
    r = await client.post(
        better_auth.url + "/api/auth/sign-in/email",
        json={"email": "quick@example.com", "password": PASSWORD},
        headers={"origin": better_auth.origin},
    )
    assert r.status_code == 200, r.text
    pair = next(h.split(";", 1)[0] for h in r.headers.get_list("set-cookie") if "session_token=" in h)
    assert pair.startswith("better-auth.session_token=")
    return {"cookie": pair}


async def sign_out(better_auth: BetterAuth, client: httpx.AsyncClient, cookie: dict[str, str]) -> float:
    """Sign out through Better Auth; the monotonic time its reply arrived."""
    r = await client.post(better_auth.url + "/api/auth/sign-out", headers=cookie | {"origin": better_auth.origin})
    replied = time.monotonic()
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    return replied


async def status(port: int, cookie: dict[str, str]) -> int:
    """The status of one /validate on a connection of its own.

    Written by hand: an ``httpx`` client per connection (as ``statuses`` makes) costs tens of
    milliseconds on a busy machine, too much beside the 100 ms being measured.
    """
    fields = [("host", "127.0.0.1"), ("cookie", cookie["cookie"])]
    return (await raw_http.send(port, "GET", "/validate", fields, whole=False)).status


async def every_one(gw: Server, cookie: dict[str, str], n: int = 24) -> set[int]:
    """The statuses of ``n`` requests at once, each on a fresh connection (so they spread over the workers)."""
    return set(await asyncio.gather(*(status(gw.port, cookie) for _ in range(n))))


async def refused_after(gw: Server, cookie: dict[str, str], since: float) -> tuple[float, float] | None:
    """When a round of 8 fresh connections, all refused, began and ended (from ``since``); None if any accepts."""
    began = time.monotonic() - since
    return (began, time.monotonic() - since) if await every_one(gw, cookie, 8) == {401} else None


async def refused_from(gw: Server, cookie: dict[str, str], since: float, bound_s: float) -> tuple[float, float]:
    """Assert that every request reaching any worker ``bound_s`` after ``since`` is refused.

    As tests/postgres/test_installer.py checks its bound: a round of requests sent at the mark (how
    long a round takes is the machine's, not the gateway's). Returns, for the record, when the first
    round of requests all refused began and ended.
    """
    measured = await eventually(lambda: refused_after(gw, cookie, since), within=bound_s + 2, interval=bound_s / 50)
    await asyncio.sleep(max(0.0, since + bound_s - time.monotonic()))
    assert await every_one(gw, cookie) == {401}
    return measured


async def test_quick_start_refuses_a_signed_out_session_on_every_worker_within_100_ms(
    better_auth: BetterAuth,
    database: str,
    start_gateway: Callable[..., Server],
    ba_client: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """As written (triggers installed at startup): a Better Auth sign-out is refused by every worker within 100 ms."""
    gw = await start_as_the_readme_says(better_auth, database, start_gateway, {})
    await eventually(lambda: every_worker_listening(gw.url), within=10)
    assert f"invalidation triggers: installed v{VERSION}" in gw.output()
    cookie = await signed_in(better_auth, ba_client)
    assert await statuses(gw.url, cookie) == {200}  # cached in every worker
    replied = await sign_out(better_auth, ba_client, cookie)
    began, ended = await refused_from(gw, cookie, replied, 0.1)
    record_property("refused_round_s", f"{began:.4f}-{ended:.4f}")
    await asyncio.sleep(0.5)
    assert await statuses(gw.url, cookie) == {401}  # and for good


async def test_quick_start_with_install_never_refuses_within_the_bound_readyz_reports(
    better_auth: BetterAuth,
    database: str,
    start_gateway: Callable[..., Server],
    ba_client: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """GATEWAY_INSTALL_TRIGGERS=never: /readyz is degraded, giving N s; a sign-out is refused everywhere within N s."""
    gw = await start_as_the_readme_says(better_auth, database, start_gateway, {"GATEWAY_INSTALL_TRIGGERS": "never"})

    async def bound() -> float | None:
        body: dict[str, Any] = (await ba_client.get(gw.url + "/readyz")).json()
        found = BOUND.search(body["degraded"].get("listener", ""))
        return float(found.group(1)) if found else None

    bound_s = await eventually(bound, within=10)
    assert 0 < bound_s <= 5  # the README's 5 s
    record_property("readyz_bound_s", bound_s)
    cookie = await signed_in(better_auth, ba_client)
    assert await statuses(gw.url, cookie) == {200}  # cached in every worker
    replied = await sign_out(better_auth, ba_client, cookie)
    began, ended = await refused_from(gw, cookie, replied, bound_s)
    record_property("refused_round_s", f"{began:.4f}-{ended:.4f}")
    await asyncio.sleep(0.5)
    assert await statuses(gw.url, cookie) == {401}  # and for good
    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval(TRIGGERS_SQL) == 0  # never means never
    finally:
        await conn.close()
