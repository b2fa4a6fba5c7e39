"""Micro-benchmarks of the hot pieces (no I/O): ``pytest benchmarks --benchmark-only``.

Compare rows within a group; the figure in parentheses is the ratio to the fastest of the run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
import psutil
import pytest

from gateway.core.lru import LRU
from gateway.core.sessions import Session
from gateway.credentials.tokens import Verifier, find_credential, sign, token_hash
from gateway.http.responses import Identity, better_auth_session
from gateway.lookup.decision import Decider
from gateway.lookup.tiers import Entry, Loaded, Tiers
from gateway.postgres.seed import generate_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SECRET = "benchmark-secret-0123456789abcdefghijklmnop"  # noqa: S105
NAMES = ("better-auth.session_token",)  # the one name a gateway reads (here: an http deployment)
TOKEN = generate_id()
COOKIE = f"theme=dark; better-auth.session_token={quote(sign(TOKEN, SECRET), safe='')}; _ga=GA1.2.3"
VERIFIER = Verifier(SECRET, accept_unsigned=True)


def session(i: int = 0) -> Session:
    """A session shaped as Better Auth's default schema with the admin plugin returns it."""
    iso = "2026-11-27T10:00:00.000Z"
    return Session(
        expires_at=2e9,
        banned_until=0.0,
        session={
            "id": secrets.token_hex(16),
            "expiresAt": iso,
            "createdAt": iso,
            "updatedAt": iso,
            "ipAddress": "",
            "userAgent": "",
            "userId": f"user{i}",
            "impersonatedBy": None,
            "activeOrganizationId": None,
        },
        user={
            "id": f"user{i}",
            "name": "Ada Lovelace",
            "email": f"ada{i}@example.com",
            "emailVerified": True,
            "image": None,
            "createdAt": iso,
            "updatedAt": iso,
            "role": "user",
            "banned": False,
            "banReason": None,
            "banExpires": None,
        },
        role="user",
    )


@pytest.mark.benchmark(group="credentials")
def test_find_cookie_credential(benchmark: Any) -> None:
    """Find the session cookie in a three-cookie header."""
    assert benchmark(find_credential, None, None, COOKIE, NAMES) is not None


@pytest.mark.benchmark(group="credentials")
def test_find_bearer_credential(benchmark: Any) -> None:
    """Find a bearer token."""
    assert benchmark(find_credential, f"Bearer {TOKEN}", None, None, NAMES) is not None


@pytest.mark.benchmark(group="credentials")
def test_verify_signed_cookie(benchmark: Any) -> None:
    """Percent-decode and check the HMAC of a cookie value (what a cache hit avoids)."""
    value = find_credential(None, None, COOKIE, NAMES)
    assert value is not None
    assert benchmark(VERIFIER.token, value) == TOKEN


@pytest.mark.benchmark(group="credentials")
def test_token_hash(benchmark: Any) -> None:
    """SHA-256 of a token: the Redis key and notification payload."""
    benchmark(token_hash, TOKEN)


@pytest.mark.parametrize("size", [100_000, 1_000_000])
@pytest.mark.benchmark(group="lru")
def test_lru_get_hit(benchmark: Any, size: int) -> None:
    """An LRU hit among ``size`` entries."""
    lru: LRU[int] = LRU(size)
    keys = [f"key-{i:08d}-{TOKEN}" for i in range(size)]
    for k in keys:
        lru.put(k, 1, 2e9)
    probe = keys[size // 2]
    assert benchmark(lru.get, probe) == 1


@pytest.mark.parametrize("size", [100_000, 1_000_000])
@pytest.mark.benchmark(group="lru")
def test_lru_put_evicting(benchmark: Any, size: int) -> None:
    """A put into a full LRU of ``size`` entries (evicting the oldest)."""
    lru: LRU[int] = LRU(size)
    for i in range(size):
        lru.put(f"key-{i:08d}", 1, 2e9)
    counter = iter(range(10**9))
    benchmark(lambda: lru.put(f"new-{next(counter)}", 1, 2e9))


ENCODER = msgspec.msgpack.Encoder()
DECODER = msgspec.msgpack.Decoder(Session)


@pytest.mark.benchmark(group="codec")
def test_encode_session(benchmark: Any) -> None:
    """msgpack-encode a session for Redis."""
    benchmark(ENCODER.encode, session())


@pytest.mark.benchmark(group="codec")
def test_decode_session(benchmark: Any) -> None:
    """msgpack-decode a session from Redis (validation included)."""
    data = ENCODER.encode(session())
    assert benchmark(DECODER.decode, data).user_id == "user0"


@pytest.mark.benchmark(group="codec")
def test_render_identity_headers(benchmark: Any) -> None:
    """Build the 200's identity headers (done once per cache entry)."""
    benchmark(Identity().headers, session())


class _NoSource:
    async def fetch_many(self, tokens: Sequence[str]) -> Mapping[str, Session]:  # noqa: ARG002
        raise AssertionError("a warm cache must not reach the source")


@pytest.mark.benchmark(group="decision")
def test_decision_on_a_warm_cache(benchmark: Any) -> None:
    """The whole decision for a cached credential: find it, look it up, done (no HMAC, no I/O)."""
    tiers = Tiers(_NoSource(), None, max_entries=100_000, ttl_s=3600, negative_max_entries=1000, negative_ttl_s=1)
    decider = Decider(VERIFIER, tiers)
    credential = find_credential(None, None, COOKIE, NAMES)
    assert credential is not None
    tiers.l1.put(credential.key, Entry(session(), token_hash(TOKEN)), 2e9)
    loop = asyncio.new_event_loop()

    def decide() -> Any:
        coroutine = decider.decide(find_credential(None, None, COOKIE, NAMES))
        try:
            coroutine.send(None)  # completes without suspending: nothing to await on a hit
        except StopIteration as done:
            return done.value
        raise AssertionError("a warm decision suspended")

    assert benchmark(decide).allowed
    loop.close()


def fresh_session(i: int) -> Session:
    """``session(i)`` with strings of its own, as rows read from Postgres have (none shared)."""
    iso = f"2026-11-27T10:00:{i % 60:02d}.{i % 1000:03d}Z"
    return Session(
        expires_at=2e9,
        banned_until=0.0,
        session={
            "id": secrets.token_hex(16),
            "expiresAt": iso,
            "createdAt": iso[:-1] + "Z",
            "updatedAt": iso[:-1] + "Z",
            "ipAddress": "",
            "userAgent": "",
            "userId": f"user{i}",
            "impersonatedBy": None,
            "activeOrganizationId": None,
        },
        user={
            "id": f"user{i}",
            "name": "Ada Lovelace",
            "email": f"ada{i}@example.com",
            "emailVerified": True,
            "image": None,
            "createdAt": iso[:-1] + "Z",
            "updatedAt": iso[:-1] + "Z",
            "role": "user",
            "banned": False,
            "banReason": None,
            "banExpires": None,
        },
        role="user",
    )


def test_memory_per_cached_session(record_property: Any) -> None:
    """Bytes per cached session with its get-session answer servable from L1; reported, not asserted.

    Everything a cached session costs a worker: its key (a real signed cookie's), the LRU's slot,
    the entry, the session and user, the indexes by token hash and by user, and the rendered
    get-session body a hit sends (stored on the entry where the code keeps one). One user per
    session (the worst case: nothing shared). ``BENCH_MEMORY_SESSIONS`` sets how many (default
    100,000; the recorded figure is at 1,000,000:
    ``BENCH_MEMORY_SESSIONS=1000000 pytest benchmarks/test_hot_path.py -k memory -s``).
    """
    n = int(os.environ.get("BENCH_MEMORY_SESSIONS", "100000"))
    tiers = Tiers(_NoSource(), None, max_entries=n, ttl_s=3600, negative_max_entries=0, negative_ttl_s=1)
    json_bytes = 0
    gc.collect()
    before = psutil.Process().memory_info().rss  # RSS, not tracemalloc: that would take minutes here
    for i in range(n):
        token = generate_id()
        key = ";" + quote(f"{token}.{secrets.token_urlsafe(32)[:43]}=", safe="")
        tiers.remember(key, Loaded(fresh_session(i), token_hash(token), 0))
        entry = tiers.l1.get(key)
        assert entry is not None
        body = better_auth_session(entry.session, token)
        json_bytes += len(body)
        if hasattr(entry, "answer"):  # the entry keeps what a get-session hit sends
            entry.answer = body
    per_session = (psutil.Process().memory_info().rss - before) / n
    per_json = json_bytes / n
    record_property("bytes_per_session", round(per_session))
    record_property("get_session_json_bytes", round(per_json))
    print(
        f"\n{per_session:,.0f} bytes per cached session at {n:,} entries; its get-session JSON: "
        f"{per_json:,.0f} bytes; ratio {per_session / per_json:.2f} (target <= 1.3)"
    )
    assert len(tiers.l1) == n
