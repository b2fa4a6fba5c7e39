"""The Settings struct: Better Auth's cookie names, secrets that never show, values of their final types."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from gateway.config import Secret, Settings, load_settings
from tests.config import BASE


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


def test_secrets_never_shown_by_repr() -> None:
    """A Secret's repr and str are masked, and so is every secret in the Settings' repr."""
    s = load_settings(BASE)
    assert "hunter2" not in repr(s)
    assert "x" * 32 not in repr(s)
    assert repr(Secret("abc")) == "Secret('**********')"
    assert str(Secret("abc")) == "**********"
    assert Secret("abc").reveal() == "abc"


def test_defaults_are_already_parsed() -> None:
    """Without any setting the struct holds final values: loopback networks, Better Auth's core fields."""
    s = Settings()
    assert s.trusted_proxies == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert s.rate_limit_exempt == ()
    assert s.redirect_hosts == ()
    assert "email" in s.returned_fields.user
    assert "role" not in s.returned_fields.user  # the admin plugin's, not named
    assert load_settings(BASE).returned_fields == s.returned_fields


def test_config_does_not_import_the_http_adapter() -> None:
    """Loading, checking and describing settings imports nothing of gateway.http (config sits below it)."""
    code = (
        "import sys, gateway.config as c; c.describe(c.load_settings({'DATABASE_URL': 'postgresql://db/a', "
        "'BETTER_AUTH_SECRET': 'x' * 32, 'GATEWAY_RULES_FILE': '/nonexistent', 'GATEWAY_PROXY': 'nginx'})); "
        "print(sorted(m for m in sys.modules if m.startswith('gateway.http')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)  # noqa: S603
    assert out.stdout.strip() == "[]"
