"""Describing the settings: what check-config prints and the startup log holds, with every secret masked."""

from __future__ import annotations

import msgspec
import pytest

from gateway.config import describe, load_settings, mask_dsn, url_origin
from tests.config import BASE, run_cli


def test_secrets_never_described() -> None:
    """Secrets and DSN passwords are masked in the described configuration."""
    described = str(describe(load_settings(BASE)))
    assert "hunter2" not in described
    assert "x" * 32 not in described
    assert "'<32 chars>'" in described


def test_described_values_are_plain() -> None:
    """Networks, hosts and fields are described as text and lists: the JSON log line can carry them."""
    s = load_settings(BASE | {"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8", "GATEWAY_REDIRECT_HOSTS": "a.example"})
    described = msgspec.json.decode(msgspec.json.encode(describe(s)))
    assert described["trusted_proxies"] == ["10.0.0.0/8"]
    assert described["redirect_hosts"] == ["a.example"]
    assert described["returned_fields"]["session"] == sorted(s.returned_fields.session)


def test_check_config_says_which_cookie_it_reads() -> None:
    """With no base URL to follow, check-config says the __Secure- name is read and how to change it."""
    guessed = run_cli("check-config", env=BASE)
    assert "session_cookie_read = __Secure-better-auth.session_token" in guessed.stdout
    assert "no base URL is set" in guessed.stderr
    assert "GATEWAY_SECURE_COOKIES=false" in guessed.stderr
    told = run_cli("check-config", env=BASE | {"BETTER_AUTH_URL": "http://localhost:3000"})
    assert "session_cookie_read = better-auth.session_token" in told.stdout
    assert "no base URL" not in told.stderr


QUERY_SECRETS = ("pw-in-userinfo", "pw-in-query", "pw-ssl-key", "pw-encoded-name", "pw-redis", "pw-sentinel")
SECRET_DSNS = {
    "DATABASE_URL": "postgresql://gw:pw-in-userinfo@db:5432,db2:5433/app"
    "?sslmode=require&password=pw-in-query&sslpassword=pw-ssl-key&pass%77ord=pw-encoded-name",
    "REDIS_URL": "redis+sentinel://:pw-redis@s1:26379,s2:26379/mymaster?sentinel_password=pw-sentinel&db=0",
}


def test_dsn_query_string_passwords_masked() -> None:
    """A DSN's userinfo password and its secret query parameters are masked; the rest stays readable."""
    described = describe(load_settings(BASE | SECRET_DSNS))
    text = str(described)
    for secret in QUERY_SECRETS:
        assert secret not in text
    assert described["database_url"] == (
        "postgresql://gw:****@db:5432,db2:5433/app?sslmode=require&password=****&sslpassword=****&pass%77ord=****"
    )
    assert described["redis_url"] == "redis+sentinel://:****@s1:26379,s2:26379/mymaster?sentinel_password=****&db=0"
    good = run_cli("check-config", env=BASE | SECRET_DSNS)
    assert good.returncode == 0, good.stderr
    for secret in QUERY_SECRETS:
        assert secret not in good.stdout + good.stderr


@pytest.mark.parametrize(
    "dsn", ["postgresql://gw:p/w@db/app", "postgresql://gw:p#w?x@db/app", "postgresql://gw:p?w@db/app"]
)
def test_dsn_that_cannot_be_split_is_hidden_whole(dsn: str) -> None:
    """A password holding an unencoded '/', '?' or '#' can't be told from the host: nothing of it is shown."""
    assert describe(load_settings(BASE | {"DATABASE_URL": dsn}))["database_url"] == "postgresql://****"
    assert mask_dsn(dsn) == "postgresql://****"


def test_secondary_storage_url_masked() -> None:
    """The secondary storage's URL is described with its password masked, its host kept."""
    s = load_settings({"BETTER_AUTH_SECRET": "s" * 40, "GATEWAY_SECONDARY_STORAGE_URL": "redis://:pw-two@r:6379/0"})
    assert describe(s)["secondary_storage_url"] == "redis://:****@r:6379/0"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Auth.Example.com:443/api/auth", "https://auth.example.com"),
        ("http://localhost:3000/", "http://localhost:3000"),
        ("http://[::1]:80", "http://[::1]"),
        ("ftp://example.com", ""),
        ("http://[bad", ""),
    ],
)
def test_url_origin_as_javascript_does(url: str, origin: str) -> None:
    """url_origin is new URL(url).origin: lower-case host, default port dropped; "" when not http(s)."""
    assert url_origin(url) == origin
