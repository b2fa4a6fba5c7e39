"""Hostile credentials over HTTP, in every position and at every endpoint, to real ``gateway serve`` processes.

A seeded generator (the same cases on every run) makes a few thousand credentials out of arbitrary
Unicode (reaching the gateway percent-encoded in headers, and as JSON escapes, lone surrogates
included, in a ``/v1/validate`` body), control characters, overlong values, mutations of a valid
signed token, and structurally hostile cookie caches and JWTs (deep nesting, huge numbers,
duplicate keys, invalid UTF-8), some of them signed with the real keys so that what lies behind
a signature is tried too. They go as the session cookie, as a cookie cache beside a valid session
cookie (each strategy), as a bearer token, as ``X-Session-Token`` and as the JSON body's
``token``, to ``/validate``, ``/v1/validate`` and ``/api/auth/get-session``.

No answer may be a 5xx, the servers' logs may hold no traceback and no error, every 200 is the
one real user's (or, behind a real signature, the signer's), and a valid session still validates
afterwards.

Header values go percent-encoded (as browsers and Better Auth send Unicode) or as raw bytes:
UTF-8, Latin-1, invalid UTF-8. granian itself refuses control characters (a bare 400): those are
counted as not having reached the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import string
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.core.test_strict_json import b64url, compact, jwe, jws
from tests.support.credentials import SECRET, cookie, cookie_pair

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg
    import httpx

    from tests.support.server import Server

CASES = 3000
TOKEN_COOKIE = "better-auth.session_token"
DATA_COOKIE = "better-auth.session_data"
AUDIENCE = "https://app.example"
STRATEGIES = ("compact", "jwt", "jwe")

CHARS = [
    *"\x00\x01\x08\t\x0b\x1b\x1f\x7f\x80\x85\xa0\xad\xe9\xff",
    *"\u0100\u0663\u00b2\u2028\u202e\u200b\ufeff\ufffd\uffff\U0001f600\U0010ffff",
    *" \"';,=.%+/-_\\{}[]:",
    "\ud800",
    "\udfff",
]
ESCAPES = [
    "%", "%2", "%zz", "%00", "%0A", "%0D", "%25", "%2B", "%2F", "%3D", "%3B", "%22",
    "%C3%A9", "%C3", "%ff", "%ED%A0%80", "%F4%90%80%80", "%E2%80%A8", "%EF%BB%BF", "%C0%AE",
]  # fmt: skip
JSON_JUNK = [
    "NaN", "Infinity", "-Infinity", "1e999", "-0", "1" + "0" * 400, "1" * 5000, "[" * 3000, "{" * 10,
    '"\\ud800"', '"\\u0000"', "null", "true", "[]", "{}", '"é"', '"2099-13-45T25:61:61.000Z"',
    '"9999-12-31T23:59:59.999Z"', '"0000-01-01T00:00:00Z"', '"2024-01-01T00:00:00Z"', '{"a":1,"a":2}',
]  # fmt: skip


class Case(NamedTuple):
    """One request: where the hostile value sits, and whether a real signature may vouch for it."""

    gateway: str  # "plain" or a cookie-cache strategy
    method: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    signed: bool  # a real key signed it: a 200 may carry the identity it names


class Fixture(NamedTuple):
    """What the generator builds on: the real session, its cookie cache in each strategy, the JWT key."""

    token: str
    user_id: str
    data: dict[str, str]  # a valid session_data value per strategy
    payload: dict[str, Any]  # the cookie caches' payload {session, user, updatedAt, version}
    jwt_key: ed25519.Ed25519PrivateKey


PIECES: list[Callable[[random.Random], str]] = [
    lambda rng: rng.choice(CHARS),
    lambda rng: rng.choice(ESCAPES),
    lambda rng: chr(rng.randrange(0x110000)),
    lambda rng: "".join(rng.choices(string.ascii_letters + string.digits + "+/=-_", k=rng.randrange(1, 50))),
    lambda rng: rng.choice(CHARS) * rng.randrange(1, 3000),  # overlong
    lambda rng: "eyJ" + b64url(rng.choice(JSON_JUNK)),
    lambda rng: rng.choice([".", "..", "=", "%3D", '"', ";", " ", "Bearer ", "\t"]),
    lambda rng: seed.generate_id(rng.choice([31, 32, 33])),
]


def piece(rng: random.Random) -> str:
    """One hostile fragment."""
    return rng.choice(PIECES)(rng)


def soup(rng: random.Random) -> str:
    return "".join(piece(rng) for _ in range(rng.randrange(1, 12)))


def mutate(rng: random.Random, value: str) -> str:
    """``value`` with one hostile change: a character replaced, something inserted, cut, or re-encoded."""
    at = rng.randrange(len(value) + 1)
    changes: list[Callable[[], str]] = [
        lambda: value[:at] + piece(rng) + value[at + 1 :],
        lambda: value[:at] + piece(rng) + value[at:],
        lambda: value[:at],
        lambda: value + piece(rng),
        lambda: quote(value, safe=""),  # percent-encoded (once more)
        lambda: f'"{value}"',
        lambda: value[:at] + rng.choice(CHARS) + value[at:],
    ]
    return rng.choice(changes)()


def signed_value(rng: random.Random, token: str) -> str:
    """``<token>.<44 characters>``: the exact shape a signature check takes, with hostile characters in it."""
    body = list("A" * 43)
    for _ in range(rng.randrange(1, 4)):
        body[rng.randrange(43)] = rng.choice(CHARS[:30])
    return token + "." + "".join(body) + rng.choice(["=", "%3D", "\u00e9"])


def credential(rng: random.Random, fx: Fixture) -> str:
    """A hostile session credential (cookie, bearer, header or body)."""
    kind = rng.randrange(6)
    if kind == 0:
        return mutate(rng, sign(fx.token, SECRET))
    if kind == 1:
        return mutate(rng, quote(sign(fx.token, SECRET), safe=""))
    if kind == 2:
        return signed_value(rng, rng.choice([fx.token, seed.generate_id()]))
    if kind == 3:
        return ".".join(soup(rng) for _ in range(rng.choice([2, 3, 3, 5])))
    if kind == 4:
        return mutate(rng, hostile_jwt(rng, fx)[0])
    return soup(rng)


def hostile_json(rng: random.Random, fields: dict[str, Any]) -> str:
    """JSON text of ``fields`` with some values (or the text itself) replaced by hostile JSON."""
    parts = []
    for key, value in fields.items():
        text = rng.choice(JSON_JUNK) if rng.random() < 0.3 else json.dumps(value)
        parts.append(f"{json.dumps(key)}:{text}")
        if rng.random() < 0.05:
            parts.append(f"{json.dumps(key)}:{rng.choice(JSON_JUNK)}")  # a duplicate key
    return "{" + ",".join(parts) + "}"


def payload(rng: random.Random, fx: Fixture) -> str:
    """A cookie-cache payload: the real one, its parts hostile."""
    session = hostile_json(rng, fx.payload["session"])
    user = hostile_json(rng, fx.payload["user"])
    version = rng.choice(['"1"', '"2"', "1", "null", "[]"])
    return f'{{"session":{session},"user":{user},"updatedAt":{rng.choice(["1", "NaN", "1e999"])},"version":{version}}}'


def data_value(rng: random.Random, fx: Fixture, strategy: str) -> tuple[str, bool]:
    """A hostile session_data for ``strategy``, and whether it carries a real signature."""
    kind = rng.randrange(5)
    if kind == 0:
        return mutate(rng, fx.data[strategy]), False
    if kind == 1:  # signed with the real secret over a hostile payload: what lies behind the signature
        text = payload(rng, fx)
        if strategy == "compact":
            return compact(text, SECRET), True
        exp = rng.choice(["9999999999", "1" + "0" * 400, "NaN", '"x"'])
        claims = text[:-1] + f',"iat":1,"exp":{exp}}}'
        return (jws(claims, secret=SECRET) if strategy == "jwt" else jwe(claims, SECRET)), True
    if kind == 2:
        return b64url('{"session":' + payload(rng, fx)[:-1] + soup(rng)), False
    if kind == 3:
        return ".".join(b64url(rng.choice(JSON_JUNK)) for _ in range(rng.choice([3, 5]))), False
    return soup(rng), False


def hostile_jwt(rng: random.Random, fx: Fixture) -> tuple[str, bool]:
    """A JWT of the JWT plugin: forged, or signed with its real key over hostile claims."""
    claims = {"sub": fx.user_id, "aud": AUDIENCE, "exp": int(time.time()) + 600, "id": fx.user_id, "email": "x@y"}
    text = hostile_json(rng, claims)
    head = rng.choice(['{"alg":"EdDSA","kid":"k1"}', '{"alg":"none","kid":"k1"}', '{"kid":"k1","kid":"k2"}'])
    head = head if rng.random() < 0.8 else rng.choice(JSON_JUNK)
    signing = f"{b64url(head)}.{b64url(text)}"
    if rng.random() < 0.5:
        return signing + "." + b64url(fx.jwt_key.sign(signing.encode())), True
    return signing + "." + b64url(soup(rng)), False


def header_bytes(value: str, rng: random.Random) -> bytes:
    """A header value: mostly as a browser sends one (what is not visible ASCII percent-encoded), else raw bytes."""
    if rng.random() < 0.7:
        return "".join(c if " " <= c <= "~" else quote(c, errors="surrogatepass") for c in value).encode()
    encoded = value.encode("latin-1", "replace") if rng.random() < 0.3 else value.encode("utf-8", "surrogatepass")
    return encoded.replace(b"\r", b"").replace(b"\n", b"")  # (a line break would end the header)


def cookie_case(rng: random.Random, fx: Fixture, gateway: str) -> tuple[bytes, bool]:
    """A Cookie header: a hostile session cookie, or a valid one beside a hostile cookie cache."""
    if gateway == "plain" or rng.random() < 0.2:
        name = rng.choice([TOKEN_COOKIE] * 8 + ["__Secure-" + TOKEN_COOKIE, TOKEN_COOKIE.upper()])
        return header_bytes(f"theme=dark; {name}={credential(rng, fx)}; {soup(rng)}", rng), False
    value, signed = data_value(rng, fx, gateway)
    token = cookie_pair(fx.token)
    if rng.random() < 0.25:
        at = rng.randrange(len(value) + 1)
        names = [rng.choice(["0", "1", "00", "-1", "1e3", "99999999999", "\u00b2", "0x1"]) for _ in range(2)]
        data = f"{DATA_COOKIE}.{names[0]}={value[:at]}; {DATA_COOKIE}.{names[1]}={value[at:]}"
    else:
        data = f"{DATA_COOKIE}={value}"
    return header_bytes(f"{token}; {data}", rng), signed


def make_case(rng: random.Random, fx: Fixture) -> Case:
    """One hostile request."""
    gateway = rng.choice(["plain", *STRATEGIES])
    position = rng.choice(["cookie", "cookie", "bearer", "header", "body"])
    path = rng.choice([b"/validate", b"/validate/app/x", b"/v1/validate", b"/api/auth/get-session"])
    if position == "body":
        path = b"/v1/validate"
    methods = [b"GET", b"GET", b"HEAD"] + ([b"POST", b"PUT"] if path.startswith(b"/validate") else [])
    method = b"POST" if path == b"/v1/validate" else rng.choice(methods)
    headers: list[tuple[bytes, bytes]] = []
    body, signed = b"", False
    if position == "cookie":
        cookie, signed = cookie_case(rng, fx, gateway)
        headers.append((b"Cookie", cookie))
    elif position == "bearer":
        token, signed = hostile_jwt(rng, fx) if rng.random() < 0.3 else (credential(rng, fx), False)
        scheme = rng.choice(["Bearer ", "bearer ", "BEARER  ", "Bearer\t", "Basic "])
        headers.append((b"Authorization", header_bytes(scheme + token, rng)))
    elif position == "header":
        headers.append((b"X-Session-Token", header_bytes(credential(rng, fx), rng)))
    else:
        token, signed = hostile_jwt(rng, fx) if rng.random() < 0.2 else (credential(rng, fx), False)
        value: Any = token if rng.random() < 0.9 else rng.choice([1, None, [token], {"t": token}, 1e308])
        ascii_only = rng.random() < 0.7
        body = json.dumps({"token": value}, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        headers.append((b"Content-Type", b"application/json"))
    return Case(gateway, method, path, headers, body, signed)


def exchange(port: int, request: bytes) -> bytes:
    """Send one request on a connection of its own and read the answer until the server closes it.

    (Not half-closing the connection: granian drops a request whose client has shut its side.)
    """
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(request)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:  # reset after answering early (a body it would not read): keep what came
            pass
    return b"".join(chunks)


def request_bytes(case: Case) -> bytes:
    lines = [case.method + b" " + case.path + b" HTTP/1.1", b"Host: gw", b"Connection: close"]
    lines += [name + b": " + value for name, value in case.headers]
    if case.body or case.method == b"POST":
        lines.append(b"Content-Length: " + str(len(case.body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + case.body


class Answer(NamedTuple):
    """A parsed reply; ``status`` 0 when the server closed the connection without one."""

    status: int
    headers: dict[str, str]
    body: bytes


def parse(reply: bytes) -> Answer:
    if not reply:
        return Answer(0, {}, b"")
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    pairs = (line.partition(b":") for line in lines[1:])
    headers = {k.strip().lower().decode(): v.strip().decode("latin-1") for k, _, v in pairs}
    return Answer(int(lines[0].split(b" ")[1]), headers, body)


def reached_gateway(case: Case, answer: Answer) -> bool:
    """Whether the gateway judged the credential (200 or 401, or a body it refused to parse as JSON).

    Not counted: granian's own refusals (a bare 400) and bodies over the size limit (413).
    """
    judged = answer.status in (200, 401)
    return judged or (case.body != b"" and answer.status == 400 and answer.body.startswith(b'{"error"'))


def identity(case: Case, answer: Answer) -> str | None:
    """The user id a 200 names."""
    if case.path.startswith(b"/validate"):
        return answer.headers.get("x-auth-request-user")
    if case.method == b"HEAD":
        return None
    decoded = json.loads(answer.body)
    return None if decoded is None else decoded["user"]["id"]


def send_all(cases: list[Case], servers: dict[str, Server]) -> list[Answer]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda c: parse(exchange(servers[c.gateway].port, request_bytes(c))), cases))


async def prepare(db: asyncpg.Connection) -> tuple[str, str, ed25519.Ed25519PrivateKey]:
    """The real user and session, and the JWT plugin's key in its table (before the gateways read it)."""
    user_id = await seed.create_user(db, email="fuzz@example.com", role="user", banned=False)
    token = await seed.create_session(db, user_id)
    key = ed25519.Ed25519PrivateKey.generate()
    public = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())
    await db.execute(
        'create table "jwks" ("id" text primary key, "publicKey" text not null, "privateKey" text not null,'
        ' "createdAt" timestamptz not null, "expiresAt" timestamptz, "alg" text, "crv" text)'
    )
    await db.execute("""insert into "jwks" values ('k1', $1, 'never read', now(), null, 'EdDSA', 'Ed25519')""", public)
    return user_id, token, key


async def fixture(client: httpx.AsyncClient, plain: Server, user_id: str, token: str, key: Any) -> Fixture:
    """The real session, its cookie cache in each strategy (its payload as get-session shows it), the JWT key."""
    answer = (await client.get(plain.url + "/api/auth/get-session", headers=cookie(token))).json()
    body = {"session": answer["session"], "user": answer["user"], "updatedAt": 1, "version": "1"}
    text = json.dumps(body, separators=(",", ":"))
    claims = text[:-1] + f',"iat":{int(time.time())},"exp":{int(time.time()) + 600}}}'
    data = {"compact": compact(text, SECRET), "jwt": jws(claims, secret=SECRET), "jwe": jwe(claims, SECRET)}
    return Fixture(token, user_id, data, body, key)


async def test_hostile_credentials_in_every_position_never_5xx(
    db: asyncpg.Connection, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """3,000 hostile credentials, every position and endpoint: no 5xx, no traceback or error, no other identity."""
    user_id, token, key = await prepare(db)
    base = {"DATABASE_URL": database, "GATEWAY_JWT_AUDIENCE": AUDIENCE}
    servers = {"plain": start_gateway(base)}
    # The cookie cache is read only when the session cookie is not already in memory: no L1 there.
    for strategy in STRATEGIES:
        env = base | {"GATEWAY_COOKIE_CACHE": strategy, "GATEWAY_L1_MAX_ENTRIES": "0"}
        servers[strategy] = start_gateway(env)
    fx = await fixture(client, servers["plain"], user_id, token, key)
    # A fuzz seed: the same cases on every run (GATEWAY_TEST_FUZZ_SEED explores others).
    rng = random.Random(int(os.environ.get("GATEWAY_TEST_FUZZ_SEED", "20261130")))  # noqa: S311
    cases = [make_case(rng, fx) for _ in range(CASES)]

    started = time.monotonic()
    answers = await asyncio.to_thread(send_all, cases, servers)
    elapsed = time.monotonic() - started

    statuses = sorted({a.status for a in answers})
    failed = [
        (c.gateway, request_bytes(c)[:600], a.body[:200])
        for c, a in zip(cases, answers, strict=True)
        if a.status >= 500
    ]
    assert not failed, failed[:3]
    reached = [(c, a) for c, a in zip(cases, answers, strict=True) if reached_gateway(c, a)]
    assert len(reached) >= 2000, (len(reached), statuses)
    positions = {(c.path.split(b"/")[1], c.headers[0][0] if c.headers else b"") for c, _ in reached}
    assert len(positions) >= 10, positions
    for case, answer in reached:
        if answer.status == 200 and not case.signed and (case.gateway == "plain" or case.headers[0][0] != b"Cookie"):
            assert identity(case, answer) in (fx.user_id, None), case
    for name, server in servers.items():
        log = server.output()
        assert not re.search(r"Traceback|\[ERROR\]|\"level\":\s*\"error\"", log), (name, log[-4000:])
        assert server.proc.poll() is None, name
        ok = await client.get(server.url + "/validate", headers=cookie(fx.token))
        assert ok.status_code == 200, name
    assert elapsed < 60, elapsed


async def test_a_non_ascii_signature_is_refused_everywhere_and_counted(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """One é in a signature, in every position and at every endpoint: malformed (401, or a null session), not a 500.

    With the failure budget on, it is treated exactly as an ASCII malformed one (a forgery, which
    costs no lookup, so it takes nothing from the budget).
    """
    server: Server = start_gateway(
        {"DATABASE_URL": database, "GATEWAY_RATE_LIMIT_PER_MINUTE": "60", "GATEWAY_RATE_LIMIT_BURST": "2"}
    )
    token = seed.generate_id()

    def requests(signature: str) -> list[tuple[bytes, bytes, bytes, bytes]]:
        """(method, path, header, body) of each form, the signature percent-encoded where Better Auth's would be."""
        encoded = quote(signature, safe="").encode()
        cookie = b"Cookie: " + TOKEN_COOKIE.encode() + b"=" + token.encode() + b"." + encoded
        bearer = b"Authorization: Bearer " + token.encode() + b"." + encoded
        header = b"X-Session-Token: " + token.encode() + b"." + encoded
        body = json.dumps({"token": f"{token}.{signature}"}, ensure_ascii=False).encode()
        return [
            (b"GET", b"/validate", cookie, b""),
            (b"GET", b"/validate", bearer, b""),
            (b"GET", b"/validate", header, b""),
            (b"POST", b"/v1/validate", b"Content-Type: application/json", body),
            (b"POST", b"/v1/validate", bearer, b""),
            (b"GET", b"/api/auth/get-session", cookie, b""),
            (b"GET", b"/api/auth/get-session", bearer, b""),
            (b"GET", b"/api/auth/get-session", header, b""),
        ]

    async def answers(signature: str, client: str) -> list[Answer]:
        out = []
        for method, path, header, body in [*requests(signature), requests(signature)[0]]:
            head = [method + b" " + path + b" HTTP/1.1", b"Host: gw", b"Connection: close", header]
            head += [b"X-Forwarded-For: " + client.encode(), b"Content-Length: " + str(len(body)).encode()]
            out.append(parse(await asyncio.to_thread(exchange, server.port, b"\r\n".join(head) + b"\r\n\r\n" + body)))
        return out

    non_ascii = await answers("\u00e9" + "A" * 42 + "=", "192.0.2.1")
    ascii_malformed = await answers("!" + "A" * 42 + "=", "192.0.2.2")
    assert [a.status for a in non_ascii] == [401, 401, 401, 401, 401, 200, 200, 200, 401]
    for got in [*non_ascii[:5], non_ascii[8]]:
        assert got.headers.get("x-auth-reason") == "malformed"
    for got in non_ascii[3:5]:  # /v1/validate says it in its JSON body too
        assert json.loads(got.body) == {"error": "unauthorized", "reason": "malformed"}
    assert all(a.body == b"null" for a in non_ascii[5:8])
    assert [(a.status, a.body) for a in non_ascii] == [(a.status, a.body) for a in ascii_malformed]
    assert "Traceback" not in server.output()
