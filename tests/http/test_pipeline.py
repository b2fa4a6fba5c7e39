"""The request pipeline: a credential is verified at most once per request, on every endpoint.

The app is driven in-process through its RSGI interface (a minimal scope and protocol, below) so
that every HMAC computed for a request can be counted; its HTTP behaviour is tested over real
sockets by ``test_app`` and the end-to-end suites. Postgres is real.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
import pytest

from gateway.config import load_settings
from gateway.core.sessions import Reason
from gateway.credentials.tokens import find_credential, sign, token_hash
from gateway.http.app import App
from gateway.http.pipeline import KnownCookies
from gateway.postgres import seed
from gateway.resources import open_resources
from tests.support.credentials import SECRET

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import asyncpg

COOKIE_NAME = "better-auth.session_token"
ENDPOINTS = {  # path: method
    "/validate": "GET",
    "/v1/validate": "POST",
    "/api/auth/get-session": "GET",
}


class Headers:
    """A request's headers as granian's ``RSGIHeaders`` offers them (names in lower case)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = {k.lower(): v for k, v in headers.items()}

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._headers.get(key.lower(), default)

    def get_all(self, key: str) -> list[str]:
        value = self._headers.get(key.lower())
        return [] if value is None else [value]

    def keys(self) -> list[str]:
        return list(self._headers)


class Scope:
    """The parts of granian's RSGI scope the app reads."""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.proto = "http"
        self.http_version = "1.1"
        self.scheme = "http"
        self.method = method
        self.path = path
        self.query_string = ""
        self.client = "127.0.0.1:40000"
        self.server = "127.0.0.1:8080"
        self.authority = None
        self.headers = Headers(headers)


class Protocol:
    """An RSGI HTTP protocol that records the response (and sends an empty body)."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def response_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, headers

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __aiter__(self) -> Protocol:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


@pytest.fixture
async def app(database: str, db: asyncpg.Connection) -> AsyncIterator[App]:
    """The app on the test database (Better Auth's schema: ``db``), its parts open."""
    _ = db
    env = {"DATABASE_URL": database, "BETTER_AUTH_SECRET": SECRET}
    settings = load_settings(env, {"listen": False, "secure_cookies": "false"})
    gateway = App(settings, open_resources)
    await gateway.open()
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest.fixture
def macs(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every HMAC computed with the gateway's secret from now on (its messages, in order)."""
    computed: list[bytes] = []
    key = SECRET.encode()
    digest, new = hmac.digest, hmac.new

    def counted_digest(k: Any, msg: Any, algorithm: Any) -> bytes:
        if bytes(k) == key:
            computed.append(bytes(msg))
        return digest(k, msg, algorithm)

    def counted_new(k: Any, msg: Any = None, digestmod: Any = None) -> hmac.HMAC:
        if bytes(k) == key:
            computed.append(bytes(msg or b""))
        return new(k, msg, digestmod)

    monkeypatch.setattr(hmac, "digest", counted_digest)
    monkeypatch.setattr(hmac, "new", counted_new)
    return computed


def cookie(signed: str) -> dict[str, str]:
    return {"cookie": f"theme=dark; {COOKIE_NAME}={quote(signed, safe='')}; other=1"}


def bearer(signed: str) -> dict[str, str]:
    return {"authorization": f"Bearer {signed}"}


async def call(app: App, path: str, headers: dict[str, str]) -> Protocol:
    proto = Protocol()
    await app.__rsgi__(Scope(ENDPOINTS[path], path, headers), proto)  # type: ignore[arg-type]
    return proto


def key_of(headers: dict[str, str]) -> str:
    credential = find_credential(headers.get("authorization"), None, headers.get("cookie"), (COOKIE_NAME,))
    assert credential is not None
    return credential.key


def assert_allowed(path: str, proto: Protocol, token: str) -> None:
    assert proto.status == 200, (path, proto.status, proto.headers)
    if path == "/api/auth/get-session":
        assert msgspec.json.decode(proto.body)["session"]["token"] == token
    elif path == "/v1/validate":
        assert msgspec.json.decode(proto.body)["user"]["email"]
    else:
        assert dict(proto.headers)["x-auth-request-email"]


# Every endpoint answers a cached credential with no HMAC: its key was checked when cached, and
# get-session reads the token it answers with off that key (``home_token``).
ON_A_HIT = {"/validate": 0, "/v1/validate": 0, "/api/auth/get-session": 0}


@pytest.mark.parametrize("path", list(ENDPOINTS))
@pytest.mark.parametrize("carry", [cookie, bearer], ids=["cookie", "bearer"])
async def test_one_hmac_per_request(
    app: App,
    db: asyncpg.Connection,
    macs: list[bytes],
    path: str,
    carry: Callable[[str], dict[str, str]],
) -> None:
    """A signed credential costs one HMAC on a miss, and none on a cached hit."""
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    token = await seed.create_session(db, user)
    headers = carry(sign(token, SECRET))
    macs.clear()
    miss = await call(app, path, headers)
    assert_allowed(path, miss, token)
    assert macs == [token.encode()], "a miss checks the credential exactly once"
    assert key_of(headers) in app.parts.decider.tiers.l1  # the next request is a cache hit
    macs.clear()
    hit = await call(app, path, headers)
    assert_allowed(path, hit, token)
    assert macs == [token.encode()] * ON_A_HIT[path]


@pytest.mark.parametrize("path", list(ENDPOINTS))
async def test_a_forged_signature_is_checked_once(app: App, macs: list[bytes], path: str) -> None:
    """A credential with a forged signature costs one HMAC and is refused (get-session: null)."""
    token = seed.generate_id()
    headers = cookie(sign(token, "another-secret-0123456789abcdefghijklmnop"))
    macs.clear()
    proto = await call(app, path, headers)
    assert macs == [token.encode()]
    if path == "/api/auth/get-session":
        assert (proto.status, proto.body) == (200, b"null")
    else:
        assert proto.status == 401


async def test_the_verdict_carries_the_proved_token(app: App, db: asyncpg.Connection) -> None:
    """The decision hands on the token it proved and its hash; the verdict's repr never shows the token."""
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    token = await seed.create_session(db, user)
    credential = find_credential(None, None, cookie(sign(token, SECRET))["cookie"], (COOKIE_NAME,))
    decider = app.parts.decider
    missed = await decider.decide(credential)
    hit = await decider.decide(credential)
    proved_hit = await decider.decide(credential, need_token=True)
    assert (missed.token, missed.digest) == (token, token_hash(token))
    assert (hit.token, hit.digest) == (None, None)  # a cached credential needs no check
    assert (proved_hit.token, proved_hit.digest) == (token, token_hash(token))  # read off the key, no HMAC
    assert [missed.reason, hit.reason, proved_hit.reason] == [Reason.ok] * 3
    assert token not in repr(missed)
    assert token not in repr(proved_hit)


@pytest.mark.parametrize("path", list(ENDPOINTS))
async def test_a_hit_sends_what_its_entry_rendered_once(app: App, db: asyncpg.Connection, path: str) -> None:
    """A hit's answer is rendered by the first hit, then the very same object is sent; per credential."""
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    first, second = await seed.create_session(db, user), await seed.create_session(db, user)
    answers = []
    for token in (first, second):
        headers = cookie(sign(token, SECRET))
        await call(app, path, headers)  # the miss fills the cache
        hits = [await call(app, path, headers) for _ in range(2)]
        for hit in hits:
            assert_allowed(path, hit, token)
        sent = [hit.headers if path == "/validate" else hit.body for hit in hits]
        assert sent[0] is sent[1], "a second hit re-rendered its answer"
        answers.append(sent[0])
    assert answers[0] != answers[1], "two sessions of one user share no answer"
    entries = [app.parts.decider.tiers.l1.peek(key_of(cookie(sign(t, SECRET)))) for t in (first, second)]
    assert entries[0] is not None
    assert entries[1] is not None
    assert entries[0].session.user is entries[1].session.user, "a user's sessions share its fields"


async def test_a_revoked_entry_takes_its_answers_with_it(app: App, db: asyncpg.Connection) -> None:
    """After a revocation the rendered get-session body is gone with the entry: the next request is a miss."""
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    token = await seed.create_session(db, user)
    headers = cookie(sign(token, SECRET))
    await call(app, "/api/auth/get-session", headers)
    rendered = await call(app, "/api/auth/get-session", headers)
    assert msgspec.json.decode(rendered.body)["session"]["token"] == token
    await db.execute('delete from "session" where token = $1', token)
    app.parts.decider.tiers.invalidate_token(token_hash(token))
    assert key_of(headers) not in app.parts.decider.tiers.l1
    gone = await call(app, "/api/auth/get-session", headers)
    assert (gone.status, gone.body) == (200, b"null")


async def test_a_hit_for_a_bearer_and_a_cookie_of_one_token_answers_that_token(
    app: App, db: asyncpg.Connection, macs: list[bytes]
) -> None:
    """Cookie and bearer keys of one token are two entries; each answers the token its key proves."""
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    token = await seed.create_session(db, user)
    signed = sign(token, SECRET)
    for carry in (cookie, bearer):
        await call(app, "/api/auth/get-session", carry(signed))
    macs.clear()
    for carry in (cookie, bearer):
        hit = await call(app, "/api/auth/get-session", carry(signed))
        assert msgspec.json.decode(hit.body)["session"]["token"] == token
    assert macs == []


async def test_a_declared_empty_body_is_not_read(app: App, db: asyncpg.Connection) -> None:
    """``/v1/validate`` with ``Content-Length: 0`` answers from the headers' credential; a body's token still wins."""
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    token = await seed.create_session(db, user)
    headers = bearer(sign(token, SECRET)) | {"content-length": "0"}
    for _ in range(2):  # a miss, then a hit
        assert_allowed("/v1/validate", await call(app, "/v1/validate", headers), token)
    chunked = await call(app, "/v1/validate", headers | {"transfer-encoding": "chunked"})
    assert_allowed("/v1/validate", chunked, token)  # read as before (this protocol sends no body)


def known(app: App) -> KnownCookies:
    return app._pipeline.known_cookies


async def test_only_a_cached_cookies_header_is_known(app: App, db: asyncpg.Connection) -> None:
    """Forged, unknown and respelled cookies never enter the memo; a cached one's header does, on its hit.

    A respelling (a token character percent-encoded) proves the same token, but only the home
    spelling is cached, so only the home spelling's header may be remembered.
    """
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    token = await seed.create_session(db, user)
    signed = sign(token, SECRET)
    # The signature's first character, not its last: the last one's two low bits carry nothing,
    # so changing "A=" to "B=" respells the same MAC (accepted, as by Better Auth) 1 time in 16.
    body, _, mac = signed.rpartition(".")
    forged = f"{body}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}"
    respelled = f"%{ord(token[0]):02X}{quote(signed, safe='')[1:]}"
    unknown = sign(seed.generate_id(), SECRET)
    for value in (forged, unknown):
        for _ in range(2):
            await call(app, "/validate", cookie(value))
    assert len(known(app)) == 0
    await call(app, "/validate", cookie(signed))
    assert len(known(app)) == 0, "a miss: not cached yet when read"
    assert_allowed("/validate", await call(app, "/validate", cookie(signed)), token)
    assert known(app).get(cookie(signed)["cookie"]) is not None
    respelled_header = {"cookie": f"{COOKIE_NAME}={respelled}"}
    for _ in range(2):
        assert_allowed("/validate", await call(app, "/validate", respelled_header), token)
    assert known(app).get(respelled_header["cookie"]) is None, "a respelling's key is never cached"
    assert len(known(app)) == 1


async def test_a_known_cookie_yields_to_a_bearer_and_a_session_header(app: App, db: asyncpg.Connection) -> None:
    """Better Auth's order holds with the memo: a bearer or X-Session-Token beside a known Cookie wins."""
    tokens, emails = [], []
    for _ in range(2):
        emails.append(f"{seed.generate_id(8)}@example.com")
        tokens.append(await seed.create_session(db, await seed.create_user(db, email=emails[-1])))
    ours, theirs = cookie(sign(tokens[0], SECRET)), sign(tokens[1], SECRET)
    for _ in range(2):
        await call(app, "/v1/validate", ours | {"content-length": "0"})
    assert known(app).get(ours["cookie"]) is not None
    for other in (bearer(theirs), {"x-session-token": theirs}):
        for _ in range(2):
            answer = await call(app, "/v1/validate", ours | other | {"content-length": "0"})
            assert msgspec.json.decode(answer.body)["user"]["email"] == emails[1]


async def test_a_client_varying_its_other_cookies_keeps_one_header(app: App, db: asyncpg.Connection) -> None:
    """One header per credential key: varying the other cookies replaces the header, never adds one."""
    user = await seed.create_user(db, email=f"{seed.generate_id(8)}@example.com")
    token = await seed.create_session(db, user)
    value = quote(sign(token, SECRET), safe="")
    headers = [{"cookie": f"n={n}; {COOKIE_NAME}={value}"} for n in range(5)]
    for each in headers:
        assert_allowed("/validate", await call(app, "/validate", each), token)
    assert len(known(app)) == 1
    assert known(app).get(headers[-1]["cookie"]) is not None


def test_known_cookies_are_bounded() -> None:
    """At most ``max_entries`` headers (the oldest leaves first), none longer than ``MAX_LENGTH``."""
    memo = KnownCookies(2)
    found = [find_credential(None, None, f"{COOKIE_NAME}=v{n}", (COOKIE_NAME,)) for n in range(3)]
    for n, credential in enumerate(found):
        assert credential is not None
        memo.add(f"{COOKIE_NAME}=v{n}", credential)
    assert len(memo) == 2
    assert memo.get(f"{COOKIE_NAME}=v0") is None
    assert memo.get(f"{COOKIE_NAME}=v2") == found[2]
    long = f"{COOKIE_NAME}=v3; pad={'x' * KnownCookies.MAX_LENGTH}"
    credential = find_credential(None, None, long, (COOKIE_NAME,))
    assert credential is not None
    memo.add(long, credential)
    assert memo.get(long) is None
    off = KnownCookies(0)  # the L1 off: nothing is cached, nothing is known
    off.add(f"{COOKIE_NAME}=v2", credential)
    assert len(off) == 0
