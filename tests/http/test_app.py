"""The HTTP contract, on a real ``gateway serve`` process over real sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from gateway.credentials.tokens import sign
from gateway.http.responses import MAX_HEADER_VALUE
from gateway.postgres import seed
from tests.support.credentials import SECRET
from tests.support.credentials import cookie as session_cookie
from tests.support.ports import free_port
from tests.support.postgres import create_database, drop_database, install_triggers
from tests.support.server import Server, running_gateway
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

IDENTITY = ("x-auth-request-user", "x-auth-request-email", "x-auth-request-name", "x-auth-request-session-id")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.fixture(scope="module")
async def app_db(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """One database with Better Auth's schema for this module's server."""
    dsn = await create_database(postgres_admin_dsn, "gw_app_")
    conn = await asyncpg.connect(dsn)
    await seed.create_schema(conn)
    await conn.close()
    await install_triggers(dsn)
    yield dsn
    await drop_database(postgres_admin_dsn, dsn)


@pytest.fixture(scope="module")
def server(app_db: str) -> Iterator[Server]:
    """A real gateway process on the module's database."""
    with running_gateway({"DATABASE_URL": app_db, "GATEWAY_L1_TTL_S": "1"}) as srv:
        yield srv
    assert srv.stop() in (0, -15)  # a clean exit (stop() again returns its status)


@pytest.fixture
async def conn(app_db: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(app_db)
    yield c
    await c.close()


async def new_session(conn: asyncpg.Connection, **user: Any) -> tuple[str, str]:
    """Seed a user and a live session; return (user id, token)."""
    uid = await seed.create_user(conn, email=user.pop("email", f"{seed.generate_id(8)}@example.com"), **user)
    return uid, await seed.create_session(conn, uid)


cookie = functools.partial(session_cookie, among_others=True)
"""The session cookie between two others, as browsers send it: the gateway must find it there."""


async def test_valid_cookie_gets_identity_headers(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    """A valid cookie gets 200, an empty body and every identity header, and nothing that defeats proxy caches."""
    uid, token = await new_session(conn, email="ada@example.com", name="Ada", role="admin")
    r = await client.get(server.url + "/validate", headers=cookie(token))
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["x-auth-request-user"] == uid
    assert r.headers["x-auth-request-email"] == "ada@example.com"
    assert r.headers["x-auth-request-name"] == "Ada"
    assert r.headers["x-auth-request-role"] == "admin"
    assert r.headers["x-auth-request-session-id"] not in ("", token)
    assert "set-cookie" not in r.headers
    assert "cache-control" not in r.headers


@pytest.mark.parametrize("method", METHODS)
async def test_any_method_and_subpath(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient, method: str
) -> None:
    """/validate and /validate/<anything> answer every method (Envoy keeps the original one)."""
    _, token = await new_session(conn)
    for path in ("/validate", "/validate/api/v1/items?x=1"):
        r = await client.request(method, server.url + path, headers=cookie(token), content=b"ignored body")
        assert r.status_code == 200, (method, path)
        r = await client.request(method, server.url + path)
        assert r.status_code == 401, (method, path)


async def test_every_credential_form(server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient) -> None:
    """The cookie, signed and raw bearer, and X-Session-Token all validate."""
    uid, token = await new_session(conn)
    signed = sign(token, SECRET)
    forms = [
        cookie(token, "better-auth.session_token"),
        {"authorization": f"Bearer {signed}"},
        {"authorization": f"bearer {quote(signed, safe='')}"},
        {"authorization": f"Bearer {token}"},
        {"x-session-token": signed},
        {"x-session-token": token},
    ]
    for headers in forms:
        r = await client.get(server.url + "/validate", headers=headers)
        assert r.status_code == 200, headers
        assert r.headers["x-auth-request-user"] == uid


async def test_refusals_are_401_with_no_store(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    """Forged, unknown, expired, banned and absent credentials get 401, WWW-Authenticate and no-store."""
    _, token = await new_session(conn)
    _, banned = await new_session(conn, banned=True)
    uid, _ = await new_session(conn)
    expired = await seed.create_session(conn, uid, expires_in=dt.timedelta(seconds=-1))
    cases = {
        "no_credentials": {},
        "bad_signature": cookie(token, secret="wrong-secret-wrong-secret-wrong-secret"),
        "unknown_session": cookie(seed.generate_id()),
        "expired": cookie(expired),
        "banned": cookie(banned),
        "malformed": {"authorization": "Bearer ' OR '1'='1"},
    }
    for reason, headers in cases.items():
        r = await client.get(server.url + "/validate", headers=headers)
        assert r.status_code == 401, reason
        assert r.headers["x-auth-reason"] == reason
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert not any(h in r.headers for h in IDENTITY)


async def test_invalid_credential_does_not_fall_through(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    """A bad bearer next to a good cookie is refused: present-but-invalid never falls through."""
    _, token = await new_session(conn)
    headers = cookie(token) | {"authorization": "Bearer " + sign(token, "wrong-secret-wrong-secret-wrong-secret")}
    r = await client.get(server.url + "/validate", headers=headers)
    assert r.status_code == 401


async def test_identity_headers_always_present_and_safe(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    """Unknown identity fields are sent empty; hostile names can't split or corrupt the response."""
    _, token = await new_session(conn, name="Evil\r\nX-Auth-Request-User: admin", role=None)
    r = await client.get(server.url + "/validate", headers=cookie(token))
    assert r.status_code == 200
    assert r.headers["x-auth-request-role"] == ""
    assert r.headers["x-auth-request-name"] == "Evil%0D%0AX-Auth-Request-User: admin"
    assert len(r.headers.get_list("x-auth-request-user")) == 1
    _, token = await new_session(conn, name="Zoë 李")
    r = await client.get(server.url + "/validate", headers=cookie(token))
    assert r.headers["x-auth-request-name"] == "Zoë %E6%9D%8E"
    # ASCII but not printable, and a line separator: no shortcut for printable text lets one through.
    _, token = await new_session(conn, name="a\tb\x7fc\x0bd\x1fe\u2028f")
    r = await client.get(server.url + "/validate", headers=cookie(token))
    assert r.headers["x-auth-request-name"] == "a%09b%7Fc%0Bd%1Fe%E2%80%A8f"


async def test_an_identity_value_past_the_bound_is_sent_empty(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    """A user's own name of megabytes is no header (escaping it held every user's requests): empty, on a miss and a
    hit; one at the bound is escaped as ever."""
    for name, expected in [
        ("\x01" * MAX_HEADER_VALUE, "%01" * MAX_HEADER_VALUE),
        ("\x01" * (MAX_HEADER_VALUE + 1), ""),
        ("\u4e2d" * (3 * 1024 * 1024), ""),
    ]:
        _, token = await new_session(conn, name=name)
        for _ in range(2):  # a miss, then a hit (the headers rendered once on the cache entry)
            r = await client.get(server.url + "/validate", headers=cookie(token))
            assert r.status_code == 200
            assert r.headers["x-auth-request-name"] == expected


async def test_json_validate(server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient) -> None:
    """POST /v1/validate takes a token in the body or the headers and answers JSON."""
    uid, token = await new_session(conn, email="json@example.com")
    url = server.url + "/v1/validate"
    for body in ({"token": token}, {"token": sign(token, SECRET)}, {"token": quote(sign(token, SECRET), safe="")}):
        r = await client.post(url, json=body)
        assert r.status_code == 200
        data = r.json()
        assert data["user"]["id"] == uid
        assert data["user"]["email"] == "json@example.com"
        assert "token" not in data["session"]
    r = await client.post(url, headers=cookie(token))
    assert r.status_code == 200
    r = await client.post(url, json={"token": seed.generate_id()})
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized", "reason": "unknown_session"}
    r = await client.post(url, json={})
    assert r.json()["reason"] == "no_credentials"


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b'{"token": 5}', 400),
        (b"[1,2]", 400),
        (b"\xff\xfe\x00", 400),
        (b"x" * 100_000, 413),
        (b'{"x":' + b"[" * 2_000 + b"]" * 2_000 + b"}", 400),  # past msgspec's depth: RecursionError, not a 500
    ],
)
async def test_json_validate_bad_bodies(server: Server, client: httpx.AsyncClient, content: bytes, status: int) -> None:
    """Bad JSON is 400, an oversized body 413, each with a JSON error."""
    r = await client.post(server.url + "/v1/validate", content=content)
    assert r.status_code == status
    assert r.json()["error"] == "bad_request"


async def test_routing(server: Server, client: httpx.AsyncClient) -> None:
    """Unknown paths are 404, wrong methods on JSON routes 405 with Allow; health needs no backend."""
    assert (await client.get(server.url + "/nope")).status_code == 404
    r = await client.get(server.url + "/v1/validate")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert (await client.post(server.url + "/api/auth/get-session")).status_code == 405
    assert (await client.get(server.url + "/healthz")).json() == {"status": "ok"}

    async def ready() -> httpx.Response | None:
        r = await client.get(server.url + "/readyz")
        return r if r.json()["ok"] == ["postgres", "listener"] else None

    r = await eventually(ready)
    assert r.status_code == 200
    assert r.json() == {"ok": ["postgres", "listener"], "degraded": {}, "failing": {}}


async def test_get_session_shape(server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient) -> None:
    """get-session answers Better Auth's JSON (with the token) or null, always no-store."""
    uid, token = await new_session(conn, email="gs@example.com")
    r = await client.get(server.url + "/api/auth/get-session", headers=cookie(token))
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["session"]["token"] == token
    assert body["session"]["userId"] == uid
    assert body["user"]["email"] == "gs@example.com"
    r = await client.get(server.url + "/api/auth/get-session", headers=cookie(token, secret="x" * 40))
    assert r.status_code == 200
    assert r.json() is None


def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are and return what comes back (hostile input httpx would refuse to send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


@pytest.mark.parametrize(
    "header",
    [
        b"Cookie: better-auth.session_token=\xff\xfe\xfd.\xc3\x28",  # not UTF-8
        b"Authorization: Bearer \x00\x01\x02",
        b"Cookie: " + b"; ".join(b"c%d=v" % i for i in range(2000)),
        b'X-Session-Token: \' OR 1=1; DROP TABLE "session"; --',
        b"Cookie: better-auth.session_token=%E0%A4%A.%ZZ",
    ],
)
def test_hostile_headers_get_4xx(server: Server, header: bytes) -> None:
    """Non-UTF-8, control characters, thousands of cookies and injection attempts get a 4xx."""
    reply = raw_request(
        server.port, b"GET /validate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n"
    )
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]


def test_huge_header_is_refused_and_server_survives(server: Server) -> None:
    """A 1 MB header is refused (4xx or closed), and the server keeps answering."""
    try:
        reply = raw_request(
            server.port, b"GET /validate HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 1_000_000 + b"\r\n\r\n"
        )
    except (ConnectionResetError, BrokenPipeError):
        reply = b""
    if reply:
        assert 400 <= int(reply.split(b" ", 2)[1]) < 500
    assert httpx.get(server.url + "/healthz").status_code == 200


async def test_postgres_unreachable_is_503_never_401(start_gateway: Any, client: httpx.AsyncClient) -> None:
    """With Postgres down, a well-signed credential gets 503 + Retry-After; garbage still gets 401."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    srv = start_gateway({"DATABASE_URL": dead, "GATEWAY_DB_TIMEOUT_S": "0.5", "GATEWAY_STARTUP_WAIT_S": "0"})
    r = await client.get(srv.url + "/validate", headers=cookie(seed.generate_id()))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    r = await client.post(srv.url + "/v1/validate", json={"token": seed.generate_id()})
    assert r.status_code == 503
    assert r.json()["reason"] == "backend_unavailable"
    r = await client.get(srv.url + "/validate", headers=cookie(seed.generate_id(), secret="y" * 40))
    assert r.status_code == 401
    r = await client.get(srv.url + "/readyz")
    assert r.status_code == 503
    assert "postgres" in r.json()["failing"]
    assert (await client.get(srv.url + "/healthz")).status_code == 200


async def test_cached_sessions_validate_concurrently(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    """Many concurrent requests over one server all get the same right answer."""
    sessions = [await new_session(conn) for _ in range(20)]
    requests = [client.get(server.url + "/validate", headers=cookie(t)) for _, t in sessions for _ in range(10)]
    replies = await asyncio.gather(*requests)
    assert [r.status_code for r in replies] == [200] * 200
    expected = [uid for uid, _ in sessions for _ in range(10)]
    assert [r.headers["x-auth-request-user"] for r in replies] == expected


def trickle(port: int, head: bytes, body: bytes, every_s: float, give_up_s: float) -> tuple[bytes, float, bool]:
    """Send ``head``, then ``body`` a byte every ``every_s``; return (the reply, when it came, closed after)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=every_s) as s:
        s.sendall(head)
        for byte in body:
            try:
                s.sendall(bytes([byte]))
                reply = s.recv(65536)
            except TimeoutError:
                if time.monotonic() - started > give_up_s:
                    return b"", time.monotonic() - started, False
                continue
            except (ConnectionResetError, BrokenPipeError):
                return b"", time.monotonic() - started, True
            answered = time.monotonic() - started
            s.settimeout(2)
            try:
                while chunk := s.recv(65536):  # the rest of the reply, then the server's close
                    reply += chunk
            except TimeoutError:
                return reply, answered, False
            except ConnectionResetError:
                pass
            return reply, answered, True
    return b"", time.monotonic() - started, False


async def test_trickled_body_is_cut_off(app_db: str, start_gateway: Any, client: httpx.AsyncClient) -> None:
    """A /v1/validate body trickled a byte at a time gets 408 at the body timeout and its connection is closed."""
    gw: Server = start_gateway({"DATABASE_URL": app_db, "GATEWAY_BODY_READ_TIMEOUT_S": "1"})
    body = b'{"token": "' + b"a" * 32 + b'"}'
    head = b"POST /v1/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    reply, after, closed = await asyncio.to_thread(trickle, gw.port, head % len(body), body, 0.25, 8)
    assert reply.startswith(b"HTTP/1.1 408 "), (reply[:200], after)
    assert 0.9 < after < 3, after  # one second of trickling, not the whole body's 11 seconds
    assert closed  # the slot is given back: the server hangs up
    assert b'"request_timeout"' in reply
    assert (await client.get(gw.url + "/healthz")).status_code == 200


async def test_a_known_cookie_header_speaks_only_for_itself(
    server: Server, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    """Red team of the Cookie-header memo (``pipeline.KnownCookies``): it answers as ``find_credential`` would.

    Once a valid cookie's header is remembered, nothing sent beside it or in a lookalike header
    borrows it: a duplicated name is read first-wins (better-call), a bearer or X-Session-Token
    beside it wins (Better Auth's order), another Authorization scheme or an empty bearer does
    not, and a revoked session is refused however well its header is known.
    """
    _, token = await new_session(conn)
    _, other = await new_session(conn)
    name = "better-auth.session_token"
    valid = quote(sign(token, SECRET), safe="")
    forged = quote(sign(token, "wrong-secret-wrong-secret-wrong-secret"), safe="")
    known = {"cookie": f"{name}={valid}"}
    for _ in range(3):  # a miss, then hits: the header is remembered
        assert (await client.get(server.url + "/validate", headers=known)).status_code == 200
    expected = {
        f"{name}={valid}; {name}={forged}": 200,  # the first occurrence wins, as in better-call
        f"{name}={forged}; {name}={valid}": 401,
        f"{name}={valid} ; x=1": 200,  # trimmed: the same credential, another header
        f"{name}= {forged}; {name}={valid}": 401,
    }
    for header, status in expected.items():
        for _ in range(2):
            r = await client.get(server.url + "/validate", headers={"cookie": header})
            assert r.status_code == status, header
    beside = {
        "x-session-token": (sign(seed.generate_id(), SECRET), 401),  # an unknown session: it wins, refused
        "authorization": (f"Bearer {sign(other, SECRET)}", 200),
    }
    for field, (value, status) in beside.items():
        for _ in range(2):
            r = await client.get(server.url + "/validate", headers=known | {field: value})
            assert r.status_code == status, field
    for ignored in ("Basic dXNlcjpwYXNz", "Bearer \xa0", "Bearer"):  # no bearer credential: the cookie counts
        sent = [(b"cookie", known["cookie"].encode()), (b"authorization", ignored.encode("latin-1"))]
        r = await client.get(server.url + "/validate", headers=sent)  # bytes: a no-break space is JS whitespace
        assert r.status_code == 200, ignored
    await conn.execute('delete from "session" where token = $1', token)

    async def refused() -> bool:
        return (await client.get(server.url + "/validate", headers=known)).status_code == 401

    await eventually(refused)
