"""Checks: every problem at once, each naming its variable; the rules file is the HTTP adapter's to check."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.config import ConfigError, load_settings
from gateway.resources import create_app
from tests.config import BASE, run_cli
from tests.support import ROOT
from tests.support.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path


def test_a_base_url_must_be_http() -> None:
    """A base URL that is not http(s) is refused, naming the variable."""
    with pytest.raises(ConfigError, match="GATEWAY_BASE_URL"):
        load_settings(BASE | {"BETTER_AUTH_URL": "auth.example.com"})


@pytest.mark.parametrize("secret", ["short-secret", "better-auth-secret-12345678901234567890"])
def test_weak_secrets_refused_unless_allowed(secret: str) -> None:
    """A secret under 32 characters, or Better Auth's public default, is refused unless allowed for development."""
    with pytest.raises(ConfigError, match="BETTER_AUTH_SECRET"):
        load_settings(BASE | {"BETTER_AUTH_SECRET": secret})
    with pytest.raises(ConfigError, match=r"BETTER_AUTH_SECRETS\[1\]"):
        load_settings(BASE | {"BETTER_AUTH_SECRETS": f"2:{'n' * 32},1:{secret}"})
    allowed = load_settings(BASE | {"BETTER_AUTH_SECRET": secret, "GATEWAY_ALLOW_WEAK_SECRET": "true"})
    assert allowed.secret.reveal() == secret


def test_new_modes_are_checked_too() -> None:
    """Secondary storage, the JWT plugin and hidden fields: each misuse named by its variable."""
    base = {"BETTER_AUTH_SECRET": "s" * 40}
    secondary = load_settings(base | {"GATEWAY_SECONDARY_STORAGE_URL": "redis://r:6379/0"})
    assert secondary.database_url is None  # Better Auth's Redis is the store: no Postgres needed
    with pytest.raises(ConfigError) as info:
        load_settings(
            base
            | {
                "DATABASE_URL": "postgresql://db/app",
                "REDIS_URL": "redis://r",
                "GATEWAY_SECONDARY_STORAGE_URL": "redis+cluster://a:1,b:2",
                "GATEWAY_JWT_ISSUER": "https://app.example",
                "GATEWAY_USER_HIDDEN_FIELDS": "internalNote,id,nick",
                "GATEWAY_SESSION_HIDDEN_FIELDS": "expiresAt",
                "GATEWAY_PLUGINS": "admin, organisation",
                "GATEWAY_USER_ADDITIONAL_FIELDS": "nick,bad-name",
            }
        )
    text = str(info.value)
    for name in (
        "REDIS_URL: not used",
        "Redis Cluster is not supported",
        "GATEWAY_JWT_AUDIENCE",
        "GATEWAY_USER_HIDDEN_FIELDS: every answer carries id",
        "GATEWAY_SESSION_HIDDEN_FIELDS: every answer carries expiresAt",
        "GATEWAY_PLUGINS: 'organisation' is not a Better Auth plugin",
        "GATEWAY_USER_ADDITIONAL_FIELDS: nick also hidden",
        "GATEWAY_USER_ADDITIONAL_FIELDS: 'bad-name' is not a field name",
    ):
        assert name in text
    assert "'admin'" not in text
    # Hiding the admin plugin's ban fields is allowed: the gateway reads them to decide anyway.
    load_settings(base | {"DATABASE_URL": "postgresql://db/app", "GATEWAY_USER_HIDDEN_FIELDS": "banned,banExpires"})


def test_identity_headers_checked() -> None:
    """GATEWAY_IDENTITY_HEADERS may rename only the identity fields, to valid header names."""
    with pytest.raises(ConfigError) as info:
        load_settings(BASE | {"GATEWAY_IDENTITY_HEADERS": "user=X-User,phone=X-Phone,email=X Email"})
    assert len(info.value.problems) == 2
    assert "GATEWAY_IDENTITY_HEADERS: unknown field(s) ['phone']" in info.value.problems[0]
    assert info.value.problems[1] == "GATEWAY_IDENTITY_HEADERS: 'X Email' is not a valid header name"
    renamed = load_settings(BASE | {"GATEWAY_IDENTITY_HEADERS": "user=X-User,session_id=X-Sid"})
    assert renamed.identity_headers == {"user": "X-User", "session_id": "X-Sid"}


def test_budget_settings_checked() -> None:
    """The failure budget's prefixes and waits are checked; a wait shorter than one token's refill is refused."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            BASE
            | {
                "GATEWAY_RATE_LIMIT_IPV6_PREFIX": "129",
                "GATEWAY_RATE_LIMIT_IPV4_PREFIX": "4",
                "GATEWAY_RATE_LIMIT_PER_MINUTE": "6",
                "GATEWAY_RATE_LIMIT_MAX_WAIT_S": "2",
            }
        )
    text = str(caught.value.problems)
    assert "GATEWAY_RATE_LIMIT_IPV6_PREFIX" in text
    assert "GATEWAY_RATE_LIMIT_IPV4_PREFIX" in text
    assert "GATEWAY_RATE_LIMIT_MAX_WAIT_S: must be at least 60 / GATEWAY_RATE_LIMIT_PER_MINUTE (10 s)" in text
    s = load_settings(BASE | {"GATEWAY_RATE_LIMIT_PER_MINUTE": "0", "GATEWAY_RATE_LIMIT_MAX_WAIT_S": "0.1"})
    assert s.rate_limit_per_minute == 0  # off: no wait to check


def test_check_config_command() -> None:
    """check-config prints every problem and exits non-zero, or prints the masked settings and exits 0."""
    bad = run_cli("check-config", env={"GATEWAY_PORT": "x", "PATH": ""})
    assert bad.returncode == 2
    assert "GATEWAY_PORT" in bad.stderr
    assert "DATABASE_URL" in bad.stderr
    good = run_cli("check-config", env=BASE)
    assert good.returncode == 0
    assert "hunter2" not in good.stdout
    assert "configuration OK" in good.stdout


def test_serve_with_bad_config_exits_2_without_traceback() -> None:
    """serve refuses an invalid configuration with exit code 2 and a clear message, no traceback."""
    result = run_cli("serve", env={"DATABASE_URL": "mysql://nope"})
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert "BETTER_AUTH_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_rules_file_needs_the_proxy_named() -> None:
    """A rules file without GATEWAY_PROXY is refused, naming the fix; check-config lists it; a typo is named too.

    A negative reload interval is refused as well.
    """
    rules = {"GATEWAY_RULES_FILE": str(ROOT / "examples" / "rules.toml")}
    with pytest.raises(ConfigError, match="GATEWAY_RULES_FILE needs GATEWAY_PROXY: set it to the proxy in front"):
        load_settings(BASE | rules)
    assert load_settings(BASE | rules | {"GATEWAY_PROXY": "traefik"}).proxy == "traefik"
    with pytest.raises(ConfigError, match="GATEWAY_PROXY"):
        load_settings(BASE | {"GATEWAY_PROXY": "haproxy"})
    with pytest.raises(ConfigError, match="GATEWAY_RULES_RELOAD_S: must be >= 0"):
        load_settings(BASE | {"GATEWAY_RULES_RELOAD_S": "-1"})
    bad = run_cli("check-config", env=BASE | rules)
    assert bad.returncode == 2
    assert "GATEWAY_RULES_FILE needs GATEWAY_PROXY" in bad.stderr


@pytest.fixture
def bad_rules(tmp_path: Path) -> dict[str, str]:
    """A rules file with a misspelt key, behind a named proxy."""
    path = tmp_path / "rules.toml"
    path.write_text("[[rules]]\nallowed_rolez = ['admin']\n")
    return {"GATEWAY_RULES_FILE": str(path), "GATEWAY_PROXY": "nginx"}


def test_a_bad_rules_file_stops_serve_and_check_config(bad_rules: dict[str, str]) -> None:
    """serve exits 2 before serving, and check-config lists it with every other problem, naming the file."""
    port = str(free_port())
    served = run_cli("serve", env=BASE | bad_rules | {"GATEWAY_PORT": port, "GATEWAY_STARTUP_WAIT_S": "0"})
    assert served.returncode == 2
    assert f"GATEWAY_RULES_FILE: {bad_rules['GATEWAY_RULES_FILE']}" in served.stderr
    assert "allowed_rolez" in served.stderr
    assert "Traceback" not in served.stderr
    checked = run_cli("check-config", env=BASE | bad_rules | {"GATEWAY_PORT": "x"})
    assert checked.returncode == 2
    assert "GATEWAY_RULES_FILE:" in checked.stderr
    assert "GATEWAY_PORT" in checked.stderr  # all at once


def test_a_bad_rules_file_stops_a_worker(bad_rules: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started on its own (granian's factory) refuses the file too; config alone never reads it."""
    assert load_settings(BASE | bad_rules).rules_file == bad_rules["GATEWAY_RULES_FILE"]
    for name, value in (BASE | bad_rules).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"GATEWAY_RULES_FILE: .*allowed_rolez"):
        create_app()


def test_organizations_need_postgres_and_no_cookie_cache() -> None:
    """GATEWAY_ORGANIZATIONS=on reads the member table: not from secondary storage nor the cookie cache."""
    base = {"BETTER_AUTH_SECRET": "s" * 40, "GATEWAY_ORGANIZATIONS": "on"}
    on = load_settings(base | {"DATABASE_URL": "postgresql://db/app", "GATEWAY_MEMBER_FIELDS": "userId=user_ref"})
    assert on.organizations == "on"
    assert on.member_fields == {"userId": "user_ref"}
    with pytest.raises(ConfigError) as info:
        load_settings(
            base
            | {
                "GATEWAY_SECONDARY_STORAGE_URL": "redis://r:6379/0",
                "GATEWAY_COOKIE_CACHE": "compact",
                "GATEWAY_MEMBER_TABLE": "bad-name",
                "GATEWAY_MEMBER_FIELDS": "userid=x",
            }
        )
    text = str(info.value)
    for name in (
        "GATEWAY_ORGANIZATIONS: on needs sessions read from Postgres",
        "GATEWAY_ORGANIZATIONS: on needs GATEWAY_COOKIE_CACHE=off",
        "GATEWAY_MEMBER_TABLE: 'bad-name' is not a valid SQL identifier",
        "GATEWAY_MEMBER_FIELDS: 'userid' is not a member field",
    ):
        assert name in text
    with pytest.raises(ConfigError, match="GATEWAY_ORGANIZATIONS"):
        load_settings(base | {"DATABASE_URL": "postgresql://db/app", "GATEWAY_ORGANIZATIONS": "yes"})
