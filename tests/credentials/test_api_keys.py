"""API key credentials: found in the headers, checked unread, hashed as the plugin hashes, judged by its rules.

The hash vector is one the real ``@better-auth/api-key`` 1.7.5 made (its ``apikey.key`` column for
the key it returned); tests/e2e/test_api_keys.py checks the whole path against it live.
"""

from __future__ import annotations

import math

import pytest

from gateway.core.sessions import Reason
from gateway.credentials.api_keys import (
    API_KEY_PREFIX,
    ApiKeyRecord,
    api_key_credential,
    check_key,
    judge_key,
    key_digest,
    mock_session,
    stored_key,
    try_again_in_ms,
)
from gateway.credentials.tokens import Kind

KEY = "EEQQrbOLjXXUTUleusbshtKIpCPemKvgcxcTIeqUjNNTQtktqeUGKmMXXneITJPM"  # made by the plugin
STORED = "RGfz8s5oxH_DWVo-RqWR7cWv3tV_FCGriiCJIQuZzbw"  # its apikey.key column
NAMES = ("x-api-key",)
NOW = 1_800_000_000.0


class Headers:
    """Request headers as granian gives them: every field of a name, in order."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self._pairs = [(k.lower(), v) for k, v in pairs]

    def get(self, key: str, /) -> str | None:
        values = self.get_all(key)
        return values[0] if values else None

    def get_all(self, key: str, /) -> list[str]:
        return [v for k, v in self._pairs if k == key]

    def keys(self) -> list[str]:
        return [k for k, _ in self._pairs]


def test_the_plugins_hash_is_reproduced() -> None:
    assert stored_key(KEY) == STORED
    assert stored_key(KEY, hashing=False) == KEY  # disableKeyHashing: the column holds the key
    assert len(key_digest(STORED)) == 64
    assert KEY not in key_digest(STORED)


def test_a_key_is_found_in_the_first_header_with_a_value() -> None:
    found = api_key_credential(Headers(("X-Api-Key", KEY)), NAMES)
    assert found is not None
    assert (found.kind, found.value) == (Kind.api_key, KEY)
    assert found.key.startswith(API_KEY_PREFIX)
    assert KEY not in found.key  # the cache and log key is a hash, never the key
    names = ("x-first", "x-second")
    second = api_key_credential(Headers(("x-first", ""), ("x-second", KEY)), names)
    assert second is not None
    assert second.value == KEY


@pytest.mark.parametrize("value", ["", " ", "\t \t"])
def test_an_empty_key_header_counts_as_none(value: str) -> None:
    """As the plugin's ``if (key)``: the request is then judged by its session credentials."""
    assert api_key_credential(Headers(("x-api-key", value)), NAMES) is None
    assert api_key_credential(Headers(), NAMES) is None


def test_surrounding_whitespace_is_trimmed_as_fetch_headers_do() -> None:
    found = api_key_credential(Headers(("x-api-key", f" \t{KEY} ")), NAMES)
    assert found is not None
    assert found.value == KEY


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (KEY[:32] + " " + KEY[32:], "an inner space"),
        (KEY[:-1] + "\x00", "a NUL"),
        (KEY[:-1] + "\x7f", "a DEL"),
        (KEY[:-1] + "é", "non-ASCII"),
        (KEY[:-1] + "\ud800", "a lone surrogate"),
        (KEY[:-1] + "\u200b", "a zero-width space"),
        ("k" * 513, "over the maximum length"),
        ("k" * 63, "under the plugin's defaultKeyLength"),
    ],
)
def test_a_value_that_cannot_be_a_key_is_refused_unread(value: str, why: str) -> None:
    assert check_key(value, 64, 512) is Reason.malformed, why


def test_two_key_headers_are_refused_as_ambiguous() -> None:
    """The plugin's ``Headers.get`` joins them with ", ": never one key, so never looked up."""
    found = api_key_credential(Headers(("x-api-key", KEY), ("x-api-key", KEY)), NAMES)
    assert found is not None
    assert check_key(found.value, 64, 512) is Reason.malformed


def test_keys_of_the_plugins_shape_pass_the_check() -> None:
    assert check_key(KEY, 64, 512) is None
    assert check_key("my_prefix-" + KEY, 64, 512) is None  # a prefix, as createApiKey's option adds


def record(**fields: object) -> ApiKeyRecord:
    base: dict[str, object] = {"id": "k1", "user_id": "u1", "user": {"id": "u1"}, "created_at": NOW - 3600}
    return ApiKeyRecord(**(base | fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, Reason.ok),
        ({"enabled": True, "config_id": "default"}, Reason.ok),
        ({"config_id": None}, Reason.ok),  # null and "default" are one configuration
        ({"config_id": "other"}, Reason.unknown_session),
        ({"enabled": False}, Reason.key_disabled),
        ({"expires_at": NOW - 0.001}, Reason.expired),
        ({"expires_at": NOW + 1}, Reason.ok),
        ({"remaining": 1}, Reason.ok),
        ({"remaining": 0}, Reason.key_usage_exceeded),
        ({"remaining": -1}, Reason.key_usage_exceeded),
        # A refill due (refillInterval since lastRefillAt, else createdAt) restores the count.
        ({"remaining": 0, "refill_amount": 5, "refill_interval_ms": 60_000, "last_refill_at": NOW - 61}, Reason.ok),
        (
            {"remaining": 0, "refill_amount": 5, "refill_interval_ms": 60_000, "last_refill_at": NOW - 59},
            Reason.key_usage_exceeded,
        ),
        ({"remaining": 0, "refill_amount": 5, "refill_interval_ms": 60_000}, Reason.ok),  # createdAt an hour ago
        # The rate limit: the window of the last recorded use, spent.
        ({"rate_limit_window_ms": 60_000, "rate_limit_max": 2, "request_count": 2, "last_request": NOW - 10}, None),
        (
            {"rate_limit_window_ms": 60_000, "rate_limit_max": 2, "request_count": 1, "last_request": NOW - 10},
            Reason.ok,
        ),
        (
            {"rate_limit_window_ms": 60_000, "rate_limit_max": 2, "request_count": 9, "last_request": NOW - 61},
            Reason.ok,
        ),
        (
            {
                "rate_limit_enabled": False,
                "rate_limit_window_ms": 60_000,
                "rate_limit_max": 2,
                "request_count": 9,
                "last_request": NOW - 1,
            },
            Reason.ok,
        ),
        ({"banned_until": math.inf}, Reason.banned),
        ({"banned_until": NOW - 1}, Reason.ok),  # a ban that ended
    ],
)
def test_the_plugins_rules_on_the_row_as_it_stands(fields: dict[str, object], reason: Reason | None) -> None:
    expected = Reason.key_rate_limited if reason is None else reason
    assert judge_key(record(**fields), NOW) is expected


def test_the_rate_limit_is_not_honoured_where_the_plugin_turns_it_off() -> None:
    spent = record(rate_limit_window_ms=60_000, rate_limit_max=2, request_count=2, last_request=NOW - 10)
    assert judge_key(spent, NOW, rate_limit=False) is Reason.ok
    assert judge_key(record(config_id="ci"), NOW, config_id="ci") is Reason.ok


def test_a_spent_window_says_when_it_closes_as_the_plugin_does() -> None:
    """``tryAgainIn``: the window's length less the time since the last recorded use, in ms, rounded up."""
    spent = record(rate_limit_window_ms=60_000, rate_limit_max=2, request_count=2, last_request=NOW - 10.0004)
    assert try_again_in_ms(spent, NOW) == 50_000  # 49,999.6 ms, up
    assert try_again_in_ms(record(rate_limit_window_ms=60_000), NOW) is None  # never used: no window


def test_the_mock_session_is_the_plugins() -> None:
    """expiresAt: the key's, else now + session.expiresIn read as milliseconds (the plugin's getDate(.., "ms"))."""
    session = mock_session(record(), NOW, expires_in=604800, user_agent="ua", ip_address="203.0.113.7")
    assert session.session == {
        "id": "k1",
        "userId": "u1",
        "userAgent": "ua",
        "ipAddress": "203.0.113.7",
        "createdAt": "2027-01-15T08:00:00.000Z",
        "updatedAt": "2027-01-15T08:00:00.000Z",
        "expiresAt": "2027-01-15T08:10:04.800Z",
    }
    assert session.expires_at == NOW + 604.8
    dated = mock_session(
        record(expires_at=NOW + 86400, expires_at_iso="2027-01-16T08:00:00.000Z"),
        NOW,
        expires_in=604800,
        user_agent=None,
        ip_address=None,
    )
    assert dated.session["expiresAt"] == "2027-01-16T08:00:00.000Z"
    assert "token" not in dated.session
