"""Reading the environment: Better Auth's names, typed GATEWAY_* values parsed once, and *_FILE secrets."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway.config import SECRET_VARIABLES, ConfigError, describe, load_settings
from gateway.postgres import seed
from tests.config import BASE, run_cli
from tests.support.credentials import SECRET, cookie

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg
    import httpx

    from tests.support.server import Server


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
    with pytest.raises(ConfigError) as info:
        load_settings(BASE | {"GATEWAY_USER_FIELDS": "name=full_name,email"})
    assert info.value.problems == ["GATEWAY_USER_FIELDS: expected 'field=column,...', got 'email'"]


def test_networks_hosts_and_fields_parsed_once() -> None:
    """Networks, redirect hosts and the returned fields are loaded as final values, not text to parse again."""
    s = load_settings(
        BASE
        | {
            "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "GATEWAY_RATE_LIMIT_EXEMPT": "192.168.1.7",
            "GATEWAY_REDIRECT_HOSTS": "App.Example.com, .Example.org,",
            "GATEWAY_PLUGINS": "admin",
            "GATEWAY_USER_HIDDEN_FIELDS": "image",
        }
    )
    assert s.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert s.rate_limit_exempt == (ipaddress.ip_network("192.168.1.7/32"),)
    assert s.redirect_hosts == ("app.example.com", ".example.org")
    assert {"role", "banned"} <= s.returned_fields.user
    assert "image" not in s.returned_fields.user
    with pytest.raises(ConfigError) as info:
        load_settings(BASE | {"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,nope", "GATEWAY_RATE_LIMIT_EXEMPT": "1.2.3.4/99"})
    assert [p.split(":")[0] for p in info.value.problems] == ["GATEWAY_TRUSTED_PROXIES", "GATEWAY_RATE_LIMIT_EXEMPT"]
    with pytest.raises(ConfigError, match="GATEWAY_RETURNED_FIELDS: unknown setting"):
        load_settings(BASE | {"GATEWAY_RETURNED_FIELDS": "x"})


def test_redirect_hosts_default_to_the_login_urls() -> None:
    """Without GATEWAY_REDIRECT_HOSTS a return URL may name the login URL's host only."""
    s = load_settings(BASE | {"GATEWAY_LOGIN_URL": "https://Login.Example.com:8443/sign-in"})
    assert s.redirect_hosts == ("login.example.com",)
    assert load_settings(BASE).redirect_hosts == ()


def test_text_overrides_are_read_like_the_environment() -> None:
    """An override given as text is parsed as its variable would be; a typed one is taken as it is."""
    s = load_settings(BASE, {"trusted_proxies": "0.0.0.0/0", "plugins": "admin", "port": 9000})
    assert s.trusted_proxies == (ipaddress.ip_network("0.0.0.0/0"),)
    assert "role" in s.returned_fields.user
    assert s.port == 9000
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings(BASE, {"trusted_proxies": "not-a-network"})


# --- *_FILE: every secret-bearing variable can be read from a file (Docker and Kubernetes secrets).


def _without(name: str) -> dict[str, str]:
    """BASE less the variable ``name`` stands in for (so ``name_FILE`` may set it)."""
    primary = name in ("DATABASE_URL", "GATEWAY_DATABASE_URL")  # a replica or LISTEN URL goes beside it
    drop = {"DATABASE_URL", "GATEWAY_DATABASE_URL"} if primary else {name}
    drop |= {"BETTER_AUTH_SECRET"} if "SECRET" in name else set()
    return {k: v for k, v in BASE.items() if k not in drop}


VALUES = {
    "BETTER_AUTH_SECRET": "s" * 40,
    "BETTER_AUTH_SECRETS": f"2:{'n' * 32},1:{'o' * 32}",
    "AUTH_SECRET": "a" * 40,
    "DATABASE_URL": "postgresql://gw:pw-from-file@db/app",
    "GATEWAY_DATABASE_URL": "postgresql://gw:pw-from-file@db/app",
    "REDIS_URL": "redis://:pw-from-file@r:6379/0",
    "GATEWAY_REDIS_URL": "redis://:pw-from-file@r:6379/0",
    "GATEWAY_SECONDARY_STORAGE_URL": "redis://:pw-from-file@r:6379/0",
    "GATEWAY_READ_DATABASE_URL": "postgresql://gw:pw-from-file@replica/app",
    "GATEWAY_LISTEN_DATABASE_URL": "postgresql://gw:pw-from-file@primary/app",
}


def _read(s: Any, name: str) -> str:
    """The revealed value ``name`` set, in its variable's text form."""
    if "SECRETS" in name:
        return ",".join(f"{v}:{x.reveal()}" for v, x in zip(("2", "1"), s.secrets, strict=True))
    if "SECRET" in name:
        return str(s.secret.reveal())
    field = name.removeprefix("GATEWAY_").lower()
    return str(getattr(s, field).reveal())


@pytest.mark.parametrize("name", SECRET_VARIABLES)
def test_secret_variables_read_from_a_file(tmp_path: Path, name: str) -> None:
    """X_FILE gives X the file's content less its trailing newlines; masked as X would be."""
    assert set(VALUES) == set(SECRET_VARIABLES)
    path = tmp_path / "value"
    path.write_text(VALUES[name] + "\r\n\n")
    s = load_settings(_without(name) | {f"{name}_FILE": str(path)})
    assert _read(s, name) == VALUES[name]
    described = str(describe(s))
    assert "pw-from-file" not in described
    assert "s" * 40 not in described


def test_a_value_and_its_file_both_set_is_refused(tmp_path: Path) -> None:
    """Setting X and X_FILE is an error naming both, and neither value."""
    path = tmp_path / "dsn"
    path.write_text("postgresql://gw:pw-from-file@db/app")
    with pytest.raises(ConfigError) as info:
        load_settings(BASE | {"DATABASE_URL_FILE": str(path)})
    assert info.value.problems == ["DATABASE_URL and DATABASE_URL_FILE: both set; set one"]
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read {path} (No such file or directory)"),
        ("", "{path} is empty"),
        ("\n\n", "{path} is empty"),
        ("dir", "cannot read {path} (Is a directory)"),
        (b"\xffpw-secret\xfe", "{path} is not UTF-8 text"),
    ],
)
def test_an_unusable_file_names_variable_and_path_never_content(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    """A missing, empty, unreadable or binary file is a problem naming the variable and the path, not the content."""
    path = tmp_path / "secret"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(_without("BETTER_AUTH_SECRET") | {"BETTER_AUTH_SECRET_FILE": str(path)})
    assert f"BETTER_AUTH_SECRET_FILE: {message.format(path=path)}" in info.value.problems
    assert "pw-secret" not in str(info.value)
    assert "0xff" not in str(info.value)


def test_a_file_of_a_bad_value_is_refused_without_showing_it(tmp_path: Path) -> None:
    """A DSN read from a file is checked as any other, and the problem does not quote it."""
    path = tmp_path / "dsn"
    path.write_text("mysql://gw:pw-from-file@db/app\n")
    with pytest.raises(ConfigError) as info:
        load_settings(_without("DATABASE_URL") | {"DATABASE_URL_FILE": str(path)})
    assert info.value.problems == ["DATABASE_URL: expected a postgres:// or postgresql:// URL"]


def test_only_secret_variables_have_files() -> None:
    """GATEWAY_PORT_FILE is a typo like any other: an unknown setting; an empty X_FILE is no file."""
    with pytest.raises(ConfigError, match="GATEWAY_PORT_FILE: unknown setting"):
        load_settings(BASE | {"GATEWAY_PORT_FILE": "/run/secrets/port"})
    assert load_settings(BASE | {"DATABASE_URL_FILE": ""}).database_url == BASE["DATABASE_URL"]


def _with_password(dsn: str, password: str) -> tuple[str, str]:
    """``dsn`` with a password in its userinfo (its own, if it has one); and that password."""
    parts = urlsplit(dsn)
    if parts.password:
        return dsn, parts.password
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{(user or 'postgres').split(':')[0]}:{password}@{host}"
    return urlunsplit(parts._replace(netloc=netloc)), password


async def test_serve_reads_its_secrets_from_files(
    tmp_path: Path, db: asyncpg.Connection, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A real server configured by BETTER_AUTH_SECRET_FILE and DATABASE_URL_FILE validates a session; neither
    the secret nor the DSN's password shows in check-config's output or in the server's logs."""
    dsn, password = _with_password(database, "pw-file-" + seed.generate_id(12))
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "dsn").write_text(dsn + "\n")
    env = {
        "BETTER_AUTH_SECRET": "",  # the test servers' default secret: unset, so that the file gives it
        "BETTER_AUTH_SECRET_FILE": str(tmp_path / "secret"),
        "DATABASE_URL_FILE": str(tmp_path / "dsn"),
        "GATEWAY_LOG_LEVEL": "debug",
    }
    token = await seed.create_session(db, await seed.create_user(db, email="files@example.com"))
    gw: Server = start_gateway(env)
    r = await client.get(gw.url + "/validate", headers=cookie(token))
    assert r.status_code == 200
    assert (await client.get(gw.url + "/validate", headers=cookie(token, secret="z" * 40))).status_code == 401
    check = run_cli("check-config", env=env | {"PATH": "", "BETTER_AUTH_SECRET": ""})
    assert check.returncode == 0, check.stderr
    assert f"secrets = ['<{len(SECRET)} chars>']" in check.stdout  # the newline was not kept
    assert ":****@" in check.stdout
    assert gw.stop() in (0, -15)
    logs = gw.output()
    assert "effective configuration" in logs  # the configuration was logged, masked
    for secret in (SECRET, password):
        assert secret not in logs
        assert secret not in check.stdout + check.stderr
