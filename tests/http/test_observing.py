"""What operators see of real requests: IDs in decision and access lines, no credential, series over workers."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support.credentials import SECRET, cookie
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from tests.support.server import Server

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ENDPOINTS = ("validate", "get_session", "v1_validate")
HOSTILE_ID = 'x" forged="1 \\u0000'  # a quote, spaces, a backslash: not an ID, never echoed


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=5) as c:  # a fresh connection: any worker may answer
        text = (await c.get(url + "/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def lines(server: Server, logger: str) -> list[dict[str, Any]]:
    found = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            parsed = json.loads(line)
            if parsed["logger"] == logger:
                found.append(parsed)
    return found


async def test_a_requests_id_is_in_its_decision_and_access_lines_and_no_credential_anywhere(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """X-Request-ID, else traceparent's trace ID, else a made ID: in both lines, echoed; no credential logged."""
    user = await seed.create_user(db, email="access@example.com")
    token = await seed.create_session(db, user)
    env = {
        "DATABASE_URL": database,
        "GATEWAY_PROXY": "traefik",
        "GATEWAY_ACCESS_LOG": "on",
        "GATEWAY_REQUEST_ID_HEADER": "on",
        "GATEWAY_LOG_LEVEL": "debug",  # every decision line
        "GATEWAY_LOG_FORMAT": "json",
    }
    gw: Server = start_gateway(env)
    original = {
        "x-forwarded-method": "DELETE",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "app.example.com",
        "x-forwarded-uri": "/admin/users?token=QUERYSECRET0123&api_key=QUERYKEY4567",
        "x-api-key": "APIKEYVALUE89abcdef",
    }
    bearer = f"Bearer {sign(token, SECRET)}"
    async with httpx.AsyncClient(timeout=5) as c:
        asked = [
            (cookie(token, among_others=True) | {"x-request-id": "req-cookie-1"}, "req-cookie-1"),
            ({"authorization": bearer, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}, TRACE),
            ({"authorization": bearer, "x-request-id": HOSTILE_ID}, None),
            ({"authorization": "Bearer not-a-token"}, None),
        ]
        answered = []
        for headers, _ in asked:
            r = await c.get(gw.url + "/validate", headers=original | headers)
            answered.append((r.status_code, r.headers["x-request-id"]))
    assert [status for status, _ in answered] == [200, 200, 200, 401]
    ids = [rid for _, rid in answered]
    assert ids[:2] == ["req-cookie-1", TRACE]
    assert len(set(ids)) == 4
    assert HOSTILE_ID not in ids

    await eventually(lambda: len(lines(gw, "gateway.access")) >= 4, within=5)
    gw.stop()
    access = {line["request_id"]: line for line in lines(gw, "gateway.access")}
    decisions = {line["request_id"]: line for line in lines(gw, "gateway.lookup.decision")}
    assert set(ids) <= access.keys()
    assert set(ids) <= decisions.keys()
    first = access["req-cookie-1"]
    assert {k: first[k] for k in ("user_id", "method", "host", "path", "status", "reason")} == {
        "user_id": user,
        "method": "DELETE",
        "host": "app.example.com",
        "path": "/admin/users",
        "status": 200,
        "reason": "ok",
    }
    assert access[ids[3]]["user_id"] == ""
    assert access[ids[3]]["status"] == 401
    assert decisions[TRACE]["trace_id"] == TRACE
    text = gw.output()
    for secret in (
        token,
        sign(token, SECRET),
        quote(sign(token, SECRET), safe=""),
        bearer,
        SECRET,
        "QUERYSECRET0123",
        "QUERYKEY4567",
        "APIKEYVALUE89abcdef",
        "not-a-token",
        "forged",
    ):
        assert secret not in text, secret


async def test_the_latency_histogram_and_in_flight_gauge_add_up_over_workers(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """With 2 workers: each decision is one observation (hit path included); requests awaiting lookups are in flight."""
    user = await seed.create_user(db, email="latency@example.com")
    tokens = [await seed.create_session(db, user) for _ in range(4)]
    env = {"DATABASE_URL": database, "GATEWAY_METRICS_FLUSH_S": "0.1", "GATEWAY_DB_TIMEOUT_S": "20"}
    gw: Server = start_gateway(env, workers=2)
    sent = 0
    for _ in range(3):
        for token in tokens:
            async with httpx.AsyncClient(timeout=5) as c:  # a connection each: both workers answer
                assert (await c.get(gw.url + "/validate", headers=cookie(token))).status_code == 200
                assert (await c.post(gw.url + "/v1/validate", json={"token": token})).status_code == 200
            sent += 2

    async def counted() -> dict[Any, float] | None:
        now = await scrape(gw.url)
        return now if total(now, "gateway_decision_seconds_count") >= sent else None

    samples = await eventually(counted, within=5)
    assert total(samples, "gateway_decision_seconds_count") == sent
    assert total(samples, "gateway_decision_seconds_count", endpoint="validate", tier="l1") >= 1  # the hit path
    assert total(samples, "gateway_decision_seconds_count", tier="postgres") >= 1
    assert total(samples, "gateway_decision_seconds_count", endpoint="v1_validate") == sent / 2
    assert total(samples, "gateway_requests_in_flight") == 0

    lock = await asyncpg.connect(database)
    try:
        transaction = lock.transaction()
        await transaction.start()
        await lock.execute('lock table "session" in access exclusive mode')  # lookups now wait on Postgres
        async with httpx.AsyncClient(timeout=30) as c:
            waiting = [
                asyncio.ensure_future(c.post(gw.url + "/v1/validate", json={"token": seed.generate_id()}))
                for _ in range(5)
            ]

            async def five_in_flight() -> bool:
                return total(await scrape(gw.url), "gateway_requests_in_flight") == 5

            await eventually(five_in_flight, within=10)
            await transaction.rollback()
            assert {r.status_code for r in await asyncio.gather(*waiting)} == {401}
    finally:
        await lock.close()


async def test_hits_served_from_l1_write_their_access_line_and_echo_their_id(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """A session's second request on each endpoint is an L1 hit: its line (user, original request, ID), no secret."""
    user = await seed.create_user(db, email="hits@example.com")
    token = await seed.create_session(db, user)
    env = {
        "DATABASE_URL": database,
        "GATEWAY_PROXY": "traefik",
        "GATEWAY_ACCESS_LOG": "on",
        "GATEWAY_REQUEST_ID_HEADER": "on",
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_METRICS_FLUSH_S": "0.1",
    }
    gw: Server = start_gateway(env)
    original = {"x-forwarded-method": "PUT", "x-forwarded-proto": "https", "x-forwarded-host": "app.example.com"}
    original |= {"x-forwarded-uri": "/docs/1?token=QUERYSECRET0123"}
    bearer = {"authorization": f"Bearer {sign(token, SECRET)}"}
    async with httpx.AsyncClient(timeout=5) as c:
        for n in (1, 2):
            r = await c.get(gw.url + "/validate", headers=original | bearer | {"x-request-id": f"fa-{n}"})
            assert (r.status_code, r.headers["x-request-id"]) == (200, f"fa-{n}")
            r = await c.get(gw.url + "/api/auth/get-session", headers=cookie(token) | {"x-request-id": f"gs-{n}"})
            assert r.json()["user"]["id"] == user
            r = await c.post(gw.url + "/v1/validate", json={"token": token}, headers={"x-request-id": f"v1-{n}"})
            assert r.status_code == 200
        made = (await c.get(gw.url + "/validate", headers=bearer)).headers["x-request-id"]  # a hit: an ID made

    async def hits() -> bool:  # the second of each (and the third /validate) was an L1 hit
        now = await scrape(gw.url)
        counts = [total(now, "gateway_decision_seconds_count", endpoint=e, tier="l1") for e in ENDPOINTS]
        return counts == [2, 1, 1]

    await eventually(hits, within=5)

    await eventually(lambda: len(lines(gw, "gateway.access")) >= 7, within=5)
    access = {line["request_id"]: line for line in lines(gw, "gateway.access")}
    assert {rid: access[rid]["user_id"] for rid in ("fa-2", "gs-2", "v1-2", made)} == dict.fromkeys(
        ("fa-2", "gs-2", "v1-2", made), user
    )
    fields = ("method", "host", "path", "status", "reason")
    assert [access[rid][k] for k in fields for rid in ("fa-1", "fa-2")] == [
        "PUT", "PUT", "app.example.com", "app.example.com", "/docs/1", "/docs/1", 200, 200, "ok", "ok"
    ]  # fmt: skip
    assert [access["gs-2"][k] for k in fields] == [
        "GET",
        gw.url.removeprefix("http://"),
        "/api/auth/get-session",
        200,
        "ok",
    ]
    assert access["v1-2"]["path"] == "/v1/validate"
    text = gw.output()
    for secret in (token, sign(token, SECRET), quote(sign(token, SECRET), safe=""), SECRET, "QUERYSECRET0123"):
        assert secret not in text


async def test_lines_of_hits_just_before_shutdown_are_not_lost(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """Hits answered, then SIGTERM at once: every one of their lines is in the output, in order."""
    user = await seed.create_user(db, email="shutdown@example.com")
    token = await seed.create_session(db, user)
    env = {"DATABASE_URL": database, "GATEWAY_ACCESS_LOG": "on", "GATEWAY_LOG_FORMAT": "json"}
    gw: Server = start_gateway(env)
    bearer = {"authorization": f"Bearer {sign(token, SECRET)}"}
    sent = [f"last-{n}" for n in range(300)]  # more than a batch
    async with httpx.AsyncClient(timeout=5) as c:
        for rid in sent:
            assert (await c.get(gw.url + "/validate", headers=bearer | {"x-request-id": rid})).status_code == 200
    assert gw.stop() == 0
    written = [line["request_id"] for line in lines(gw, "gateway.access")]
    assert written == sent
