"""Hostile input and floods: property-based parsers, an HTTP fuzz run, the failure rate limit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import socket
import time
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.core.networks import parse_networks
from gateway.core.sessions import Reason
from gateway.credentials.tokens import Credential, Kind, Verifier, cookie_value, decode_uri_component, sign
from gateway.http import canonical
from gateway.http.original import PROXIES, Proxy, original_request
from gateway.postgres import seed
from tests.support.credentials import BASE64, SECRET, cookie, cookie_pair

if TYPE_CHECKING:
    import asyncpg
    import httpx

    from tests.support.server import Server

NAMES = ("__Secure-better-auth.session_token", "better-auth.session_token")
VERIFIER = Verifier(SECRET, accept_unsigned=True)
JS_WS = (  # JavaScript's String.prototype.trim()
    " \t\n\r\x0b\x0c\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_parse(header: str) -> dict[str, str]:
    """better-call's parseCookies, line for line (no early exit), without the decoding step."""
    cookies: dict[str, str] = {}
    index = 0
    while index < len(header):
        eq = header.find("=", index)
        if eq == -1:
            break
        end = header.find(";", index)
        if end == -1:
            end = len(header)
        elif end < eq:
            index = header.rfind(";", 0, eq) + 1
            continue
        key = header[index:eq].strip(JS_WS)
        if key not in cookies:
            value = header[eq + 1 : end].strip(JS_WS)
            cookies[key] = value[1:-1] if value[:1] == '"' else value
        index = end + 1
    return cookies


cookie_text = st.lists(st.sampled_from([*'ab=; "%.\t\xa0', "better-auth.session_token", "__Secure-"]), max_size=30).map(
    "".join
)


@SLOW
@given(cookie_text)
@example("better-auth.session_token=")  # an empty value is found, empty (rare in the generated headers)
@example("__Secure-better-auth.session_token=; better-auth.session_token=x")  # an empty preferred one wins
def test_cookie_lookup_matches_better_call(header: str) -> None:
    """For any Cookie header, the gateway finds exactly the value better-call would (first wins, __Secure- first).

    Exactly: ``None`` where better-call finds no such cookie, ``""`` where it finds one that is empty.
    """
    parsed = reference_parse(header)
    expected = next((parsed[n] for n in NAMES if n in parsed), None)
    assert cookie_value(header, NAMES) == expected


@SLOW
@given(st.text(max_size=120), st.sampled_from(list(Kind)))
def test_verifier_never_raises_and_only_accepts_a_real_signature(value: str, kind: Kind) -> None:
    """Any string, as any kind of credential: no exception, and a token only with the right HMAC."""
    result = VERIFIER.token(Credential(value, kind, value))
    assert isinstance(result, str)  # a token, or a Reason (a StrEnum)
    if not isinstance(result, Reason) and (kind is Kind.cookie or "." in value):
        decoded = decode_uri_component(value) if "%" in value else value
        token, _, signature = decoded.rpartition(".")
        want = base64.b64encode(hmac.new(SECRET.encode(), token.encode(), hashlib.sha256).digest()).decode()
        assert result == token
        assert signature == want


def flip(char: str) -> str:
    """Another character: a base64 one with its top bit flipped (``.`` and ``=``: ``A``).

    The top bit, not any: the signature's 43rd character carries 4 bits of the MAC and 2 unused
    ones, and changing those alone (``A=`` to ``B=``) respells the same MAC, which Better Auth's
    atob and the gateway accept (1 signature in 16 ends ``A=``).
    """
    return BASE64[BASE64.index(char) ^ 32] if char in BASE64 else "A"


@SLOW
@given(st.text(alphabet="abcABC0123456789", min_size=32, max_size=32), st.integers(0, 76))
@example("c44598cc29cb38365a85CA9b03B1669c", 75)  # its signature ends "A=": "B=" would respell it
def test_signed_tokens_verify_and_any_flip_fails(token: str, i: int) -> None:
    """A value Better Auth signs verifies; flipping any one of its 77 characters never does."""
    value = sign(token, SECRET)
    assert VERIFIER.token(Credential(value, Kind.cookie, value)) == token
    flipped = value[:i] + flip(value[i]) + value[i + 1 :]
    assert VERIFIER.token(Credential(flipped, Kind.cookie, flipped)) != token


header_values = st.one_of(st.none(), st.text(max_size=80))
# Near-valid URLs and paths, built from the characters the canonical rules are about.
tricky_paths = st.text(alphabet="aA/.%2eEfF05;,\\?#~@:", max_size=30).map(lambda p: "/" + p)
tricky_urls = st.builds(
    lambda h, p: f"http://{h}{p}", st.text(alphabet="aA.:@?#%/\\-_09 ,[]", max_size=20), tricky_paths
)


class _Headers:
    def __init__(self, values: dict[str, str | None]) -> None:
        self._values = {k: v for k, v in values.items() if v is not None}

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def get_all(self, key: str) -> list[str]:
        return [self._values[key]] if key in self._values else []

    def keys(self) -> list[str]:
        return list(self._values)


@SLOW
@given(
    st.sampled_from(["", *PROXIES]),
    st.fixed_dictionaries(
        dict.fromkeys(
            (
                "x-original-url",
                "x-original-method",
                "x-forwarded-for",
                "x-forwarded-uri",
                "x-forwarded-method",
                "x-forwarded-host",
                "x-forwarded-proto",
                "host",
            ),
            header_values,
        )
        | {
            "x-original-url": st.one_of(header_values, tricky_urls),
            "x-forwarded-uri": st.one_of(header_values, tricky_paths),
        }
    ),
    st.text(max_size=40),
    st.text(max_size=30),
)
def test_forwarded_parsing_never_raises(proxy: Proxy, headers: dict[str, str | None], path: str, peer: str) -> None:
    """Any forwarded headers and peer strings give a checked Original or None (refused), never an exception."""
    original = original_request(
        proxy=proxy,
        method="GET",
        scheme="http",
        path="/validate" + path,
        query="",
        peer=peer,
        headers=_Headers(headers),
        networks=parse_networks("0.0.0.0/0,::/0"),
    )
    if original is not None:
        assert canonical.uri(original.uri) == original.uri
        assert canonical.hostname(original.host) == original.hostname
        assert all(p.startswith("/") for p in original.paths)
        assert isinstance(original.url, str)


def raw(port: int, data: bytes) -> bytes:
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:  # the server may answer and close before it has read everything: fine
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def fuzz_requests(rng: random.Random, n: int) -> list[bytes]:
    junk = [b"\x00", b"\xff\xfe", b"\r", b"%", b"%00", b"\xc3\x28", b'"', b";", b"=", b"..", b"A" * 5000, "é".encode()]
    paths = [
        b"/validate",
        b"/validate/x",
        b"/v1/validate",
        b"/api/auth/get-session",
        b"/readyz",
        b"/%ff",
        b"/" + b"a" * 3000,
    ]
    names = [
        b"Cookie",
        b"Authorization",
        b"X-Session-Token",
        b"X-Original-URL",
        b"X-Forwarded-For",
        b"Content-Length",
        b"Host",
    ]
    out = []
    for _ in range(n):
        method = rng.choice([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
        head = [method + b" " + rng.choice(paths) + b" HTTP/1.1", b"Host: gw", b"Connection: close"]
        for _ in range(rng.randrange(1, 6)):
            value = b"".join(rng.choice(junk) for _ in range(rng.randrange(1, 8)))
            name = rng.choice(names)
            if name == b"Content-Length":
                value = rng.choice([b"-1", b"abc", b"99999999999", b"10"])
            head.append(name + b": " + value.replace(b"\r", b"").replace(b"\n", b""))
        body = rng.choice([b"", b"{", b'{"token": 1}', b'{"token": "' + b"\xff" * 10 + b'"}', b"x" * 20000])
        out.append(b"\r\n".join(head) + b"\r\n\r\n" + body)
    return out


async def test_http_fuzz_gets_4xx_and_server_survives(
    db: asyncpg.Connection, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Hundreds of malformed requests: each answer is a 4xx (or the connection is refused), never 5xx or a hang."""
    token = await seed.create_session(db, await seed.create_user(db, email="fuzz@example.com"))
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_MAX_HEADER_BYTES": "16384"})
    rng = random.Random(20261127)  # noqa: S311  (a fuzz seed, reproducible)
    statuses = []
    for request in fuzz_requests(rng, 400):
        reply = await asyncio.to_thread(raw, gw.port, request)
        if reply:
            # get-session answers 200 null to a bad credential, as Better Auth does; /readyz is fine.
            lenient = request.split(b" ", 2)[1] in (b"/api/auth/get-session", b"/readyz")
            statuses.append((int(reply.split(b" ", 2)[1]), lenient))
    assert len(statuses) > 300
    assert all(400 <= s < 500 for s, lenient in statuses if not lenient), sorted(set(statuses))
    assert all(s < 500 for s, _ in statuses)
    ok = await client.get(gw.url + "/validate", headers=cookie(token))
    assert ok.status_code == 200
    assert gw.proc.poll() is None


def limited(database: str, burst: int) -> dict[str, str]:
    """A gateway's settings with the failure limit on: 60 a minute, ``burst`` at once."""
    return {
        "DATABASE_URL": database,
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "60",
        "GATEWAY_RATE_LIMIT_BURST": str(burst),
        "GATEWAY_METRICS_FLUSH_S": "0.1",
    }


async def postgres_queries(client: httpx.AsyncClient, gw: Server) -> float:
    text = (await client.get(gw.url + "/metrics")).text
    line = next(
        (ln for ln in text.splitlines() if ln.startswith('gateway_backend_seconds_count{backend="postgres"}')), None
    )
    return float(line.split()[-1]) if line else 0.0


async def test_flood_of_forged_tokens_costs_nothing_and_never_waits(
    database: str, db: asyncpg.Connection, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """2,000 distinct forged tokens from one client (burst 30): zero Postgres queries, each refused (401) at once.

    The failure budget limits lookups; a forgery is refused before any, so it has nothing to limit.
    """
    gw: Server = start_gateway(limited(database, burst=30))
    before = await postgres_queries(client, gw)
    forged = [cookie_pair(seed.generate_id(), secret="f" * 40) for _ in range(2_000)]
    statuses = []
    for i in range(0, len(forged), 200):
        batch = await asyncio.gather(
            *(client.get(gw.url + "/validate", headers={"cookie": c}) for c in forged[i : i + 200])
        )
        statuses += [r.status_code for r in batch]
    assert statuses == [401] * 2_000
    r = await client.post(gw.url + "/v1/validate", json={"token": sign(seed.generate_id(), "f" * 40)})
    assert r.status_code == 401
    await asyncio.sleep(0.3)
    assert await postgres_queries(client, gw) == before


async def test_unknown_raw_tokens_cost_one_query_each_at_most(
    database: str, db: asyncpg.Connection, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Unknown raw tokens: a query each at most; repeats are remembered (no query or wait); exempt ones never wait."""
    env = limited(database, burst=20)
    gw: Server = start_gateway(env)
    before = await postgres_queries(client, gw)
    tokens = [seed.generate_id() for _ in range(20)]
    for _ in range(5):
        started = time.monotonic()
        replies = [await client.get(gw.url + "/validate", headers={"authorization": f"Bearer {t}"}) for t in tokens]
        assert [r.status_code for r in replies] == [401] * 20
        assert time.monotonic() - started < 1.5  # the burst covers the first round; the rest are remembered
    await asyncio.sleep(0.3)
    assert await postgres_queries(client, gw) - before <= 20  # at most one query per unknown token
    exempt = start_gateway(env | {"GATEWAY_RATE_LIMIT_EXEMPT": "127.0.0.0/8"})
    started = time.monotonic()
    replies = [
        await client.get(exempt.url + "/validate", headers={"authorization": f"Bearer {seed.generate_id()}"})
        for _ in range(120)
    ]
    assert {r.status_code for r in replies} == {401}
    assert time.monotonic() - started < 10  # never a wait for the budget's refill (one a second)
