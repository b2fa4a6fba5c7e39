"""``GATEWAY_FIELD_HEADERS``: returned fields only, valid and unreserved names, checked at startup (exit 2)."""

from __future__ import annotations

import os

import pytest

from gateway.config import ConfigError, load_settings
from tests.config import BASE, run_cli

VARIABLE = "GATEWAY_FIELD_HEADERS"


def test_returned_fields_of_user_and_session_are_accepted() -> None:
    """Core, plugin and additional fields of either object map to the names given (lower-cased)."""
    env = BASE | {
        "GATEWAY_PLUGINS": "organization",
        "GATEWAY_USER_ADDITIONAL_FIELDS": "tenantId",
        VARIABLE: "user.tenantId=X-Tenant-Id,session.ipAddress=x-client-ip,session.activeOrganizationId=x-org",
    }
    settings = load_settings(env)
    assert settings.field_headers == {
        "user.tenantId": "X-Tenant-Id",
        "session.ipAddress": "x-client-ip",
        "session.activeOrganizationId": "x-org",
    }


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("user.tenantId=x-tenant-id", "'user.tenantId' is not a returned field"),  # not declared
        ("tenantId=x-tenant-id", "'tenantId' is not a returned field"),  # no object named
        ("session.token=x-token", "'session.token' is not a returned field"),  # never the token
        ("account.id=x-account", "'account.id' is not a returned field"),
        ("user.email=x tenant", "'x tenant' is not a valid header name"),
        ("user.email=x-tenant\r\nset-cookie", "is not a valid header name"),
        ("user.email=Set-Cookie", "'Set-Cookie' is reserved"),
        ("user.email=x-auth-request-user", "'x-auth-request-user' is reserved"),
        ("user.email=remote-user", "'remote-user' is reserved"),
        ("user.email=x-mail,user.name=X-Mail", "'X-Mail' is given to two fields"),
    ],
)
def test_a_bad_mapping_is_a_config_problem_naming_the_variable(value: str, says: str) -> None:
    """An unknown field, a bad or reserved name, or one name twice: refused, the variable named."""
    with pytest.raises(ConfigError, match=VARIABLE) as refused:
        load_settings(BASE | {VARIABLE: value})
    assert says in str(refused.value)


def test_a_renamed_identity_header_frees_its_default_name_and_reserves_the_new_one() -> None:
    """The identity headers' names as configured are reserved, not the defaults they replace."""
    env = BASE | {"GATEWAY_IDENTITY_HEADERS": "user=x-user-id"}
    assert load_settings(env | {VARIABLE: "user.email=x-auth-request-user"}).field_headers
    with pytest.raises(ConfigError, match="'x-user-id' is reserved"):
        load_settings(env | {VARIABLE: "user.email=x-user-id"})


def test_check_config_exits_2_naming_the_variable() -> None:
    """``gateway check-config`` (and ``serve``) exit 2 on it, the variable named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BETTER_AUTH", "DATABASE_URL"))}
    done = run_cli("check-config", env=env | BASE | {VARIABLE: "user.nope=x-nope"})
    assert done.returncode == 2
    assert VARIABLE in done.stdout + done.stderr
