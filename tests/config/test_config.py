"""Settings: Better Auth's variable names, typed GATEWAY_* settings, every problem at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, Secret, describe, load_settings
from tests.conftest import ROOT

BASE = {"DATABASE_URL": "postgresql://gw:hunter2@db/app", "BETTER_AUTH_SECRET": "x" * 32}


def test_defaults_need_only_better_auths_variables() -> None:
    """DATABASE_URL and BETTER_AUTH_SECRET are enough; everything else has a default."""
    s = load_settings(BASE)
    assert s.secret.reveal() == "x" * 32
    assert s.cookie_names == ("__Secure-better-auth.session_token",)  # no base URL: the safe name
    assert s.accept_unsigned_bearer is True


@pytest.mark.parametrize(
    ("env", "secure"),
    [
        ({}, True),  # no base URL: Better Auth's production choice, which nobody can plant over http
        ({"BETTER_AUTH_URL": "https://auth.example.com"}, True),
        ({"BETTER_AUTH_URL": "http://localhost:3000"}, False),
        ({"GATEWAY_BASE_URL": "HTTP://localhost:3000"}, False),
        ({"GATEWAY_BASE_URL": "https://auth.example.com", "BETTER_AUTH_URL": "http://localhost:3000"}, True),
        ({"BETTER_AUTH_URL": "https://auth.example.com", "GATEWAY_SECURE_COOKIES": "false"}, False),
        ({"BETTER_AUTH_URL": "http://localhost:3000", "GATEWAY_SECURE_COOKIES": "true"}, True),
    ],
)
def test_exactly_one_cookie_name_is_read(env: dict[str, str], secure: bool) -> None:
    """One name per cookie, as Better Auth names it: __Secure- on an https base URL or when told, else plain."""
    prefix = "__Secure-" if secure else ""
    s = load_settings(BASE | env)
    assert s.cookie_names == (f"{prefix}better-auth.session_token",)
    assert s.data_cookie_names == (f"{prefix}better-auth.session_data",)
    custom = load_settings(BASE | env | {"GATEWAY_SESSION_COOKIE_NAME": "sid", "GATEWAY_COOKIE_PREFIX": "myapp"})
    assert custom.cookie_names == (f"{prefix}sid",)
    assert custom.data_cookie_names == (f"{prefix}myapp.session_data",)


def test_a_base_url_must_be_http() -> None:
    """A base URL that is not http(s) is refused, naming the variable."""
    with pytest.raises(ConfigError, match="GATEWAY_BASE_URL"):
        load_settings(BASE | {"BETTER_AUTH_URL": "auth.example.com"})


def test_versioned_secrets_current_first() -> None:
    """BETTER_AUTH_SECRETS wins over BETTER_AUTH_SECRET; its first entry is the current secret."""
    new, old = "n" * 32, "o" * 32
    s = load_settings(BASE | {"BETTER_AUTH_SECRETS": f"2:{new}, 1:{old}"})
    assert [x.reveal() for x in s.secrets] == [new, old]


def test_auth_secret_is_the_fallback() -> None:
    """AUTH_SECRET is read when BETTER_AUTH_SECRET is absent, as Better Auth does."""
    s = load_settings({"DATABASE_URL": BASE["DATABASE_URL"], "AUTH_SECRET": "f" * 40})
    assert s.secret.reveal() == "f" * 40


def test_every_problem_reported_at_once() -> None:
    """Missing, unknown and invalid settings are all listed together, each naming its variable."""
    with pytest.raises(ConfigError) as info:
        load_settings({"GATEWAY_PORT": "eighty", "GATEWAY_COOKIE_PREFX": "x", "GATEWAY_SESSION_TABLE": 'a"; drop'})
    text = str(info.value)
    for name in ("GATEWAY_PORT", "GATEWAY_COOKIE_PREFX", "GATEWAY_SESSION_TABLE", "DATABASE_URL", "BETTER_AUTH_SECRET"):
        assert name in text
    assert len(info.value.problems) == 5


def test_typed_values_and_mappings() -> None:
    """Booleans, numbers and field=column mappings are converted from their text."""
    s = load_settings(
        BASE
        | {
            "GATEWAY_ACCEPT_UNSIGNED_BEARER": "false",
            "GATEWAY_L1_TTL_S": "2.5",
            "GATEWAY_SESSION_FIELDS": "userId=user_id, expiresAt=expires_at",
            "GATEWAY_SCHEMA_PRESET": "drizzle",
        }
    )
    assert s.accept_unsigned_bearer is False
    assert s.l1_ttl_s == 2.5
    assert s.session_fields == {"userId": "user_id", "expiresAt": "expires_at"}


def test_secrets_never_shown() -> None:
    """Secrets and DSN passwords are masked in repr and in the described configuration."""
    s = load_settings(BASE)
    assert "hunter2" not in repr(s)
    assert "x" * 32 not in repr(s)
    assert "hunter2" not in str(describe(s))
    assert repr(Secret("abc")) == "Secret('**********')"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


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


def test_check_config_says_which_cookie_it_reads() -> None:
    """With no base URL to follow, check-config says the __Secure- name is read and how to change it."""
    guessed = run_cli("check-config", env=BASE)
    assert "session_cookie_read = __Secure-better-auth.session_token" in guessed.stdout
    assert "no base URL is set" in guessed.stderr
    assert "GATEWAY_SECURE_COOKIES=false" in guessed.stderr
    told = run_cli("check-config", env=BASE | {"BETTER_AUTH_URL": "http://localhost:3000"})
    assert "session_cookie_read = better-auth.session_token" in told.stdout
    assert "no base URL" not in told.stderr


def test_serve_with_bad_config_exits_2_without_traceback() -> None:
    """serve refuses an invalid configuration with exit code 2 and a clear message, no traceback."""
    result = run_cli("serve", env={"DATABASE_URL": "mysql://nope"})
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert "BETTER_AUTH_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


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
    assert "r:6379" in str(describe(secondary)["secondary_storage_url"])
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


def test_rules_file_needs_the_proxy_named() -> None:
    """A rules file without GATEWAY_PROXY is refused, naming the fix; check-config lists it; a typo is named too."""
    rules = {"GATEWAY_RULES_FILE": str(ROOT / "examples" / "rules.toml")}
    with pytest.raises(ConfigError, match="GATEWAY_RULES_FILE needs GATEWAY_PROXY: set it to the proxy in front"):
        load_settings(BASE | rules)
    assert load_settings(BASE | rules | {"GATEWAY_PROXY": "traefik"}).proxy == "traefik"
    with pytest.raises(ConfigError, match="GATEWAY_PROXY"):
        load_settings(BASE | {"GATEWAY_PROXY": "haproxy"})
    bad = run_cli("check-config", env=BASE | rules)
    assert bad.returncode == 2
    assert "GATEWAY_RULES_FILE needs GATEWAY_PROXY" in bad.stderr
