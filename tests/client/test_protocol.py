"""What the client sends and how it reads each answer (``protocol``): no I/O."""

from __future__ import annotations

import httpx
import pytest
from better_auth_gateway_client import CREDENTIAL_HEADERS, GatewayUnavailable, RateLimited
from better_auth_gateway_client.protocol import answer, cache_key, credential_fields
from starlette.datastructures import Headers as StarletteHeaders

NAMES = frozenset(CREDENTIAL_HEADERS)
RAW = [
    (b"Host", b"service"),
    (b"Cookie", b"a=1"),
    (b"X-Forwarded-For", b"203.0.113.9"),
    (b"cookie", b"better-auth.session_token=t.s"),
    (b"Authorization", b"Bearer x"),
    (b"X-Session-Token", b"y"),
    (b"X-Api-Key", b"k"),
]
EXPECTED = [
    ("cookie", "a=1"),
    ("cookie", "better-auth.session_token=t.s"),
    ("authorization", "Bearer x"),
    ("x-session-token", "y"),
]


def test_credential_fields_of_every_kind_of_headers() -> None:
    """ASGI pairs, Starlette's and httpx's Headers keep every credential field in order; a dict its one of each."""
    assert credential_fields(RAW, NAMES) == EXPECTED
    assert credential_fields(StarletteHeaders(raw=[(k.lower(), v) for k, v in RAW]), NAMES) == EXPECTED
    assert credential_fields(httpx.Headers([(k.decode(), v.decode()) for k, v in RAW]), NAMES) == EXPECTED
    assert credential_fields({"Cookie": "a=1", "Accept": "*/*"}, NAMES) == [("cookie", "a=1")]
    assert credential_fields({"accept": "*/*"}, NAMES) == []
    assert credential_fields(RAW, NAMES | {"x-api-key"})[-1] == ("x-api-key", "k")


def test_cache_keys_are_digests_that_tell_credentials_apart() -> None:
    """A key is a SHA-256 hex digest, never the credential; other kinds, values or splits give other keys."""
    key = cache_key("token", ["secret-token"])
    assert len(key) == 64
    assert "secret-token" not in key
    assert key == cache_key("token", ["secret-token"])
    assert key != cache_key("fields", ["secret-token"])
    assert cache_key("fields", ["ab", "c"]) != cache_key("fields", ["a", "bc"])
    assert cache_key("fields", ["cookie", "a\0cookie"]) != cache_key("fields", ["cookie", "a", "cookie"])


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=body, headers=headers, request=httpx.Request("POST", "http://gw/v1/validate"))


IDENTITY = b'{"user": {"id": "u"}, "session": {"id": "s", "userId": "u", "expiresAt": "2030-01-01T00:00:00.000Z"}}'


def test_answers() -> None:
    """200 an identity; 401, 400 and 413 None; 429 RateLimited; 503 and anything else GatewayUnavailable."""
    identity = answer(reply(200, IDENTITY))
    assert identity is not None
    assert identity.user.id == "u"
    for status in (400, 401, 413):
        assert answer(reply(status, b'{"error": "unauthorized"}')) is None
    with pytest.raises(RateLimited) as limited:
        answer(reply(429, headers={"retry-after": "7"}))
    assert limited.value.retry_after == 7
    with pytest.raises(GatewayUnavailable) as unavailable:
        answer(reply(503, headers={"retry-after": "5"}))
    assert unavailable.value.retry_after == 5
    assert type(unavailable.value) is GatewayUnavailable


@pytest.mark.parametrize("status", [200, 204, 302, 403, 404, 408, 500, 502, 504])
def test_no_verdict_is_never_none(status: int) -> None:
    """A redirect, a proxy's error, a wrong URL's 404, a 200 without an identity: unavailable, the body not echoed."""
    with pytest.raises(GatewayUnavailable) as caught:
        answer(reply(status, b"<html>token=echoed-secret</html>", {"location": "http://elsewhere/"}))
    assert "echoed-secret" not in str(caught.value)


@pytest.mark.parametrize(("value", "seconds"), [("5", 5), ("0", 0), ("9" * 400, 86_400), ("1.5", None), ("soon", None)])
def test_retry_after(value: str, seconds: float | None) -> None:
    """Retry-After in whole seconds, at most a day; anything else is no hint."""
    with pytest.raises(GatewayUnavailable) as caught:
        answer(reply(503, headers={"retry-after": value}))
    assert caught.value.retry_after == seconds
