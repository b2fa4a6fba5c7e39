"""The shared tier's value format: sealed with a MAC over key, configuration and value, dated, of one generation."""

from __future__ import annotations

import time
from typing import cast

import msgspec
import pytest

from gateway.config import load_settings
from gateway.core.sessions import Session
from gateway.redis.scripts import TOMBSTONE
from gateway.redis.values import MAX_VALUE_BYTES, Values, mac_key
from gateway.resources import value_configuration

ENV = {"DATABASE_URL": "postgresql://x/y", "BETTER_AUTH_SECRET": "s" * 32}
KEY = "bagw:v2:s:" + "ab" * 32
SESSION = Session(
    expires_at=time.time() + 3600,
    banned_until=0.0,
    session={"id": "s1", "userId": "u1"},
    user={"id": "u1", "email": "ada@example.com"},
    role="admin",
)


@pytest.fixture
def values() -> Values:
    return Values(mac_key("secret", b"configuration"))


def test_a_sealed_value_opens_to_the_session(values: Values) -> None:
    """What ``seal`` writes, ``open`` reads back at the same key, generation and before its time."""
    raw = values.seal(KEY, SESSION, 7, time.time() + 60)
    assert raw is not None
    assert values.open(KEY, raw, 7, time.time()) == SESSION


def test_a_value_is_refused_when_anything_changed(values: Values) -> None:
    """Another key, generation, secret or configuration, a flipped bit, a lapsed time: a miss, never an error."""
    now = time.time()
    raw = values.seal(KEY, SESSION, 7, now + 60)
    assert raw is not None
    assert values.open(KEY[:-1] + "c", raw, 7, now) is None  # moved to another token's key
    assert values.open(KEY, raw, 8, now) is None  # another generation
    assert values.open(KEY, raw, 7, now + 60) is None  # written back after its time
    assert Values(mac_key("other secret", b"configuration")).open(KEY, raw, 7, now) is None
    assert Values(mac_key("secret", b"other configuration")).open(KEY, raw, 7, now) is None
    for i in (0, 20, len(raw) - 1):
        flipped = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]
        assert values.open(KEY, flipped, 7, now) is None
    for junk in (None, TOMBSTONE, b"", raw[:24], "text", 42):
        assert values.open(KEY, junk, 7, now) is None


def test_a_session_msgpack_cannot_hold_is_not_sealed(values: Values) -> None:
    """An integer past 64 bits (or anything msgpack refuses) is not cached: ``None``, not an exception."""
    huge = Session(expires_at=time.time() + 60, banned_until=0.0, session={"id": "s"}, user={"id": "u", "n": 2**70})
    assert values.seal(KEY, huge, 0, time.time() + 60) is None


def test_a_session_over_the_size_bound_is_not_sealed(values: Values) -> None:
    """A user's field of megabytes (anyone may write one) is never cached in Redis; one just under the bound is."""
    expires = time.time() + 60

    def with_image(size: int) -> Session:
        return Session(expires_at=expires, banned_until=0.0, session={"id": "s"}, user={"id": "u", "image": "A" * size})

    under = with_image(MAX_VALUE_BYTES - 1024)
    sealed = values.seal(KEY, under, 0, expires)
    assert sealed is not None
    assert values.open(KEY, sealed, 0, time.time()) == under
    assert values.seal(KEY, with_image(MAX_VALUE_BYTES), 0, expires) is None
    assert values.seal(KEY, with_image(8 * 1024 * 1024), 0, expires) is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "6554719423875cf56d14e511e2ae661bf920b662969fc1fa81e70d1672c63466"),
        (
            {"user_hidden_fields": "email", "db_schema": "auth"},
            "eec5e050ed5bdcccf4638479a1e3bccf79c9c4c58538088eb0bdd050c40bc1ec",
        ),
    ],
    ids=["defaults", "a field hidden, another schema"],
)
def test_the_mac_key_is_the_one_values_in_redis_were_written_under(overrides: dict[str, str], expected: str) -> None:
    """The MAC key of a configuration is the same bytes as before the tier moved: cached values stay valid."""
    settings = load_settings(ENV, overrides)
    assert mac_key(settings.secret.reveal(), value_configuration(settings)).hex() == expected


def test_the_mac_key_binds_the_answered_fields_and_the_mapping() -> None:
    """Each of fields, plugins, schema and token column changes the key (another gateway's values are misses)."""
    changes = [
        {},
        {"user_hidden_fields": "email"},
        {"session_hidden_fields": "ipAddress"},
        {"user_additional_fields": "prefs"},
        {"db_schema": "auth"},
        {"token_field": "id"},
    ]
    keys = set()
    for overrides in changes:
        settings = load_settings(ENV, overrides)
        keys.add(mac_key(settings.secret.reveal(), value_configuration(settings)))
    assert len(keys) == len(changes)


class _SessionBeforeOrganizations(msgspec.Struct, frozen=True):
    """``Session`` as values were written before the organization fields existed."""

    expires_at: float
    banned_until: float
    session: dict[str, object]
    user: dict[str, object]
    role: str | None = None


def test_a_value_written_before_organizations_still_opens(values: Values) -> None:
    """The organization fields are optional: a value without them opens, with neither organization nor role."""
    old = _SessionBeforeOrganizations(SESSION.expires_at, 0.0, SESSION.session, SESSION.user, "admin")
    raw = values.seal(KEY, cast("Session", old), 7, time.time() + 60)
    assert raw is not None
    opened = values.open(KEY, raw, 7, time.time())
    assert opened == SESSION
    assert opened is not None
    assert (opened.org_id, opened.org_role) == (None, None)
    with_org = msgspec.structs.replace(SESSION, org_id="o1", org_role="admin,member")
    sealed = values.seal(KEY, with_org, 7, time.time() + 60)
    assert sealed is not None
    assert values.open(KEY, sealed, 7, time.time()) == with_org


def test_organizations_on_is_another_configuration() -> None:
    """Off, the configuration's bytes are what they were (no cold start); on, values without roles are not ours."""
    off = load_settings(ENV)
    fields = off.returned_fields
    before = msgspec.json.encode(
        {"user": sorted(fields.user), "session": sorted(fields.session), "schema": ""}
        | {"tables": [["session", [], False], ["user", [], False]], "token": "token"}
    )
    assert value_configuration(off) == before
    on = load_settings(ENV | {"GATEWAY_ORGANIZATIONS": "on"})
    assert value_configuration(on) != before
    renamed = load_settings(ENV | {"GATEWAY_ORGANIZATIONS": "on", "GATEWAY_MEMBER_TABLE": "memberships"})
    assert value_configuration(renamed) != value_configuration(on)
